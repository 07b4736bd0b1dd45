"""Loading and saving model weights: voxceleb_trainer, AASIST, seed Lightning and our own checkpoints.

Every file is read with `torch.load(weights_only=True)`, so nothing in a checkpoint can run
code. Lightning files pickle an omegaconf DictConfig; it is rebuilt from small stand-in
classes registered under omegaconf's names and turned into a plain dict, so neither
pytorch-lightning nor omegaconf is needed. State dicts are returned in this toolkit's key
names and applied with a strict load that reports every mismatch in one message.
"""
from __future__ import annotations

import collections
import os
import pickle
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from runtime.errors import UserError
from runtime.files import atomic_open

OUR_FORMAT = "sasv-toolkit"
OUR_VERSION = 1

# Lightning state-dict prefixes of the seed's System (model.* + loss.*) -> our part and key prefix.
_LIGHTNING_PARTS = (
    ("model.asv_emb.model.", "asv", ""),
    ("model.cm_emb.model.", "cm", ""),
    ("model.spf_fc.", "backend", "cm_projection."),
    ("model.DNN_layer.", "backend", "embedding_mlp."),
    ("model.fc_out.", "backend", "fc_out."),
    ("model.conv1.", "backend", "conv1."),
    ("model.conv2.", "backend", "conv2."),
    ("model.conv3.", "backend", "conv3."),
    ("model.bn1.", "backend", "bn1."),
    ("model.bn2.", "backend", "bn2."),
    ("model.bn3.", "backend", "bn3."),
)
_WRAPPER_PREFIXES = ("module.", "speaker_encoder.")  # DataParallel/DDP and speaker-encoder wrappers
_SHOWN_KEYS = 5
_FORMAT_NAMES = {"voxceleb": "voxceleb_trainer (ASV)", "aasist": "AASIST (CM)", "lightning": "Lightning (joint)",
                 "sasv": OUR_FORMAT}


class CheckpointError(UserError):
    """A checkpoint file cannot be read, is unsafe, or does not fit the model it is loaded into."""


@dataclass
class Checkpoint:
    """What a checkpoint file holds, in this toolkit's key names (None = part not in the file)."""

    source: Path
    format: str  # "voxceleb", "aasist", "lightning" or "sasv"
    asv_state: dict[str, Tensor] | None = None
    cm_state: dict[str, Tensor] | None = None
    backend_state: dict[str, Tensor] | None = None
    oc_center: Tensor | None = None
    config: dict | None = None
    asv_loss_state: dict[str, Tensor] | None = None
    meta: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------- safe unpickling
class _OmegaNode:
    """Stand-in for omegaconf containers, nodes and metadata: only records the pickled attributes."""

    def __setstate__(self, state: Any) -> None:
        # Only ordinary attribute names: a crafted state must not shadow methods such as __setstate__.
        if not isinstance(state, dict) or not all(isinstance(key, str) and not key.startswith("__") for key in state):
            raise pickle.UnpicklingError("unexpected omegaconf object state")
        self.__dict__.update(state)


class _OmegaDictConfig(_OmegaNode):
    pass


class _OmegaListConfig(_OmegaNode):
    pass


class _OmegaValueNode(_OmegaNode):
    pass


class _OmegaMetadata(_OmegaNode):
    pass


class _ArgparseNamespace(_OmegaNode):
    """Stand-in for argparse.Namespace: older fairseq checkpoints (wav2vec 2.0 before hydra) keep their
    settings as `args`, a Namespace of plain values."""


class _TypingMarker:
    """Stand-in for typing.Any (omegaconf stores it as a type annotation in its metadata)."""


def _empty_resolver_cache(*_factory: Any) -> dict:
    # omegaconf pickles its resolver cache as defaultdict(dict); it is always discarded.
    return {}


