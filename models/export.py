"""Export a trained system's networks as ONNX or TorchScript files, with a JSON of their input conventions.

Files (each only when the system has that part): asv_embedding (waveform [batch, samples] -> speaker
embedding), cm (waveform -> cm_embedding, cm_score = bona fide logit) and backend (asv_enrollment, asv_test,
cm_embedding -> sasv_score, exactly `loss.score(model.score_embeddings(...))` of scoring/sasv.py), plus
conventions.json. Every file is checked against the PyTorch network at several input lengths and batch
sizes before anything is written; a file that does not match is refused, never written.

Two parts of the networks do not trace as they are, so the exported copy swaps them for equivalents:
torchaudio's spectrogram (a complex STFT, which the ONNX exporter cannot take) becomes a real STFT
(re^2 + im^2), and AASIST's graph pooling, which keeps int(nodes * ratio) nodes as a Python int, computes
that count from the tensor's shape in float64 (the same rounding), so the time axis stays dynamic. The
exporter is the TorchScript-based one (dynamo=False): torch.export specialises the pooling count to the
example's length.
"""
from __future__ import annotations

import copy
import importlib.util
import json
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from models.aasist import GraphPool
from models.build import (
    build_asv_network,
    build_cm_network,
    existing_weight_file,
    load_b2_backend,
    load_system,
    subsystems_held,
)
from models.checkpoint import Checkpoint, CheckpointError, load_checkpoint
from models.sasv import SASVBackend
from runtime.config import Config
from runtime.errors import UserError
from runtime.files import StagedOutputs, check_output_place
from scoring.calibration import DIRECTIONS, calibration_beside, system_fingerprint
from scoring.inputs import enrollment_length

FORMAT_VERSION = 1
FORMATS = {"onnx": ".onnx", "torchscript": ".pt"}
NETWORKS = ("asv_embedding", "cm", "backend")
ONNX_PACKAGE = "onnx==1.23.2"
OPSET = 17  # the first with STFT
TOLERANCE = 1e-4  # absolute, scaled by the largest output value when that is over 1
CHECK_BATCHES = (1, 3)


class ExportError(UserError):
    """A network cannot be exported correctly, or the exporter's packages are missing."""


@dataclass
class Part:
    """One network to export: the module, its input and output names, and what the outputs mean."""

    module: nn.Module  # the original, for the checks
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    widths: dict[str, int]  # the size of each [batch, width] input / output; waveforms have no width
    meaning: dict[str, str]
    dynamic: dict[str, Any] = field(default_factory=dict)  # filled by the export: what is dynamic


class _CMScore(nn.Module):
    """CM network -> (embedding, bona fide logit), the two values scoring takes from it."""

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, waveform: Tensor) -> tuple[Tensor, Tensor]:
        embedding, logits = self.network(waveform)
        return embedding, logits[:, 1]


class _SASVScore(nn.Module):
    """Back-end + OC-softmax centre -> SASV score, as SASVScorer.score_from_embeddings."""

    def __init__(self, backend: nn.Module, loss: nn.Module) -> None:
        super().__init__()
        self.backend = backend
        self.loss = loss

    def forward(self, asv_enrollment: Tensor, asv_test: Tensor, cm_embedding: Tensor) -> Tensor:
        return self.loss.score(self.backend(asv_enrollment, asv_test, cm_embedding))


class _B2Score(nn.Module):
    """System b2's back-end -> its SASV score, the target log-odds (training/tasks/b2.py B2Task.score)."""

    def __init__(self, backend: nn.Module) -> None:
        super().__init__()
        self.backend = backend

    def forward(self, asv_enrollment: Tensor, asv_test: Tensor, cm_embedding: Tensor) -> Tensor:
        return type(self.backend).score(self.backend(asv_enrollment, asv_test, cm_embedding))


class _RealSpectrogram(nn.Module):
    """torchaudio's Spectrogram (power 2) through a real-valued STFT: |X|^2 = re^2 + im^2."""

    def __init__(self, spectrogram: nn.Module) -> None:
        super().__init__()
        self.spectrogram = spectrogram

    def forward(self, waveform: Tensor) -> Tensor:
        s = self.spectrogram
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # return_complex=False is deprecated, still exact
            real = torch.stft(waveform, n_fft=s.n_fft, hop_length=s.hop_length, win_length=s.win_length,
                              window=s.window, center=s.center, pad_mode=s.pad_mode, normalized=False,
                              onesided=True, return_complex=False)
        return real.pow(2).sum(-1)


