"""Training and scoring speed of the toolkit's paths against reference-equivalent modes, in one run.

    OMP_NUM_THREADS=1 python bench/bench_train.py --config configs/demo.conf [--asvspoof_shape] [--device cpu]

Three measurements, each against its reference in the same process, on the same device:

* joint training, trials/s: the config as given (amp: bf16 autocast on CUDA, channels_last ResNet on
  CUDA, `compile` when set) against fp32 with the default memory layout, uncompiled. On a CPU both
  are the same computation and the reference is not timed twice.
* fixed (frozen ASV and CM) training, seconds per epoch of `trials_per_epoch` trials (default: one per
  training utterance, as the original): back-end on cached embeddings (first epoch including the
  cache build, and a later epoch) against the frozen networks run every batch
  (`cache_frozen_embeddings: false`), timed on `--reference_batches` batches and scaled to the epoch.
* eval scoring, trials/s: each utterance and enrollment embedded once (`SASVScorer.score`) against
  the original's per-trial path (`SASVScorer.score_per_trial`, which re-embeds the enrollment for
  every trial), both fp32; the per-trial path is timed on the first `--per_trial_trials` trials and
  the scores of those trials are compared.

`--asvspoof_shape` gives the networks their full published widths (ResNetSE34V2 512-d, AASIST,
back-end [64,128,256]/[512,256]), 64,600-sample training and test crops, batch 20 and the real
enrollment lengths (960,000 / 1,440,000 samples), and scores an ASVspoof 2019 LA eval-sized
protocol by measured unit costs (see `eval_at_asvspoof_scale`). Without it, the config's own
trials and shapes are used. Peak memory: torch.cuda.max_memory_allocated per section on CUDA, the
process's peak resident set size so far (ru_maxrss) on the CPU. Ends with one JSON line.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from data.synthetic import ensure_demo_corpus  # noqa: E402
from models.build import apply_kernel_options, build_sasv_model
from models.checkpoint import load_sasv_weights  # noqa: E402
from runtime.config import Config, build_config  # noqa: E402
from runtime.device import resolve_device  # noqa: E402
from scoring.extraction import Extraction  # noqa: E402
from scoring.inputs import (
    ScoringInputs,  # noqa: E402
    scoring_inputs,  # noqa: E402
)
from scoring.sasv import SASVScorer  # noqa: E402
from training.trainer import Trainer  # noqa: E402

# ASVspoof 2019 LA eval, SASV protocol (asv.eval.gi.trl.txt and its enrollments).
ASVSPOOF_EVAL = {"trials": 102_579, "speakers": 67, "test_utterances": 7_355}
ASVSPOOF_SHAPE = {"train_samples": 64600, "test_samples": 64600, "batch_size": 20, "eval_batch_size": 32,
                  "enrollment_samples": {"dev": 960000, "eval": 1440000}}
FULL_SIZE_KEYS = ("asv_model", "cm_model", "aasist_config", "backend")  # dropped: the schema defaults are full size
JOINT, FIXED = "ResNetSE34V2_AASIST_OC", "ResNetSE34V2_AASIST_OC_fixed"


def bench_values(path: str, asvspoof_shape: bool) -> dict:
    """The config file's values, optionally with the full-size networks and ASVspoof shapes."""
    values = yaml.safe_load(Path(path).read_text()) or {}
    if asvspoof_shape:
        for key in FULL_SIZE_KEYS:
            values.pop(key, None)
        values.setdefault("optim", {}).pop("oc_dim", None)
        values.update(ASVSPOOF_SHAPE)
    return values


