"""Time the metrics on random trials: `python bench/bench_metrics.py [n_trials] [--package DIR]`.

Prints a table for the SASV 2022 / AASIST / legacy metrics, then one JSON line timing our ASVspoof 5
functions (Track 1, Track 2 tandem, Track 2 with ASV scores for the t-DCF, Track 2 SASV-only). With
`--package DIR` (the official asvspoof5 `evaluation-package/` folder, or a checkout holding it) the
package's own functions run the same calls on the same arrays, side by side, with the largest difference;
then both run end to end on files (`--files`, default 10^6 trials; 0 skips it): release-format score and
key files are written (16 attacks, the codecs `-` and C01-C11, a sixth of the scores rounded to make
ties), and our `evaluate.py` and the package's `evaluation_full.py` (`t1`; `t2_tandem` with `--asv_org`)
run one after the other as separate processes on them. One JSON line per track: wall seconds and peak
resident memory of each process, the speed-up, and the attack x codec tables compared cell by cell (the
largest difference per metric in the package's units, and the cells only one side fills). The package's
scripts need pandas, which this toolkit does not.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

import numpy as np

# Run as a script: the repository root must be importable (the metrics imports are inside the functions).
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def best_of(repeats: int, function, *args, **kwargs) -> tuple[float, object]:
    """(fastest wall time in seconds, result of the last call)."""
    timings, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = function(*args, **kwargs)
        timings.append(time.perf_counter() - start)
    return min(timings), result


def legacy_rows(n_trials: int, repeats: int) -> None:
    from metrics import compute_eer, min_adcf, min_tdcf, sasv_eers

    rng = np.random.default_rng(0)
    keys = rng.choice(np.array(["target", "nontarget", "spoof"]), size=n_trials)
    # float32 like the model outputs; a third rounded to create ties.
    scores = rng.normal(size=n_trials).astype(np.float32) + (keys == "target") * 2.0
    scores[: n_trials // 3] = np.round(scores[: n_trials // 3], 1)
    target = scores[keys == "target"]
    nontarget = scores[keys != "target"]
    key_list = keys.tolist()

    rows = [
        ("sasv_eers (keys as numpy str array)", best_of(repeats, sasv_eers, scores, keys)[0]),
        ("sasv_eers (keys as Python list)", best_of(repeats, sasv_eers, scores, key_list)[0]),
        ("compute_eer (target vs rest)", best_of(repeats, compute_eer, target, nontarget)[0]),
        ("min_adcf (keys as numpy str array)", best_of(repeats, min_adcf, scores, keys)[0]),
        ("min_tdcf (ASV = CM = these scores)", best_of(
            repeats, min_tdcf, target, scores[keys == "nontarget"], scores[keys == "spoof"],
            scores[keys != "spoof"], scores[keys == "spoof"])[0]),
    ]
    print(f"{n_trials:,} trials, best of {repeats}:")
    for name, seconds in rows:
        print(f"  {name:<40s} {seconds * 1000:8.1f} ms")


def asvspoof5_trials(n_trials: int) -> dict[str, np.ndarray]:
    """Synthetic ASVspoof 5 trials: CM/ASV float64 scores, a sixth rounded to create ties."""
    rng = np.random.default_rng(1)
    asv_key = rng.choice(np.array(["target", "nontarget", "spoof"]), size=n_trials, p=[0.3, 0.2, 0.5])
    cm_key = np.where(asv_key == "spoof", "spoof", "bonafide")
    asv = rng.normal(size=n_trials) + 3.0 * (asv_key == "target") + 2.0 * (asv_key == "spoof")
    cm = rng.normal(size=n_trials) * 1.5 + 2.5 * (asv_key != "spoof") - 1.0
    asv[: n_trials // 6] = np.round(asv[: n_trials // 6], 1)
    cm[: n_trials // 6] = np.round(cm[: n_trials // 6], 1)
    org = asv + rng.normal(size=n_trials) * 0.5  # another ASV for the t-DCF's error rates
    return {"cm": cm, "asv": asv, "sasv": asv + cm, "cm_key": cm_key, "asv_key": asv_key, "org": org}


def ours_calls(t: dict[str, np.ndarray]) -> dict[str, tuple]:
    from metrics import track1_metrics, track2_metrics

    tandem = (t["cm"], t["asv"], t["sasv"], t["cm_key"], t["asv_key"])
    return {
        "track1": (track1_metrics, (t["cm"], t["cm_key"]), {}),
        "track2": (track2_metrics, tandem, {}),
        "track2_asv_org": (track2_metrics, tandem, {"asv_scores_org": t["org"], "asv_keys_org": t["asv_key"]}),
        "track2_sasv_only": (track2_metrics, (None, None, t["sasv"], None, t["asv_key"]), {}),
    }


def load_package(directory: Path):
    """The package's calculate_metrics module (its util imports pandas only for file loading)."""
    if (directory / "evaluation-package").is_dir():
        directory = directory / "evaluation-package"
    if not (directory / "calculate_metrics.py").is_file():
        raise SystemExit(f"--package: no calculate_metrics.py in {directory}")
    try:
        import pandas  # noqa: F401
    except ImportError:
        # calculate_metrics uses only util's label constants; a placeholder lets util import without pandas.
        sys.modules["pandas"] = types.ModuleType("pandas")
    sys.path.insert(0, str(directory))
    import calculate_metrics

    return calculate_metrics