class _ShapeGraphPool(GraphPool):
    """GraphPool whose node count comes from the input's shape inside the graph, not a Python int."""

    def forward(self, h: Tensor) -> Tensor:
        scores = self.sigmoid(self.proj(self.drop(h)))
        nodes = torch._shape_as_tensor(h)[1].to(torch.float64)
        # max(int(n * k), 1) of GraphPool: n * k in float64 as Python computes it, truncated (n > 0).
        n_keep = torch.clamp(torch.floor(nodes * self.k), min=1).to(torch.int64)
        _, index = torch.topk(scores, n_keep, dim=1)
        return torch.gather(h * scores, 1, index.expand(-1, -1, h.size(2)))


def traceable_copy(module: nn.Module) -> nn.Module:
    """A deep copy of `module` with the parts that do not trace (see the module docstring) swapped."""
    module = copy.deepcopy(module).eval()
    for child in list(module.modules()):
        if isinstance(child, SASVBackend):
            # Its input checks compare shapes as Python values, which the tracer turns into tensors; the
            # exported graph's fixed widths check the inputs instead.
            child._check_inputs = lambda *inputs: None
        if type(child) is GraphPool:
            child.__class__ = _ShapeGraphPool
        spectrogram = getattr(child, "spectrogram", None)
        if type(spectrogram).__name__ == "Spectrogram" and type(spectrogram).__module__.startswith("torchaudio") \
                and spectrogram.power == 2.0 and spectrogram.pad == 0 and not spectrogram.normalized \
                and spectrogram.onesided:
            child.spectrogram = _RealSpectrogram(spectrogram)
    return module


# --------------------------------------------------------------------------- which parts a checkpoint gives
@dataclass
class ExportSystem:
    """What export_system writes: the parts, where their weights came from, and the conventions."""

    parts: dict[str, Part]
    system: str
    checkpoint: Checkpoint
    weights: dict[str, str]  # part -> file its weights came from
    weights_sha256: str  # scoring.calibration.system_fingerprint: which calibration.json belongs to them


def _b2_networks(config: Config, parts: dict[str, Part], weights: dict[str, str]) -> None:
    """The config's asv_weight / aasist_weight networks, where set, next to a b2 back-end."""
    from models.checkpoint import load_asv_weights, load_cm_weights

    if config["asv_weight"]:
        network = build_asv_network(config)
        load_asv_weights(network, existing_weight_file(config, "asv_weight"))
        parts["asv_embedding"] = asv_part(network.eval(), config["asv_model"]["n_out"])
        weights["asv_embedding"] = config["asv_weight"]
    if config["aasist_weight"]:
        network = build_cm_network(config)
        load_cm_weights(network, existing_weight_file(config, "aasist_weight"))
        parts["cm"] = cm_part(network.eval())
        weights["cm"] = config["aasist_weight"]


def asv_part(network: nn.Module, width: int) -> Part:
    return Part(network, ("waveform",), ("asv_embedding",), {"asv_embedding": width},
                {"asv_embedding": "speaker embedding; the ASV score is the cosine of the speaker model (mean of the "
                                  "enrollment embeddings) and the test embedding, higher = target speaker"})


def cm_part(network: nn.Module) -> Part:
    return Part(_CMScore(network), ("waveform",), ("cm_embedding", "cm_score"),
                {"cm_embedding": network.embedding_dim, "cm_score": 0},
                {"cm_embedding": "CM embedding (the back-end's cm_embedding input)",
                 "cm_score": "bona fide logit (index 1 of the CM's logits; save_cm_score.py's _no_softmax score), "
                             "higher = bona fide"})


def _backend_part(module: nn.Module, asv_dim: int, cm_dim: int, meaning: str) -> Part:
    return Part(module, ("asv_enrollment", "asv_test", "cm_embedding"), ("sasv_score",),
                {"asv_enrollment": asv_dim, "asv_test": asv_dim, "cm_embedding": cm_dim, "sasv_score": 0},
                {"sasv_score": meaning})


