"""One word per concept on the command line and in Python, and the old names kept for one release.

A flag means one thing in every command (its parameter, its kind of value and the
option declaration it comes from), so ``--batch-size`` is the backbone's batch
wherever it appears. Each renamed option (``xrayfeat.options.settings.RENAMED``)
keeps its old flag as a hidden alias that works and says its new name on stderr,
and its old Python keyword works with a ``DeprecationWarning``; runs written
under the old names still load under the new ones.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import warnings
from collections import defaultdict
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

import xrayfeat as xf
from xrayfeat.cli.kit import declared
from xrayfeat.cli.main import main
from xrayfeat.options.settings import REDEFINED, RENAMED, HeadOptions, RunOptions, current_keys

LEGACY_RUN = Path(__file__).parent / "data" / "release-0.1.0" / "runs" / "legacy"

#: Field names one concept has in several option classes (a flag may come from any of them).
ONE_CONCEPT_IN_SEVERAL_CLASSES = {"seed": "a random seed; what it seeds is the command's (weights and study, phantoms)"}


# --------------------------------------------------------------------------- one meaning per flag


def _commands(group: click.Group, path=()):
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            yield from _commands(command, (*path, name))
        else:
            yield " ".join((*path, name)), command


def _kind(option: click.Option) -> str:
    if option.is_flag:
        return "flag"
    if isinstance(option.type, click.types.IntParamType):
        return "int"
    if isinstance(option.type, click.types.FloatParamType):
        return "float"
    return "text"  # strings, paths and choices: a word the command reads


def conflicts(group: click.Group) -> list[str]:
    """Every flag whose parameter, kind of value or declaration differs between two commands, and every
    parameter two flags set. Hidden options (the old names kept for a release) are left out."""
    uses = defaultdict(lambda: defaultdict(list))  # flag -> what it means -> commands
    flags_of = defaultdict(lambda: defaultdict(list))  # parameter -> its flags -> commands
    for where, command in _commands(group):
        for option in command.params:
            if not isinstance(option, click.Option) or option.hidden:
                continue
            for flag in option.opts + option.secondary_opts:
                uses[flag][("parameter", option.name)].append(where)
                uses[flag][("kind", _kind(option))].append(where)
                if getattr(option, "declared", None):
                    uses[flag][("declared", option.declared)].append(where)
            flags_of[option.name][tuple(sorted(option.opts))].append(where)
    found = []
    for flag, meanings in sorted(uses.items()):
        for aspect in ("parameter", "kind", "declared"):
            seen = {value: commands for (kind, value), commands in meanings.items() if kind == aspect}
            if aspect == "declared" and len({v.split(".")[1] for v in seen}) == 1 \
                    and next(iter(seen)).split(".")[1] in ONE_CONCEPT_IN_SEVERAL_CLASSES:
                continue
            if len(seen) > 1:
                found.append(f"{flag}: {aspect} " + "; ".join(f"{v} in {', '.join(c)}" for v, c in sorted(seen.items())))
    for name, flags in sorted(flags_of.items()):
        if len(flags) > 1:
            found.append(f"parameter {name}: " + "; ".join(f"{'/'.join(f)} in {', '.join(c)}" for f, c in sorted(flags.items())))
    return found


def test_no_flag_means_two_things_across_commands():
    assert conflicts(main) == []


def test_the_check_finds_the_names_this_release_fixed():
    """The previous release's fit-head --batch-size (the head's) and describe --classes (a number)."""

    @click.group()
    def old():
        pass

    @old.command("extract")
    @declared(RunOptions, "batch_size")
    @click.option("--classes", default=None)
    def extract(batch_size, classes):
        pass

    @old.command("fit-head")
    @declared(HeadOptions, "head_batch_size", "--batch-size", param="batch_size")
    def fit_head(batch_size):
        pass

    @old.command("describe")
    @click.option("--classes", "n_classes", type=click.IntRange(2, None))
    def describe(n_classes):
        pass

    found = conflicts(old)
    assert any(f.startswith("--batch-size: declared HeadOptions.head_batch_size in fit-head; RunOptions.batch_size")
               for f in found), found
    assert any(f.startswith("--classes: parameter") for f in found) and any(f.startswith("--classes: kind") for f in found)


def test_every_hidden_option_is_an_old_name_and_every_old_name_is_hidden():
    hidden = {(where, flag) for where, command in _commands(main) for option in command.params
              if isinstance(option, click.Option) and option.hidden for flag in option.opts}
    assert hidden == {(command, r.old_flag) for r in RENAMED if r.old_flag for command in r.commands}


def test_the_table_is_consistent():
    for r in RENAMED:
        assert r.flag == "--" + r.name.replace("_", "-")
        assert (r.old is None) == (not r.accepted_by) and (r.old_flag is None) == (not r.commands)
        assert r.old != r.name and r.old_flag != r.flag
    assert len({r.old for r in RENAMED if r.old} | {r.old_flag for r in RENAMED if r.old_flag}) == \
        sum(1 for r in RENAMED if r.old) + sum(1 for r in RENAMED if r.old_flag)


# --------------------------------------------------------------------------- the old flags, as a user types them

#: new name -> (a value to pass, where the command's library call received it)
ALIAS_VALUES = {
    "learning_rate": ("0.01", lambda seen: seen["head"].learning_rate, 0.01),
    "n_bootstrap": ("7", lambda seen: seen["head"].n_bootstrap, 7),
    "batch_size": ("5", lambda seen: seen["run"].batch_size, 5),
    "n_classes": ("3", lambda seen: seen["n_classes"], 3),
}
ALIASES = [(command, r) for r in RENAMED if r.old_flag for command in r.commands]


@pytest.fixture
def seen(monkeypatch):
    """What fit-head and describe hand the library, without training or building anything."""
    import xrayfeat.extraction.building as building
    import xrayfeat.extraction.config as config
    import xrayfeat.models.head as head
    import xrayfeat.runs.fit as fit

    got = {}

    def fake_fit_head(dataset, features, head, run, out=None, **kwargs):
        got.update(head=head, run=run)
        raise SystemExit(0)

    def fake_build_seed_model(backbone, n_classes, **kwargs):
        got["n_classes"] = n_classes
        raise SystemExit(0)

    monkeypatch.setattr(fit, "fit_head", fake_fit_head)
    monkeypatch.setattr(config, "resolve", lambda *args, **kwargs: None)
    monkeypatch.setattr(head, "build_seed_model", fake_build_seed_model)
    monkeypatch.setattr(building, "build_backbone", lambda *args, **kwargs: None)
    return got


def _args(command: str, data: Path, tmp_path: Path) -> list[str]:
    if command == "fit-head":
        return ["fit-head", str(data), "-b", "vgg16", "--weights", "none", "--cache-dir", str(tmp_path / "cache")]
    assert command == "describe"
    return ["describe", "-b", "vgg16"]


def test_every_old_flag_has_a_case():
    assert {r.name for _, r in ALIASES} == set(ALIAS_VALUES)


@pytest.mark.parametrize("command,rename", ALIASES, ids=[f"{c} {r.old_flag}" for c, r in ALIASES])
def test_an_old_flag_works_says_its_new_name_and_is_hidden(command, rename, seen, tiny_data, tmp_path):
    value, read, expected = ALIAS_VALUES[rename.name]
    old = CliRunner().invoke(main, [*_args(command, tiny_data, tmp_path), rename.old_flag, value])
    assert old.exit_code == 0, old.output
    assert read(seen) == expected
    assert old.stderr.splitlines() == [
        f"xrayfeat: {rename.old_flag} is renamed {rename.flag}; the old name goes in the next release"]

    seen.clear()
    new = CliRunner().invoke(main, [*_args(command, tiny_data, tmp_path), rename.flag, value])
    assert new.exit_code == 0, new.output
    assert read(seen) == expected
    redefined = any(d.flag == rename.flag and command in d.commands for d in REDEFINED)  # says so on its own
    assert len(new.stderr.splitlines()) == redefined and "renamed" not in new.stderr

    shown = CliRunner().invoke(main, [*command.split(), "--help"]).output
    assert re.search(rf"(?<![\w-]){re.escape(rename.flag)}\b", shown)
    assert not re.search(rf"(?<![\w-]){re.escape(rename.old_flag)}\b", shown), shown


@pytest.mark.parametrize("command,rename", ALIASES, ids=[f"{c} {r.old_flag}" for c, r in ALIASES])
def test_an_old_flag_beside_its_new_one_is_one_line_naming_both(command, rename, seen, tiny_data, tmp_path):
    value = ALIAS_VALUES[rename.name][0]
    result = CliRunner().invoke(main, [*_args(command, tiny_data, tmp_path), rename.flag, value, rename.old_flag, value],
                                prog_name="xrayfeat")
    assert result.exit_code == 2 and seen == {}
    assert result.stderr.splitlines() == [
        f"xrayfeat: error: {rename.old_flag} is the old name of {rename.flag}; pass {rename.flag} only "
        f"(see `xrayfeat {command} --help`)"]


def test_the_required_new_flag_is_still_required_and_shown_so(seen):
    result = CliRunner().invoke(main, ["describe", "-b", "vgg16"])
    assert result.exit_code == 2 and "Missing option '--n-classes'" in result.stderr
    shown = " ".join(CliRunner().invoke(main, ["describe", "--help"]).output.split())
    assert "--n-classes INTEGER RANGE Number of classes (2 → one sigmoid unit). [x>=2; required]" in shown


def test_fit_head_batch_size_is_the_backbones_and_says_so_for_a_release(seen, tiny_data, tmp_path):
    (change,) = REDEFINED
    args = _args("fit-head", tiny_data, tmp_path)
    result = CliRunner().invoke(main, [*args, "--batch-size", "7"])
    assert result.exit_code == 0, result.output
    assert (seen["run"].batch_size, seen["head"].head_batch_size) == (7, 10)
    assert result.stderr.splitlines() == [
        f"xrayfeat: fit-head --batch-size is now {change.now} (for what it meant before, use --head-batch-size); "
        "this notice goes in the next release"]

    result = CliRunner().invoke(main, [*args, "--head-batch-size", "4", "--n-jobs", "2"])
    assert result.exit_code == 0 and result.stderr == ""
    assert (seen["run"].batch_size, seen["head"].head_batch_size, seen["head"].n_jobs) == (32, 4, 2)


# --------------------------------------------------------------------------- the old Python keywords

#: new name -> a value other than its default
KEYWORD_VALUES = {"learning_rate": 0.01, "n_bootstrap": 7, "head_backend": "tensorflow", "head_batch_size": 5, "batch_size": 6}
HEAD_RENAMES = [r for r in RENAMED if "HeadOptions" in r.accepted_by]
FIT_HEAD_RENAMES = [r for r in RENAMED if "fit_head" in r.accepted_by]


def test_every_old_keyword_has_a_case():
    assert {r.name for r in RENAMED if r.old} == set(KEYWORD_VALUES)


@pytest.mark.parametrize("rename", HEAD_RENAMES, ids=[r.old for r in HEAD_RENAMES])
def test_head_options_take_and_answer_to_an_old_name_with_a_deprecation_warning(rename):
    value = KEYWORD_VALUES[rename.name]
    with pytest.warns(DeprecationWarning, match=rf"HeadOptions\({rename.old}=\.\.\.\) is renamed {rename.name};") as caught:
        old = HeadOptions(**{rename.old: value})
    assert caught[0].filename == __file__  # the warning points at the caller's line
    assert old == HeadOptions(**{rename.name: value})
    with pytest.warns(DeprecationWarning, match=rf"HeadOptions\.{rename.old} is renamed {rename.name};"):
        assert getattr(old, rename.old) == value
    with pytest.raises(TypeError, match=f"pass '{rename.name}' only"):
        HeadOptions(**{rename.old: value, rename.name: value})


def test_the_new_names_warn_about_nothing():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        head = HeadOptions(**{r.name: KEYWORD_VALUES[r.name] for r in HEAD_RENAMES})
        dataclasses.replace(head, epochs=3).validate()


@pytest.fixture
def fit_head_seen(monkeypatch):
    """What xf.fit_head hands the study, without running it."""
    import xrayfeat.runs.fit as fit

    got = {}

    class Stop(Exception):
        pass

    def fake_fit_head(dataset, features, head, run, **kwargs):
        got.update(head=head, run=run)
        raise Stop

    monkeypatch.setattr(fit, "fit_head", fake_fit_head)
    got["stop"] = Stop
    return got


def _read(seen: dict, name: str):
    return getattr(seen["run"], name) if name in {f.name for f in dataclasses.fields(RunOptions)} else getattr(seen["head"], name)


@pytest.mark.parametrize("rename", FIT_HEAD_RENAMES, ids=[r.old for r in FIT_HEAD_RENAMES])
def test_fit_head_takes_an_old_keyword_with_a_deprecation_warning(rename, fit_head_seen, tiny_data, tmp_path):
    value = KEYWORD_VALUES[rename.name]
    stop = fit_head_seen["stop"]
    with pytest.warns(DeprecationWarning, match=rf"fit_head\({rename.old}=\.\.\.\) is renamed {rename.name};"), \
            pytest.raises(stop):
        xf.fit_head(tiny_data, "vgg16", weights="none", cache_dir=tmp_path / "cache", **{rename.old: value})
    assert _read(fit_head_seen, rename.name) == value
    with pytest.raises(TypeError, match=f"pass '{rename.name}' only"), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # batch_size's own notice
        xf.fit_head(tiny_data, "vgg16", cache_dir=tmp_path / "cache", **{rename.old: value, rename.name: value})


def test_fit_head_batch_size_is_the_backbones_with_a_future_warning(fit_head_seen, tiny_data, tmp_path):
    with pytest.warns(FutureWarning, match=r"fit_head\(batch_size=\.\.\.\) is now the backbone's batch.*head_batch_size"), \
            pytest.raises(fit_head_seen["stop"]):
        xf.fit_head(tiny_data, "vgg16", weights="none", cache_dir=tmp_path / "cache", batch_size=6, head_batch_size=4)
    assert (fit_head_seen["run"].batch_size, fit_head_seen["head"].head_batch_size) == (6, 4)


# --------------------------------------------------------------------------- runs written under the old names


def test_a_record_written_under_the_old_names_reads_under_the_new(tmp_path):
    old = json.loads((LEGACY_RUN / "config.json").read_text())["head"]
    assert {"lr", "n_boot", "batch_size", "backend"} <= set(old)
    head = current_keys("HeadOptions", old)
    assert (head["learning_rate"], head["n_bootstrap"], head["head_batch_size"], head["head_backend"]) == \
        (old["lr"], old["n_boot"], old["batch_size"], old["backend"])
    assert not {"lr", "n_boot", "batch_size", "backend"} & set(head)
    assert HeadOptions(**{k: tuple(v) if k == "baselines" else v for k, v in head.items()}) is not None  # every key is a field

    run_dir = tmp_path / "legacy"
    shutil.copytree(LEGACY_RUN, run_dir)
    record = xf.load_run(run_dir).record
    assert record.head == head
    assert record.to_json()["head"] == head  # written back (evaluate does) under today's names


def test_a_report_shows_an_old_run_head_settings(tmp_path):
    run_dir = tmp_path / "runs" / "legacy"
    shutil.copytree(LEGACY_RUN, run_dir)
    result = xf.write_report([run_dir], tmp_path / "report")
    text = Path(result["markdown"]).read_text()
    assert "batch 10" in text and "lr 0.001" in text
