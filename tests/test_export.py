"""export.py: ONNX (onnxruntime) and TorchScript files give PyTorch's outputs on real speech at several lengths.

The system: a seeded small ResNetSE34V2, the published AASIST-L weights (fixtures) and a seeded back-end, saved
as a joint checkpoint. Each format is exported once per module; the PyTorch side is the loaded system's own
path (model.asv_embedding, model.cm_embedding, loss.score(model.score_embeddings(...))), as scoring/sasv.py.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from data.audio import load_waveform
from data.corpora import recorded_config
from export import main as export_main
from models.build import build_sasv_model, load_system
from models.checkpoint import CheckpointError, load_cm_weights, save_checkpoint, save_subsystem_checkpoint
from runtime.config import load_config
from runtime.errors import UserError
from scoring.calibration import Decision, SystemCalibration, system_fingerprint
from scoring.fusion import Calibration

ort = pytest.importorskip("onnxruntime")

SPEECH = ("LA_0019_LA_E_1798025", "LA_0026_LA_E_6067886")  # decode with current soundfile (fixtures README 0.1)
LENGTHS = (24000, 48000, 80000)  # 1.5 s, 3 s, 5 s at 16 kHz
TOLERANCE = 1e-4


def write_config(folder: Path, fixtures: Path) -> Path:
    model_config = json.loads((fixtures / "weights" / "AASIST-L.conf").read_text())["model_config"]
    values = {"device": "cpu", "test_samples": 20000, "enrollment_samples": {"dev": 96000, "eval": 96000},
              "asv_model": {"n_out": 32, "n_mels": 24, "num_filters": [8, 8, 16, 16], "layers": [1, 1, 1, 1]},
              "cm_model": model_config,
              "backend": {"conv_channels": [8, 8, 16], "hidden_dims": [32, 16]}, "optim": {"oc_dim": 16}}
    path = folder / "tiny.conf"
    path.write_text(json.dumps(values))
    return path


@pytest.fixture(scope="module")
def system(fixtures, tmp_path_factory):
    """(config path, joint checkpoint, the loaded PyTorch system, {format: export folder})."""
    folder = tmp_path_factory.mktemp("export")
    config_path = write_config(folder, fixtures)
    config = load_config(config_path)
    torch.manual_seed(0)
    model, loss = build_sasv_model(config, load_weights=False)
    load_cm_weights(model.cm_model, fixtures / "weights" / "AASIST-L.pth")
    checkpoint = save_checkpoint(folder / "joint.ckpt", model=model, loss=loss, config=None)
    calibration = SystemCalibration(system="sasv", weights_sha256=system_fingerprint(model, loss), prior=0.5,
                                    calibrations={"sasv": Calibration(2.5, -0.25, 0.5, 10, 20, 7)},
                                    decision=Decision("sasv", 0.125, "sasv_eer", 0.1)).as_dict()
    (folder / "calibration.json").write_text(json.dumps(calibration))
    exports = {}
    for fmt in ("onnx", "torchscript"):
        exports[fmt] = folder / fmt
        export_main(["--config", str(config_path), "--model", str(checkpoint), "--format", fmt,
                     "--out", str(exports[fmt])])
    loaded, loaded_loss, _ = load_system(config, torch.device("cpu"), {"model": str(checkpoint)},
                                         need=("asv", "cm", "backend"))
    return config_path, checkpoint, (loaded, loaded_loss), exports, calibration


def speech(fixtures: Path, samples: int) -> torch.Tensor:
    """Real speech, `samples` long: two rows from different speakers at the shortest length (a batch), one row
    at the others (AASIST costs about a second per second of audio on this CPU)."""
    pairs = zip(SPEECH, (16000, 48000)) if samples == min(LENGTHS) else [(SPEECH[0], 16000)]
    return torch.stack([load_waveform(fixtures / "audio" / f"{name}.flac", None)[offset:offset + samples]
                        for name, offset in pairs])


class Runner:
    """One exported file, run by onnxruntime or TorchScript, with its inputs in order."""

    def __init__(self, folder: Path, name: str, fmt: str) -> None:
        if fmt == "onnx":
            session = ort.InferenceSession(str(folder / f"{name}.onnx"), providers=["CPUExecutionProvider"])
            names = [entry.name for entry in session.get_inputs()]
            self.run = lambda *inputs: session.run(None, {n: x.numpy() for n, x in zip(names, inputs)})
        else:
            module = torch.jit.load(str(folder / f"{name}.pt"))

            def run(*inputs):
                with torch.no_grad():
                    out = module(*inputs)
                return [value.numpy() for value in (out if isinstance(out, tuple) else (out,))]
            self.run = run


def max_difference(expected: torch.Tensor, got: np.ndarray) -> float:
    assert got.shape == tuple(expected.shape)
    return float(np.abs(got - expected.numpy()).max())


@pytest.mark.slow
@pytest.mark.parametrize("samples", LENGTHS)
def test_exported_networks_match_pytorch_on_speech(system, fixtures, samples):
    _, _, (model, loss), exports, _ = system
    wave = speech(fixtures, samples)
    rows = wave.shape[0]
    enrollment_wave = load_waveform(fixtures / "audio" / "LA_0072_LA_D_1046944.flac", 96000)[None]
    with torch.no_grad():
        asv = model.asv_embedding(wave)
        enrolled = model.asv_embedding(enrollment_wave).expand(rows, -1).contiguous()
        cm_embedding, logits = model.cm_embedding(wave)
        sasv = loss.score(model.score_embeddings(enrolled, asv, cm_embedding))
    # the check can fail: a trial with another enrollment, or another test row, scores far outside the tolerance
    with torch.no_grad():
        other = loss.score(model.score_embeddings(asv.flip(1), asv, cm_embedding))
    assert float((other - sasv).abs().max()) > 10 * TOLERANCE
    for fmt, folder in exports.items():
        got_asv, = Runner(folder, "asv_embedding", fmt).run(wave)
        got_cm, got_score = Runner(folder, "cm", fmt).run(wave)
        got_sasv, = Runner(folder, "backend", fmt).run(enrolled, asv, cm_embedding)
        differences = {"asv": max_difference(asv, got_asv), "cm_embedding": max_difference(cm_embedding, got_cm),
                       "cm_score": max_difference(logits[:, 1], got_score), "sasv": max_difference(sasv, got_sasv)}
        print(f"{fmt} {samples} samples x {rows}: " + ", ".join(f"{k} {v:.2e}" for k, v in differences.items()))
        assert max(differences.values()) <= TOLERANCE, (fmt, differences)


@pytest.mark.slow
def test_conventions_describe_the_export(system):
    config_path, checkpoint, _, exports, calibration = system
    for fmt, suffix in (("onnx", ".onnx"), ("torchscript", ".pt")):
        folder = exports[fmt]
        assert sorted(path.name for path in folder.iterdir()) == sorted(
            [f"asv_embedding{suffix}", f"cm{suffix}", f"backend{suffix}", "conventions.json"])
        conventions = json.loads((folder / "conventions.json").read_text())
        assert conventions["sample_rate"] == 16000 and conventions["test_audio"]["samples"] == 20000
        assert conventions["enrollment_audio"]["samples"] == {"dev": 96000, "eval": 96000}
        assert conventions["source_checkpoint"]["path"] == str(checkpoint)
        assert conventions["calibration"] == calibration
        cm = conventions["files"][f"cm{suffix}"]
        assert [o["name"] for o in cm["outputs"]] == ["cm_embedding", "cm_score"]
        assert cm["inputs"][0]["shape"] == ["batch", "samples"] and cm["dynamic_axes"]["samples"] is True
        backend = conventions["files"][f"backend{suffix}"]
        assert [i["name"] for i in backend["inputs"]] == ["asv_enrollment", "asv_test", "cm_embedding"]
        assert backend["inputs"][2]["shape"] == ["batch", 160]


@pytest.mark.slow  # 4 s alone, 11 s on the loaded 2-core machine
def test_stage_checkpoint_exports_its_network_alone(fixtures, tmp_path):
    config_path = write_config(tmp_path, fixtures)
    torch.manual_seed(1)
    model, _ = build_sasv_model(load_config(config_path), load_weights=False)
    # The config stored in the checkpoint, as main.py stores it: export.py then needs no --config.
    stage = save_subsystem_checkpoint(tmp_path / "asv.ckpt", asv_model=model.asv_model,
                                      config=recorded_config(load_config(config_path)))
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "cm.onnx").write_text("an earlier export's file")
    export_main(["--model", str(stage), "--format", "onnx", "--out", str(tmp_path / "out")])
    assert sorted(path.name for path in (tmp_path / "out").iterdir()) == ["asv_embedding.onnx", "conventions.json"]
    conventions = json.loads((tmp_path / "out" / "conventions.json").read_text())
    assert conventions["system"] == "asv" and conventions["calibration"] is None
    wave = load_waveform(fixtures / "audio" / "LA_0072_LA_D_1046944.flac", 40000)[None]
    got, = Runner(tmp_path / "out", "asv_embedding", "onnx").run(wave)
    with torch.no_grad():
        assert max_difference(model.asv_model.eval()(wave), got) <= TOLERANCE


def test_not_a_checkpoint_is_one_error_naming_the_file(fixtures, tmp_path):
    config_path = write_config(tmp_path, fixtures)
    bad = tmp_path / "notes.ckpt"
    bad.write_text("not a model\n")
    with pytest.raises(CheckpointError, match=str(bad)) as caught:
        export_main(["--config", str(config_path), "--model", str(bad), "--format", "onnx",
                     "--out", str(tmp_path / "out")])
    assert "\n" not in str(caught.value)
    assert not (tmp_path / "out").exists()


def test_missing_part_is_one_error_naming_the_file(fixtures, tmp_path):
    """A _fixed model's checkpoint holds the back-end only; without asv_weight / aasist_weight it is refused."""
    config_path = write_config(tmp_path, fixtures)
    model, loss = build_sasv_model(load_config(config_path), load_weights=False)
    joint = save_checkpoint(tmp_path / "joint.ckpt", model=model, loss=loss, config=None)
    raw = torch.load(joint, weights_only=True)
    raw["asv_state"] = raw["cm_state"] = None
    fixed = tmp_path / "fixed.ckpt"
    torch.save(raw, fixed)
    with pytest.raises(CheckpointError, match=str(fixed)) as caught:
        export_main(["--config", str(config_path), "--model", str(fixed), "--format", "torchscript",
                     "--out", str(tmp_path / "out")])
    assert "\n" not in str(caught.value) and "asv_weight" in str(caught.value)


