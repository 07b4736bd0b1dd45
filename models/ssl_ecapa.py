"""SSL_ECAPA_TDNN: an SSL front-end (WavLM / wav2vec 2.0 / HuBERT) + ECAPA-TDNN, the ASV network of UniSpeech.

waveform [B, N] (16 kHz, raw: no normalisation) -> the front-end's L+1 hidden states (models.ssl,
`SSLFrontEnd.hidden_states`) -> softmax-weighted sum with learnable weights (`feature_weight`) -> + 1e-6 ->
InstanceNorm1d over [B, C, T] -> ECAPA-TDNN (models.ecapa_tdnn) -> embedding [B, n_out].

The layer weighting and the instance norm are this network's, not the front-end's output="weighted", so that the
numerics and the parameter name are UniSpeech's `ECAPA_TDNN` (softmax weights broadcast over the stacked states,
summed, transposed, +1e-6, InstanceNorm1d): the back-end part of its state dicts loads unchanged
(`load_unispeech_backend`). With ssl.output "last" or "layer" the network reads the front-end's one output and
keeps a one-element weight, as the reference does for a single feature.

Checked against the reference's own code: tests/data/ssl_ecapa/README.md.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

from models.ecapa_tdnn import ECAPATDNN, RES2_SCALE
from runtime.errors import ConfigError, UserError
from runtime.schema import POSITIVE, ConfigSection, Field, Invalid

SSL_SAMPLE_RATE = 16000
# wav2vec 2.0's conv feature encoder, (channels, kernel, stride) per layer: the stack every published
# wav2vec 2.0 / XLS-R / HuBERT / WavLM model uses (torchaudio's default when extractor_conv_layer_config is None).
STANDARD_CONV_STACK = [(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512, 2, 2)] * 2


def conv_min_samples(conv_layers: list | None, frames: int) -> int:
    """The fewest samples from which a conv stack of (channels, kernel, stride) layers (no padding) gives
    `frames` output frames: receptive field + (frames - 1) x total stride."""
    receptive, stride = 1, 1
    for _, kernel, step in conv_layers or STANDARD_CONV_STACK:
        receptive += (kernel - 1) * stride
        stride *= step
    return receptive + (frames - 1) * stride


def _min_samples(values: Mapping[str, Any]) -> tuple[int, str]:
    # InstanceNorm1d refuses a single frame (it normalises each channel over time), so 2 frames at least.
    ssl = values.get("ssl") or {}
    architecture = ssl.get("architecture")
    layers = architecture.get("extractor_conv_layer_config") if isinstance(architecture, Mapping) else None
    return conv_min_samples(layers, 2), "SSL conv encoder: 2 frames for the instance norm"


def _check_channels(values: Mapping[str, Any]) -> None:
    if values["channels"] % RES2_SCALE:
        raise Invalid("channels", f"must be a multiple of {RES2_SCALE} (the Res2 blocks split it into "
                                  f"{RES2_SCALE} chunks), got {values['channels']}")


def _check_ssl(values: Mapping[str, Any]) -> None:
    """The `ssl` mapping against the front-end's own declaration (models.ssl.frontend.SSL_CONFIG)."""
    settings = values["ssl"]
    try:
        from models.ssl.frontend import SSL_CONFIG
    except ImportError:
        raise Invalid("ssl", "needs the SSL front-end (models/ssl/frontend.py), which this checkout lacks") from None
    for key in settings:
        if key not in SSL_CONFIG.fields:
            raise Invalid(f"ssl.{key}", f"is not a front-end setting; valid keys: {', '.join(SSL_CONFIG.fields)}")
    try:
        SSL_CONFIG.validate(settings, typed=False)
    except Invalid as problem:
        raise Invalid(f"ssl.{problem.key}", problem.message) from None


# The asv_model keys of this network (besides `architecture`); defaults are UniSpeech's ECAPA_TDNN_SMALL.
CONFIG = ConfigSection(
    name="SSL_ECAPA_TDNN",
    fields=dict(
        ssl=Field(dict, {"output": "weighted"}, "SSL front-end settings (models/ssl/frontend.py: weights, "
                  "architecture, output, layer, freeze, lr, gradient_checkpointing); unset keys take the "
                  "front-end's defaults, output defaults to weighted (all hidden states)"),
        channels=Field(int, 512, "ECAPA-TDNN channels of layer1..layer4 (a multiple of 8)", range=POSITIVE),
        mfa_channels=Field(int, 1536, "channels after multi-layer feature aggregation (the reference's fixed 1536)",
                           range=POSITIVE),
        attention_channels=Field(int, 128, "hidden width of the attentive statistics pooling", range=POSITIVE),
        se_channels=Field(int, 128, "bottleneck of the squeeze-excitation gates", range=POSITIVE),
        global_context=Field(bool, False, "attention also sees the utterance mean and std of every channel"),
        n_out=Field(int, 256, "speaker embedding size", range=POSITIVE),
    ),
    checks=(_check_channels, _check_ssl),
    min_samples=_min_samples,
)


