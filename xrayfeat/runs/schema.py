"""The JSON files of a run folder and of an export, as untrusted input: one declared schema per file and version.

A run's record is ``config.json`` (:func:`config_schema`, one per schema version: 1 is the first layout,
2 today's), ``metrics.json`` and each evaluation's ``external/<name>/metrics.json``
(:func:`metrics_schema`); an export's is ``export.json`` (:func:`export_schema`). Each schema is
data: an :class:`Obj` maps each key to a :class:`Field` (its shape, whether it is required), over
the shapes :class:`Text`, :class:`Whole`, :class:`Number`, :class:`Flag`, :class:`Maybe` (or null),
:class:`ListOf`, :class:`MapOf`, :class:`OneOf` and :class:`OptionsOf` (the fields of an option
dataclass, checked by their own declared constraints, so an option's allowed values are written once).

Objects are closed: a key the schema does not name is damage, as is a missing required one. A writer
that adds a field raises :data:`~xrayfeat.runs.record.SCHEMA_VERSION`, so that an older xrayfeat says
"upgrade" instead of misreading the record. The few free-form bags (training settings, timings,
versions) are objects whose other keys hold plain scalars (``rest``). What one field says about another
(the classes against the task, each per-class table, the confusion matrix and the head's settings;
evaluations against their artifacts) is checked by the object's ``checks`` after its fields.

:func:`parse` is the one way the bytes of such a file become a value: UTF-8 JSON with no duplicate key,
no ``NaN`` or ``Infinity``, no number beyond a 64-bit integer or a finite float, nested at most
:data:`MAX_DEPTH` deep and at most :data:`MAX_BYTES` long, then checked against its schema. Every problem
is one :class:`Damaged` line naming the file, the field and the fix::

    runs/r1/metrics.json: run record damaged: head.accuracy: expected a number in [0, 1], got "0.9"; re-run fit-head
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Callable

from xrayfeat.errors import RunError
from xrayfeat.options.constraints import Subset

#: The largest record file read (bytes): far above any record fit-head writes, far below what would hurt.
MAX_BYTES = 128 << 20
#: The deepest nesting of objects and lists read; every schema here is far shallower.
MAX_DEPTH = 64
#: Integers beyond this magnitude are refused while parsing (no field needs more than 64 bits).
MAX_INTEGER = 2**63 - 1
#: A probability-like figure may exceed [0, 1] by this much (float sums), no more.
_SLACK = 1e-9


class Damaged(RunError):
    """A record file that is not what its schema says: ``FILE: <what> damaged: FIELD: problem; FIX`` (exit 2)."""

    @classmethod
    def of(cls, file, problem: str, fix: str, what: str = "run record") -> Damaged:
        """The one line for a damaged record file: ``FILE: <what> damaged: PROBLEM; FIX``."""
        return cls(f"{file}: {what} damaged: {problem}; {fix}")


class Problem(Exception):
    """What :func:`check` found, where: ``at`` is the field path (``head.per_class.a.recall``, ``classes[1]``)."""

    def __init__(self, at: str, text: str):
        super().__init__(f"{at}: {text}" if at else text)
        self.at = at
        self.text = text


# --------------------------------------------------------------------------- how values and paths are shown


def show(value) -> str:
    """A JSON value as a message shows it: scalars as JSON (escaped, at most ~40 characters), containers by kind."""
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str) and len(value) > 40:
        value = value[:37] + "..."
    text = json.dumps(value, ensure_ascii=True)  # control characters and odd code points become \u escapes
    return text if len(text) <= 60 else text[:57] + "..."


_PLAIN_KEY = re.compile(r"(?!.*\.\.)[A-Za-z0-9_][A-Za-z0-9_/:.+-]{0,63}")  # no "..": a path key is shown quoted


def join(at: str, key) -> str:
    """The path of ``key`` inside ``at``: ``a.b``, ``a[3]``, or ``a["odd key"]`` for a key that is not plain."""
    if isinstance(key, int):
        return f"{at}[{key}]"
    if _PLAIN_KEY.fullmatch(key):
        return f"{at}.{key}" if at else key
    return f"{at}[{show(key)}]"


# --------------------------------------------------------------------------- shapes


class Shape:
    """A JSON value's allowed form. ``what`` completes "expected ..."; :meth:`check` raises :class:`Problem`."""

    what = "a value"

    def check(self, value, at: str, ctx: dict) -> None:
        raise NotImplementedError

    def wrong(self, value, at: str):
        return Problem(at, f"expected {self.what}, got {show(value)}")


def _no_nul(value, at: str) -> None:
    if "\x00" in value:
        raise Problem(at, f"holds a NUL character ({show(value)})")


@dataclass(frozen=True)
class Text(Shape):
    """A string (never holding NUL): any, non-empty, one of ``choices``, matching ``pattern``, or printable."""

    what: str = "a string"
    choices: tuple = ()
    pattern: str | None = None
    nonempty: bool = False
    printable: bool = False

    def check(self, value, at, ctx):
        if not isinstance(value, str):
            raise self.wrong(value, at)
        _no_nul(value, at)
        if ((self.choices and value not in self.choices) or (self.nonempty and not value)
                or (self.pattern and not re.fullmatch(self.pattern, value))
                or (self.printable and not (value.isprintable() and value.strip()))):
            raise self.wrong(value, at)


@dataclass(frozen=True)
class Whole(Shape):
    """An integer (``true`` and ``false`` are not integers; ``3.0`` is not one either) in [low, high]."""

    low: int | None = None
    high: int | None = None
    what: str = ""

    def __post_init__(self):
        if not self.what:
            bounds = ("" if self.low is None and self.high is None else f" >= {self.low}" if self.high is None
                      else f" in [{self.low}, {self.high}]")
            object.__setattr__(self, "what", f"an integer{bounds}")

    def check(self, value, at, ctx):
        if (isinstance(value, bool) or not isinstance(value, int) or (self.low is not None and value < self.low)
                or (self.high is not None and value > self.high)):
            raise self.wrong(value, at)


@dataclass(frozen=True)
class Number(Shape):
    """A finite number (an integer or a float; not a boolean, not a string of digits) in [low, high]."""

    low: float | None = None
    high: float | None = None
    what: str = ""
    slack: float = 0.0

    def __post_init__(self):
        if not self.what:
            bounds = ("" if self.low is None and self.high is None else f" >= {self.low:g}" if self.high is None
                      else f" in [{self.low:g}, {self.high:g}]")
            object.__setattr__(self, "what", f"a number{bounds}")

    def check(self, value, at, ctx):
        if (isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
                or (self.low is not None and value < self.low - self.slack)
                or (self.high is not None and value > self.high + self.slack)):
            raise self.wrong(value, at)


@dataclass(frozen=True)
class Flag(Shape):
    """``true`` or ``false``."""

    what: str = "true or false"

    def check(self, value, at, ctx):
        if not isinstance(value, bool):
            raise self.wrong(value, at)


