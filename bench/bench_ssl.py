"""Training-step time, peak memory and evaluation throughput of a full-size SSL countermeasure (SSL_AASIST).

    python bench/bench_ssl.py [--preset xlsr_300m] [--batch 2] [--samples 64600] [--steps 3] [--device cpu]

The network is the published recipe's (XLS-R 300M + AASIST back-end, the whole SSL model fine-tuned, Adam)
with random weights: the weights do not change the cost, and none are needed. Each variant runs in its own
process so that its peak memory is its own: fp32 against bf16 autocast, each without and with gradient
checkpointing of the transformer layers. One step = forward, weighted cross-entropy, backward, Adam update, on
`--batch` random waveforms of `--samples` samples; the first step is a warm-up and not timed. Evaluation:
utterances per second of the eval-mode forward (no gradient) on `--eval_batch` waveforms, fp32 and bf16.
Peak memory: the process's peak resident set size (ru_maxrss) on the CPU, torch.cuda.max_memory_allocated
on CUDA. Prints a table and ends with one JSON line.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from models import network_class  # noqa: E402

VARIANTS = {"fp32": ("off", False), "fp32+checkpointing": ("off", True),
            "bf16": ("bf16", False), "bf16+checkpointing": ("bf16", True)}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_mib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _autocast(device: torch.device, amp: str):
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16) if amp == "bf16" else nullcontext()


def build(preset: str, checkpointing: bool, device: torch.device) -> torch.nn.Module:
    model_config = {"architecture": "SSL_AASIST",
                    "ssl": {"architecture": preset, "freeze": "none", "gradient_checkpointing": checkpointing}}
    return network_class("cm", "SSL_AASIST")(model_config).to(device)


def run_variant(name: str, args: argparse.Namespace) -> dict:
    """One variant, in this process: seconds per training step, peak memory, eval utterances/s."""
    amp, checkpointing = VARIANTS[name]
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = build(args.preset, checkpointing, device)
    n_parameters = sum(p.numel() for p in model.parameters())
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-6, weight_decay=1e-4)
    criterion = torch.nn.CrossEntropyLoss(weight=torch.tensor([0.1, 0.9], device=device))
    rng = np.random.default_rng(0)
    waves = torch.from_numpy(rng.uniform(-0.5, 0.5, (args.batch, args.samples)).astype(np.float32)).to(device)
    labels = torch.tensor([i % 2 for i in range(args.batch)], device=device)
    model.train()
    times = []
    for step in range(args.steps + 1):
        _sync(device)
        start = time.perf_counter()
        with _autocast(device, amp):
            _, logits = model(waves)
        loss = criterion(logits.float(), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        _sync(device)
        if step:  # the first step is a warm-up (allocations, kernel selection)
            times.append(time.perf_counter() - start)
    train_peak = _peak_mib(device)
    result = {"variant": name, "device": str(device), "preset": args.preset, "parameters": n_parameters,
              "batch": args.batch, "samples": args.samples, "seconds_per_step": float(np.median(times)),
              "step_times": times, "peak_memory_mib": train_peak}
    if not checkpointing:  # checkpointing changes nothing in eval mode
        del optimizer
        model.eval()
        eval_waves = torch.from_numpy(rng.uniform(-0.5, 0.5, (args.eval_batch, args.samples))
                                      .astype(np.float32)).to(device)
        with torch.no_grad(), _autocast(device, amp):
            model(eval_waves)  # warm-up
            _sync(device)
            start = time.perf_counter()
            for _ in range(args.eval_repeats):
                model(eval_waves)
            _sync(device)
        result["eval_utterances_per_second"] = args.eval_batch * args.eval_repeats / (time.perf_counter() - start)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="xlsr_300m", help="SSL architecture preset (models/ssl)")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--samples", type=int, default=64600)
    parser.add_argument("--steps", type=int, default=3, help="timed training steps after one warm-up step")
    parser.add_argument("--eval_batch", type=int, default=4)
    parser.add_argument("--eval_repeats", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated subset of "
                        + ", ".join(VARIANTS))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_variant(args.child, args)), flush=True)
        return
    names = [name.strip() for name in args.variants.split(",") if name.strip()]
    unknown = [name for name in names if name not in VARIANTS]
    if unknown:
        parser.error(f"--variants: unknown {', '.join(unknown)}; valid: {', '.join(VARIANTS)}")
    results = []
    for name in names:
        command = [sys.executable, __file__, "--child", name] + [
            f"--{key}={value}" for key, value in vars(args).items() if key not in ("child", "variants")]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            results.append({"variant": name, "error": (done.stderr.strip().splitlines() or ["?"])[-1]})
        else:
            results.append(json.loads(done.stdout.strip().splitlines()[-1]))
        row = results[-1]
        if "error" in row:
            print(f"{name:20s} failed: {row['error']}", flush=True)
        else:
            evaluation = f"{row['eval_utterances_per_second']:.2f} utt/s" if "eval_utterances_per_second" in row \
                else "-"
            print(f"{name:20s} {row['seconds_per_step']:8.2f} s/step  peak {row['peak_memory_mib']:9.0f} MiB  "
                  f"eval {evaluation}", flush=True)
    print(json.dumps({"bench": "ssl", "threads": torch.get_num_threads(), "results": results}))


if __name__ == "__main__":
    main()
