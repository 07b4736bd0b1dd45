"""Time the metrics on one million random trials: `python bench/bench_metrics.py [n_trials]`."""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from metrics import compute_eer, min_adcf, min_tdcf, sasv_eers  # noqa: E402


def best_of(repeats: int, function, *args) -> float:
    timings = []
    for _ in range(repeats):
        start = time.perf_counter()
        function(*args)
        timings.append(time.perf_counter() - start)
    return min(timings)


def main(n_trials: int = 1_000_000, repeats: int = 3) -> None:
    rng = np.random.default_rng(0)
    keys = rng.choice(np.array(["target", "nontarget", "spoof"]), size=n_trials)
    # float32 like the model outputs; a third rounded to create ties.
    scores = rng.normal(size=n_trials).astype(np.float32) + (keys == "target") * 2.0
    scores[: n_trials // 3] = np.round(scores[: n_trials // 3], 1)
    target = scores[keys == "target"]
    nontarget = scores[keys != "target"]
    key_list = keys.tolist()

    rows = [
        ("sasv_eers (keys as numpy str array)", best_of(repeats, sasv_eers, scores, keys)),
        ("sasv_eers (keys as Python list)", best_of(repeats, sasv_eers, scores, key_list)),
        ("compute_eer (target vs rest)", best_of(repeats, compute_eer, target, nontarget)),
        ("min_adcf (keys as numpy str array)", best_of(repeats, min_adcf, scores, keys)),
        ("min_tdcf (ASV = CM = these scores)", best_of(
            repeats, min_tdcf, target, scores[keys == "nontarget"], scores[keys == "spoof"],
            scores[keys != "spoof"], scores[keys == "spoof"])),
    ]
    print(f"{n_trials:,} trials, best of {repeats}:")
    for name, seconds in rows:
        print(f"  {name:<40s} {seconds * 1000:8.1f} ms")


if __name__ == "__main__":
    main(int(float(sys.argv[1])) if len(sys.argv) > 1 else 1_000_000)