@dataclass(frozen=True)
class Maybe(Shape):
    """``shape``, or null."""

    shape: Shape

    @property
    def what(self) -> str:
        return f"{self.shape.what} or null"

    def check(self, value, at, ctx):
        if value is not None:
            try:
                self.shape.check(value, at, ctx)
            except Problem as problem:
                if problem.at == at and problem.text == f"expected {self.shape.what}, got {show(value)}":
                    raise self.wrong(value, at) from None  # "expected X or null", where null was allowed
                raise


@dataclass(frozen=True)
class OneOf(Shape):
    """A value one of ``shapes`` accepts."""

    shapes: tuple
    what: str = ""

    def __post_init__(self):
        if not self.what:
            object.__setattr__(self, "what", " or ".join(s.what for s in self.shapes))

    def check(self, value, at, ctx):
        for shape in self.shapes:
            try:
                shape.check(value, at, ctx)
                return
            except Problem:
                continue
        raise self.wrong(value, at)


@dataclass(frozen=True)
class ListOf(Shape):
    """A list of ``item``, ``low`` to ``high`` long, its items distinct when ``unique``."""

    item: Shape
    low: int = 0
    high: int | None = None
    unique: bool = False
    what: str = ""

    def __post_init__(self):
        if not self.what:
            size = (f"exactly {self.low} " if self.low == self.high else f"at least {self.low} " if self.low else "")
            object.__setattr__(self, "what", f"a list of {size}{'distinct ' if self.unique else ''}items "
                                             f"({self.item.what} each)")

    def check(self, value, at, ctx):
        if not isinstance(value, list):
            raise self.wrong(value, at)
        if len(value) < self.low or (self.high is not None and len(value) > self.high):
            raise Problem(at, f"expected {self.what}, got {len(value)} items")
        for i, item in enumerate(value):
            self.item.check(item, join(at, i), ctx)
        if self.unique:
            seen = set()
            for i, item in enumerate(value):
                if item in seen:
                    raise Problem(join(at, i), f"{show(item)} appears twice")
                seen.add(item)


#: What :class:`MapOf` may require of its keys against the context: every class (per-class tables) or some.
ALL_CLASSES, SOME_CLASSES = "all classes", "some classes"


@dataclass(frozen=True)
class MapOf(Shape):
    """An object of any keys (``key`` checks each; ``over`` ties them to the run's classes) mapping to ``value``."""

    value: Shape
    key: Shape = Text()
    over: str | None = None
    what: str = "an object"

    def check(self, value, at, ctx):
        if not isinstance(value, dict):
            raise self.wrong(value, at)
        for key, item in value.items():
            self.key.check(key, join(at, key), ctx)
            self.value.check(item, join(at, key), ctx)
        if self.over:
            classes = ctx["classes"]
            unknown = [k for k in value if k not in classes]
            if unknown:
                raise Problem(join(at, unknown[0]), f"is not a class of the run ({', '.join(map(show, classes))})")
            if self.over == ALL_CLASSES and len(value) != len(classes):
                missing = [c for c in classes if c not in value]
                raise Problem(at, f"has no entry for class {show(missing[0])} (the run has {len(classes)} classes)")
            if self.over == ALL_CLASSES and list(value) != list(classes):  # written in class order: a swap shows
                raise Problem(at, f"lists the classes in another order ({', '.join(map(show, value))}) than the "
                                  f"run ({', '.join(map(show, classes))})")


@dataclass(frozen=True)
class Field:
    """One key of an :class:`Obj`: its shape, and whether it must be there."""

    shape: Shape
    required: bool = True


def need(shape: Shape) -> Field:
    return Field(shape, True)


def may(shape: Shape) -> Field:
    return Field(shape, False)


#: A check across the fields of an object: ``check(value, at, ctx)`` raising :class:`Problem`.
Check = Callable[[dict, str, dict], None]


@dataclass(frozen=True)
class Obj(Shape):
    """An object with exactly these keys (``rest``: the shape of any other key's value; None: none allowed).

    ``checks`` run after every field passed: what one field says about another.
    """

    fields: dict
    rest: Shape | None = None
    checks: tuple = ()
    what: str = "an object"

    def check(self, value, at, ctx):
        if not isinstance(value, dict):
            raise self.wrong(value, at)
        for key, spec in self.fields.items():
            if key in value:
                spec.shape.check(value[key], join(at, key), ctx)
            elif spec.required:
                raise Problem(join(at, key), "missing (a required field)")
        for key in value:
            if key not in self.fields:
                if self.rest is None:
                    raise Problem(join(at, key), "unexpected field (the schema has no such field)")
                self.rest.check(value[key], join(at, key), ctx)
        for cross in self.checks:
            cross(value, at, ctx)

    def with_fields(self, **changes) -> Obj:
        """This object with fields replaced (a :class:`Field`), added, or removed (None)."""
        fields = {**self.fields, **changes}
        return dataclasses.replace(self, fields={k: v for k, v in fields.items() if v is not None})


@dataclass(frozen=True)
class OptionsOf(Shape):
    """The fields of option dataclass ``cls`` as a record keeps them: each value passes its declared constraint.

    Keys written under an old name (:data:`~xrayfeat.options.settings.RENAMED`) are read under the new one.
    A field with no default is required, as are those named in ``required`` (what every layout recorded).
    ``lenient``: null is allowed for every field (records written before a default changed from None).
    """

    cls: type
    required: tuple = ()
    lenient: bool = False
    what: str = "an object"

    def check(self, value, at, ctx):
        from xrayfeat.options.settings import current_keys

        if not isinstance(value, dict):
            raise self.wrong(value, at)
        value = current_keys(self.cls.__name__, value)
        declared = {f.name: f for f in dataclasses.fields(self.cls)}
        for key in value:
            if key not in declared:
                raise Problem(join(at, key), f"unexpected field ({self.cls.__name__} has no such option)")
        for name, f in declared.items():
            if name not in value:
                if name in self.required or (f.default is dataclasses.MISSING
                                             and f.default_factory is dataclasses.MISSING):
                    raise Problem(join(at, name), "missing (a required field)")
                continue
            item = value[name]
            check, none = f.metadata["check"], f.metadata.get("none", False) or self.lenient
            if item is None and none:
                continue
            if not _accepts(check, tuple(item) if isinstance(item, list) and isinstance(check, Subset) else item):
                raise Problem(join(at, name), f"expected {check.describe()}{' or null' if none else ''}, got {show(item)}")


@dataclass(frozen=True)
class _FeaturesOf(OptionsOf):
    """A record's FeatureOptions; those of imported features (weights ``imported``) name them instead of a backbone."""

    def check(self, value, at, ctx):
        from xrayfeat.options.settings import BACKBONES, IMPORTED_WEIGHTS, check_import_name

        if isinstance(value, dict) and value.get("weights") == IMPORTED_WEIGHTS:
            try:
                check_import_name(value.get("backbone"))
            except ValueError as exc:
                raise Problem(join(at, "backbone"), str(exc)) from None
            value = {**value, "backbone": BACKBONES[0]}  # every other field as declared
        super().check(value, at, ctx)


