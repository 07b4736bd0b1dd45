"""One CM on the CM test sets a paper reports, in one command, and one table with a column per set.

    python evaluate_cm_benchmarks.py --recipe configs/cm_benchmarks.conf

The recipe (configs/cm_benchmarks.conf) names the CM (`config`, `cm_model`, `set`), the sets and the folder
each is read from (`sets`: asvspoof2019_la: config, i.e. the CM config's own dirs, and asvspoof2021_la,
asvspoof2021_df, in_the_wild: the folder holding the release folders) and `out`. The flags do the same
without a recipe, or override it (--database adds or moves a set, --no_2019 leaves 2019 LA out):

    python evaluate_cm_benchmarks.py --config C --cm_model W --out DIR \\
        --database asvspoof2021_la=/data/asvspoof2021 asvspoof2021_df=/data/asvspoof2021 in_the_wild=/data/itw

Each set is scored by save_cm_score.py (2019 LA eval with the config as it is, the others with
`--set dataset=NAME dirs.database=ROOT --partitions eval`, output in DIR/NAME/) and evaluated with its official
keys (evaluate.py's reader: 2021 subset `eval`, as the organisers' package; the 2021 LA min t-DCF with the
organisers' ASV scores when the keys release has them; the report in DIR/NAME/report/). DIR/benchmarks.md and
DIR/benchmarks.csv get the rows EER (%) and min t-DCF, one column per set in the order 2019 LA, 2021 LA, 2021
DF, In-the-Wild. The 2019 LA min t-DCF needs ASV scores of its SASV eval trials (`asv_scores_2019`,
--asv_scores_2019: save_asv_score.py's score_ASV_eval.txt, or the asv_scores/eval.txt of a `system: cm` run
with cm_train.asv_model), copied to DIR/asvspoof2019_la/score_ASV_eval.txt where save_cm_score.py reads it.
`--scores NAME=FILE` takes an existing `trial score` file for a set instead of scoring it (the 2019 column then
needs DIR/asvspoof2019_la/metrics_CM_eval.json).
docs/cm_benchmarks.md has the recipe.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from runtime.cli import run_cli
from runtime.errors import UserError
from runtime.files import check_output_place, staged_outputs

HEADERS = {"asvspoof2019_la": "2019 LA eval", "asvspoof2021_la": "2021 LA eval", "asvspoof2021_df": "2021 DF eval",
           "in_the_wild": "In-the-Wild"}
BENCHMARKS = ("asvspoof2021_la", "asvspoof2021_df", "in_the_wild")
FROM_CONFIG = "config"  # the recipe's value for 2019 LA: the CM config's own dirs
RECIPE_KEYS = ("config", "cm_model", "set", "sets", "scores", "asv_scores_2019", "out")
SCORE_FILE = "score_CM_eval_no_softmax.txt"  # the bona fide logits, which save_cm_score.py's metrics use
SCRIPTS = Path(__file__).resolve().parent


class BenchmarkArgumentError(UserError):
    """A NAME=PATH argument or recipe entry that names no CM evaluation set, or a recipe that is not one."""


def _pairs(values: list[str], option: str) -> dict[str, str]:
    pairs = {}
    for value in values:
        name, _, path = value.partition("=")
        if name not in BENCHMARKS or not path:
            raise BenchmarkArgumentError(f"{option} {value}: expected NAME=PATH with NAME one of "
                                         f"{', '.join(BENCHMARKS)}")
        pairs[name] = path
    return pairs


def _trains(name: str) -> bool:
    """Whether set `name` is a training corpus (2019 LA), read as the CM's config says rather than from a root."""
    from data.corpora import corpus_class
    return "train" in corpus_class(name).partitions


