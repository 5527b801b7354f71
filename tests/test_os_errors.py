"""Every operating-system error a user meets names its file and the fix (docs/RELIABILITY.md, Operating-system errors).

One table (``xrayfeat.errors.OS_ERRORS``) gives each errno a reason and a fix; the
CLI prints any OSError through it as ``xrayfeat: error: PATH: reason; fix``, exit 2
where the path given is wrong, 1 otherwise. Outputs are checked before any work
(``fileio.check_writable``), and names derived from a 255-byte name stay within the limit.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from xrayfeat.errors import OS_ERRORS, FileSystemError, describe_os_error, os_error

#: errnos whose path is the user's input (exit 2); every other row of the table is exit 1.
INPUT_ERRNOS = {errno.ENOENT, errno.EACCES, errno.EPERM, errno.EROFS, errno.ENAMETOOLONG, errno.EISDIR, errno.ENOTDIR,
                errno.EEXIST, errno.ELOOP, errno.ENOTEMPTY}
TABLE = sorted(OS_ERRORS) + [errno.EPROTO]  # and one the table does not hold: the system's own words, a default fix


@pytest.mark.parametrize("code", TABLE, ids=[errno.errorcode[c] for c in TABLE])
def test_each_errno_is_one_line_naming_the_file_the_reason_and_the_fix(code):
    exc = OSError(code, os.strerror(code), "/data/out/predictions.csv")
    line = describe_os_error(exc)
    reason, fix = OS_ERRORS.get(code, (os.strerror(code), "check the path and its file system, then re-run"))
    assert line == f"/data/out/predictions.csv: {reason}; {fix}"
    assert "[Errno" not in line and "\n" not in line and fix
    error = os_error(exc)
    assert isinstance(error, FileSystemError) and isinstance(error, OSError)  # still an OSError for library callers
    assert str(error) == line and error.errno == code and error.filename == "/data/out/predictions.csv"
    assert error.exit_code == (2 if code in INPUT_ERRNOS else 1)
    # no file in the exception: the path the caller was writing, else "a file", never nothing
    assert describe_os_error(OSError(code, os.strerror(code)), "/data/out").startswith(f"/data/out: {reason}; ")
    assert describe_os_error(OSError(code, os.strerror(code))).startswith(f"a file: {reason}; ")


def test_a_rename_names_both_files():
    exc = OSError(errno.EXDEV, os.strerror(errno.EXDEV), "/tmp/a", None, "/mnt/b")
    assert describe_os_error(exc).startswith("/tmp/a -> /mnt/b: cannot be moved to another file system; ")


@pytest.mark.parametrize("raised, exit_code, named", [
    (FileNotFoundError(errno.ENOENT, "No such file or directory", "/gone/x.csv"), 2, "/gone/x.csv"),
    (PermissionError(errno.EACCES, "Permission denied", "/root/x.csv"), 2, "/root/x.csv"),
    (OSError(errno.EIO, "Input/output error"), 1, "OUT.csv"),  # names no file: the --out the command writes
    (OSError(errno.EMFILE, "Too many open files"), 1, "OUT.csv"),
], ids=["ENOENT", "EACCES", "EIO-unnamed", "EMFILE-unnamed"])
def test_the_cli_prints_an_os_error_as_the_table_s_one_line(raised, exit_code, named):
    from xrayfeat.cli.kit import handle_errors

    @click.command()
    @click.option("--out")
    @handle_errors
    def command(out):
        raise raised

    result = CliRunner().invoke(command, ["--out", "OUT.csv"])
    assert result.exit_code == exit_code
    reason, fix = OS_ERRORS[raised.errno]
    assert result.stderr.splitlines() == [f"xrayfeat: error: {named}: {reason}; {fix}"]
    assert result.stdout == ""


def test_a_write_block_names_its_folder_on_an_os_error_that_names_no_file(tmp_path):
    from xrayfeat.fileio import writing_to

    with pytest.raises(OSError) as info:
        with writing_to(tmp_path / "out", option="--out"):
            raise OSError(errno.EIO, os.strerror(errno.EIO))
    assert describe_os_error(info.value).startswith(f"{tmp_path / 'out'}: input/output error")


# --------------------------------------------------------------------------- outputs checked before any work


@pytest.fixture()
def place(tmp_path, monkeypatch):
    (tmp_path / "afile").write_text("x")
    (tmp_path / "adir").mkdir()
    (tmp_path / "loop").symlink_to("loop")
    monkeypatch.chdir(tmp_path)
    return tmp_path


TOO_LONG = "n" * 256


@pytest.mark.parametrize("out, folder, code, named", [
    ("afile/x.csv", False, errno.ENOTDIR, "afile"),
    ("afile/deeper/x.csv", False, errno.ENOTDIR, "afile"),
    ("adir", False, errno.EISDIR, "adir"),
    (TOO_LONG + ".csv", False, errno.ENAMETOOLONG, TOO_LONG + ".csv"),
    ("adir/" + TOO_LONG + "/x.csv", False, errno.ENAMETOOLONG, "adir/" + TOO_LONG + "/x.csv"),
    ("/".join(["d" * 200] * 21), True, errno.ENAMETOOLONG, "/".join(["d" * 200] * 21)),
    ("loop/x.csv", False, errno.ELOOP, "loop"),
    ("afile", True, errno.ENOTDIR, "afile"),
], ids=["under-a-file", "deep-under-a-file", "folder-for-a-file", "name-too-long", "part-too-long", "path-too-long",
        "link-loop", "file-for-a-folder"])
def test_an_output_the_system_would_refuse_is_refused_before_any_work(place, out, folder, code, named):
    from xrayfeat.fileio import check_writable

    before = sorted(p.name for p in place.iterdir())
    with pytest.raises(FileSystemError) as info:
        check_writable(out, folder=folder)
    assert info.value.errno == code and info.value.exit_code == 2
    assert str(info.value).startswith(f"{named}: ")
    assert sorted(p.name for p in place.iterdir()) == before  # nothing made


def test_missing_folders_on_the_way_are_fine_and_a_name_of_255_bytes_too(place):
    from xrayfeat.fileio import check_writable

    check_writable("new/deeper/" + "n" * 251 + ".csv")
    check_writable("adir/" + "n" * 255, folder=True)
    assert not (place / "new").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write into a read-only folder")
def test_an_output_in_a_folder_without_write_permission_is_refused(place):
    from xrayfeat.fileio import check_writable

    (place / "adir").chmod(0o555)
    try:
        with pytest.raises(FileSystemError) as info:
            check_writable("adir/sub/x.csv")
    finally:
        (place / "adir").chmod(0o755)
    assert info.value.errno == errno.EACCES and str(info.value).startswith("adir: permission denied; ")


@pytest.mark.parametrize("argv, named, code", [
    (["report", "{run}", "--out", "afile/report"], "afile", errno.ENOTDIR),
    (["report", "{run}", "--out", TOO_LONG], TOO_LONG, errno.ENAMETOOLONG),
    (["report", "{run}", "--out", "afile"], "afile", errno.ENOTDIR),
    (["predict", "{run}", "{data}", "--out", "afile/p.csv"], "afile", errno.ENOTDIR),
    (["predict", "{run}", "{data}", "--out", TOO_LONG + ".csv"], TOO_LONG + ".csv", errno.ENAMETOOLONG),
    (["export", "{run}", "--out", "afile/model"], "afile", errno.ENOTDIR),
    (["explain", "{run}", "{data}", "--out", "afile/overlays"], "afile", errno.ENOTDIR),
    (["embed", "{data}", "--from-run", "{run}", "--out", "afile/map.png"], "afile", errno.ENOTDIR),
], ids=["report-under-a-file", "report-name-too-long", "report-a-file", "predict-under-a-file",
        "predict-name-too-long", "export-under-a-file", "explain-under-a-file", "embed-under-a-file"])
def test_the_cli_refuses_an_output_the_system_would_refuse_in_one_line(shared_run, place, argv, named, code):
    from xrayfeat.cli.main import main

    args = [a.format(run=shared_run.path, data=shared_run.data / "test") for a in argv]
    before = sorted(p.name for p in place.iterdir())
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2, result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"xrayfeat: error: {named}: "), lines
    if code != errno.ENOTDIR or "/" in argv[argv.index("--out") + 1]:
        assert OS_ERRORS[code][0] in lines[0] and OS_ERRORS[code][1] in lines[0]
    assert result.stdout == "" and sorted(p.name for p in place.iterdir()) == before


def test_predict_into_an_existing_folder_is_one_line(shared_run, place):
    from xrayfeat.cli.main import main

    result = CliRunner().invoke(main, ["predict", str(shared_run.path), str(shared_run.data / "test"), "--out", "adir"])
    assert result.exit_code == 2 and len(result.stderr.splitlines()) == 1 and "adir" in result.stderr


def test_report_and_predict_write_to_names_of_255_bytes(shared_run, place):
    from xrayfeat.cli.main import main

    folder, table = "r" * 255, "p" * 251 + ".csv"
    result = CliRunner().invoke(main, ["report", str(shared_run.path), "--out", folder])
    assert result.exit_code == 0, result.output
    assert (place / folder / "report.html").is_file()
    result = CliRunner().invoke(main, ["predict", str(shared_run.path), str(shared_run.data / "test"), "--out", table])
    assert result.exit_code == 0, result.output
    assert (place / table).read_text().startswith("path,")
    assert sorted(p.name for p in place.iterdir() if p.name.startswith(".")) == []  # no temporary left
    assert len(list((place / folder).glob(".*"))) == 0


def test_a_run_of_255_bytes_is_replaced_through_names_within_the_limit(shared_run, place):
    """overwrite=True stages the new run and sets the old one aside beside it: both names derived, both bounded."""
    from xrayfeat.runs import folder

    old, new = shared_run.copy(place / ("o" * 255)), shared_run.copy(place / "staged")
    staged = folder.staging_dir(old)
    assert len(os.fsencode(staged.name)) <= 255 and staged.parent == place and staged.name.startswith(".")
    new.rename(staged)
    (staged / "marker.txt").write_text("the new run")
    folder.replace_run(staged, old)
    assert (old / "marker.txt").read_text() == "the new run" and (old / "config.json").is_file()
    assert sorted(p.name for p in place.iterdir() if p.name.startswith(".")) == []  # the old run is gone, nothing left


def test_explain_names_an_overlay_after_a_long_image_within_the_limit():
    from types import SimpleNamespace

    from xrayfeat.runs.explanation import _stems

    items = [SimpleNamespace(path=Path("/d") / ("x" * 251 + ".png")), SimpleNamespace(path=Path("/e") / ("x" * 251 + ".png"))]
    first, second = _stems(items)
    assert first != second
    for stem in (first, second):
        assert len(os.fsencode(stem + ".png")) <= 255 and len(os.fsencode(stem + ".npz")) <= 255


# --------------------------------------------------------------------------- --cache-dir of the commands that write a cache

CACHE_COMMANDS = {
    "extract": ["extract", "{data}", "-b", "vgg16", "--weights", "none", "--image-size", "32"],
    "fit-head": ["fit-head", "{data}", "-b", "vgg16", "--weights", "none", "--image-size", "32", "--out", "newrun"],
    "embed": ["embed", "{data}", "-b", "vgg16", "--weights", "none", "--image-size", "32", "--out", "map.png"],
    "cache-export": ["cache", "export", "{data}", "-b", "vgg16", "--weights", "none", "--image-size", "32",
                     "--out", "f.npz"],
    "predict": ["predict", "{run}", "{data}", "--out", "p.csv"],
    "explain": ["explain", "{run}", "{data}", "--out", "overlays"],
    "evaluate": ["evaluate", "{run}", "{data}", "--name", "site_b"],
}


@pytest.mark.parametrize("where", ["a-file", "under-a-file", "link-loop"])
@pytest.mark.parametrize("command", CACHE_COMMANDS)
def test_a_cache_dir_that_is_a_file_or_under_one_is_one_line_and_nothing_is_made(shared_run, place, command, where):
    from xrayfeat.cli.main import main

    cache = {"a-file": "afile", "under-a-file": "afile/cache", "link-loop": "loop"}[where]
    run = shared_run.copy(place / "run") if command == "evaluate" else shared_run.path
    args = [a.format(run=run, data=shared_run.data / "test") for a in CACHE_COMMANDS[command]] + ["--cache-dir", cache]
    before = sorted(p.name for p in place.iterdir())
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2, result.output
    lines = result.stderr.splitlines()
    expected = {"a-file": "xrayfeat: error: afile: is a file, not a cache folder: pass --cache-dir a folder",
                "under-a-file": "xrayfeat: error: afile: a part of --cache-dir afile/cache is a file, not a folder: "
                                "pass --cache-dir a folder",
                "link-loop": "xrayfeat: error: loop: too many levels of symbolic links"}[where]
    assert len(lines) == 1 and lines[0].startswith(expected), lines
    assert result.stdout == "" and sorted(p.name for p in place.iterdir()) == before  # no run, cache or output made
    if command == "evaluate":
        assert not (run / "external").exists()


def test_a_cache_folder_that_does_not_exist_yet_is_made(tmp_path):
    from xrayfeat.store.catalog import check_cache_target

    assert check_cache_target(tmp_path / "new" / "cache") == tmp_path / "new" / "cache"
    assert not (tmp_path / "new").exists()  # checked, not made: the command makes it


# --------------------------------------------------------------------------- options that size an allocation

from xrayfeat.options import settings as _settings  # noqa: E402

BOUNDED = {  # option -> (argv before it, its maximum)
    "phantoms-size": (["phantoms", "out", "--size"], _settings.MAX_PHANTOM_SIZE),
    "phantoms-per-class": (["phantoms", "out", "--per-class"], _settings.MAX_PHANTOMS_PER_CLASS),
    "demo-per-class": (["demo", "--out", "out", "--per-class"], _settings.MAX_PHANTOMS_PER_CLASS),
    "extract-batch-size": (["extract", "{data}", "-b", "vgg16", "--cache-dir", "out", "--batch-size"],
                           _settings.MAX_BATCH_SIZE),
    "extract-workers": (["extract", "{data}", "-b", "vgg16", "--cache-dir", "out", "--workers"], _settings.MAX_WORKERS),
    "extract-chunk-images": (["extract", "{data}", "-b", "vgg16", "--cache-dir", "out", "--chunk-images"],
                             _settings.MAX_CHUNK_IMAGES),
    "fit-head-head-batch-size": (["fit-head", "{data}", "-b", "vgg16", "--out", "out", "--head-batch-size"],
                                 _settings.MAX_HEAD_BATCH_SIZE),
    "fit-head-n-bootstrap": (["fit-head", "{data}", "-b", "vgg16", "--out", "out", "--n-bootstrap"],
                             _settings.MAX_BOOTSTRAP),
    "fit-head-bootstrap-old-flag": (["fit-head", "{data}", "-b", "vgg16", "--out", "out", "--bootstrap"],
                                    _settings.MAX_BOOTSTRAP),
    "fit-head-repeats": (["fit-head", "{data}", "-b", "vgg16", "--out", "out", "--repeats"], _settings.MAX_REPEATS),
    "fit-head-units": (["fit-head", "{data}", "-b", "vgg16", "--out", "out", "--units"], _settings.MAX_UNITS),
    "predict-batch-size": (["predict", "{data}", "{data}", "--out", "out/p.csv", "--batch-size"],
                           _settings.MAX_BATCH_SIZE),
}


@pytest.mark.parametrize("case", BOUNDED)
def test_an_option_that_sizes_an_allocation_is_refused_over_its_maximum_before_anything_is_made(tmp_path, monkeypatch,
                                                                                                case):
    from xrayfeat.cli.main import main

    argv, maximum = BOUNDED[case]
    (tmp_path / "data").mkdir()
    monkeypatch.chdir(tmp_path)
    flag = argv[-1]
    result = CliRunner().invoke(main, [a.format(data="data") for a in argv] + [str(maximum + 1)])
    assert result.exit_code == 2, result.output
    [line] = result.stderr.splitlines()
    assert line.startswith(f"xrayfeat: error: Invalid value for '{flag}': {maximum + 1} is not in the range ")
    assert f"<={maximum} (at most {maximum:,}: " in line  # the maximum, and why
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]  # no folder made


@pytest.mark.parametrize("owner, name", [
    (_settings.PhantomOptions, "size"), (_settings.PhantomOptions, "per_class"), (_settings.RunOptions, "batch_size"),
    (_settings.RunOptions, "workers"), (_settings.RunOptions, "chunk_images"), (_settings.HeadOptions, "head_batch_size"),
    (_settings.HeadOptions, "n_bootstrap"), (_settings.HeadOptions, "repeats"), (_settings.HeadOptions, "units"),
])
def test_each_maximum_is_declared_once_accepted_itself_and_refused_past_it_by_the_api(owner, name):
    from xrayfeat.options.constraints import OptionError, declaration

    check = declaration(owner, name)["check"]
    assert check.high is not None and check.why and check.accepts(check.high) and not check.accepts(check.high + 1)
    owner(**({"backbone": "vgg16"} if owner is _settings.FeatureOptions else {}), **{name: check.high}).validate()
    with pytest.raises(OptionError, match=rf"at most {check.high:,}: "):
        owner(**{name: check.high + 1}).validate()


def test_write_phantoms_refuses_a_size_over_its_maximum_before_making_its_folder(tmp_path):
    import xrayfeat as xf
    from xrayfeat.options.constraints import OptionError

    with pytest.raises(OptionError, match=r"'size' parameter of write_phantoms must be an int in \[32, 2048\] \(at most"):
        xf.write_phantoms(tmp_path / "out", size=_settings.MAX_PHANTOM_SIZE + 1, per_class=2)
    assert not (tmp_path / "out").exists()