def _accepts(check, value) -> bool:
    """Whether an option's declared constraint takes a JSON value (never a container, but a Subset's tuple)."""
    if isinstance(value, (dict, list)):
        return False
    try:
        return bool(check.accepts(value))
    except Exception:  # a parser meeting a value of a type it never expected: not a value of the option
        return False


# --------------------------------------------------------------------------- validating and parsing


def check(value, shape: Shape, ctx: dict | None = None) -> None:
    """Raise :class:`Problem` when ``value`` is not of ``shape`` (``ctx``: what cross-checks compare with)."""
    shape.check(value, "", ctx or {})


def _duplicate_keys_refused(pairs):
    found = {}
    for key, value in pairs:
        if key in found:
            raise ValueError(f"the key {show(key)} appears twice in one object")
        found[key] = value
    return found


def _no_constant(name):
    raise ValueError(f"{name} is not a JSON number")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"the number {text[:24]} is beyond the range of a float")
    return value


def _integer(text: str) -> int:
    if len(text) > 20 or abs(int(text)) > MAX_INTEGER:
        raise ValueError(f"the integer {text[:24]}{'...' if len(text) > 24 else ''} is beyond 64 bits")
    return int(text)


def _depth(value, limit: int = MAX_DEPTH) -> int:
    """How deeply ``value`` nests (iteratively: a hostile file must not exhaust the stack here)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, (dict, list)):
            deepest = max(deepest, level)
            if deepest > limit:
                return deepest
            stack.extend((child, level + 1) for child in (item.values() if isinstance(item, dict) else item))
    return deepest


def loads(data: bytes | str):
    """Strict JSON: UTF-8, no duplicate keys, no NaN/Infinity, numbers within 64 bits and float range.

    Raises ``ValueError`` with the reason (``RecursionError`` from a deeply nested file becomes one too).
    """
    text = data.decode("utf-8") if isinstance(data, bytes) else data
    try:
        value = json.loads(text, object_pairs_hook=_duplicate_keys_refused, parse_constant=_no_constant,
                           parse_float=_finite, parse_int=_integer)
    except RecursionError:
        raise ValueError(f"nested more than {MAX_DEPTH} levels deep") from None
    if _depth(value) > MAX_DEPTH:
        raise ValueError(f"nested more than {MAX_DEPTH} levels deep")
    return value


def parse_json(data: bytes, file, *, fix: str, what: str = "run record"):
    """The value of a record file's bytes (strict JSON, :func:`loads`); :class:`Damaged` naming ``file`` and ``fix``."""
    if len(data) > MAX_BYTES:
        raise Damaged.of(file, f"{len(data)} bytes, more than any record holds ({MAX_BYTES})", fix, what)
    try:
        return loads(data)
    except UnicodeDecodeError as exc:
        raise Damaged.of(file, f"not UTF-8 text ({exc.reason} at byte {exc.start})", fix, what) from None
    except ValueError as exc:
        raise Damaged.of(file, f"not valid JSON ({_one_line(exc)})", fix, what) from None


def parse(data: bytes, file, shape: Shape, *, fix: str, ctx: dict | None = None, what: str = "run record"):
    """The checked value of a record file's bytes: :func:`parse_json`, then ``shape`` (:class:`Damaged` if not)."""
    value = parse_json(data, file, fix=fix, what=what)
    try:
        check(value, shape, ctx)
    except Problem as problem:
        raise Damaged.of(file, str(problem), fix, what) from None
    return value


def read_json(path, *, fix: str, what: str = "run record"):
    """:func:`parse_json` of the file at ``path``, refusing first what is not a regular file of a sane size."""
    import os
    import stat

    try:
        info = os.stat(path)
        if not stat.S_ISREG(info.st_mode):  # a folder or a pipe named config.json: never read (a pipe would block)
            raise Damaged.of(path, "not a regular file", fix, what)
        if info.st_size > MAX_BYTES:
            raise Damaged.of(path, f"{info.st_size} bytes, more than any record holds ({MAX_BYTES})", fix, what)
        data = Path(path).read_bytes()
    except OSError as exc:  # a dangling link, no permission
        raise Damaged.of(path, f"cannot be read ({exc.strerror or type(exc).__name__})", fix, what) from None
    return parse_json(data, path, fix=fix, what=what)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= 120 else text[:117] + "..."


# --------------------------------------------------------------------------- the shapes records are made of

TEXT = Text()
NONEMPTY = Text("a non-empty string", nonempty=True)
#: A class name: printable, not blank (control characters are refused at discovery too).
CLASS_NAME = Text("a class name (printable text)", printable=True)
#: A file or folder path as recorded (absolute or relative to where the command ran).
PATH_TEXT = Text("a path", nonempty=True)
SHA256 = Text("a sha256 (64 hex digits)", pattern=r"[0-9a-f]{64}")
COUNT = Whole(0)
PROBABILITY = Number(0.0, 1.0, slack=_SLACK)
SCALAR = OneOf((TEXT, Number(), Flag(), Maybe(TEXT)), what="a string, number, true, false or null")
INTERVAL = ListOf(Number(), 2, 2, what="an interval [low, high]")
#: What :func:`xrayfeat.runs.external.evaluate` accepts as an evaluation's name (a folder name under ``external/``).
EVALUATION_NAME = Text("a plain folder name", pattern=r"[A-Za-z0-9][A-Za-z0-9._-]*")


@dataclass(frozen=True)
class RelativePath(Shape):
    """A file inside the folder a record describes: relative, no ``..``, no backslash, printable."""

    what: str = "a relative path inside the run folder"

    def check(self, value, at, ctx):
        if not (isinstance(value, str) and value and value.isprintable() and "\\" not in value
                and not PurePosixPath(value).is_absolute() and ".." not in PurePosixPath(value).parts):
            raise self.wrong(value, at)


def _within_classes(value: dict, at: str, ctx: dict, key: str) -> None:
    """``value[key]``, when given, is one of the run's classes."""
    name = value.get(key)
    if name is not None and name not in ctx["classes"]:
        raise Problem(join(at, key), f"{show(name)} is not a class of the run ({', '.join(map(show, ctx['classes']))})")


# ..................................................................... metrics.json (and external/<name>/metrics.json)


def _matrix_fits(value: dict, at: str, ctx: dict) -> None:
    """The confusion matrix is K x K for the run's K classes."""
    k = len(ctx["classes"])
    matrix = value.get("confusion")
    if matrix is None:
        return
    if len(matrix) != k or any(len(row) != k for row in matrix):
        raise Problem(join(at, "confusion"), f"expected a {k} x {k} matrix (one row and column per class), got "
                                             f"{len(matrix)} rows of {sorted({len(r) for r in matrix})} columns")


