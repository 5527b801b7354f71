"""Discovering labelled chest X-ray images.

A :class:`Dataset` is the list of labelled image files that every later step
(extraction, heads, baselines, embeddings, reports) works on. It is found by
:func:`discover` in one of three layouts:

``split-folders``
    ``DATA/<split>/<class>/<image>`` with ``<split>`` among :data:`SPLITS`.
``class-folders``
    ``DATA/<class>/<image>``; every image is in the ``train`` split.
``manifest``
    a CSV file with the columns ``path,label[,split][,patient_id][,source]``;
    paths are relative to the CSV's folder and stay inside it, the split defaults
    to ``train``. Instead of ``label``, a ``labels`` column (``A|B``) or one
    column per finding (1, 0, -1 uncertain, blank) makes a multi-label task, and
    ``group:NAME`` columns put images in patient groups: see :mod:`xrayfeat.data.labels`.
    A DICOM file's header puts it in the groups ``sex``, ``age`` and ``view``
    where no such column says otherwise (:func:`xrayfeat.data.images.dicom_groups`).

Every item carries the SHA-256 of its file's bytes, because the feature store is
keyed by content, not by path: the same image in two datasets is extracted once,
and a duplicate file shared by train and test shows up in
:func:`xrayfeat.data.summary.summarize`. Hashing a large folder is the slow part of
discovery, so a JSON cache (``hash_cache=``, see :mod:`xrayfeat.data.hashes`)
remembers each file's hash together with its size, modification time and inode;
an unchanged folder is then discovered at the cost of one ``stat`` per file.

A file that cannot be an image (empty, unreadable, a link loop, a text file in
a class folder, a manifest row whose file is missing) stops discovery with one
line naming it, or, with ``on_error="skip"``, is left out and listed in
:attr:`Dataset.skipped` for extraction to report. Problems with the dataset as a
whole (an empty class folder, a manifest without its columns) always stop it.

Names are data. A class name holding a control character (a newline, an escape,
a bidi override) is refused, and so is a hidden folder where class folders or
images are (``DATA/train/.ipynb_checkpoints``, ``DATA/.x`` beside class folders,
``DATA/a/.x``): a class named ``.ipynb_checkpoints`` is never what was meant, and
leaving it out silently would drop its images. At the root of a split-folder
dataset, where only split folders count, hidden folders (``.git``, ``.cache``) are
left alone, as are version-control folders beside class folders. Hidden *files*
(``.DS_Store``, macOS' ``._name.png`` resource forks) are not images and are skipped. A manifest
naming one column twice is refused (which one would count?), and so is a path
that leaves the manifest's folder, by ``..``, as an absolute path, or through a
symbolic link (of the file or of any folder on its way). A manifest cell that
xrayfeat's own CSV writer protected from spreadsheets (``'=x``, see
:func:`xrayfeat.fileio.csv_cell`) reads as the name it protects.

Class names are sorted with plain ``sorted()``, which is the order Keras'
``flow_from_directory`` gives its class indices (upper case before lower case),
so label indices agree with models trained the classic way. Items are kept in
a stable order: by split (``train``, ``val``, ``test``), then label, then path.
"""

from __future__ import annotations

import csv
import functools
import gc
import logging
import math
import operator
import os
import posixpath
import stat
from collections import Counter, defaultdict
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Iterable, NamedTuple

import numpy as np

from xrayfeat.data import columns, images
from xrayfeat.errors import DatasetError, control_characters, one_line
from xrayfeat.fileio import csv_value
from xrayfeat.data.hashes import HashCache, hash_files
from xrayfeat.data.labels import (FINDING_VALUES, GROUP_COLUMNS, GROUP_PREFIX, UNCERTAIN, finding_value, finding_values,
                                  is_group_column, label_columns, positive_names, split_labels)
from xrayfeat.options.settings import ON_ERROR
from xrayfeat.options.constraints import Choice, OptionError

__all__ = ["SPLITS", "LAYOUTS", "Item", "Skipped", "Dataset", "discover", "printable"]

logger = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
"""The split names a dataset may use, in the order items are listed."""

LAYOUTS = ("split-folders", "class-folders", "manifest")
"""The ways :func:`discover` can find a dataset; stored in :attr:`Dataset.layout`."""

MANIFEST_NAME = "manifest.csv"
"""A manifest with this name inside a folder dataset annotates its items."""

_SPLIT_ORDER = {name: i for i, name in enumerate(SPLITS)}
_ROOT_DOCS = ("manifest.csv", "source.md")  # besides README*, skipped at the root
_JUNK = frozenset({"__MACOSX", "Thumbs.db", "desktop.ini"})  # OS artefacts, skipped everywhere
_VCS = frozenset({".git", ".hg", ".svn", ".dvc"})  # a version-controlled dataset's own folders, skipped at its root
_REQUIRED_COLUMNS = ("path", "label")
_OPTIONAL_COLUMNS = ("split", "patient_id", "source")
_DICOM_GROUPS = frozenset(column[len(GROUP_PREFIX):] for column in GROUP_COLUMNS)  # what images.dicom_groups can state
_SHOW_MISSING = 5  # how many missing manifest files an error names


@dataclass(frozen=True, slots=True, init=False)
class Item:
    """One labelled image file.

    ``path`` is absolute (what readers open; made from ``file``, the same path
    as text, only when asked for: a 224k-image manifest then builds no Path
    object until a file is opened); ``relpath`` is the POSIX path
    relative to the dataset root (what reports and exports show, stable across
    machines); ``sha256`` is the hex digest of the file's bytes (the feature
    store key) and ``nbytes`` its size. ``patient_id`` and ``source`` are
    ``None`` unless a manifest gives them.

    In a multi-label task, ``findings`` holds the value of each finding of
    :attr:`Dataset.classes` as the table gives it (1.0, 0.0, -1.0 uncertain,
    NaN blank) and ``label`` the positive findings joined by ``|`` (empty for
    none); in a single-label task ``findings`` is None. ``groups`` holds the
    image's ``(group, value)`` pairs (``("sex", "F")``), sorted, for the
    subgroup metrics.
    """

    file: str
    relpath: str
    label: str
    split: str
    patient_id: str | None
    source: str | None
    sha256: str
    nbytes: int
    findings: tuple[float, ...] | None = None
    groups: tuple[tuple[str, str], ...] = ()

    def __init__(self, path: str | os.PathLike | None = None, relpath: str | None = None, label: str | None = None,
                 split: str | None = None, patient_id: str | None = None, source: str | None = None,
                 sha256: str | None = None, nbytes: int | None = None, findings: tuple[float, ...] | None = None,
                 groups: tuple[tuple[str, str], ...] = (), *, file: str | None = None) -> None:
        """``Item(path, relpath, label, split, patient_id, source, sha256, nbytes[, findings, groups])``.

        ``path`` (text or a Path) is kept as text in ``file``; ``file=`` is what
        ``dataclasses.replace`` passes. Every field but ``findings`` and
        ``groups`` must be given (``patient_id`` and ``source`` may be None).
        """
        if (path is None) == (file is None):
            raise TypeError("Item() takes the image's path: give path (or file), not both and not neither")
        missing = [name for name, value in (("relpath", relpath), ("label", label), ("split", split),
                                            ("sha256", sha256), ("nbytes", nbytes)) if value is None]
        if missing:
            raise TypeError(f"Item() missing required argument{'s' if len(missing) > 1 else ''}: {', '.join(missing)}")
        values = (os.fspath(path) if file is None else file, relpath, label, split, patient_id, source, sha256, nbytes,
                  findings, groups)
        for name, value in zip(_ITEM_FIELDS, values):
            object.__setattr__(self, name, value)

    @property
    def path(self) -> Path:
        """The file's absolute path (a Path made from :attr:`file`)."""
        return Path(self.file)

    def group(self, name: str) -> str | None:
        """This image's value of group ``name`` (``"sex"``), or None where unknown."""
        for key, value in self.groups:
            if key == name:
                return value
        return None


_ITEM_FIELDS = tuple(f.name for f in fields(Item))  # in the order of Item()'s parameters (path given as file)


def _item_maker():
    """A function making an :class:`Item` from discovery's own checked values, in the order of :data:`_ITEM_FIELDS`.

    It sets the fields as ``Item()`` does, without ``Item()``'s checks of its
    caller's arguments: a third of the cost, which counts 10^5 times.
    """
    new = object.__new__
    s0, s1, s2, s3, s4, s5, s6, s7, s8, s9 = (getattr(Item, name).__set__ for name in _ITEM_FIELDS)

    def make(file, relpath, label, split, patient_id, source, sha256, nbytes, findings, groups):
        item = new(Item)
        s0(item, file), s1(item, relpath), s2(item, label), s3(item, split), s4(item, patient_id)
        s5(item, source), s6(item, sha256), s7(item, nbytes), s8(item, findings), s9(item, groups)
        return item

    return make


_make_item = _item_maker()


