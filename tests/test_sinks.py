"""Names are data: every name reaching a terminal line, a CSV, Markdown or HTML is encoded for that sink.

One encoder per sink: :func:`xrayfeat.errors.one_line` (terminal: every line the CLI prints goes out
through ``cli.kit.say`` or its table console), :func:`xrayfeat.fileio.csv_cell` (CSV, OWASP's formula
neutralisation, undone by :func:`~xrayfeat.fileio.csv_value` when xrayfeat reads its own CSVs),
``report.document.md_text`` / ``html_text`` / ``url_path`` (the report). Names that cannot be data
safely (class names with control characters, hidden class folders) are refused at discovery, with a
manifest naming a column twice or leaving its folder through a symbolic link.
"""

from __future__ import annotations

import ast
import csv
import html
import html.parser
import io
import json
import logging
import os
import re
import shutil
import urllib.parse
from pathlib import Path
from types import SimpleNamespace

import pytest

from conftest import SHARED_RUN_OPTIONS, run_cli
from xrayfeat.data.datasets import discover, gather_images
from xrayfeat.errors import DatasetError, one_line
from xrayfeat.fileio import csv_cell, csv_rows, csv_text, csv_value

ROOT = Path(__file__).resolve().parents[1]
FEATURES = ["-b", "vgg16", "--weights", SHARED_RUN_OPTIONS["weights"], "--image-size", str(SHARED_RUN_OPTIONS["image_size"])]

#: A file name that, printed raw, would end the line and print a forged error, move the cursor back over it,
#: clear it, break the line again and reverse the rest.
FORGED = "x\nxrayfeat: error: forged\r\x1b[2K\x85\u2028\u2029\u202egnp.png"
FORGED_SHOWN = "x\\nxrayfeat: error: forged\\r\\x1b[2K\\x85\\u2028\\u2029\\u202egnp.png"


# --------------------------------------------------------------------------- terminal


@pytest.mark.parametrize("char, shown", [
    ("\n", "\\n"), ("\r", "\\r"), ("\t", "\\t"), ("\x00", "\\x00"), ("\x07", "\\x07"), ("\x08", "\\x08"),
    ("\x0b", "\\x0b"), ("\x0c", "\\x0c"), ("\x1b", "\\x1b"), ("\x1f", "\\x1f"), ("\x7f", "\\x7f"),
    ("\x85", "\\x85"), ("\x9b", "\\x9b"), ("\u2028", "\\u2028"), ("\u2029", "\\u2029"), ("\u202e", "\\u202e"),
    ("\u202a", "\\u202a"), ("\u2066", "\\u2066"), ("\u2069", "\\u2069"), ("\u200f", "\\u200f"),
    ("\udcff", "\\xff"),  # a non-UTF-8 byte of a file name, as Python reads it
], ids=["LF", "CR", "TAB", "NUL", "BEL", "BS", "VT", "FF", "ESC", "US", "DEL", "NEL", "CSI", "LS", "PS", "RLO", "LRE", "LRI",
        "PDI", "RLM", "non-UTF-8-byte"])
def test_one_line_escapes_every_control_character(char, shown):
    line = one_line(f"a{char}b")
    assert line == f"a{shown}b"
    assert len(line.splitlines()) == 1 and one_line(line) == line  # one line, and escaping twice changes nothing


def test_one_line_keeps_printable_text():
    text = "é 日本 ✓ 🫁 \\n ' \" [bold] <b>"
    assert one_line(text) == text


def _copy_of_shared_data(shared_run, tmp_path) -> tuple[Path, Path]:
    """The shared run's data and its feature cache, copied: extract finds every feature and starts no TensorFlow."""
    data = Path(shutil.copytree(shared_run.data, tmp_path / "data"))
    return data, shared_run.copy_cache(tmp_path / "cache")