def read_recipe(path: str | Path) -> dict[str, Any]:
    """The recipe file's settings (a .conf mapping of RECIPE_KEYS), checked: one line naming the file and key."""
    import yaml

    from runtime.config import _load_yaml  # the .conf reader: a key given twice is refused

    try:
        values = _load_yaml(Path(path).read_text(encoding="utf-8-sig"), str(path))
    except (OSError, UnicodeDecodeError) as error:
        raise BenchmarkArgumentError(f"{path}: cannot read recipe ({getattr(error, 'strerror', None) or error})"
                                     ) from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" line {mark.line + 1}:" if mark is not None else ""
        raise BenchmarkArgumentError(f"{path}:{where} {getattr(error, 'problem', None) or 'invalid YAML'}") from None
    if not isinstance(values, dict):
        raise BenchmarkArgumentError(f"{path}: a recipe must be a mapping of {', '.join(RECIPE_KEYS)}")
    for key, value in values.items():
        if key not in RECIPE_KEYS:
            raise BenchmarkArgumentError(f"{path}: unknown key {key!r}; a recipe has {', '.join(RECIPE_KEYS)}")
        if key in ("sets", "scores"):
            if not isinstance(value, dict):
                raise BenchmarkArgumentError(f"{path}: {key} must map set names to paths")
            for name, where in value.items():
                allowed = HEADERS if key == "sets" else BENCHMARKS
                if name not in allowed:
                    raise BenchmarkArgumentError(f"{path}: {key}.{name}: not a CM test set; expected one of "
                                                 f"{', '.join(allowed)}")
                if key == "sets" and _trains(name) and where != FROM_CONFIG:
                    raise BenchmarkArgumentError(f"{path}: sets.{name}: must be {FROM_CONFIG!r} (the CM config's own "
                                                 f"dirs), got {where!r}")
                if not isinstance(where, str) or not where:
                    raise BenchmarkArgumentError(f"{path}: {key}.{name}: expected a path, got {where!r}")
        elif key == "set":
            if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
                raise BenchmarkArgumentError(f"{path}: set must be a list of KEY=VALUE overrides")
        elif value is not None and not isinstance(value, str):
            raise BenchmarkArgumentError(f"{path}: {key} must be a path, got {value!r}")
    return values


def settings(args: argparse.Namespace) -> dict[str, Any]:
    """The recipe's settings with the flags over them: config, cm_model, set, sets (name -> root, in table
    order; 2019 LA -> FROM_CONFIG), scores (name -> file) and out."""
    recipe = read_recipe(args.recipe) if args.recipe else {}
    sets = dict(recipe.get("sets") or ({} if args.recipe else {"asvspoof2019_la": FROM_CONFIG}))
    sets.update(_pairs(args.database, "--database"))
    if args.no_2019:
        sets.pop("asvspoof2019_la", None)
    scores = {**(recipe.get("scores") or {}), **_pairs(args.scores, "--scores")}
    for name in scores:
        if name not in sets:
            raise BenchmarkArgumentError(f"--scores {name}=...: give --database {name}=ROOT too (for its keys)")
    return {"config": args.config or recipe.get("config"), "cm_model": args.cm_model or recipe.get("cm_model"),
            "set": list(recipe.get("set") or []) + list(args.set),
            "sets": {name: sets[name] for name in HEADERS if name in sets}, "scores": scores,
            "asv_scores_2019": args.asv_scores_2019 or recipe.get("asv_scores_2019"),
            "out": args.out or recipe.get("out") or "cm_benchmarks"}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", help="a recipe file (configs/cm_benchmarks.conf); the flags override it")
    parser.add_argument("--config", help="the CM's config (its dirs: ASVspoof 2019 LA)")
    parser.add_argument("--cm_model", help="CM checkpoint, as save_cm_score.py --cm_model")
    parser.add_argument("--set", nargs="*", default=[], help="config overrides, as save_cm_score.py --set")
    parser.add_argument("--database", nargs="*", default=[], help="NAME=ROOT: the release folders of a set")
    parser.add_argument("--scores", nargs="*", default=[], help="NAME=FILE: `trial score` of a set, already scored")
    parser.add_argument("--no_2019", action="store_true", help="leave out the ASVspoof 2019 LA eval column")
    parser.add_argument("--asv_scores_2019", help="ASV scores of the 2019 LA SASV eval trials, for its min t-DCF")
    parser.add_argument("--out", help="output folder (default: the recipe's out, else cm_benchmarks)")
    return parser.parse_args()


