"""SSL_AASIST: a self-supervised front-end (XLS-R / wav2vec 2.0 / WavLM) followed by the AASIST graph back-end,
as in TakHemlata/SSL_Anti-spoofing's `model.py` (Tak et al., Odyssey 2022); it loads that repository's
published checkpoints (their key names, the SSL part in fairseq naming).

    waveform [B, N] -> SSL front-end -> [B, T, C] -> LL: Linear(C, 128) -> [B, 1, 128, T]
      -> max-pool (3, 3) -> BatchNorm2d + SELU -> six residual blocks (no pooling) -> BatchNorm2d + SELU
      -> 1x1-conv attention weights: softmax over time -> 42 spectral nodes (+ pos_S), softmax over the
         128/3 axis -> T/3 temporal nodes -> AASIST's GAT-S / GAT-T, graph pools, two HS-GAL branches with
         master nodes -> readout [B, 160] -> 2 logits (index 1 = bona fide).

The back-end's parameter names are the reference's (LL, first_bn, first_bn1, encoder, attention, pos_S,
master1, ...), so its keys load without mapping; the graph layers are models/aasist.py's. Behaviour kept on
purpose because it changes the numbers (all checked against the fixtures' reference outputs):
  * the residual blocks compute bn1 + SELU of their input and discard it (as AASIST's; see ResidualBlock);
  * master1 / master2 go into the HS-GAL layers unexpanded ([1, 1, D]) and broadcast over the batch;
  * all four heterogeneous layers use temperatures[2] and all four heterogeneous pools pool_ratios[2].
Not reproduced: the reference's SSLModel.extract_feat switches the front-end to TRAIN mode (dropout, layerdrop)
the first time it sees an input on another device or dtype than its weights; here eval() means eval.

Other SSL back-ends (SLS, MHFA, ...) follow the same pattern, one file each: a back-end module that maps the
front-end's [B, T, C] (width `ssl_dim`) to (embedding, logits), a network class that builds the front-end with
`models.ssl.frontend.build_ssl_frontend(model_config["ssl"])` and declares its keys as a ConfigSection
(`config = CONFIG`, with the `ssl` mapping checked as below), and one line in models.CM_NETWORKS.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.aasist import AASIST, ResidualBlock, add_graph_layers
from runtime.schema import POSITIVE, ConfigSection, Field, Invalid, Range, widths

ATTENTION_CHANNELS = 128  # hidden width of the reference's 1x1-conv attention (fixed there, not a setting)
# The standard wav2vec 2.0 / XLS-R / WavLM convolutional feature encoder: (channels, kernel, stride) per layer.
STANDARD_CONV_LAYERS = [(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512, 2, 2)] * 2
MIN_FRAMES = 3  # the 3x3 max-pool needs three SSL frames
FAIRSEQ_PREFIX = "ssl_model.model."  # the reference's SSLModel holds the fairseq model as `.model`


def _conv_layers(ssl: Mapping[str, Any]) -> list:
    """(channels, kernel, stride) per layer: an inline architecture's own, else the standard stack (a malformed
    inline list is the front-end builder's to report)."""
    architecture = ssl.get("architecture")
    layers = architecture.get("extractor_conv_layer_config") if isinstance(architecture, Mapping) else None
    if isinstance(layers, list) and layers and all(
            isinstance(layer, (list, tuple)) and len(layer) == 3 and all(_positive_int(v) for v in layer)
            for layer in layers):
        return layers
    return STANDARD_CONV_LAYERS


def min_samples(ssl: Mapping[str, Any]) -> int:
    """The fewest waveform samples giving MIN_FRAMES frames of the front-end's convolutional encoder: its
    receptive field plus (MIN_FRAMES - 1) hops."""
    receptive, hop = 1, 1
    for layer in _conv_layers(ssl):
        _, kernel, stride = layer
        receptive += (kernel - 1) * hop
        hop *= stride
    return receptive + (MIN_FRAMES - 1) * hop


