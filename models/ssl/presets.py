"""SSL architectures as torchaudio builder arguments: the named presets, an inline mapping from a config, and
what a Hugging Face config.json or a fairseq checkpoint's settings say. No torch import here.

A mapping with `encoder_num_buckets` is built with `torchaudio.models.wavlm_model`, any other with
`wav2vec2_model`. The presets repeat torchaudio's factory functions (wav2vec2_xlsr_300m, wavlm_large, ...),
their default dropouts included; tests/test_ssl_frontend.py checks them against those functions.
"""
from __future__ import annotations

import ast
from collections.abc import Mapping
from typing import Any

from runtime.schema import Invalid

STANDARD_CONV = [(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512, 2, 2)] * 2
DROPOUT_KEYS = ("encoder_projection_dropout", "encoder_attention_dropout", "encoder_ff_interm_dropout",
                "encoder_dropout", "encoder_layer_drop")
STRUCTURE_KEYS = ("extractor_mode", "extractor_conv_layer_config", "extractor_conv_bias", "encoder_embed_dim",
                  "encoder_pos_conv_kernel", "encoder_pos_conv_groups", "encoder_num_layers", "encoder_num_heads",
                  "encoder_ff_interm_features", "encoder_layer_norm_first")
WAVLM_KEYS = ("encoder_num_buckets", "encoder_max_distance")


def _preset(mode: str, bias: bool, dim: int, layers: int, heads: int, ffn: int, norm_first: bool,
            dropouts: tuple[float, float, float, float, float], wavlm: bool = False) -> dict[str, Any]:
    arguments = dict(extractor_mode=mode, extractor_conv_layer_config=list(STANDARD_CONV), extractor_conv_bias=bias,
                     encoder_embed_dim=dim, encoder_pos_conv_kernel=128, encoder_pos_conv_groups=16,
                     encoder_num_layers=layers, encoder_num_heads=heads, encoder_ff_interm_features=ffn,
                     encoder_layer_norm_first=norm_first, **dict(zip(DROPOUT_KEYS, dropouts)))
    if wavlm:
        arguments.update(encoder_num_buckets=320, encoder_max_distance=800)
    return arguments


# Dropouts in DROPOUT_KEYS order: projection, attention, feed-forward inner, residual, layer drop.
PRESETS: dict[str, dict[str, Any]] = {
    "xlsr_300m": _preset("layer_norm", True, 1024, 24, 16, 4096, True, (0.0, 0.0, 0.0, 0.0, 0.0)),
    "xlsr_1b": _preset("layer_norm", True, 1280, 48, 16, 5120, True, (0.1, 0.0, 0.0, 0.0, 0.0)),
    "wav2vec2_base": _preset("group_norm", False, 768, 12, 12, 3072, False, (0.1, 0.1, 0.1, 0.1, 0.1)),
    "wav2vec2_large": _preset("group_norm", False, 1024, 24, 16, 4096, False, (0.1, 0.1, 0.1, 0.1, 0.1)),
    "wav2vec2_large_lv60": _preset("layer_norm", True, 1024, 24, 16, 4096, True, (0.1, 0.0, 0.1, 0.0, 0.1)),
    "wavlm_base": _preset("group_norm", False, 768, 12, 12, 3072, False, (0.1, 0.1, 0.1, 0.1, 0.1), wavlm=True),
    "wavlm_base_plus": _preset("group_norm", False, 768, 12, 12, 3072, False, (0.1, 0.1, 0.1, 0.1, 0.1),
                               wavlm=True),
    "wavlm_large": _preset("layer_norm", False, 1024, 24, 16, 4096, True, (0.1, 0.1, 0.0, 0.1, 0.1), wavlm=True),
}
# The torchaudio factory each preset repeats (wavlm_base_plus has wavlm_base's architecture).
FACTORIES = {"xlsr_300m": "wav2vec2_xlsr_300m", "xlsr_1b": "wav2vec2_xlsr_1b", "wav2vec2_base": "wav2vec2_base",
             "wav2vec2_large": "wav2vec2_large", "wav2vec2_large_lv60": "wav2vec2_large_lv60k",
             "wavlm_base": "wavlm_base", "wavlm_base_plus": "wavlm_base", "wavlm_large": "wavlm_large"}