@dataclass(frozen=True)
class Skipped:
    """A file of the dataset that discovery left out (``on_error="skip"``), and why.

    ``path``, ``relpath``, ``label`` and ``split`` are those the file would have
    had as an :class:`Item`; ``reason`` says what is wrong and how to fix it.
    """

    path: Path
    relpath: str
    label: str
    split: str
    reason: str


@dataclass(frozen=True)
class Dataset:
    """An ordered, immutable collection of labelled images.

    ``classes`` are the class names in ``sorted()`` order; an item's label index
    (see :attr:`labels`) is its position there. Views made by :meth:`subset`
    keep the same ``classes`` so label indices stay comparable across splits;
    :meth:`select_classes` makes a new task and renumbers them. ``skipped``
    lists the files that discovery left out with ``on_error="skip"`` (empty,
    unreadable, not an image); they are not items, but extraction reports them.

    A multi-label dataset (``multilabel=True``) has findings for classes, in
    its table's order, and each item's values in :attr:`Item.findings`; its
    :attr:`targets` replace :attr:`labels`.

    ``manifest`` is the CSV a ``manifest`` layout was read from (absolute; its
    folder is ``root``), None for folders: what names the data in a run record,
    so that the study can be run again on it (``fit-head --config``).
    """

    root: Path
    items: tuple[Item, ...]
    classes: tuple[str, ...]
    layout: str
    skipped: tuple[Skipped, ...] = ()
    multilabel: bool = False
    manifest: Path | None = None

    @property
    def data_path(self) -> Path:
        """The data as a command takes it again: the manifest of a manifest layout, else the folder."""
        return self.manifest if self.manifest is not None else self.root

    def __len__(self) -> int:
        return len(self.items)

    def __repr__(self) -> str:
        """One line of bounded length whatever the number of items: root, layout, counts, classes, splits."""
        from xrayfeat.data.summary import dataset_repr

        return dataset_repr(self)

    def _repr_html_(self) -> str:
        """In a notebook: the images per class and split, with totals."""
        from xrayfeat.data.summary import dataset_html

        return dataset_html(self)

    def __iter__(self):
        return iter(self.items)

    @property
    def task(self) -> str:
        """``"multilabel"``, ``"binary"`` or ``"multiclass"``."""
        if self.multilabel:
            return "multilabel"
        return "binary" if len(self.classes) == 2 else "multiclass"

    @property
    def targets(self) -> np.ndarray:
        """The finding values of a multi-label dataset, (items, findings) float32: 1, 0, -1 uncertain, NaN blank.

        A single-label dataset gives its labels one-hot, so code written for
        findings reads either.
        """
        if not self.multilabel:
            return np.eye(len(self.classes), dtype=np.float32)[self.labels]
        return finding_values(self.items, len(self.classes))

    @property
    def group_names(self) -> tuple[str, ...]:
        """The patient groups some item belongs to (``sex``, ``age``, ``view``), sorted."""
        return tuple(sorted({key for item in self.items for key, _ in item.groups}))

    @property
    def labels(self) -> np.ndarray:
        """Label indices into :attr:`classes`, one per item, as int64 (a multi-label dataset has :attr:`targets`)."""
        if self.multilabel:
            raise DatasetError(f"{self.root}: a multi-label dataset has no single label per image; "
                               f"read Dataset.targets (one column per finding)")
        index = {name: i for i, name in enumerate(self.classes)}
        return np.fromiter((index[item.label] for item in self.items), dtype=np.int64, count=len(self.items))

    @property
    def hashes(self) -> list[str]:
        """The SHA-256 hex digest of each item, in item order."""
        return [item.sha256 for item in self.items]

    @property
    def paths(self) -> list[Path]:
        """The absolute path of each item, in item order."""
        return [item.path for item in self.items]

    @property
    def splits(self) -> tuple[str, ...]:
        """The splits that have at least one item, in :data:`SPLITS` order."""
        present = {item.split for item in self.items}
        return tuple(name for name in SPLITS if name in present)

    @property
    def has_patients(self) -> bool:
        """Whether any item has a ``patient_id`` (needed for patient-aware splitting)."""
        return any(item.patient_id is not None for item in self.items)

    @property
    def has_sources(self) -> bool:
        """Whether any item has a ``source`` (needed for per-source metric breakdowns)."""
        return any(item.source is not None for item in self.items)

    def subset(self, split: str) -> Dataset:
        """The items of one split, with the same classes (possibly none of them, if the split is absent)."""
        if split not in _SPLIT_ORDER:
            raise DatasetError(f"unknown split {split!r}; allowed: {', '.join(SPLITS)}")
        items = tuple(item for item in self.items if item.split == split)
        skipped = tuple(s for s in self.skipped if s.split == split)
        return replace(self, items=items, skipped=skipped)

    def select_classes(self, names: Iterable[str]) -> Dataset:
        """Keep only the named classes, e.g. covid and normal out of a four-class folder.

        The kept classes are re-sorted, so label indices are those a folder with
        only these classes would give. A single string is taken as one class name.
        In a multi-label dataset every image stays (an image without the kept
        findings is a negative for each) and the findings keep the table's order.
        """
        wanted = {names} if isinstance(names, str) else set(names)
        if not wanted:
            raise DatasetError(f"{self.root}: select at least one class; available: {', '.join(self.classes)}")
        unknown = sorted(wanted.difference(self.classes))
        if unknown:
            raise DatasetError(
                f"{self.root}: unknown class{'es' if len(unknown) > 1 else ''} "
                f"{', '.join(map(repr, unknown))}; available: {', '.join(self.classes)}"
            )
        if self.multilabel:
            return self.with_findings([name for name in self.classes if name in wanted])
        items = tuple(item for item in self.items if item.label in wanted)
        skipped = tuple(s for s in self.skipped if s.label in wanted)
        return replace(self, items=items, classes=tuple(sorted(wanted)), skipped=skipped)

    def with_findings(self, order: Iterable[str]) -> Dataset:
        """This multi-label dataset with the findings ``order``, in that order (a run's, to score it on this data).

        Each image keeps its value of each finding; a finding of ``order`` the
        data lacks is blank (NaN: it counts nowhere), and a finding not in
        ``order`` is left out.
        """
        classes = tuple(order)
        where = {name: i for i, name in enumerate(self.classes)}
        items = []
        for item in self.items:
            values = tuple(item.findings[where[name]] if name in where else math.nan for name in classes)
            items.append(replace(item, findings=values, label=positive_names(values, classes)))
        return replace(self, items=tuple(sorted(items, key=_order)), classes=classes, multilabel=True)


class _Found(NamedTuple):
    """A labelled file found on disk, before it is stat'ed and hashed."""

    path: str  # absolute
    shown_base: str  # with shown_tail, how errors name the file: the way the user wrote it
    shown_tail: str
    relpath: str
    label: str
    split: str
    patient_id: str | None = None
    source: str | None = None
    findings: tuple[float, ...] | None = None
    groups: tuple[tuple[str, str], ...] = ()
    file_stat: os.stat_result | None = None  # when discovery has it already: hashing stats the file no more

    @property
    def shown(self) -> str:
        # joined only when an error needs it: discovery of a large folder stays cheap
        return os.path.join(self.shown_base, self.shown_tail)


class _Problems:
    """Problems with single files: the first stops discovery (``on_error="fail"``), or each is kept (``"skip"``).

    Problems with the dataset as a whole (no classes, an empty class folder, a
    manifest without its columns) always stop it: skipping them would change the task.
    """

    def __init__(self, on_error: str):
        self.skip = on_error == "skip"
        self.skipped: list[Skipped] = []

    def error(self, found: _Found, reason: str) -> DatasetError | None:
        """The error to raise for this file, or None once it is recorded as skipped."""
        if not self.skip:
            return DatasetError(_one_line(f"{found.shown}: {reason}"))
        self.skipped.append(Skipped(Path(found.path), found.relpath, found.label, found.split, _one_line(reason)))
        return None

    def report(self, found: _Found, reason: str) -> None:
        """Stop discovery on this file, or record it as skipped."""
        error = self.error(found, reason)
        if error is not None:
            raise error


def _cycle_collection_paused(function):
    """Run ``function`` with Python's cycle collector paused (and resumed after, if it ran before).

    Discovery allocates an object or three per image and frees no cycles; on
    10^5 images the collector's full passes, each walking every object alive,
    were a third of a warm discovery (4.7 of 14.8 s for 224,316 manifest rows).
    Reference counting still frees everything as usual.
    """

    @functools.wraps(function)
    def paused(*args, **kwargs):
        running = gc.isenabled()
        gc.disable()
        try:
            return function(*args, **kwargs)
        finally:
            if running:
                gc.enable()

    return paused