def package_calls(package, t: dict[str, np.ndarray]) -> dict[str, tuple]:
    tandem = (t["cm"], t["asv"], t["sasv"], t["cm_key"], t["asv_key"], "")
    quiet = {"printout": False}
    return {
        "track1": (package.calculate_minDCF_EER_CLLR_actDCF, (t["cm"], t["cm_key"], ""), quiet),
        "track2": (package.calculate_aDCF_tdcf_tEER, tandem, quiet),
        "track2_asv_org": (package.calculate_aDCF_tdcf_tEER, tandem,
                           {**quiet, "asv_scores_org": t["org"], "asv_keys_org": t["asv_key"]}),
        "track2_sasv_only": (package.calculate_aDCF_tdcf_tEER,
                             (None, None, t["sasv"], None, t["asv_key"], ""), quiet),
    }


def as_package_tuple(name: str, result: dict) -> list[float]:
    """Our result in the package's return order and units (t-EER in percent)."""
    if name == "track1":
        return [result["min_dcf"], result["eer"], result["cllr"], result["act_dcf"]]
    if name == "track2_sasv_only":
        return [result["a_dcf"]]
    return [result["a_dcf"], result["min_tdcf"], result["t_eer"] * 100]


# Runs the package's script unchanged and keeps the matrices it prints (print_table still prints them).
_PACKAGE_RUNNER = """
import json, runpy, sys
package, dump = sys.argv[1], sys.argv[2]
sys.path.insert(0, package)
import util_table
tables, printed = [], util_table.print_table
def recording(data, columns, rows, *args, **kwargs):
    tables.append({"rows": list(rows), "columns": list(columns), "values": [[float(v) for v in r] for r in data]})
    return printed(data, columns, rows, *args, **kwargs)
util_table.print_table = recording
sys.argv = [package + "/evaluation_full.py", *sys.argv[3:]]
try:
    runpy.run_path(sys.argv[0], run_name="__main__")
except SystemExit as stop:
    if stop.code not in (0, None):
        raise
with open(dump, "w") as handle:
    json.dump(tables, handle)
"""
# The package's tables in print order, as (our metric, factor from our units to the package's).
PACKAGE_TABLES = {1: (("min_dcf", 1.0), ("eer", 100.0), ("cllr", 1.0), ("act_dcf", 1.0)),
                  2: (("a_dcf", 1.0), ("min_tdcf", 1.0), ("t_eer", 100.0))}


