"""AASIST / AASIST-L spoofing countermeasure (CM branch), compatible with clovaai/aasist checkpoints.

One class serves both variants; the sizes come from the `model_config` dict of AASIST.conf or
AASIST-L.conf. Attribute names that appear in the state dict match the original so that the
released .pth files load with strict=True. Behaviour kept on purpose (it changes the numbers):
fixed sinc filters built with numpy-2 promotion rules, the unused pre-activation BatchNorm in the
residual blocks, master nodes passed unexpanded, and all four heterogeneous pools using
pool_ratios[2].
"""
from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from runtime.schema import POSITIVE, ConfigSection, Field, Invalid, Range, widths

REQUIRED_CONFIG_KEYS = ("filts", "gat_dims", "pool_ratios", "temperatures", "first_conv")


def min_samples(first_conv: int) -> int:
    """AASIST's sinc convolution (kernel first_conv, made odd) drops kernel - 1 samples, then a max-pool by 3
    and six residual blocks each max-pool the frames by 3: at least 3**7 outputs of the convolution are needed."""
    kernel = first_conv + 1 if first_conv % 2 == 0 else first_conv
    return 3 ** 7 + kernel - 1


def _numbers(values: Mapping, key: str, count: int) -> None:
    value = values[key]
    if not isinstance(value, list) or len(value) != count or \
            not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        raise Invalid(key, f"must be a list of {count} numbers, got {value!r}")


def _check_shapes(values: Mapping) -> None:
    """What the constructor indexes and chains: filts = [sinc bands, [1, c1], [c1, c2], [c2, c3], [c3, c3]]
    (the encoder's first block takes the one-channel spectrogram, each block the previous one's channels, and
    the last entry serves three blocks), four pool ratios and four temperatures."""
    filts = values["filts"]
    if len(filts) != 5 or not (isinstance(filts[0], int) and not isinstance(filts[0], bool)) or \
            not all(isinstance(pair, list) and len(pair) == 2 and
                    all(isinstance(c, int) and not isinstance(c, bool) and c > 0 for c in pair) for pair in filts[1:]):
        raise Invalid("filts", f"must be [sinc bands, [1, c1], [c1, c2], [c2, c3], [c3, c3]] (positive integers), "
                               f"got {filts!r}")
    if filts[0] < 3:
        raise Invalid("filts[0]", f"must be at least 3 (a max-pool by 3 makes the spectral nodes), got {filts[0]}")
    if filts[1][0] != 1:
        raise Invalid("filts[1][0]", f"must be 1 (the first block reads the one-channel spectrogram), "
                                     f"got {filts[1][0]}")
    for index in (2, 3, 4):
        if filts[index][0] != filts[index - 1][1]:
            raise Invalid(f"filts[{index}][0]", f"must equal filts[{index - 1}][1] ({filts[index - 1][1]}), the "
                                                f"channels of the block before, got {filts[index][0]}")
    if filts[4][1] != filts[4][0]:
        raise Invalid("filts[4][1]", f"must equal filts[4][0] ({filts[4][0]}): the last entry serves three blocks "
                                     f"in a row, got {filts[4][1]}")
    _numbers(values, "pool_ratios", 4)
    _numbers(values, "temperatures", 4)


# The CM model_config keys of this network (`cm_model` inline, or the aasist_config file's model_config); the
# defaults are AASIST.conf's and apply when neither is given. A model_config that is given must hold every
# required key, as the original's.
CONFIG = ConfigSection(
    name="AASIST",
    fields=dict(
        architecture=Field(str, "AASIST", "the network's name in models.CM_NETWORKS"),
        nb_samp=Field(int, 64600, "the original's input length; unused (test_samples / cm_train.samples set it)",
                      range=POSITIVE),
        first_conv=Field(int, 128, "sinc filter length, in samples", range=POSITIVE, required=True),
        filts=Field(list, [70, [1, 32], [32, 32], [32, 64], [64, 64]], "sinc bands, then the (in, out) channels of "
                    "the encoder's residual blocks", required=True),
        gat_dims=widths([64, 32], "graph attention widths; the embedding is 5 x gat_dims[1]", length=2, required=True),
        pool_ratios=Field(list, [0.5, 0.7, 0.5, 0.5], "graph pooling ratios (the third serves all four "
                          "heterogeneous pools)", range=Range(0, 1, low_open=True), required=True),
        temperatures=Field(list, [2.0, 2.0, 100.0, 100.0], "graph attention temperatures", range=POSITIVE,
                           required=True),
    ),
    checks=(_check_shapes,),
    min_samples=lambda values: (min_samples(values["first_conv"]), f"first_conv {values['first_conv']}"),
)


