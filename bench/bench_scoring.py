"""Eval trials per second: cached scoring (each utterance and enrollment once) against the
original's per-trial path, on the same checkpoint and trials (the eval part of bench_train.py).

    python bench/bench_scoring.py --config configs/demo.conf [--model CKPT] [--partition eval]
                                  [--per_trial_trials 64] [--device cpu]

Without --model the architecture of the config is used with its initial weights (the
timing does not depend on the weights). The per-trial path is timed on a prefix of the
trials (it is slow by design) and its rate extrapolated; the scores of that prefix are
compared with the cached ones. Ends with one JSON line.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_train import measure_eval  # noqa: E402

from data.synthetic import ensure_demo_corpus  # noqa: E402
from runtime.config import load_config  # noqa: E402
from runtime.device import resolve_device  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    parser.add_argument("--model", help="checkpoint to score with (default: the config's initial weights)")
    parser.add_argument("--partition", default="eval", choices=["dev", "eval"])
    parser.add_argument("--max_trials", type=int, default=None, help="score only the first N trials")
    parser.add_argument("--per_trial_trials", type=int, default=64, help="trials timed on the per-trial path")
    parser.add_argument("--per_trial_batch", type=int, default=2)
    parser.add_argument("--device", default=None)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    config = load_config(args.config)
    ensure_demo_corpus(config["demo_corpus"], progress=False)
    device = resolve_device(args.device or config["device"])
    result = measure_eval(config, device, model_path=args.model, partition=args.partition,
                          max_trials=args.max_trials, per_trial_trials=args.per_trial_trials,
                          per_trial_batch=args.per_trial_batch)
    print(json.dumps({"eval_trials_per_s": result["eval_trials_per_s"],
                      "eval_trials_per_s_reference": result["eval_trials_per_s_reference"],
                      "eval_speedup": result["eval_speedup"], "max_abs_diff": result["eval_max_abs_diff"],
                      "n_trials": result["eval_n_trials"], "device": str(device)}))


if __name__ == "__main__":
    main()