@pytest.mark.parametrize("mode", ["skip", "skip-json", "fail"])
def test_a_file_name_cannot_forge_an_error_line(shared_run, tmp_path, mode):
    """A broken file named with a newline, a carriage return, an escape sequence, U+2028 and a bidi override:
    stderr holds exactly xrayfeat's lines, the name shown escaped in its one line, in every mode."""
    data, cache = _copy_of_shared_data(shared_run, tmp_path)
    (data / "test" / "b" / FORGED).write_bytes(b"")
    args = ["extract", data, *FEATURES, "--cache-dir", cache]
    shown = f"{data / 'test' / 'b'}/{FORGED_SHOWN}: is empty (0 bytes): remove or replace it"
    if mode == "fail":
        proc = run_cli(*args)
        assert proc.returncode == 2
        assert proc.stderr.split("\n") == [f"xrayfeat: error: {shown}", ""]
        return
    proc = run_cli(*args, "--on-error", "skip", *(["--json"] if mode == "skip-json" else []))
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.split("\n")
    if mode == "skip-json":  # the human summary goes to stderr, the JSON object to stdout
        summary = lines.pop(-2)
        assert " 18 reused, 1 skipped " in summary and summary.isprintable()
        [line] = proc.stdout.splitlines()
        assert line.isascii()
        assert json.loads(line)["skipped_files"] == [f"{data / 'test' / 'b' / FORGED}: is empty (0 bytes): remove or replace it"]
    random, skipped, end = lines
    assert random.startswith("xrayfeat: warning: vgg16 runs with RANDOM weights") and end == ""
    assert skipped == f"xrayfeat: warning: skipped {shown}"


def test_every_warning_and_error_line_is_one_line():
    """The log handler every warning reaches (xrayfeat's own and ``warnings.warn`` through it) writes one line."""
    from click.testing import CliRunner

    from xrayfeat.cli.kit import _OneLineHandler, handle_errors

    handler = _OneLineHandler()
    record = logging.makeLogRecord({"msg": "skipped %s: %s", "args": (FORGED, "bad\nxrayfeat: error: x"),
                                    "levelno": logging.WARNING, "levelname": "WARNING"})

    def command():
        handler.emit(record)
        raise DatasetError(f"{FORGED}: broken")

    import click

    result = CliRunner().invoke(click.command()(handle_errors(command)))
    assert result.exit_code == 2
    assert result.output.split("\n") == [f"xrayfeat: warning: skipped {FORGED_SHOWN}: bad\\nxrayfeat: error: x",
                                         f"xrayfeat: error: {FORGED_SHOWN}: broken", ""]


def test_tables_show_names_as_data(capsys):
    """A rich table of names: no escape sequence, no markup, no line that starts with a forged prefix."""
    from rich.table import Table

    from xrayfeat.cli.kit import console

    table = Table(title=f"run {FORGED}")
    table.add_column(f"[link=https://evil.example]{FORGED}[/link]")
    table.add_row(f"[bold red]{FORGED}[/bold red]")
    console(False).print(table)
    console(False).print(FORGED)
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\r" not in out and "\u202e" not in out and "\u2028" not in out
    assert not [line for line in out.split("\n") if line.startswith("xrayfeat")]
    assert "[link=https://evil.example]" in out and "[bold red]" in out and FORGED_SHOWN[:20] in out


def test_no_command_prints_but_through_the_escaping_helpers():
    """Every line a command prints goes through kit.say or kit.console: nobody can forget to escape a name."""
    printing = []
    for path in sorted((ROOT / "xrayfeat" / "cli").glob("*.py")):
        if path.name == "kit.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call):
                name = ast.unparse(node.func)
                if name in ("print", "click.echo", "click.secho", "sys.stdout.write", "sys.stderr.write") \
                        or name.endswith("Console"):
                    printing.append(f"{path.name}:{node.lineno} {name}")
    assert printing == []


# --------------------------------------------------------------------------- CSV