class SSLECAPATDNN(ECAPATDNN):
    """SSL front-end + layer weights + instance norm + ECAPA-TDNN; forward(waveform [B, N]) -> [B, n_out].

    State-dict keys: `frontend.*` (the front-end's own names), then the reference's `feature_weight`,
    `layer1.*` ... `linear.*`.
    """

    config = CONFIG

    def __init__(self, ssl: Mapping[str, Any] | None = None, channels: int = 512, mfa_channels: int = 1536,
                 attention_channels: int = 128, se_channels: int = 128, global_context: bool = False,
                 n_out: int = 256, sample_rate: int = SSL_SAMPLE_RATE) -> None:
        # Imported here: the back-end (and its tests, which feed hidden states) needs no front-end code.
        from models.ssl.frontend import SSL_CONFIG, build_ssl_frontend

        if sample_rate != SSL_SAMPLE_RATE:
            raise ConfigError(f"key 'sample_rate' is {sample_rate}; SSL_ECAPA_TDNN's front-end reads "
                              f"{SSL_SAMPLE_RATE} Hz audio")
        settings = {**SSL_CONFIG.defaults(), "output": "weighted", **dict(ssl or {})}
        self.ssl_output = settings["output"]
        # For "weighted" this network owns the weights (feature_weight); the front-end is asked for its plain
        # hidden states, so it must not create a second, unused set of layer weights.
        frontend = build_ssl_frontend({**settings, "output": "last"} if self.ssl_output == "weighted" else settings,
                                      where="asv_model.ssl: ")
        n_hidden = frontend.n_layers + 1 if self.ssl_output == "weighted" else 1
        super().__init__(frontend.output_dim, n_hidden, channels, mfa_channels, attention_channels, se_channels,
                         global_context, n_out)
        self.frontend = frontend

    def hidden_states(self, waveform: Tensor) -> list[Tensor]:
        """What the layer weights mix: the L+1 hidden states [B, T, C], or the front-end's one output."""
        if waveform.dim() != 2:
            raise ValueError(f"SSL_ECAPA_TDNN expects a [batch, samples] waveform, got shape {tuple(waveform.shape)}")
        if self.ssl_output == "weighted":
            return list(self.frontend.hidden_states(waveform))
        return [self.frontend(waveform)]

    def forward(self, waveform: Tensor) -> Tensor:  # type: ignore[override]
        return super().forward(self.hidden_states(waveform))

    def use_channels_last(self) -> SSLECAPATDNN:
        """Nothing to do: 1-D convolutions and a transformer (models.build calls this on CUDA)."""
        return self


class ReferenceWeightsError(UserError):
    """A UniSpeech ECAPA_TDNN state dict whose back-end keys or shapes do not fit this network."""


def load_unispeech_backend(network: nn.Module, state: Mapping[str, Tensor], source: str = "<state dict>") -> None:
    """Load the back-end part of a UniSpeech `ECAPA_TDNN` state dict (every key but `feature_extract.*`, the
    fairseq-named front-end, which models.ssl loads from `ssl.weights`) into `network` (an ECAPATDNN or
    SSLECAPATDNN) with strict key and shape checks; a mismatch is one line naming `source` and the key."""
    wanted = {key: value for key, value in network.state_dict().items() if not key.startswith("frontend.")}
    given = {key: value for key, value in state.items() if not key.startswith("feature_extract.")}
    for key in wanted:
        if key not in given:
            raise ReferenceWeightsError(f"{source}: no '{key}' (not a UniSpeech ECAPA_TDNN state dict?)")
        if tuple(given[key].shape) != tuple(wanted[key].shape):
            raise ReferenceWeightsError(f"{source}: '{key}' has shape {tuple(given[key].shape)}, this network's is "
                                        f"{tuple(wanted[key].shape)} (asv_model sizes differ from the checkpoint's)")
    extra = sorted(set(given) - set(wanted))
    if extra:
        raise ReferenceWeightsError(f"{source}: unexpected key '{extra[0]}' ({len(extra)} in all) for this network")
    network.load_state_dict(given, strict=False)
