"""Export a trained system's networks as ONNX or TorchScript files, for inference outside this toolkit.

    python export.py --model weights/best.ckpt --format onnx --out exported/ [--config my.conf]

Writes to --out, each network only when the system has it (docs/export.md):
  asv_embedding.onnx|.pt  waveform [batch, samples] float32 -> asv_embedding [batch, n_out]
  cm.onnx|.pt             waveform -> cm_embedding [batch, dim], cm_score [batch] (bona fide logit)
  backend.onnx|.pt        asv_enrollment, asv_test, cm_embedding -> sasv_score [batch] (save_sasv_score.py's score)
  conventions.json        sample rate, scaling, crop rules, speaker model, shapes, score directions, source,
                          and calibration.json beside the checkpoint when there is one
--model is a joint checkpoint (a _fixed one takes the frozen networks from asv_weight / aasist_weight), a stage
checkpoint (system asv or cm), a published AASIST / voxceleb_trainer / Lightning file, or a system b2 checkpoint;
--config gives the architecture it was trained with (default: the config main.py stored in the checkpoint; for
published weights, which store none, the toolkit's defaults). Every file is checked against PyTorch at several input
lengths before the files are moved in together; the export runs on the CPU.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from models.build import checkpoint_config
from models.checkpoint import load_checkpoint
from models.export import FORMATS, export_system
from runtime.cli import add_config_args, config_from_args, run_cli
from runtime.files import staged_outputs


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(parser, config_required=False)
    parser.add_argument("--model", required=True, help="checkpoint or weights file to export")
    parser.add_argument("--format", required=True, choices=list(FORMATS))
    parser.add_argument("--out", required=True, help="output folder")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    config = config_from_args(args) if args.config else \
        checkpoint_config(load_checkpoint(args.model), overrides=args.overrides)
    out = Path(args.out)
    with staged_outputs() as outputs:
        written = export_system(config, Path(args.model), args.format, out, outputs)
    print(f"wrote {len(written)} files to {out}: {', '.join(path.name for path in written)}")


if __name__ == "__main__":
    run_cli(main)