_VALUE_NODES = ("AnyNode", "StringNode", "IntegerNode", "FloatNode", "BooleanNode", "BytesNode", "PathNode")
_STAND_INS: list[tuple[Any, str]] = [
    (_OmegaDictConfig, "omegaconf.dictconfig.DictConfig"),
    (_OmegaListConfig, "omegaconf.listconfig.ListConfig"),
    (_OmegaMetadata, "omegaconf.base.Metadata"),
    (_OmegaMetadata, "omegaconf.base.ContainerMetadata"),
    *[(_OmegaValueNode, f"omegaconf.nodes.{name}") for name in _VALUE_NODES],
    (_ArgparseNamespace, "argparse.Namespace"),
    (_TypingMarker, "typing.Any"),
    (_empty_resolver_cache, "collections.defaultdict"),
    # Plain types appear as values (object_type, key_type); constructing them is harmless.
    (dict, "builtins.dict"),
    (list, "builtins.list"),
    (int, "builtins.int"),
    (float, "builtins.float"),
    (str, "builtins.str"),
    (bool, "builtins.bool"),
    (bytes, "builtins.bytes"),
    (collections.OrderedDict, "collections.OrderedDict"),
]


def _refused_globals(path: Path, message: str) -> list[str]:
    """Names of the globals a refused pickle asked for (empty when it failed for another reason)."""
    try:
        with torch.serialization.safe_globals(_STAND_INS):
            names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # not a zip checkpoint: fall back to the unpickler's message
        names = []
    return list(names) or re.findall(r"GLOBAL ([\w.]+)", message)


def _safe_torch_load(path: Path) -> Any:
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        with torch.serialization.safe_globals(_STAND_INS):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        refused = _refused_globals(path, str(error))
        if refused:
            raise CheckpointError(
                f"{path}: refused to load: unpickling it would import {', '.join(refused)}, which could "
                f"execute code; only tensors, plain Python data and omegaconf configs are accepted") from None
        # torch's message advises loading with weights_only=False; give the reason, not that advice.
        reason = re.search(r"WeightsUnpickler error:\s*(.+?)\s*(?:\n\s*\n|$)", str(error), re.DOTALL)
        with open(path, "rb") as handle:
            start = handle.read(16)
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint (not a torch.save zip archive, and "
                              f"unpickling failed: {reason.group(1) if reason else _first_line(error)}; the file "
                              f"starts with {start!r})") from None
    except Exception as error:  # truncated zip, text, random bytes, ...
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint "
                              f"({type(error).__name__}: {_first_line(error)})") from None


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def _plain_config(node: Any, path: Path) -> Any:
    """Turn a rebuilt omegaconf tree (stand-ins) into plain dicts/lists/values; interpolations stay strings."""
    if isinstance(node, (_OmegaDictConfig, _OmegaListConfig, _OmegaValueNode)):
        value = node.__dict__.get("_val" if isinstance(node, _OmegaValueNode) else "_content")
        return _plain_config(value, path)
    if isinstance(node, _ArgparseNamespace):
        return _plain_config(dict(node.__dict__), path)
    if isinstance(node, Mapping):
        return {str(key): _plain_config(value, path) for key, value in node.items()}
    if isinstance(node, (list, tuple)):
        return [_plain_config(value, path) for value in node]
    if node is None or isinstance(node, (str, int, float, bool)):
        return node
    raise CheckpointError(f"{path}: unexpected {type(node).__name__} in the stored config")