def export_parts(config: Config, model_path: Path) -> ExportSystem:
    """The networks `model_path` gives (with the config's architecture), on the CPU in eval mode.

    A joint checkpoint gives all three; one whose file holds the back-end only (a _fixed model) takes the
    frozen networks from the config's asv_weight / aasist_weight, as load_system does; a stage checkpoint
    or a published ASV / CM weights file gives that network alone; a b2 checkpoint its back-end (and the
    config's asv_weight / aasist_weight networks where set)."""
    checkpoint = load_checkpoint(model_path)
    held = subsystems_held(checkpoint)
    parts: dict[str, Part] = {}
    weights: dict[str, str] = {}
    backend = checkpoint.backend_state
    if backend is not None and "dnn.0.weight" in backend:
        b2 = load_b2_backend(config, checkpoint)
        _b2_networks(config, parts, weights)
        asv_dim = config["asv_model"]["n_out"]
        parts["backend"] = _backend_part(_B2Score(b2), asv_dim, b2.dnn[0].in_features - 2 * asv_dim,
                                         "target log-odds of system b2 (logit of target bona fide minus logit of "
                                         "the rest), higher = target bona fide")
        weights["backend"] = str(model_path)
        return ExportSystem(parts, "b2", checkpoint, weights, system_fingerprint(b2))
    if "backend" in held:
        if checkpoint.oc_center is None:
            raise CheckpointError(f"{model_path}: holds a back-end but no OC-softmax centre; its SASV score "
                                  f"cannot be computed")
        for part, key in (("asv", "asv_weight"), ("cm", "aasist_weight")):
            if part not in held and not config[key]:
                raise CheckpointError(f"{model_path}: holds no {part.upper()} network (a _fixed model's back-end); "
                                      f"set {key} in the config to the frozen network's weights")
        need = ("asv", "cm", "backend")
    elif held:
        need = tuple(sorted(held))
    else:
        raise CheckpointError(f"{model_path}: holds no ASV, CM or back-end weights to export")
    model, loss, _ = load_system(config, torch.device("cpu"), {"model": str(model_path)}, need=need)
    for part, name, key in (("asv", "asv_embedding", "asv_weight"), ("cm", "cm", "aasist_weight")):
        if part in need:
            weights[name] = str(model_path) if part in held else str(config[key])
    if "asv" in need:
        parts["asv_embedding"] = asv_part(model.asv_model, config["asv_model"]["n_out"])
    if "cm" in need:
        parts["cm"] = cm_part(model.cm_model)
    if "backend" in need:
        parts["backend"] = _backend_part(_SASVScore(model.backend, loss).eval(), model.backend.asv_dim,
                                         model.backend.cm_dim, "OC-softmax score (cosine of the back-end's "
                                         "embedding and the centre), as save_sasv_score.py writes it; higher = "
                                         "target bona fide")
        weights["backend"] = str(model_path)
    system = "sasv" if "backend" in need else next(iter(need))
    fingerprint = system_fingerprint(model, loss) if system == "sasv" else \
        system_fingerprint(model.asv_model if system == "asv" else model.cm_model)
    return ExportSystem(parts, system, checkpoint, weights, fingerprint)


# --------------------------------------------------------------------------- exporting and checking
def require_onnx() -> None:
    """ExportError naming what to install when the ONNX exporter's package is missing (imported here only)."""
    if importlib.util.find_spec("onnx") is None:
        raise ExportError(f"--format onnx needs the onnx package: pip install {ONNX_PACKAGE}")


def onnx_runner() -> str:
    """What checks an exported ONNX file: onnxruntime when installed (it runs the file itself), else a trace of
    the very module the ONNX exporter traced (the same graph, run by PyTorch)."""
    return "onnxruntime" if importlib.util.find_spec("onnxruntime") is not None else "torch.jit.trace"


def _example(part: Part, batch: int, samples: int, seed: int) -> tuple[Tensor, ...]:
    generator = torch.Generator().manual_seed(seed)
    if part.inputs == ("waveform",):
        return (0.1 * torch.randn(batch, samples, generator=generator),)
    return tuple(torch.randn(batch, part.widths[name], generator=generator) for name in part.inputs)


def _shapes(part: Part, samples: int, dynamic: bool) -> tuple[tuple[int, int], list[tuple[int, int]]]:
    """The (batch, samples) of the traced example and those the export is checked at: with a dynamic time axis,
    the crop length and a shorter one, both unlike the example's, and other batch sizes (the checks are
    short: AASIST costs about a second per second of audio on a CPU)."""
    if part.inputs != ("waveform",):
        return (2, 0), [(1, 0), (5, 0)]
    if not dynamic:
        return (2, samples), [(1, samples), (3, samples)]
    return (2, int(samples * 0.75) + 1), [(1, samples), (3, int(samples * 0.4) + 3)]


def _max_difference(expected: tuple[Tensor, ...], got: list[np.ndarray]) -> float:
    worst = 0.0
    for want, have in zip(expected, got):
        if tuple(want.shape) != tuple(np.shape(have)):
            return float("inf")
        scale = max(1.0, float(want.abs().max()))
        worst = max(worst, float(np.abs(want.numpy() - np.asarray(have)).max()) / scale)
    return worst


