"""One-line delegations to the corpus adapter (data/corpora/), kept so that code calling these functions still
works while it moves to `corpus_of(config)`; new code asks the adapter directly.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from data.corpora import corpus_class, corpus_for_list, corpus_of, label_attacks
from data.protocols import CMEntry, SASVTrial

__all__ = ["audio_dir", "check_tests_not_enrolled_in", "cm_entries", "cm_list", "dataset", "enrollment_list",
           "enrollment_utterances", "label_attacks", "primary_metric", "read_cm_entries", "read_trials",
           "sasv_trials", "trial_codecs", "trial_list"]


def dataset(config: Mapping[str, Any]) -> str:
    return corpus_of(config).name


def audio_dir(config: Mapping[str, Any], partition: str) -> Path:
    return corpus_of(config).audio_dir(partition)


def cm_list(config: Mapping[str, Any], partition: str) -> str:
    return corpus_of(config).cm_list(partition)


def read_cm_entries(path: str | Path, name: str | None = "asvspoof2019_la") -> list[CMEntry]:
    """A CM list of dataset `name` (None: told by its columns, among the corpora with training lists)."""
    return (corpus_class(name) if name else corpus_for_list(path, "cm")).read_keys(path)


def cm_entries(config: Mapping[str, Any], partition: str) -> list[CMEntry]:
    return corpus_of(config).cm_entries(partition)


def trial_codecs(config: Mapping[str, Any], partition: str, trials: Sequence[SASVTrial]) -> list[str] | None:
    return corpus_of(config).trial_conditions(partition, trials).get("codec")


def primary_metric(config: Mapping[str, Any]) -> str:
    return corpus_of(config).headline["sasv"]


def trial_list(config: Mapping[str, Any], partition: str) -> str:
    return corpus_of(config).trial_list(partition)


def read_trials(path: str | Path, name: str | None = "asvspoof2019_la") -> list[SASVTrial]:
    """SASV trials of dataset `name` (None: told by its columns, among the corpora with SASV trials)."""
    return (corpus_class(name) if name else corpus_for_list(path, "trials")).read_trials(path)


def sasv_trials(config: Mapping[str, Any], partition: str) -> list[SASVTrial]:
    return corpus_of(config).sasv_trials(partition)


def check_tests_not_enrolled_in(config: Mapping[str, Any], partition: str, trials: Sequence[SASVTrial]) -> None:
    corpus_of(config).check_tests_not_enrolled(partition, trials)


def enrollment_list(config: Mapping[str, Any], partition: str) -> str | list[str]:
    return corpus_of(config).enrollment_list(partition)


def enrollment_utterances(config: Mapping[str, Any], partition: str) -> dict[str, list[str]]:
    return corpus_of(config).enrollment_utterances(partition)
