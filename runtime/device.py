"""Devices and numeric precision: which device a run uses, its autocast, fp32 rules and seeding."""
from __future__ import annotations

import random
import warnings
from contextlib import AbstractContextManager, nullcontext

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


AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_amp(amp: str, device: torch.device) -> str:
    """The precision a run trains in: `auto` is bf16 on CUDA and off elsewhere (the CPU's fp32 is what
    the demo and the goldens were computed with); bf16 / fp16 autocast on any device whose autocast
    supports that dtype (CUDA and, with this torch, the CPU), and are an error on one that does not."""
    if amp == "auto":
        return "bf16" if device.type == "cuda" else "off"
    if amp != "off" and not autocast_supported(device, amp):
        raise ConfigError(f"amp {amp!r}: torch's autocast does not support {AMP_DTYPES[amp]} on {device.type}; "
                          f"use amp: off or auto")
    return amp


def autocast_supported(device: torch.device, amp: str) -> bool:
    """Whether torch.autocast really runs in `amp`'s dtype on `device` (it disables itself with a
    warning where it does not, e.g. CUDA autocast without CUDA)."""
    dtype = AMP_DTYPES[amp]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            with torch.autocast(device.type, dtype=dtype):
                return torch.is_autocast_enabled(device.type) and torch.get_autocast_dtype(device.type) == dtype
        except (RuntimeError, ValueError):  # a device type without autocast
            return False


def autocast_context(device: torch.device, amp: str) -> AbstractContextManager:
    """The autocast of a resolved `amp` (see resolve_amp) on `device`, of whatever type; a no-op for off.
    The fp32 islands (the ResNet's fbank, AASIST's sinc front end, frozen sub-systems) leave it
    themselves."""
    if amp == "off":
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=AMP_DTYPES[amp])


def channels_last_enabled(setting: str, device: torch.device) -> bool:
    """The `channels_last` key: whether the ResNet keeps its weights and 4-D activations in channels_last
    (NHWC). auto = on CUDA only (cuDNN's tensor-core kernels run fastest in it); on / off on any device."""
    if setting == "auto":
        return device.type == "cuda"
    return setting == "on"
