"""Optimiser parameter groups: an SSL front-end with its own learning rate (`ssl.lr`) gets a group of its own."""
from __future__ import annotations

from collections.abc import Iterable

from torch import nn


def parameter_groups(parameters: Iterable[nn.Parameter], root: nn.Module, name: str) -> list[dict]:
    """`parameters` (the ones `root`'s task trains) as one group called `name`, less those of every SSL front-end
    inside `root` that sets `ssl.lr`: each of those is a group `<name>_ssl` with that learning rate. A scheduler
    scales every group alike, so the ratio of the two rates holds for the whole run."""
    parameters = list(parameters)
    wanted = {id(p) for p in parameters}
    groups: list[dict] = []
    taken: set[int] = set()
    for module in root.modules():
        lr = getattr(module, "ssl_lr", None)
        if lr is None or not hasattr(module, "ssl_parameters"):
            continue
        own = [p for p in module.ssl_parameters() if id(p) in wanted and id(p) not in taken]
        if own:
            taken.update(id(p) for p in own)
            groups.append({"params": own, "lr": lr, "name": f"{name}_ssl"})
    return [{"params": [p for p in parameters if id(p) not in taken], "name": name}] + groups