def sinc_band_pass(out_channels: int, kernel_size: int, sample_rate: int = 16000) -> Tensor:
    """Hamming-windowed ideal band-pass filters on mel-spaced band edges, [out_channels, kernel_size].

    The mixed torch-float32 / numpy-float64 arithmetic is deliberate: under numpy >= 2 the sinc is
    evaluated in float32 and then scaled in float64, which is what the released models ran with.
    """
    n_fft = 512
    freqs_hz = int(sample_rate / 2) * np.linspace(0, 1, int(n_fft / 2) + 1)
    freqs_mel = 2595 * np.log10(1 + freqs_hz / 700)
    edges_mel = np.linspace(np.min(freqs_mel), np.max(freqs_mel), out_channels + 1)
    edges_hz = 700 * (10 ** (edges_mel / 2595) - 1)

    taps = torch.arange(-(kernel_size - 1) / 2, (kernel_size - 1) / 2 + 1)  # float32
    window = torch.tensor(np.hamming(kernel_size), dtype=torch.float32)
    filters = torch.zeros(out_channels, kernel_size)
    for band in range(out_channels):
        low, high = edges_hz[band], edges_hz[band + 1]  # numpy float64 scalars
        # (np.float64 * float32 tensor) stays a float32 tensor; np.sinc then runs in float32,
        # and the float64 gain promotes the product to float64 (numpy-2 rules).
        high_pass = (2 * high / sample_rate) * np.sinc(2 * high * taps / sample_rate)
        low_pass = (2 * low / sample_rate) * np.sinc(2 * low * taps / sample_rate)
        filters[band, :] = window * torch.tensor(high_pass - low_pass, dtype=torch.float32)
    return filters


class SincFilterBank(nn.Module):
    """Fixed (non-trainable) sinc band-pass convolution on raw audio, no padding."""

    def __init__(self, out_channels: int, kernel_size: int, sample_rate: int = 16000) -> None:
        super().__init__()
        self.out_channels = out_channels
        self.kernel_size = kernel_size + 1 if kernel_size % 2 == 0 else kernel_size  # symmetric filters
        self.sample_rate = sample_rate
        # Not persistent: the released checkpoints do not contain it.
        self.register_buffer("band_pass", sinc_band_pass(out_channels, self.kernel_size, sample_rate),
                             persistent=False)

    def forward(self, x: Tensor, mask: bool = False) -> Tensor:
        filters = self.band_pass
        if mask:
            # Frequency augmentation: zero a random run of 0..19 adjacent bands.
            filters = filters.clone()
            width = int(torch.randint(0, 20, ()).item())
            start = int(torch.randint(0, self.out_channels - width + 1, ()).item())
            filters[start:start + width, :] = 0
        return F.conv1d(x, filters.view(self.out_channels, 1, self.kernel_size))


class ResidualBlock(nn.Module):
    """2-D residual block of the AASIST encoder; max-pools the time axis by 3."""

    def __init__(self, nb_filts: tuple[int, int], first: bool = False) -> None:
        super().__init__()
        in_channels, out_channels = nb_filts
        self.first = first
        if not first:
            self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=(2, 3), padding=(1, 1), stride=1)
        self.selu = nn.SELU(inplace=True)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=(2, 3), padding=(0, 1), stride=1)
        self.downsample = in_channels != out_channels
        if self.downsample:
            self.conv_downsample = nn.Conv2d(in_channels, out_channels, kernel_size=(1, 3), padding=(0, 1),
                                             stride=1)
        self.mp = nn.MaxPool2d((1, 3))

    def forward(self, x: Tensor) -> Tensor:
        if not self.first and self.training:
            # The original normalises the input here but then convolves the raw input; the result is
            # discarded. Running it in training keeps bn1's running statistics evolving as they did.
            self.bn1(x)
        out = self.selu(self.bn2(self.conv1(x)))
        out = self.conv2(out)
        identity = self.conv_downsample(x) if self.downsample else x
        return self.mp(out + identity)


def _pairwise_products(x: Tensor) -> Tensor:
    """[B, N, D] -> [B, N, N, D] with entry (i, j) = x_i * x_j."""
    n_nodes = x.size(1)
    expanded = x.unsqueeze(2).expand(-1, -1, n_nodes, -1)
    return expanded * expanded.transpose(1, 2)


