"""Subgroup metrics (xrayfeat.analysis.subgroups), their gap warnings, and the groups DICOM headers give."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from xrayfeat.analysis import metrics, scoring
from xrayfeat.analysis.multilabel import score_multilabel
from xrayfeat.analysis.subgroups import GROUP_GAP, by_group, group_gap_warnings
from xrayfeat.data import images
from xrayfeat.data.datasets import Item, discover
from xrayfeat.data.labels import AGE_BANDS, age_band


def _binary(n, accuracy, seed):
    """n binary predictions of which about ``accuracy`` are right, with scores that rank them accordingly."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    right = rng.random(n) < accuracy
    p1 = np.where(right == (y == 1), 0.8, 0.2) + rng.uniform(-0.1, 0.1, n)
    return y, p1


# --------------------------------------------------------------------------- by_group


def test_values_and_unknown_add_up_to_the_images():
    y, p = _binary(60, 0.8, 0)
    sex = ["F", "M", None, "", float("nan")] * 12
    table = by_group({"sex": sex, "view": ["PA"] * 60}, y, p, ["n", "p"], n_boot=50)
    assert list(table) == ["sex", "view"]
    assert table["sex"]["unknown"] == 36 and set(table["sex"]["values"]) == {"F", "M"}
    assert sum(v["n"] for v in table["sex"]["values"].values()) + table["sex"]["unknown"] == 60
    assert table["view"] == {"unknown": 0, "values": {"PA": table["view"]["values"]["PA"]}}
    f = np.array([s == "F" for s in sex])
    alone = metrics.score(y[f], p[f], ["n", "p"], n_boot=0)
    entry = table["sex"]["values"]["F"]
    assert (entry["n"], entry["accuracy"], entry["balanced_accuracy"], entry["roc_auc"]) == (
        12, alone["accuracy"], alone["balanced_accuracy"], alone["roc_auc"])
    assert set(entry["ci"]) == {"accuracy", "balanced_accuracy", "roc_auc"}
    assert json.loads(json.dumps(table)) == table


def test_intervals_resample_the_patients_of_each_value():
    # Each image copied within its own patient: resampling patients draws exactly what resampling the
    # images alone draws, so the intervals are the same; as independent images the copies narrow them.
    y, p = _binary(300, 0.75, 1)
    sex = np.array(["F", "M", "M"])[np.arange(300) % 3]
    alone = by_group({"sex": sex}, y, p, ["n", "p"], n_boot=300, seed=4)
    twice = np.repeat(np.arange(300), 2)
    copied = by_group({"sex": sex[twice]}, y[twice], p[twice], ["n", "p"], groups=[f"p{i}" for i in twice],
                      n_boot=300, seed=4)
    naive = by_group({"sex": sex[twice]}, y[twice], p[twice], ["n", "p"], n_boot=300, seed=4)
    for value in ("F", "M"):
        a, c = alone["sex"]["values"][value], copied["sex"]["values"][value]
        assert c["ci"] == a["ci"]
        assert (c["n"], c["n_patients"], "n_patients" in a) == (2 * a["n"], a["n"], False)
        assert np.diff(naive["sex"]["values"][value]["ci"]["accuracy"])[0] < 0.85 * np.diff(a["ci"]["accuracy"])[0]


def test_multilabel_values_have_macro_and_per_finding_auc():
    rng = np.random.default_rng(2)
    y = (rng.random((240, 3)) < 0.3).astype(float)
    p = np.clip(0.3 * y + rng.random((240, 3)) * 0.7, 0, 1)
    mask = rng.random((240, 3)) > 0.2
    age = np.array(["40-60", "60-80", None], dtype=object)[np.arange(240) % 3]
    table = by_group({"age": age}, y, p, ["A", "B", "C"], multilabel=True, mask=mask, groups=np.arange(240) // 2,
                     n_boot=100)
    entry = table["age"]["values"]["40-60"]
    rows = age == "40-60"
    for j, name in enumerate("ABC"):
        counted = rows & mask[:, j]
        assert entry["per_finding"][name]["roc_auc"] == roc_auc_score(y[counted, j], p[counted, j])
        lo, hi = entry["per_finding"][name]["roc_auc_ci"]
        assert lo <= entry["per_finding"][name]["roc_auc"] <= hi
    assert entry["macro_roc_auc"] == pytest.approx(np.mean([entry["per_finding"][n]["roc_auc"] for n in "ABC"]))
    assert entry["ci"]["macro_roc_auc"][0] <= entry["macro_roc_auc"] <= entry["ci"]["macro_roc_auc"][1]
    assert table["age"]["unknown"] == 80 and entry["n"] == 80 and entry["n_patients"] == 80
    full = score_multilabel(y, mask, p, ["A", "B", "C"], subgroups={"age": age}, groups=np.arange(240) // 2,
                            n_boot=100)
    assert full["by_group"] == table