@_cycle_collection_paused
def discover(data: str | os.PathLike, *, classes: Iterable[str] | None = None,
             hash_cache: str | os.PathLike | None = None, on_error: str = "fail") -> Dataset:
    """Find the labelled images in a folder or CSV manifest and hash them.

    ``data`` is a folder (``DATA/<split>/<class>/*`` or ``DATA/<class>/*``, decided
    by whether its sub-folders are split names) or a ``.csv`` manifest. A folder
    holding a ``manifest.csv`` is still read as folders, but if that manifest has
    a ``path`` column and ``patient_id``/``source`` columns, they annotate the
    items it lists (a manifest with other columns is ignored).

    DICOM files (``.dcm``, ``.dicom``) get the groups their headers state
    (``sex``, ``age`` band, ``view``; see :func:`xrayfeat.data.images.dicom_groups`),
    except a group the manifest has a ``group:NAME`` column for: the column wins,
    even where its cell is empty. Only DICOM headers are read for this.

    ``classes`` keeps only those classes (see :meth:`Dataset.select_classes`);
    files of other classes are neither checked nor hashed. ``hash_cache`` is a
    JSON file reused across runs so unchanged files are not read again.

    ``on_error="skip"`` leaves out, instead of stopping at, single files that
    cannot be images: empty, unreadable, a link loop, a name without an image
    suffix inside a class folder, a manifest row whose file is missing. They are
    listed in :attr:`Dataset.skipped`, so extraction can report each one.

    Raises :class:`~xrayfeat.errors.DatasetError` with a one-line message naming
    the offending file or folder and the fix.
    """
    check = Choice(ON_ERROR)
    if not check.accepts(on_error):
        raise OptionError(f"The 'on_error' parameter of discover must be {check.describe()}. Got {on_error!r} instead.")
    problems = _Problems(on_error)
    suffixes = images.IMAGE_SUFFIXES
    shown_root = os.fspath(data)
    wanted = None if classes is None else ({classes} if isinstance(classes, str) else set(classes))
    absolute = os.path.abspath(shown_root)
    if os.path.isdir(absolute):
        layout, found = _scan_folders(absolute, shown_root, suffixes, wanted, problems)
        root = absolute
        annotations, declared = _read_annotations(os.path.join(absolute, MANIFEST_NAME))
        if annotations:
            found = [
                f._replace(patient_id=annotations[f.relpath][0], source=annotations[f.relpath][1],
                           groups=annotations[f.relpath][2])
                if f.relpath in annotations else f
                for f in found
            ]
    elif os.path.isfile(absolute) and absolute.lower().endswith(".csv"):
        quick = _quick_manifest(absolute, shown_root, suffixes, hash_cache, wanted)
        if quick is not None:
            return quick
        layout = "manifest"
        root = os.path.dirname(absolute)
        found, findings, declared = _read_manifest(absolute, shown_root, suffixes, problems)
        if findings is not None:
            found = _with_dicom_groups(found, declared)
            return replace(_multilabel(Path(root), found, findings, wanted, hash_cache, problems, shown_root),
                           manifest=Path(absolute))
        labels = {f.label for f in found} | {s.label for s in problems.skipped}
        _check_wanted(wanted, labels, shown_root)
        if wanted is not None:
            found = [f for f in found if f.label in wanted]
            problems.skipped = [s for s in problems.skipped if s.label in wanted]
    elif os.path.exists(absolute):
        raise DatasetError(f"{shown_root}: is neither a folder nor a .csv manifest; pass a dataset folder or a CSV file")
    else:
        raise DatasetError(f"{shown_root}: no such folder or CSV file")

    all_classes = sorted({f.label for f in found} | {s.label for s in problems.skipped})
    if not all_classes:
        raise DatasetError(f"{shown_root}: no classes found; expected DATA/<class>/<image>, DATA/<split>/<class>/<image> or a CSV manifest")
    found = _with_dicom_groups(found, declared)
    cache = HashCache(hash_cache)
    items = _hash(found, cache, problems)
    cache.save()
    return Dataset(root=Path(root), items=tuple(sorted(items, key=_order)), classes=tuple(all_classes), layout=layout,
                   skipped=tuple(sorted(problems.skipped, key=_order)),
                   manifest=Path(absolute) if layout == "manifest" else None)


def _multilabel(root: Path, found: list[_Found], findings: tuple[str, ...], wanted: set[str] | None, hash_cache,
                problems: _Problems, shown_root: str) -> Dataset:
    """The multi-label dataset of a manifest's found files: hashed, with only the ``wanted`` findings."""
    _check_wanted(wanted, findings, shown_root)
    cache = HashCache(hash_cache)
    items = _hash(found, cache, problems)
    cache.save()
    dataset = Dataset(root=root, items=tuple(sorted(items, key=_order)), classes=findings, layout="manifest",
                      skipped=tuple(sorted(problems.skipped, key=_order)), multilabel=True)
    return dataset if wanted is None else dataset.select_classes(wanted)


def _order(entry: Item | Skipped) -> tuple[int, str, str]:
    """The stable order of a dataset: by split (train, val, test), then label, then path."""
    return _SPLIT_ORDER[entry.split], entry.label, entry.relpath


def printable(text: str) -> str:
    """``text`` safe to print and to store as UTF-8: bytes of a non-UTF-8 file name shown as ``\\xNN``.

    Python reads such names as lone surrogates ("surrogateescape"), which a
    terminal shows as noise and a UTF-8 JSON or CSV writer refuses.
    """
    try:
        raw = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a surrogate that no file name produces
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return raw.decode("utf-8", "backslashreplace")


def _one_line(text: str) -> str:
    """Keep an error message on one printable line even when a file name holds a newline or non-UTF-8 bytes."""
    return one_line(text)


def _suffix(name: str) -> str:
    """Lower-case extension with the dot ('' for none); a cheaper os.path.splitext for 10^5 names."""
    dot = name.rfind(".")
    return name[dot:].lower() if dot > 0 and "/" not in name[dot:] else ""


def _is_skipped(name: str) -> bool:
    return name.startswith(".") or name in _JUNK


def _list(folder: str, shown: str, *, root: bool = False) -> tuple[list[os.DirEntry], list[os.DirEntry]]:
    """The sub-folders and the other entries of ``folder``, each sorted by name; hidden files and OS junk left out.

    A hidden sub-folder is refused (see :func:`_refuse_hidden`), except at the
    dataset's ``root``, where :func:`_scan_folders` decides once it knows the layout.
    """
    try:
        with os.scandir(folder) as it:
            entries = [entry for entry in it if entry.name not in _JUNK]
    except OSError as error:
        raise DatasetError(_one_line(f"{shown}: cannot list folder ({error.strerror}); check its permissions")) from error
    entries.sort(key=lambda entry: entry.name)
    dirs = [entry for entry in entries if _is_dir(entry)]
    others = [entry for entry in entries if not _is_dir(entry) and not entry.name.startswith(".")]
    if not root:
        _refuse_hidden([d for d in dirs if d.name.startswith(".")], shown)
    return [d for d in dirs if not d.name.startswith(".")], others


def _hidden_folders(folder: str, spared: frozenset[str]) -> list[os.DirEntry]:
    """The hidden sub-folders of ``folder`` but the ``spared`` ones, sorted by name."""
    with os.scandir(folder) as it:
        found = [entry for entry in it if entry.name.startswith(".") and entry.name not in spared and _is_dir(entry)]
    return sorted(found, key=lambda entry: entry.name)


def _refuse_hidden(hidden: list[os.DirEntry], shown: str) -> None:
    """A hidden folder inside a dataset is a problem with the dataset: it would be a class named ``.something``."""
    if hidden:
        raise DatasetError(_one_line(
            f"{os.path.join(shown, hidden[0].name)}: hidden folder inside the dataset (a class name cannot start "
            f"with '.', as Jupyter's .ipynb_checkpoints does); move it out of the dataset or remove it"
        ))


def _check_class_name(label: str, where: str, what: str = "class name", fix: str = "rename the class") -> None:
    """Refuse a class name (or a group's name or value: ``what``) holding control characters: it would reach every
    table, report and terminal line."""
    found = control_characters(label)
    if found:
        raise DatasetError(_one_line(
            f"{where}: the {what} {label!r} holds control character{'s' if len(found) > 1 else ''} "
            f"{', '.join(found)}; {fix} without them"
        ))


def _is_dir(entry: os.DirEntry) -> bool:
    """Whether the entry is a folder (following links); a link loop or an unreadable entry is not."""
    try:
        return entry.is_dir()
    except OSError:
        return False


def _file_problem(entry: os.DirEntry, suffixes: frozenset[str]) -> str | None:
    """Why a file in a class folder cannot be one of its images; None when it can."""
    if _suffix(entry.name) not in suffixes:
        return f"not an image (allowed: {', '.join(sorted(suffixes))}); move it out of the class folder"
    try:
        regular = entry.is_file()
    except OSError as error:  # e.g. a symbolic link that points to itself
        return f"cannot be opened ({error.strerror or error}); replace it with the image file"
    if not regular:
        return "not a regular file (a broken link?); replace it with the image file"
    return None


