"""The corpus adapter's base class: everything that differs between corpora, behind one interface
(docs/new_corpus.md). The code above it asks the adapter (`corpus.has_sasv`, `corpus.condition_columns`,
`corpus.headline[...]`) and never compares a dataset name."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from data.protocols import CMEntry, SASVTrial
from runtime.config import ConfigError


class CorpusLayoutError(ConfigError):
    """A corpus folder that is not in its official layout: one line listing what was expected and where."""


@dataclass
class Enrollment:
    """Enrollment audio per speaker, and the lists it comes from."""

    paths: dict[str, list[Path]] = field(default_factory=dict)
    listing: list[Path] = field(default_factory=list)


class Corpus:
    """One corpus layout, built from a loaded config; nothing touches the file system in `__init__`."""

    name: ClassVar[str]
    title: ClassVar[str]
    url: ClassVar[str]
    partitions: ClassVar[tuple[str, ...]]
    has_sasv: ClassVar[bool]
    condition_columns: ClassVar[tuple[str, ...]]
    headline: ClassVar[Mapping[str, str]]

    def __init__(self, config: Mapping[str, Any]) -> None:
        self.config = config

    def audio_dir(self, partition: str) -> Path:
        raise NotImplementedError

    def audio_path(self, partition: str, utterance: str) -> Path:
        raise NotImplementedError

    def protocol(self, key: str) -> Path:
        raise NotImplementedError

    def cm_entries(self, partition: str) -> list[CMEntry]:
        raise NotImplementedError

    def sasv_trials(self, partition: str) -> list[SASVTrial]:
        raise NotImplementedError

    def enrollment(self, partition: str) -> Enrollment:
        raise NotImplementedError

    def check_layout(self, partitions: tuple[str, ...] | None = None) -> None:
        raise NotImplementedError

    @classmethod
    def recognises_keys(cls, path: str | Path) -> bool:
        return False

    @classmethod
    def read_keys(cls, path: str | Path) -> list[CMEntry]:
        raise NotImplementedError