def _check_ssl(values: Mapping[str, Any]) -> None:
    """The `ssl` mapping against the front-end's own declaration (models.ssl.frontend.SSL_CONFIG)."""
    ssl = values.get("ssl")
    if ssl is None:
        return
    try:
        from models.ssl.frontend import SSL_CONFIG
    except ModuleNotFoundError as error:
        if not (error.name or "").startswith("models.ssl"):
            raise
        raise Invalid("ssl", "needs the SSL front-end (models.ssl), which this installation lacks") from None
    try:
        SSL_CONFIG.validate(ssl, typed=False)
    except Invalid as problem:
        raise Invalid(f"ssl.{problem.key}", problem.message) from None
    unknown = [key for key in ssl if key not in SSL_CONFIG.fields]
    if unknown:
        raise Invalid(f"ssl.{unknown[0]}", f"is not a front-end setting; known: {', '.join(SSL_CONFIG.fields)}")


def _check_shapes(values: Mapping[str, Any]) -> None:
    """filts = [LL width, [1, c1], [c1, c2], [c2, c3], [c3, c3]] (the reference's list: the first block reads the
    one-channel LL map, each block the previous one's channels, the last entry serves three blocks); four pool
    ratios and four temperatures; no key this network does not read (a typo would otherwise go unnoticed)."""
    unknown = [key for key in values if key not in CONFIG.fields]
    if unknown:
        raise Invalid(unknown[0], f"is not a key of SSL_AASIST; known: {', '.join(CONFIG.fields)}")
    filts = values.get("filts", CONFIG.fields["filts"].default)
    if not isinstance(filts, list) or len(filts) != 5 or not _positive_int(filts[0]) or \
            not all(isinstance(pair, list) and len(pair) == 2 and all(_positive_int(c) for c in pair)
                    for pair in filts[1:]):
        raise Invalid("filts", f"must be [LL width, [1, c1], [c1, c2], [c2, c3], [c3, c3]] (positive integers), "
                               f"got {filts!r}")
    if filts[0] < 3:
        raise Invalid("filts[0]", f"must be at least 3 (a max-pool by 3 makes the spectral nodes), got {filts[0]}")
    if filts[1][0] != 1:
        raise Invalid("filts[1][0]", f"must be 1 (the first block reads the one-channel LL map), got {filts[1][0]}")
    for index in (2, 3, 4):
        if filts[index][0] != filts[index - 1][1]:
            raise Invalid(f"filts[{index}][0]", f"must equal filts[{index - 1}][1] ({filts[index - 1][1]}), the "
                                                f"channels of the block before, got {filts[index][0]}")
    if filts[4][1] != filts[4][0]:
        raise Invalid("filts[4][1]", f"must equal filts[4][0] ({filts[4][0]}): the last entry serves three blocks "
                                     f"in a row, got {filts[4][1]}")
    for key in ("pool_ratios", "temperatures"):
        value = values.get(key, CONFIG.fields[key].default)
        if not isinstance(value, list) or len(value) != 4 or \
                not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
            raise Invalid(key, f"must be a list of 4 numbers, got {value!r}")


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


# The model_config keys (`cm_model` inline, or an aasist_config file's model_config); the defaults are the
# reference's Model (its hard-coded filts, gat_dims, pool_ratios, temperatures).
CONFIG = ConfigSection(
    name="SSL_AASIST",
    fields=dict(
        architecture=Field(str, "SSL_AASIST", "the network's name in models.CM_NETWORKS"),
        ssl=Field(dict, None, "the SSL front-end's settings (weights, architecture, output, freeze, lr, "
                  "gradient_checkpointing; see docs/configuration.md)", required=True),
        filts=Field(list, [128, [1, 32], [32, 32], [32, 64], [64, 64]], "LL output width (128: 42 spectral "
                    "nodes after the 3x3 max-pool), then the (in, out) channels of the encoder's residual blocks"),
        gat_dims=widths([64, 32], "graph attention widths; the embedding is 5 x gat_dims[1]", length=2),
        pool_ratios=Field(list, [0.5, 0.5, 0.5, 0.5], "graph pooling ratios (the third serves all four "
                          "heterogeneous pools; the fourth is unused, as in the reference)",
                          range=Range(0, 1, low_open=True)),
        temperatures=Field(list, [2.0, 2.0, 100.0, 100.0], "graph attention temperatures (the third serves all "
                           "four heterogeneous layers; the fourth is unused)", range=POSITIVE),
    ),
    checks=(_check_shapes, _check_ssl),
    min_samples=lambda values: (min_samples(values["ssl"]), f"{MIN_FRAMES} frames of the SSL front-end"),
)