@pytest.mark.parametrize("value, cell", [
    ('=HYPERLINK("http://evil.example","x")', '\'=HYPERLINK("http://evil.example","x")'),
    ("@SUM(1)", "'@SUM(1)"), ("-2+3.png", "'-2+3.png"), ("+cmd|' /C calc'!A0", "'+cmd|' /C calc'!A0"),
    ("\t=1", "'\t=1"), ("\r=1", "'\r=1"), ("\n=1", "'\n=1"), (" =1+1", "' =1+1"), ("-", "'-"), ("-inf", "'-inf"),
    ("'quoted", "''quoted"),  # a leading quote is doubled, so reading back is exact
    ("-0.25", "-0.25"), ("+1", "+1"), ("1e-05", "1e-05"), ("-3", "-3"),  # numbers stay numbers
    ("normal", "normal"), ("a=b", "a=b"), ("", ""), (0.5, "0.5"), (-2, "-2"), (None, ""),
])
def test_csv_cells_never_run_as_formulas_and_read_back_exactly(value, cell):
    assert csv_cell(value) == cell
    assert csv_value(cell) == ("" if value is None else str(value))


def test_csv_value_leaves_hand_written_quotes_alone():
    assert csv_value("'quoted'") == "'quoted'" and csv_value("'") == "'"


def test_csv_text_neutralises_headers_and_round_trips():
    rows = [["path", "=cls", "@x"], ["-2+3.png", 0.123456789, -1.5]]
    text = csv_text(rows, float_format=".3g")
    assert next(csv.reader(io.StringIO(text))) == ["path", "'=cls", "'@x"]
    assert csv_rows(text) == [["path", "=cls", "@x"], ["-2+3.png", "0.123", "-1.5"]]


# --------------------------------------------------------------------------- a run with hostile names

#: Class names and file names a spreadsheet would run, and that HTML or Markdown would read as markup.
HOSTILE_CLASSES = ('=HYPERLINK("http://evil.example/?x","<script>alert(1)</script>")',
                   "@SUM(1)|`x` [a](http://evil.example) ![i](http://evil.example/i.png) <b onmouseover=alert(2)>")
HOSTILE_FILES = ("-2+3", "=1+1|<script>alert(3)<script>", "@a `b`", "+c [d](http:evil.example)", "# f")


def _is_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


def _formula_cells(path: Path) -> list[str]:
    """Cells of a CSV that a spreadsheet would run: starting with = + - @ tab CR (after blanks), and not a number."""
    with open(path, newline="") as fh:
        cells = [cell for row in csv.reader(fh) for cell in row]
    return [c for c in cells if (c[:1] in ("\t", "\r") or c.lstrip()[:1] in ("=", "+", "-", "@")) and not _is_number(c)]


def _renamed(value, names: dict):
    """A JSON value with every key and every string equal to an old class name renamed."""
    if isinstance(value, dict):
        return {names.get(k, k): _renamed(v, names) for k, v in value.items()}
    if isinstance(value, list):
        return [_renamed(v, names) for v in value]
    return names.get(value, value) if isinstance(value, str) else value


def _item(relpath, sha256, label, patient_id=None, source=None):
    return SimpleNamespace(relpath=relpath, sha256=sha256, label=label, patient_id=patient_id, source=source, groups=())


