"""ResNetSE34V2 speaker embedding network (ASV branch), compatible with voxceleb_trainer checkpoints.

The layer layout and attribute names reproduce voxceleb_trainer's ResNetSE34V2 so that
its state dicts (keys, shapes, front-end buffers) load unchanged. Quirks kept on purpose:
ReLU comes *before* BatchNorm in the stem and in each block, and the front end runs
without gradient and in float32 even under autocast.
"""
from __future__ import annotations

import inspect
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from runtime.schema import POSITIVE, ConfigSection, Field, Invalid, Range, widths

# ResNetSE34V2's centred 512-point STFT reflect-pads the waveform by 256 samples, which needs more input than
# the padding; the hop (160) and the stride-2 stages then always leave a frame (measured:
# tests/test_hostile_input.py runs it at and below this length).
MIN_SAMPLES = 257


def _mel_bands_halve_three_times(values) -> None:
    if values["n_mels"] % 8:
        raise Invalid("n_mels", f"must be a multiple of 8 (three stride-2 stages halve the mel axis), "
                                f"got {values['n_mels']}")


# The asv_model keys of this network (besides `architecture`): the constructor's keyword arguments.
CONFIG = ConfigSection(
    name="ResNetSE34V2",
    fields=dict(
        n_out=Field(int, 512, "speaker embedding size", range=POSITIVE),
        encoder_type=Field(str, "ASP", "attentive statistics (ASP) or self-attentive (SAP) pooling",
                           choices=("ASP", "SAP")),
        n_mels=Field(int, 64, "mel bands", range=Range(8)),  # and a multiple of 8
        feature_norm=Field(str, "instance", "log-mel normalisation: instance (the original: per band over time) or "
                           "utterance (one mean/std per utterance, keeps the long-term spectrum)",
                           choices=("instance", "utterance")),
        layers=widths([3, 4, 6, 3], "SE basic blocks per stage", length=4),
        num_filters=widths([32, 64, 128, 256], "channels per stage", length=4),
    ),
    checks=(_mel_bands_halve_three_times,),
    min_samples=lambda values: (MIN_SAMPLES, "512-point STFT"),
)


class PreEmphasis(nn.Module):
    """y[n] = x[n] - coef * x[n-1], with x[-1] taken as x[1] (reflect padding)."""

    def __init__(self, coef: float = 0.97) -> None:
        super().__init__()
        self.coef = coef
        # conv1d is a cross-correlation, so the kernel is stored reversed: [-coef, 1].
        self.register_buffer("flipped_filter", torch.tensor([[[-coef, 1.0]]], dtype=torch.float32))

    def forward(self, waveform: Tensor) -> Tensor:
        if waveform.dim() != 2:
            raise ValueError(f"PreEmphasis expects a [batch, samples] waveform, got shape {tuple(waveform.shape)}")
        padded = F.pad(waveform.unsqueeze(1), (1, 0), mode="reflect")
        return F.conv1d(padded, self.flipped_filter).squeeze(1)