def _score(run: dict[str, Any], name: str, database: str, out: Path) -> None:
    """save_cm_score.py on one set (database FROM_CONFIG: the config's own, ASVspoof 2019 LA)."""
    command = [sys.executable, str(SCRIPTS / "save_cm_score.py"), "--comment", str(out), "--partitions", "eval"]
    command += ["--config", run["config"]] if run["config"] else []
    command += ["--cm_model", run["cm_model"]] if run["cm_model"] else []
    sets = run["set"] + ([] if database == FROM_CONFIG else [f"dataset={name}", f"dirs.database={database}"])
    command += ["--set", *sets] if sets else []
    if subprocess.run(command).returncode != 0:
        raise BenchmarkArgumentError(f"save_cm_score.py failed on {HEADERS[name]} ({' '.join(command)})")


def _keys(name: str, database: str) -> Path:
    from data.corpora import corpus_of
    return Path(corpus_of({"dataset": name, "dirs": {"database": database}}).cm_list("eval"))


def main() -> None:
    run = settings(parse_args())
    out = check_output_place(run["out"], "--out")
    if not run["sets"]:
        raise BenchmarkArgumentError("nothing to evaluate: give --database NAME=ROOT or leave out --no_2019")
    columns: dict[str, dict[str, float | None]] = {}
    from scoring.cm_conditions import read_cm_benchmark, report_extension
    from scoring.report import write_report
    for name, database in run["sets"].items():
        if database == FROM_CONFIG:
            metrics_file = out / name / "metrics_CM_eval.json"
            if not run["scores"] or not metrics_file.is_file():
                if run["asv_scores_2019"]:
                    from runtime.files import atomic_copy
                    if not Path(run["asv_scores_2019"]).is_file():
                        raise BenchmarkArgumentError(f"asv_scores_2019: {run['asv_scores_2019']} does not exist")
                    (out / name).mkdir(parents=True, exist_ok=True)
                    atomic_copy(run["asv_scores_2019"], out / name / "score_ASV_eval.txt")
                _score(run, name, database, out / name)
            metrics = json.loads(metrics_file.read_text())
            columns[name] = {"eer": metrics["cm_eer"], "min_tdcf": metrics["min_tdcf"]}
            continue
        scores = run["scores"].get(name)
        if scores is None:
            _score(run, name, database, out / name)
            scores = out / name / SCORE_FILE
        trials, tables = read_cm_benchmark(scores, _keys(name, database))
        report = write_report(out / name / "report", trials, extend=report_extension(tables), first="eer")
        columns[name] = {"eer": report["pooled"]["eer"], "min_tdcf": report["pooled"].get("min_tdcf")}
    markdown, csv = benchmark_table(columns)
    with staged_outputs() as staged:
        staged.write_text(out / "benchmarks.md", markdown)
        staged.write_text(out / "benchmarks.csv", csv)
    print(markdown, end="")


def benchmark_table(columns: dict[str, dict[str, float | None]]) -> tuple[str, str]:
    """(markdown, csv): rows EER (%) and min t-DCF, a column per set (`-`: not defined for that set)."""
    names = list(columns)
    rows = [("EER (%)", "eer", lambda v: f"{100 * v:.2f}"), ("min t-DCF", "min_tdcf", lambda v: f"{v:.4f}")]
    lines = ["| metric | " + " | ".join(HEADERS[n] for n in names) + " |", "| --- |" + " ---: |" * len(names)]
    csv = ["metric," + ",".join(names)]
    for label, key, shown in rows:
        values = [columns[n].get(key) for n in names]
        lines.append(f"| {label} | " + " | ".join("-" if v is None else shown(v) for v in values) + " |")
        csv.append(key + "," + ",".join("" if v is None else repr(float(v)) for v in values))
    return "\n".join(lines) + "\n", "\n".join(csv) + "\n"


if __name__ == "__main__":
    run_cli(main)