def _sources_agree(value: dict, at: str, ctx: dict) -> None:
    """Every baseline broken down by source names the sources the head's breakdown names."""
    sources = set((value["head"].get("by_source") or {}))
    for name, model in (value.get("baselines") or {}).items():
        if model.get("by_source") and set(model["by_source"]) != sources:
            raise Problem(join(join(join(at, "baselines"), name), "by_source"),
                          "names other sources than head.by_source (both scored the same test images)")


def _point() -> Obj:
    rates = {name: need(Maybe(PROBABILITY)) for name in ("sensitivity", "specificity", "ppv", "npv", "f1")}
    counts = {name: need(COUNT) for name in ("tp", "fp", "tn", "fn")}
    return Obj({**rates, **counts, "ci": need(MapOf(Maybe(INTERVAL)))})


@functools.cache
def model_metrics() -> Obj:
    """One model's test figures (:func:`xrayfeat.analysis.metrics.score`), tied to the run's classes."""
    point = _point()
    return Obj({
        "n": need(COUNT),
        "accuracy": need(PROBABILITY),
        "loss": need(Maybe(Number(0.0))),
        "balanced_accuracy": need(Maybe(PROBABILITY)),
        "per_class": need(MapOf(Obj({"precision": need(PROBABILITY), "recall": need(PROBABILITY),
                                     "f1": need(PROBABILITY), "support": need(COUNT)}), over=ALL_CLASSES)),
        "roc_auc": need(Maybe(PROBABILITY)),
        "roc_auc_per_class": need(MapOf(Maybe(PROBABILITY), over=ALL_CLASSES)),
        "roc_auc_present": may(Maybe(PROBABILITY)),
        "confusion": need(ListOf(ListOf(COUNT))),
        "n_patients": may(COUNT),
        "ci": need(Obj({"accuracy": need(Maybe(INTERVAL)), "balanced_accuracy": need(Maybe(INTERVAL)),
                        "roc_auc": need(Maybe(INTERVAL))})),
        "ci_method": need(TEXT),
        "ci_level": need(Number(0.0, 1.0)),
        "by_source": may(MapOf(Obj({"n": need(COUNT), "accuracy": need(PROBABILITY),
                                    "balanced_accuracy": need(Maybe(PROBABILITY)),
                                    "ci_accuracy": need(Maybe(INTERVAL))}))),
        "by_group": may(_by_group(_single_label_group())),
        "calibration": may(Obj({
            "brier": need(Number(0.0)), "ece": need(Number(0.0)), "n_bins": need(Whole(1)),
            "curve": need(ListOf(Obj({"lo": need(PROBABILITY), "hi": need(PROBABILITY), "n": need(COUNT),
                                      "confidence": need(Maybe(PROBABILITY)), "accuracy": need(Maybe(PROBABILITY))}))),
        })),
        "operating_points": may(Maybe(Obj({
            "rule": need(TEXT), "chosen_on": need(TEXT),
            "classes": need(MapOf(Obj({"threshold": need(Maybe(Number())), "note": need(Maybe(TEXT)),
                                       "argmax": need(Maybe(point)), "at_threshold": need(Maybe(point))}),
                                  over=SOME_CLASSES)),
        }))),
    }, checks=(_matrix_fits,))


def _by_group(value: Shape) -> Shape:
    """``by_group``: {group: {unknown, values: {value: figures}}} (:func:`xrayfeat.analysis.subgroups.by_group`)."""
    return MapOf(Obj({"unknown": need(COUNT), "values": need(MapOf(value))}))


@functools.cache
def _single_label_group() -> Obj:
    return Obj({"n": need(COUNT), "n_patients": may(COUNT), "accuracy": need(PROBABILITY),
                "balanced_accuracy": need(Maybe(PROBABILITY)), "roc_auc": need(Maybe(PROBABILITY)),
                "ci": need(Obj({"accuracy": need(Maybe(INTERVAL)), "balanced_accuracy": need(Maybe(INTERVAL)),
                                "roc_auc": need(Maybe(INTERVAL))}))})


@functools.cache
def multilabel_metrics() -> Obj:
    """One model's multi-label test figures (:func:`xrayfeat.analysis.multilabel.score_multilabel`), tied to the findings."""
    point = _point()
    auc = {"roc_auc": need(Maybe(PROBABILITY)), "roc_auc_ci": need(Maybe(INTERVAL))}
    finding = Obj({"n": need(COUNT), "positives": need(COUNT), "prevalence": need(Maybe(PROBABILITY)), **auc,
                   "average_precision": need(Maybe(PROBABILITY)), "average_precision_ci": need(Maybe(INTERVAL))})
    calibration = Obj({
        "brier": need(Number(0.0)), "ece": need(Number(0.0)), "n_bins": need(Whole(1)),
        "curve": need(ListOf(Obj({"lo": need(PROBABILITY), "hi": need(PROBABILITY), "n": need(COUNT),
                                  "confidence": need(Maybe(PROBABILITY)), "accuracy": need(Maybe(PROBABILITY))}))),
    })
    group_value = Obj({"n": need(COUNT), "n_patients": may(COUNT), "macro_roc_auc": need(Maybe(PROBABILITY)),
                       "ci": need(Obj({"macro_roc_auc": need(Maybe(INTERVAL))})),
                       "per_finding": need(MapOf(Obj(auc), over=ALL_CLASSES))})
    return Obj({
        "task": need(Text('"multilabel"', choices=("multilabel",))),
        "n": need(COUNT), "n_patients": may(COUNT),
        "findings": need(ListOf(CLASS_NAME, 1, unique=True)),
        "per_finding": need(MapOf(finding, over=ALL_CLASSES)),
        "macro_roc_auc": need(Maybe(PROBABILITY)), "micro_roc_auc": need(Maybe(PROBABILITY)),
        "macro_average_precision": need(Maybe(PROBABILITY)), "loss": need(Maybe(Number(0.0))),
        "ci": need(Obj({"macro_roc_auc": need(Maybe(INTERVAL)), "micro_roc_auc": need(Maybe(INTERVAL)),
                        "macro_average_precision": need(Maybe(INTERVAL))})),
        "ci_method": need(TEXT), "ci_level": need(Number(0.0, 1.0)),
        "by_source": may(MapOf(Obj({"n": need(COUNT), "macro_roc_auc": need(Maybe(PROBABILITY)),
                                    "ci_macro_roc_auc": need(Maybe(INTERVAL))}))),
        "by_group": may(_by_group(group_value)),
        "calibration": may(MapOf(Maybe(calibration), over=ALL_CLASSES)),
        "operating_points": may(Maybe(Obj({
            "rule": need(TEXT), "chosen_on": need(TEXT),
            "classes": need(MapOf(Obj({"threshold": need(Maybe(Number())), "note": need(Maybe(TEXT)),
                                       "argmax": need(Maybe(point)), "at_threshold": need(Maybe(point))}),
                                  over=SOME_CLASSES)),
        }))),
    })


