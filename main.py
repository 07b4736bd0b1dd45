"""Train a SASV system (ResNetSE34V2 + AASIST + fusion back-end, OC-softmax) from a .conf file.

    python main.py --config configs/ResNetSE34V2_AASIST_OC.conf [--output_dir exp_result] [--device cuda]
"""
from __future__ import annotations

import argparse
from pathlib import Path

from engine.builder import resolve_device
from engine.cli import add_config_args, config_from_args, run_cli
from engine.demo import ensure_demo_corpus
from engine.experiment import check_data_layout
from engine.trainer import Trainer, prepare_experiment_dir


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(parser, config_required=True)
    parser.add_argument("--output_dir", default="exp_result", help="experiments go to <output_dir>/<config stem>/")
    state = parser.add_mutually_exclusive_group()
    state.add_argument("--resume", action="store_true", help="continue the run in the experiment folder")
    state.add_argument("--overwrite", action="store_true", help="delete the run in the experiment folder first")
    parser.add_argument("--no_progress", action="store_true", help="hide progress bars")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    config = config_from_args(args)
    ensure_demo_corpus(config)
    check_data_layout(config)
    device = resolve_device(config["device"])
    experiment_dir = Path(args.output_dir) / Path(args.config).stem
    prepare_experiment_dir(experiment_dir, Path(args.config), resume=args.resume, overwrite=args.overwrite)
    trainer = Trainer(config, experiment_dir, device, progress=not args.no_progress)
    last = experiment_dir / "weights" / "last.ckpt"
    if args.resume and last.is_file():
        trainer.resume(last)
        print(f"resumed from {last} (epoch {trainer.state.epoch}, step {trainer.state.step})")
    summary = trainer.fit()
    print(f"done: {experiment_dir} | eval SASV-EER {100 * summary['sasv_eer']:.2f}% "
          f"SV-EER {100 * summary['sv_eer']:.2f}% SPF-EER {100 * summary['spf_eer']:.2f}% "
          f"min a-DCF {summary['min_a_dcf']:.4f}")


if __name__ == "__main__":
    run_cli(main)