def variant(values: dict, source: str, **changes) -> Config:
    """`values` with top-level `changes`; model_arch changes re-derive train_asv / train_cm / sampling."""
    merged = {**values, **changes}
    if "model_arch" in changes:
        for key in ("train_asv", "train_cm", "trial_sampling", "dataloader"):
            merged.pop(key, None)
        if changes["model_arch"].endswith("_fixed"):
            merged.pop("speaker_loss", None)  # a frozen ASV network has no speaker loss to learn
    return build_config(merged, source=source)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_mib(device: torch.device) -> float:
    """CUDA: peak allocated since the last reset; CPU: peak resident set size of this process so far."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def timed_epoch(trainer: Trainer, epoch: int, batches: int | None = None) -> tuple[float, int]:
    """Seconds to train the last `batches` batches of `epoch` (all when None), and how many that was."""
    n_batches = trainer.task.epoch_sampler.epoch_length // trainer.config["batch_size"]
    batches = n_batches if batches is None else min(batches, n_batches)
    trainer.state.batch = n_batches - batches
    synchronize(trainer.device)
    start = time.perf_counter()
    trainer.train_epoch(epoch)
    synchronize(trainer.device)
    return time.perf_counter() - start, batches


def training_rate(config: Config, device: torch.device, folder: Path, *, warmup: int, reference: bool) -> dict:
    """Training trials/s over the config's trials_per_epoch, after `warmup` untimed batches."""
    trainer = Trainer(config, folder, device, progress=False)
    if reference and device.type == "cuda":  # the default memory layout, as the original
        trainer.task.model.asv_model.channels_last = False
        trainer.task.model.asv_model.to(memory_format=torch.contiguous_format)
    trainer.start_training()
    reset_peak_memory(device)
    if warmup:
        timed_epoch(trainer, 0, warmup)
    seconds, batches = timed_epoch(trainer, 1)
    trials = batches * config["batch_size"]
    return {"trials_per_s": trials / seconds, "trials": trials, "seconds": seconds, "peak_mib": peak_memory_mib(device)}


def bench_joint(values: dict, source: str, device: torch.device, work: Path, *, batches: int, warmup: int) -> dict:
    trials = batches * values.get("batch_size", 20)
    fast = variant(values, source, model_arch=JOINT, trials_per_epoch=trials)
    reference = variant(values, source, model_arch=JOINT, trials_per_epoch=trials, amp="off", compile=False)
    result = training_rate(fast, device, work / "joint", warmup=warmup, reference=False)
    same = device.type != "cuda" and not fast["compile"]
    if same:
        print("joint training: the reference mode (fp32, default layout, not compiled) is the same computation "
              "on this device; timed once")
        result_reference = result
    else:
        result_reference = training_rate(reference, device, work / "joint_reference", warmup=warmup, reference=True)
    print(f"joint training: {result['trials_per_s']:.2f} trials/s ({result['trials']} trials in "
          f"{result['seconds']:.1f} s); reference {result_reference['trials_per_s']:.2f} trials/s; speed-up "
          f"{result['trials_per_s'] / result_reference['trials_per_s']:.2f}x; peak memory "
          f"{result['peak_mib']:.0f} MiB (reference {result_reference['peak_mib']:.0f} MiB)")
    return {"train_trials_per_s": result["trials_per_s"],
            "train_trials_per_s_reference": result_reference["trials_per_s"],
            "train_speedup": result["trials_per_s"] / result_reference["trials_per_s"],
            "train_peak_memory_mib": result["peak_mib"], "train_reference_timed": not same}