# --------------------------------------------------------------------------- format detection
def load_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Read any supported checkpoint file (format detected from its content) without running code."""
    path = Path(path)
    raw = _safe_torch_load(path)
    _refuse_nonfinite(raw, path)
    if isinstance(raw, Mapping) and raw.get("format") == OUR_FORMAT:
        return _from_ours(raw, path)
    if isinstance(raw, Mapping) and isinstance(raw.get("state_dict"), Mapping):
        if not raw["state_dict"]:  # otherwise reported later as weights missing for every part, not this file
            raise CheckpointError(f"{path}: its state_dict is empty; the file holds no weights")
        return _from_lightning(raw, path)
    if isinstance(raw, Mapping) and raw and all(isinstance(value, Tensor) for value in raw.values()):
        return _from_flat_state(raw, path)
    raise CheckpointError(f"{path}: not a recognised checkpoint (expected a voxceleb_trainer, AASIST, "
                          f"Lightning or {OUR_FORMAT} file; got {_describe(raw)})")


def _refuse_nonfinite(raw: Any, path: Path) -> None:
    """A tensor holding NaN/inf (weights, BatchNorm statistics, optimiser state) is refused here, naming it:
    loaded, it would surface only later, as NaN scores blamed on the first audio file or a NaN loss."""
    try:
        found = _first_nonfinite(raw, "", set())
    except RecursionError:
        raise CheckpointError(f"{path}: its content is nested too deeply to be a checkpoint") from None
    if found is not None:
        where, tensor = found
        bad = int((~torch.isfinite(_stored_values(tensor))).sum())
        raise CheckpointError(f"{path}: tensor {where} holds NaN/inf ({bad} of {tensor.numel()} values); the "
                              f"checkpoint is broken (saved from a diverged run?): use another one")


def nonfinite_key(value: Any) -> str | None:
    """Where the first floating-point tensor holding NaN/inf is in `value` (a state dict, an optimiser state,
    nested dicts and lists), as a key path like "state[0]['exp_avg']"; None when every tensor is finite."""
    found = _first_nonfinite(value, "", set())
    return None if found is None else found[0]


def _first_nonfinite(value: Any, where: str, seen: set[int]) -> tuple[str, Tensor] | None:
    """(key path, tensor) of the first floating-point tensor with a NaN/inf, in the file's order."""
    if isinstance(value, Tensor):
        return (where or "(the whole file)", value) if _has_nonfinite(value) else None
    if isinstance(value, Mapping):
        items: Any = value.items()
    elif isinstance(value, (list, tuple)):
        items = enumerate(value)
    else:  # plain values; Lightning's config stand-ins hold no tensors
        return None
    if id(value) in seen:  # a crafted pickle can refer to a container from inside itself
        return None
    seen.add(id(value))
    for key, item in items:
        found = _first_nonfinite(item, f"{where}[{key!r}]" if where else str(key), seen)
        if found is not None:
            return found
    return None


def _has_nonfinite(tensor: Tensor) -> bool:
    if not (tensor.is_floating_point() or tensor.is_complex()):
        return False
    values = _stored_values(tensor)
    # A NaN/inf value makes the sum NaN/inf, so a finite sum clears the tensor in one cheap pass (isfinite
    # over every value is some 50 times slower); a non-finite sum may be an overflow of large finite values.
    return not bool(torch.isfinite(values.sum())) and not bool(torch.isfinite(values).all())


def _stored_values(tensor: Tensor) -> Tensor:
    """The values a tensor stores (a sparse tensor's implicit zeros are finite; isfinite does not take it)."""
    if tensor.layout == torch.sparse_coo:
        return tensor._values()
    return tensor if tensor.layout == torch.strided else tensor.values()


def _describe(raw: Any) -> str:
    if isinstance(raw, Mapping):
        return f"a dict with keys {_preview(list(raw))}"
    return f"a {type(raw).__name__}"


def _preview(keys: list) -> str:
    shown = ", ".join(str(key) for key in keys[:_SHOWN_KEYS])
    return f"[{shown}{', ...' if len(keys) > _SHOWN_KEYS else ''}]"


def _strip_wrappers(key: str) -> str:
    stripped = True
    while stripped:
        stripped = False
        for prefix in _WRAPPER_PREFIXES:
            if key.startswith(prefix):
                key, stripped = key[len(prefix):], True
    return key


