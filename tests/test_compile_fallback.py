"""`compile: true` on a machine whose compiler fails (issue: g++ rejecting inductor's generated C++ with
"conflicting declaration at_BFloat16_tmp_acc0_vec"): the run warns once, goes on eagerly and trains
exactly as an eager run. The failure is injected into inductor itself (its compile_fx entry point),
raising what a real C++ build failure raises there."""
from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from models.checkpoint import Checkpoint, load_checkpoint, save_subsystem_checkpoint
from runtime.compiling import CompiledNetworks
from runtime.config import build_config
from training import tasks
from training.task import Run, Task
from training.trainer import Trainer

CPU = torch.device("cpu")
COMPILER_OUTPUT = ("/tmp/torchinductor/ab/cabkernel.main.cpp:41:18: error: conflicting declaration "
                   "'auto at_BFloat16_tmp_acc0_vec'")


class NoisyTask(Task):
    """Least squares through BatchNorm and dropout, so that a step run twice would show: it moves the
    running statistics and draws random numbers. Its network is compiled through the run."""

    selection = "mse"
    metric_columns = ("epoch", "step", "lr", "train_loss", "dev_mse", "skipped_batches", "redrawn_trials",
                      "seconds")

    def __init__(self, config, run: Run) -> None:
        super().__init__(config, run)
        generator = torch.Generator().manual_seed(config["seed"])
        self.inputs = torch.randn(32, 3, generator=generator)
        self.targets = self.inputs @ torch.tensor([1.0, -2.0, 0.5])
        self.model = nn.Sequential(nn.Linear(3, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Dropout(0.3), nn.Linear(8, 1))
        if config["compile"]:
            run.compiled.compile(self.model, "the toy network")
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.05)
        self.scheduler = torch.optim.lr_scheduler.ExponentialLR(self.optimizer, gamma=0.9)
        self.objective = _Squares(self.model)

    def modules(self) -> list[nn.Module]:
        return [self.model]

    def start_epoch(self, epoch: int, batch: int) -> tuple[Iterable, int]:
        batches = [(self.inputs[i:i + 8], self.targets[i:i + 8], torch.zeros(8)) for i in range(0, 32, 8)]
        return batches[batch:], len(batches)

    def validate(self, epoch: int) -> dict[str, Any]:
        self.model.eval()
        with torch.no_grad():
            return {"mse": float(((self.model(self.inputs).squeeze(1) - self.targets) ** 2).mean())}

    def evaluate(self) -> dict[str, Any]:
        return {"eval_mse": self.validate(0)["mse"]}

    def save(self, path: Path, training_state: dict[str, Any]) -> None:
        save_subsystem_checkpoint(path, cm_model=self.model, config=self.config.to_dict(), extra=training_state)

    def load_weights(self, path: Path, checkpoint: Checkpoint | None = None) -> Checkpoint:
        checkpoint = checkpoint or load_checkpoint(path)
        self.model.load_state_dict(checkpoint.cm_state)
        return checkpoint

    def summary_text(self, summary: dict[str, Any]) -> str:
        return ""


class _Squares(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, inputs: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, None]:
        return ((self.model(inputs).squeeze(1) - targets) ** 2).mean(), None


def _build_failure():
    from torch._inductor.exc import CppCompileError, InductorError

    # As inductor raises it when g++ rejects a kernel: the build error wrapped by compile_fx.
    return InductorError(CppCompileError(["g++", "cabkernel.main.cpp", "-O3"], COMPILER_OUTPUT), None)