def bench_fixed(values: dict, source: str, device: torch.device, work: Path, *, reference_batches: int,
                epoch_trials: int | None) -> dict:
    """One fixed-config epoch (`epoch_trials`; None: one per training utterance) with cached embeddings (the
    first epoch including the cache build, and a later one) against the frozen networks every batch."""
    cached_config = variant(values, source, model_arch=FIXED, trials_per_epoch=epoch_trials,
                            cache_frozen_embeddings=True, dirs={**values["dirs"], "embedding": str(work / "cache")})
    reference_config = variant(values, source, model_arch=FIXED, trials_per_epoch=epoch_trials,
                               cache_frozen_embeddings=False)

    reset_peak_memory(device)
    trainer = Trainer(reference_config, work / "fixed_reference", device, progress=False)
    trainer.start_training()
    n_batches = trainer.task.epoch_sampler.epoch_length // reference_config["batch_size"]
    seconds, timed = timed_epoch(trainer, 0, reference_batches)
    reference_epoch = seconds * n_batches / timed
    reference_peak = peak_memory_mib(device)
    del trainer

    reset_peak_memory(device)
    trainer = Trainer(cached_config, work / "fixed_cached", device, progress=True)
    synchronize(device)
    start = time.perf_counter()
    trainer.start_training()  # builds the cache
    synchronize(device)
    build = time.perf_counter() - start
    trainer.progress = False
    first, _ = timed_epoch(trainer, 0)
    later, _ = timed_epoch(trainer, 1)
    n_utterances = len(trainer.task.loader.dataset.rows)  # the cached utterances (CachedTrialDataset)
    cached_peak = peak_memory_mib(device)
    print(f"fixed epoch ({n_batches} batches of {reference_config['batch_size']} trials, {n_utterances} training "
          f"utterances): frozen networks every batch {reference_epoch:.1f} s (timed {timed} batches, "
          f"{seconds:.1f} s, scaled to the epoch); cached: cache build {build:.1f} s "
          f"({n_utterances / build:.1f} utterances/s), first epoch {first:.2f} s, later epoch {later:.2f} s")
    print(f"fixed epoch speed-up: later epochs {reference_epoch / later:.0f}x, first epoch including the cache "
          f"build {reference_epoch / (build + first):.2f}x; peak memory {cached_peak:.0f} MiB "
          f"(every batch: {reference_peak:.0f} MiB)")
    return {"fixed_epoch_seconds": later, "fixed_first_epoch_seconds": build + first,
            "fixed_cache_build_seconds": build, "fixed_epoch_seconds_reference": reference_epoch,
            "fixed_epoch_speedup": reference_epoch / later,
            "fixed_first_epoch_speedup": reference_epoch / (build + first),
            "fixed_epoch_trials": n_batches * reference_config["batch_size"], "fixed_train_utterances": n_utterances,
            "fixed_peak_memory_mib": cached_peak, "fixed_peak_memory_mib_reference": reference_peak}


def eval_scorer(config: Config, device: torch.device, model_path: str | None = None) -> SASVScorer:
    model, loss = build_sasv_model(config, load_weights=model_path is None)
    if model_path:
        load_sasv_weights(model, loss, model_path)
    model.to(device).eval()
    loss.to(device).eval()
    apply_kernel_options(model, device)  # channels_last on CUDA; scoring stays fp32 as in the toolkit
    return SASVScorer(model, loss, Extraction.from_config(config, device, progress=False))


def per_trial_reference(scorer: SASVScorer, inputs: ScoringInputs, n_trials: int, batch: int
                        ) -> tuple[np.ndarray, float]:
    prefix = dataclasses.replace(inputs, trials=inputs.trials[:n_trials])
    synchronize(scorer.device)
    start = time.perf_counter()
    scores = scorer.score_per_trial(prefix, batch_size=batch)
    synchronize(scorer.device)
    return scores, time.perf_counter() - start


def measure_eval(config: Config, device: torch.device, *, model_path: str | None = None, partition: str = "eval",
                 max_trials: int | None = None, per_trial_trials: int = 64, per_trial_batch: int = 2) -> dict:
    """Cached scoring of the config's trials against the per-trial path on their prefix."""
    scorer = eval_scorer(config, device, model_path)
    inputs = scoring_inputs(config, partition)
    if max_trials:
        inputs = dataclasses.replace(inputs, trials=inputs.trials[:max_trials])
    reset_peak_memory(device)
    synchronize(device)
    start = time.perf_counter()
    cached = scorer.score(inputs)
    synchronize(device)
    cached_seconds = time.perf_counter() - start
    literal, literal_seconds = per_trial_reference(scorer, inputs, per_trial_trials, per_trial_batch)
    n_trials, n_literal = len(inputs.trials), len(literal)
    cached_rate, literal_rate = n_trials / cached_seconds, n_literal / literal_seconds
    max_diff = float(np.abs(cached[:n_literal] - literal).max())
    print(f"eval trials: {n_trials} ({len({t.utterance for t in inputs.trials})} test utterances, "
          f"{len({t.speaker for t in inputs.trials})} enrollments) on {device}")
    print(f"cached:    {cached_seconds:8.2f} s for all trials -> {cached_rate:10.1f} trials/s")
    print(f"per-trial: {literal_seconds:8.2f} s for {n_literal} trials -> {literal_rate:10.1f} trials/s")
    print(f"eval speed-up {cached_rate / literal_rate:.1f}x; max |cached - per-trial| = {max_diff:.2e}")
    return {"eval_trials_per_s": cached_rate, "eval_trials_per_s_reference": literal_rate,
            "eval_speedup": cached_rate / literal_rate, "eval_max_abs_diff": max_diff, "eval_n_trials": n_trials,
            "eval_peak_memory_mib": peak_memory_mib(device)}