@dataclass(frozen=True)
class _ModelFigures(Shape):
    """A model's figures: multi-label ones (``task: "multilabel"``) or single-label ones."""

    what: str = "a model's figures (an object)"

    def check(self, value, at, ctx):
        if isinstance(value, dict) and value.get("task") == "multilabel":
            if not ctx.get("multilabel", True):
                raise Problem(join(at, "task"), "is multilabel, but the run has one label per image")
            multilabel_metrics().check(value, at, ctx)
        else:
            if ctx.get("multilabel", False):
                raise Problem(at, "holds single-label figures, but the run is multi-label")
            model_metrics().check(value, at, ctx)


def _folds_agree(value: dict, at: str, ctx: dict) -> None:
    """K folds per seed, each named once, and every model's figures one value per fold, of the run's kind."""
    k, seeds, folds = value["k"], value["seeds"], value["folds"]
    expected = [(r + 1, seed, f + 1) for r, seed in enumerate(seeds) for f in range(k)]
    if [(f["repeat"], f["seed"], f["fold"]) for f in folds] != expected:
        raise Problem(join(at, "folds"), f"expected {k} folds for each of the {len(seeds)} seeds, in order "
                                         f"(repeat, seed, fold)")
    multilabel = ctx.get("multilabel")
    for name, figures in value["models"].items():
        if multilabel is not None and ("macro_roc_auc" in figures) != multilabel:
            raise Problem(join(join(at, "models"), name), "holds the figures of the other kind of task than the run's")
        for figure, entry in figures.items():
            if entry is not None and len(entry["values"]) != len(folds):
                raise Problem(join(join(join(join(at, "models"), name), figure), "values"),
                              f"expected one value per fold ({len(folds)}), got {len(entry['values'])}")


@functools.cache
def cv_metrics() -> Obj:
    """``metrics.json``'s ``cv`` (``fit-head --cv``, :func:`xrayfeat.runs.crossval.cv_summary`): the folds, and each
    model's figures per fold with their mean ± SD."""
    from xrayfeat.analysis.scoring import FOLD_FIGURES, MULTILABEL_FOLD_FIGURES
    from xrayfeat.options.settings import BASELINES

    spread = Maybe(Obj({"mean": need(PROBABILITY), "sd": need(Maybe(Number(0.0))), "min": need(PROBABILITY),
                        "max": need(PROBABILITY), "values": need(ListOf(Maybe(PROBABILITY), 1))}))
    figures = OneOf((Obj({key: need(spread) for key in FOLD_FIGURES}),
                     Obj({key: need(spread) for key in MULTILABEL_FOLD_FIGURES})),
                    what="a model's figures across folds")
    fold = Obj({"repeat": need(Whole(1)), "seed": need(Whole(0)), "fold": need(Whole(1)), "n_fit": need(COUNT),
                "n_val": need(COUNT), "n_out": need(Whole(1)), "n_patients_out": need(Whole(1))})
    models = ("head", *BASELINES)
    return Obj({
        "k": need(Whole(2)), "seeds": need(ListOf(Whole(0), 1)),
        "grouped_by": need(Text("patient or image", choices=("patient", "image"))), "validation": need(TEXT),
        "folds": need(ListOf(fold, 2)),
        "models": need(MapOf(figures, key=Text(f"a model ({', '.join(models)})", choices=models))),
    }, checks=(_folds_agree,))


@functools.cache
def metrics_schema() -> Obj:
    """``metrics.json`` of a run or of an evaluation: the head's and each baseline's figures on their test data."""
    from xrayfeat.options.settings import BASELINES, DECISIONS

    spread = Obj({"mean": need(Number()), "sd": need(Maybe(Number(0.0))), "min": need(Number()),
                  "max": need(Number()), "values": need(ListOf(Number()))})
    return Obj({
        "head": need(_ModelFigures()),
        "baselines": may(MapOf(_ModelFigures(), key=Text(f"a baseline ({', '.join(BASELINES)})", choices=BASELINES))),
        "positive": may(Maybe(CLASS_NAME)),
        "threshold_rule": may(TEXT),
        "repeats": may(Obj({"seeds": need(ListOf(Whole(0))), "head": need(MapOf(spread))})),
        "cv": may(cv_metrics()),
        "decision": may(Text(f"a decision rule ({', '.join(DECISIONS)})", choices=DECISIONS)),
        "decision_note": may(TEXT),
        "calibrated": may(calibrated_metrics()),
    }, checks=(lambda v, at, ctx: _within_classes(v, at, ctx, "positive"), _sources_agree))


def _isotonic_map(value, at, ctx) -> None:
    """An isotonic map's breakpoints: as many x as y, x non-decreasing, y non-decreasing."""
    x, y = value["x"], value["y"]
    if len(x) != len(y):
        raise Problem(at, f"has {len(x)} x and {len(y)} y breakpoints (expected as many)")
    if any(b < a for a, b in zip(x, x[1:])) or any(b < a for a, b in zip(y, y[1:])):
        raise Problem(at, "is not non-decreasing (an isotonic map never decreases)")


@functools.cache
def calibrated_metrics() -> Obj:
    """``metrics.json``'s ``calibrated`` (``fit-head --calibrate``, :func:`xrayfeat.runs.fit._calibrate`): each
    model's calibrator and its Brier score and ECE before and after, on validation and on test."""
    from xrayfeat.options.settings import BASELINES, CALIBRATIONS

    figures = Obj({"brier": need(Maybe(Number(0.0))), "ece": need(Maybe(Number(0.0)))})
    change = Obj({"before": need(figures), "after": need(figures)})
    curve = Obj({"x": need(ListOf(Number(), 1)), "y": need(ListOf(PROBABILITY, 1))}, checks=(_isotonic_map,))
    model = Obj({"temperature": may(Number(0.0)),
                 "isotonic": may(MapOf(Maybe(curve), over=ALL_CLASSES)),
                 "validation": need(change), "test": need(change)},
                checks=(_one_calibrator,))
    models = ("head", *BASELINES)
    return Obj({"method": need(Text(f"a calibration ({', '.join(CALIBRATIONS[1:])})", choices=CALIBRATIONS[1:])),
                "fitted_on": need(Text('"validation"', choices=("validation",))), "n": need(Whole(1)),
                "models": need(MapOf(model, key=Text(f"a model ({', '.join(models)})", choices=models)))},
               checks=(_calibrators_agree,))


def _one_calibrator(value, at, ctx) -> None:
    if ("temperature" in value) == ("isotonic" in value):
        raise Problem(at, "expected one calibrator (temperature or isotonic)")
    if "temperature" in value and not value["temperature"] > 0:
        raise Problem(join(at, "temperature"), f"expected a number > 0, got {show(value['temperature'])}")


def _calibrators_agree(value, at, ctx) -> None:
    """Every model's calibrator is of the method the record names, and the head has one."""
    if "head" not in value["models"]:
        raise Problem(join(at, "models"), "has no calibrator of the head")
    for name, model in value["models"].items():
        if value["method"] not in model:
            raise Problem(join(join(at, "models"), name), f"holds no {value['method']} calibrator (the method)")


# ..................................................................... config.json


