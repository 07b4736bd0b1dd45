"""Loss functions, built by name from the config."""
from __future__ import annotations

from torch import nn

from losses.aam_softmax import AAMSoftmax
from losses.angle_proto import AngleProto
from losses.oc_softmax import OCSoftmax
from losses.softmax_proto import SoftmaxProto

LOSSES: dict[str, type[nn.Module]] = {
    "ocsoftmax": OCSoftmax,
    "aamsoftmax": AAMSoftmax,
    "angleproto": AngleProto,
    "softmaxproto": SoftmaxProto,
}


def build_loss(name: str, **kwargs) -> nn.Module:
    """Instantiate the loss registered as `name` (case-insensitive) with the given keyword arguments."""
    key = name.lower()
    if key not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; valid losses: {', '.join(sorted(LOSSES))}")
    return LOSSES[key](**kwargs)


__all__ = ["LOSSES", "AAMSoftmax", "AngleProto", "OCSoftmax", "SoftmaxProto", "build_loss"]
