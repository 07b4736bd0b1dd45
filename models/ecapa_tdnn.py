"""ECAPA-TDNN speaker embedding back-end over frame features [B, T, C], as in UniSpeech's speaker verification.

The reference is microsoft/UniSpeech `downstreams/speaker_verification/models/ecapa_tdnn.py` (`ECAPA_TDNN`,
commit 40ac183e772abdcbf3a318eccffaa70c0cfd3a74): the code behind the published WavLM / UniSpeech-SAT + ECAPA-TDNN
VoxCeleb results, and the one file that holds the whole SSL design the issue names (softmax layer weights,
InstanceNorm1d, ECAPA-TDNN, attentive statistics pooling). WeSpeaker's ECAPA_TDNN has the same blocks but puts the
layer weighting in s3prl's Featurizer and has no instance norm, so it is not the reference here.

Attribute names equal the reference's, so its state dict loads with strict=True once the front-end's
`feature_extract.*` keys are set aside (`ECAPATDNN` keys: feature_weight, layer1..layer4, conv, pooling, bn,
linear). Behaviour kept on purpose (it changes the numbers):
* ReLU comes before BatchNorm everywhere (conv -> ReLU -> BN), as in the reference.
* The Res2 split passes its last chunk through untouched; chunk i > 0 adds the previous chunk's OUTPUT.
* The SE gate's bottleneck and the attention's hidden width are fixed at 128 in the reference's ECAPA_TDNN;
  here they are arguments with that default. The multi-layer aggregation width (1536 there) is one too.
* Attentive statistics: the std is sqrt(clamp(E[x^2] - mean^2, 1e-9)); the global context uses the unbiased
  variance (torch.var) plus 1e-10 under the square root.
* The weighted layer sum adds 1e-6 before the instance norm, as the reference does for SSL features.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

RES2_SCALE = 8  # the reference's SE-Res2Blocks all split into 8 chunks
# (kernel, dilation) of layer2..layer4; padding = dilation keeps the frame count
RES2_DILATIONS = (2, 3, 4)


class Conv1dReluBn(nn.Module):
    """conv -> ReLU -> BatchNorm (the reference's order)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1, padding: int = 0,
                 dilation: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv1d(in_channels, out_channels, kernel_size, 1, padding, dilation)
        self.bn = nn.BatchNorm1d(out_channels)

    def forward(self, x: Tensor) -> Tensor:
        return self.bn(F.relu(self.conv(x)))


class Res2Conv1dReluBn(nn.Module):
    """Res2Net-style hierarchical dilated convolution: `scale` chunks, the last passed through."""

    def __init__(self, channels: int, kernel_size: int, padding: int, dilation: int, scale: int = RES2_SCALE) -> None:
        super().__init__()
        if channels % scale:
            raise ValueError(f"Res2Conv1dReluBn: channels ({channels}) must be a multiple of scale ({scale})")
        self.scale = scale
        self.width = channels // scale
        self.nums = scale if scale == 1 else scale - 1
        self.convs = nn.ModuleList(nn.Conv1d(self.width, self.width, kernel_size, 1, padding, dilation)
                                   for _ in range(self.nums))
        self.bns = nn.ModuleList(nn.BatchNorm1d(self.width) for _ in range(self.nums))

    def forward(self, x: Tensor) -> Tensor:
        chunks = torch.split(x, self.width, dim=1)
        outputs = []
        current = chunks[0]
        for index, (conv, bn) in enumerate(zip(self.convs, self.bns)):
            if index:
                current = current + chunks[index]
            current = bn(F.relu(conv(current)))
            outputs.append(current)
        if self.scale != 1:
            outputs.append(chunks[self.nums])
        return torch.cat(outputs, dim=1)


class SEConnect(nn.Module):
    """Squeeze-excitation over time: mean over frames -> bottleneck MLP -> sigmoid channel gate."""

    def __init__(self, channels: int, bottleneck: int = 128) -> None:
        super().__init__()
        self.linear1 = nn.Linear(channels, bottleneck)
        self.linear2 = nn.Linear(bottleneck, channels)

    def forward(self, x: Tensor) -> Tensor:
        gate = torch.sigmoid(self.linear2(F.relu(self.linear1(x.mean(dim=2)))))
        return x * gate.unsqueeze(2)


class SERes2Block(nn.Module):
    """1x1 conv, Res2 dilated conv, 1x1 conv, SE gate, plus the (projected when widths differ) input."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, dilation: int,
                 scale: int = RES2_SCALE, se_bottleneck: int = 128) -> None:
        super().__init__()
        # The reference's attribute names (they are the state-dict keys).
        self.Conv1dReluBn1 = Conv1dReluBn(in_channels, out_channels)
        self.Res2Conv1dReluBn = Res2Conv1dReluBn(out_channels, kernel_size, dilation, dilation, scale)
        self.Conv1dReluBn2 = Conv1dReluBn(out_channels, out_channels)
        self.SE_Connect = SEConnect(out_channels, se_bottleneck)
        self.shortcut = nn.Conv1d(in_channels, out_channels, kernel_size=1) if in_channels != out_channels else None

    def forward(self, x: Tensor) -> Tensor:
        residual = x if self.shortcut is None else self.shortcut(x)
        out = self.SE_Connect(self.Conv1dReluBn2(self.Res2Conv1dReluBn(self.Conv1dReluBn1(x))))
        return out + residual


class AttentiveStatsPool(nn.Module):
    """Channel- and context-dependent attentive mean and standard deviation over frames -> [B, 2 C]."""

    def __init__(self, in_dim: int, attention_channels: int = 128, global_context: bool = False) -> None:
        super().__init__()
        self.global_context = global_context
        self.linear1 = nn.Conv1d(in_dim * 3 if global_context else in_dim, attention_channels, kernel_size=1)
        self.linear2 = nn.Conv1d(attention_channels, in_dim, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        if self.global_context:
            mean = x.mean(dim=-1, keepdim=True).expand_as(x)
            std = torch.sqrt(torch.var(x, dim=-1, keepdim=True) + 1e-10).expand_as(x)
            attention_input = torch.cat((x, mean, std), dim=1)
        else:
            attention_input = x
        alpha = torch.softmax(self.linear2(torch.tanh(self.linear1(attention_input))), dim=2)
        mean = torch.sum(alpha * x, dim=2)
        variance = torch.sum(alpha * x * x, dim=2) - mean ** 2
        return torch.cat([mean, torch.sqrt(variance.clamp(min=1e-9))], dim=1)


def weighted_layer_sum(hidden_states: Sequence[Tensor], weights: Tensor) -> Tensor:
    """softmax(weights) . stack(hidden_states): [B, T, C] from len(weights) tensors [B, T, C] (the reference's
    order of operations: weights broadcast over the stacked states, then a sum over the layer axis)."""
    if len(hidden_states) != weights.numel():
        raise ValueError(f"weighted_layer_sum: {len(hidden_states)} hidden states for {weights.numel()} weights")
    stacked = torch.stack(list(hidden_states), dim=0)
    return (F.softmax(weights, dim=-1).view(-1, 1, 1, 1) * stacked).sum(dim=0)


class ECAPATDNN(nn.Module):
    """Layer weights + instance norm + ECAPA-TDNN: L hidden states [B, T, feat_dim] (or one [B, T, feat_dim]
    tensor when n_hidden is 1) -> embedding [B, n_out].

    `n_hidden`: how many hidden states the learnable softmax weights (`feature_weight`) mix; 1 for a single
    feature tensor (the reference then keeps a one-element weight, whose softmax is 1).
    """

    def __init__(self, feat_dim: int, n_hidden: int = 1, channels: int = 512, mfa_channels: int = 1536,
                 attention_channels: int = 128, se_channels: int = 128, global_context: bool = False,
                 n_out: int = 256) -> None:
        super().__init__()
        if channels % RES2_SCALE:
            raise ValueError(f"ECAPATDNN: channels ({channels}) must be a multiple of {RES2_SCALE}")
        self.feat_dim, self.n_hidden, self.n_out = feat_dim, n_hidden, n_out
        # Registration order follows the reference, so state_dict() lists the keys in its order.
        self.feature_weight = nn.Parameter(torch.zeros(n_hidden))
        self.instance_norm = nn.InstanceNorm1d(feat_dim)  # no affine, no running stats: no state-dict entry
        self.layer1 = Conv1dReluBn(feat_dim, channels, kernel_size=5, padding=2)
        self.layer2, self.layer3, self.layer4 = (
            SERes2Block(channels, channels, kernel_size=3, dilation=dilation, se_bottleneck=se_channels)
            for dilation in RES2_DILATIONS)
        self.conv = nn.Conv1d(channels * 3, mfa_channels, kernel_size=1)
        self.pooling = AttentiveStatsPool(mfa_channels, attention_channels, global_context)
        self.bn = nn.BatchNorm1d(mfa_channels * 2)
        self.linear = nn.Linear(mfa_channels * 2, n_out)

    def features(self, hidden_states: Sequence[Tensor] | Tensor) -> Tensor:
        """The instance-normalised weighted layer sum [B, feat_dim, T] that layer1 reads."""
        if isinstance(hidden_states, Tensor):
            hidden_states = [hidden_states]
        x = weighted_layer_sum(hidden_states, self.feature_weight)
        if x.shape[-1] != self.feat_dim:
            raise ValueError(f"ECAPATDNN: features of width {x.shape[-1]}, built for {self.feat_dim}")
        return self.instance_norm(x.transpose(1, 2) + 1e-6)

    def embed_features(self, x: Tensor) -> Tensor:
        """[B, feat_dim, T] normalised features -> [B, n_out]."""
        out1 = self.layer1(x)
        out2 = self.layer2(out1)
        out3 = self.layer3(out2)
        out4 = self.layer4(out3)
        out = F.relu(self.conv(torch.cat([out2, out3, out4], dim=1)))
        return self.linear(self.bn(self.pooling(out)))

    def forward(self, hidden_states: Sequence[Tensor] | Tensor) -> Tensor:
        return self.embed_features(self.features(hidden_states))