def _check_wanted(wanted: set[str] | None, available: Iterable[str], shown_root: str) -> None:
    if wanted is None:
        return
    available = sorted(set(available))
    if not wanted:
        raise DatasetError(f"{shown_root}: select at least one class; available: {', '.join(available)}")
    unknown = sorted(wanted.difference(available))
    if unknown:
        raise DatasetError(_one_line(
            f"{shown_root}: unknown class{'es' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}; "
            f"available: {', '.join(available)}"
        ))


def _check_loose_files(entries: list[os.DirEntry], shown: str, suffixes: frozenset[str], where: str) -> None:
    """Images outside a class folder have no label: refuse them rather than drop them.

    Other files at the root or split level (README, LICENSE, metadata tables)
    are left alone.
    """
    for entry in entries:
        if _suffix(entry.name) in suffixes:
            raise DatasetError(_one_line(
                f"{os.path.join(shown, entry.name)}: image {where} has no class; "
                f"move it into a class folder ({shown}/<class>/)"
            ))


def _scan_folders(root: str, shown_root: str, suffixes: frozenset[str],
                  wanted: set[str] | None, problems: _Problems) -> tuple[str, list[_Found]]:
    """Decide the folder layout and list the image files of the wanted classes."""
    subdirs, others = _list(root, shown_root, root=True)
    by_split: dict[str, list[str]] = defaultdict(list)
    for entry in subdirs:
        if entry.name.lower() in _SPLIT_ORDER:
            by_split[entry.name.lower()].append(entry.name)
    loose = [entry for entry in others
             if entry.name.lower() not in _ROOT_DOCS and not entry.name.lower().startswith("readme")]
    if not subdirs:
        raise DatasetError(_one_line(
            f"{shown_root}: no classes found (no sub-folders); "
            f"expected {shown_root}/<class>/<image> or {shown_root}/<split>/<class>/<image>"
        ))
    split_dirs = sum(len(names) for names in by_split.values())
    if split_dirs and split_dirs < len(subdirs):
        names = ", ".join(entry.name for entry in subdirs)
        raise DatasetError(_one_line(
            f"{shown_root}: mixes split folders and other folders (found: {names}); "
            f"use either {shown_root}/<split>/<class>/ with splits {', '.join(SPLITS)}, or {shown_root}/<class>/ only"
        ))
    for split, names in by_split.items():
        if len(names) > 1:
            raise DatasetError(_one_line(
                f"{shown_root}: folders {', '.join(names)} are the same split {split!r}; merge them"
            ))
    _check_loose_files(loose, shown_root, suffixes, "at the dataset root")

    class_dirs: list[tuple[str, str, str]] = []  # (split, class, relative folder)
    if split_dirs:
        layout = "split-folders"
        for entry in subdirs:
            split = entry.name.lower()
            shown_split = os.path.join(shown_root, entry.name)
            dirs, files = _list(entry.path, shown_split)
            _check_loose_files(files, shown_split, suffixes, "in a split folder")
            if not dirs:
                raise DatasetError(_one_line(
                    f"{shown_split}: split folder has no class folders; add {shown_split}/<class>/ folders or remove it"
                ))
            class_dirs.extend((split, d.name, f"{entry.name}/{d.name}") for d in dirs)
    else:  # the root's folders are the class folders: a hidden one would be a class (a .git folder is not)
        layout = "class-folders"
        _refuse_hidden(_hidden_folders(root, _VCS), shown_root)
        class_dirs = [("train", entry.name, entry.name) for entry in subdirs]

    _check_wanted(wanted, (label for _, label, _ in class_dirs), shown_root)
    found: list[_Found] = []
    for split, label, rel_dir in class_dirs:
        if wanted is not None and label not in wanted:
            continue
        _check_class_name(label, os.path.join(shown_root, rel_dir))
        found.extend(_scan_class(root, shown_root, rel_dir, label, split, suffixes, problems))
    return layout, found


def _scan_class(root: str, shown_root: str, rel_dir: str, label: str, split: str,
                suffixes: frozenset[str], problems: _Problems) -> list[_Found]:
    """List one class folder; anything but image files in it is a problem (see :class:`_Problems`)."""
    folder = os.path.join(root, rel_dir)
    shown_dir = os.path.join(shown_root, rel_dir)
    dirs, files = _list(folder, shown_dir)
    if dirs:
        nested = os.path.join(shown_dir, dirs[0].name)
        if any(d.name.lower() in _SPLIT_ORDER for d in dirs):
            hint = f"; if {shown_dir} is the dataset, pass it as DATA"
        elif "/" not in rel_dir:  # class-folders layout: maybe split folders with other names
            hint = f"; if {rel_dir!r} is meant as a split, name the split folders {', '.join(SPLITS)}"
        else:
            hint = ""
        raise DatasetError(_one_line(
            f"{nested}: nested folder inside class folder {label!r}; "
            f"move its images up into {shown_dir} or out of the dataset{hint}"
        ))
    if not files:
        raise DatasetError(_one_line(
            f"{shown_dir}: class folder is empty; add images or remove the folder"
        ))
    found = []
    for entry in files:
        relpath = f"{rel_dir}/{entry.name}"
        file = _Found(entry.path, shown_root, relpath, relpath, label, split)
        problem = _file_problem(entry, suffixes)
        if problem is None:
            found.append(file)
        else:
            problems.report(file, problem)
    return found


def _normalise_relpath(value: str) -> str:
    """A manifest path as a POSIX relative path ('./a\\b.png' -> 'a/b.png')."""
    return posixpath.normpath(value.strip().replace("\\", "/"))


def _read_annotations(manifest: str) -> tuple[dict[str, tuple[str | None, str | None, tuple]] | None, frozenset[str]]:
    """patient_id, source and groups per relpath from a folder's manifest.csv (None if it has no such columns),
    and the names of its ``group:NAME`` columns.

    Written by the phantom generator; a manifest with other columns (like the
    real sample's ``relpath,...,label,...``) or one that cannot be read is ignored.
    """
    try:
        with open(manifest, newline="", encoding="utf-8-sig") as handle:
            reader = csv.reader(handle)
            header = [name.strip().lower() for name in next(reader, [])]
            group_columns = _group_columns(header)
            if "path" not in header or not ({"patient_id", "source"} & set(header) or group_columns):
                return None, frozenset()
            _refuse_duplicate_columns(header, manifest)
            _check_groups(group_columns, manifest)
            i_path = header.index("path")
            i_pid = header.index("patient_id") if "patient_id" in header else None
            i_src = header.index("source") if "source" in header else None
            annotations = {}
            for row in reader:
                if len(row) <= i_path or not row[i_path].strip():
                    continue
                annotations[_normalise_relpath(csv_value(row[i_path].strip()))] = (
                    _cell(row, i_pid), _cell(row, i_src), _groups(row, group_columns))
            return annotations, frozenset(name for name, _ in group_columns)
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        if not isinstance(error, FileNotFoundError):
            logger.debug("ignoring %s: %s", manifest, error)
        return None, frozenset()


def _group_columns(header: list[str]) -> list[tuple[str, int]]:
    """(group name, column index) of each ``group:NAME`` column, the name lower-cased (``group:Sex`` is ``sex``)."""
    return [(name.strip()[len("group:"):].strip().lower(), i) for i, name in enumerate(header)
            if is_group_column(name.strip())]


def _check_groups(columns: list[tuple[str, int]], shown_csv: str) -> None:
    """Refuse two columns of one group (``group:Sex`` and ``group: sex``) and a group name with control characters."""
    first: dict[str, int] = {}
    for name, index in columns:
        if not name:
            raise DatasetError(_one_line(f"{shown_csv}: column {index + 1} is named group: without a group; "
                                         f"name it group:NAME (group:sex, group:age, group:view)"))
        _check_class_name(name, f"{shown_csv}: header", "group name", "rename the group")
        if name in first:
            raise DatasetError(_one_line(
                f"{shown_csv}: the manifest has two columns of the group {name!r} (columns {first[name] + 1} and "
                f"{index + 1}); keep one of them"))
        first[name] = index


def _groups(row: list[str], columns: list[tuple[str, int]], where: tuple[str, int] = ("manifest", 0),
            ) -> tuple[tuple[str, str], ...]:
    """A row's known groups, sorted by name (an empty cell is an unknown group, left out).

    A value is a name like a class's: one holding control characters is refused,
    naming ``where`` (the manifest as shown, and the line).
    """
    pairs = []
    for name, index in columns:
        value = _cell(row, index)
        if value is not None:
            if control_characters(value):
                _check_class_name(value, f"{where[0]}: line {where[1]}, column group:{name}", "group value",
                                  "write the value")
            pairs.append((name, value))
    return tuple(sorted(pairs))