def structure(arguments: Mapping[str, Any]) -> dict[str, Any]:
    """The builder arguments that fix the weights' shapes and the computation (all but the dropouts)."""
    keys = STRUCTURE_KEYS + (WAVLM_KEYS if "encoder_num_buckets" in arguments else ())
    found = {key: arguments[key] for key in keys}
    found["extractor_conv_layer_config"] = [tuple(layer) for layer in arguments["extractor_conv_layer_config"]]
    return found


def is_wavlm(arguments: Mapping[str, Any]) -> bool:
    return "encoder_num_buckets" in arguments


# --------------------------------------------------------------------------- from a config (ssl.architecture)
def resolve_architecture(value: str | Mapping[str, Any]) -> dict[str, Any]:
    """Builder arguments of a preset name or an inline mapping; Invalid names the key (relative to ssl)."""
    if isinstance(value, str):
        if value not in PRESETS:
            raise Invalid("architecture", f"is {value!r}; presets: {', '.join(PRESETS)} (or a mapping of "
                                          f"torchaudio builder arguments)")
        return dict(PRESETS[value])
    known = STRUCTURE_KEYS + WAVLM_KEYS + DROPOUT_KEYS
    unknown = [key for key in value if key not in known]
    if unknown:
        raise Invalid(f"architecture.{unknown[0]}", f"is not a builder argument; known: {', '.join(known)}")
    missing = [key for key in STRUCTURE_KEYS if key not in value]
    if missing:
        raise Invalid(f"architecture.{missing[0]}", "must be given (an inline architecture gives every one of "
                                                     f"{', '.join(STRUCTURE_KEYS)})")
    if (WAVLM_KEYS[0] in value) != (WAVLM_KEYS[1] in value):
        raise Invalid("architecture", f"gives one of {' and '.join(WAVLM_KEYS)}; a WavLM model needs both")
    arguments = {key: 0.0 for key in DROPOUT_KEYS} | dict(value)
    _check_arguments(arguments)
    arguments["extractor_conv_layer_config"] = [tuple(layer) for layer in arguments["extractor_conv_layer_config"]]
    return arguments


def _check_arguments(arguments: Mapping[str, Any]) -> None:
    def positive(key: str) -> int:
        number = arguments[key]
        if not isinstance(number, int) or isinstance(number, bool) or number <= 0:
            raise Invalid(f"architecture.{key}", f"must be a positive integer, got {number!r}")
        return number

    if arguments["extractor_mode"] not in ("group_norm", "layer_norm"):
        raise Invalid("architecture.extractor_mode", f"is {arguments['extractor_mode']!r}; valid values: "
                                                     f"group_norm, layer_norm")
    layers = arguments["extractor_conv_layer_config"]
    if not isinstance(layers, (list, tuple)) or not layers or not all(
            isinstance(layer, (list, tuple)) and len(layer) == 3 and
            all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in layer) for layer in layers):
        raise Invalid("architecture.extractor_conv_layer_config",
                      f"must be a list of [channels, kernel, stride] positive integers, got {layers!r}")
    for key in ("extractor_conv_bias", "encoder_layer_norm_first"):
        if not isinstance(arguments[key], bool):
            raise Invalid(f"architecture.{key}", f"must be true/false, got {arguments[key]!r}")
    dim = positive("encoder_embed_dim")
    for key in ("encoder_num_heads", "encoder_pos_conv_groups"):
        if dim % positive(key):
            raise Invalid(f"architecture.{key}", f"must divide encoder_embed_dim ({dim}), got {arguments[key]}")
    for key in ("encoder_pos_conv_kernel", "encoder_num_layers", "encoder_ff_interm_features") + tuple(
            key for key in WAVLM_KEYS if key in arguments):
        positive(key)
    for key in DROPOUT_KEYS:
        rate = arguments[key]
        if not isinstance(rate, (int, float)) or isinstance(rate, bool) or not 0 <= rate < 1:
            raise Invalid(f"architecture.{key}", f"must be a probability in [0, 1), got {rate!r}")


