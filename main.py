"""Train a SASV system (ResNetSE34V2 + AASIST + fusion back-end, OC-softmax), or one sub-system, from a .conf file.

    python main.py --config configs/ResNetSE34V2_AASIST_OC.conf [--output_dir exp_result] [--device cuda]
    torchrun --standalone --nproc_per_node=4 main.py --config ...   (one process per GPU)
"""
from __future__ import annotations

import argparse
import sys
from contextlib import ExitStack
from pathlib import Path

import torch

from data.corpora import corpus_of, recorded_config
from runtime import distributed
from runtime.cli import add_config_args, config_from_args, exit_status, resume_command, run_cli
from runtime.config import Config, config_text
from runtime.device import resolve_device
from runtime.files import output_folder
from training.state import experiment_lock, prepare_experiment_dir, remove_if_unstarted
from training.trainer import Trainer


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(parser, config_required=True)
    parser.add_argument("--output_dir", default="exp_result", help="experiments go to <output_dir>/<config stem>/")
    state = parser.add_mutually_exclusive_group()
    state.add_argument("--resume", action="store_true", help="continue the run in the experiment folder")
    state.add_argument("--overwrite", action="store_true", help="delete the run in the experiment folder first")
    parser.add_argument("--no_progress", action="store_true", help="hide progress bars")
    return parser.parse_args()


def resume_run(trainer: Trainer) -> Path | None:
    """Restore the newest complete checkpoint; None when the run has none yet.

    Under torchrun rank 0 chooses it and tidies the folder; the other ranks then read the same file.
    """
    if distributed.world_size() == 1:
        return trainer.resume_latest()
    chosen = trainer.resume_latest() if distributed.is_main() else None
    chosen, best = distributed.broadcast_object((chosen, trainer.state.best))
    if not distributed.is_main() and chosen is not None:
        trainer.resume(chosen)
        trainer.state.best = best  # rank 0 leaves out best-k copies it could not read
    return chosen


def main() -> None:
    args = parse_args()
    config = config_from_args(args)
    with distributed.process_group(resolve_device(config["device"])) as device:
        train(args, config, device)


def _demo_corpus(settings: dict, *, progress: bool) -> bool:
    """data.synthetic.ensure_demo_corpus, imported only when the config names a demo corpus: the generator
    loads scipy.signal, a second and a half of every start otherwise."""
    if not settings["root"]:
        return False
    from data.synthetic import ensure_demo_corpus

    return ensure_demo_corpus(settings, progress=progress)


def train(args: argparse.Namespace, config: Config, device: torch.device) -> None:
    """Under torchrun rank 0 alone generates the demo corpus, writes files and prints; the others wait for it."""
    main_rank = distributed.is_main()
    # A start-up failure of rank 0 ends the other ranks quietly with its exit status (on_main_rank).
    # Protocols are looked for when first used (data.corpora), so the new corpus needs no second read.
    distributed.on_main_rank(lambda: _demo_corpus(config["demo_corpus"], progress=not args.no_progress),
                             exit_status)
    # The asv stage may train and validate on VoxCeleb lists alone; b2 reads embeddings, no audio.
    if config["system"] not in ("asv", "b2"):
        corpus_of(config).check_layout()
    experiment_dir = output_folder(args.output_dir, "--output_dir") / Path(args.config).stem
    with ExitStack() as held:
        def claim_folder() -> bool:
            # Rank 0 holds the folder's lock for the whole run: a second main.py on it is refused.
            held.enter_context(experiment_lock(experiment_dir))
            # config.conf is the run as it was configured: the file plus --set overrides, read back the same,
            # with the protocol files found for keys left at their defaults (recorded_config).
            return prepare_experiment_dir(experiment_dir, Path(args.config), resume=args.resume,
                                          overwrite=args.overwrite,
                                          config_text=config_text(
                                              recorded_config(config),
                                              [*(distributed.launcher_prefix() or ["python"]), *sys.argv]))

        # The other ranks wait here until rank 0 holds the folder, or exit with its refusal (busy, holds a run).
        fresh = distributed.on_main_rank(claim_folder, exit_status) and main_rank  # rank 0 alone tidies up
        try:
            trainer = Trainer(config, experiment_dir, device, progress=not args.no_progress)
            # printed when SIGINT/SIGTERM stops the run
            trainer.resume_hint = resume_command(sys.argv, launcher=distributed.launcher_prefix())
            if args.resume:
                resumed = resume_run(trainer)
                if main_rank:
                    print(f"resumed from {resumed} (epoch {trainer.state.epoch}, step {trainer.state.step})"
                          if resumed else f"--resume: no checkpoint in {experiment_dir / 'weights'} yet; starting "
                                          f"from the beginning")
            summary = trainer.fit()
        except BaseException:
            if fresh:  # a start that failed before training leaves nothing that blocks a plain rerun
                remove_if_unstarted(experiment_dir)
            raise
    if main_rank:
        print(f"done: {experiment_dir} | {trainer.task.summary_text(summary)}")


if __name__ == "__main__":
    run_cli(main)