def test_score_adds_by_group_and_changes_nothing_else():
    y, p = _binary(200, 0.8, 3)
    groups = np.arange(200) // 2
    plain = metrics.score(y, p, ["n", "p"], groups=groups, n_boot=100, seed=1)
    full = metrics.score(y, p, ["n", "p"], groups=groups, n_boot=100, seed=1, subgroups={"sex": ["F", "M"] * 100})
    assert full.pop("by_group") == by_group({"sex": ["F", "M"] * 100}, y, p, ["n", "p"], groups=groups, n_boot=100,
                                            seed=1)
    assert full == plain


@pytest.mark.parametrize("kwargs, match", [
    ({"subgroups": {"sex": ["F"] * 3}}, r"'subgroups\['sex'\]' must have one entry per prediction"),
    ({"subgroups": ["F", "M"]}, "'subgroups' must map group names"),
    ({"mask": np.ones((8, 2), bool)}, "'mask' applies to multi-label"),
])
def test_bad_input_names_the_parameter(kwargs, match):
    y, p = _binary(8, 0.8, 0)
    args = {"subgroups": {"sex": ["F", "M"] * 4}} | kwargs
    with pytest.raises((TypeError, ValueError), match=match):
        by_group(args.pop("subgroups"), y, p, ["n", "p"], n_boot=0, **args)


# --------------------------------------------------------------------------- warnings


def test_a_gap_beyond_both_intervals_warns():
    yf, pf = _binary(400, 0.62, 10)
    ym, pm = _binary(400, 0.85, 11)
    y, p = np.concatenate([yf, ym]), np.concatenate([pf, pm])
    sex = ["F"] * 400 + ["M"] * 400
    m = metrics.score(y, p, ["n", "p"], groups=np.arange(800), n_boot=300, subgroups={"sex": sex})
    found = group_gap_warnings(m["by_group"])
    f, male = m["by_group"]["sex"]["values"]["F"], m["by_group"]["sex"]["values"]["M"]
    shown = (f"sex: accuracy {f['accuracy']:.2f} [{f['ci']['accuracy'][0]:.2f}, {f['ci']['accuracy'][1]:.2f}] "
             f"for F (n=400) against {male['accuracy']:.2f} [{male['ci']['accuracy'][0]:.2f}, "
             f"{male['ci']['accuracy'][1]:.2f}] for M (n=400); the gap exceeds both intervals")
    assert found[0].startswith(shown)
    assert "Seyyed-Kalantari et al. 2021" in found[0]
    assert any(w.startswith("sex: ROC-AUC") for w in found)
    assert GROUP_GAP == "group_gap"


def test_overlapping_intervals_do_not_warn():
    y, p = _binary(400, 0.8, 12)
    m = metrics.score(y, p, ["n", "p"], n_boot=300, subgroups={"sex": ["F", "M"] * 200})
    assert group_gap_warnings(m["by_group"]) == []


def _value(estimate, lo, hi, n=1000, key="accuracy"):
    return {"n": n, key: estimate, "ci": {key: [lo, hi]}}