def _shared_groups(row: list[str], columns: list[tuple[str, int]], seen: dict,
                   where: tuple[str, int]) -> tuple[tuple[str, str], ...]:
    """:func:`_groups` of a row, one tuple per combination of group cells (``seen`` keeps them).

    A manifest of 10^5 images has a few dozen combinations of sex, age band and
    view: sharing them keeps 10^5 tuples fewer alive for the collector to walk.
    """
    key = tuple([row[i] if i < len(row) else "" for _, i in columns]) if columns else ()
    groups = seen.get(key)
    if groups is None:
        groups = seen[key] = _groups(row, columns, where)
    return groups


def _with_dicom_groups(found: list[_Found], declared: frozenset[str]) -> list[_Found]:
    """Found files with the groups their DICOM headers state (:func:`images.dicom_groups`) added.

    Only DICOM files are opened, and only their headers; a group the manifest
    has a column for (``declared``) is the manifest's, even where its cell is empty.
    """
    if _DICOM_GROUPS <= declared:  # the manifest has a column for every group a header could state
        return found
    out = []
    for f in found:
        if _suffix(f.path) in images.DICOM_SUFFIXES:
            stated = [(name, value) for name, value in images.dicom_groups(f.path) if name not in declared]
            if stated:
                f = f._replace(groups=tuple(sorted({**dict(stated), **dict(f.groups)}.items())))
        out.append(f)
    return out


def _cell(row: list[str], index: int | None) -> str | None:
    """A stripped optional cell, as written before xrayfeat's CSV writer protected it; empty or absent becomes None."""
    if index is None or index >= len(row):
        return None
    value = row[index].strip()
    if value[:1] == "'":  # only then can csv_value change it (10^5 rows: most cells skip the call)
        value = csv_value(value).strip()
    return value or None


def _cell_text(cell: str) -> str | None:
    """:func:`_cell` of a cell that is there."""
    value = cell.strip()
    if value[:1] == "'":
        value = csv_value(value).strip()
    return value or None


def _refuse_duplicate_columns(header: list[str], shown_csv: str) -> None:
    """A column named twice (``label,...,label``) is ambiguous: which one holds the labels?"""
    first: dict[str, int] = {}
    for number, name in enumerate(header, start=1):
        if name and name in first:
            raise DatasetError(_one_line(
                f"{shown_csv}: the manifest has the column {name!r} twice (columns {first[name]} and {number}); "
                f"keep one of them"
            ))
        first.setdefault(name, number)


class _Containment:
    """Where a manifest's file really is when symbolic links take it out of the manifest's folder.

    Each folder on the files' ways is resolved once, by one ``lstat`` (see
    :meth:`_real`), and whether it lies inside the folder is kept with it; a
    file that is not itself a link then costs one dictionary lookup (a CheXpert
    manifest has 224k files in 134k study folders). :meth:`resolve` resolves
    many folders at once with fewer system calls.
    """

    _LIST_FROM = 32  # a folder with this many sub-folders to resolve is listed once instead (see resolve)

    def __init__(self, base: str):
        self.base = base
        self.real_base = os.path.realpath(base)
        self.prefix = self.real_base.rstrip(os.sep) + os.sep
        self.real_dirs = {base: self.real_base}
        self.plain = {base}  # folders with no link between the base and them: real path = real base + the rest
        self.inside: dict[str, bool] = {}

    def outside(self, path: str, is_link: bool) -> str | None:
        """The real path of ``path`` (a normalised path under the base by name) if it is outside; else None.

        ``is_link`` comes from the row's one ``lstat`` (:func:`_lstat`).
        """
        if "\0" in path:  # no such file (the row's own check says so); realpath would raise
            return None
        folder, _, name = path.rpartition(os.sep)
        if self.holds(folder) and not is_link:
            return None
        real = os.path.realpath(path) if is_link else os.path.join(self._real(folder), name)
        return None if self._within(real) else real

    def holds(self, folder: str) -> bool:
        """Whether ``folder`` (normalised, under the base by name) really lies inside the base."""
        inside = self.inside.get(folder)
        if inside is None:
            inside = self.inside[folder] = self._within(self._real(folder))
        return inside

    def resolve(self, folders: Iterable[str]) -> bool:
        """Whether each of many folders (normalised, under the base by name) really lies inside the base.

        The folders are resolved as :meth:`_real` resolves one, but all at once,
        level by level from the base down, and with fewer system calls: a
        folder with at least ``_LIST_FROM`` sub-folders to resolve is listed
        once, and the entries' types that come with the listing say which are
        links (a CheXpert ``train`` folder's 64k patient folders cost one
        listing, not 64k ``lstat``); any other folder costs one ``lstat``. A
        folder with no link on its way is only remembered as such (its real
        path is the real base's and the rest of its own).
        """
        real_dirs, plain = self.real_dirs, self.plain
        folders = set(folders)
        levels = []  # per level, the deepest first: the folders to resolve, and the parent of each
        todo = [folder for folder in folders if folder not in plain and folder not in real_dirs]
        while todo:
            parents = [folder[:folder.rfind(os.sep)] for folder in todo]
            levels.append((todo, parents))
            todo = [parent for parent in set(parents) if parent and parent not in plain and parent not in real_dirs]
        lstat, link_kind, realpath = os.lstat, stat.S_IFLNK, os.path.realpath
        for todo, parents in reversed(levels):
            listed = {parent: self._listed_links(parent) for parent, count in Counter(parents).items()
                      if count >= self._LIST_FROM}
            for folder, parent in zip(todo, parents):
                if folder in plain or folder in real_dirs:  # a folder can be both listed and the parent of one listed
                    continue
                if not parent or not folder[len(parent) + 1:]:  # the file system's root, or its child (as _real)
                    real_dirs[folder] = realpath(folder)
                    continue
                entries = listed.get(parent)
                if entries is not None:
                    link = entries.get(folder[len(parent) + 1:], False)
                else:  # _is_link, inline: 10^5 folders
                    try:
                        link = lstat(folder).st_mode & 0o170000 == link_kind
                    except (OSError, ValueError):
                        link = False
                if link:
                    real_dirs[folder] = realpath(folder)
                elif parent in plain:
                    plain.add(folder)
                else:
                    real = self._real(parent)
                    real_dirs[folder] = (real if real != os.sep else "") + folder[len(parent):]
        return all(folder in plain or self._within(real_dirs[folder]) for folder in folders)

    @staticmethod
    def _listed_links(parent: str) -> dict[str, bool] | None:
        """Whether each entry of the folder ``parent`` is a symbolic link, by name, from one listing (None: unlisted)."""
        try:
            with os.scandir(parent) as entries:
                return {entry.name: entry.is_symlink() for entry in entries}
        except OSError:
            return None

    def _within(self, real: str) -> bool:
        return real == self.real_base or real.startswith(self.prefix)

    @staticmethod
    def _is_link(folder: str) -> bool:
        link = _lstat(folder)
        return link is not None and stat.S_ISLNK(link.st_mode)

    def _real(self, folder: str) -> str:
        """``os.path.realpath(folder)``, from the nearest folder above it already resolved: one ``lstat`` per new folder.

        A folder that is not a link resolves to its parent's real path joined with
        its name, as ``realpath`` resolves it component by component; a link is
        resolved by ``realpath`` itself.
        """
        real_dirs = self.real_dirs
        todo = []
        while folder not in real_dirs:
            if folder in self.plain:  # resolved by resolve, without a link on its way
                real_dirs[folder] = (self.real_base if self.real_base != os.sep else "") + folder[len(self.base):]
                break
            parent, _, name = folder.rpartition(os.sep)  # a normalised path: os.path.split's answer below the root
            if not parent or not name:  # the file system's root, or its child
                real_dirs[folder] = os.path.realpath(folder)
                break
            todo.append(folder)
            folder = parent
        real = real_dirs[folder]
        for folder in reversed(todo):
            if self._is_link(folder):
                real = os.path.realpath(folder)
            else:
                real = real + folder[folder.rfind(os.sep):] if real != os.sep else folder[folder.rfind(os.sep):]
            real_dirs[folder] = real
        return real


def _lstat(path: str) -> os.stat_result | None:
    """``os.lstat``, or None where ``os.path.islink`` and ``os.path.exists`` would say False (no such file, a NUL)."""
    try:
        return os.lstat(path)
    except (OSError, ValueError):
        return None


def _followed(path: str, link_stat: os.stat_result | None) -> os.stat_result | None:
    """The file's ``os.stat`` given its ``lstat``: the same for anything but a link; None where ``exists`` is False."""
    if link_stat is None or not stat.S_ISLNK(link_stat.st_mode):
        return link_stat
    try:
        return os.stat(path)
    except (OSError, ValueError):
        return None


