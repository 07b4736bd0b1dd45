"""Devices and numeric precision: which device a run uses, its autocast, fp32 rules and seeding."""
from __future__ import annotations

import random
from contextlib import nullcontext

import numpy as np
import torch

from runtime.config import ConfigError, check_device_name


def resolve_device(name: str) -> torch.device:
    """`auto` -> CUDA when present, else CPU; an unknown name, or a CUDA request without CUDA or that
    device, is a ConfigError naming it.

    A CUDA device also becomes the current one (`cuda:1` then leaves GPU 0 alone) and gets true
    fp32 convolutions (`use_ieee_fp32`)."""
    check_device_name(name)
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {name!r} requested but CUDA is not available; use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"device {name!r} requested but there are only {torch.cuda.device_count()} CUDA "
                              f"device(s), cuda:0 to cuda:{torch.cuda.device_count() - 1}")
        if device.index is not None:
            torch.cuda.set_device(device)
        use_ieee_fp32(device)
    return device


def use_ieee_fp32(device: torch.device) -> None:
    """On CUDA, make fp32 convolutions and matrix products true fp32: cuDNN defaults to TF32 (10-bit
    mantissa), which would round the waveform at the pre-emphasis and sinc convolutions and move
    scores by ~1e-4. Lower precision is what `amp` chooses; this leaves it to that key."""
    if device.type != "cuda":
        return
    if hasattr(torch.backends.cudnn, "conv"):  # torch >= 2.9
        torch.backends.cudnn.conv.fp32_precision = "ieee"
        torch.backends.cuda.matmul.fp32_precision = "ieee"
    else:
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_amp(amp: str, device: torch.device) -> str:
    if amp == "auto":
        return "bf16" if device.type == "cuda" else "off"
    return amp if device.type == "cuda" else "off"


def autocast_context(device: torch.device, amp: str) -> object:
    """bf16/fp16 autocast on CUDA when asked; the fbank stays fp32 inside the ResNet."""
    if amp == "off" or device.type != "cuda":
        return nullcontext()
    dtype = torch.float16 if amp == "fp16" else torch.bfloat16
    return torch.autocast(device_type="cuda", dtype=dtype)
