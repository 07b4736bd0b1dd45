"""Training logs beside metrics.csv, chosen by the config key `logger` (docs/outputs.md#tensorboard).

`logger: none` (the default) is `Logger`, whose methods do nothing; `logger: tensorboard` writes TensorBoard
event files into <experiment>/tensorboard/ (the evaluation into its eval/ folder). The trainer calls the same
methods either way; tensorboard is imported only when asked for.

Every point's step is the trainer's optimisation step count. A resumed run drops what its previous process
logged after the checkpoint it resumes from (SummaryWriter's purge_step, which TensorBoard's readers honour),
so that each step holds one point.
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from runtime.config import Config, ConfigError
from scoring.report import REPORT_PLOTS


class Logger:
    """`logger: none`, and the methods every logger has; under torchrun the ranks other than 0 get this one."""

    def rates(self, optimizer: torch.optim.Optimizer) -> dict[str, float] | None:
        """The learning rates a step is about to use (read before it; a per-step scheduler changes them)."""
        return None

    def open(self, step: int) -> None:
        """Start (or go on) logging at optimisation step `step` + 1: points of later steps are stale."""

    def step(self, step: int, loss: float, rates: dict[str, float] | None) -> None:
        """Optimisation step `step` (counted from 1) took place with this training loss and these rates."""

    def epoch(self, row: Mapping[str, Any]) -> None:
        """An epoch ended: its metrics.csv row, as written."""

    def evaluation(self, step: int, summary: Mapping[str, Any], report: Path) -> None:
        """The eval set was scored after `step` steps: metrics_eval.json's content and the report folder."""

    def flush(self) -> None:
        """Put what was logged on disk (a checkpoint was written: what it covers is logged)."""

    def close(self) -> None:
        pass


def make_logger(config: Config, experiment_dir: Path, is_main: bool) -> Logger:
    """The logger the config asks for; every rank checks that it can be made (the same refusal everywhere,
    before any training), rank 0 alone writes."""
    if config["logger"] == "none":
        return Logger()
    try:
        import tensorboard  # noqa: F401 - torch's writer needs it; imported first so the error names it
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as error:
        raise ConfigError(f"{config.source}: key 'logger' is 'tensorboard', which needs the tensorboard package "
                          f"({error}); install it: pip install tensorboard") from None
    return TensorBoardLogger(experiment_dir / "tensorboard", SummaryWriter) if is_main else Logger()


class TensorBoardLogger(Logger):
    """Tags: train/loss and train/lr (the first parameter group's, as metrics.csv's lr; train/lr/<name> for
    each further group) per step; train/epoch_loss (and train/epoch_accuracy where metrics.csv has it) and
    dev/<metric> per epoch; in eval/, eval/<key> for metrics_eval.json's numbers and report/<plot> images."""

    def __init__(self, folder: Path, writer: type) -> None:
        self.folder = folder
        self._writer_class = writer
        self._writer: Any = None

    def rates(self, optimizer: torch.optim.Optimizer) -> dict[str, float]:
        groups = optimizer.param_groups
        return {"train/lr" if index == 0 else f"train/lr/{group.get('name', index)}": float(group["lr"])
                for index, group in enumerate(groups)}

    def open(self, step: int) -> None:
        self._writer = self._writer_class(str(self.folder), purge_step=step + 1)

    def step(self, step: int, loss: float, rates: dict[str, float] | None) -> None:
        if self._writer is None:  # not opened: training outside Trainer.fit (bench/bench_train.py)
            return
        self._writer.add_scalar("train/loss", loss, step)
        for tag, rate in (rates or {}).items():
            self._writer.add_scalar(tag, rate, step)

    def epoch(self, row: Mapping[str, Any]) -> None:
        if self._writer is None:
            return
        step = int(row["step"])
        for name, value in row.items():
            tag = f"dev/{name[len('dev_'):]}" if name.startswith("dev_") else \
                {"train_loss": "train/epoch_loss", "train_accuracy": "train/epoch_accuracy"}.get(name)
            if tag is not None and _is_number(value):  # "" where a metric was not computed
                self._writer.add_scalar(tag, value, step)

    def evaluation(self, step: int, summary: Mapping[str, Any], report: Path) -> None:
        # A writer of its own: re-scoring a finished run (--resume) replaces the points of an earlier scoring
        # at this step without touching the training's.
        writer = self._writer_class(str(self.folder / "eval"), purge_step=step)
        try:
            for tag, value in _numbers(summary, "eval"):
                writer.add_scalar(tag, value, step)
            for name in REPORT_PLOTS:  # the plots this evaluation drew (the report deletes older ones)
                path = report / name
                if path.is_file():
                    _add_png(writer, f"report/{path.stem}", path.read_bytes(), step)
        finally:
            writer.close()

    def flush(self) -> None:
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _numbers(values: Mapping[str, Any], prefix: str) -> list[tuple[str, float]]:
    """The numbers of a nested mapping as (tag, value), tags joined by '/' (best_dev's dev metrics included)."""
    found: list[tuple[str, float]] = []
    for key, value in values.items():
        if isinstance(value, Mapping):
            found += _numbers(value, f"{prefix}/{key}")
        elif _is_number(value):
            found.append((f"{prefix}/{key}", float(value)))
    return found


def _add_png(writer: Any, tag: str, png: bytes, step: int) -> None:
    """The PNG file as it is (no decoding and re-encoding), as an image summary."""
    from tensorboard.compat.proto.summary_pb2 import Summary

    width, height = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")  # the IHDR chunk
    image = Summary.Image(height=height, width=width, encoded_image_string=png)
    writer.file_writer.add_summary(Summary(value=[Summary.Value(tag=tag, image=image)]), step)