#: Artifact names a run records, besides ``baseline/<name>`` and ``external/<name>/<part>``, and their files' suffix.
RUN_ARTIFACTS = {"head": ".keras", "head_arrays": ".npz", "metrics": ".json", "history": ".csv", "predictions": ".csv",
                 "predictions_val": ".csv", "predictions_oof": ".csv", "splits": ".csv", "curves": ".png", "confusion": ".png", "roc": ".png",
                 "calibration": ".png", "gradcam": ".png"}
#: The parts of an evaluation (``external/<name>/<part>``), as :func:`xrayfeat.runs.external.evaluate` records them.
EVALUATION_ARTIFACTS = {"metrics": ".json", "predictions": ".csv", "confusion": ".png", "roc": ".png",
                        "calibration": ".png"}
#: The suffix of a baseline's file (``baseline/<name>``).
BASELINE_SUFFIX = ".joblib"
#: The artifacts of the first layout that had no sha256 (the only ones whose sha256 may be null).
UNCHECKSUMMED = ("metrics", "history", "predictions")


@dataclass(frozen=True)
class _ArtifactName(Shape):
    """A known artifact name, ``baseline/<a baseline>`` or ``external/<evaluation>/<part>``."""

    what: str = "an artifact name"

    def check(self, value, at, ctx):
        from xrayfeat.options.settings import BASELINES

        kind, _, rest = value.partition("/")
        if value in RUN_ARTIFACTS or (kind == "baseline" and rest in BASELINES):
            return
        name, _, part = rest.rpartition("/")
        if kind == "external" and part in EVALUATION_ARTIFACTS and re.fullmatch(EVALUATION_NAME.pattern, name):
            return
        raise Problem(at, "is not an artifact fit-head or evaluate records")


def _artifact(nullable: bool) -> Obj:
    return Obj({"file": need(RelativePath()), "sha256": need(Maybe(SHA256) if nullable else SHA256)})


@dataclass(frozen=True)
class _Artifacts(Shape):
    """Artifact name → {file, sha256}; the sha256 may be null only for :data:`UNCHECKSUMMED` names."""

    what: str = "an object"

    def check(self, value, at, ctx):
        if not isinstance(value, dict):
            raise self.wrong(value, at)
        owner = {}
        for name, entry in value.items():
            _ArtifactName().check(name, join(at, name), ctx)
            _artifact(name in UNCHECKSUMMED).check(entry, join(at, name), ctx)
            file, where = entry["file"], join(join(at, name), "file")
            suffix = _suffix(name)
            if not file.endswith(suffix):  # a reader opens it as what its name says: a head never reads a table
                raise Problem(where, f"expected a {suffix} file, got {show(file)}")
            if file in owner:
                raise Problem(where, f"{show(file)} is the file of {join(at, owner[file])} too")
            owner[file] = name


def _suffix(name: str) -> str:
    """The suffix of the file of artifact ``name`` (a name :class:`_ArtifactName` accepted)."""
    if name.startswith("baseline/"):
        return BASELINE_SUFFIX
    if name.startswith("external/"):
        return EVALUATION_ARTIFACTS[name.rpartition("/")[2]]
    return RUN_ARTIFACTS[name]


def _classes_agree(record: dict, at: str, ctx: dict) -> None:
    """The task, the head's settings, the positive class and every evaluation's classes agree with ``classes``."""
    from xrayfeat.runs.folder import task_name

    classes = record["classes"]
    multilabel = record.get("multilabel", False)
    ctx = {**ctx, "classes": classes}
    if len(classes) < 2 and not multilabel:
        raise Problem(join(at, "classes"), f"expected a list of at least 2 distinct class names, got {len(classes)}")
    if record["task"] != task_name(classes, multilabel):
        raise Problem(join(at, "task"), f"is {show(record['task'])}, but the record has {len(classes)} "
                                        f"{'findings' if multilabel else 'classes'} "
                                        f"(a task {show(task_name(classes, multilabel))})")
    n_classes = record["training"].get("n_classes")
    if n_classes is not None and n_classes != len(classes):
        raise Problem(join(join(at, "training"), "n_classes"), f"the head was trained for {n_classes} classes, but "
                                                               f"the record has {len(classes)}")
    _within_classes(record["head"], join(at, "head"), ctx, "positive")
    for name, entry in record.get("external", {}).items():
        unknown = [c for c in entry["classes"] if c not in classes]
        if unknown:
            raise Problem(join(join(join(at, "external"), name), "classes"),
                          f"{show(unknown[0])} is not a class of the run ({', '.join(map(show, classes))})")


def _artifacts_agree(record: dict, at: str, ctx: dict) -> None:
    """Each evaluation has its metrics, and no artifact belongs to an evaluation the record does not hold."""
    artifacts = record.get("artifacts", {})
    external = record.get("external", {})
    for name in artifacts:
        if name.startswith("external/"):
            evaluation = name[len("external/"):].rpartition("/")[0]
            if evaluation not in external:
                raise Problem(join(join(at, "artifacts"), name), f"names an evaluation {show(evaluation)} that "
                                                                 f"external does not hold")
    for evaluation in external:
        if f"external/{evaluation}/metrics" not in artifacts:
            raise Problem(join(join(at, "external"), evaluation), "has no metrics artifact "
                                                                  f"(external/{evaluation}/metrics)")


def _fingerprint_agrees(record: dict, at: str, ctx: dict) -> None:
    """The features' backbone is the store's; features imported under a name (weights ``imported``) are an imported store's."""
    from xrayfeat.options.settings import IMPORTED_WEIGHTS
    from xrayfeat.store.fingerprint import is_imported

    imported = is_imported(record["store"]["fingerprint"])
    if imported or record["features"].get("weights") == IMPORTED_WEIGHTS:
        if not imported or record["features"].get("weights") != IMPORTED_WEIGHTS:
            raise Problem(join(join(at, "features"), "weights"), f"is {show(record['features'].get('weights'))}, but the "
                                                                  f"store's fingerprint says {'' if imported else 'not '}"
                                                                  f"imported")
        return
    backbone = record["store"]["fingerprint"]["backbone"]
    if record["features"]["backbone"] != backbone:
        raise Problem(join(join(at, "features"), "backbone"), f"is {show(record['features']['backbone'])}, but the "
                                                               f"store's fingerprint says {show(backbone)}")


#: The options every layout of the record holds (the first layout's, under today's names): readers may rely on them.
FIRST_FIELDS = {
    "features": ("backbone", "weights", "image_size", "layer", "precision", "store_dtype", "seed"),
    "head": ("epochs", "head_batch_size", "steps_per_epoch", "validation_steps", "learning_rate", "units", "dropout",
             "l2", "train_tail", "val_fraction", "baselines", "seed", "n_bootstrap", "n_jobs"),
    "run": ("device", "batch_size", "cache_dir"),
}