def eval_at_asvspoof_scale(config: Config, device: torch.device, *, subset_trials: int, per_trial_trials: int,
                           per_trial_batch: int) -> dict:
    """Cached vs per-trial scoring of an ASVspoof 2019 LA eval-sized protocol, from measured unit costs.

    The demo eval trials are scored with the real enrollment length (files tiled to
    enrollment_samples.eval) and 64,600-sample tests. On `subset_trials` trials spread evenly over
    the protocol the cached path is timed per stage: enrollment ASV embeddings (per speaker), test ASV and CM
    embeddings (per utterance); the back-end is timed on the subset's trials repeated to the full
    102,579. Then
        cached    = 67 * enrollment/speaker + 7,355 * test/utterance + back-end(102,579 trials)
        per-trial = 102,579 * (per-trial seconds / trials timed)
    with the per-trial path timed on the subset's first `per_trial_trials` trials, whose scores must
    equal the cached ones.
    """
    scorer = eval_scorer(config, device)
    inputs = scoring_inputs(config, "eval")
    step = max(1, len(inputs.trials) // subset_trials)  # spread over the protocol: several speakers
    subset = dataclasses.replace(inputs, trials=inputs.trials[::step][:subset_trials])
    stage_seconds: dict[str, float] = defaultdict(float)
    extract = scorer._extract

    def timed_extract(paths, samples, networks, batch_size, desc):
        synchronize(device)
        start = time.perf_counter()
        result = extract(paths, samples, networks, batch_size, desc)
        synchronize(device)
        stage_seconds[desc] += time.perf_counter() - start
        return result

    scorer._extract = timed_extract  # times the scorer's own stages (what SASVScorer.score runs)
    reset_peak_memory(device)
    start = time.perf_counter()
    speakers, enrollment, utterances, test_asv, test_cm, _ = scorer.embeddings(subset)
    cached = scorer.score_from_embeddings(subset.trials, speakers, enrollment, utterances, test_asv, test_cm)
    synchronize(device)
    subset_seconds = time.perf_counter() - start
    scorer._extract = extract
    n_speakers, n_utterances = len(speakers), len(utterances)
    per_speaker = stage_seconds["enrollment"] / n_speakers
    per_utterance = (stage_seconds["test ASV"] + stage_seconds["test CM"]) / n_utterances

    repeats = -(-ASVSPOOF_EVAL["trials"] // len(subset.trials))
    many = (subset.trials * repeats)[:ASVSPOOF_EVAL["trials"]]
    synchronize(device)
    start = time.perf_counter()
    scorer.score_from_embeddings(many, speakers, enrollment, utterances, test_asv, test_cm)
    synchronize(device)
    backend = time.perf_counter() - start

    literal, literal_seconds = per_trial_reference(scorer, subset, per_trial_trials, per_trial_batch)
    max_diff = float(np.abs(cached[:len(literal)] - literal).max())
    cached_total = (ASVSPOOF_EVAL["speakers"] * per_speaker + ASVSPOOF_EVAL["test_utterances"] * per_utterance
                    + backend)
    literal_total = ASVSPOOF_EVAL["trials"] * literal_seconds / len(literal)
    cached_rate, literal_rate = ASVSPOOF_EVAL["trials"] / cached_total, ASVSPOOF_EVAL["trials"] / literal_total
    print(f"eval at ASVspoof 2019 LA scale ({ASVSPOOF_EVAL['trials']} trials, {ASVSPOOF_EVAL['speakers']} "
          f"enrollments of {config['enrollment_samples']['eval']} samples, {ASVSPOOF_EVAL['test_utterances']} test "
          f"utterances of {config['test_samples']}):")
    print(f"  measured on {len(subset.trials)} demo eval trials ({subset_seconds:.1f} s end to end): enrollment "
          f"{per_speaker:.2f} s/speaker ({n_speakers}), test ASV + CM {per_utterance:.3f} s/utterance "
          f"({n_utterances}), back-end {backend:.2f} s for {len(many)} trials")
    print(f"  cached:    67 x {per_speaker:.2f} + 7355 x {per_utterance:.3f} + {backend:.2f} = {cached_total:.0f} s "
          f"-> {cached_rate:.2f} trials/s")
    print(f"  per-trial: {literal_seconds:.1f} s for {len(literal)} trials -> {literal_total:.0f} s "
          f"-> {literal_rate:.3f} trials/s")
    print(f"  eval speed-up {cached_rate / literal_rate:.1f}x; max |cached - per-trial| = {max_diff:.2e} "
          f"({len(literal)} trials)")
    return {"eval_trials_per_s": cached_rate, "eval_trials_per_s_reference": literal_rate,
            "eval_speedup": cached_rate / literal_rate, "eval_max_abs_diff": max_diff,
            "eval_n_trials": ASVSPOOF_EVAL["trials"], "eval_extrapolated": True,
            "eval_seconds_per_enrollment": per_speaker, "eval_seconds_per_test_utterance": per_utterance,
            "eval_backend_seconds": backend, "eval_per_trial_seconds": literal_seconds / len(literal),
            "eval_peak_memory_mib": peak_memory_mib(device)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    parser.add_argument("--asvspoof_shape", action="store_true",
                        help="full-size networks, 64,600-sample crops, real enrollment lengths, eval extrapolated "
                             "to the ASVspoof 2019 LA eval protocol")
    parser.add_argument("--device", default=None)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--train_batches", type=int, default=4, help="joint training batches timed")
    parser.add_argument("--warmup_batches", type=int, default=None, help="untimed first batches (default 1 on CUDA)")
    parser.add_argument("--reference_batches", type=int, default=4,
                        help="fixed-config batches timed with the frozen networks run every batch")
    parser.add_argument("--per_trial_trials", type=int, default=64, help="trials timed on the per-trial path")
    parser.add_argument("--per_trial_batch", type=int, default=2)
    parser.add_argument("--eval_subset_trials", type=int, default=64,
                        help="--asvspoof_shape: demo eval trials whose stages are timed")
    parser.add_argument("--skip", nargs="*", default=[], choices=["joint", "fixed", "eval"])
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    values = bench_values(args.config, args.asvspoof_shape)
    source = args.config
    config = build_config(values, source=source)
    ensure_demo_corpus(config["demo_corpus"], progress=False)
    device = resolve_device(args.device or config["device"])
    warmup = args.warmup_batches if args.warmup_batches is not None else int(device.type == "cuda")
    print(f"device {device}, torch threads {torch.get_num_threads()}, shape "
          f"{'ASVspoof (full-size networks)' if args.asvspoof_shape else 'as in ' + source}")
    result: dict = {"device": str(device), "config": source, "asvspoof_shape": args.asvspoof_shape,
                    "threads": torch.get_num_threads()}
    with tempfile.TemporaryDirectory(prefix="bench_train_") as folder:
        work = Path(folder)
        if "joint" not in args.skip:
            result.update(bench_joint(values, source, device, work, batches=args.train_batches, warmup=warmup))
        if "fixed" not in args.skip:
            # ASVspoof shape: an epoch has one trial per training utterance, as the original's.
            result.update(bench_fixed(values, source, device, work, reference_batches=args.reference_batches,
                                      epoch_trials=None if args.asvspoof_shape else config["trials_per_epoch"]))
    if "eval" not in args.skip:
        if args.asvspoof_shape:
            result.update(eval_at_asvspoof_scale(config, device, subset_trials=args.eval_subset_trials,
                                                 per_trial_trials=args.per_trial_trials,
                                                 per_trial_batch=args.per_trial_batch))
        else:
            result.update(measure_eval(config, device, per_trial_trials=args.per_trial_trials,
                                       per_trial_batch=args.per_trial_batch))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