@pytest.mark.parametrize("values, want", [
    ({"F": _value(0.62, 0.55, 0.69), "M": _value(0.81, 0.76, 0.86)},
     "sex: accuracy 0.62 [0.55, 0.69] for F (n=1000) against 0.81 [0.76, 0.86] for M (n=1000); "),
    ({"F": _value(0.62, 0.55, 0.76), "M": _value(0.81, 0.76, 0.86)}, None),  # touching: not beyond both
    ({"F": _value(0.62, 0.50, 0.80), "M": _value(0.81, 0.76, 0.86)}, None),  # the gap is within F's interval
    ({"F": {"n": 100, "accuracy": 0.5, "ci": {"accuracy": None}}, "M": _value(0.81, 0.76, 0.86)}, None),
    ({"a": _value(0.70, 0.50, 0.95), "b": _value(0.75, 0.72, 0.78), "c": _value(0.60, 0.55, 0.65)},
     "sex: accuracy 0.60 [0.55, 0.65] for c (n=1000) against 0.75 [0.72, 0.78] for b (n=1000)"),
    ({"F": _value(0.70, 0.65, 0.75, key="macro_roc_auc"), "M": _value(0.85, 0.80, 0.90, key="macro_roc_auc")},
     "sex: macro ROC-AUC 0.70 [0.65, 0.75] for F (n=1000) against 0.85 [0.80, 0.90] for M (n=1000)"),
    # a few images: a bootstrap interval that collapsed to a point is not evidence
    ({"40-60": _value(0.44, 0.14, 0.80, n=9), "80+": _value(1.0, 1.0, 1.0, n=4)}, None),
    ({"F": _value(0.50, 0.40, 0.60, n=19, key="roc_auc"), "M": _value(0.90, 0.85, 0.95, key="roc_auc")}, None),
    ({"F": _value(0.50, 0.40, 0.60, n=20, key="roc_auc"), "M": _value(0.90, 0.85, 0.95, key="roc_auc")},
     "sex: ROC-AUC 0.50 [0.40, 0.60] for F (n=20) against 0.90 [0.85, 0.95] for M (n=1000)"),
    # 30 of 30 right: [1.00, 1.00] by the bootstrap, but its Wilson interval reaches down to 0.89
    ({"F": _value(0.85, 0.80, 0.88, n=200), "M": _value(1.0, 1.0, 1.0, n=30)}, None),
    ({"F": _value(0.85, 0.80, 0.88, n=200), "M": _value(1.0, 1.0, 1.0, n=300)},
     "sex: accuracy 0.85 [0.80, 0.88] for F (n=200) against 1.00 [1.00, 1.00] for M (n=300)"),
])
def test_gap_warnings_by_hand(values, want):
    found = group_gap_warnings({"sex": {"unknown": 0, "values": values}})
    if want is None:
        assert found == []
    else:
        assert len(found) == 1 and found[0].startswith(want)


def test_gap_warnings_escape_what_they_carry():
    found = group_gap_warnings({"site\n": {"values": {"a\x1b[31m": _value(0.5, 0.4, 0.6),
                                                      "b": _value(0.9, 0.85, 0.95)}}})
    assert len(found) == 1 and "\n" not in found[0] and "\x1b" not in found[0]
    assert group_gap_warnings(None) == [] and group_gap_warnings({}) == []


def test_min_n_is_a_parameter():
    values = {"F": _value(0.50, 0.40, 0.60, n=10, key="roc_auc"), "M": _value(0.90, 0.85, 0.95, n=10, key="roc_auc")}
    assert group_gap_warnings({"sex": {"values": values}}) == []
    assert len(group_gap_warnings({"sex": {"values": values}}, min_n=10)) == 1


# --------------------------------------------------------------------------- scoring


def _item(name, groups=(), patient=None):
    return Item(Path(f"/x/{name}.png"), f"{name}.png", "a", "test", patient, None, name * 4, 1, None, groups)


def test_evaluate_models_uses_the_items_groups():
    y, p = _binary(40, 0.8, 5)
    items = [_item(f"i{k}", (("age", "60-80"), ("sex", "F" if k % 2 else "M")) if k < 30 else ()) for k in range(40)]
    assert scoring.subgroups_of(items) == {"age": ["60-80"] * 30 + [None] * 10,
                                           "sex": ["M", "F"] * 15 + [None] * 10}
    scored = scoring.evaluate_models({"head": p}, y, ["a", "b"], items, n_boot=50, seed=0)
    assert scored["head"]["by_group"] == by_group(scoring.subgroups_of(items), y, p, ["a", "b"], n_boot=50)
    assert scored["head"]["by_group"]["sex"]["unknown"] == 10
    bare = scoring.evaluate_models({"head": p}, y, ["a", "b"], [_item(f"i{k}") for k in range(40)], n_boot=50, seed=0)
    assert "by_group" not in bare["head"] and scoring.subgroups_of([_item("a")]) is None
    assert bare["head"] == metrics.score(y, p, ["a", "b"], n_boot=50, seed=0)


# --------------------------------------------------------------------------- age bands and DICOM headers