def _read_manifest(csv_path: str, shown_csv: str, suffixes: frozenset[str],
                   problems: _Problems) -> tuple[list[_Found], tuple[str, ...] | None, frozenset[str]]:
    """Parse a CSV manifest into found files, checking columns, splits and that files exist.

    Returns the found files, for a multi-label manifest its findings (see
    :func:`xrayfeat.data.labels.label_columns`; None for a single-label one),
    and the names of its ``group:NAME`` columns.

    Its values are only ever data: paths are joined to the manifest's folder and
    must stay inside it; nothing is evaluated or handed to a shell.
    """
    base = os.path.dirname(csv_path)
    shown_base = os.path.dirname(shown_csv)
    rows = _manifest_rows(csv_path, shown_csv)
    written, kind, finding_columns, findings, group_columns, col = _manifest_header(next(rows, None), shown_csv)
    named_labels: list[list[str]] = []  # a 'labels' manifest: each found row's findings, valued once all are known
    allowed = ", ".join(sorted(suffixes))
    found: list[_Found] = []
    seen: dict[str, int] = {}
    missing_files: list[str] = []
    bad_splits: dict[str, int] = {}
    containment = _Containment(base)
    base_prefix = base if base.endswith(os.sep) else base + os.sep  # base is absolute and normalised (discover's)
    value_of = FINDING_VALUES.get
    seen_values: dict[tuple, tuple] = {}  # a row's finding cells -> (values, label), shared by the rows that have them
    seen_groups: dict[tuple, tuple] = {}  # a row's group cells -> its groups, likewise
    if kind == "findings" and finding_columns:
        last_finding = max(finding_columns)
        pick = operator.itemgetter(*finding_columns)
        single = len(finding_columns) == 1
    for line, row in enumerate(rows, start=2):
        if not (row and row[0].strip()) and not any(cell.strip() for cell in row):  # the first cell decides most rows
            continue
        value = _cell(row, col["path"])
        if value is None:
            raise DatasetError(f"{shown_csv}: line {line} has an empty path; fill it in or delete the row")
        values, names = None, None
        if kind == "label":
            label = _cell(row, col["label"])
            if label is None:
                raise DatasetError(_one_line(f"{shown_csv}: line {line} ({value}) has an empty label; fill it in or delete the row"))
            _check_class_name(label, f"{shown_csv}: line {line}")
        elif kind == "labels":
            names = split_labels(_cell(row, col["labels"]) or "")
            for name in names:
                _check_class_name(name, f"{shown_csv}: line {line}")
            label = "|".join(names)
        else:
            if len(row) > last_finding:
                cells = (pick(row),) if single else pick(row)
            else:
                cells = tuple(row[i] if i < len(row) else "" for i in finding_columns)
            known = seen_values.get(cells)  # rows share few combinations: one tuple and one label per combination
            if known is None:
                values = tuple(map(value_of, map(str.strip, cells)))  # finding_value's table, without a call per cell
                if None in values:  # a value it refuses: its one line, naming the first such cell
                    where = f"{shown_csv}: line {line}"
                    values = tuple(finding_value(cell, where=where, column=written[i])
                                   for cell, i in zip(cells, finding_columns))
                known = seen_values[cells] = (values, positive_names(values, findings))
            values, label = known
        split = (_cell(row, col["split"]) if "split" in col else None) or "train"
        if split.lower() not in _SPLIT_ORDER:
            bad_splits.setdefault(split, line)
            continue
        split = split.lower()
        path = os.path.normpath(os.path.join(base, value))
        if path.startswith(base_prefix) and os.sep == "/":  # os.path.relpath's answer, by slicing a normalised path
            relpath = path[len(base_prefix):]
        else:
            relpath = Path(os.path.relpath(path, base)).as_posix()
        if relpath == ".." or relpath.startswith("../"):
            raise DatasetError(_one_line(
                f"{shown_csv}: line {line} path {value} leaves the manifest's folder {shown_base or '.'}; "
                f"list only files inside it (or move the manifest up to a folder that holds every image)"
            ))
        link_stat = _lstat(path)
        real = containment.outside(path, link_stat is not None and stat.S_ISLNK(link_stat.st_mode))
        if real is not None:
            raise DatasetError(_one_line(
                f"{shown_csv}: line {line} path {value} leads, through a symbolic link, to {real}, outside the "
                f"manifest's folder {shown_base or '.'}; list only files inside it (copy the image in, or move the "
                f"manifest up to a folder that holds every image)"
            ))
        if path in seen:
            raise DatasetError(_one_line(
                f"{shown_csv}: {value} is listed twice (lines {seen[path]} and {line}); keep one row per image"
            ))
        seen[path] = line
        image = _suffix(value) in suffixes
        st = _followed(path, link_stat) if image else None  # os.path.exists and isfile: one lstat (a stat for a link)
        file = _Found(path, shown_base, value, relpath, label, split,
                      _cell(row, col.get("patient_id")), _cell(row, col.get("source")), values,
                      _shared_groups(row, group_columns, seen_groups, (shown_csv, line)), st)
        if not image:
            problems.report(file, f"not an image (allowed: {allowed}); fix line {line} of {shown_csv}")
        elif st is None and not problems.skip:
            missing_files.append(value)  # named together below
        elif st is None:
            problems.report(file, f"does not exist; fix line {line} of {shown_csv} "
                                  f"(paths are relative to {shown_base or '.'})")
        elif not stat.S_ISREG(st.st_mode):
            problems.report(file, f"not a regular file; fix line {line} of {shown_csv}")
        else:
            found.append(file)
            if names is not None:
                named_labels.append(names)
    if bad_splits:
        listed = ", ".join(f"{value!r} (line {line})" for value, line in bad_splits.items())
        raise DatasetError(_one_line(
            f"{shown_csv}: unknown split value{'s' if len(bad_splits) > 1 else ''} {listed}; allowed: {', '.join(SPLITS)} (empty means train)"
        ))
    if missing_files:
        shown_few = ", ".join(missing_files[:_SHOW_MISSING])
        more = len(missing_files) - _SHOW_MISSING
        raise DatasetError(_one_line(
            f"{shown_csv}: {len(missing_files)} listed file{'s do' if len(missing_files) > 1 else ' does'} not exist: "
            f"{shown_few}{f' and {more} more' if more > 0 else ''}; paths are relative to {shown_base or '.'}"
        ))
    if not found and not problems.skipped:
        raise DatasetError(f"{shown_csv}: manifest has a header but no rows; add one row per image")
    if kind == "labels":
        findings = tuple(sorted({name for names in named_labels for name in names}))
        if not findings:
            raise DatasetError(f"{shown_csv}: the 'labels' column names no finding; write findings as A|B")
        found = [f._replace(findings=tuple(1.0 if name in names else 0.0 for name in findings))
                 for f, names in zip(found, named_labels)]
    return found, findings, frozenset(name for name, _ in group_columns)


class _Header(NamedTuple):
    """What a manifest's header row says (see :func:`_manifest_header`)."""

    written: list[str]  # the column names as written, stripped
    kind: str  # "label", "labels" or "findings" (labels.label_columns)
    finding_columns: list[int]
    findings: tuple[str, ...] | None  # the finding columns' names (None unless kind is "findings")
    group_columns: list[tuple[str, int]]
    col: dict[str, int]  # where each of path, label, split, patient_id, source and labels is


def _manifest_header(first: list[str] | None, shown_csv: str) -> _Header:
    """The manifest's header row read, or refused in one line (empty, a column twice, a required column missing)."""
    if first is None or not any(cell.strip() for cell in first):
        raise DatasetError(f"{shown_csv}: manifest is empty; it needs a header row {','.join(_REQUIRED_COLUMNS + _OPTIONAL_COLUMNS)} and one row per image")
    written = [name.strip() for name in first]
    header = [name.lower() for name in written]
    _refuse_duplicate_columns(header, shown_csv)
    kind, finding_columns = label_columns(written)
    findings = _finding_names(written, finding_columns, shown_csv) if kind == "findings" else None
    group_columns = _group_columns(header)
    _check_groups(group_columns, shown_csv)
    multilabel = kind == "labels" or (finding_columns and "path" in header)  # without a path, nothing reads as findings
    missing = [name for name in _REQUIRED_COLUMNS if name not in header and not (name == "label" and multilabel)]
    if missing:
        raise DatasetError(_one_line(
            f"{shown_csv}: manifest lacks column{'s' if len(missing) > 1 else ''} {', '.join(missing)} "
            f"(found: {', '.join(header)}); required: {', '.join(_REQUIRED_COLUMNS)}, "
            f"optional: {', '.join(_OPTIONAL_COLUMNS)}; or, for a multi-label task, a 'labels' column (A|B) or "
            f"one column per finding (1, 0, -1, blank)"
        ))
    col = {name: header.index(name) for name in _REQUIRED_COLUMNS + _OPTIONAL_COLUMNS + ("labels",) if name in header}
    return _Header(written, kind, finding_columns, findings, group_columns, col)


def _manifest_rows(csv_path: str, shown_csv: str):
    """The manifest's rows as lists of cells, read as they are used (a 224k-row table is never held whole).

    A file that is not UTF-8 CSV, or cannot be read, is refused in one line
    wherever in the file that shows.
    """
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as handle:
            yield from csv.reader(handle)
    except UnicodeDecodeError as error:
        raise DatasetError(f"{shown_csv}: not UTF-8 text; save the manifest as UTF-8 CSV") from error
    except (OSError, csv.Error) as error:
        raise DatasetError(_one_line(f"{shown_csv}: cannot read the manifest ({error}); check the file")) from error