def _checked(part: Part, run: Callable[[tuple[Tensor, ...]], list[np.ndarray]], shapes: list[tuple[int, int]],
             ) -> float | None:
    """The largest (scaled) difference from the PyTorch module over `shapes`, or None when a run fails."""
    worst = 0.0
    for seed, (batch, samples) in enumerate(shapes):
        inputs = _example(part, batch, samples, seed + 1)
        with torch.no_grad():
            expected = part.module(*inputs)
        expected = expected if isinstance(expected, tuple) else (expected,)
        try:
            got = run(inputs)
        except Exception:  # an exported graph that cannot run at this shape is not dynamic there
            return None
        worst = max(worst, _max_difference(expected, got))
    return worst


def _export_onnx(part: Part, path: Path, example: tuple[int, int], dynamic: bool) -> Callable:
    names = {name: {0: "batch"} for name in (*part.inputs, *part.outputs)}
    if dynamic and part.inputs == ("waveform",):
        names["waveform"] = {0: "batch", 1: "samples"}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript-based exporter's deprecation and tracer notes
        torch.onnx.export(traceable_copy(part.module), _example(part, *example, 0), str(path), dynamo=False,
                          opset_version=OPSET, input_names=list(part.inputs), output_names=list(part.outputs),
                          dynamic_axes=names)
    if onnx_runner() == "onnxruntime":
        import onnxruntime

        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return lambda inputs: session.run(None, {name: value.numpy() for name, value in zip(part.inputs, inputs)})
    return _traced_runner(part, example)


def _traced_runner(part: Part, example: tuple[int, int]) -> Callable:
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(traceable_copy(part.module), _example(part, *example, 0), check_trace=False)

    def run(inputs: tuple[Tensor, ...]) -> list[np.ndarray]:
        with torch.no_grad():
            out = traced(*inputs)
        return [value.numpy() for value in (out if isinstance(out, tuple) else (out,))]
    return run


def _export_torchscript(part: Part, path: Path, example: tuple[int, int], dynamic: bool) -> Callable:
    module = traceable_copy(part.module)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            scripted = torch.jit.script(module)
        except Exception:  # most networks here do not script (generators, autocast contexts): trace them
            scripted = torch.jit.trace(module, _example(part, *example, 0), check_trace=False)
    scripted.save(str(path))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # TorchScript is deprecated in torch 2.14, still supported
        loaded = torch.jit.load(str(path))

    def run(inputs: tuple[Tensor, ...]) -> list[np.ndarray]:
        with torch.no_grad():
            out = loaded(*inputs)
        return [value.numpy() for value in (out if isinstance(out, tuple) else (out,))]
    return run


def export_part(name: str, part: Part, path: Path, fmt: str, samples: int) -> None:
    """Write `part` to `path` with a dynamic batch (and time axis where the network allows it), checked against
    PyTorch at other lengths and batch sizes. ONNX falls back to a fixed length of `samples` (what scoring
    feeds) when the dynamic graph is wrong; what is still wrong is refused."""
    exporter = _export_onnx if fmt == "onnx" else _export_torchscript
    # An ONNX graph with a fixed length refuses other lengths; a TorchScript trace would not, so it gets no fallback.
    for dynamic in (True, False) if fmt == "onnx" else (True,):
        example, checks = _shapes(part, samples, dynamic)
        try:
            run = exporter(part, path, example, dynamic)
        except Exception as error:  # the exporter's own failure is reported below, as a refusal
            failure = f"the {fmt} exporter failed ({type(error).__name__}: {str(error).splitlines()[0][:200]})"
            continue
        worst = _checked(part, run, checks)
        if worst is not None and worst <= TOLERANCE:
            waveform = part.inputs == ("waveform",)
            part.dynamic = {"batch": True, "samples": dynamic if waveform else None,
                            "checked": [{"batch": b, "samples": s} if waveform else {"batch": b} for b, s in checks],
                            "max_difference": worst}
            return
        failure = "its outputs do not match PyTorch" + ("" if worst is None else f" (difference {worst:.2e})")
    raise ExportError(f"{name}: cannot be exported to {fmt}: {failure}")


# --------------------------------------------------------------------------- conventions
def _calibration(model_path: Path, weights_sha256: str) -> dict | None:
    """calibration.json beside the checkpoint when it was fitted for these weights (else None, said once)."""
    found = calibration_beside(model_path, weights_sha256, lambda text: print(text, file=sys.stderr))
    return None if found is None else found.as_dict()


