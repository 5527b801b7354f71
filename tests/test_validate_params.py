"""One validation path: public functions declare their parameters' constraints with ``validate_params``.

The decorator checks arguments against the same constraint objects the option
dataclasses declare, through the same ``check_value``, so a function and a
dataclass refuse a value in the same sentence. The table below names every
public function of the modules that take options as plain keywords; each
declared parameter gets a wrong value and a wrong type, and the refusal must
come from the decorator (before the function body runs) in the house format.
A scan of the modules' source fails on a hand-written check that is left.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib
import inspect
import traceback
from pathlib import Path

import pytest

from tests.conftest import run_cli
from xrayfeat.options.constraints import (
    AnyOf,
    Choice,
    Constant,
    Interval,
    OptionError,
    OptionTypeError,
    Parsed,
    Subset,
    check_value,
    declaration,
    validate_params,
)
from xrayfeat.options.settings import EmbedOptions, FeatureOptions, PhantomOptions

PACKAGE = Path(__file__).resolve().parents[1] / "xrayfeat"

#: The modules whose public functions take options as plain keywords.
MODULES = ("xrayfeat.analysis.maps", "xrayfeat.models.baselines", "xrayfeat.models.head",
           "xrayfeat.data.phantoms", "xrayfeat.api", "xrayfeat.runs.record")

#: Every decorated public function → the arguments a call needs besides the one under test
#: (None where the decorator refuses before anything reads it).
REQUIRED = {
    "xrayfeat.analysis.maps.neighbour_method": {"method": "tsne", "n": 10},
    "xrayfeat.analysis.maps.embed_features": {"features": None},
    "xrayfeat.analysis.maps.neighbourhood_scores": {"features": None, "coords": None, "labels": None},
    "xrayfeat.analysis.maps.stratified_subsample": {"labels": None, "size": 1},
    "xrayfeat.models.baselines.make_search": {"name": "logreg", "n_features": 1, "n_samples": 1, "cv": None},
    "xrayfeat.models.baselines.fit_baseline": {"name": "logreg", "X_train": None, "y_train": None},
    "xrayfeat.models.baselines.fit_baselines": {"names": (), "y_train": None},
    "xrayfeat.models.baselines.save_baseline": {"path": None},
    "xrayfeat.models.head.build_head": {"input_shape": None, "n_classes": 2},
    "xrayfeat.models.head.resolve_jit_compile": {},
    "xrayfeat.models.head.train_head": {"x_train": None, "y_train": None, "n_classes": 2},
    "xrayfeat.data.phantoms.render": {"label": "covid", "rng": None},
    "xrayfeat.data.phantoms.write_phantoms": {"out": None},
    "xrayfeat.api.discover": {"data": None},
    "xrayfeat.api.features": {"data": None},
    "xrayfeat.api.embed": {"data": None, "out": None},
}


def _public_functions():
    """(qualified name, function) of every public function the modules define."""
    for module_name in MODULES:
        module = importlib.import_module(module_name)
        for name, obj in sorted(vars(module).items()):
            if not name.startswith("_") and inspect.isfunction(obj) and obj.__module__ == module_name:
                yield f"{module_name}.{name}", obj


def _declared():
    """(qualified name, function, parameter, constraint) of every declared parameter."""
    for qualname, func in _public_functions():
        for param, spec in getattr(func, "__parameter_constraints__", {}).items():
            yield qualname, func, param, spec


def _bad_values(check) -> list:
    """A value of the wrong type, and where the constraint allows one, a value of the right type out of range."""
    bad = [object()]
    if isinstance(check, Interval):
        if check.low is not None:
            bad.append(check.low if check.low_open else check.low - 1)
        elif check.high is not None:
            bad.append(check.high if check.high_open else check.high + 1)
    elif isinstance(check, (Choice, AnyOf)):
        bad.append("no-such-value")
    elif isinstance(check, Subset):
        bad.append(("no-such-value",))
    elif isinstance(check, Parsed):
        bad.append("no-such-value")
    return bad


def _cases():
    for qualname, func, param, spec in _declared():
        for k, value in enumerate(_bad_values(spec["check"])):
            yield pytest.param(func, param, spec, value, id=f"{qualname.removeprefix('xrayfeat.')}-{param}-{k}")


def test_the_table_names_every_decorated_function():
    decorated = {q for q, f in _public_functions() if hasattr(f, "__parameter_constraints__")}
    assert sorted(decorated ^ set(REQUIRED)) == []


@pytest.mark.parametrize("func, param, spec, value", list(_cases()))
def test_a_bad_argument_is_refused_by_the_declaration_in_the_house_format(func, param, spec, value):
    qualname = f"{func.__module__}.{func.__name__}"
    kwargs = {**REQUIRED[qualname], param: value}
    with pytest.raises((OptionError, OptionTypeError)) as info:
        func(**kwargs)
    allowed = spec["check"].describe() + (" or None" if spec["none"] else "")
    assert str(info.value) == f"The {param!r} parameter of {func.__name__} must be {allowed}. Got {value!r} instead."
    # refused before the body ran: no frame of the function itself, the last one check_value's
    frames = [frame.f_code for frame, _ in traceback.walk_tb(info.value.__traceback__)]
    assert inspect.unwrap(func).__code__ not in frames
    assert frames[-1] is check_value.__code__


def test_no_hand_written_check_is_left_on_a_declared_parameter():
    """No ``if <declared parameter> ...: raise`` in a decorated function, and no copy of the house message."""
    declared = {(f.__module__, f.__name__): set(f.__parameter_constraints__)
                for _, f in _public_functions() if hasattr(f, "__parameter_constraints__")}
    found = []
    for module_name in MODULES:
        path = PACKAGE.joinpath(*module_name.split(".")[1:]).with_suffix(".py")
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and " parameter of " in node.value:
                found.append(f"{path.name}:{node.lineno}: the house message written by hand")
        for node in tree.body:
            params = declared.get((module_name, getattr(node, "name", None)), set())
            for sub in (n for n in ast.walk(node) if isinstance(n, ast.If) and params):
                named = {n.id for n in ast.walk(sub.test) if isinstance(n, ast.Name)} & params
                if named and any(isinstance(n, ast.Raise) for stmt in sub.body for n in ast.walk(stmt)):
                    found.append(f"{path.name}:{sub.lineno}: {node.name} checks {sorted(named)} by hand")
    assert found == []


def test_a_run_warning_kind_is_declared_on_its_field():
    from xrayfeat.runs.record import WARNING_KINDS, RunWarning

    [kind] = [f for f in dataclasses.fields(RunWarning) if f.name == "kind"]
    assert kind.metadata["check"] == Choice(tuple(WARNING_KINDS))
    with pytest.raises(OptionError) as info:
        RunWarning("gossip", "x")
    assert str(info.value) == (f"The 'kind' parameter of RunWarning must be {Choice(tuple(WARNING_KINDS)).describe()}. "
                               "Got 'gossip' instead.")
    with pytest.raises(OptionTypeError):
        RunWarning(3, "x")


# --------------------------------------------------------------------------- the decorator itself


@validate_params({"backbone": declaration(FeatureOptions, "backbone"),
                  "size": {"check": Interval(1, None, integer=True), "none": True},
                  "jobs": AnyOf((Interval(1, None, integer=True), Constant(-1)))})
def _toy(backbone, /, size=None, *, jobs=1):
    """A toy."""
    return backbone, size, jobs


def test_a_declaration_is_reused_with_the_dataclass_s_sentence():
    with pytest.raises(OptionError) as from_field:
        FeatureOptions("resnet").validate()
    with pytest.raises(OptionError) as from_function:
        _toy("resnet")
    assert str(from_function.value) == str(from_field.value).replace("of FeatureOptions", "of _toy")
    from xrayfeat.analysis.maps import embed_features

    with pytest.raises(OptionError) as from_field:
        EmbedOptions(method="pca").validate()
    with pytest.raises(OptionError) as from_function:
        embed_features(None, method="pca")
    assert str(from_function.value) == str(from_field.value).replace("of EmbedOptions", "of embed_features")


def test_positional_keyword_default_and_none_arguments():
    assert _toy("vgg16") == ("vgg16", None, 1)
    assert _toy("vgg16", 3, jobs=-1) == ("vgg16", 3, -1)
    assert _toy("vgg16", size=None) == ("vgg16", None, 1)
    with pytest.raises(OptionError, match=r"^The 'size' parameter of _toy must be an int in \[1, inf\] or None\. "
                                          r"Got 0 instead\.$"):
        _toy("vgg16", 0)
    with pytest.raises(OptionError, match=r"'jobs' parameter of _toy must be an int in \[1, inf\] or -1\. Got 0"):
        _toy("vgg16", jobs=0)
    with pytest.raises(OptionTypeError, match="Got '2' instead"):
        _toy("vgg16", jobs="2")
    with pytest.raises(OptionTypeError):
        _toy("vgg16", jobs=True)  # True is not -1 nor a count


def test_the_wrapper_keeps_name_docstring_and_signature():
    assert _toy.__name__ == "_toy" and _toy.__doc__ == "A toy."
    assert inspect.signature(_toy) == inspect.signature(inspect.unwrap(_toy))
    from xrayfeat.data.phantoms import write_phantoms

    assert "Write a synthetic chest X-ray data set" in write_phantoms.__doc__
    assert list(inspect.signature(write_phantoms).parameters) == ["out", "task", "per_class", "size", "seed",
                                                                  "test_fraction"]


def test_a_call_binds_nothing(monkeypatch):
    """Positions are worked out once, when decorating; a call costs a walk over the declared parameters."""

    def no_signature(*args, **kwargs):
        raise AssertionError("inspect.signature at call time")

    monkeypatch.setattr(inspect, "signature", no_signature)
    monkeypatch.setattr(inspect.Signature, "bind", no_signature)
    assert _toy("vgg16", 2, jobs=3) == ("vgg16", 2, 3)


def test_declaration_mistakes_fail_when_decorating():
    with pytest.raises(TypeError, match="no named parameter 'sise'"):
        validate_params({"sise": Interval(1, None)})(lambda size=1: size)
    with pytest.raises(TypeError, match="no named parameter 'options'"):
        validate_params({"options": Interval(1, None)})(lambda **options: options)
    with pytest.raises(OptionError, match=r"The 'size' parameter of f must be .* Got 0 instead"):
        validate_params({"size": Interval(1, None)}, owner="f")(lambda size=0: size)
    with pytest.raises(TypeError, match="differs from the default 'tsne'"):
        validate_params({"method": declaration(EmbedOptions, "method")})(lambda method="umap": method)
    with pytest.raises(TypeError, match="accepts"):
        validate_params({"size": int})(lambda size=1: size)


def test_every_phantom_parameter_is_the_cli_s_declaration():
    from xrayfeat.data.phantoms import TASKS, write_phantoms

    assert tuple(TASKS) == declaration(PhantomOptions, "task")["check"].values
    signature = inspect.signature(write_phantoms)
    for f in dataclasses.fields(PhantomOptions):
        assert signature.parameters[f.name].default == f.default
        assert write_phantoms.__parameter_constraints__[f.name]["check"] == f.metadata["check"]


def test_the_phantoms_cli_refuses_a_bad_size_in_one_line_naming_the_flag(tmp_path):
    proc = run_cli("phantoms", tmp_path / "out", "--size", "0", timeout=120)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1 and "--size" in lines[0] and lines[0].startswith("xrayfeat: error: "), lines
    assert not (tmp_path / "out").exists()


def test_decorating_is_functools_wraps():
    plain = inspect.unwrap(_toy)
    assert plain is not _toy and _toy.__wrapped__ is plain
    assert (_toy.__qualname__, _toy.__module__, _toy.__annotations__) == \
        (plain.__qualname__, plain.__module__, plain.__annotations__)


def test_n_jobs_is_one_constraint_everywhere_none_minus_one_or_at_least_one():
    from xrayfeat.analysis.maps import embed_features
    from xrayfeat.models.baselines import fit_baseline, fit_baselines, make_search
    from xrayfeat.options.settings import N_JOBS, HeadOptions

    assert declaration(HeadOptions, "n_jobs")["check"] is N_JOBS and declaration(HeadOptions, "n_jobs")["none"]
    for func in (embed_features, fit_baselines, fit_baseline, make_search):
        assert func.__parameter_constraints__["n_jobs"]["check"] is N_JOBS, func.__name__
        assert func.__parameter_constraints__["n_jobs"]["none"], func.__name__
    for good in (None, -1, 1, 8):
        HeadOptions(n_jobs=good).validate()
    for bad in (0, -2):
        with pytest.raises(OptionError) as from_field:
            HeadOptions(n_jobs=bad).validate()
        with pytest.raises(OptionError) as from_function:
            embed_features(None, n_jobs=bad)
        assert str(from_field.value) == (f"The 'n_jobs' parameter of HeadOptions must be an int in [1, inf] or -1 or None. "
                                         f"Got {bad} instead.")
        assert str(from_function.value) == str(from_field.value).replace("of HeadOptions", "of embed_features")