@pytest.fixture
def inductor(monkeypatch):
    """Set `.fails` to "forward" or "backward": inductor's compile_fx then fails when building that graph."""
    import torch._dynamo
    import torch._inductor.compile_fx as compile_fx_module
    from torch._dynamo.backends.common import aot_autograd

    class Broken:
        fails = "forward"
        builds: list[str] = []

    def broken_compile_fx(graph, example_inputs, **_options):
        if Broken.fails == "forward":
            Broken.builds.append("forward")
            raise _build_failure()

        def forward(module, _inputs):
            Broken.builds.append("forward")
            return module.forward  # the traced graph, run as it is: it moves the BatchNorm statistics

        def backward(_module, _inputs):
            Broken.builds.append("backward")
            raise _build_failure()

        return aot_autograd(fw_compiler=forward, bw_compiler=backward)(graph, example_inputs)

    torch._dynamo.reset()  # nothing compiled by another test is reused
    monkeypatch.setattr(compile_fx_module, "compile_fx", broken_compile_fx)
    monkeypatch.setitem(tasks.TASKS, "noisy", NoisyTask)
    yield Broken
    torch._dynamo.reset()


def _config(**values):
    return build_config({"system": "noisy", "epoch": 2, "save_top_k": 1, **values}, source="noisy.conf")


def _state(trainer: Trainer) -> dict[str, torch.Tensor]:
    return trainer.task.model.state_dict()


@pytest.mark.slow  # Dynamo traces the step (seconds on a 2-core CPU)
@pytest.mark.parametrize("fails", ["forward", "backward"])
def test_a_compiler_failure_falls_back_to_eager_with_one_warning_and_the_eager_numbers(inductor, fails, tmp_path,
                                                                                       capsys):
    inductor.fails = fails
    eager = Trainer(_config(compile=False), tmp_path / "eager", CPU, progress=False)
    eager_summary = eager.fit()
    capsys.readouterr()

    compiled = Trainer(_config(compile=True), tmp_path / "compiled", CPU, progress=False)
    summary = compiled.fit()
    err = capsys.readouterr().err
    assert inductor.builds[-1] == fails  # the compiler was reached, and failed there

    # One line, naming the network, the exception and the compiler's own error line.
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith("warning: torch.compile failed for ")
    assert "the toy network" in err and "InductorError: CppCompileError" in err
    assert "conflicting declaration 'auto at_BFloat16_tmp_acc0_vec'" in err and "running eagerly" in err
    assert ("backward pass" in err) == (fails == "backward")

    # Trained to the end, exactly as the eager run: weights, BatchNorm statistics, metrics.
    assert summary["eval_mse"] == eager_summary["eval_mse"]
    assert _state(compiled).keys() == _state(eager).keys()
    for key, value in _state(eager).items():
        assert torch.equal(_state(compiled)[key], value), key
    assert compiled.state.metrics[-1]["train_loss"] == eager.state.metrics[-1]["train_loss"]
    assert compiled.state.step == eager.state.step == 8
    # The checkpoint has the eager run's keys (compiling in place adds no prefix).
    saved = load_checkpoint(tmp_path / "compiled" / "weights" / "last.ckpt").cm_state
    assert list(saved) == list(load_checkpoint(tmp_path / "eager" / "weights" / "last.ckpt").cm_state)


def test_scoring_in_eval_mode_falls_back_in_place_and_every_compiled_network_goes_eager(inductor):
    warnings: list[str] = []
    networks = CompiledNetworks(warnings.append)
    first, second = nn.Linear(3, 2).eval(), nn.Linear(2, 1).eval()
    reference = nn.Linear(3, 2).eval()
    reference.load_state_dict(first.state_dict())
    keys = list(first.state_dict())
    networks.compile(first, "the CM network")
    networks.compile(second, "the back-end")
    assert networks.active and list(first.state_dict()) == keys

    inputs = torch.randn(4, 3)
    with torch.no_grad():
        assert torch.equal(first(inputs), reference(inputs))  # compiling failed; this call ran eagerly
        first(inputs)
    assert len(warnings) == 1 and warnings[0].startswith("warning: torch.compile failed for the CM network (")
    assert not networks.active and inductor.builds == ["forward"]  # no second try at compiling
    assert first._compiled_call_impl is None and second._compiled_call_impl is None