_COLUMNS_FROM_BYTES = 1 << 20  # a manifest this large is read column by column where pyarrow is installed
_CODE_VALUES = (FINDING_VALUES["1"], FINDING_VALUES["0"], FINDING_VALUES["-1"], FINDING_VALUES[""])  # NaN: the same object
_FINDING_CODES = {cell: 0 if value == 1 else 1 if value == 0 else 2 if value == UNCERTAIN else 3
                  for cell, value in FINDING_VALUES.items()}  # a finding cell's index into _CODE_VALUES


def _plain_paths(values: list[str], suffixes: frozenset[str]) -> tuple[bool, bool]:
    """Whether ``os.path.normpath`` leaves each relative path as it is, and whether each names an image (``_suffix``).

    Normal: no ``.`` or ``..`` part, no ``//``, not absolute; found by a few
    searches of the joined paths (a pattern over 10^5 paths takes a second).
    """
    text = "\n" + "\n".join(values) + "\n"
    normal = text.count("\n") == len(values) + 1 and not any(part in text for part in ("\n/", "//", "/\n"))
    if normal and ("/." in text or "\n." in text):  # only then can a part be . or ..
        normal = not any(part in text for part in ("\n./", "/./", "\n.\n", "/.\n", "\n../", "/../", "\n..\n", "/..\n"))
    if "\n." in text:  # a name starting with a dot: the exact way
        return normal, set(map(_suffix, values)) <= suffixes
    tails = {value[value.rfind("."):] for value in values}  # each value's _suffix, before lower() and its checks
    return normal, all(tail[:1] == "." and "/" not in tail and tail.lower() in suffixes for tail in tails)


class _NotClean(Exception):
    """A manifest row that the row-by-row reading must see (it words the refusal, or skips the row)."""


def _quick_manifest(csv_path: str, shown_csv: str, suffixes: frozenset[str], hash_cache,
                    wanted: set[str] | None) -> Dataset | None:
    """A large manifest's dataset read column by column (:mod:`xrayfeat.data.columns`), or None to read it row by row.

    The same dataset as the row-by-row reading (:func:`_read_manifest`,
    :func:`_hash`), items in the same order, for a manifest without a single
    problem: every row names an image file inside the manifest's folder, once,
    with a known split and label values, and every file is a non-empty regular
    file. Anything else (a missing file, a blank row, a bad value, a DICOM file
    whose header could add groups), and a manifest that pyarrow is not
    installed to read or reads otherwise than ``csv.reader``, answers None:
    the row-by-row reading then finds the problem and words its refusal as it
    always has. A refusal of the header, which both readings make alike, is
    raised here.
    """
    if os.sep != "/" or os.path.getsize(csv_path) < _COLUMNS_FROM_BYTES:
        return None
    rows = _manifest_rows(csv_path, shown_csv)
    first = next(rows, None)
    rows.close()
    head = _manifest_header(first, shown_csv)
    table = columns.read_columns(csv_path, first)
    if table is None or table.rows == 0:
        return None
    try:
        items, findings = _quick_items(csv_path, head, table, suffixes, hash_cache, wanted, shown_csv)
    except _NotClean:
        return None
    root = Path(os.path.dirname(csv_path))
    if findings is None:
        return Dataset(root=root, items=items, classes=tuple(sorted({item.label for item in items})),
                       layout="manifest", manifest=Path(csv_path))
    dataset = Dataset(root=root, items=items, classes=findings, layout="manifest", multilabel=True,
                      manifest=Path(csv_path))
    return dataset if wanted is None else dataset.select_classes(wanted)


def _quick_items(csv_path: str, head: _Header, table: columns.CsvColumns, suffixes: frozenset[str], hash_cache,
                 wanted: set[str] | None, shown_root: str) -> tuple[tuple[Item, ...], tuple[str, ...] | None]:
    """The items of a clean manifest in dataset order, and its findings (None: single-label); :class:`_NotClean` else."""
    n, col = table.rows, head.col
    base = os.path.dirname(csv_path)
    base_prefix = base if base.endswith(os.sep) else base + os.sep

    values = [cell.strip() for cell in table.column(col["path"]).to_pylist()]
    if any(value[:1] == "'" for value in values):
        values = [_cell_text(value) or "" for value in values]
    if not all(values):  # an empty path, or a blank row
        raise _NotClean
    normal, all_images = _plain_paths(values, suffixes)
    if not all_images:
        raise _NotClean  # a file that is not an image
    if normal:
        paths = [base_prefix + value for value in values]  # os.path.normpath(os.path.join(base, value)), as it is
        relpaths = values
    else:
        paths = [os.path.normpath(os.path.join(base, value)) for value in values]
        if not all(path.startswith(base_prefix) for path in paths):
            raise _NotClean  # leaves the manifest's folder
        relpaths = [path[len(base_prefix):] for path in paths]
    if len(set(paths)) != n:
        raise _NotClean  # a file listed twice
    if not _DICOM_GROUPS <= {name for name, _ in head.group_columns} and any(
            _suffix(value) in images.DICOM_SUFFIXES for value in values):
        raise _NotClean  # a DICOM header may add groups

    if "split" in col:
        split_of = {name: name for name in SPLITS}
        splits, names, split_codes = columns.per_row(
            table.column(col["split"]), lambda cell: split_of.get((_cell_text(cell) or "train").lower()))
        if None in names:
            raise _NotClean
        split_codes = np.array([_SPLIT_ORDER[name] for name in names], dtype=np.int64)[split_codes]
    else:
        splits, split_codes = ["train"] * n, np.zeros(n, dtype=np.int64)
    labels, findings, finding_rows, label_codes, label_names = _quick_labels(head, table)
    patient_ids = columns.per_row(table.column(col["patient_id"]), _cell_text)[0] if "patient_id" in col else [None] * n
    sources = columns.per_row(table.column(col["source"]), _cell_text)[0] if "source" in col else [None] * n
    groups = _quick_groups(head.group_columns, table)

    containment = _Containment(base)
    if not containment.resolve({path[:path.rfind(os.sep)] for path in paths}):
        raise _NotClean  # a symbolic link on the way leads out of the manifest's folder
    cache = HashCache(hash_cache)
    sizes: list[int] = []
    digests = cache.lookup_many(paths, _regular_stats(paths, containment, sizes))  # no stat is held
    # as the row-by-row reading: the classes asked for are checked once every file is found, before any is read
    _check_wanted(wanted, label_names if findings is None else findings, shown_root)
    if findings is None and wanted is not None:  # the other classes' files are neither hashed nor kept
        keep = [i for i, label in enumerate(labels) if label in wanted]
        paths, relpaths, labels, splits, patient_ids, sources, sizes, digests, finding_rows, groups = (
            [seq[i] for i in keep] for seq in (paths, relpaths, labels, splits, patient_ids, sources, sizes, digests,
                                               finding_rows, groups))
        keep = np.array(keep, dtype=np.int64)
        split_codes, label_codes = split_codes[keep], label_codes[keep]
    if 0 in sizes:
        raise _NotClean  # an empty file (of a class asked for)
    todo = [i for i, digest in enumerate(digests) if digest is None]
    if todo:  # files new to the cache, or changed
        stats, fresh = hash_files([paths[i] for i in todo], cache, lambda i, reason: _NotClean())
        for i, st, digest in zip(todo, stats, fresh):
            sizes[i], digests[i] = st.st_size, digest
    cache.save()
    del cache  # not held while the items are made: a lower peak
    items = list(map(_make_item, paths, relpaths, labels, splits, patient_ids, sources, digests, sizes,
                     finding_rows, groups))

    # the dataset's order (_order): split, then label, then path; relpaths are distinct, so one order fits
    by_name = {name: rank for rank, name in enumerate(sorted(set(label_names)))}
    label_rank = np.array([by_name[name] for name in label_names], dtype=np.int64)[label_codes]
    path_rank = np.empty(len(items), dtype=np.int64)
    path_rank[np.array(sorted(range(len(items)), key=relpaths.__getitem__), dtype=np.int64)] = np.arange(len(items))
    key = (split_codes * len(by_name) + label_rank) * len(items) + path_rank
    return tuple(map(items.__getitem__, np.argsort(key, kind="stable").tolist())), findings