@functools.cache
def _record_fields() -> dict:
    """The fields of a schema-2 ``config.json`` (:class:`~xrayfeat.runs.record.RunRecord`, but ``path``)."""
    from xrayfeat.backbones import PRECISIONS
    from xrayfeat.options.settings import BACKBONES, BASELINES, KEEPS, STORE_DTYPES, FeatureOptions, HeadOptions, RunOptions
    from xrayfeat.store.fingerprint import FINGERPRINT_FIELDS, IMPORTED, IMPORTED_FIELDS, OPTIONAL_FIELDS

    fingerprint_shapes = {"backbone": Text(f"a backbone ({', '.join(BACKBONES)})", choices=BACKBONES),
                          "image_size": Whole(32, 2048), "store_dtype": Text(choices=STORE_DTYPES, what="a store dtype"),
                          "precision": Text(choices=PRECISIONS, what=f"a precision ({', '.join(PRECISIONS)})"),
                          "keep": Text(choices=KEEPS, what="what the store keeps"), "layer": NONEMPTY}
    used = ("backbone", "weights", "image_size", "layer", "precision", "preprocess")  # what readers index directly
    computed = Obj({name: Field(fingerprint_shapes.get(name, TEXT), name in used)
                    for name in (*FINGERPRINT_FIELDS, *OPTIONAL_FIELDS)}, what="a computed store's fingerprint")
    imported = Obj({**{name: need(TEXT) for name in IMPORTED_FIELDS}, "kind": need(Text(choices=(IMPORTED,))),
                    "file_sha256": need(SHA256), "store_dtype": need(fingerprint_shapes["store_dtype"]),
                    "keep": may(fingerprint_shapes["keep"])}, what="an imported store's fingerprint")
    fingerprint = OneOf((computed, imported))
    baseline = Text(f"a baseline ({', '.join(BASELINES)})", choices=BASELINES)
    params = Obj({"total": need(COUNT), "trainable": need(COUNT), "non_trainable": need(COUNT)})
    summary = Obj({
        "name": may(baseline), "cv_accuracy": may(Maybe(PROBABILITY)), "cv_accuracy_std": may(Maybe(Number(0.0))),
        "cv_log_loss": may(Maybe(Number(0.0))), "selection_metric": may(Maybe(TEXT)), "n_splits": may(Maybe(COUNT)),
        "n_candidates": may(Maybe(COUNT)), "n_search_samples": may(Maybe(COUNT)), "best_params": may(MapOf(SCALAR)),
        "class_weight": may(Maybe(TEXT)), "fit_seconds": may(Maybe(Number(0.0))),
        "subsample": may(Obj({"rows": need(COUNT), "of": need(COUNT)})),
    })
    finding_summary = summary.with_fields(  # one finding's model of a multi-label baseline (one-vs-rest)
        finding=need(COUNT), rows=need(COUNT), prevalence=need(PROBABILITY), constant=need(Flag()),
        reason=may(TEXT))
    summary = summary.with_fields(multilabel=may(Flag()), findings=may(ListOf(finding_summary)))
    warning = Obj({"kind": need(TEXT), "message": need(TEXT)}, what="a {kind, message} object")
    evaluation = Obj({
        "data": need(PATH_TEXT), "created": need(TEXT), "n": need(COUNT), "excluded": need(COUNT),
        "classes": need(ListOf(CLASS_NAME, 1, unique=True)), "warnings": need(ListOf(OneOf((warning, TEXT)))),
        "skipped_files": may(ListOf(TEXT)),
    })
    return {
        "schema": need(Whole(2, 2)),
        "xrayfeat": need(NONEMPTY), "created": need(TEXT), "data": need(PATH_TEXT), "task": need(NONEMPTY),
        "classes": need(ListOf(CLASS_NAME, 1, unique=True, what="a list of distinct class names")),
        "multilabel": may(Flag()),
        "counts": need(Obj({"train": need(COUNT), "val": need(COUNT), "test": need(COUNT), "skipped": may(COUNT)})),
        "validation": need(TEXT),
        "features": need(_FeaturesOf(FeatureOptions, FIRST_FIELDS["features"])),
        "head": need(OptionsOf(HeadOptions, FIRST_FIELDS["head"], lenient=True)),
        "run": need(OptionsOf(RunOptions, FIRST_FIELDS["run"], lenient=True)),
        "store": need(Obj({"path": need(PATH_TEXT), "fingerprint": need(fingerprint), "fingerprint_id": need(NONEMPTY)})),
        "weights": need(Obj({"kind": need(NONEMPTY), "identity": need(NONEMPTY), "path": need(Maybe(PATH_TEXT)),
                             "random": need(Flag())})),
        "params": need(params.with_fields(tail=may(Maybe(params)))),
        "training": need(Obj({"n_classes": may(Whole(1)), "best_epoch": may(Maybe(Whole(1))),
                              "restore_best": may(Maybe(TEXT)), "backend": may(Maybe(TEXT)),
                              "device": may(Maybe(TEXT))}, rest=SCALAR)),
        "timings": need(MapOf(Maybe(Number()))),
        "baselines": need(MapOf(summary, key=baseline)),
        "versions": need(MapOf(Maybe(TEXT))),
        "artifacts": need(_Artifacts()),
        "warnings": need(ListOf(warning, what="a list of {kind, message} objects")),
        "external": need(MapOf(evaluation, key=EVALUATION_NAME)),
        "skipped_files": need(ListOf(TEXT, what="a list of strings")),
        "replay_of": may(Obj({"path": need(PATH_TEXT), "name": need(TEXT), "created": need(TEXT),
                              "config_sha256": need(SHA256), "xrayfeat": need(NONEMPTY),
                              "differences": need(ListOf(TEXT, what="a list of strings"))},
                             what="the run a replay repeats")),
    }


#: The checks across the fields of a ``config.json``, every layout.
_RECORD_CHECKS = (_classes_agree, _artifacts_agree, _fingerprint_agrees)


@functools.cache
def config_schema(version: int) -> Obj:
    """The schema of ``config.json`` at ``version``: 2 (today's), or 1 (the first layout, before ``schema``).

    The first layout had no ``schema``, ``artifacts``, ``external`` nor ``skipped_files``; it kept the
    head's and baselines' sha256 under ``files`` and its warnings as plain strings.
    """
    fields = _record_fields()
    if version == 2:
        return Obj(fields, checks=_RECORD_CHECKS)
    if version == 1:
        files = Obj({"head": may(Maybe(_artifact(False))), "baselines": may(Maybe(MapOf(_artifact(False))))})
        first = Obj(fields).with_fields(schema=may(Whole(1, 1)), artifacts=None, external=may(fields["external"].shape),
                                        skipped_files=may(fields["skipped_files"].shape),
                                        baselines=may(fields["baselines"].shape),
                                        warnings=may(Maybe(ListOf(TEXT, what="a list of strings"))), files=may(Maybe(files)))
        return first
    raise ValueError(f"no config.json schema {version}")


# ..................................................................... export.json