def write_release_files(n_trials: int, folder: Path, seed: int = 7) -> None:
    """Track 1 and Track 2 score and key files in the release's formats, keys in another order than scores."""
    rng = np.random.default_rng(seed)
    asv_key = rng.choice(np.array(["target", "nontarget", "spoof"]), size=n_trials, p=[0.2, 0.3, 0.5])
    attacks = np.array([f"A{number}" for number in range(17, 33)])
    attack = np.where(asv_key == "spoof", attacks[rng.integers(0, attacks.size, n_trials)], "bonafide")
    codecs = np.array(["-"] + [f"C{number:02d}" for number in range(1, 12)])
    codec = codecs[rng.integers(0, codecs.size, n_trials)]
    speaker = np.array([f"E_{number:04d}" for number in range(400)])[rng.integers(0, 400, n_trials)]
    filename = np.array([f"E_{number:010d}" for number in range(n_trials)])
    asv = rng.normal(size=n_trials) + 3.0 * (asv_key == "target") + 2.0 * (asv_key == "spoof")
    cm = rng.normal(size=n_trials) * 1.5 + 2.5 * (asv_key != "spoof") - 1.0
    tied = n_trials // 6
    asv[:tied], cm[:tied] = np.round(asv[:tied], 1), np.round(cm[:tied], 1)
    organisers_asv = asv + rng.normal(size=n_trials) * 0.5
    cm_key = np.where(asv_key == "spoof", "spoof", "bonafide")
    order = rng.permutation(n_trials)

    def write(name: str, header: list[str], columns: list, separator: str = "\t") -> None:
        with open(folder / name, "w") as handle:
            handle.write(separator.join(header) + "\n")
            handle.writelines(separator.join(row) + "\n" for row in zip(*columns))

    def text(values: np.ndarray) -> list[str]:
        return [repr(value) for value in values.tolist()]

    absent = ["-"] * n_trials
    score_header = ["spk", "filename", "cm-score", "asv-score", "sasv-score"]
    write("track2_scores.tsv", score_header, [speaker, filename, text(cm), text(asv), text(asv + cm)])
    write("track2_asv_org.tsv", score_header, [speaker, filename, absent, text(organisers_asv), absent])
    key_columns = [column[order] for column in (speaker, filename, cm_key, asv_key, attack, codec)]
    write("track2_keys.txt", ["spk", "filename", "cm-label", "asv-label", "attack_anon", "codec", "track_2_tag"],
          [*key_columns, ["trial"] * n_trials], separator=" ")
    write("track1_scores.tsv", ["filename", "cm-score"], [filename, text(cm)])
    write("track1_keys.txt", ["filename", "cm-label", "attack_anon", "codec"],
          [column[order] for column in (filename, cm_key, attack, codec)], separator=" ")


# Runs a command in a child and writes the child's peak resident memory (KB) to a file. Measured through
# this small process, not from the benchmark: Linux carries a process's peak over fork and exec, so a
# child of the benchmark (which holds a million trials) would report at least the benchmark's own peak.
_PEAK_MEMORY_RUNNER = """
import os, sys
record, command = sys.argv[1], sys.argv[2:]
child = os.fork()
if child == 0:
    os.execvp(command[0], command)
_, status, usage = os.wait4(child, 0)
with open(record, "w") as handle:
    handle.write(str(usage.ru_maxrss))
sys.exit(os.waitstatus_to_exitcode(status))
"""


def measured(command: list[str], log: Path) -> tuple[float, float]:
    """(wall seconds, peak resident MB) of `command`, its output in `log`; a failure stops the benchmark.
    The peak is the largest of the process and of any child it waited for (evaluate.py's plot process)."""
    record = log.with_suffix(".peak_kb")
    with open(log, "w") as output:
        start = time.perf_counter()
        status = subprocess.call([sys.executable, "-c", _PEAK_MEMORY_RUNNER, str(record), *command], cwd=ROOT,
                                 stdout=output, stderr=subprocess.STDOUT)
        wall = time.perf_counter() - start
    if status != 0:
        raise SystemExit(f"{' '.join(command)} failed ({status}); see {log}")
    return wall, int(record.read_text()) / 1024  # KB on Linux


def compare(report: dict, tables: list[dict], track: int) -> dict:
    """Largest |ours - package| per metric over every cell (package units), and the cells only one side fills."""
    ours = report["per_attack_codec"]
    result: dict = {}
    for (metric, factor), table in zip(PACKAGE_TABLES[track], tables):
        largest, one_sided, cells = 0.0, [], 0
        for row, values in zip(table["rows"], table["values"]):
            for column, theirs in zip(table["columns"], values):
                mine = ours.get(row, {}).get(column, {}).get(metric)
                cells += 1
                if mine is None or not np.isfinite(theirs):
                    if (mine is None) != (not np.isfinite(theirs)):
                        one_sided.append(f"{row} {column}")
                    continue
                largest = max(largest, abs(mine * factor - theirs))
        result[metric] = {"cells": cells, "max_abs_diff": largest, "filled_by_one_side_only": one_sided}
    return result