# --------------------------------------------------------------------------- from a weight file's own config
# Hugging Face Wav2Vec2Config / WavLMConfig defaults (a config.json may leave out keys at their default).
_HF_DEFAULTS = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
                    hidden_act="gelu", feat_extract_activation="gelu", hidden_dropout=0.1, activation_dropout=0.1,
                    attention_dropout=0.1, feat_proj_dropout=0.0, layerdrop=0.1, layer_norm_eps=1e-5,
                    feat_extract_norm="group", conv_dim=[512] * 7, conv_stride=[5, 2, 2, 2, 2, 2, 2],
                    conv_kernel=[10, 3, 3, 3, 3, 2, 2], conv_bias=False, num_conv_pos_embeddings=128,
                    num_conv_pos_embedding_groups=16, do_stable_layer_norm=False, num_buckets=320,
                    max_bucket_distance=800, add_adapter=False)


def hf_architecture(config: Mapping[str, Any]) -> dict[str, Any]:
    """Builder arguments from a HF config.json (Wav2Vec2Model or WavLMModel); ValueError says what is wrong."""
    model_type = config.get("model_type") if isinstance(config, Mapping) else None
    if model_type not in ("wav2vec2", "wavlm"):
        names = config.get("architectures") if isinstance(config, Mapping) else None
        described = names[0] if isinstance(names, list) and names else "another model"
        raise ValueError(f"describes {described} (model_type {model_type!r}); expected a Wav2Vec2Model or "
                         f"WavLMModel config (model_type 'wav2vec2' or 'wavlm')")
    value = {**_HF_DEFAULTS, **config}
    for key in ("hidden_act", "feat_extract_activation"):
        if value[key] != "gelu":
            raise ValueError(f"{key} is {value[key]!r}; torchaudio's model uses gelu")
    if value["layer_norm_eps"] != 1e-5 or value["add_adapter"] or value["feat_extract_norm"] not in ("group", "layer"):
        raise ValueError("layer_norm_eps other than 1e-5, add_adapter or a feat_extract_norm other than group/layer "
                         "is not supported by torchaudio's model")
    if not len(value["conv_dim"]) == len(value["conv_kernel"]) == len(value["conv_stride"]):
        raise ValueError("conv_dim, conv_kernel and conv_stride have different lengths")
    arguments = dict(
        extractor_mode=f"{value['feat_extract_norm']}_norm",
        extractor_conv_layer_config=list(zip(value["conv_dim"], value["conv_kernel"], value["conv_stride"])),
        extractor_conv_bias=value["conv_bias"], encoder_embed_dim=value["hidden_size"],
        encoder_pos_conv_kernel=value["num_conv_pos_embeddings"],
        encoder_pos_conv_groups=value["num_conv_pos_embedding_groups"],
        encoder_num_layers=value["num_hidden_layers"], encoder_num_heads=value["num_attention_heads"],
        encoder_ff_interm_features=value["intermediate_size"], encoder_layer_norm_first=value["do_stable_layer_norm"],
        encoder_projection_dropout=value["feat_proj_dropout"], encoder_attention_dropout=value["attention_dropout"],
        encoder_ff_interm_dropout=value["activation_dropout"], encoder_dropout=value["hidden_dropout"],
        encoder_layer_drop=value["layerdrop"])
    if model_type == "wavlm":
        arguments.update(encoder_num_buckets=value["num_buckets"], encoder_max_distance=value["max_bucket_distance"])
    return _checked(arguments)


# fairseq Wav2Vec2Config defaults (fairseq fills a missing field with them when it loads a checkpoint).
_FAIRSEQ_DEFAULTS = dict(extractor_mode="default", encoder_layers=12, encoder_embed_dim=768, encoder_ffn_embed_dim=3072,
                         encoder_attention_heads=12, activation_fn="gelu", dropout=0.1, attention_dropout=0.1,
                         activation_dropout=0.0, encoder_layerdrop=0.0, dropout_input=0.0, layer_norm_first=False,
                         conv_feature_layers="[(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512,2,2)] + [(512,2,2)]",
                         conv_bias=False, conv_pos=128, conv_pos_groups=16, pos_conv_depth=1)


