"""The corpus registry: dataset name -> adapter class. Adding a corpus is one file plus one line here."""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from data.corpora.asvspoof2021 import ASVspoof2021DF, ASVspoof2021LA
from data.corpora.base import Corpus, CorpusLayoutError
from data.corpora.in_the_wild import InTheWild
from data.protocols import ProtocolError
from runtime.config import ConfigError

CORPORA: dict[str, type[Corpus]] = {
    ASVspoof2021LA.name: ASVspoof2021LA,
    ASVspoof2021DF.name: ASVspoof2021DF,
    InTheWild.name: InTheWild,
}

__all__ = ["CORPORA", "Corpus", "CorpusLayoutError", "corpus_for_keys", "corpus_names", "corpus_of"]


def corpus_names() -> tuple[str, ...]:
    return tuple(CORPORA)


def corpus_of(config: Mapping[str, Any]) -> Corpus:
    """The adapter of `config["dataset"]` (default asvspoof2019_la)."""
    name = config.get("dataset", "asvspoof2019_la")
    if name not in CORPORA:
        raise ConfigError(f"dataset: unknown corpus {name!r}; known: {', '.join(CORPORA)}")
    return CORPORA[name](config)


def corpus_for_keys(path: str | Path) -> type[Corpus]:
    """The corpus whose official keys file `path` is, told by its header / column count."""
    for corpus in CORPORA.values():
        if corpus.recognises_keys(path):
            return corpus
    raise ProtocolError(f"{path}:1: not a keys file of a known corpus; known layouts: "
                        + "; ".join(f"{c.name} ({c.keys_layout})" for c in CORPORA.values()
                                    if getattr(c, "keys_layout", None)))