def _xavier_parameter(*size: int) -> nn.Parameter:
    weight = nn.Parameter(torch.empty(*size))
    nn.init.xavier_normal_(weight)
    return weight


def _batch_norm_nodes(bn: nn.BatchNorm1d, x: Tensor) -> Tensor:
    """BatchNorm1d over every node of every graph (features on the last axis)."""
    return bn(x.reshape(-1, x.size(-1))).view(x.shape)


class GraphAttentionLayer(nn.Module):
    """Homogeneous graph attention (GAT-S / GAT-T)."""

    def __init__(self, in_dim: int, out_dim: int, temperature: float = 1.0) -> None:
        super().__init__()
        self.att_proj = nn.Linear(in_dim, out_dim)
        self.att_weight = _xavier_parameter(out_dim, 1)
        self.proj_with_att = nn.Linear(in_dim, out_dim)
        self.proj_without_att = nn.Linear(in_dim, out_dim)
        self.bn = nn.BatchNorm1d(out_dim)
        self.input_drop = nn.Dropout(p=0.2)
        self.act = nn.SELU(inplace=True)
        self.temp = temperature

    def forward(self, x: Tensor) -> Tensor:
        x = self.input_drop(x)
        scores = torch.matmul(torch.tanh(self.att_proj(_pairwise_products(x))), self.att_weight)
        attention = F.softmax(scores / self.temp, dim=-2).squeeze(-1)  # [B, N, N], rows sum to 1
        x = self.proj_with_att(torch.matmul(attention, x)) + self.proj_without_att(x)
        return self.act(_batch_norm_nodes(self.bn, x))