def _regular_stats(paths: list[str], containment: _Containment, sizes: list[int]):
    """Each file's ``stat`` (followed through a link that stays inside), its size added to ``sizes``.

    One ``lstat`` per file, as the row-by-row reading takes; a missing file, a
    link leading out, or anything but a regular file raises :class:`_NotClean`.
    """
    lstat, regular, add = os.lstat, stat.S_IFREG, sizes.append
    try:
        for path in paths:
            st = lstat(path)
            if st.st_mode & 0o170000 != regular:
                if not stat.S_ISLNK(st.st_mode) or containment.outside(path, True) is not None:
                    raise _NotClean
                st = _followed(path, st)
                if st is None or not stat.S_ISREG(st.st_mode):
                    raise _NotClean
            add(st.st_size)
            yield st
    except (OSError, ValueError):
        raise _NotClean from None


def _quick_labels(head: _Header, table: columns.CsvColumns) -> tuple[list[str], tuple[str, ...] | None, list, np.ndarray,
                                                                 list[str]]:
    """Each row's label and findings (None for a single-label task) as :func:`_read_manifest` gives them.

    Returns the labels, the findings, each row's finding values, and each
    row's index into the last: the labels their rows share.
    """
    n, kind = table.rows, head.kind
    if kind == "label":
        labels, names, codes = columns.per_row(table.column(head.col["label"]), _cell_text)
        if None in names or any(map(control_characters, names)):
            raise _NotClean
        return labels, None, [None] * n, codes, names
    if kind == "labels":
        named, lists, codes = columns.per_row(table.column(head.col["labels"]),
                                              lambda cell: split_labels(_cell_text(cell) or ""))
        findings = tuple(sorted({name for names in lists for name in names}))
        if not findings or any(control_characters(name) for name in findings):
            raise _NotClean
        names = ["|".join(names) for names in lists]
        rows = [tuple(1.0 if name in names else 0.0 for name in findings) for names in lists]
        picked = codes.tolist()
        return list(map(names.__getitem__, picked)), findings, list(map(rows.__getitem__, picked)), codes, names
    findings = head.findings
    if not findings:
        raise _NotClean
    codes, sizes = [], []
    for index in head.finding_columns:
        cells, cell_codes = columns.distinct(table.column(index))
        known = [_FINDING_CODES.get(cell.strip()) for cell in cells]
        if None in known:
            raise _NotClean  # a value a finding cannot hold
        codes.append(np.array(known, dtype=np.int8)[cell_codes])
        sizes.append(4)
    first, combination = columns.combine(codes, sizes, n)
    value_codes = np.stack([column[first] for column in codes], axis=1)  # (combinations, findings) of 0..3
    objects = np.empty(len(_CODE_VALUES), dtype=object)
    objects[:] = _CODE_VALUES
    rows = list(zip(*objects[value_codes.T].tolist()))  # the very objects the row-by-row reading puts there
    positive = value_codes == 0
    if len(findings) < 63:  # the label is the set of positive findings: named once per set
        sets = positive.astype(np.int64) @ (np.int64(1) << np.arange(len(findings), dtype=np.int64))
        first_set, set_of = np.unique(sets, return_index=True, return_inverse=True)[1:]
        names = [positive_names(values, findings) for values in map(rows.__getitem__, first_set.tolist())]
        label_codes = set_of.reshape(-1)[combination]
    else:
        names = [positive_names(values, findings) for values in rows]
        label_codes = combination
    picked = combination.tolist()
    return (list(map(names.__getitem__, label_codes.tolist())), findings, list(map(rows.__getitem__, picked)),
            label_codes, names)


def _quick_groups(group_columns: list[tuple[str, int]], table: columns.CsvColumns) -> list[tuple[tuple[str, str], ...]]:
    """Each row's groups as :func:`_shared_groups` gives them: one tuple per combination of group cells."""
    n = table.rows
    if not group_columns:
        return [()] * n
    codes, sizes, values = [], [], []
    for _, index in group_columns:
        cells, cell_codes = columns.distinct(table.column(index))
        texts = [_cell_text(cell) for cell in cells]
        if any(text is not None and control_characters(text) for text in texts):
            raise _NotClean
        codes.append(cell_codes)
        sizes.append(len(cells))
        values.append(texts)
    first, combination = columns.combine(codes, sizes, n)
    shared = []
    for row in first.tolist():
        pairs = [(name, texts[column[row]]) for (name, _), texts, column in zip(group_columns, values, codes)]
        shared.append(tuple(sorted(pair for pair in pairs if pair[1] is not None)))
    return list(map(shared.__getitem__, combination.tolist()))


def _finding_names(written: list[str], columns: list[int], shown_csv: str) -> tuple[str, ...]:
    """The findings of a manifest with one column per finding: the columns' names, checked."""
    names = tuple(written[i] for i in columns)
    for name in names:
        _check_class_name(name, f"{shown_csv}: header")
    return names


def _hash(found: list[_Found], cache: HashCache, problems: _Problems) -> list[Item]:
    """Items for the found files, with their sizes and SHA-256 (from ``cache`` where it is current).

    An empty or unreadable file stops here, or is left out (see :class:`_Problems`).
    """
    stats, digests = hash_files([f.path for f in found], cache, lambda i, reason: problems.error(found[i], reason),
                                known=[f.file_stat for f in found])
    items = []
    for f, st, digest in zip(found, stats, digests):
        if digest is not None:
            items.append(_make_item(f.path, f.relpath, f.label, f.split, f.patient_id, f.source, digest, st.st_size,
                                    f.findings, f.groups))
    return items


def gather_images(inputs: Iterable[str | os.PathLike], *, hash_cache: str | os.PathLike | None = None) -> Dataset:
    """Unlabelled images to classify: image files, folders (searched recursively) and CSV files with a ``path`` column.

    No class folders are needed; every item has ``label=""`` and ``split=""``.
    Paths in a CSV are relative to the CSV. Order: inputs in the order given,
    files within a folder sorted; a file named twice is kept once. Raises
    :class:`~xrayfeat.errors.DatasetError` (one line) for a missing input, a
    file that is not an image, a CSV without a ``path`` column, or no images at all.
    """
    suffixes = images.IMAGE_SUFFIXES
    found: list[_Found] = []
    seen: set[str] = set()
    shown_inputs = [os.fspath(p) for p in inputs]
    for shown in shown_inputs:
        absolute = os.path.abspath(shown)
        if os.path.isdir(absolute):
            paths = sorted(os.path.join(folder, name) for folder, dirs, names in os.walk(absolute)
                           for name in names if _suffix(name) in suffixes and not _is_skipped(name)
                           and not any(_is_skipped(part) for part in os.path.relpath(folder, absolute).split(os.sep)
                                       if part != "."))
            pairs = [(p, shown, os.path.relpath(p, absolute)) for p in paths]
        elif os.path.isfile(absolute) and _suffix(absolute) == ".csv":
            pairs = [(p, os.path.dirname(shown), rel) for p, rel in _csv_paths(absolute, shown)]
        elif os.path.isfile(absolute):
            if _suffix(absolute) not in suffixes:
                raise DatasetError(f"{shown}: not an image file (expected one of {', '.join(sorted(suffixes))}) "
                                   f"or a CSV of paths; pass images, folders or a CSV")
            pairs = [(absolute, os.path.dirname(shown), os.path.basename(shown))]
        else:
            raise DatasetError(f"{shown}: no such file or folder")
        for path, base, tail in pairs:  # (absolute path, how the user named its folder, the rest)
            if path not in seen:
                seen.add(path)
                found.append(_Found(path, base, tail, posixpath.join(*Path(tail).parts), "", ""))
    if not found:
        raise DatasetError(f"{', '.join(shown_inputs) or '(nothing)'}: no images found "
                           f"({', '.join(sorted(suffixes))}); pass image files, folders or a CSV with a path column")
    cache = HashCache(hash_cache)
    items = _hash(found, cache, _Problems("fail"))
    cache.save()
    root = os.path.commonpath([os.path.dirname(f.path) for f in found])
    return Dataset(root=Path(root), items=tuple(items), classes=(), layout="images")


def _csv_paths(csv_path: str, shown: str) -> list[tuple[str, str]]:
    """(absolute path, path as written) of each row of a CSV with a ``path`` column, relative to the CSV."""
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as fh:
            header, *rows = list(csv.reader(fh)) or [[]]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DatasetError(_one_line(f"{shown}: cannot read this CSV ({exc}); save it as UTF-8 CSV")) from None
    header = [name.strip().lower() for name in header]
    if not rows or "path" not in header:
        raise DatasetError(f"{shown}: a CSV of images needs a 'path' column (one image path per row)")
    _refuse_duplicate_columns(header, shown)
    column = header.index("path")
    folder = os.path.dirname(csv_path)
    out = []
    for line, row in enumerate(rows, start=2):
        value = _cell(row, column)
        if not value:
            continue
        if "\0" in value:
            raise DatasetError(f"{shown}: line {line}: the path holds a NUL byte; write the image's file path there")
        path = os.path.normpath(os.path.join(folder, value))
        if os.path.isdir(path) or not Path(value).name or Path(value).name in (".", ".."):
            raise DatasetError(f"{shown}: line {line}: {value!r} names a folder, not an image file; "
                               f"list one image file per row")
        out.append((path, value))
    return out