def _io(part: Part, names: tuple[str, ...]) -> list[dict]:
    rows = []
    for name in names:
        if name == "waveform":
            shape = ["batch", "samples" if part.dynamic.get("samples") else part.dynamic["checked"][0]["samples"]]
        else:
            shape = ["batch", part.widths[name]] if part.widths[name] else ["batch"]
        rows.append({"name": name, "dtype": "float32", "shape": shape, **(
            {"meaning": part.meaning[name]} if name in part.meaning else {})})
    return rows


def conventions(config: Config, exported: ExportSystem, files: dict[str, str], fmt: str, model_path: Path) -> dict:
    """The conventions.json of an export: how to feed the files and read their outputs."""
    checkpoint = exported.checkpoint
    version = checkpoint.meta.get("version", checkpoint.meta.get("pytorch-lightning_version"))
    return {
        "format_version": FORMAT_VERSION,
        "export_format": fmt,
        "system": exported.system,
        "source_checkpoint": {"path": str(model_path), "format": checkpoint.format, "format_version": version},
        "weights": exported.weights,
        "sample_rate": config["sample_rate"],
        "input_scaling": "float32 mono waveform as soundfile reads 16-bit PCM: int sample / 32768, in [-1, 1) "
                         "(no normalisation, no DC removal); at sample_rate, without resampling",
        "test_audio": {"samples": config["test_samples"],
                       "rule": "the first `samples` samples of the file; a shorter file is repeated from its start "
                               "(tiled) up to `samples` (data.audio.pad_or_tile)"},
        "enrollment_audio": {"samples": {part: enrollment_length(exported.system, config, part)
                                         for part in config["enrollment_samples"]},
                             "rule": "each enrollment file cut or tiled to the partition's `samples` as test audio "
                                     "(a SASV system on ASVspoof 2019 LA: one concatenated file per speaker; b2 and "
                                     "an ASV system enrolled from utterances: test_samples)"},
        "speaker_model": "the mean of the ASV embeddings of the speaker's enrollment files (a single file: its "
                         "embedding), not normalised; it is the backend's asv_enrollment input",
        "files": {files[name]: {"inputs": _io(part, part.inputs), "outputs": _io(part, part.outputs),
                                "dynamic_axes": {"batch": True, "samples": part.dynamic["samples"]},
                                "checked_against_pytorch": {"shapes": part.dynamic["checked"],
                                                            "max_difference": part.dynamic["max_difference"],
                                                            "tolerance": TOLERANCE}}
                  for name, part in exported.parts.items()},
        "score_direction": {"asv_embedding": f"cosine of speaker model and test embedding: {DIRECTIONS['asv']}",
                            "cm_score": DIRECTIONS["cm"], "sasv_score": DIRECTIONS["sasv"]},
        "calibration": _calibration(model_path, exported.weights_sha256),
        "checked_with": onnx_runner() if fmt == "onnx" else "torch.jit.load",
    }


def output_files(out: Path) -> list[Path]:
    """Every file an export may write in `out`, in either format."""
    return [out / f"{name}{suffix}" for name in NETWORKS for suffix in FORMATS.values()] + [out / "conventions.json"]


def export_system(config: Config, model_path: Path, fmt: str, out: Path, outputs: StagedOutputs) -> list[Path]:
    """Export the networks of `model_path` into `out` (staged in `outputs`); returns the files written. The
    files of an earlier export there that this one does not write are removed, so the folder and its
    conventions.json describe one export."""
    check_output_place(out, "--out")
    for path in output_files(out):
        check_output_place(path, "--out", folder=False)
    if fmt == "onnx":
        require_onnx()
        if onnx_runner() != "onnxruntime":
            print("warning: onnxruntime is not installed: each ONNX file is checked through a trace of the module "
                  "the exporter traced, not run itself (pip install onnxruntime to run it)", file=sys.stderr)
    exported = export_parts(config, model_path)
    files = {}
    for name, part in exported.parts.items():
        final = out / f"{name}{FORMATS[fmt]}"
        export_part(name, part, outputs.path(final), fmt, config["test_samples"])
        files[name] = final.name
    written = [out / name for name in files.values()]
    text = json.dumps(conventions(config, exported, files, fmt, model_path), indent=2) + "\n"
    outputs.write_text(out / "conventions.json", text)
    written.append(out / "conventions.json")
    for path in output_files(out):
        if path not in written:
            outputs.remove(path)
    return written
