"""What the ASV and CM pre-training tasks share: one network (and a loss with parameters, for ASV) on
the device, their training DataLoader, and sub-system checkpoints. weights/best.ckpt holds the weights of
the best dev epoch only: what `asv_weight` / `aasist_weight` take."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from data.datasets import leave_signals_to_main_process
from models.checkpoint import Checkpoint, CheckpointError, apply_state, load_checkpoint, save_subsystem_checkpoint
from runtime import distributed
from runtime.config import Config, ConfigError
from runtime.device import channels_last_enabled
from training.task import Run, Task

# metrics.csv columns every stage writes after its own (dev metrics first).
COMMON_COLUMNS = ("skipped_batches", "redrawn_utterances", "seconds")


class SubsystemTask(Task):
    """Base of the `asv` and `cm` tasks. A subclass sets `part`, builds `self.model` (and `self.loss`
    when the loss has parameters), calls `place_model()`, then builds `optimizer` and `scheduler`."""

    part: str = ""  # "asv" or "cm"
    redrawn_column = "redrawn_utterances"
    item = "utterance"
    lr_column = "last_step"

    def __init__(self, config: Config, run: Run) -> None:
        if config["init_checkpoint"]:
            weight_key = "asv_weight" if self.part == "asv" else "aasist_weight"
            raise ConfigError(f"{config.source}: init_checkpoint initialises a SASV system; for system "
                              f"{self.part} give the initial weights in {weight_key}")
        super().__init__(config, run)
        self.label = f"{self.part} "
        self.model: nn.Module
        self.loss: nn.Module | None = None
        self.rank_batch = distributed.per_rank_batch(config["batch_size"], config.source)

    def batch_loss(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The training loss of one batch (inputs as the loader gives them, without the redraw counts),
        and the batch's accuracy when the task measures one."""
        raise NotImplementedError

    def start_training(self) -> None:
        self.objective = _Objective(self)

    def modules(self) -> list[nn.Module]:
        return [self.model] + ([self.loss] if self.loss is not None else [])

    def place_model(self) -> None:
        """Move the network and loss to the device; under torchrun on CUDA make its BatchNorms synchronised.
        Call it before building the optimiser (the conversion creates new parameter tensors)."""
        device = self.run.device
        self.model = distributed.synchronise_batchnorm(self.model.to(device), device)
        if self.loss is not None:
            self.loss.to(device)
        if channels_last_enabled(self.config["channels_last"], device) and hasattr(self.model, "use_channels_last"):
            self.model.use_channels_last()  # the ResNet's convolutions run faster in channels_last
        if distributed.compile_allowed(self.config["compile"], device, self.run.warn):
            # In place (the state-dict keys stay as they are); eager again if the compiler fails.
            self.run.compiled.compile(self.model, f"the {self.part.upper()} network")

    def training_loader(self, dataset: Dataset, **options: Any) -> DataLoader:
        """The DataLoader of the training data (`options`: batch_size/sampler or batch_sampler, ...)."""
        workers = self.config["loader"]["n_workers"]
        # Its own generator: creating an iterator must not consume the global torch RNG (dropout),
        # or a run resumed mid-epoch would draw other random numbers than one never stopped.
        return DataLoader(dataset, num_workers=workers, pin_memory=self.run.device.type == "cuda",
                          persistent_workers=workers > 0,
                          worker_init_fn=leave_signals_to_main_process if workers else None,
                          generator=torch.Generator().manual_seed(self.config["seed"]), **options)

    # ------------------------------------------------------------- checkpoints
    def save(self, path: Path, training_state: dict[str, Any]) -> None:
        parts = {"asv_model": self.model, "asv_loss": self.loss} if self.part == "asv" else {"cm_model": self.model}
        save_subsystem_checkpoint(path, **parts, config=self.stored_config(), extra=training_state)

    def on_new_best(self, epoch: int, dev: dict[str, Any]) -> None:
        if self.run.is_main:
            self.save(self.run.dir / "weights" / "best.ckpt", {"epoch": epoch, "dev": dict(dev)})

    def load_weights(self, path: Path, checkpoint: Checkpoint | None = None) -> Checkpoint:
        """Load the network (and ASV loss) weights of one of this stage's checkpoints."""
        checkpoint = checkpoint or load_checkpoint(path)
        state = checkpoint.asv_state if self.part == "asv" else checkpoint.cm_state
        if state is None:
            raise CheckpointError(f"{path}: holds no {self.part.upper()} weights")
        apply_state(self.model, state, what=f"{self.part.upper()} model", source=path)
        if self.loss is not None and self.part == "asv":
            if checkpoint.asv_loss_state is None:
                raise CheckpointError(f"{path}: holds no ASV loss parameters to resume from")
            apply_state(self.loss, checkpoint.asv_loss_state, what="ASV loss", source=path)
        return checkpoint


class _Objective(nn.Module):
    """The task's network and loss as one module whose forward is the task's `batch_loss`, so that
    DistributedDataParallel sees (and averages the gradients of) every trained parameter."""

    def __init__(self, task: SubsystemTask) -> None:
        super().__init__()
        self.network = task.model
        self.loss = task.loss
        self._batch_loss = task.batch_loss

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self._batch_loss(*inputs)
