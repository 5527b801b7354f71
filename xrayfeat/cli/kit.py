"""How every xrayfeat command behaves: one-line errors, exit codes, --json output, options derived from declarations.

:func:`handle_errors` turns library errors into one line on stderr and the
contract's exit codes (2 bad input, 1 anything else, 128 + the signal for an
interrupt); :class:`Group` does the same for click's own usage errors, and
around every command makes SIGTERM and SIGHUP interrupt as SIGINT does
(:func:`~xrayfeat.distributed.lifetime.signals_unwind`), so helpers and temporary
files go with the command. :func:`emit` prints ``--json`` output on
stdout and human text on stderr. Every human line goes out through :func:`say`
(or a :func:`console` for tables), which writes names as data: control
characters escaped by :func:`~xrayfeat.errors.one_line`, so a file name holding
a newline cannot forge an ``xrayfeat: error:`` line, and no rich markup. :func:`declared` makes a click option from a
field of an option dataclass (:mod:`xrayfeat.options.settings`), so choices, defaults
and help are written once. :func:`renamed_flags` keeps a renamed option's old flag
working for one release, hidden from ``--help`` and with a notice (the names come from
:data:`~xrayfeat.options.settings.RENAMED`). The commands are in the modules of
:mod:`xrayfeat.cli`, one per group.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import signal
import stat
import sys
import warnings

import click
from click.core import ParameterSource

from xrayfeat.distributed.lifetime import signal_of, signals_unwind
from xrayfeat.errors import DiskFullError, XrayfeatError, called_from, first_line, one_line, os_error
from xrayfeat.fileio import as_disk_full, disk_full
from xrayfeat.options.settings import BACKBONES, REDEFINED, RENAMED, FeatureOptions, RunOptions, backbone_names, flag_of
from xrayfeat.options.constraints import AnyOf, Choice, Constant, Interval, declaration
from xrayfeat.runtime import quiet_frameworks  # noqa: F401  (the CLI calls it first: xrayfeat.cli.main)

log = logging.getLogger("xrayfeat")


def say(text, err: bool = False) -> None:
    """Print one line of human output (stdout, or stderr with ``err``), its control characters escaped.

    The one way a command prints a line: a name in it (a file, a class, a run)
    is data, shown escaped by :func:`~xrayfeat.errors.one_line`, whatever it holds.
    """
    click.echo(one_line(text), err=err)


class _OneLineHandler(logging.Handler):
    """``xrayfeat: warning: ...`` lines on stderr, each one line whatever the names in it hold."""

    def emit(self, record):
        level = "" if record.levelno < logging.WARNING else f"{record.levelname.lower()}: "
        say(f"xrayfeat: {level}{record.getMessage()}", err=True)


def setup_logging(verbose: bool) -> None:
    root = logging.getLogger("xrayfeat")
    if not any(isinstance(h, _OneLineHandler) for h in root.handlers):
        root.addHandler(_OneLineHandler())
    root.setLevel(logging.INFO if verbose else logging.WARNING)
    root.propagate = False

    def showwarning(message, category, filename, lineno, file=None, line=None):
        log.warning("%s", message)

    warnings.showwarning = showwarning


def handle_errors(func):
    """Turn library errors into one line and the contract's exit codes.

    A write that found no room and arrives in a library's own words (an
    OSError, h5py's or TensorFlow's exception: :func:`~xrayfeat.fileio.as_disk_full`)
    still gets the one full-disk line, naming the folder when the error does.
    """

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            try:
                with called_from("cli"):  # refusals name the command's flags (--out), not Python's keywords
                    return func(*args, **kwargs)
            except Exception as exc:
                full = None if isinstance(exc, XrayfeatError) else full_disk(exc)
                if full is None:
                    raise
                raise full from exc
        except XrayfeatError as exc:
            say(f"xrayfeat: error: {exc}", err=True)
            sys.exit(exc.exit_code)
        except KeyboardInterrupt as exc:  # SIGINT, or SIGTERM/SIGHUP through signals_unwind
            _interrupted(exc)
        except OSError as exc:  # named and fixed by errors.OS_ERRORS: exit 2 where the path given is wrong
            line = os_error(exc, _written_path())
            say(f"xrayfeat: error: {line}", err=True)
            sys.exit(line.exit_code)
        except MemoryError as exc:
            say(f"xrayfeat: error: {type(exc).__name__}: {exc}", err=True)
            sys.exit(1)
        except Exception as exc:  # the CLI boundary: a bug still gets one line, the traceback on request
            if os.environ.get("XRAYFEAT_DEBUG"):
                raise
            say(f"xrayfeat: internal error: {first_line(exc, typed=True)} "
                f"(rerun with XRAYFEAT_DEBUG=1 for the traceback, and please report it)", err=True)
            sys.exit(1)

    return wrapper


def _written_path() -> str | None:
    """What the running command writes (its ``--out``, else its ``--cache-dir``): the path an OSError naming no
    file is reported against. None outside a command or when it has neither."""
    ctx = click.get_current_context(silent=True)
    params = ctx.params if ctx is not None else {}
    for name in ("out", "cache_dir"):
        if params.get(name) is not None:
            return os.fspath(params[name])
    return None


def full_disk(exc: BaseException) -> DiskFullError | None:
    """``exc`` as the one full-disk line (:func:`~xrayfeat.fileio.as_disk_full`), or None when it is another error.

    A write that found no room and names no file is standard output's, redirected
    to a file on a full disk (every file xrayfeat writes goes through a writer that
    names its folder): the line names that file, and standard output is
    pointed at the null device so that its last flush at exit cannot fail again
    ("Exception ignored ... stdout").
    """
    full = as_disk_full(exc)
    if full is None or full.folder is not None:
        return full
    target = _stdout_file()
    if target is None:
        return full
    with contextlib.suppress(OSError, ValueError):
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, sys.stdout.fileno())
        os.close(null)
    return disk_full(target, full.errno)


def _stdout_file() -> str | None:
    """The regular file standard output is redirected to (Linux), else None."""
    try:
        fd = sys.stdout.fileno()
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        return os.readlink(f"/proc/self/fd/{fd}")
    except (OSError, ValueError, AttributeError):
        return None


def _interrupted(exc: KeyboardInterrupt):
    """One line for an interrupt, and exit ``128 + signal`` (130 for SIGINT, 143 for SIGTERM, 129 for SIGHUP)."""
    number = signal_of(exc)
    by = "" if number == signal.SIGINT else f" by {signal.Signals(number).name}"
    say(f"xrayfeat: interrupted{by}; completed batches are kept, rerun to resume", err=True)
    sys.exit(128 + number)


def emit(data: dict, as_json: bool, human) -> None:
    """``--json``: the object on stdout and the human text on stderr; otherwise the text on stdout.

    The object is one line of ASCII JSON: ``json.dumps`` escapes every control
    character and every non-ASCII one (U+2028 and the bidi controls included).
    """
    if as_json:
        human(err=True)
        click.echo(json.dumps(data, indent=None, default=str, ensure_ascii=True))
    else:
        human(err=False)


def console(err: bool):
    """A rich console for tables whose every string is data: no markup, control characters escaped.

    On a terminal, tables fit its width; into a pipe or a file (rich would assume
    80 columns and drop or squeeze columns) they keep every column at its full
    width, unless ``COLUMNS`` says otherwise.
    """
    from rich.console import Console

    class _DataConsole(Console):
        def render_str(self, text, **kwargs):  # every str a table, a title or print() renders passes here
            return super().render_str(one_line(text), **{**kwargs, "markup": False, "emoji": False})

    out = _DataConsole(stderr=err, highlight=False, soft_wrap=True, markup=False, emoji=False)
    if not out.is_terminal and not os.environ.get("COLUMNS"):  # a pipe or a file: every column, however wide
        out.width = UNBOUNDED_WIDTH
    return out


#: The width of a table written to a pipe or a file (no terminal to fit): wide enough for every column.
UNBOUNDED_WIDTH = 10_000


class IntRange(click.IntRange):
    """click's IntRange for a declared :class:`~xrayfeat.options.constraints.Interval`, its ``why`` said on a refusal.

    Refused at parse time (one line, exit 2, before the command makes anything):
    ``Invalid value for '--size': 100000 is not in the range 32<=x<=4096 (at most 4,096: ...)``.
    """

    def __init__(self, check: Interval):
        super().__init__(check.low, check.high)
        self.why = check.why

    def convert(self, value, param, ctx):
        try:
            return super().convert(value, param, ctx)
        except click.BadParameter as exc:
            if self.why and "range" in exc.message:
                exc.message = f"{exc.message.rstrip('.')} ({self.why})"
            raise


def declared(cls, name: str, *flags: str, param: str | None = None, **overrides):
    """A click option for field ``name`` of option class ``cls``: type, default and help from its declaration.

    The option's parameter is ``param`` (default ``name``); ``flags`` replace the
    flag (default the declaration's ``flag``, else ``--field-name``).
    """
    d = declaration(cls, name)
    check = d["check"]
    kwargs = {"default": d["default"], "help": d["help"], "show_default": d["default"] is not None}
    if isinstance(check, Choice):
        kwargs["type"] = click.Choice(check.values)
    elif isinstance(check, Interval) and check.integer:
        kwargs["type"] = click.INT if check.low is None and check.high is None else IntRange(check)
    elif isinstance(check, Interval):
        kwargs["type"] = click.FloatRange(check.low, check.high, min_open=check.low_open, max_open=check.high_open)
    elif isinstance(check, AnyOf) and all(isinstance(c, Interval) and c.integer or isinstance(c, Constant)
                                          and type(c.value) is int for c in check.checks):
        kwargs["type"] = click.INT  # e.g. n_jobs: the declaration refuses the ints outside it, in its own sentence
    elif d["default"] is False:
        kwargs.update(is_flag=True, show_default=False)
    flags = flags or (d["flag"] or "--" + name.replace("_", "-"),)
    add = click.option(*flags, param or name, **{**kwargs, **overrides})

    def apply(func):
        func = add(func)
        func.__click_params__[-1].declared = f"{cls.__name__}.{name}"  # which declaration it is (tests/test_renames.py)
        return func

    return apply


class _RequiredUnderEitherName(click.Option):
    """A required option that its old name may give instead: checked by :func:`renamed_flags`, shown as required."""

    def get_help_extra(self, ctx):
        return {**super().get_help_extra(ctx), "required": "required"}


def renamed_flags(command: str):
    """The old flags of ``command`` as hidden aliases, and a notice for flags whose meaning changed.

    Both come from :data:`~xrayfeat.options.settings.RENAMED` and
    :data:`~xrayfeat.options.settings.REDEFINED`. Goes right under ``@click.command``: each
    alias takes its new option's type, is left out of ``--help``, prints one line on stderr
    when used, and fails naming both flags when the new one is given too.
    """
    renames = [r for r in RENAMED if command in r.commands]
    changed = [d for d in REDEFINED if command in d.commands]

    def apply(func):
        params = func.__click_params__

        def option_of(flag: str) -> click.Option:
            return next(p for p in params if flag in p.opts)

        aliases = []
        for rename in renames:
            target = option_of(rename.flag)
            alias = "old_" + rename.old_flag.lstrip("-").replace("-", "_")
            aliases.append((rename, target, target.required, alias))
            if target.required:  # given under either name: checked once the alias is folded in, still shown as required
                target.required, target.__class__ = False, _RequiredUnderEitherName
            params.append(click.Option([rename.old_flag, alias], type=target.type, default=None, hidden=True))
        redefined = [(d, option_of(d.flag)) for d in changed]

        @functools.wraps(func)
        def wrapper(*args, **kwargs):
            ctx = click.get_current_context()
            for rename, target, required, alias in aliases:
                value = kwargs.pop(alias)
                if value is not None:
                    if ctx.get_parameter_source(target.name) is ParameterSource.COMMANDLINE:
                        raise click.UsageError(f"{rename.old_flag} is the old name of {rename.flag}; pass {rename.flag} only", ctx)
                    say(f"xrayfeat: {rename.old_flag} is renamed {rename.flag}; the old name goes in the next release",
                        err=True)
                    kwargs[target.name] = value
                if required and kwargs[target.name] is None:
                    raise click.MissingParameter(ctx=ctx, param=target)
            for change, target in redefined:
                if ctx.get_parameter_source(target.name) is ParameterSource.COMMANDLINE:
                    say(f"xrayfeat: {command} {change.flag} is now {change.now} (for what it meant before, use "
                        f"{flag_of(change.instead)}); this notice goes in the next release", err=True)
            return func(*args, **kwargs)

        return wrapper

    return apply


def stack(*options):
    def apply(func):
        for option in reversed(options):
            func = option(func)
        return func

    return apply


#: The options that select a feature store (extract, fit-head, embed, cache export), and where to find it.
feature_options = stack(
    click.option("--backbone", "-b", "backbone", required=True,
                 help=f"Backbone: {' or '.join(BACKBONES)} (extract accepts a comma-separated list, or all), or the "
                      f"name of features imported with `xrayfeat cache import`."),
    declared(FeatureOptions, "weights"),
    declared(FeatureOptions, "image_size"),
    declared(FeatureOptions, "layer"),
    declared(FeatureOptions, "precision"),
    declared(FeatureOptions, "store_dtype"),
    declared(FeatureOptions, "keep"),
    declared(FeatureOptions, "seed"),
    click.option("--classes", default=None, help="Keep only these classes, comma-separated (e.g. covid,normal)."),
    declared(RunOptions, "cache_dir", type=click.Path()),  # a file there: store.catalog.check_cache_target's line
    declared(RunOptions, "device"),
)
json_option = click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout (human text on stderr).")


def feature_list(kw) -> list[FeatureOptions]:
    """One FeatureOptions per backbone named in ``--backbone`` (a comma-separated list, or ``all``).

    A name of features imported into ``--cache-dir`` (``xrayfeat cache import``) is taken as a backbone's is;
    its options are its store's (:func:`~xrayfeat.store.imported.imported_options`).
    """
    from xrayfeat.store.imported import imported_names, imported_options

    text = kw["backbone"]
    given = [name.strip().lower() for name in text.split(",")] if isinstance(text, str) else []
    imported = sorted(name for name in given if name not in BACKBONES and name in _imported_here(kw, imported_names))
    names = backbone_names(text, imported)
    fields = ("weights", "image_size", "layer", "precision", "store_dtype", "seed", "keep")
    return [imported_options(FeatureOptions(backbone=b, **{k: kw[k] for k in fields}), kw.get("cache_dir"))
            for b in names]


def _imported_here(kw, imported_names) -> dict:
    """The names imported into the command's ``--cache-dir`` (none when it has no such folder)."""
    cache_dir = kw.get("cache_dir")
    return imported_names(cache_dir) if cache_dir is not None else {}


def single_feature(kw) -> FeatureOptions:
    features = feature_list(kw)
    if len(features) != 1:
        raise XrayfeatError(f"--backbone takes one backbone here; got {kw['backbone']}")
    return features[0]


def classes_of(text: str | None) -> list[str] | None:
    return [c.strip() for c in text.split(",") if c.strip()] if text else None


def dataset_of(data: str, classes: str | None, cache_dir, on_error: str = "fail"):
    from xrayfeat.api import discover

    return discover(data, classes=classes_of(classes), cache_dir=cache_dir, on_error=on_error)


_NO_ARGS = getattr(click.exceptions, "NoArgsIsHelpError", ())  # click >= 8.2


class Group(click.Group):
    """Commands in the order they are defined; click's own usage errors as one line, like every other error."""

    def list_commands(self, ctx):
        return list(self.commands)

    def main(self, *args, **kwargs):
        try:
            with signals_unwind():
                self._main(*args, **kwargs)
        except KeyboardInterrupt as exc:  # a signal that came while the command was already ending
            _interrupted(exc)
        except OSError as exc:  # outside a command (--help into a full disk): the same one line as inside
            full = full_disk(exc) or os_error(exc, _stdout_file())
            say(f"xrayfeat: error: {full}", err=True)
            sys.exit(full.exit_code)

    def _main(self, *args, **kwargs):
        kwargs.pop("standalone_mode", None)
        try:
            status = super().main(*args, standalone_mode=False, **kwargs)
            sys.stdout.flush()  # standard output on a full disk fails here, in one line, not at exit
            sys.exit(status if isinstance(status, int) else 0)  # as click's standalone mode ends
        except _NO_ARGS as exc:  # plain `xrayfeat`: the help, as click prints it
            click.echo(exc.format_message())
            sys.stdout.flush()
            sys.exit(0)
        except click.UsageError as exc:
            where = f" (see `{exc.ctx.command_path} --help`)" if exc.ctx else ""
            say(f"xrayfeat: error: {exc.format_message()}{where}", err=True)
            sys.exit(exc.exit_code)
        except click.ClickException as exc:
            say(f"xrayfeat: error: {exc.format_message()}", err=True)
            sys.exit(exc.exit_code)
        except click.Abort as exc:
            if isinstance(exc.__context__, KeyboardInterrupt) and signal_of(exc.__context__) != signal.SIGINT:
                _interrupted(exc.__context__)  # SIGTERM or SIGHUP outside a command's body
            say("xrayfeat: aborted", err=True)
            sys.exit(1)


