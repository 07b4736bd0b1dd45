"""Per-utterance CPU latency of the exported networks: PyTorch eager, TorchScript and onnxruntime.

    OMP_NUM_THREADS=2 python bench/bench_export.py [--seconds 4 60] [--runs 5] [--warmup 1] [--threads 2]

Full-size ResNetSE34V2 (seeded weights: the timing does not depend on them) and AASIST (the published
weights in $SASV_FIXTURES/weights/AASIST.pth when present, else seeded), each exported by models.export
(checked against PyTorch as export.py does). One utterance (batch 1) per call; the median of --runs calls
after --warmup ones. Prints a table (ms) and ends with one JSON line.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from models.aasist import AASIST  # noqa: E402
from models.build import AASIST_MODEL_CONFIG  # noqa: E402
from models.checkpoint import load_cm_weights  # noqa: E402
from models.export import asv_part, cm_part, export_part  # noqa: E402
from models.resnet_se34v2 import ResNetSE34V2  # noqa: E402

SAMPLE_RATE = 16000


def median_ms(run, runs: int, warmup: int) -> float:
    for _ in range(warmup):
        run()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        run()
        times.append(1000 * (time.perf_counter() - start))
    return statistics.median(times)


def networks() -> dict:
    torch.manual_seed(0)
    asv = ResNetSE34V2().eval()
    cm = AASIST(AASIST_MODEL_CONFIG).eval()
    weights = Path(os.environ.get("SASV_FIXTURES", Path(__file__).resolve().parent.parent.parent / "shared" /
                                  "fixtures")) / "weights" / "AASIST.pth"
    cm_weights = "seeded"
    if weights.is_file():
        load_cm_weights(cm, weights)
        cm_weights = "published AASIST.pth"
    return {"ResNetSE34V2 (seeded)": (asv_part(asv, 512), "asv_embedding"),
            f"AASIST ({cm_weights})": (cm_part(cm), "cm")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, nargs="+", default=[4.0, 60.0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()  # the same cores as PyTorch
    results = []
    with tempfile.TemporaryDirectory() as folder:
        for label, (part, name) in networks().items():
            onnx_path, ts_path = Path(folder) / f"{name}.onnx", Path(folder) / f"{name}.pt"
            export_part(name, part, onnx_path, "onnx", 64600)
            export_part(name, part, ts_path, "torchscript", 64600)
            session = onnxruntime.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
            scripted = torch.jit.load(str(ts_path))
            for seconds in args.seconds:
                wave = 0.1 * torch.randn(1, int(seconds * SAMPLE_RATE), generator=torch.Generator().manual_seed(0))
                with torch.no_grad():
                    row = {"network": label, "seconds": seconds,
                           "eager_ms": median_ms(lambda: part.module(wave), args.runs, args.warmup),
                           "torchscript_ms": median_ms(lambda: scripted(wave), args.runs, args.warmup),
                           "onnxruntime_ms": median_ms(lambda: session.run(None, {"waveform": wave.numpy()}),
                                                       args.runs, args.warmup)}
                results.append(row)
                print(f"| {label} | {seconds:g} s | {row['eager_ms']:.0f} | {row['torchscript_ms']:.0f} | "
                      f"{row['onnxruntime_ms']:.0f} |", flush=True)
    print(json.dumps({"bench": "export", "threads": torch.get_num_threads(), "runs": args.runs,
                      "warmup": args.warmup, "results": results}))


if __name__ == "__main__":
    main()
