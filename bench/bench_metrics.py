"""Time the metrics on random trials: `python bench/bench_metrics.py [n_trials] [--package DIR]`.

Prints a table for the SASV 2022 / AASIST / legacy metrics, then one JSON line timing our ASVspoof 5
functions (Track 1, Track 2 tandem, Track 2 with ASV scores for the t-DCF, Track 2 SASV-only). With
`--package DIR` (the official asvspoof5 `evaluation-package/` folder, or a checkout holding it) the
package's own functions run the same calls on the same arrays, side by side, with the largest difference.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
import types
from pathlib import Path

import numpy as np

# Run as a script: the repository root must be importable (the metrics imports are inside the functions).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("n_trials", nargs="?", type=float, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=3, help="best of this many runs (ours and the package's)")
    parser.add_argument("--package", type=Path, help="the official asvspoof5 evaluation-package folder")
    parser.add_argument("--asvspoof5-only", action="store_true", help="skip the SASV 2022 / legacy table")
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
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