class SqueezeExcitation(nn.Module):
    """Channel gating: global average pool -> bottleneck MLP -> sigmoid scale."""

    def __init__(self, channels: int, reduction: int = 8) -> None:
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Sequential(
            nn.Linear(channels, channels // reduction),
            nn.ReLU(inplace=True),
            nn.Linear(channels // reduction, channels),
            nn.Sigmoid(),
        )

    def forward(self, x: Tensor) -> Tensor:
        batch, channels = x.shape[:2]
        gate = self.fc(self.avg_pool(x).view(batch, channels)).view(batch, channels, 1, 1)
        return x * gate


class SEBasicBlock(nn.Module):
    """conv -> ReLU -> BN -> conv -> BN -> SE, plus (projected) shortcut, then ReLU."""

    expansion = 1

    def __init__(self, in_channels: int, channels: int, stride=1, downsample: nn.Module | None = None,
                 reduction: int = 8) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, kernel_size=3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)
        self.se = SqueezeExcitation(channels, reduction)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        out = self.bn1(self.relu(self.conv1(x)))
        out = self.se(self.bn2(self.conv2(out)))
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.relu(out + shortcut)


class ResNetSE34V2(nn.Module):
    """Log-mel ResNet with squeeze-excitation blocks and attentive statistics pooling.

    forward(waveform [B, T] float) -> embedding [B, n_out].
    """

    config = CONFIG

    def __init__(self, n_out: int = 512, encoder_type: str = "ASP", n_mels: int = 64,
                 layers: Sequence[int] = (3, 4, 6, 3), num_filters: Sequence[int] = (32, 64, 128, 256),
                 log_input: bool = True, sample_rate: int = 16000, n_fft: int = 512,
                 win_length: int = 400, hop_length: int = 160, feature_norm: str = "instance") -> None:
        import torchaudio  # here, not at the top: reading CONFIG (config validation) stays cheap

        super().__init__()
        if feature_norm not in ("instance", "utterance"):
            raise ValueError(f"ResNetSE34V2: feature_norm must be 'instance' or 'utterance', got {feature_norm!r}")
        if encoder_type not in ("ASP", "SAP"):
            raise ValueError(f"ResNetSE34V2: encoder_type must be 'ASP' or 'SAP', got {encoder_type!r}")
        if len(layers) != 4 or len(num_filters) != 4:
            raise ValueError(f"ResNetSE34V2: layers and num_filters need 4 entries, got {layers}, {num_filters}")
        self.encoder_type = encoder_type
        self.n_mels = n_mels
        self.log_input = log_input
        self.feature_norm = feature_norm
        self.channels_last = False  # see use_channels_last
        self._in_channels = num_filters[0]

        # Attribute creation order matches the original so state_dict() lists keys in the same order.
        self.conv1 = nn.Conv2d(1, num_filters[0], kernel_size=3, stride=1, padding=1)
        self.relu = nn.ReLU(inplace=True)
        self.bn1 = nn.BatchNorm2d(num_filters[0])
        self.layer1 = self._make_layer(num_filters[0], layers[0], stride=1)
        self.layer2 = self._make_layer(num_filters[1], layers[1], stride=(2, 2))
        self.layer3 = self._make_layer(num_filters[2], layers[2], stride=(2, 2))
        self.layer4 = self._make_layer(num_filters[3], layers[3], stride=(2, 2))

        self.instancenorm = nn.InstanceNorm1d(n_mels)
        self.torchfb = nn.Sequential(
            PreEmphasis(),
            torchaudio.transforms.MelSpectrogram(
                sample_rate=sample_rate, n_fft=n_fft, win_length=win_length, hop_length=hop_length,
                window_fn=torch.hamming_window, n_mels=n_mels,
            ),
        )

        # Three stride-2 stages shrink the mel axis by 8; channels x mel rows become the pooled feature.
        pooled_channels = num_filters[3] * int(n_mels / 8)
        self.attention = nn.Sequential(
            nn.Conv1d(pooled_channels, 128, kernel_size=1),
            nn.ReLU(),
            nn.BatchNorm1d(128),
            nn.Conv1d(128, pooled_channels, kernel_size=1),
            nn.Softmax(dim=2),
        )
        out_dim = pooled_channels * 2 if encoder_type == "ASP" else pooled_channels
        self.fc = nn.Linear(out_dim, n_out)

        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.constant_(module.weight, 1)
                nn.init.constant_(module.bias, 0)

    def _make_layer(self, channels: int, n_blocks: int, stride) -> nn.Sequential:
        downsample = None
        if stride != 1 or self._in_channels != channels:
            downsample = nn.Sequential(
                nn.Conv2d(self._in_channels, channels, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(channels),
            )
        blocks = [SEBasicBlock(self._in_channels, channels, stride, downsample)]
        self._in_channels = channels
        blocks += [SEBasicBlock(channels, channels) for _ in range(1, n_blocks)]
        return nn.Sequential(*blocks)

    def use_channels_last(self) -> ResNetSE34V2:
        """Keep the 2-D convolutions' weights and activations in channels_last (NHWC), the layout that
        cuDNN's tensor-core kernels run fastest; results equal the default layout up to rounding."""
        self.channels_last = True
        return self.to(memory_format=torch.channels_last)

    def mel_power(self, waveform: Tensor) -> Tensor:
        """Pre-emphasised mel power spectrogram [B, n_mels, 1 + T // hop], float32, no gradient."""
        with torch.no_grad(), torch.autocast(device_type=waveform.device.type, enabled=False):
            return self.torchfb(waveform.float())

    def frontend_features(self, waveform: Tensor) -> Tensor:
        """Instance-normalised log-mel features [B, n_mels, frames], float32, no gradient."""
        with torch.no_grad(), torch.autocast(device_type=waveform.device.type, enabled=False):
            features = self.torchfb(waveform.float()) + 1e-6
            if self.log_input:
                features = features.log()
            if self.feature_norm == "utterance":
                # One mean/std per utterance keeps the long-term spectral shape that per-band
                # instance normalisation removes (useful for small models and synthetic voices).
                mean = features.mean(dim=(1, 2), keepdim=True)
                std = features.std(dim=(1, 2), keepdim=True)
                return (features - mean) / (std + 1e-5)
            return self.instancenorm(features)

    def forward(self, waveform: Tensor) -> Tensor:
        x = self.frontend_features(waveform).unsqueeze(1)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        x = self.bn1(self.relu(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))

        x = x.reshape(x.shape[0], -1, x.shape[-1])  # [B, channels * mel rows, frames]
        weights = self.attention(x)
        mean = torch.sum(x * weights, dim=2)
        if self.encoder_type == "SAP":
            pooled = mean
        else:
            # Clamp keeps sqrt away from tiny negative variances caused by rounding.
            variance = torch.sum(x ** 2 * weights, dim=2) - mean ** 2
            pooled = torch.cat((mean, torch.sqrt(variance.clamp(min=1e-5))), dim=1)
        return self.fc(pooled)


def MainModel(nOut: int = 512, **kwargs) -> ResNetSE34V2:
    """voxceleb_trainer-style factory: nOut plus any constructor keyword; other trainer options are ignored."""
    accepted = set(inspect.signature(ResNetSE34V2.__init__).parameters) - {"self", "n_out"}
    return ResNetSE34V2(n_out=nOut, **{key: value for key, value in kwargs.items() if key in accepted})
