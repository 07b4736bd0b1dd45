"""Task definitions: what a kind of training run trains, on which data, with which loss and metrics.

A task is one file here plus one line in TASKS; the config key `system` selects it.
"""
from __future__ import annotations

from training.task import Task
from training.tasks.asv import ASVTask
from training.tasks.b2 import B2Task
from training.tasks.cm import CMTask
from training.tasks.sasv import SASVTask

TASKS: dict[str, type[Task]] = {"sasv": SASVTask, "asv": ASVTask, "cm": CMTask, "b2": B2Task}