class HeteroGraphAttentionLayer(nn.Module):
    """Heterogeneous stacking graph attention (HS-GAL) over two node types plus a master node."""

    def __init__(self, in_dim: int, out_dim: int, temperature: float = 1.0) -> None:
        super().__init__()
        self.proj_type1 = nn.Linear(in_dim, in_dim)
        self.proj_type2 = nn.Linear(in_dim, in_dim)
        self.att_proj = nn.Linear(in_dim, out_dim)
        self.att_projM = nn.Linear(in_dim, out_dim)
        self.att_weight11 = _xavier_parameter(out_dim, 1)
        self.att_weight22 = _xavier_parameter(out_dim, 1)
        self.att_weight12 = _xavier_parameter(out_dim, 1)  # used for both cross-type directions
        self.att_weightM = _xavier_parameter(out_dim, 1)
        self.proj_with_att = nn.Linear(in_dim, out_dim)
        self.proj_without_att = nn.Linear(in_dim, out_dim)
        self.proj_with_attM = nn.Linear(in_dim, out_dim)
        self.proj_without_attM = nn.Linear(in_dim, out_dim)
        self.bn = nn.BatchNorm1d(out_dim)
        self.input_drop = nn.Dropout(p=0.2)
        self.act = nn.SELU(inplace=True)
        self.temp = temperature

    def forward(self, x1: Tensor, x2: Tensor, master: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        n_type1, n_type2 = x1.size(1), x2.size(1)
        x = torch.cat([self.proj_type1(x1), self.proj_type2(x2)], dim=1)
        if master is None:
            master = torch.mean(x, dim=1, keepdim=True)
        x = self.input_drop(x)

        attention = self._node_attention(x, n_type1)
        master = self._update_master(x, master)
        x = self.proj_with_att(torch.matmul(attention, x)) + self.proj_without_att(x)
        x = self.act(_batch_norm_nodes(self.bn, x))
        return x.narrow(1, 0, n_type1), x.narrow(1, n_type1, n_type2), master

    def _node_attention(self, x: Tensor, n_type1: int) -> Tensor:
        hidden = torch.tanh(self.att_proj(_pairwise_products(x)))  # [B, N, N, out_dim]
        # One attention vector per (type, type) block of the node-pair grid.
        top = torch.cat([torch.matmul(hidden[:, :n_type1, :n_type1], self.att_weight11),
                         torch.matmul(hidden[:, :n_type1, n_type1:], self.att_weight12)], dim=2)
        bottom = torch.cat([torch.matmul(hidden[:, n_type1:, :n_type1], self.att_weight12),
                            torch.matmul(hidden[:, n_type1:, n_type1:], self.att_weight22)], dim=2)
        scores = torch.cat([top, bottom], dim=1)
        return F.softmax(scores / self.temp, dim=-2).squeeze(-1)

    def _update_master(self, x: Tensor, master: Tensor) -> Tensor:
        # master may be [1, 1, D] (the raw parameter) and broadcasts against the batch.
        scores = torch.matmul(torch.tanh(self.att_projM(x * master)), self.att_weightM)  # [B, N, 1]
        attention = F.softmax(scores / self.temp, dim=-2)
        pooled = torch.matmul(attention.squeeze(-1).unsqueeze(1), x)  # [B, 1, D]
        return self.proj_with_attM(pooled) + self.proj_without_attM(master)


class GraphPool(nn.Module):
    """Keep the max(int(N * k), 1) highest-scoring nodes, scaled by their sigmoid scores."""

    def __init__(self, k: float, in_dim: int, p: float) -> None:
        super().__init__()
        self.k = k
        self.sigmoid = nn.Sigmoid()
        self.proj = nn.Linear(in_dim, 1)
        self.drop = nn.Dropout(p=p) if p > 0 else nn.Identity()
        self.in_dim = in_dim

    def forward(self, h: Tensor) -> Tensor:
        scores = self.sigmoid(self.proj(self.drop(h)))  # [B, N, 1]
        n_keep = max(int(h.size(1) * self.k), 1)
        _, index = torch.topk(scores, n_keep, dim=1)
        return torch.gather(h * scores, 1, index.expand(-1, -1, h.size(2)))


def add_graph_layers(module: nn.Module, n_spectral: int, encoder_dim: int, gat_dims: list[int],
                     pool_ratios: list[float], temperatures: list[float]) -> None:
    """AASIST's graph part as attributes of `module`: the spectral position vectors (`n_spectral` nodes), the
    master nodes, the graph attention layers and pools, and the output layer, under the original's names and
    in its order, so that state-dict keys and the initial random draws follow it (AASIST and SSL_AASIST)."""
    module.pos_S = nn.Parameter(torch.randn(1, n_spectral, encoder_dim))
    module.master1 = nn.Parameter(torch.randn(1, 1, gat_dims[0]))
    module.master2 = nn.Parameter(torch.randn(1, 1, gat_dims[0]))

    module.GAT_layer_S = GraphAttentionLayer(encoder_dim, gat_dims[0], temperature=temperatures[0])
    module.GAT_layer_T = GraphAttentionLayer(encoder_dim, gat_dims[0], temperature=temperatures[1])
    # temperatures[2] serves all four heterogeneous layers (temperatures[3] is unused, as in the original).
    hetero_temp = temperatures[2]
    module.HtrgGAT_layer_ST11 = HeteroGraphAttentionLayer(gat_dims[0], gat_dims[1], temperature=hetero_temp)
    module.HtrgGAT_layer_ST12 = HeteroGraphAttentionLayer(gat_dims[1], gat_dims[1], temperature=hetero_temp)
    module.HtrgGAT_layer_ST21 = HeteroGraphAttentionLayer(gat_dims[0], gat_dims[1], temperature=hetero_temp)
    module.HtrgGAT_layer_ST22 = HeteroGraphAttentionLayer(gat_dims[1], gat_dims[1], temperature=hetero_temp)

    module.pool_S = GraphPool(pool_ratios[0], gat_dims[0], 0.3)
    module.pool_T = GraphPool(pool_ratios[1], gat_dims[0], 0.3)
    # The original uses pool_ratios[2] for all four heterogeneous pools (pool_ratios[3] is unused).
    module.pool_hS1 = GraphPool(pool_ratios[2], gat_dims[1], 0.3)
    module.pool_hT1 = GraphPool(pool_ratios[2], gat_dims[1], 0.3)
    module.pool_hS2 = GraphPool(pool_ratios[2], gat_dims[1], 0.3)
    module.pool_hT2 = GraphPool(pool_ratios[2], gat_dims[1], 0.3)

    module.embedding_dim = 5 * gat_dims[1]  # max|T|, mean T, max|S|, mean S, master
    module.out_layer = nn.Linear(module.embedding_dim, 2)


class AASIST(nn.Module):
    """Raw-waveform anti-spoofing model.

    forward(waveform [B, T], freq_aug=False) -> (embedding [B, 5 * gat_dims[1]], logits [B, 2]);
    logit index 1 is bona fide. In training mode the returned embedding is the one after dropout,
    as in the original.
    """

    config = CONFIG

    def __init__(self, model_config: Mapping) -> None:
        super().__init__()
        missing = [key for key in REQUIRED_CONFIG_KEYS if key not in model_config]
        if missing:
            raise KeyError(f"AASIST model_config lacks keys {missing}")
        architecture = model_config.get("architecture", "AASIST")
        if architecture != "AASIST":
            raise ValueError(f"AASIST model_config: architecture must be 'AASIST', got {architecture!r}")
        filts = model_config["filts"]
        gat_dims = model_config["gat_dims"]
        pool_ratios = model_config["pool_ratios"]
        temperatures = model_config["temperatures"]
        self.d_args = dict(model_config)

        self.conv_time = SincFilterBank(out_channels=filts[0], kernel_size=model_config["first_conv"])
        self.first_bn = nn.BatchNorm2d(num_features=1)
        self.drop = nn.Dropout(0.5)
        self.drop_way = nn.Dropout(0.2)
        self.selu = nn.SELU(inplace=True)
        self.encoder = nn.Sequential(
            nn.Sequential(ResidualBlock(filts[1], first=True)),
            nn.Sequential(ResidualBlock(filts[2])),
            nn.Sequential(ResidualBlock(filts[3])),
            nn.Sequential(ResidualBlock(filts[4])),
            nn.Sequential(ResidualBlock(filts[4])),
            nn.Sequential(ResidualBlock(filts[4])),
        )

        encoder_dim = filts[-1][-1]
        # The front max-pool divides the sinc channels by 3 (70 -> 23 spectral nodes).
        add_graph_layers(self, filts[0] // 3, encoder_dim, gat_dims, pool_ratios, temperatures)

    def _heterogeneous_branch(self, first: HeteroGraphAttentionLayer, second: HeteroGraphAttentionLayer,
                              pool_s: GraphPool, pool_t: GraphPool, master: Tensor,
                              out_t: Tensor, out_s: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        nodes_t, nodes_s, master = first(out_t, out_s, master=master)
        nodes_s = pool_s(nodes_s)
        nodes_t = pool_t(nodes_t)
        aug_t, aug_s, aug_master = second(nodes_t, nodes_s, master=master)
        return nodes_t + aug_t, nodes_s + aug_s, master + aug_master

    def _graph_readout(self, out_t: Tensor, out_s: Tensor) -> tuple[Tensor, Tensor]:
        """The two heterogeneous branches over the pooled temporal and spectral graphs, their element-wise max,
        and the readout: (embedding, logits)."""
        # Master nodes go in unexpanded ([1, 1, D]) and broadcast, as in the original.
        t1, s1, m1 = self._heterogeneous_branch(self.HtrgGAT_layer_ST11, self.HtrgGAT_layer_ST12,
                                                self.pool_hS1, self.pool_hT1, self.master1, out_t, out_s)
        t2, s2, m2 = self._heterogeneous_branch(self.HtrgGAT_layer_ST21, self.HtrgGAT_layer_ST22,
                                                self.pool_hS2, self.pool_hT2, self.master2, out_t, out_s)
        # Dropout order (T1, T2, S1, S2, M1, M2) matches the original's RNG consumption.
        t1, t2, s1, s2, m1, m2 = (self.drop_way(nodes) for nodes in (t1, t2, s1, s2, m1, m2))
        out_t = torch.max(t1, t2)
        out_s = torch.max(s1, s2)
        master = torch.max(m1, m2)

        embedding = torch.cat([
            torch.max(torch.abs(out_t), dim=1)[0], torch.mean(out_t, dim=1),
            torch.max(torch.abs(out_s), dim=1)[0], torch.mean(out_s, dim=1),
            master.squeeze(1),
        ], dim=1)
        embedding = self.drop(embedding)
        return embedding, self.out_layer(embedding)

    def forward(self, waveform: Tensor, freq_aug: bool = False) -> tuple[Tensor, Tensor]:
        # The sinc filter bank stays fp32 under autocast: in bf16 the weak high bands (where many
        # spoofing artefacts are) would drown in rounding noise of the strong low ones.
        with torch.autocast(waveform.device.type, enabled=False):
            x = self.conv_time(waveform.float().unsqueeze(1), mask=freq_aug)  # [B, filters, T - kernel + 1]
            x = F.max_pool2d(torch.abs(x.unsqueeze(1)), (3, 3))
            x = self.selu(self.first_bn(x))
        encoded = self.encoder(x)  # [B, C, spectral nodes, frames]

        spectral = torch.max(torch.abs(encoded), dim=3)[0].transpose(1, 2) + self.pos_S
        out_s = self.pool_S(self.GAT_layer_S(spectral))
        temporal = torch.max(torch.abs(encoded), dim=2)[0].transpose(1, 2)
        out_t = self.pool_T(self.GAT_layer_T(temporal))

        return self._graph_readout(out_t, out_s)
