"""The GPU code paths, run on the CPU: bf16 / fp16 autocast with its grad scaler, channels_last and
torch.compile (inductor) take the same code on both devices, so that what CI runs here differs from a
CUDA run only in the device. What still runs on CUDA alone is listed in README.md (Speed)."""
from __future__ import annotations

import copy
import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from test_pipeline import tiny_config
from tiny_run import QUIET_ENV, main_command, tiny_corpus, write_config

from models.build import apply_kernel_options, build_asv_network, build_sasv_model
from runtime.config import ConfigError, build_config
from runtime.device import AMP_DTYPES, autocast_context, channels_last_enabled, resolve_amp
from training.trainer import Trainer

CPU = torch.device("cpu")
CUDA = torch.device("cuda")  # only named, never used: nothing here needs a GPU


# Kept tiny: frozen sub-systems (the _fixed model), so that only the back-end is compiled; a full joint
# model compiles (forward, backward, scoring shapes) for many minutes on a small CPU.
COMPILED_RUN = {"model_arch": "ResNetSE34V2_AASIST_OC_fixed"}
# Runs main.py and prints the dynamo / inductor counters when the process exits.
COUNTING_MAIN = """import atexit, json, os, runpy, sys
from torch._dynamo.utils import counters
atexit.register(lambda: print("COUNTERS " + json.dumps({k: dict(v) for k, v in counters.items()}), flush=True))
sys.argv = sys.argv[1:]
sys.path.insert(0, os.path.dirname(sys.argv[0]))
runpy.run_path(sys.argv[0], run_name="__main__")
"""


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return tiny_corpus(tmp_path_factory)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread here: the compiled run works on the other core meanwhile (see tiny_run.QUIET_ENV)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module", autouse=True)
def compiled_run(request, corpus, tmp_path_factory):
    """Start the compiled run (in its own process: compiling is mostly waiting for the C++ compiler) as
    soon as the module starts, when its test is selected; the fixture's value waits for it and returns
    (completed process, experiment folder, inductor counters)."""
    if not any(item.name == "test_compiled_training_with_inductor" for item in request.session.items):
        yield None
        return
    work = tmp_path_factory.mktemp("compiled")
    config = write_config(work / "compiled.conf", corpus, epoch=1, trials_per_epoch=8, compile=True, **COMPILED_RUN)
    command = [sys.executable, "-c", COUNTING_MAIN] + main_command(config, work / "exp")[1:] + ["--device", "cpu"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=work,
                               env={**os.environ, **QUIET_ENV})

    def finish() -> tuple[subprocess.CompletedProcess, Path, dict]:
        stdout, stderr = process.communicate(timeout=900)
        result = subprocess.CompletedProcess(command, process.returncode, stdout, stderr)
        lines = [line for line in stdout.splitlines() if line.startswith("COUNTERS ")]
        counted = json.loads(lines[-1].removeprefix("COUNTERS ")) if lines else {}
        return result, work / "exp" / "compiled", counted.get("inductor", {})

    yield finish
    if process.poll() is None:
        process.kill()
        process.communicate()


def tiny_trainer(corpus: Path, folder: Path, **overrides) -> Trainer:
    """A one-epoch, one-batch joint run of the tiny config (validation and eval scoring included)."""
    values = tiny_config(corpus, epoch=1, trials_per_epoch=8, **overrides)
    folder.mkdir(parents=True, exist_ok=True)
    return Trainer(build_config(values, source="test_device_paths"), folder, CPU, progress=False)


