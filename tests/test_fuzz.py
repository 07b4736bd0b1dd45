"""Fuzzing: the config loader and the protocol / score-file parsers give a result or the project's
own error (one line naming the file), never an exception from deep inside."""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from data.protocols import (
    ProtocolError,
    read_cm_protocol,
    read_enrollment_files,
    read_enrollment_utterances,
    read_sasv_trials,
)
from runtime.config import SCHEMA, Config, ConfigError, build_config, load_config

FUZZ = settings(max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
SCRATCH = Path(tempfile.mkdtemp(prefix="sasv_fuzz_"))  # hypothesis reruns examples: no function-scoped tmp_path

# Text without surrogates (a file is written as UTF-8), with the characters that matter to YAML and protocols.
TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=300)
PROTOCOL_ALPHABET = st.sampled_from(list("LA_0123-ETDbonafidespotargenlA\t ,\n\r") + ["bonafide", "spoof", "target",
                                                                                       "nontarget", "A07", "-"])


def _dotted_keys(schema: dict, prefix: str = "") -> list[str]:
    keys = []
    for name, item in schema.items():
        keys.append(prefix + name)
        if isinstance(item, dict):
            keys.extend(_dotted_keys(item, f"{prefix}{name}."))
    return keys


KEYS = _dotted_keys(SCHEMA)
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-10**12, 10**12), st.floats(allow_nan=True),
                    st.text(max_size=20), st.sampled_from(["error", "skip", "first", "four_class", "1e-4", ".inf"]))
VALUES = st.recursive(SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                       st.dictionaries(st.sampled_from(KEYS + ["x"]), inner,
                                                                       max_size=4)), max_leaves=12)


def _nest(dotted: str, value):
    for part in reversed(dotted.split(".")):
        value = {part: value}
    return value


def _merge(into: dict, extra: dict) -> dict:
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = value
    return into


def _config_from(pairs: list[tuple[str, object]]) -> dict:
    config: dict = {}
    for key, value in pairs:
        _merge(config, _nest(key, value))
    return config


# Configs that mostly use real keys, so that the validation behind the parser is reached too.
CONFIGS = st.lists(st.tuples(st.sampled_from(KEYS), VALUES), max_size=6).map(_config_from)


def _write(name: str, content: str | bytes) -> Path:
    path = SCRATCH / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


def _load_or_config_error(path: Path) -> None:
    try:
        config = load_config(path)
    except ConfigError as error:
        message = str(error)
        assert message.startswith(str(path)) and "\n" not in message.strip(), message
    else:
        assert isinstance(config, Config)
        _check_types(config, SCHEMA, "")


def _check_types(values: dict, schema: dict, prefix: str) -> None:
    """A config that loads has every value of its declared type (or None where that is the default)."""
    for name, item in schema.items():
        value = values[name]
        if isinstance(item, dict):
            _check_types(value, item, f"{prefix}{name}.")
        elif value is not None:
            kinds = item.kind if isinstance(item.kind, tuple) else (item.kind,)
            assert isinstance(value, kinds), f"{prefix}{name} = {value!r}"


@FUZZ
@given(TEXT)
def test_config_loader_on_arbitrary_text(text):
    _load_or_config_error(_write("text.conf", text))


@FUZZ
@given(st.binary(max_size=200))
def test_config_loader_on_arbitrary_bytes(content):
    _load_or_config_error(_write("bytes.conf", content))


@FUZZ
@given(CONFIGS)
@pytest.mark.slow
def test_config_loader_on_structured_yaml(values):
    _load_or_config_error(_write("structured.conf", yaml.safe_dump(values)))


@FUZZ
@given(st.lists(st.tuples(st.sampled_from(KEYS + ["nope", "optim.", ".x", ""]), st.text(max_size=12)), max_size=4))
def test_command_line_overrides(pairs):
    overrides = [f"{key}={value}" for key, value in pairs]
    try:
        config = build_config({}, overrides=overrides)
    except ConfigError as error:
        assert str(error).startswith(("--set ", "<dict>")), str(error)  # names the override (as typed)
    else:
        _check_types(config, SCHEMA, "")


def test_pathological_yaml_is_a_config_error():
    for text in ("[" * 5000 + "]" * 5000, "a: &a [*a]", "? [a, b]\n: c", "!!python/object:os.system x",
                 "a: !!binary %%%"):
        _load_or_config_error(_write("pathological.conf", text))


# --------------------------------------------------------------------------- protocols
PROTOCOL_TEXT = st.one_of(TEXT, st.lists(PROTOCOL_ALPHABET, max_size=80).map("".join))
PARSERS = {
    "cm": read_cm_protocol,
    "trials": read_sasv_trials,
    "enrollment_files": read_enrollment_files,
    "enrollment_utterances": lambda path: read_enrollment_utterances([path]),
}


def _parse_or_protocol_error(name: str, path: Path) -> None:
    try:
        PARSERS[name](path)
    except ProtocolError as error:
        message = str(error)
        assert message.startswith(str(path)) and "\n" not in message, message


@FUZZ
@given(st.sampled_from(sorted(PARSERS)), PROTOCOL_TEXT)
def test_protocol_parsers_on_arbitrary_text(name, text):
    _parse_or_protocol_error(name, _write(f"{name}.txt", text))


@FUZZ
@given(st.sampled_from(sorted(PARSERS)), st.binary(max_size=200))
def test_protocol_parsers_on_arbitrary_bytes(name, content):
    _parse_or_protocol_error(name, _write(f"{name}.bin", content))


def test_protocol_parsers_on_a_folder_and_a_missing_file():
    for name in PARSERS:
        _parse_or_protocol_error(name, SCRATCH)
        _parse_or_protocol_error(name, SCRATCH / "missing.txt")


# --------------------------------------------------------------------------- score files read back by the scripts
@FUZZ
@given(st.one_of(TEXT, st.lists(st.sampled_from(["LA_E_1", "LA_E_2", "0.5", "-1e3", "nan", "inf", "x", " ", "\n"]),
                                max_size=12).map(" ".join)))
def test_asv_score_file_reader(text):
    from scoring.score_files import read_asv_score_file as read_asv_scores

    trials = _write("trials.txt", "LA_0001 LA_E_1 bonafide target\nLA_0002 LA_E_2 A07 spoof\n")
    scores = _write("score_ASV.txt", text)
    try:
        by_key = read_asv_scores(scores, str(trials))
    except ProtocolError as error:
        assert str(error).startswith(str(scores)) and "\n" not in str(error)
    else:
        assert set(by_key) == {"target", "nontarget", "spoof"}
        assert all(np.isfinite(values).all() for values in by_key.values())