def end_to_end(package_dir: Path, n_trials: int, tracks: list[int], work: Path) -> None:
    """Write release-scale files into `work`, run both evaluators on them per track, print one JSON line each."""
    package = package_dir / "evaluation-package" if (package_dir / "evaluation-package").is_dir() else package_dir
    write_release_files(n_trials, work)
    for track in tracks:
        if track == 2:
            files = ["--sasv", "track2_scores.tsv", "--sasv_keys", "track2_keys.txt", "--asv_org", "track2_asv_org.tsv"]
            mode = "t2_tandem"
        else:
            files, mode = ["--cm", "track1_scores.tsv", "--cm_keys", "track1_keys.txt"], "t1"
        files = [name if name.startswith("--") else str(work / name) for name in files]
        report_folder = work / f"report_track{track}"
        our_wall, our_mb = measured([sys.executable, "evaluate.py", *files, "--out", str(report_folder)],
                                    work / f"ours_track{track}.log")
        dump = work / f"package_track{track}.json"
        their_wall, their_mb = measured([sys.executable, "-c", _PACKAGE_RUNNER, str(package), str(dump), "--m", mode,
                                         *files], work / f"package_track{track}.log")
        report = json.loads((report_folder / "report.json").read_text())
        print(json.dumps({
            "track": track, "trials": n_trials,
            "ours": {"wall_s": round(our_wall, 1), "peak_mb": round(our_mb)},
            "package": {"wall_s": round(their_wall, 1), "peak_mb": round(their_mb)},
            "speedup": round(their_wall / our_wall, 2),
            "cells": compare(report, json.loads(dump.read_text()), track),
        }), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("n_trials", nargs="?", type=float, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=3, help="best of this many runs (ours and the package's)")
    parser.add_argument("--package", type=Path, help="the official asvspoof5 evaluation-package folder")
    parser.add_argument("--asvspoof5-only", action="store_true", help="skip the SASV 2022 / legacy table")
    parser.add_argument("--files", type=float, default=1e6,
                        help="with --package: trials of the end-to-end run on files (0: skip it)")
    parser.add_argument("--track", type=int, nargs="+", choices=(1, 2), default=[2, 1],
                        help="with --package: the tracks run end to end")
    parser.add_argument("--work", type=Path, help="folder for the end-to-end files (default: a temporary one)")
    args = parser.parse_args()
    n_trials = int(args.n_trials)
    if not args.asvspoof5_only:
        legacy_rows(n_trials, args.repeats)

    trials = asvspoof5_trials(n_trials)
    ours_s, ours_results = {}, {}
    for name, (function, call_args, kwargs) in ours_calls(trials).items():
        ours_s[name], ours_results[name] = best_of(args.repeats, function, *call_args, **kwargs)
    summary = {"n_trials": n_trials, "repeats": args.repeats, "ours_s": ours_s, "package_s": None}
    if args.package is not None:
        package = load_package(args.package)
        package_s, max_abs_diff = {}, {}
        for name, (function, call_args, kwargs) in package_calls(package, trials).items():
            package_s[name], theirs = best_of(args.repeats, function, *call_args, **kwargs)
            theirs = np.atleast_1d(np.asarray(theirs, dtype=np.float64))
            max_abs_diff[name] = float(np.max(np.abs(np.asarray(as_package_tuple(name, ours_results[name])) - theirs)))
        summary.update(package_s=package_s, speedup={name: package_s[name] / ours_s[name] for name in ours_s},
                       max_abs_diff_package_units=max_abs_diff)
    print(json.dumps(summary), flush=True)
    if args.package is not None and args.files > 0:
        with tempfile.TemporaryDirectory() as scratch:
            work = args.work or Path(scratch)
            work.mkdir(parents=True, exist_ok=True)
            end_to_end(args.package, int(args.files), args.track, work)


if __name__ == "__main__":
    main()