@dataclass(frozen=True)
class _Json(Shape):
    """Any JSON value (already parsed strictly, depth-bounded): parts of the contract copied from checked records."""

    what: str = "a JSON value"

    def check(self, value, at, ctx):
        if value is None or isinstance(value, (str, bool, int, float)):
            return
        if isinstance(value, list):
            for i, item in enumerate(value):
                self.check(item, f"{at}[{i}]", ctx)
            return
        if isinstance(value, dict):
            for key, item in value.items():
                if not isinstance(key, str):
                    raise self.wrong(value, at)
                self.check(item, join(at, key), ctx)
            return
        raise self.wrong(value, at)


JSON = _Json()


def _export_agrees(value: dict, at: str, ctx: dict) -> None:
    """The shapes, the model file and the classes agree with one another."""
    from xrayfeat.runs.export import FORMATS

    size, classes = value["image_size"], value["classes"]
    if value["model"] != FORMATS[value["format"]]:
        raise Problem(join(at, "model"), f"is {show(value['model'])}, but a {value['format']} export is "
                                         f"{show(FORMATS[value['format']])}")
    if value["input_shape"][1:] != [size, size, 3]:
        raise Problem(join(at, "input_shape"), f"expected [null, {size}, {size}, 3] for image_size {size}")
    if len(classes) < 2 and not value.get("multilabel", False):
        raise Problem(join(at, "classes"), f"expected at least 2 distinct class names, got {len(classes)}")
    if value["output_shape"][1] != len(classes):
        raise Problem(join(at, "output_shape"), f"says {value['output_shape'][1]} outputs, but classes holds "
                                                f"{len(classes)} names")
    for name in value["sha256"]:
        if name != value["model"] and not name.startswith(value["model"] + "/"):
            raise Problem(join(join(at, "sha256"), name), f"is not a file of the model {show(value['model'])}")


@functools.cache
def export_schema() -> Obj:
    """``export.json``, as :func:`xrayfeat.runs.export.export_run` writes it."""
    from xrayfeat.options.settings import BACKBONES, CALIBRATIONS, DECISIONS
    from xrayfeat.runs.export import FORMATS

    dimension = Whole(1, 1 << 20)
    return Obj({
        "xrayfeat": need(NONEMPTY), "created": need(TEXT),
        "format": need(Text(f"a format ({', '.join(FORMATS)})", choices=tuple(FORMATS))),
        "model": need(RelativePath("a relative path inside the export folder")),
        "sha256": need(MapOf(SHA256, key=RelativePath("a relative path inside the export folder"))),
        "bytes": need(COUNT), "params": need(COUNT),
        "input": need(TEXT), "input_name": need(NONEMPTY),
        "input_shape": need(ListOf(Maybe(dimension), 4, 4, what="[null, S, S, 3]")),
        "input_dtype": need(Text("\"uint8\"", choices=("uint8",))),
        "image_size": need(Whole(32, 2048)),
        "output": need(TEXT),
        "output_shape": need(ListOf(Maybe(dimension), 2, 2, what="[null, K]")),
        "classes": need(ListOf(CLASS_NAME, 1, unique=True, what="a list of distinct class names")),
        "multilabel": may(Flag()),
        "backbone": need(Text(f"a backbone ({', '.join(BACKBONES)})", choices=BACKBONES)),
        "layer": need(NONEMPTY), "preprocess": need(NONEMPTY), "precision": need(NONEMPTY),
        "train_tail": need(Flag()),
        "weights": need(Obj({"kind": need(NONEMPTY), "identity": need(NONEMPTY), "path": need(Maybe(PATH_TEXT)),
                             "random": need(Flag()), "digest": need(NONEMPTY)})),
        "run": need(Obj({"path": need(PATH_TEXT), "name": need(TEXT), "created": need(TEXT),
                         "config_sha256": need(SHA256), "head_sha256": need(Maybe(SHA256)),
                         "store_fingerprint_id": need(Maybe(TEXT))})),
        "keras": need(NONEMPTY), "backend": need(NONEMPTY), "load": need(TEXT),
        # the contract (xrayfeat.runs.contract); exports written before it lack these
        "run_id": may(SHA256), "card": may(Text('"MODEL_CARD.md"', choices=("MODEL_CARD.md",))),
        "intended_use": may(TEXT), "task": may(TEXT),
        "data": may(Obj({"path": need(TEXT), "counts": need(MapOf(COUNT)), "validation": need(TEXT),
                         "created": need(TEXT)})),
        "decision": may(Obj({"rule": need(Text(f"a decision rule ({', '.join(DECISIONS)})", choices=DECISIONS)),
                             "thresholds": need(Maybe(MapOf(Number(), over=SOME_CLASSES))), "how": need(TEXT),
                             "threshold_rule": need(Maybe(TEXT)), "chosen_on": need(Maybe(TEXT)),
                             "positive": need(Maybe(CLASS_NAME)), "applied_in_model": need(Flag()),
                             "note": need(TEXT)})),
        "calibration": may(Obj({"method": need(Maybe(Text("a calibration", choices=CALIBRATIONS[1:]))),
                                "applied_in_model": need(Flag()), "calibrator": need(Maybe(JSON)),
                                "note": need(TEXT), "fitted_on": may(TEXT), "n": may(COUNT),
                                "validation": may(JSON), "test": may(JSON)})),
        "metrics": may(Obj({"head": need(MapOf(JSON)), "per_class": need(MapOf(JSON, over=SOME_CLASSES)),
                            "by_group": need(MapOf(JSON)), "baselines": need(MapOf(MapOf(JSON)))})),
        "external": may(MapOf(JSON)),
        "warnings": may(ListOf(Obj({"kind": need(NONEMPTY), "message": need(TEXT)}))),
        "weights_file": may(Obj({"kind": need(NONEMPTY), "file": need(Maybe(PATH_TEXT)), "md5": need(Maybe(TEXT)),
                                 "sha256": need(Maybe(SHA256)), "random": need(Flag()), "seed": need(Maybe(COUNT))})),
        "preprocessing": may(Obj({"mode": need(NONEMPTY), "image_size": need(Whole(32, 2048)), "decode": need(TEXT),
                                  "store_dtype": need(Maybe(TEXT)), "features_rounded_to": need(Maybe(TEXT)),
                                  "model_input": need(TEXT)})),
        "versions": may(MapOf(OneOf((TEXT, MapOf(TEXT)), what="a version, or the versions trained with"))),
    }, checks=(_export_agrees,))


__all__ = [
    "Damaged", "Problem", "Shape", "Text", "Whole", "Number", "Flag", "Maybe", "OneOf", "ListOf", "MapOf", "Obj",
    "OptionsOf", "Field", "need", "may", "check", "loads", "parse", "parse_json", "read_json", "show", "join",
    "config_schema", "metrics_schema", "model_metrics", "export_schema", "MAX_BYTES", "MAX_DEPTH", "MAX_INTEGER",
    "RUN_ARTIFACTS", "EVALUATION_ARTIFACTS", "BASELINE_SUFFIX", "UNCHECKSUMMED", "ALL_CLASSES", "SOME_CLASSES", "FIRST_FIELDS",
]
