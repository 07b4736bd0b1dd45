"""Networks (pure `nn.Module`s), found by name, plus the SASV back-end and checkpoint I/O.

A new network is one file here plus one line in ASV_NETWORKS or CM_NETWORKS; the config selects it
(`asv_model.architecture`, or `architecture` in the CM's model_config). An ASV network takes the
`asv_model` section's keys and `sample_rate` as keyword arguments and maps waveforms [B, T] to
embeddings [B, n_out]; a CM network takes its model_config mapping and returns (embedding, logits).

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
    "B2Backend": "models.b2_backend",
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

# name -> "module:class"
ASV_NETWORKS = {"ResNetSE34V2": "models.resnet_se34v2:ResNetSE34V2", "SSL_ECAPA_TDNN": "models.ssl_ecapa:SSLECAPATDNN"}
CM_NETWORKS = {"AASIST": "models.aasist:AASIST", "SSL_AASIST": "models.ssl_aasist:SSL_AASIST"}

__all__ = sorted(_EXPORTS) + ["ASV_NETWORKS", "CM_NETWORKS", "network_class"]


def network_class(kind: str, name: str) -> type:
    """The class registered as `name` in ASV_NETWORKS (kind "asv") or CM_NETWORKS (kind "cm")."""
    registry = ASV_NETWORKS if kind == "asv" else CM_NETWORKS
    if name not in registry:
        raise KeyError(f"unknown {kind.upper()} network {name!r}; known: {', '.join(sorted(registry))}")
    module, attribute = registry[name].split(":")
    return getattr(import_module(module), attribute)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'models' has no attribute {name!r}")
    value = getattr(import_module(_EXPORTS[name]), name)
    globals()[name] = value  # cache: later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
