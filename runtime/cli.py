"""Command-line plumbing shared by main.py and the save_*.py scripts."""
from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import Callable, Sequence

import torch

from data.audio import AudioError
from data.datasets import unwrap_worker_error
from data.protocols import ProtocolError
from runtime import distributed
from models.build import build_sasv_model, fill_from_weight_files, subsystems_held
from runtime.device import resolve_device
from runtime.config import Config, ConfigError, build_config, check_device_name, load_config
from scoring.extraction import ScoringError
from runtime.signals import RunInterrupted
from training.state import TrainingError
from metrics import MetricError
from models.checkpoint import CheckpointError, load_asv_weights, load_cm_weights, load_sasv_weights
from models.sasv import SASVModel

# Bad input: one line on stderr, exit status 2.
USER_ERRORS = (ConfigError, ProtocolError, AudioError, CheckpointError, MetricError, FileExistsError)
# A run that could not finish (non-finite loss, out of memory for a single item): one line, exit status 1.
RUN_FAILURES = (TrainingError, ScoringError)


def add_config_args(parser: argparse.ArgumentParser, *, config_required: bool) -> None:
    parser.add_argument("--config", required=config_required, help="experiment .conf file (YAML flow mapping)")
    parser.add_argument("--set", dest="overrides", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                        help="override config keys, e.g. --set optim.lr=1e-4 batch_size=8")
    parser.add_argument("--device", default=None, help="cuda, cuda:N or cpu (default: the config's, auto)")


def config_from_args(args: argparse.Namespace) -> Config:
    if args.config:
        config = load_config(args.config, args.overrides)
    else:
        config = build_config({}, source="<defaults>", overrides=args.overrides)
    if args.device:
        check_device_name(args.device, f"--device {args.device}")
        config["device"] = args.device
    return config


def add_model_args(parser: argparse.ArgumentParser, *, asv: bool, cm: bool) -> None:
    parser.add_argument("--model", help="joint checkpoint: the original Lightning .ckpt or one of ours")
    if asv:
        parser.add_argument("--asv_model", help="ASV weights: voxceleb_trainer .model or a joint checkpoint")
    if cm:
        parser.add_argument("--cm_model", help="CM weights: AASIST .pth or a joint checkpoint")


def model_from_args(config: Config, args: argparse.Namespace, *, need: tuple[str, ...] = (),
                    optional: tuple[str, ...] = ()) -> tuple[SASVModel, torch.nn.Module, set[str]]:
    """Build the architecture from `config`, load `--model` / `--asv_model` / `--cm_model`; returns loaded parts.

    Every part in `need` must get weights, and at least one of `optional` when there is no `need`."""
    model, loss = build_sasv_model(config, load_weights=False)
    loaded: set[str] = set()
    if args.model:
        loaded |= subsystems_held(load_sasv_weights(model, loss, Path(args.model)))
    if getattr(args, "asv_model", None):
        load_asv_weights(model.asv_model, Path(args.asv_model))
        loaded.add("asv")
    if getattr(args, "cm_model", None):
        load_cm_weights(model.cm_model, Path(args.cm_model))
        loaded.add("cm")
    # A part no argument gave comes from the config's weight file.
    loaded |= fill_from_weight_files(config, model.asv_model, model.cm_model, loaded, parts=need)
    loaded |= fill_from_weight_files(config, model.asv_model, model.cm_model, loaded, parts=optional,
                                     only_if_present=True)
    missing = [part for part in need if part not in loaded] or \
        ([] if loaded & set(optional) or not optional else list(optional))
    if missing:
        options = "--model" + (", --asv_model" if hasattr(args, "asv_model") else "") + \
                  (", --cm_model" if hasattr(args, "cm_model") else "")
        raise ConfigError(f"no weights for the {' or '.join(missing) if not need else ' and '.join(missing)} "
                          f"part(s): give {options}, or set asv_weight / aasist_weight in the config")
    device = resolve_device(config["device"])
    model.to(device).eval()
    loss.to(device).eval()
    return model, loss, loaded


def resume_command(argv: list[str], launcher: Sequence[str] = ()) -> str:
    """The command line that continues this run: the same arguments with --resume instead of --overwrite.

    `launcher` replaces `python` (e.g. the torchrun options, see runtime.distributed.launcher_prefix)."""
    kept = [arg for arg in argv[1:] if arg not in ("--overwrite", "--resume")]
    return shlex.join([*(launcher or ["python"]), argv[0], *kept, "--resume"])


def run_cli(main: Callable[[], int | None]) -> None:
    """Run `main`; bad input becomes one line on stderr and exit status 2, a failed run one line and 1,
    a run stopped by SIGINT/SIGTERM its message and 128 + the signal number."""
    try:
        code = main()
    except RunInterrupted as interruption:
        if distributed.is_main():  # under torchrun every rank stops at the same point; one message is enough
            print(str(interruption), file=sys.stderr)
        sys.exit(interruption.exit_status)
    except USER_ERRORS as error:
        # Errors raised in DataLoader workers arrive wrapped in the worker's traceback.
        print(f"error: {unwrap_worker_error(error)}", file=sys.stderr)
        sys.exit(2)
    except RUN_FAILURES as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(code or 0)
