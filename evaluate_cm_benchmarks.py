"""One CM on the CM test sets a paper reports, in one command, and one table with a column per set.

    python evaluate_cm_benchmarks.py --config C --cm_model W --out DIR \\
        --database asvspoof2021_la=/data/asvspoof2021 asvspoof2021_df=/data/asvspoof2021 in_the_wild=/data/itw

scores ASVspoof 2019 LA eval (the config's own dirs.database) and each set named in --database with
save_cm_score.py (`--set dataset=NAME dirs.database=ROOT --partitions eval`, output in DIR/NAME/), evaluates
each with its official keys (evaluate.py's reader: 2021 subset `eval`, as the organisers' package; the 2021
LA min t-DCF with the organisers' ASV scores when the keys release has them) and writes DIR/benchmarks.md and
DIR/benchmarks.csv: rows EER (%) and min t-DCF, one column per set, plus each set's report folder
DIR/NAME/report/. `--scores NAME=FILE` takes an existing `trial score` file for a set instead of scoring it
(the 2019 column then needs DIR/asvspoof2019_la/metrics_CM_eval.json from save_cm_score.py).
docs/cm_benchmarks.md has the recipe.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from runtime.cli import run_cli
from runtime.errors import UserError
from runtime.files import check_output_place, staged_outputs

BENCHMARKS = ("asvspoof2021_la", "asvspoof2021_df", "in_the_wild")
HEADERS = {"asvspoof2019_la": "2019 LA eval", "asvspoof2021_la": "2021 LA eval", "asvspoof2021_df": "2021 DF eval",
           "in_the_wild": "In-the-Wild"}
SCORE_FILE = "score_CM_eval_no_softmax.txt"  # the bona fide logits, which save_cm_score.py's metrics use


class BenchmarkArgumentError(UserError):
    """A NAME=PATH argument that names no CM evaluation set."""


def _pairs(values: list[str], option: str) -> dict[str, Path]:
    pairs = {}
    for value in values:
        name, _, path = value.partition("=")
        if name not in BENCHMARKS or not path:
            raise BenchmarkArgumentError(f"{option} {value}: expected NAME=PATH with NAME one of "
                                         f"{', '.join(BENCHMARKS)}")
        pairs[name] = Path(path)
    return pairs


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="the CM's config (its dirs.database: ASVspoof 2019 LA)")
    parser.add_argument("--cm_model", help="CM checkpoint, as save_cm_score.py --cm_model")
    parser.add_argument("--set", nargs="*", default=[], help="config overrides, as save_cm_score.py --set")
    parser.add_argument("--database", nargs="*", default=[], help="NAME=ROOT: the release folders of a set")
    parser.add_argument("--scores", nargs="*", default=[], help="NAME=FILE: `trial score` of a set, already scored")
    parser.add_argument("--no_2019", action="store_true", help="leave out the ASVspoof 2019 LA eval column")
    parser.add_argument("--out", default="cm_benchmarks", help="output folder (default: cm_benchmarks)")
    return parser.parse_args()


def _score(args: argparse.Namespace, name: str, database: Path | None, out: Path) -> None:
    """save_cm_score.py on one set (database None: the config's own, ASVspoof 2019 LA)."""
    # FOR THE LEAD: needs the adapter merge (issue 19 item 1), which makes save_cm_score.py read
    # `dataset: asvspoof2021_la / asvspoof2021_df / in_the_wild` through data.corpora.corpus_of(config).
    command = [sys.executable, "save_cm_score.py", "--comment", str(out), "--partitions", "eval"]
    command += ["--config", args.config] if args.config else []
    command += ["--cm_model", args.cm_model] if args.cm_model else []
    sets = list(args.set) + ([] if database is None else [f"dataset={name}", f"dirs.database={database}"])
    command += ["--set", *sets] if sets else []
    if subprocess.run(command, cwd=Path(__file__).resolve().parent).returncode != 0:
        raise BenchmarkArgumentError(f"save_cm_score.py failed on {HEADERS[name]} ({' '.join(command)})")


def _keys(name: str, database: Path) -> Path:
    from data.corpora import corpus_of
    return corpus_of({"dataset": name, "dirs": {"database": str(database)}}).protocol("cm_keys")


def main() -> None:
    args = parse_args()
    out = check_output_place(args.out, "--out")
    databases, given = _pairs(args.database, "--database"), _pairs(args.scores, "--scores")
    for name in given:
        if name not in databases:
            raise BenchmarkArgumentError(f"--scores {name}=...: give --database {name}=ROOT too (for its keys)")
    columns: dict[str, dict[str, float | None]] = {}
    if not args.no_2019:
        if not given or not (out / "asvspoof2019_la" / "metrics_CM_eval.json").is_file():
            _score(args, "asvspoof2019_la", None, out / "asvspoof2019_la")
        metrics = json.loads((out / "asvspoof2019_la" / "metrics_CM_eval.json").read_text())
        columns["asvspoof2019_la"] = {"eer": metrics["cm_eer"], "min_tdcf": metrics["min_tdcf"]}
    from scoring.cm_conditions import read_cm_benchmark, report_extension
    from scoring.report import write_report
    for name, database in databases.items():
        scores = given.get(name)
        if scores is None:
            _score(args, name, database, out / name)
            scores = out / name / SCORE_FILE
        trials, tables = read_cm_benchmark(scores, _keys(name, database))
        report = write_report(out / name / "report", trials, extend=report_extension(tables), first="eer")
        columns[name] = {"eer": report["pooled"]["eer"], "min_tdcf": report["pooled"].get("min_tdcf")}
    if not columns:
        raise BenchmarkArgumentError("nothing to evaluate: give --database NAME=ROOT or leave out --no_2019")
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