@pytest.mark.parametrize("years, band", [
    (0, "0-20"), (19.99, "0-20"), (20, "20-40"), (39.5, "20-40"), (40, "40-60"), (60, "60-80"), (79, "60-80"),
    (80, "80+"), (104, "80+"), (0.25, "0-20"),
])
def test_age_band(years, band):
    assert age_band(years) == band
    assert band in AGE_BANDS


def _dicom(path: Path, **elements) -> Path:
    from pydicom.dataset import Dataset
    from pydicom.uid import SecondaryCaptureImageStorage

    ds = Dataset()
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.set_pixel_data(np.arange(64, dtype=np.uint8).reshape(8, 8), "MONOCHROME2", 8)
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns that "pa" is not a valid CS value: such files exist
        for key, value in elements.items():
            setattr(ds, key, value)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.mark.parametrize("elements, want", [
    ({"PatientSex": "F", "PatientAge": "065Y", "ViewPosition": "pa"}, (("age", "60-80"), ("sex", "F"), ("view", "PA"))),
    ({"PatientSex": "M", "PatientAge": "012M"}, (("age", "0-20"), ("sex", "M"))),
    ({"PatientAge": "003W", "ViewPosition": "AP"}, (("age", "0-20"), ("view", "AP"))),
    ({"PatientAge": "010D"}, (("age", "0-20"),)),
    ({"PatientAge": "080Y"}, (("age", "80+"),)),
    ({"PatientSex": "O", "PatientAge": "", "ViewPosition": ""}, ()),
    ({}, ()),
])
def test_dicom_groups_from_the_header(tmp_path, elements, want):
    assert images.dicom_groups(_dicom(tmp_path / "x.dcm", **elements)) == want


def test_dicom_groups_read_the_header_only(tmp_path):
    path = _dicom(tmp_path / "x.dcm", PatientSex="F", PatientAge="045Y")
    data = path.read_bytes()
    path.write_bytes(data[:-40])  # pixel data cut short: decoding refuses it, the header still reads
    assert images.dicom_groups(path) == (("age", "40-60"), ("sex", "F"))
    (tmp_path / "notes.dcm").write_bytes(b"patient list\n" * 20)
    assert images.dicom_groups(tmp_path / "notes.dcm") == ()


def test_discovery_gives_dicom_items_their_groups(tmp_path):
    from PIL import Image

    root = tmp_path / "data"
    _dicom(root / "a" / "one.dcm", PatientSex="F", PatientAge="065Y", ViewPosition="PA")
    _dicom(root / "b" / "two.dcm", PatientSex="M")
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(root / "b" / "three.png")
    groups = {item.relpath: item.groups for item in discover(root)}
    assert groups == {"a/one.dcm": (("age", "60-80"), ("sex", "F"), ("view", "PA")), "b/two.dcm": (("sex", "M"),),
                      "b/three.png": ()}
    # a manifest's group column wins, even where its cell is empty; the other groups still come from the header
    (root / "manifest.csv").write_text("path,group:sex\na/one.dcm,M\nb/two.dcm,\n")
    groups = {item.relpath: item.groups for item in discover(root)}
    assert groups["a/one.dcm"] == (("age", "60-80"), ("sex", "M"), ("view", "PA"))
    assert groups["b/two.dcm"] == ()
    manifest = tmp_path / "data" / "list.csv"
    manifest.write_text("path,label,group:view\na/one.dcm,x,LAT\nb/two.dcm,y,\n")
    groups = {item.relpath: item.groups for item in discover(manifest)}
    assert groups == {"a/one.dcm": (("age", "60-80"), ("sex", "F"), ("view", "LAT")), "b/two.dcm": (("sex", "M"),)}
    multi = tmp_path / "data" / "multi.csv"
    multi.write_text("path,Edema,Effusion\na/one.dcm,1,0\nb/two.dcm,-1,\n")
    assert {item.relpath: item.groups for item in discover(multi)}["a/one.dcm"] == (
        ("age", "60-80"), ("sex", "F"), ("view", "PA"))


def test_folders_without_dicom_open_no_header(tmp_path, monkeypatch):
    from conftest import write_tiny_dataset

    def refuse(path):
        raise AssertionError(f"opened {path}")

    monkeypatch.setattr(images, "dicom_groups", refuse)
    dataset = discover(write_tiny_dataset(tmp_path / "d"))
    assert len(dataset) > 0 and all(item.groups == () for item in dataset)