def fairseq_architecture(settings: Mapping[str, Any]) -> dict[str, Any]:
    """Builder arguments from a fairseq wav2vec 2.0 model config (`cfg.model`, or old `args`)."""
    name = settings.get("_name", settings.get("arch"))
    if "w2v_args" in settings or "w2v_path" in settings:
        raise ValueError(f"a fine-tuned fairseq model ({name}); expected a pre-trained wav2vec 2.0 checkpoint")
    if settings.get("relative_position_embedding"):
        raise ValueError("a WavLM checkpoint in its original (unilm) naming, which is not supported; use the "
                         "Hugging Face folder of the same model (microsoft/wavlm-*)")
    if name not in (None, "wav2vec2"):
        raise ValueError(f"a fairseq {name!r} model; expected wav2vec2 (wav2vec 2.0 / XLS-R)")
    value = {**_FAIRSEQ_DEFAULTS, **settings}
    if value["activation_fn"] != "gelu" or value["pos_conv_depth"] != 1:
        raise ValueError("activation_fn other than gelu or pos_conv_depth other than 1 is not supported by "
                         "torchaudio's model")
    if value["extractor_mode"] not in ("default", "layer_norm"):
        raise ValueError(f"extractor_mode {value['extractor_mode']!r}; expected default or layer_norm")
    arguments = dict(
        extractor_mode="group_norm" if value["extractor_mode"] == "default" else "layer_norm",
        extractor_conv_layer_config=parse_conv_layers(value["conv_feature_layers"]),
        extractor_conv_bias=value["conv_bias"], encoder_embed_dim=value["encoder_embed_dim"],
        encoder_pos_conv_kernel=value["conv_pos"], encoder_pos_conv_groups=value["conv_pos_groups"],
        encoder_num_layers=value["encoder_layers"], encoder_num_heads=value["encoder_attention_heads"],
        encoder_ff_interm_features=value["encoder_ffn_embed_dim"], encoder_layer_norm_first=value["layer_norm_first"],
        encoder_projection_dropout=value["dropout_input"], encoder_attention_dropout=value["attention_dropout"],
        encoder_ff_interm_dropout=value["activation_dropout"], encoder_dropout=value["dropout"],
        encoder_layer_drop=value["encoder_layerdrop"])
    return _checked(arguments)


def parse_conv_layers(text: Any) -> list[tuple[int, int, int]]:
    """fairseq's conv_feature_layers, e.g. "[(512, 10, 5)] + [(512, 3, 2)] * 4", without eval(): only list and
    tuple literals of integers, + and * are accepted."""
    def value(node: ast.AST) -> Any:
        if isinstance(node, ast.Constant) and isinstance(node.value, int) and not isinstance(node.value, bool):
            return node.value
        if isinstance(node, (ast.List, ast.Tuple)):
            items = [value(item) for item in node.elts]
            return items if isinstance(node, ast.List) else tuple(items)
        if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Mult)):
            left, right = value(node.left), value(node.right)
            if isinstance(node.op, ast.Mult) and isinstance(right, int) and 0 <= right <= 1000:
                return left * right
            if isinstance(node.op, ast.Add) and isinstance(left, list) and isinstance(right, list):
                return left + right
        raise ValueError("unsupported expression")

    try:
        layers = value(ast.parse(str(text), mode="eval").body)
        if not (isinstance(layers, list) and layers and all(
                isinstance(layer, tuple) and len(layer) == 3 and all(isinstance(n, int) and n > 0 for n in layer)
                for layer in layers)):
            raise ValueError("not a list of (channels, kernel, stride)")
    except (SyntaxError, ValueError, RecursionError) as error:
        raise ValueError(f"conv_feature_layers {str(text)[:80]!r} is not a list of (channels, kernel, stride) "
                         f"({error})") from None
    return layers


def _checked(arguments: dict[str, Any]) -> dict[str, Any]:
    try:
        _check_arguments(arguments)
    except Invalid as problem:
        raise ValueError(f"its config gives {problem.key.removeprefix('architecture.')} {problem.message}") from None
    arguments["extractor_conv_layer_config"] = [tuple(layer) for layer in arguments["extractor_conv_layer_config"]]
    return arguments
