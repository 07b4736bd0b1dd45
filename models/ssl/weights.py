"""Reading SSL front-end weights without running code: a Hugging Face model folder, a fairseq checkpoint or a
plain state dict, each returned in torchaudio's key names with the architecture (torchaudio builder arguments)
its own config gives.

`.safetensors` files are read by a small header + buffer parser (no `safetensors` package); everything else
goes through models.checkpoint's weights-only loader, which also rebuilds fairseq's pickled omegaconf / argparse
settings from stand-ins. Every failure is one `SSLWeightsError` line naming the file and what was expected.
"""
from __future__ import annotations

import json
import os
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torchaudio.models.wav2vec2.utils.import_fairseq import _map_key as _fairseq_key

from models.checkpoint import CheckpointError, _plain_config, _refuse_nonfinite, _safe_torch_load
from models.ssl.presets import DROPOUT_KEYS, PRESETS, fairseq_architecture, hf_architecture, structure

EXPECTED = ("a Hugging Face wav2vec2/WavLM folder (config.json + model.safetensors or pytorch_model.bin), a fairseq "
            "wav2vec 2.0 checkpoint or a wav2vec2/WavLM state dict")
_ST_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
              "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
              "BOOL": torch.bool}
_MAX_HEADER = 100 * 2**20
_HF_MODEL_FILES = ("model.safetensors", "pytorch_model.bin")
# Pre-training / task-head tensors that features never use (HF and fairseq names, after any prefix).
_HF_DROPPED = ("masked_spec_embed", "quantizer.", "project_hid.", "project_q.", "lm_head.")
_FAIRSEQ_DROPPED = ("aux.", "label_embs_concat")


class SSLWeightsError(CheckpointError):
    """An SSL weight file or folder that cannot be read or is not a wav2vec2 / WavLM model."""


@dataclass
class SSLWeights:
    """Weights in torchaudio names; `architecture`: builder arguments from the file's config (None: not known)."""
    source: Path
    format: str  # "huggingface", "fairseq" or "state_dict"
    state: dict[str, Tensor]
    architecture: dict[str, Any] | None


# --------------------------------------------------------------------------- safetensors
def read_safetensors(path: str | os.PathLike) -> dict[str, Tensor]:
    """Tensors of a .safetensors file: 8-byte little-endian header size, JSON header, then the raw data."""
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            head = handle.read(8)
            if len(head) < 8:
                raise SSLWeightsError(f"{path}: not a safetensors file ({size} bytes; expected an 8-byte header "
                                      f"size, a JSON header and the tensor data)")
            (header_size,) = struct.unpack("<Q", head)
            if header_size > min(size - 8, _MAX_HEADER):
                raise SSLWeightsError(f"{path}: bad safetensors header (it claims {header_size} header bytes in a "
                                      f"{size}-byte file): truncated or not a safetensors file")
            header_bytes = handle.read(header_size)
            buffer = bytearray(size - 8 - header_size)
            handle.readinto(buffer)
    except OSError as error:
        raise SSLWeightsError(f"{path}: cannot read the safetensors file ({error.strerror})") from None
    try:
        header = json.loads(header_bytes.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise SSLWeightsError(f"{path}: bad safetensors header (not JSON: {error})") from None
    if not isinstance(header, dict):
        raise SSLWeightsError(f"{path}: bad safetensors header (a JSON {type(header).__name__}, expected an object)")
    tensors = {}
    for name, entry in header.items():
        if name != "__metadata__":
            tensors[name] = _safetensors_tensor(path, name, entry, buffer)
    return tensors


def _safetensors_tensor(path: Path, name: str, entry: Any, buffer: bytearray) -> Tensor:
    def bad(why: str) -> SSLWeightsError:
        return SSLWeightsError(f"{path}: bad safetensors header entry {name!r} ({why})")

    if not isinstance(entry, dict) or not {"dtype", "shape", "data_offsets"} <= entry.keys():
        raise bad("expected dtype, shape and data_offsets")
    dtype = _ST_DTYPES.get(entry["dtype"])
    if dtype is None:
        raise bad(f"dtype {entry['dtype']!r} is not one of {', '.join(_ST_DTYPES)}")
    shape, offsets = entry["shape"], entry["data_offsets"]
    if not isinstance(shape, list) or not all(isinstance(n, int) and n >= 0 for n in shape):
        raise bad(f"shape {shape!r}")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(n, int) for n in offsets)
            and 0 <= offsets[0] <= offsets[1]):
        raise bad(f"data_offsets {offsets!r}")
    count = int(torch.Size(shape).numel())
    itemsize = torch.empty((), dtype=dtype).element_size()
    if offsets[1] - offsets[0] != count * itemsize:
        raise bad(f"{offsets[1] - offsets[0]} bytes for shape {shape} of {entry['dtype']}")
    if offsets[1] > len(buffer):
        raise bad(f"its data ends at byte {offsets[1]} of a {len(buffer)}-byte buffer: the file is truncated")
    if count == 0:
        return torch.empty(shape, dtype=dtype)
    if offsets[0] % itemsize:  # a misaligned tensor gets its own copy of the bytes
        return torch.frombuffer(buffer[offsets[0]:offsets[1]], dtype=dtype, count=count).reshape(shape)
    return torch.frombuffer(buffer, dtype=dtype, count=count, offset=offsets[0]).reshape(shape)


