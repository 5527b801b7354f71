"""Declaring an option once: its allowed values, its default and its help.

An option dataclass (see :mod:`xrayfeat.options.settings`) declares each field with
:func:`option`, giving a constraint (:class:`Choice`, :class:`Interval`,
:class:`Is`) and a help text. :func:`validate` checks every field against its
constraint, in the spirit of scikit-learn's parameter constraints, and the CLI
derives its click types, defaults and help from the same declarations, so a
choice or a default is never typed twice.

A public function declares the constraints of its parameters with
:func:`validate_params`, in the spirit of scikit-learn's ``validate_params``: the
same constraint objects, or a field's :func:`declaration` when the parameter is
an option of a dataclass, checked by the same :func:`check_value`, so a function
and a dataclass refuse a value in the same sentence.

Library misuse raises :class:`OptionError`, which is both a ``ValueError`` (or
``TypeError`` for a wrong type) for library users and an
:class:`~xrayfeat.errors.XrayfeatError` the CLI prints as one line with exit 2.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import math
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
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
    ``why``: the reason for the bound, said with it (an option that sizes an allocation
    has a maximum, and the message says what a larger value would cost).
    """

    low: float | None = None
    high: float | None = None
    integer: bool = False
    low_open: bool = False
    high_open: bool = False
    why: str | None = None

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
        return f"{kind} in {left}{low}, {high}{right}" + (f" ({self.why})" if self.why else "")


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


@dataclass(frozen=True)
class Constant:
    """Exactly ``value`` (of the same type; ``True`` is not ``1``), e.g. ``-1`` for "every core" beside a count."""

    value: Any

    def accepts(self, value) -> bool:
        return type(value) is type(self.value) and value == self.value

    def describe(self) -> str:
        return repr(self.value)


@dataclass(frozen=True)
class AnyOf:
    """A value any one of ``checks`` accepts (``AnyOf((Interval(1, None, integer=True), Constant(-1)))``)."""

    checks: tuple

    def accepts(self, value) -> bool:
        return any(check.accepts(value) for check in self.checks)

    def describe(self) -> str:
        return " or ".join(check.describe() for check in self.checks)


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
    raise (OptionTypeError if _wrong_type(check, value) else OptionError)(message)


def _wrong_type(check, value) -> bool:
    """Whether ``value`` breaks ``check`` by its type (a ``TypeError``) rather than by its value."""
    if isinstance(check, AnyOf):
        return all(_wrong_type(c, value) for c in check.checks)
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    return (isinstance(check, Interval) and (not number or (check.integer and not isinstance(value, int)))
            or isinstance(check, (Choice, Subset)) and not isinstance(value, (str, tuple))
            or isinstance(check, Constant) and type(value) is not type(check.value)
            or isinstance(check, Is))


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


@dataclass(frozen=True)
class _Param:
    """One constrained parameter of a function: where a call passes it, and its check."""

    name: str
    index: int | None  # position in ``args`` (None: keyword-only)
    keyword: bool  # may be passed by name (False: positional-only)
    check: Any
    none: bool


def _constraint(spec) -> tuple[Any, bool, Any]:
    """(check, none, declared default or None) of a :func:`validate_params` entry."""
    if isinstance(spec, Mapping):  # a field's declaration(), or {"check": ..., "none": True}
        return spec["check"], bool(spec.get("none", False)), spec.get("default")
    if not callable(getattr(spec, "accepts", None)) or not callable(getattr(spec, "describe", None)):
        raise TypeError(f"a parameter constraint has accepts() and describe(); got {spec!r}")
    return spec, False, None


def validate_params(constraints: Mapping[str, Any], *, owner: str | None = None):
    """Check a public function's arguments against declared constraints before it runs.

    ``constraints`` maps a parameter name to a constraint (:class:`Choice`,
    :class:`Interval`, :class:`Is`, :class:`Subset`, :class:`Constant`,
    :class:`AnyOf`, a :class:`Parsed` subclass) or to a mapping with ``"check"``
    and optionally ``"none"`` (``None`` allowed) and ``"default"``, the shape
    :func:`declaration` returns, so a parameter that is an option of a dataclass
    reuses that field's declaration::

        @validate_params({"method": declaration(EmbedOptions, "method"),
                          "pca_components": {"check": Interval(2, None, integer=True), "none": True}})
        def embed_features(features, *, method="tsne", pca_components=50): ...

    A bad argument raises what :func:`check_value` raises (:class:`OptionError`,
    or :class:`OptionTypeError` for a wrong type), naming ``owner`` (default the
    function's ``__name__``): ``The 'method' parameter of embed_features must be one of
    {'tsne', 'umap'}. Got 'pca' instead.``

    Checked once, when decorating: every name is a named parameter of the
    function, every default passes its constraint, and a default differs from
    no (non-None) default its declaration gives; a mistake raises ``TypeError``
    or :class:`OptionError` at import. Checked at each call: the arguments
    passed (a default left in place was checked already). Positions and names
    come from :func:`inspect.signature`, computed once, so a call costs a tuple
    walk, not a ``Signature.bind``. The wrapper keeps the function's name,
    docstring and signature (:func:`functools.wraps`) and lists its constraints
    in ``__parameter_constraints__`` (``{name: {"check", "none"}}``).
    """

    def decorate(func):
        where = owner or func.__name__
        parameters = list(inspect.signature(func).parameters.values())
        by_name = {p.name: (i, p) for i, p in enumerate(parameters)}
        plain = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
        params = []
        for name, spec in constraints.items():
            if name not in by_name or by_name[name][1].kind in (inspect.Parameter.VAR_POSITIONAL,
                                                                 inspect.Parameter.VAR_KEYWORD):
                raise TypeError(f"validate_params: {where}() has no named parameter {name!r}")
            index, p = by_name[name]
            check, none, declared = _constraint(spec)
            if p.default is not inspect.Parameter.empty:
                check_value(where, name, p.default, check, none)
                if declared is not None and p.default != declared:
                    raise TypeError(f"validate_params: {where}({name}={p.default!r}) differs from the default "
                                    f"{declared!r} of the option it declares")
            params.append(_Param(name, index if p.kind in plain else None,
                                 p.kind != inspect.Parameter.POSITIONAL_ONLY, check, none))
        checks = tuple(params)

        @functools.wraps(func)
        def wrapper(*args, **kwargs):
            for param in checks:
                if param.index is not None and param.index < len(args):
                    value = args[param.index]
                elif param.keyword and param.name in kwargs:
                    value = kwargs[param.name]
                else:
                    continue  # its default, checked when decorated
                if not (value is None and param.none) and not param.check.accepts(value):
                    check_value(where, param.name, value, param.check, param.none)
            return func(*args, **kwargs)

        wrapper.__parameter_constraints__ = MappingProxyType(
            {p.name: MappingProxyType({"check": p.check, "none": p.none}) for p in checks})
        return wrapper

    return decorate
