"""Parsers of the options whose values are small languages, each with the check that declares it.

* :func:`parse_threshold` / :class:`Threshold`: an operating-point rule (``youden``, ``sens=X``, ``spec=X``, a probability);
* :func:`parse_cluster` / :class:`Cluster`: where Dask runs (``local:N`` or a scheduler address);
* :func:`parse_size` / :class:`ByteSize`: a byte count such as ``8G``;
* :func:`parse_list`: a comma-separated subset of allowed names; :class:`Names` also takes them as a list or tuple.

Each parser raises ``ValueError`` (``TypeError`` for a wrong type); its check plugs into
:mod:`xrayfeat.options.constraints` so the option's message has the house format.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from xrayfeat.options.constraints import OptionError, Parsed


@dataclass(frozen=True)
class Threshold(Parsed):
    """An operating-point rule: ``youden``, ``sens=X`` or ``spec=X`` (0 < X < 1), or a fixed probability in (0, 1)."""

    def parse(self, value):
        return parse_threshold(value)

    def describe(self) -> str:
        return "'youden', 'sens=X' or 'spec=X' with 0 < X < 1, or a probability in (0, 1)"


def parse_threshold(text) -> tuple[str, float | None]:
    """``"youden"`` → ``("youden", None)``; ``"sens=0.95"`` → ``("sensitivity", 0.95)``;
    ``"spec=0.9"`` → ``("specificity", 0.9)``; ``"0.3"`` → ``("fixed", 0.3)``.

    Raises ``ValueError`` (``TypeError`` for a non-string) on anything else.
    """
    if not isinstance(text, str):
        raise TypeError(f"a threshold rule is a string, not {type(text).__name__}")
    rule = text.strip().lower()
    if rule == "youden":
        return "youden", None
    kind, target = "fixed", rule
    for prefix, name in (("sens=", "sensitivity"), ("spec=", "specificity")):
        if rule.startswith(prefix):
            kind, target = name, rule[len(prefix):]
    value = float(target)
    if not (math.isfinite(value) and 0.0 < value < 1.0):
        raise ValueError(f"{text!r}: the value must be between 0 and 1 (exclusive)")
    return kind, value


@dataclass(frozen=True)
class Cluster(Parsed):
    """Where Dask runs: ``local:N`` (N local worker processes) or a scheduler address (``tcp://HOST:PORT``)."""

    def parse(self, value):
        return parse_cluster(value)

    def describe(self) -> str:
        return "'local:N' with N >= 1, or a scheduler address such as 'tcp://HOST:PORT'"


#: Address schemes of a Dask scheduler that ``--cluster`` accepts.
CLUSTER_SCHEMES = ("tcp://", "tls://", "ucx://")


def parse_cluster(text) -> tuple[str, int | str]:
    """``"local:4"`` → ``("local", 4)``; ``"tcp://10.0.0.5:8786"`` → ``("scheduler", "tcp://10.0.0.5:8786")``.

    Raises ``ValueError`` (``TypeError`` for a non-string) on anything else.
    """
    if not isinstance(text, str):
        raise TypeError(f"a cluster is a string, not {type(text).__name__}")
    address = text.strip()
    if address.lower().startswith("local:"):
        workers = int(address[len("local:"):])
        if workers < 1:
            raise ValueError(f"{text!r}: a local cluster needs at least one worker")
        return "local", workers
    scheme = next((s for s in CLUSTER_SCHEMES if address.lower().startswith(s)), None)
    host, _, port = address[len(scheme or ""):].rpartition(":")
    if scheme is None or not host or not port.isdigit():
        raise ValueError(f"{text!r}: not 'local:N' or a scheduler address like tcp://HOST:PORT")
    return "scheduler", address


#: The units of a size like ``--memory-budget 8G`` (powers of 1024; a trailing ``B`` or ``iB`` is allowed).
SIZE_UNITS: dict[str, int] = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(value) -> int:
    """A byte count from an int or a size string: ``"8G"``, ``"512M"``, ``"1.5GiB"``, ``"4096"`` (units of 1024).

    Raises ``ValueError`` on anything else, and on sizes below one byte.
    """
    if isinstance(value, int) and not isinstance(value, bool):
        number, unit = value, ""
    elif isinstance(value, str):
        text = value.strip().upper().removesuffix("B").removesuffix("I")
        unit = text[-1:] if text[-1:] in SIZE_UNITS else ""
        number = float(text[: len(text) - len(unit)])  # ValueError on anything but a number
    else:
        raise ValueError(f"a size is an int or a string like '8G', not {type(value).__name__}")
    size = number * SIZE_UNITS[unit]
    if not math.isfinite(size) or size < 1:
        raise ValueError(f"{value!r} is not a positive size")
    return int(size)


@dataclass(frozen=True)
class ByteSize(Parsed):
    """A positive size in bytes: an int, or a string with a unit of :data:`SIZE_UNITS` (see :func:`parse_size`)."""

    def parse(self, value):
        return parse_size(value)

    def describe(self) -> str:
        return "a positive byte count or a size like '512M', '8G' or '1.5T' (units of 1024)"


def parse_list(text: str, allowed: tuple[str, ...], name: str, *, none: bool = False) -> tuple[str, ...]:
    """``"a,b"`` → ``("a", "b")``: order kept, duplicates dropped, case and spaces ignored.

    With ``none``, the word ``none`` gives ``()``. Anything else outside
    ``allowed`` raises :class:`OptionError` quoting what was passed.
    """
    error = OptionError(f"The {name!r} option must be a comma-separated subset of {{{', '.join(allowed)}}}"
                        f"{' or ' + repr('none') if none else ''}. Got {text!r} instead.")
    if not isinstance(text, str):
        raise error
    items = [item.strip().lower() for item in text.split(",")]
    if none and items == ["none"]:
        return ()
    if any(item not in allowed for item in items):
        raise error
    return tuple(dict.fromkeys(items))


@dataclass(frozen=True)
class Names(Parsed):
    """Names from ``values``, as a list or tuple of them or as their comma-separated text (:func:`parse_list`).

    :meth:`parse` gives the tuple, order kept and duplicates dropped; with
    ``none``, the text ``none`` gives ``()``. Listed names are matched exactly,
    the text's ignoring case and spaces, as on the command line.
    """

    values: tuple[str, ...]
    none: bool = False

    def parse(self, value) -> tuple[str, ...]:
        if isinstance(value, str):
            return parse_list(value, self.values, "names", none=self.none)
        if not isinstance(value, (list, tuple)):
            raise TypeError(f"names are a list, a tuple or a comma-separated string, not {type(value).__name__}")
        if not all(isinstance(v, str) and v in self.values for v in value):
            raise ValueError(f"{value!r}: not names from {self.values}")
        return tuple(dict.fromkeys(value))

    def describe(self) -> str:
        names = "{" + ", ".join(repr(v) for v in self.values) + "}"
        return (f"a list or tuple of names from {names}, or their comma-separated text"
                + (" ('none' for none)" if self.none else ""))