def _from_flat_state(raw: Mapping[str, Tensor], path: Path) -> Checkpoint:
    state = {_strip_wrappers(str(key)): value for key, value in raw.items()}
    if "pos_S" in state and "out_layer.weight" in state:
        return Checkpoint(source=path, format="aasist", cm_state=state)
    if any(key.startswith(("__S__.", "__L__.")) for key in state):
        asv_state, loss_state = {}, {}
        for key, value in state.items():
            if key.startswith("__L__."):
                loss_state[key[len("__L__."):]] = value
            else:
                # Keys outside __S__ are kept so that the strict load reports them.
                asv_state[_strip_wrappers(key.removeprefix("__S__."))] = value
        return Checkpoint(source=path, format="voxceleb", asv_state=asv_state, asv_loss_state=loss_state or None)
    if "fc.weight" in state and any(key.startswith("torchfb.") or key.startswith("layer1.") for key in state):
        return Checkpoint(source=path, format="voxceleb", asv_state=state, meta={"layout": "plain state dict"})
    raise CheckpointError(f"{path}: state dict of unknown architecture (keys {_preview(list(state))}); "
                          f"expected voxceleb_trainer __S__.* keys, a ResNet or an AASIST state dict")


def _from_lightning(raw: Mapping, path: Path) -> Checkpoint:
    parts: dict[str, dict[str, Tensor]] = {"asv": {}, "cm": {}, "backend": {}}
    center, unknown = None, []
    for key, value in raw["state_dict"].items():
        if key == "loss.center":
            center = value
            continue
        for prefix, part, our_prefix in _LIGHTNING_PARTS:
            if key.startswith(prefix):
                parts[part][our_prefix + key[len(prefix):]] = value
                break
        else:
            unknown.append(key)
    if unknown:
        raise CheckpointError(f"{path}: Lightning checkpoint has {len(unknown)} keys this toolkit does not know: "
                              f"{_preview(unknown)}")
    hyper = raw.get("hyper_parameters")
    config = None
    if hyper is not None:
        try:
            plain = _plain_config(hyper, path)
        except RecursionError:
            raise CheckpointError(f"{path}: the stored config is cyclic or too deeply nested") from None
        if isinstance(plain, dict) and isinstance(plain.get("config"), dict):
            config = plain["config"]  # the seed saves hyper_parameters = {"config": DictConfig}
        elif isinstance(plain, dict):
            config = plain
    meta = {key: raw[key] for key in ("epoch", "global_step", "pytorch-lightning_version", "hparams_name")
            if key in raw}
    return Checkpoint(source=path, format="lightning", asv_state=parts["asv"] or None, cm_state=parts["cm"] or None,
                      backend_state=parts["backend"] or None, oc_center=center, config=config, meta=meta)


def _from_ours(raw: Mapping, path: Path) -> Checkpoint:
    if raw.get("version") != OUR_VERSION:
        raise CheckpointError(f"{path}: {OUR_FORMAT} checkpoint version {raw.get('version')!r} is not supported "
                              f"(this toolkit reads version {OUR_VERSION})")
    extra = raw.get("extra") or {}
    extra = dict(extra) if isinstance(extra, Mapping) else {"extra": extra}
    return Checkpoint(source=path, format="sasv", asv_state=raw.get("asv_state"), cm_state=raw.get("cm_state"),
                      backend_state=raw.get("backend_state"), oc_center=raw.get("oc_center"),
                      config=raw.get("config"), asv_loss_state=raw.get("asv_loss_state"),
                      meta={"version": raw["version"], **extra})