@pytest.fixture(scope="module")
def hostile_run(shared_run, tmp_path_factory):
    """A copy of the shared run whose classes, image files, data folder and run folder carry hostile names.

    Its CSVs are rewritten by xrayfeat's own writers (``write_predictions``, ``write_splits``), its
    ``metrics.json`` and ``config.json`` renamed, the changed files' sha256 recorded: no training, no
    TensorFlow. Then ``predict --out`` on the renamed images (their features are cached) and a report.
    """
    import numpy as np

    import xrayfeat as xf
    from xrayfeat.fileio import file_digest
    from xrayfeat.runs.record import write_predictions, write_splits

    tmp = tmp_path_factory.mktemp("hostile")
    names = dict(zip(("a", "b"), HOSTILE_CLASSES))
    data = tmp / "data <b>|`x`"
    data.mkdir()
    files = {}  # the shared data's relpath -> its hostile name, a copy of the file in data
    for i, source in enumerate(sorted(shared_run.data.glob("*/*/*.png"))):
        files[source.relative_to(shared_run.data).as_posix()] = name = f"{HOSTILE_FILES[i % len(HOSTILE_FILES)]} {i}.png"
        shutil.copyfile(source, data / name)
    run = shared_run.copy(tmp / "run <script>alert(4)<script> |x| `y` [z](http:evil.example)")
    for file in ("predictions.csv", "predictions-val.csv"):
        header, *rows = csv_rows((run / file).read_text())
        models = list(dict.fromkeys(column.split(":")[0] for column in header[6:]))
        items = [_item(files[r[0]], r[1], names[r[4]], r[2] or None, r[3] or None) for r in rows]
        probabilities = {m: np.array([[float(v) for v in r[6 + 2 * k:8 + 2 * k]] for r in rows]) for k, m in enumerate(models)}
        write_predictions(run / file, items, [int(r[5]) for r in rows], list(HOSTILE_CLASSES), probabilities)
    header, *rows = csv_rows((run / "splits.csv").read_text())
    write_splits(run / "splits.csv", [(_item(files[r[3]], r[0], names[r[2]]), r[1]) for r in rows])
    (run / "metrics.json").write_text(json.dumps(_renamed(json.loads((run / "metrics.json").read_text()), names)))
    record = _renamed(json.loads((run / "config.json").read_text()), names)
    record["data"] = str(data)
    for key in ("predictions", "predictions_val", "splits", "metrics"):
        record["artifacts"][key]["sha256"] = file_digest(run / record["artifacts"][key]["file"])
    (run / "config.json").write_text(json.dumps(record))
    predicted = tmp / "predict.csv"
    xf.predict(run, [data], out=predicted, cache_dir=shared_run.copy_cache(tmp / "cache"))
    report = xf.write_report([run], tmp / "report")
    return {"data": data, "run": run, "predict": predicted, "report": report}


def test_hostile_names_in_every_csv_are_neutralised_and_read_back(hostile_run):
    import xrayfeat as xf

    run = hostile_run["run"]
    for path in [run / "predictions.csv", run / "predictions-val.csv", run / "splits.csv", run / "history.csv",
                 hostile_run["predict"]]:
        assert _formula_cells(path) == [], path
    with open(run / "predictions.csv", newline="") as fh:
        header, *rows = list(csv.reader(fh))
    assert {"'" + c for c in HOSTILE_CLASSES if c[0] in "=@"} <= {row[4] for row in rows}
    assert any(row[0].startswith("'-2+3 ") for row in rows)  # the file "-2+3 0.png", neutralised
    loaded = xf.load_run(run)
    assert loaded.classes == sorted(HOSTILE_CLASSES)
    table = loaded.predictions()  # read back: the names as they were
    assert set(table["label"]) == set(HOSTILE_CLASSES)
    assert any(p.startswith("-2+3 ") for p in table["path"])
    assert [f"head:{c}" for c in sorted(HOSTILE_CLASSES)] == [c for c in table.columns if c.startswith("head:")]
    assert set(loaded.record.split_hashes().values()) == {"train", "val", "test"}
    with open(hostile_run["predict"], newline="") as fh:
        predicted = {row["head:predicted"] for row in csv.DictReader(fh)}
    assert predicted <= {"'" + c if c[0] in "=@" else c for c in HOSTILE_CLASSES}


