"""Model components: ASV (ResNetSE34V2), CM (AASIST), the SASV back-end and checkpoint I/O.

Names are imported on first use so that `import models` stays cheap (torchaudio is only
loaded when the ResNet is needed).
"""
from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {
    "ResNetSE34V2": "models.resnet_se34v2",
    "AASIST": "models.aasist",
    "SASVBackend": "models.sasv",
    "SASVModel": "models.sasv",
    "Checkpoint": "models.checkpoint",
    "CheckpointError": "models.checkpoint",
    "apply_state": "models.checkpoint",
    "load_checkpoint": "models.checkpoint",
    "load_sasv_weights": "models.checkpoint",
    "load_asv_weights": "models.checkpoint",
    "load_cm_weights": "models.checkpoint",
    "save_checkpoint": "models.checkpoint",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'models' has no attribute {name!r}")
    value = getattr(import_module(_EXPORTS[name]), name)
    globals()[name] = value  # cache: later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
