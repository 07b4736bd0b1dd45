"""Command-line plumbing shared by main.py and the save_*.py scripts."""
from __future__ import annotations

import argparse
import errno
import os
import shlex
import sys
from collections.abc import Callable, Sequence

from runtime.config import Config, build_config, check_device_name, load_config
from runtime.errors import RunFailure, UserError, unwrap_worker_error, worker_died
from runtime.signals import RunInterrupted

# Bad input: one line on stderr, exit status 2.
USER_ERRORS = (UserError,)
# A run that could not finish (non-finite loss, out of memory for a single item): one line, exit status 1.
RUN_FAILURES = (RunFailure,)
# The machine, not the input: a full disk, a read-only or missing place to write, a file where a folder should be.
ENVIRONMENT_FAULTS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOTDIR,
                      errno.EISDIR, errno.EEXIST, errno.ENAMETOOLONG, errno.EIO}


def add_config_args(parser: argparse.ArgumentParser, *, config_required: bool) -> None:
    parser.add_argument("--config", required=config_required, help="experiment .conf file (YAML flow mapping)")
    parser.add_argument("--set", dest="overrides", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                        help="override config keys, e.g. --set optim.lr=1e-4 batch_size=8")
    parser.add_argument("--device", default=None, help="cuda, cuda:N or cpu (default: the config's, auto)")


def add_output_args(parser: argparse.ArgumentParser, partitions: Sequence[str] = ("dev", "eval"), *,
                    help: str = "output folder") -> None:
    """--comment (the scripts' output folder, as in the original) and --partitions."""
    parser.add_argument("--comment", default="Exp-SASV", help=help)
    parser.add_argument("--partitions", nargs="+", default=list(partitions), choices=list(partitions))


def config_from_args(args: argparse.Namespace) -> Config:
    if args.config:
        config = load_config(args.config, args.overrides)
    else:
        config = build_config({}, source="<defaults>", overrides=args.overrides)
    if args.device:
        check_device_name(args.device, f"--device {args.device}")
        config["device"] = args.device
    config.notify = print_notice  # the corpus adapter's "using protocol X" notes, when it first finds X
    return config


def print_notice(text: str) -> None:
    """A notice on stderr, from rank 0 alone (once per run, not once per torchrun process). A module function,
    so that a config holding it pickles."""
    if _is_main():
        print(text, file=sys.stderr)


def _is_main() -> bool:
    """runtime.distributed.is_main(), without importing torch into a process that never did (evaluate.py):
    such a process has no process group, so its rank is torchrun's RANK, if any."""
    distributed = sys.modules.get("runtime.distributed")
    if distributed is None:
        return os.environ.get("RANK", "0") == "0"
    return distributed.is_main()


def add_model_args(parser: argparse.ArgumentParser, *, asv: bool, cm: bool) -> None:
    parser.add_argument("--model", help="joint checkpoint: the original Lightning .ckpt or one of ours")
    if asv:
        parser.add_argument("--asv_model", help="ASV weights: voxceleb_trainer .model or a joint checkpoint")
    if cm:
        parser.add_argument("--cm_model", help="CM weights: AASIST .pth or a joint checkpoint")


def weight_args(args: argparse.Namespace) -> dict[str, str | None]:
    """The weight-file arguments `add_model_args` declared, by name (for models.build.load_system)."""
    return {name: getattr(args, name) for name in ("model", "asv_model", "cm_model") if hasattr(args, name)}


def resume_command(argv: list[str], launcher: Sequence[str] = ()) -> str:
    """The command line that continues this run: the same arguments with --resume instead of --overwrite.

    `launcher` replaces `python` (e.g. the torchrun options, see runtime.distributed.launcher_prefix)."""
    kept = [arg for arg in argv[1:] if arg not in ("--overwrite", "--resume")]
    return shlex.join([*(launcher or ["python"]), argv[0], *kept, "--resume"])


def exit_status(error: BaseException) -> int:
    """The status `run_cli` exits with after `error` (1 for an error it lets through with a traceback)."""
    if isinstance(error, RunInterrupted):
        return error.exit_status
    if isinstance(error, USER_ERRORS):
        return 2
    if isinstance(error, KeyboardInterrupt):
        return 130
    if isinstance(error, SystemExit):
        return error.code if isinstance(error.code, int) else int(error.code is not None)
    return 1


def run_cli(main: Callable[[], int | None]) -> None:
    """Run `main`; bad input becomes one line on stderr and exit status 2, a failed run one line and 1,
    a run stopped by SIGINT/SIGTERM its message and 128 + the signal number."""
    try:
        code = main()
    except RunInterrupted as interruption:
        if _is_main():  # under torchrun every rank stops at the same point; one message is enough
            print(str(interruption), file=sys.stderr)
        sys.exit(exit_status(interruption))
    except USER_ERRORS as error:
        # Errors raised in DataLoader workers arrive wrapped in the worker's traceback.
        print(f"error: {unwrap_worker_error(error)}", file=sys.stderr)
        sys.exit(exit_status(error))
    except RUN_FAILURES as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(exit_status(error))
    except RuntimeError as error:
        died = worker_died(error)  # a script's extraction loader lost a worker
        if died is None:
            raise
        print(f"error: {died}", file=sys.stderr)
        sys.exit(1)
    except OSError as error:
        if error.errno not in ENVIRONMENT_FAULTS:
            raise
        # Every output is written atomically: what existed before the failed write is still whole.
        where = f"{error.filename}: " if error.filename else ""
        print(f"error: {where}{error.strerror or error} (earlier outputs are intact; nothing was half-written)",
              file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt as interruption:
        print("interrupted", file=sys.stderr)
        sys.exit(exit_status(interruption))
    sys.exit(code or 0)