class _Tags(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


def test_hostile_names_in_the_report_are_text_in_html_and_markdown(hostile_run):
    from markdown_it import MarkdownIt

    page = Path(hostile_run["report"]["html"]).read_text()
    parser = _Tags()
    parser.feed(page)
    assert not [tag for tag, _ in parser.tags if tag in ("script", "iframe", "object", "embed")]
    assert not [(tag, name) for tag, attrs in parser.tags for name in attrs if name.startswith("on")]
    assert all(attrs["src"].startswith("data:image/png;base64,") for tag, attrs in parser.tags if tag == "img")
    assert all(attrs["href"].startswith("#") for tag, attrs in parser.tags if tag == "a")
    for name in HOSTILE_CLASSES:
        assert one_line(name).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;") \
            .replace("'", "&#x27;") in page

    # the Markdown, rendered as GitHub would (tables, strikethrough, raw HTML allowed)
    markdown = Path(hostile_run["report"]["markdown"]).read_text()
    rendered = MarkdownIt("commonmark", {"html": True}).enable(["table", "strikethrough"]).render(markdown)
    parser = _Tags()
    parser.feed(rendered)
    tags = [tag for tag, _ in parser.tags]
    assert not set(tags) & {"script", "iframe", "object", "embed", "ol", "blockquote", "del", "s"}, set(tags)
    assert tags.count("h1") == 1
    assert all(attrs["href"].startswith("#") for tag, attrs in parser.tags if tag == "a")
    assert all(attrs["src"].startswith("figures/") for tag, attrs in parser.tags if tag == "img")
    uneven = []  # a "|" in a name never adds a cell
    for table in rendered.split("<table>")[1:]:
        head, *rows = table.split("</table>")[0].split("</tr>")
        uneven += [row for row in rows if "<td" in row and len(re.findall("<td[ >]", row)) != len(re.findall("<th[ >]", head))]
    assert uneven == []
    assert "alert(1)" in rendered and "alert(4)" in rendered  # the class and run names are there, as text


@pytest.mark.parametrize("name", ["# heading", "- item", "+ item", "1. first", "2) second", "> quote", "=== x", "---",
                                  "[a]: http://evil.example", "*a* _b_ ~~c~~ `d` **e**", "x](http://evil.example)",
                                  "![i](http://evil.example/i.png)", "<b>&amp;</b>", "end ##", "a|b"])
def test_markdown_shows_a_name_at_any_place_as_its_text(name):
    """A name that starts a paragraph, a list item or a heading, fills a table cell, captions a figure or names its
    file: the Markdown shows its characters, never a heading, list, quote, link, image, emphasis or extra cell."""
    from markdown_it import MarkdownIt

    from xrayfeat.report.document import Figure, Figures, Heading, List, Para, Span, Table, render_markdown

    png = b"\x89PNG\r\n\x1a\n" + b"\0" * 30
    blocks = [Heading(2, name), Para(name), Para([name, Span(name, "code")], cls="note"), List([name, [Span(name, "link", "x")]]),
              Table(["h", name], [[name, [Span("[", "sub"), name, Span("](#y)", "sub")]]]),
              Figures([Figure(name, png, f"figures/{name}.png")])]
    rendered = MarkdownIt("commonmark", {"html": True}).enable(["table", "strikethrough"]).render(render_markdown(blocks))
    parser = _Tags()
    parser.feed(rendered)
    tags = [tag for tag, _ in parser.tags]
    assert tags.count("h2") == 1 and tags.count("li") == 2 and tags.count("td") == 2 and tags.count("img") == 1
    assert set(tags) <= {"h2", "p", "em", "code", "ul", "li", "a", "table", "thead", "tbody", "tr", "th", "td", "img", "br"}
    assert tags.count("em") == 2  # the note, and the figure's caption: nothing more
    assert [attrs["href"] for tag, attrs in parser.tags if tag == "a"] == ["#x"]
    [src] = [attrs["src"] for tag, attrs in parser.tags if tag == "img"]
    assert urllib.parse.unquote(src) == f"figures/{name}.png"  # one URL, whatever the name holds
    shown = html.unescape(re.sub("<[^>]+>", "", rendered))
    assert shown.count(name) >= 6  # heading, paragraph, note, list item, cell, caption


# --------------------------------------------------------------------------- discovery


def _png(path: Path, seed: int = 0) -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("L", (5, 4), seed).save(path)
    return path


def _two_classes(root: Path, *, split: str | None = "train") -> Path:
    base = root / split if split else root
    for k, label in enumerate(("a", "b")):
        _png(base / label / f"{label}.png", k)
    return root


@pytest.mark.parametrize("where", ["train/.ipynb_checkpoints", ".hidden", "train/a/.ipynb_checkpoints"],
                         ids=["in-a-split", "beside-class-folders", "in-a-class"])
@pytest.mark.parametrize("on_error", ["fail", "skip"])
def test_a_hidden_folder_where_classes_or_images_are_is_a_dataset_problem(tmp_path, where, on_error):
    data = _two_classes(tmp_path / "data", split=None if where == ".hidden" else "train")
    _png(data / where / "copy.png", 9)
    with pytest.raises(DatasetError) as caught:
        discover(data, on_error=on_error)
    message = str(caught.value)
    assert message.startswith(f"{data / where}: hidden folder") and message.endswith("move it out of the dataset or remove it")


def test_hidden_files_and_tool_folders_at_the_root_are_left_alone(tmp_path):
    data = _two_classes(tmp_path / "data")
    (data / "train" / "a" / ".DS_Store").write_bytes(b"junk")
    (data / "train" / "a" / "._a.png").write_bytes(b"AppleDouble")
    _png(data / ".git" / "x.png")  # a version-controlled split-folder dataset
    assert [item.relpath for item in discover(data)] == ["train/a/a.png", "train/b/b.png"]
    flat = _two_classes(tmp_path / "flat", split=None)
    _png(flat / ".git" / "x.png")  # beside class folders too
    assert discover(flat).classes == ("a", "b")


@pytest.mark.parametrize("name", ["a\nb", "c\x1b[31m", "d\u202eg", "e\u2028f", "f\x85g", "g\x7fh", "h\ti"],
                         ids=["newline", "escape", "bidi-override", "line-separator", "NEL", "DEL", "tab"])
def test_a_class_name_with_control_characters_is_refused(tmp_path, name):
    data = _two_classes(tmp_path / "data")
    _png(data / "train" / name / "x.png", 5)
    with pytest.raises(DatasetError, match="holds control character") as caught:
        discover(data, on_error="skip")
    assert str(caught.value).startswith(one_line(str(data / "train" / name) + ": the class name"))
    assert len(str(caught.value).splitlines()) == 1
    manifest = tmp_path / "data" / "m.csv"
    manifest.write_text(csv_text([["path", "label"], ["train/a/a.png", "a"], ["train/b/b.png", name]]))
    with pytest.raises(DatasetError, match=r"m\.csv: line 3: the class name .* holds control character"):
        discover(manifest)


def test_a_control_character_class_is_one_line_and_exit_2_from_the_cli(tmp_path):
    data = _two_classes(tmp_path / "data")
    _png(data / "train" / "b\nxrayfeat: error: forged" / "x.png", 5)
    proc = run_cli("inspect", data)
    assert proc.returncode == 2
    [line] = proc.stderr.splitlines()
    assert line.startswith(f"xrayfeat: error: {data}/train/b\\nxrayfeat: error: forged: the class name")


@pytest.mark.parametrize("header", ["path,label,label", "path,label,Label", "path, label,split,label ", "path,label,x,x"],
                         ids=["label-twice", "label-Label", "label-with-blanks", "other-column-twice"])
@pytest.mark.parametrize("on_error", ["fail", "skip"])
def test_a_manifest_naming_a_column_twice_is_a_dataset_problem(tmp_path, header, on_error):
    data = _two_classes(tmp_path / "data")
    manifest = data / "m.csv"
    width = header.count(",") + 1
    manifest.write_text(header + "\n" + "train/a/a.png" + ",a" * (width - 1) + "\n" + "train/b/b.png" + ",b" * (width - 1) + "\n")
    with pytest.raises(DatasetError, match=r"m\.csv: the manifest has the column '(label|x)' twice \(columns \d and \d\); keep one"):
        discover(manifest, on_error=on_error)


def test_a_folder_manifest_naming_an_annotation_column_twice_is_refused(tmp_path):
    data = _two_classes(tmp_path / "data")
    (data / "manifest.csv").write_text("path,patient_id,patient_id\ntrain/a/a.png,p1,p2\n")
    with pytest.raises(DatasetError, match=r"manifest\.csv: the manifest has the column 'patient_id' twice"):
        discover(data)


def test_a_csv_of_images_naming_path_twice_is_refused(tmp_path):
    data = _two_classes(tmp_path / "data")
    (data / "new.csv").write_text("path,path\ntrain/a/a.png,train/b/b.png\n")
    with pytest.raises(DatasetError, match="the column 'path' twice"):
        gather_images([data / "new.csv"])


def test_a_trailing_empty_column_is_no_duplicate(tmp_path):
    data = _two_classes(tmp_path / "data")
    (data / "m.csv").write_text("path,label,,\ntrain/a/a.png,a,,\ntrain/b/b.png,b,,\n")
    assert discover(data / "m.csv").classes == ("a", "b")


@pytest.mark.parametrize("link", ["file", "folder", "folder-then-up"])
@pytest.mark.parametrize("on_error", ["fail", "skip"])
def test_a_manifest_path_leaving_its_folder_through_a_symbolic_link_is_refused(tmp_path, link, on_error):
    data = _two_classes(tmp_path / "data")
    outside = _png(tmp_path / "elsewhere" / "secret.png", 7)
    if link == "file":
        os.symlink(outside, data / "train" / "b" / "link.png")
        row = "train/b/link.png"
    elif link == "folder":
        os.symlink(outside.parent, data / "train" / "more")
        row = "train/more/secret.png"
    else:  # a link inside the folder whose target's own link points out
        os.symlink(tmp_path / "elsewhere", data / "out")
        os.symlink("../out", data / "train" / "in")
        row = "train/in/secret.png"
    manifest = data / "m.csv"
    manifest.write_text(f"path,label\ntrain/a/a.png,a\n{row},b\n")
    with pytest.raises(DatasetError) as caught:
        discover(manifest, on_error=on_error)
    assert str(caught.value) == (
        f"{manifest}: line 3 path {row} leads, through a symbolic link, to {outside}, outside the manifest's folder "
        f"{data}; list only files inside it (copy the image in, or move the manifest up to a folder that holds every image)")


def test_a_nul_byte_in_a_manifest_path_is_a_missing_file_not_a_crash(tmp_path):
    data = _two_classes(tmp_path / "data")
    (data / "m.csv").write_text("path,label\ntrain/a/a.png,a\ntrain/b/b\0.png,b\n")
    with pytest.raises(DatasetError, match=r"1 listed file does not exist: train/b/b\\x00\.png"):
        discover(data / "m.csv")
    assert len(discover(data / "m.csv", on_error="skip")) == 1


def test_a_symbolic_link_that_stays_inside_the_manifest_folder_is_fine(tmp_path):
    data = _two_classes(tmp_path / "data")
    os.symlink("b", data / "train" / "alias")
    os.symlink("../a/a.png", data / "train" / "b" / "a-again.png")
    manifest = data / "m.csv"
    manifest.write_text("path,label\ntrain/a/a.png,a\ntrain/alias/b.png,b\ntrain/b/a-again.png,b\n")
    assert len(discover(manifest)) == 3


def test_a_manifest_written_by_xrayfeat_reads_back_its_names(tmp_path):
    data = _two_classes(tmp_path / "data")
    _png(data / "-2+3.png", 3)
    manifest = data / "m.csv"
    manifest.write_text(csv_text([["path", "label", "source"], ["train/a/a.png", "=a", "@site"],
                                  ["train/b/b.png", "'b", "-x"], ["-2+3.png", "'b", "+y"]]))
    assert "'-2+3.png" in manifest.read_text() and "''b" in manifest.read_text()
    dataset = discover(manifest)
    assert dataset.classes == ("'b", "=a")
    assert sorted(item.relpath for item in dataset) == ["-2+3.png", "train/a/a.png", "train/b/b.png"]
    assert sorted(item.source for item in dataset) == ["+y", "-x", "@site"]