# --------------------------------------------------------------------------- key names
def fairseq_to_torchaudio(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """fairseq Wav2Vec2Model names -> torchaudio names, dropping pre-training-only tensors (mask_emb, quantizer,
    project_q, final_proj) and a fine-tuned model's output head; ValueError names an unknown key."""
    converted = {}
    for key, value in state.items():
        name = _fairseq_key(key.removeprefix("w2v_encoder."))  # torchaudio's own map (drops mask_emb & co.)
        if name is None or name.startswith(_FAIRSEQ_DROPPED):
            continue
        converted[_parametrized(name)] = value
    return converted


def huggingface_to_torchaudio(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Hugging Face Wav2Vec2Model / WavLMModel names (with or without a `wav2vec2.` / `wavlm.` prefix) ->
    torchaudio names; WavLM's separate q/k/v projections become one in_proj, as torchaudio's importer does."""
    state = {key.removeprefix("wav2vec2.").removeprefix("wavlm."): value for key, value in state.items()}
    wavlm = any(".attention.gru_rel_pos_linear." in key for key in state)
    converted: dict[str, Tensor] = {}
    for key, value in state.items():
        if key.startswith(_HF_DROPPED):
            continue
        if key.startswith("feature_projection."):
            key = "encoder." + key
        elif key.startswith("encoder."):
            key = "encoder.transformer." + key.removeprefix("encoder.")
        if wavlm and ".attention." in key and key.rsplit(".", 2)[-2] in ("q_proj", "k_proj", "v_proj"):
            continue  # concatenated below
        if wavlm and ".attention.out_proj." in key:
            key = key.replace(".attention.out_proj.", ".attention.attention.out_proj.")
        converted[_parametrized(key)] = value
    if wavlm:
        prefixes = sorted({key.rsplit(".", 2)[0] for key in state if key.endswith("attention.q_proj.weight")})
        for prefix in prefixes:
            ours = "encoder.transformer." + prefix.removeprefix("encoder.") + ".attention.in_proj_"
            for kind in ("weight", "bias"):
                parts = [state.get(f"{prefix}.{name}_proj.{kind}") for name in ("q", "k", "v")]
                if all(part is not None for part in parts):
                    converted[ours + kind] = torch.cat(parts)
    return converted


def _parametrized(key: str) -> str:
    # Older files keep the positional convolution's weight norm as weight_g / weight_v; torchaudio's module is
    # parametrized (original0 = g, original1 = v).
    return key.replace("pos_conv_embed.conv.weight_g", "pos_conv_embed.conv.parametrizations.weight.original0") \
              .replace("pos_conv_embed.conv.weight_v", "pos_conv_embed.conv.parametrizations.weight.original1")


def _naming(state: Mapping[str, Tensor]) -> str | None:
    keys = list(state)
    if any(key.startswith(("encoder.transformer.", "encoder.feature_projection.")) for key in keys):
        return "torchaudio"
    if any(key.startswith(("post_extract_proj.", "encoder.pos_conv.0.", "w2v_model.", "w2v_encoder.")) or
           ".self_attn." in key for key in keys):
        return "fairseq"
    if any(key.removeprefix("wav2vec2.").removeprefix("wavlm.").startswith(
            ("feature_projection.", "encoder.pos_conv_embed.")) for key in keys):
        return "huggingface"
    return None


# --------------------------------------------------------------------------- reading a path
def load_ssl_weights(path: str | os.PathLike) -> SSLWeights:
    """Read SSL weights from a HF folder, a fairseq checkpoint or a plain state dict (format detected)."""
    path = Path(path)
    if path.is_dir():
        return _from_hf_folder(path)
    if not path.exists():
        raise SSLWeightsError(f"{path}: no such file or folder; expected {EXPECTED}")
    if path.name in _HF_MODEL_FILES and (path.parent / "config.json").is_file():
        return _from_hf_folder(path.parent, path)  # a model file beside its config: the config says what it is
    if path.suffix == ".safetensors":
        return _from_state(read_safetensors(path), path)
    raw = _torch_load(path)
    if isinstance(raw, Mapping) and isinstance(raw.get("model"), Mapping) and \
            (raw.get("cfg") is not None or raw.get("args") is not None):
        return _from_fairseq(raw, path)
    if isinstance(raw, Mapping) and isinstance(raw.get("model" if "model" in raw else "state_dict"), Mapping):
        raw = raw["model" if "model" in raw else "state_dict"]
    if isinstance(raw, Mapping) and raw and all(isinstance(value, Tensor) for value in raw.values()):
        return _from_state(dict(raw), path)
    shown = f"a dict with keys {list(raw)[:5]}" if isinstance(raw, Mapping) else f"a {type(raw).__name__}"
    raise SSLWeightsError(f"{path}: holds {shown}; expected {EXPECTED}")


def _torch_load(path: Path) -> Any:
    try:
        return _safe_torch_load(path)
    except CheckpointError as error:
        raise SSLWeightsError(f"{error}; expected {EXPECTED}") from None


def _from_hf_folder(folder: Path, model_file: Path | None = None) -> SSLWeights:
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise SSLWeightsError(f"{folder}: a model folder without config.json; expected {EXPECTED}")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise SSLWeightsError(f"{config_path}: not a readable JSON config ({error})") from None
    try:
        architecture = hf_architecture(config)
    except ValueError as error:
        raise SSLWeightsError(f"{config_path}: {error}") from None
    if model_file is None:
        model_file = next((folder / name for name in _HF_MODEL_FILES if (folder / name).is_file()), None)
    if model_file is None:
        sharded = " (sharded checkpoints are not supported)" if any(folder.glob("*.index.json")) else ""
        raise SSLWeightsError(f"{folder}: no model.safetensors or pytorch_model.bin beside config.json{sharded}")
    if model_file.suffix == ".safetensors":
        state = read_safetensors(model_file)
    else:
        state = _torch_load(model_file)
        if not (isinstance(state, Mapping) and all(isinstance(v, Tensor) for v in state.values())):
            raise SSLWeightsError(f"{model_file}: not a state dict of tensors; expected Hugging Face weights")
    _check_names(state, model_file, "huggingface")
    return SSLWeights(model_file, "huggingface", _checked(huggingface_to_torchaudio(state), model_file),
                      architecture)


def _from_fairseq(raw: Mapping, path: Path) -> SSLWeights:
    settings = raw.get("cfg") if raw.get("cfg") is not None else raw.get("args")
    settings = _plain_config(settings, path)
    if isinstance(settings, dict) and isinstance(settings.get("model"), dict):
        settings = settings["model"]  # a whole hydra config: the model's part
    if not isinstance(settings, dict):
        raise SSLWeightsError(f"{path}: its fairseq settings are a {type(settings).__name__}, expected a mapping")
    try:
        architecture = fairseq_architecture(settings)
    except ValueError as error:
        raise SSLWeightsError(f"{path}: {error}") from None
    state = dict(raw["model"])
    _check_names(state, path, "fairseq")
    try:
        converted = fairseq_to_torchaudio(state)
    except ValueError as error:
        raise SSLWeightsError(f"{path}: {error} in a fairseq wav2vec 2.0 model") from None
    return SSLWeights(path, "fairseq", _checked(converted, path), architecture)


def _from_state(state: dict[str, Tensor], path: Path) -> SSLWeights:
    if any(key.startswith("ssl_model.model.") for key in state):
        raise SSLWeightsError(f"{path}: an SSL_AASIST checkpoint (the SSL part under ssl_model.model.*, plus the "
                              f"back-end); expected the SSL front-end's weights alone: load it as the network's "
                              f"weights instead")
    naming = _naming(state)
    if naming is None:
        raise SSLWeightsError(f"{path}: not a wav2vec2/WavLM state dict (keys {list(state)[:5]}); expected "
                              f"{EXPECTED}")
    if naming == "fairseq":
        try:
            state = fairseq_to_torchaudio(state)
        except ValueError as error:
            raise SSLWeightsError(f"{path}: {error} in a fairseq-named state dict") from None
    elif naming == "huggingface":
        state = huggingface_to_torchaudio(state)
    return SSLWeights(path, "state_dict", _checked(state, path), None)


def _check_names(state: Mapping, path: Path, naming: str) -> None:
    if _naming(state) != naming:
        raise SSLWeightsError(f"{path}: its tensors are not a {naming}-named wav2vec2/WavLM model (keys "
                              f"{list(state)[:5]}); expected {EXPECTED}")


def _checked(state: dict[str, Tensor], path: Path) -> dict[str, Tensor]:
    try:
        _refuse_nonfinite(state, path)
    except CheckpointError as error:
        raise SSLWeightsError(str(error)) from None
    return state


# --------------------------------------------------------------------------- architecture from shapes
def state_structure(state: Mapping[str, Tensor], path: Path) -> dict[str, Any]:
    """What a torchaudio-named state dict's shapes say of its architecture (the `structure` keys that shapes
    determine; strides, attention heads of wav2vec2 and the layer-norm order are not among them)."""
    def shape(key: str) -> tuple[int, ...]:
        if key not in state:
            raise SSLWeightsError(f"{path}: a wav2vec2/WavLM state dict without {key}; expected {EXPECTED}")
        return tuple(state[key].shape)

    convs = sorted({int(key.split(".")[2]) for key in state if key.startswith("feature_extractor.conv_layers.")})
    conv = [shape(f"feature_extractor.conv_layers.{i}.conv.weight") for i in convs]
    layers = {int(key.split(".")[3]) for key in state if key.startswith("encoder.transformer.layers.")}
    pos = shape("encoder.transformer.pos_conv_embed.conv.parametrizations.weight.original1")
    embed = shape("encoder.feature_projection.projection.weight")[0]
    found = {
        "extractor_mode": "layer_norm" if "feature_extractor.conv_layers.1.layer_norm.weight" in state
        else "group_norm",
        "conv": [(out, kernel) for out, _, kernel in conv],
        "extractor_conv_bias": "feature_extractor.conv_layers.0.conv.bias" in state,
        "encoder_embed_dim": embed,
        "encoder_pos_conv_kernel": pos[2],
        "encoder_pos_conv_groups": embed // pos[1] if pos[1] else 0,
        "encoder_num_layers": len(layers),
        "encoder_ff_interm_features": shape("encoder.transformer.layers.0.feed_forward.intermediate_dense.weight")[0],
        "wavlm": "encoder.transformer.layers.0.attention.rel_attn_embed.weight" in state,
    }
    if found["wavlm"]:
        buckets, heads = shape("encoder.transformer.layers.0.attention.rel_attn_embed.weight")
        found.update(encoder_num_heads=heads, encoder_num_buckets=buckets)
    return found


def infer_architecture(state: Mapping[str, Tensor], path: Path) -> tuple[str, dict[str, Any]]:
    """The preset whose shapes a plain state dict has (the first in PRESETS when several share them, e.g. XLS-R
    300M and wav2vec 2.0 Large LV-60, which differ only in dropout); SSLWeightsError when none does."""
    found = state_structure(state, path)
    for name, arguments in PRESETS.items():
        expected = state_structure_of(arguments)
        if all(expected[key] == value for key, value in found.items() if key in expected):
            return name, dict(arguments)
    raise SSLWeightsError(f"{path}: a state dict whose shapes match no preset (embed dim "
                          f"{found['encoder_embed_dim']}, {found['encoder_num_layers']} layers, feed-forward "
                          f"{found['encoder_ff_interm_features']}); give ssl.architecture (a preset name or the "
                          f"torchaudio builder arguments)")


def state_structure_of(arguments: Mapping[str, Any]) -> dict[str, Any]:
    """`state_structure`'s view of builder arguments (for comparing them with a state dict's shapes)."""
    shape = structure(arguments)
    found = {key: shape[key] for key in ("extractor_mode", "extractor_conv_bias", "encoder_embed_dim",
                                         "encoder_pos_conv_kernel", "encoder_pos_conv_groups",
                                         "encoder_num_layers", "encoder_ff_interm_features")}
    found["conv"] = [(out, kernel) for out, kernel, _ in shape["extractor_conv_layer_config"]]
    found["wavlm"] = "encoder_num_buckets" in shape
    if found["wavlm"]:
        found.update(encoder_num_heads=shape["encoder_num_heads"], encoder_num_buckets=shape["encoder_num_buckets"])
    return found


__all__ = ["DROPOUT_KEYS", "EXPECTED", "SSLWeights", "SSLWeightsError", "fairseq_to_torchaudio",
           "huggingface_to_torchaudio", "infer_architecture", "load_ssl_weights", "read_safetensors",
           "state_structure"]