# --------------------------------------------------------------------------- applying weights
def apply_state(module: nn.Module, state: Mapping[str, Tensor], *, what: str, source: str | os.PathLike) -> None:
    """Strict load of `state` into `module` (parameters and persistent buffers); one clear error on mismatch."""
    not_tensors = [key for key, value in state.items() if not isinstance(value, Tensor)]
    if not_tensors:
        raise CheckpointError(f"{source}: {what} entries are not tensors: {_preview(not_tensors)}")
    # A network whose published weights use another toolkit's names (SSL_AASIST: fairseq's) renames them here.
    adapt = getattr(module, "adapt_state_dict", None)
    if callable(adapt):
        try:
            state = adapt(state)
        except (KeyError, ValueError) as error:
            raise CheckpointError(f"{source}: {what} weights cannot be converted: {_first_line(error)}") from None
    expected = module.state_dict()
    missing = [key for key in expected if key not in state]
    unexpected = [key for key in state if key not in expected]
    reshaped = [f"{key} file {list(state[key].shape)} vs model {list(expected[key].shape)}"
                for key in expected if key in state and state[key].shape != expected[key].shape]
    if missing or unexpected or reshaped:
        problems = [f"{len(keys)} {label} {_preview(keys)}" for label, keys in
                    (("missing", missing), ("unexpected", unexpected), ("with another shape", reshaped)) if keys]
        raise CheckpointError(f"{source}: {what} weights do not fit the model: {'; '.join(problems)}")
    module.load_state_dict(state, strict=True)


def load_sasv_weights(model: nn.Module, loss: nn.Module | None, path: str | os.PathLike) -> Checkpoint:
    """Fill every part of a SASVModel (and the OC-softmax centre) that the file holds; returns what was read."""
    checkpoint = load_checkpoint(path)
    targets = ((checkpoint.asv_state, model.asv_model, "ASV model"),
               (checkpoint.cm_state, model.cm_model, "CM model"),
               (checkpoint.backend_state, model.backend, "SASV back-end"))
    for state, module, what in targets:
        if state is not None:
            apply_state(module, state, what=what, source=checkpoint.source)
    if loss is not None and checkpoint.oc_center is not None:
        apply_state(loss, {"center": checkpoint.oc_center}, what="OC-softmax loss", source=checkpoint.source)
    return checkpoint


def load_asv_weights(asv_model: nn.Module, path: str | os.PathLike) -> Checkpoint:
    """Load the ASV part of a voxceleb_trainer file, a plain ResNet state dict or a joint checkpoint."""
    checkpoint = load_checkpoint(path)
    if checkpoint.asv_state is None:
        raise CheckpointError(f"{checkpoint.source}: this {_FORMAT_NAMES[checkpoint.format]} checkpoint holds "
                              f"no ASV model weights")
    apply_state(asv_model, checkpoint.asv_state, what="ASV model", source=checkpoint.source)
    return checkpoint


def load_cm_weights(cm_model: nn.Module, path: str | os.PathLike) -> Checkpoint:
    """Load the CM part of an AASIST .pth file or a joint checkpoint."""
    checkpoint = load_checkpoint(path)
    if checkpoint.cm_state is None:
        raise CheckpointError(f"{checkpoint.source}: this {_FORMAT_NAMES[checkpoint.format]} checkpoint holds "
                              f"no CM model weights")
    apply_state(cm_model, checkpoint.cm_state, what="CM model", source=checkpoint.source)
    return checkpoint


# --------------------------------------------------------------------------- saving
def _check_plain(value: Any, where: str) -> None:
    """Only tensors and plain Python data may be saved, so that weights_only loading can read them back."""
    if value is None or isinstance(value, (Tensor, str, int, float, bool)):
        return
    if isinstance(value, (dict, collections.OrderedDict)):
        for key, item in value.items():
            if not isinstance(key, (str, int)):
                raise TypeError(f"save_checkpoint: {where} has a key of type {type(key).__name__}; use str or int")
            _check_plain(item, f"{where}[{key!r}]")
        return
    if isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            _check_plain(item, f"{where}[{index}]")
        return
    raise TypeError(f"save_checkpoint: {where} is a {type(value).__name__}; only tensors, dict, list, tuple, "
                    f"str, int, float, bool and None can be saved")


