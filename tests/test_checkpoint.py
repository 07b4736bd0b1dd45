"""Checkpoint loading/saving: formats, strict loads with clear errors, safe unpickling, atomic writes, frozen parts."""
from __future__ import annotations

import errno
import json
import os
import struct
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from torch import nn

from models.aasist import AASIST
from models.checkpoint import (
    CheckpointError,
    apply_state,
    load_asv_weights,
    load_checkpoint,
    load_cm_weights,
    load_sasv_weights,
    save_checkpoint,
)
from models.resnet_se34v2 import ResNetSE34V2
from models.sasv import SASVBackend, SASVModel
from runtime import files

torch.set_num_threads(2)


@pytest.fixture(scope="module")
def vox_path(fixtures, golden_json) -> Path:
    return fixtures / golden_json("resnet_fidelity.json")["weights"]["file"]


def aasist_config(fixtures: Path, name: str) -> dict:
    return json.loads((fixtures / "weights" / f"{name}.conf").read_text())["model_config"]


def raw_state(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def assert_state_equal(module: nn.Module, expected: dict) -> None:
    state = module.state_dict()
    assert set(state) == set(expected)
    for key, value in expected.items():
        assert torch.equal(state[key], value), key


# --------------------------------------------------------------------------- voxceleb / ResNet
def test_voxceleb_file_loads_like_manual_strip(vox_path):
    raw = raw_state(vox_path)
    model = ResNetSE34V2()
    checkpoint = load_asv_weights(model, vox_path)
    assert checkpoint.format == "voxceleb"
    assert checkpoint.cm_state is None and checkpoint.backend_state is None
    stripped = {key[len("__S__."):]: value for key, value in raw.items() if key.startswith("__S__.")}
    assert_state_equal(model, stripped)  # includes the window and mel filterbank buffers
    loss_keys = {key[len("__L__."):]: value for key, value in raw.items() if key.startswith("__L__.")}
    assert loss_keys and set(checkpoint.asv_loss_state) == set(loss_keys)
    for key, value in loss_keys.items():
        assert torch.equal(checkpoint.asv_loss_state[key], value)


@pytest.mark.parametrize("prefix", ["module.", "module.speaker_encoder.", ""])
def test_wrapped_and_plain_resnet_files_load(vox_path, tmp_path, prefix):
    raw = raw_state(vox_path)
    if prefix:
        state = {prefix + key: value for key, value in raw.items()}
    else:  # a plain ResNet state dict, no voxceleb wrapper keys at all
        state = {key[len("__S__."):]: value for key, value in raw.items() if key.startswith("__S__.")}
    path = tmp_path / "wrapped.model"
    torch.save(state, path)
    model = ResNetSE34V2()
    assert load_asv_weights(model, path).format == "voxceleb"
    assert_state_equal(model, {key[len("__S__."):]: value for key, value in raw.items() if key.startswith("__S__.")})


def test_renamed_key_is_reported(vox_path, tmp_path):
    raw = raw_state(vox_path)
    victim = next(key for key in raw if key.startswith("__S__.") and key.endswith(".weight"))
    state = {(key + "_renamed" if key == victim else key): value for key, value in raw.items()}
    path = tmp_path / "renamed.model"
    torch.save(state, path)
    with pytest.raises(CheckpointError) as error:
        load_asv_weights(ResNetSE34V2(), path)
    message = str(error.value)
    assert str(path) in message and "ASV model" in message
    assert "1 missing" in message and victim[len("__S__."):] in message
    assert "1 unexpected" in message and victim[len("__S__."):] + "_renamed" in message


def test_wrong_shape_is_reported(vox_path, tmp_path):
    raw = raw_state(vox_path)
    state = dict(raw)
    state["__S__.fc.weight"] = raw["__S__.fc.weight"][:-1]
    path = tmp_path / "shape.model"
    torch.save(state, path)
    with pytest.raises(CheckpointError) as error:
        load_asv_weights(ResNetSE34V2(), path)
    expected_rows = raw["__S__.fc.weight"].shape[0]
    message = str(error.value)
    assert "1 with another shape" in message and "fc.weight" in message
    assert f"[{expected_rows - 1}, " in message and f"[{expected_rows}, " in message
    assert "missing" not in message and "unexpected" not in message


def test_aasist_file_as_asv_is_refused(fixtures):
    path = fixtures / "weights" / "AASIST.pth"
    with pytest.raises(CheckpointError, match=r"AASIST \(CM\) checkpoint holds no ASV model weights"):
        load_asv_weights(ResNetSE34V2(), path)
    # Forced into the ResNet anyway, the strict load lists both sides of the mismatch.
    resnet = ResNetSE34V2()
    with pytest.raises(CheckpointError) as error:
        apply_state(resnet, load_checkpoint(path).cm_state, what="ASV model", source=path)
    message = str(error.value)
    n_resnet, n_aasist = len(resnet.state_dict()), len(raw_state(path))
    assert f"{n_resnet} missing" in message and f"{n_aasist} unexpected" in message
    assert "pos_S" in message and "ASV model" in message and str(path) in message


# --------------------------------------------------------------------------- AASIST
@pytest.mark.parametrize("name", ["AASIST", "AASIST-L"])
def test_aasist_weights_load_into_their_config(fixtures, name):
    path = fixtures / "weights" / f"{name}.pth"
    model = AASIST(aasist_config(fixtures, name))
    checkpoint = load_cm_weights(model, path)
    assert checkpoint.format == "aasist" and checkpoint.asv_state is None
    assert_state_equal(model, raw_state(path))


def test_module_prefixed_aasist_loads(fixtures, tmp_path):
    raw = raw_state(fixtures / "weights" / "AASIST-L.pth")
    path = tmp_path / "ddp.pth"
    torch.save({"module." + key: value for key, value in raw.items()}, path)
    model = AASIST(aasist_config(fixtures, "AASIST-L"))
    load_cm_weights(model, path)
    assert_state_equal(model, raw)


def test_aasist_weights_into_aasist_l_fail_clearly(fixtures):
    path = fixtures / "weights" / "AASIST.pth"
    with pytest.raises(CheckpointError) as error:
        load_cm_weights(AASIST(aasist_config(fixtures, "AASIST-L")), path)
    message = str(error.value)
    assert str(path) in message and "CM model" in message and "with another shape" in message


# --------------------------------------------------------------------------- unsafe and broken files
class _RunsShellOnLoad:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("layout", ["flat", "lightning"])
def test_malicious_pickle_is_refused_without_running(tmp_path, layout):
    marker = tmp_path / "code_ran"
    payload = _RunsShellOnLoad(marker)
    if layout == "flat":
        obj = {"__S__.conv1.weight": torch.zeros(1), "evil": payload}
    else:
        obj = {"state_dict": {"loss.center": torch.zeros(1, 4)}, "hyper_parameters": {"config": payload}}
    path = tmp_path / "evil.ckpt"
    torch.save(obj, path)
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(path)
    message = str(error.value)
    assert f"{os.system.__module__}.system" in message
    assert "refused" in message and "execute code" in message and str(path) in message
    assert not marker.exists()


def _truncated_zip(fixtures: Path, folder: Path) -> Path:
    data = (fixtures / "weights" / "AASIST-L.pth").read_bytes()
    path = folder / "truncated.pth"
    path.write_bytes(data[: len(data) // 2])
    return path


@pytest.mark.parametrize("kind", ["text", "truncated_zip", "random_bytes", "empty", "missing"])
def test_not_a_checkpoint(fixtures, tmp_path, kind):
    path = tmp_path / f"{kind}.model"
    if kind == "text":
        path.write_text("speaker_id utt_id target 0.5\n" * 20)
    elif kind == "truncated_zip":
        path = _truncated_zip(fixtures, tmp_path)
    elif kind == "random_bytes":
        path.write_bytes(torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(0),
                                       dtype=torch.uint8).numpy().tobytes())
    elif kind == "empty":
        path.write_bytes(b"")
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(path)
    assert str(path) in str(error.value)


@pytest.mark.parametrize("obj", [[1, 2, 3], {"weights": [1.0]}, {"conv.weight": torch.zeros(2)}])
def test_unrecognised_content_is_refused(tmp_path, obj):
    path = tmp_path / "other.pt"
    torch.save(obj, path)
    with pytest.raises(CheckpointError, match="not a recognised checkpoint|unknown architecture"):
        load_checkpoint(path)


# --------------------------------------------------------------------------- saving and frozen parts
class _TinyEncoder(nn.Module):
    """Small stand-in sub-system with BatchNorm and dropout, so train/eval mode is observable."""

    def __init__(self, dim: int, with_logits: bool = False) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool1d(16)
        self.proj = nn.Linear(16, dim)
        self.norm = nn.BatchNorm1d(dim)
        self.drop = nn.Dropout(0.5)
        self.head = nn.Linear(dim, 2) if with_logits else None

    def forward(self, wave):
        emb = self.drop(self.norm(self.proj(self.pool(wave.unsqueeze(1)).flatten(1))))
        return (emb, self.head(emb)) if self.head is not None else emb


def tiny_model(train_asv: bool = True, train_cm: bool = True) -> SASVModel:
    torch.manual_seed(0)
    return SASVModel(_TinyEncoder(512), _TinyEncoder(160, with_logits=True), SASVBackend(),
                     train_asv=train_asv, train_cm=train_cm)


def test_save_load_roundtrip_and_atomic_write(tmp_path):
    model = tiny_model()
    center = nn.Parameter(torch.randn(1, 256))
    loss = nn.Module()
    loss.center = center
    path = tmp_path / "run" / "last.ckpt"
    save_checkpoint(path, model=model, loss=loss, config={"batch_size": 4, "dirs": {"a": "b"}},
                    extra={"epoch": 3, "global_step": 12})
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.ckpt"]
    checkpoint = load_checkpoint(path)
    assert checkpoint.format == "sasv" and checkpoint.config == {"batch_size": 4, "dirs": {"a": "b"}}
    assert checkpoint.meta["epoch"] == 3 and checkpoint.meta["global_step"] == 12
    assert torch.equal(checkpoint.oc_center, center.detach())
    for state, module in ((checkpoint.asv_state, model.asv_model), (checkpoint.cm_state, model.cm_model),
                          (checkpoint.backend_state, model.backend)):
        assert_state_equal(module, state)


def test_failed_save_keeps_existing_file(tmp_path, monkeypatch):
    model = tiny_model()
    path = tmp_path / "best.ckpt"
    save_checkpoint(path, model=model, loss=None, config=None)
    before = path.read_bytes()

    with pytest.raises(TypeError, match=r"config\['callback'\] is a function"):
        save_checkpoint(path, model=model, loss=None, config={"callback": lambda: None})
    assert path.read_bytes() == before

    def dies_mid_write(obj, handle, *args, **kwargs):
        handle.write(b"PK\x03\x04 half a checkpoint")
        raise KeyboardInterrupt  # like a kill during the write

    monkeypatch.setattr(torch, "save", dies_mid_write)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, model=model, loss=None, config=None)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.ckpt"]
    assert load_checkpoint(path).format == "sasv"


def test_frozen_subsystems_have_no_grad_and_stay_in_eval():
    model = tiny_model(train_asv=False, train_cm=False)
    model.train()
    assert model.training and model.backend.training
    assert not model.asv_model.training and not model.cm_model.training
    assert not any(p.requires_grad for p in model.asv_model.parameters())
    assert not any(p.requires_grad for p in model.cm_model.parameters())
    assert {id(p) for p in model.trainable_parameters()} == {id(p) for p in model.backend.parameters()}

    running_mean = model.asv_model.norm.running_mean.clone()
    wave = torch.randn(4, 800)
    assert not model.asv_embedding(wave).requires_grad
    feats = model(wave, wave)
    feats.sum().backward()
    assert torch.equal(model.asv_model.norm.running_mean, running_mean)  # eval mode: statistics untouched
    # fc_out is part of the file format only; everything else in the back-end learns.
    assert all(p.grad is not None for name, p in model.backend.named_parameters() if not name.startswith("fc_out."))
    # Deterministic despite dropout: the frozen parts really run in eval mode.
    assert torch.equal(model.asv_embedding(wave), model.asv_embedding(wave))


def test_trainable_subsystem_trains():
    model = tiny_model(train_asv=True, train_cm=False)
    model.train()
    assert model.asv_model.training and not model.cm_model.training
    trainable = {id(p) for p in model.trainable_parameters()}
    assert trainable == {id(p) for p in [*model.backend.parameters(), *model.asv_model.parameters()]}
    model(torch.randn(4, 800), torch.randn(4, 800)).sum().backward()
    assert all(p.grad is not None for p in model.asv_model.parameters())
    assert all(p.grad is None for p in model.cm_model.parameters())


def test_integer_waveforms_are_refused():
    model = tiny_model().eval()
    with pytest.raises(TypeError, match="floating-point"):
        model.asv_embedding(torch.zeros(2, 800, dtype=torch.int16))
    with pytest.raises(TypeError, match="float64"):
        model.cm_embedding(torch.zeros(2, 800, dtype=torch.float64))


# --------------------------------------------------------------------------- NaN/inf weights
def test_our_checkpoint_with_one_nan_weight_is_refused_naming_the_key(tmp_path):
    model = tiny_model()
    with torch.no_grad():
        model.backend.fc_out.weight[0, 3] = float("nan")
    path = tmp_path / "diverged.ckpt"
    save_checkpoint(path, model=model, loss=None, config=None)
    with pytest.raises(CheckpointError) as error:
        load_sasv_weights(tiny_model(), None, path)
    message = str(error.value)
    assert message.startswith(f"{path}: ") and "backend_state['fc_out.weight']" in message and "NaN" in message
    assert "\n" not in message


def test_nonfinite_optimiser_state_is_refused_and_large_finite_values_are_not(tmp_path):
    model = tiny_model()
    moment = torch.zeros(3)
    moment[1] = float("inf")
    path = tmp_path / "last.ckpt"
    save_checkpoint(path, model=model, loss=None, config=None,
                    extra={"optimizer": {"state": {0: {"exp_avg_sq": moment}}, "param_groups": []}})
    with pytest.raises(CheckpointError, match=r"extra\['optimizer'\]\['state'\]\[0\]\['exp_avg_sq'\]"):
        load_checkpoint(path)

    # Finite values whose sum overflows (fp16 and float32) are healthy: the file loads as saved.
    big = {"half": torch.full((4,), 60000.0, dtype=torch.float16), "single": torch.full((4,), 3e38)}
    save_checkpoint(path, model=model, loss=None, config=None, extra={"big": big})
    loaded = load_checkpoint(path)
    assert torch.equal(loaded.meta["big"]["half"], big["half"]) and torch.equal(loaded.meta["big"]["single"],
                                                                                  big["single"])
    assert_state_equal(model.backend, loaded.backend_state)


def _poisoned_copy(source: Path, folder: Path, key: str, value: float) -> Path:
    """A byte copy of a published checkpoint with the first value of tensor `key` (float32) replaced in the
    archive itself, so that everything else (pickled config, other tensors, layout) stays as published."""
    raw = raw_state(source) if source.suffix != ".ckpt" else None
    if raw is None:  # the Lightning file pickles omegaconf objects: read it the way the toolkit does
        from models.checkpoint import _safe_torch_load
        raw = _safe_torch_load(source)["state_dict"]
    stored = raw[key].contiguous().numpy().tobytes()
    data = bytearray(source.read_bytes())
    assert data.count(stored) == 1  # the tensor's bytes are found once, uncompressed
    start = data.find(stored)
    data[start:start + 4] = struct.pack("<f", value)
    target = folder / source.name
    target.write_bytes(bytes(data))
    return target


@pytest.mark.parametrize("name, key, named", [
    ("weights/AASIST-L.pth", "out_layer.weight", "out_layer.weight"),
    ("golden/resnetse34v2_vox_format.model", "__S__.layer1.0.bn1.running_var", "__S__.layer1.0.bn1.running_var"),
    ("golden/joint_seed_format.ckpt", "model.fc_out.weight", "state_dict['model.fc_out.weight']"),
])
def test_a_published_checkpoint_with_one_nonfinite_value_is_refused_naming_the_key(fixtures, tmp_path, name, key,
                                                                                   named):
    source = fixtures / name
    assert load_checkpoint(source).source == source  # the published file itself loads
    for value in (float("nan"), float("-inf")):
        poisoned = _poisoned_copy(source, tmp_path, key, value)
        with pytest.raises(CheckpointError) as error:
            load_checkpoint(poisoned)
        message = str(error.value)
        assert message.startswith(f"{poisoned}: ") and f"tensor {named} holds NaN/inf (1 of " in message


def test_save_cm_score_refuses_a_nan_checkpoint_in_one_line(fixtures, tmp_path, capsys, monkeypatch):
    from tiny_run import run_script

    poisoned = _poisoned_copy(fixtures / "weights" / "AASIST.pth", tmp_path, "out_layer.weight", float("nan"))
    status, out, err = run_script("save_cm_score.py", ["--cm_model", str(poisoned), "--device", "cpu",
                                                       "--comment", str(tmp_path / "out")], capsys, monkeypatch)
    assert status == 2 and out == ""
    assert len(err.strip().splitlines()) == 1
    assert err.startswith(f"error: {poisoned}: tensor out_layer.weight holds NaN/inf")
    assert not (tmp_path / "out").exists()  # refused before any output


# --------------------------------------------------------------------------- a full disk while saving
def _disk_full_after(budget: int):
    """atomic_open whose file takes `budget` bytes, then fails like a full disk (torch.save gets the OSError
    from write and raises a RuntimeError of its own, as on a real full disk)."""
    real_open = files.atomic_open

    @contextmanager
    def filling_open(path, mode="w"):
        with real_open(path, mode) as handle:
            yield _Filling(handle, budget)
    return filling_open


class _Filling:
    def __init__(self, handle, budget: int) -> None:
        self.handle, self.left = handle, budget

    def write(self, data) -> int:
        size = len(memoryview(data).cast("B"))
        if size > self.left:
            self.handle.write(bytes(memoryview(data).cast("B")[:self.left]))  # a partial file on disk
            self.left = 0
            raise OSError(errno.ENOSPC, "No space left on device")
        self.left -= size
        return self.handle.write(data)

    def flush(self) -> None:
        self.handle.flush()


@pytest.mark.parametrize("budget", [100, 20000])
def test_a_full_disk_while_saving_names_the_checkpoint_and_keeps_the_old_one(tmp_path, monkeypatch, budget):
    import models.checkpoint

    path = tmp_path / "last.ckpt"
    save_checkpoint(path, model=tiny_model(), loss=None, config={"epoch": 1})
    before = path.read_bytes()
    monkeypatch.setattr(models.checkpoint, "atomic_open", _disk_full_after(budget))
    with pytest.raises(OSError) as error:
        save_checkpoint(path, model=tiny_model(), loss=None, config={"epoch": 2})
    assert error.value.errno == errno.ENOSPC and error.value.filename == str(path)
    assert path.read_bytes() == before and sorted(tmp_path.iterdir()) == [path]  # no temporary left
    assert load_checkpoint(path).config == {"epoch": 1}
