"""The corpus registry: `dataset` name -> its adapter class (data/corpora/base.py; docs/new_corpus.md).

Adding a corpus is one file in this folder plus one line in CORPORA.
"""
from __future__ import annotations

import copy
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from data.corpora.asvspoof5 import ASVspoof5
from data.corpora.asvspoof2019_la import ASVspoof2019LA
from data.corpora.asvspoof2021 import ASVspoof2021DF, ASVspoof2021LA
from data.corpora.base import Corpus, CorpusLayoutError, Enrollment, label_attacks
from data.corpora.in_the_wild import InTheWild
from data.protocols import ProtocolError, read_fields
from runtime.errors import ConfigError

CORPORA: dict[str, type[Corpus]] = {
    ASVspoof2019LA.name: ASVspoof2019LA,
    ASVspoof5.name: ASVspoof5,
    ASVspoof2021LA.name: ASVspoof2021LA,
    ASVspoof2021DF.name: ASVspoof2021DF,
    InTheWild.name: InTheWild,
}
DEFAULT = ASVspoof2019LA.name

__all__ = ["CORPORA", "Corpus", "CorpusLayoutError", "Enrollment", "corpus_class", "corpus_for_keys",
           "corpus_for_list", "corpus_names", "corpus_of", "label_attacks", "recorded_config"]


def corpus_names() -> tuple[str, ...]:
    return tuple(CORPORA)


def corpus_class(name: str | None) -> type[Corpus]:
    """The adapter class of dataset `name` (None: the default, ASVspoof 2019 LA)."""
    try:
        return CORPORA[name or DEFAULT]
    except KeyError:
        raise ConfigError(f"unknown dataset {name!r}; valid values: {', '.join(CORPORA)}") from None


def corpus_of(config: Mapping[str, Any]) -> Corpus:
    """The adapter of a config's `dataset` (default asvspoof2019_la)."""
    return corpus_class(config.get("dataset"))(config)


def recorded_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """The config as plain data, as config.conf and checkpoints record it: each protocol key left at its default
    holds the file its corpus finds for it now (Corpus.recorded_dirs). Loading does no search; this is where a
    run's record names the files it reads."""
    plain = config.to_dict() if hasattr(config, "to_dict") else copy.deepcopy(dict(config))
    plain["dirs"] = copy.deepcopy(corpus_of(config).recorded_dirs())
    return plain


def corpus_for_list(path: str | Path, kind: str) -> type[Corpus]:
    """The corpus whose CM list (`kind` "cm": training / CM protocols and utterance lists) or SASV trial list
    (`kind` "trials") layout the first line of `path` has, told by its number of columns, among the corpora
    that have such lists (training partitions for "cm", SASV trials for "trials"). For lists no config names
    the dataset of (extra training lists, evaluate.py)."""
    if kind == "cm":
        owners = [cls for cls in CORPORA.values() if "train" in cls.partitions and cls.cm_list_columns]
        what, columns = "CM protocol or utterance list", {cls: cls.cm_list_columns for cls in owners}
    else:
        owners = [cls for cls in CORPORA.values() if cls.has_sasv]
        what, columns = "SASV trial list", {cls: cls.trial_list_columns for cls in owners}
    lines = read_fields(path, "protocol file")
    if not lines:
        return CORPORA[DEFAULT]  # its reader names the empty file
    number, fields = lines[0]
    for cls in owners:
        if len(fields) in columns[cls]:
            return cls
    known = " or ".join(f"{cls.title} ({' or '.join(str(n) for n in columns[cls])} columns)" for cls in owners)
    raise ProtocolError(f"{path}:{number}: not a {what} of {known}; got {len(fields)} fields")


def corpus_for_keys(path: str | Path) -> type[Corpus]:
    """The corpus whose official keys file (CM protocol, utterance list, trial_metadata.txt, meta.csv) `path`
    is, asking each class's `recognises_keys`; none: a ProtocolError naming the file, line 1 and the layouts
    known."""
    for cls in CORPORA.values():
        if cls.recognises_keys(path):
            return cls
    lines = read_fields(path, "protocol file")
    got = f"; got {len(lines[0][1])} fields" if lines else "; the file is empty"
    known = "; ".join(f"{cls.name}" + (f" ({cls.keys_layout})" if cls.keys_layout else "") for cls in CORPORA.values())
    raise ProtocolError(f"{path}:1: not the keys file of any corpus this toolkit reads ({known}){got}")
