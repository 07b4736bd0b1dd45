"""Eval trials per second: cached scoring (each utterance and enrollment once) against the
original's per-trial path, on the same checkpoint and trials.

    python bench/bench_scoring.py --config configs/demo.conf [--model CKPT] [--partition eval]
                                  [--per_trial_trials 64] [--device cpu]

Without --model the architecture of the config is used with its initial weights (the
timing does not depend on the weights). The per-trial path is timed on a prefix of the
trials (it is slow by design) and its rate extrapolated; the scores of that prefix are
compared with the cached ones. Ends with one JSON line.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engine.builder import build_sasv_model, resolve_device  # noqa: E402
from engine.config import load_config  # noqa: E402
from engine.demo import ensure_demo_corpus  # noqa: E402
from engine.evaluation import SASVScorer  # noqa: E402
from engine.experiment import scoring_inputs  # noqa: E402
from models.checkpoint import load_sasv_weights  # noqa: E402


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
    ensure_demo_corpus(config, progress=False)
    device = resolve_device(args.device or config["device"])
    model, loss = build_sasv_model(config, load_weights=args.model is None)
    if args.model:
        load_sasv_weights(model, loss, args.model)
    model.to(device).eval()
    loss.to(device).eval()
    inputs = scoring_inputs(config, args.partition)
    if args.max_trials:
        inputs = dataclasses.replace(inputs, trials=inputs.trials[:args.max_trials])
    scorer = SASVScorer(model, loss, device, batch_size=config["eval_batch_size"], num_workers=config["loader"]["n_workers"],
                        sample_rate=config["sample_rate"], resample=config["resample"], progress=False)

    start = time.perf_counter()
    cached = scorer.score(inputs)
    if device.type == "cuda":
        torch.cuda.synchronize()
    cached_seconds = time.perf_counter() - start

    prefix = dataclasses.replace(inputs, trials=inputs.trials[:args.per_trial_trials])
    start = time.perf_counter()
    literal = scorer.score_per_trial(prefix, batch_size=args.per_trial_batch)
    if device.type == "cuda":
        torch.cuda.synchronize()
    literal_seconds = time.perf_counter() - start

    n_trials = len(inputs.trials)
    cached_rate = n_trials / cached_seconds
    literal_rate = len(prefix.trials) / literal_seconds
    max_diff = float(np.abs(cached[:len(prefix.trials)] - literal).max())
    print(f"trials: {n_trials} ({len({t.utterance for t in inputs.trials})} test utterances, "
          f"{len({t.speaker for t in inputs.trials})} enrollments) on {device}")
    print(f"cached:    {cached_seconds:8.2f} s for all trials -> {cached_rate:10.1f} trials/s")
    print(f"per-trial: {literal_seconds:8.2f} s for {len(prefix.trials)} trials -> {literal_rate:10.1f} trials/s")
    print(f"speed-up {cached_rate / literal_rate:.1f}x; max |cached - per-trial| = {max_diff:.2e}")
    print(json.dumps({"eval_trials_per_s": cached_rate, "eval_trials_per_s_reference": literal_rate,
                      "eval_speedup": cached_rate / literal_rate, "max_abs_diff": max_diff, "n_trials": n_trials,
                      "device": str(device)}))


if __name__ == "__main__":
    main()