def test_output_folder_that_is_a_file(fixtures, tmp_path):
    config_path = write_config(tmp_path, fixtures)
    out = tmp_path / "out"
    out.write_text("a file")
    with pytest.raises(UserError, match="--out") as caught:
        export_main(["--config", str(config_path), "--model", str(tmp_path / "any.ckpt"), "--format", "onnx",
                     "--out", str(out)])
    assert str(out) in str(caught.value) and out.read_text() == "a file"


def test_missing_onnx_package_is_one_error_naming_it(fixtures, tmp_path, monkeypatch):
    import importlib.util

    import models.export

    real = importlib.util.find_spec
    monkeypatch.setattr(models.export.importlib.util, "find_spec",
                        lambda name, *args: None if name == "onnx" else real(name, *args))
    with pytest.raises(models.export.ExportError, match="pip install onnx==") as caught:
        export_main(["--config", str(write_config(tmp_path, fixtures)), "--model", str(tmp_path / "any.ckpt"),
                     "--format", "onnx", "--out", str(tmp_path / "out")])
    assert "\n" not in str(caught.value)


def test_without_onnxruntime_the_onnx_file_is_checked_by_its_trace(tmp_path, monkeypatch):
    """onnxruntime is a test dependency only: without it the export checks the module it traced, which still
    refuses a graph that bakes in its example's shapes."""
    import importlib.util

    import models.export
    from models.export import ExportError, Part, export_part

    real = importlib.util.find_spec
    monkeypatch.setattr(models.export.importlib.util, "find_spec",
                        lambda name, *args: None if name == "onnxruntime" else real(name, *args))
    assert models.export.onnx_runner() == "torch.jit.trace"
    torch.manual_seed(0)
    linear = torch.nn.Linear(4, 3)
    part = Part(linear, ("x",), ("y",), {"x": 4, "y": 3}, {})
    export_part("linear", part, tmp_path / "linear.onnx", "onnx", 16000)
    assert (tmp_path / "linear.onnx").is_file() and part.dynamic["max_difference"] <= 1e-6

    class Shaped(torch.nn.Module):  # its output depends on the batch size as a Python int: a trace bakes it in
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * float(x.shape[0])

    with pytest.raises(ExportError, match="do not match PyTorch"):
        export_part("shaped", Part(Shaped(), ("x",), ("y",), {"x": 4, "y": 4}, {}), tmp_path / "shaped.onnx",
                    "onnx", 16000)
