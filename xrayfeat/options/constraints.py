"""Declaring an option once: its allowed values, its default and its help.

An option dataclass (see :mod:`xrayfeat.options.settings`) declares each field with
:func:`option`, giving a constraint (:class:`Choice`, :class:`Interval`,
:class:`Is`) and a help text. :func:`validate` checks every field against its
constraint, in the spirit of scikit-learn's parameter constraints, and the CLI
derives its click types, defaults and help from the same declarations, so a
choice or a default is never typed twice.

Library misuse raises :class:`OptionError`, which is both a ``ValueError`` (or
``TypeError`` for a wrong type) for library users and an
:class:`~xrayfeat.errors.XrayfeatError` the CLI prints as one line with exit 2.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from xrayfeat.errors import XrayfeatError


class OptionError(XrayfeatError, ValueError):
    """An option value outside what its declaration allows."""


class OptionTypeError(XrayfeatError, TypeError):
    """An option value of the wrong type."""


@dataclass(frozen=True)
class Choice:
    """One of a fixed tuple of strings."""

    values: tuple[str, ...]

    def accepts(self, value) -> bool:
        return isinstance(value, str) and value in self.values

    def describe(self) -> str:
        return "one of {" + ", ".join(repr(v) for v in self.values) + "}"


@dataclass(frozen=True)
class Interval:
    """A number in [low, high] (``None`` for an open end); ``integer`` for whole numbers only.

    ``low_open``/``high_open`` exclude the end itself (``Interval(0, 1, low_open=True)``: 0 < x <= 1).
    """

    low: float | None = None
    high: float | None = None
    integer: bool = False
    low_open: bool = False
    high_open: bool = False

    def accepts(self, value) -> bool:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if self.integer and not isinstance(value, int):
            return False
        if isinstance(value, float) and not math.isfinite(value):
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        if self.high is not None and (value >= self.high if self.high_open else value > self.high):
            return False
        return True

    def describe(self) -> str:
        kind = "an int" if self.integer else "a number"
        if self.low is None and self.high is None:
            return kind
        left = "(" if self.low_open else "["
        right = ")" if self.high_open else "]"
        low = "-inf" if self.low is None else f"{self.low:g}"
        high = "inf" if self.high is None else f"{self.high:g}"
        return f"{kind} in {left}{low}, {high}{right}"


@dataclass(frozen=True)
class Is:
    """Any value of the given types (e.g. a path or a bool)."""

    types: tuple[type, ...]

    def accepts(self, value) -> bool:
        return isinstance(value, self.types) and not (bool not in self.types and isinstance(value, bool))

    def describe(self) -> str:
        return " or ".join(t.__name__ for t in self.types)


@dataclass(frozen=True)
class Subset:
    """A tuple of distinct strings, each one of ``values`` (``()`` allowed)."""

    values: tuple[str, ...]

    def accepts(self, value) -> bool:
        return (isinstance(value, tuple) and all(isinstance(v, str) and v in self.values for v in value)
                and len(set(value)) == len(value))

    def describe(self) -> str:
        return "a tuple of distinct names from {" + ", ".join(repr(v) for v in self.values) + "}"


class Parsed:
    """A check for the values a parser takes: ``accepts`` is whether :meth:`parse` raises no TypeError or ValueError.

    A subclass gives ``parse`` (the parser its option's users call too) and ``describe``.
    """

    def parse(self, value):
        raise NotImplementedError

    def accepts(self, value) -> bool:
        try:
            self.parse(value)
        except (TypeError, ValueError):
            return False
        return True



def option(default: Any = dataclasses.MISSING, *, check, help: str, none: bool = False, flag: str | None = None):
    """A dataclass field with its constraint (``check``), help, and whether ``None`` is allowed.

    ``flag`` names the CLI option when it differs from ``--field-name``.
    """
    metadata = {"check": check, "help": help, "none": none, "flag": flag}
    return dataclasses.field(default=default, metadata=metadata)


def check_value(owner: str, name: str, value, check, none: bool = False) -> None:
    """Raise :class:`OptionError`/:class:`OptionTypeError` in one sentence when ``value`` breaks ``check``."""
    if value is None and none:
        return
    if check.accepts(value):
        return
    allowed = check.describe() + (" or None" if none else "")
    message = f"The {name!r} parameter of {owner} must be {allowed}. Got {value!r} instead."
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    wrong_type = (isinstance(check, Interval) and (not number or (check.integer and not isinstance(value, int)))
                  or isinstance(check, (Choice, Subset)) and not isinstance(value, (str, tuple))
                  or isinstance(check, Is))
    raise (OptionTypeError if wrong_type else OptionError)(message)


def validate(instance) -> None:
    """Check every declared field of an option dataclass instance."""
    owner = type(instance).__name__
    for f in dataclasses.fields(instance):
        check = f.metadata.get("check")
        if check is not None:
            check_value(owner, f.name, getattr(instance, f.name), check, f.metadata.get("none", False))


def declaration(cls, name: str) -> dict:
    """``{"default", "check", "help", "none", "flag"}`` of one field, for the CLI."""
    for f in dataclasses.fields(cls):
        if f.name == name:
            default = None if f.default is dataclasses.MISSING else f.default
            return {"default": default, **f.metadata}
    raise KeyError(f"{cls.__name__} has no option {name!r}")