class SSLResidualBlock(ResidualBlock):
    """AASIST's residual block (same kernels, paddings and discarded bn1) without its (1, 3) max-pool: the
    reference commented it out, so the SSL encoder keeps every frame."""

    def __init__(self, nb_filts: tuple[int, int], first: bool = False) -> None:
        super().__init__(nb_filts, first=first)
        self.mp = nn.Identity()


class SSLAASISTBackend(nn.Module):
    """The reference's AASIST back-end over SSL features.

    forward(features [B, T, ssl_dim]) -> (embedding [B, 5 * gat_dims[1]], logits [B, 2]); T >= 3. In training
    mode the embedding is the one after dropout, as in the reference."""

    def __init__(self, ssl_dim: int, filts: list | None = None, gat_dims: list[int] | None = None,
                 pool_ratios: list[float] | None = None, temperatures: list[float] | None = None) -> None:
        super().__init__()
        defaults = CONFIG.defaults()
        filts = filts if filts is not None else defaults["filts"]
        gat_dims = gat_dims if gat_dims is not None else defaults["gat_dims"]
        pool_ratios = pool_ratios if pool_ratios is not None else defaults["pool_ratios"]
        temperatures = temperatures if temperatures is not None else defaults["temperatures"]
        ll_dim, encoder_dim = filts[0], filts[-1][-1]

        self.LL = nn.Linear(ssl_dim, ll_dim)
        self.first_bn = nn.BatchNorm2d(num_features=1)
        self.first_bn1 = nn.BatchNorm2d(num_features=encoder_dim)
        self.drop = nn.Dropout(0.5)
        self.drop_way = nn.Dropout(0.2)
        self.selu = nn.SELU(inplace=True)
        self.encoder = nn.Sequential(
            nn.Sequential(SSLResidualBlock(filts[1], first=True)),
            nn.Sequential(SSLResidualBlock(filts[2])),
            nn.Sequential(SSLResidualBlock(filts[3])),
            nn.Sequential(SSLResidualBlock(filts[4])),
            nn.Sequential(SSLResidualBlock(filts[4])),
            nn.Sequential(SSLResidualBlock(filts[4])),
        )
        # Attention logits for the spectral / temporal weighted sums that replace AASIST's max over |x|.
        self.attention = nn.Sequential(
            nn.Conv2d(encoder_dim, ATTENTION_CHANNELS, kernel_size=(1, 1)),
            nn.SELU(inplace=True),
            nn.BatchNorm2d(ATTENTION_CHANNELS),
            nn.Conv2d(ATTENTION_CHANNELS, encoder_dim, kernel_size=(1, 1)),
        )
        # One position vector per spectral node: the (3, 3) max-pool divides the LL width by 3 (128 -> 42).
        add_graph_layers(self, ll_dim // 3, encoder_dim, gat_dims, pool_ratios, temperatures)

    # The HS-GAL branches (layer, pools, second layer, residual sums) and the readout are AASIST's, node for node.
    _heterogeneous_branch = AASIST._heterogeneous_branch
    _graph_readout = AASIST._graph_readout

    def forward(self, features: Tensor) -> tuple[Tensor, Tensor]:
        if features.dim() != 3 or features.size(1) < MIN_FRAMES:
            raise ValueError(f"SSL_AASIST back-end: expected SSL features [batch, frames >= {MIN_FRAMES}, "
                             f"{self.LL.in_features}], got {list(features.shape)}")
        x = self.LL(features).transpose(1, 2).unsqueeze(1)  # [B, 1, LL width, T]
        x = F.max_pool2d(x, (3, 3))
        x = self.selu(self.first_bn(x))
        x = self.encoder(x)  # [B, C, LL width / 3, T / 3]
        x = self.selu(self.first_bn1(x))
        weights = self.attention(x)

        spectral = torch.sum(x * F.softmax(weights, dim=-1), dim=-1).transpose(1, 2) + self.pos_S
        out_s = self.pool_S(self.GAT_layer_S(spectral))
        temporal = torch.sum(x * F.softmax(weights, dim=-2), dim=-2).transpose(1, 2)
        out_t = self.pool_T(self.GAT_layer_T(temporal))

        return self._graph_readout(out_t, out_s)  # AASIST's, with the raw [1, 1, D] master nodes


class SSL_AASIST(SSLAASISTBackend):  # noqa: N801  (the registered name, as the config spells it)
    """SSL front-end (`ssl_model`) + the AASIST back-end, with the reference's state-dict layout: the back-end's
    keys at the top level, the front-end's under `ssl_model.`.

    forward(waveform [B, N], freq_aug=False) -> (embedding [B, 5 * gat_dims[1]], logits [B, 2]); the raw
    waveform goes in, unnormalised, as in the reference. freq_aug (sinc-band masking) has no meaning here and
    is refused."""

    config = CONFIG

    def __init__(self, model_config: Mapping) -> None:
        try:
            CONFIG.validate(model_config, typed=False)
        except Invalid as problem:
            raise ValueError(f"SSL_AASIST model_config: key '{problem.key}' {problem.message}") from None
        values = {**CONFIG.defaults(), **model_config}
        from models.ssl.frontend import build_ssl_frontend  # imported here: the front-end pulls in torchaudio

        frontend = build_ssl_frontend(values["ssl"])
        super().__init__(frontend.output_dim, filts=values["filts"], gat_dims=values["gat_dims"],
                         pool_ratios=values["pool_ratios"], temperatures=values["temperatures"])
        self.ssl_model = frontend
        self.d_args = dict(model_config)

    def forward(self, waveform: Tensor, freq_aug: bool = False) -> tuple[Tensor, Tensor]:  # type: ignore[override]
        if freq_aug:
            raise ValueError("SSL_AASIST has no sinc filter bank: frequency augmentation (cm_train.freq_aug) does "
                             "not apply; set it to false")
        return super().forward(self.ssl_model(waveform))

    def adapt_state_dict(self, state: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """The reference's checkpoints hold the front-end in fairseq's names (`ssl_model.model.<fairseq name>`,
        with pre-training tensors such as quantizer.* that are dropped); those become ours. A state in our own
        names (our checkpoints) passes through unchanged. Called by models.checkpoint.apply_state."""
        if f"{FAIRSEQ_PREFIX}post_extract_proj.weight" not in state:  # fairseq's name; ours is feature_projection
            return dict(state)
        from models.ssl.frontend import fairseq_to_torchaudio

        fairseq = {key[len(FAIRSEQ_PREFIX):]: value for key, value in state.items() if key.startswith(FAIRSEQ_PREFIX)}
        adapted = {key: value for key, value in state.items() if not key.startswith(FAIRSEQ_PREFIX)}
        adapted.update({f"ssl_model.{self._frontend_prefix()}{key}": value
                        for key, value in fairseq_to_torchaudio(fairseq).items()})
        return adapted

    def _frontend_prefix(self) -> str:
        """Where the converted torchaudio names sit inside our front-end module ("" or e.g. "model."): found from
        the front-end's own first convolution, so this does not depend on how SSLFrontEnd nests its model."""
        anchor = "feature_extractor.conv_layers.0.conv.weight"
        for key in self.ssl_model.state_dict():
            if key.endswith(anchor):
                return key[:-len(anchor)]
        return ""
