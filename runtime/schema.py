"""The declaration types of config keys: a component (network, loss, back-end, augmentation) declares its keys
beside its code as a ConfigSection of Fields, with their ranges, the rules between them and whether a
resumed run may change them; runtime.config only loads, merges, calls these declarations and reports.

A rule raises `Invalid(key, message)`; runtime.config turns it into a one-line ConfigError naming the file
or --set that gave the key. Nothing here imports torch, so a component's file may import this module freely.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any


class Invalid(Exception):
    """A rule's verdict: `key` (relative to the section for ConfigSection.checks, dotted from the top for
    ConfigSection.rules) `message` (a phrase following the key, e.g. "must be positive, got 0")."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key} {message}")
        self.key, self.message = key, message


@dataclass(frozen=True)
class Range:
    """An interval of valid values; `low_open` / `high_open` exclude the bound. A list value is checked per entry."""
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def __contains__(self, value: float) -> bool:
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or (value < self.high if self.high_open else value <= self.high)

    def describe(self) -> str:
        if self.high is None:
            if self.low == 0:
                return "positive" if self.low_open else "zero or more"
            return f"{'greater than' if self.low_open else 'at least'} {self.low}"
        return f"in {'(' if self.low_open else '['}{self.low}, {self.high}{')' if self.high_open else ']'}"


POSITIVE = Range(0, low_open=True)
ZERO_OR_MORE = Range(0)
ANY_FINITE = Range()
DECAY_FACTOR = Range(0, 1, low_open=True)  # multiplies the learning rate: (0, 1]
COSINE = Range(-1, 1)  # OC-softmax margins compare with cosine similarities
ANGULAR_MARGIN = Range(0, round(math.pi / 2, 4))  # radians: cos(theta + m) with theta + m past pi/2 flips sign
SEED = Range(0, 2**63 - 1)  # numpy seed sequences take no negative seed; torch.manual_seed takes 64 bits


@dataclass(frozen=True)
class Field:
    """One key: its type, default and meaning, plus what runtime.config checks of it.

    `range`: the valid numbers (each entry of a list). `length`: a list of exactly this many positive integers
    (a network width list; `widths` builds one), 0 for any non-empty such list. `resume`: a resumed run may
    change it (it does not change what is trained). `required`: must be given (free-form model_config keys)."""
    kind: type | tuple[type, ...]
    default: Any
    doc: str
    choices: tuple[Any, ...] | None = None
    ignored: bool = False  # accepted for compatibility with the original configs, never read
    range: Range | None = None
    length: int | None = None
    resume: bool = False
    required: bool = False


def widths(default: list[int], doc: str, length: int = 0, **options: Any) -> Field:
    """A network width list: `length` positive integers (0: one or more)."""
    return Field(list, default, doc, length=length, **options)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def check_field(key: str, field: Field, value: Any) -> None:
    """The checks `field` declares on `value` (already of its type, or None for unset); Invalid names `key`."""
    if value is None:
        return
    if field.range is not None:
        values = list(enumerate(value)) if isinstance(value, list) else [(None, value)]
        for index, item in values:
            if _is_number(item) and item not in field.range:  # a list entry of the wrong type: see length / rules
                raise Invalid(key if index is None else f"{key}[{index}]",
                              f"must be {field.range.describe()}, got {item}")
    if field.length is not None:
        if not isinstance(value, list) or not value or (field.length and len(value) != field.length) or \
                not all(_is_positive_int(item) for item in value):
            size = f"{field.length} positive integers" if field.length else "one or more positive integers"
            raise Invalid(key, f"must be a list of {size}, got {value!r}")


def check_kind(key: str, field: Field, value: Any) -> None:
    """For values no merge has typed (a free-form model_config): `value` is of the field's type and choices."""
    kinds = field.kind if isinstance(field.kind, tuple) else (field.kind,)
    ok = isinstance(value, kinds) and not (isinstance(value, bool) and bool not in kinds)
    if not ok and float in kinds and _is_number(value):
        ok = True
    if not ok:
        names = {int: "an integer", float: "a number", str: "a string", bool: "true/false", list: "a list",
                 dict: "a mapping"}
        raise Invalid(key, f"must be {' or '.join(names[kind] for kind in kinds)}, got {value!r}")
    if field.choices is not None and value not in field.choices:
        raise Invalid(key, f"is {value!r}; valid values: {', '.join(str(c) for c in field.choices if c is not None)}")


@dataclass(frozen=True)
class ConfigSection:
    """The keys a component declares, and its rules.

    fields: key -> Field, in the order the reference lists them. checks: functions of this section's values
    (a mapping) that raise Invalid naming a key inside the section. rules: functions of the whole config that
    raise Invalid naming a dotted key (cross-section rules, e.g. the loss's feature size equals the back-end's).
    min_samples: for a network, (the fewest input samples it accepts, why) from its section's values."""
    fields: Mapping[str, Field]
    checks: tuple[Callable[[Mapping[str, Any]], None], ...] = ()
    rules: tuple[Callable[[Mapping[str, Any]], None], ...] = ()
    min_samples: Callable[[Mapping[str, Any]], tuple[int, str]] | None = None
    name: str = ""  # how messages name the component, e.g. "ResNetSE34V2"

    def validate(self, values: Mapping[str, Any], *, typed: bool = True) -> None:
        """Every declared check on `values` (this section's keys -> values); `typed`: the merge has already
        checked types and choices (else they are checked here, and required keys must be present)."""
        for key, item in self.fields.items():
            if key not in values:
                if item.required:
                    raise Invalid(key, "must be given")
                continue
            if not typed and values[key] is not None:
                check_kind(key, item, values[key])
            check_field(key, item, values[key])
        for check in self.checks:
            check(values)

    def defaults(self) -> dict[str, Any]:
        return {key: item.default for key, item in self.fields.items()}


__all__ = ["ANGULAR_MARGIN", "ANY_FINITE", "COSINE", "DECAY_FACTOR", "POSITIVE", "SEED", "ZERO_OR_MORE",
           "ConfigSection", "Field", "Invalid", "Range", "check_field", "check_kind", "widths"]