def _cpu_state(module: nn.Module) -> dict[str, Tensor]:
    return {key: value.detach().cpu().clone() for key, value in module.state_dict().items()}


def save_checkpoint(path: str | os.PathLike, *, model: nn.Module, loss: nn.Module | None,
                    config: dict | None, extra: dict | None = None) -> Path:
    """Write a SASVModel (+ OC-softmax centre, config, extra) atomically in this toolkit's format."""
    path = Path(path)
    center = None
    if loss is not None:
        center = loss.state_dict().get("center")
        if center is None:
            raise TypeError(f"save_checkpoint: loss {type(loss).__name__} has no 'center' to save")
        center = center.detach().cpu().clone()
    _check_plain(config, "config")
    _check_plain(extra, "extra")
    payload = {"format": OUR_FORMAT, "version": OUR_VERSION, "asv_state": _cpu_state(model.asv_model),
               "cm_state": _cpu_state(model.cm_model), "backend_state": _cpu_state(model.backend),
               "oc_center": center, "config": config, "extra": extra}
    return _write_atomically(path, payload)


def save_subsystem_checkpoint(path: str | os.PathLike, *, asv_model: nn.Module | None = None,
                              cm_model: nn.Module | None = None, asv_loss: nn.Module | None = None,
                              config: dict | None = None, extra: dict | None = None) -> Path:
    """Write an ASV-only (+ its training loss) or CM-only checkpoint atomically in this toolkit's format.

    `load_asv_weights` / `load_cm_weights` (config keys asv_weight / aasist_weight) read it;
    the loss parameters come back as `Checkpoint.asv_loss_state`.
    """
    if (asv_model is None) == (cm_model is None):
        raise TypeError("save_subsystem_checkpoint: give exactly one of asv_model and cm_model")
    if asv_loss is not None and asv_model is None:
        raise TypeError("save_subsystem_checkpoint: asv_loss goes with asv_model")
    _check_plain(config, "config")
    _check_plain(extra, "extra")
    payload = {"format": OUR_FORMAT, "version": OUR_VERSION,
               "asv_state": _cpu_state(asv_model) if asv_model is not None else None,
               "cm_state": _cpu_state(cm_model) if cm_model is not None else None,
               "backend_state": None, "oc_center": None,
               "asv_loss_state": _cpu_state(asv_loss) if asv_loss is not None else None,
               "config": config, "extra": extra}
    return _write_atomically(Path(path), payload)


def save_backend_checkpoint(path: str | os.PathLike, *, backend: nn.Module, config: dict | None = None,
                            extra: dict | None = None) -> Path:
    """Write a back-end trained alone on embeddings (system b2) atomically in this toolkit's format: its
    weights are the file's backend_state, and it holds no ASV or CM weights."""
    _check_plain(config, "config")
    _check_plain(extra, "extra")
    payload = {"format": OUR_FORMAT, "version": OUR_VERSION, "asv_state": None, "cm_state": None,
               "backend_state": _cpu_state(backend), "oc_center": None, "config": config, "extra": extra}
    return _write_atomically(Path(path), payload)


def _write_atomically(path: Path, payload: dict) -> Path:
    try:
        with atomic_open(path, "wb") as handle:  # readers see the old file or the complete new one
            torch.save(payload, handle)
    except RuntimeError as error:
        # torch.save reports a write that failed (a full disk) as "[enforce fail at inline_container.cc:...]
        # unexpected pos ..." with the OSError only as its context; the OSError, naming the file, says why.
        cause = _os_error_behind(error)
        if cause is None:
            raise
        raise OSError(cause.errno, cause.strerror, str(path)) from None
    return path


def _os_error_behind(error: BaseException) -> OSError | None:
    current: BaseException | None = error
    seen: set[int] = set()
    while current is not None and id(current) not in seen:
        if isinstance(current, OSError) and current.errno is not None:
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None