def fit_and_check(trainer: Trainer) -> tuple[dict, np.ndarray]:
    """Train; the epoch's loss is finite and dev / eval scores are written and finite. Returns the
    metrics row and the dev scores."""
    trainer.fit()
    with open(trainer.dir / "metrics.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 1 and math.isfinite(float(rows[0]["train_loss"]))
    scores = {}
    for name in ("dev_epoch_001", "eval"):
        lines = (trainer.dir / "scores" / f"{name}.txt").read_text().splitlines()
        scores[name] = np.array([float(line.split()[3]) for line in lines])
        assert len(scores[name]) > 0 and np.isfinite(scores[name]).all(), name
    assert (trainer.dir / "metrics_eval.json").is_file()
    return rows[0], scores["dev_epoch_001"]


def record_training(modules: dict[str, torch.nn.Module], what) -> dict[str, set]:
    """`what(output)` of each module's forward calls made in training mode (scoring runs in eval mode)."""
    seen: dict[str, set] = {name: set() for name in modules}
    for name, module in modules.items():
        module.register_forward_hook(
            lambda m, _i, output, name=name: seen[name].add(what(output)) if m.training else None)
    return seen


def test_precision_and_layout_follow_the_keys_on_any_device():
    assert resolve_amp("auto", CPU) == "off" and resolve_amp("auto", CUDA) == "bf16"  # the demo and goldens
    assert [resolve_amp(amp, CPU) for amp in ("bf16", "fp16", "off")] == ["bf16", "fp16", "off"]
    with pytest.raises(ConfigError, match="does not support"):
        resolve_amp("bf16", torch.device("meta"))  # no autocast there: an error, not a silent fp32 run
    for amp, dtype in AMP_DTYPES.items():
        with autocast_context(CPU, amp):
            assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == dtype
            assert torch.nn.functional.linear(torch.ones(2, 3), torch.ones(4, 3)).dtype == dtype
    with autocast_context(CPU, "off"):
        assert not torch.is_autocast_enabled("cpu")
    assert [channels_last_enabled(setting, device) for setting in ("auto", "on", "off") for device in (CPU, CUDA)] \
        == [False, True, True, True, False, False]
    # YAML reads a bare off / on as a boolean; `--set amp=off` is how bench/gpu_check.sh asks for fp32.
    config = build_config({}, source="test", overrides=["amp=off", "channels_last=on"])
    assert config["amp"] == "off" and config["channels_last"] == "on"


def test_channels_last_resnet_equals_the_contiguous_one(corpus):
    """Forward in training mode (batch statistics) and the weight gradients, through the CPU's NHWC kernels.

    SAP pooling for the gradients: ASP's clamped sqrt(variance) makes this tiny network's early-layer
    gradients move by ~1% for a 1e-6 change of the input, layout or not."""
    torch.manual_seed(0)
    values = tiny_config(corpus)
    config = build_config(values, source="test")
    values["asv_model"] = {**values["asv_model"], "encoder_type": "SAP"}
    contiguous = build_asv_network(build_config(values, source="test")).train()
    nhwc = copy.deepcopy(contiguous).use_channels_last()
    assert nhwc.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    layouts = record_training({"layer1": nhwc.layer1}, lambda out: out.is_contiguous(memory_format=torch.channels_last))
    wave = torch.randn(3, 8000)
    expected, actual = contiguous(wave), nhwc(wave)
    assert layouts == {"layer1": {True}}  # the activations really are NHWC
    torch.testing.assert_close(actual, expected, atol=1e-4, rtol=1e-4)
    expected.square().sum().backward()
    actual.square().sum().backward()
    for (name, weight), (_, nhwc_weight) in zip(contiguous.named_parameters(), nhwc.named_parameters()):
        # (attention biases: gradients ~1e-7, zero up to rounding, as softmax ignores a shift)
        assert (nhwc_weight.grad - weight.grad).norm() <= 1e-3 * weight.grad.norm() + 1e-5, name

    # The key reaches the model through apply_kernel_options: auto leaves the CPU alone, on does not.
    model = build_sasv_model(config, load_weights=False)[0]
    assert not apply_kernel_options(model, CPU).asv_model.channels_last
    assert apply_kernel_options(model, CPU, channels_last="on").asv_model.channels_last


@pytest.mark.slow
def test_joint_training_under_bf16_autocast(corpus, tmp_path):
    trainer = tiny_trainer(corpus, tmp_path, amp="bf16")
    assert trainer.amp == "bf16" and not trainer.scaler.is_enabled()  # bf16 needs no scaling
    model = trainer.task.model
    dtypes = record_training({"resnet": model.asv_model.layer1, "aasist": model.cm_model.encoder,
                              "sinc front end": model.cm_model.first_bn, "back-end": model.backend.conv1},
                             lambda out: out.dtype)
    fbank = set()
    model.asv_model.conv1.register_forward_pre_hook(lambda m, args: fbank.add(args[0].dtype) if m.training else None)
    row, _ = fit_and_check(trainer)
    assert int(row["step"]) == 1
    assert dtypes == {"resnet": {torch.bfloat16}, "aasist": {torch.bfloat16}, "sinc front end": {torch.float32},
                      "back-end": {torch.bfloat16}}
    assert fbank == {torch.float32}  # the fp32 islands hold inside the training step


@pytest.mark.slow
def test_joint_training_under_fp16_autocast_with_a_cpu_grad_scaler(corpus, tmp_path):
    trainer = tiny_trainer(corpus, tmp_path, amp="fp16")
    # GradScaler("cuda") disabled itself on the CPU (with a warning): the scaler must be the device's own.
    assert trainer.scaler.is_enabled() and trainer.scaler.get_scale() == 65536.0
    dtypes = record_training({"back-end": trainer.task.model.backend.conv1}, lambda out: out.dtype)
    row, _ = fit_and_check(trainer)
    assert dtypes == {"back-end": {torch.float16}}
    # The one step counts unless the scaler found inf gradients, skipped it and lowered its scale.
    skipped = trainer.scaler.get_scale() < 65536.0
    assert int(row["step"]) == (0 if skipped else 1)


@pytest.mark.slow
def test_joint_training_in_channels_last(corpus, tmp_path):
    trainer = tiny_trainer(corpus, tmp_path, channels_last="on")
    resnet = trainer.task.model.asv_model
    assert resnet.channels_last and resnet.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    layouts = record_training({"layer1": resnet.layer1},
                              lambda out: out.is_contiguous(memory_format=torch.channels_last))
    row, _ = fit_and_check(trainer)
    assert int(row["step"]) == 1 and layouts == {"layer1": {True}}
    assert resnet.layer1[0].conv1.weight.is_contiguous(memory_format=torch.channels_last)  # kept by the optimiser


@pytest.mark.slow
def test_compiled_training_with_inductor(corpus, tmp_path, compiled_run):
    """`python main.py --set compile=true` through inductor's C++ backend (built with the system compiler),
    started by `compiled_run` while the other tests run; it scores as the same run uncompiled."""
    result, experiment, inductor = compiled_run()
    assert result.returncode == 0, result.stdout + result.stderr
    # forward and backward of the training step at least, each built (or taken from the cache) by inductor
    assert inductor.get("fxgraph_cache_miss", 0) + inductor.get("fxgraph_cache_hit", 0) >= 2, inductor
    eager = tiny_trainer(corpus, tmp_path, **COMPILED_RUN)
    eager_row, eager_scores = fit_and_check(eager)
    with open(experiment / "metrics.csv") as handle:
        (row,) = list(csv.DictReader(handle))
    assert int(row["step"]) == 1
    assert float(row["train_loss"]) == pytest.approx(float(eager_row["train_loss"]), abs=1e-5)
    for name, expected in (("dev_epoch_001", eager_scores), ("eval", None)):
        lines = (experiment / "scores" / f"{name}.txt").read_text().splitlines()
        scores = np.array([float(line.split()[3]) for line in lines])
        assert len(scores) > 0 and np.isfinite(scores).all()
        if expected is not None:
            np.testing.assert_allclose(scores, expected, atol=1e-5, rtol=0)
