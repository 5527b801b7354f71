"""Tests for xrayfeat.data.converters and ``xrayfeat manifest``: each dataset's official tables, in their exact format,
over a few phantom image files written into tmp_path.

Counts are checked against the tables' own (computed here from the table text, independently of the converter);
refusals through the command line, one line and exit 2; the written manifest read back by discover.
"""

from __future__ import annotations

import csv
import gzip
import io
import itertools
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import run_cli_here
from xrayfeat.api import convert_manifest
from xrayfeat.data.converters import CONVERTERS, DATASET_NAMES
from xrayfeat.data.converters.chexpert import OBSERVATIONS
from xrayfeat.data.converters.common import age_group, patient_split, sex_group, view_group
from xrayfeat.data.converters.nih import NIH_FINDINGS, NO_FINDING
from xrayfeat.data.datasets import discover
from xrayfeat.errors import DatasetError
from xrayfeat.options.constraints import OptionError

_counter = itertools.count(1)


def image(path: Path, fmt: str = "PNG") -> Path:
    """A tiny image file, its pixels (hence bytes) unlike every other one written here; fmt "DCM": bytes only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    n = next(_counter)
    if fmt == "DCM":  # existence is all a converter checks
        path.write_bytes(b"\0" * 128 + b"DICM" + n.to_bytes(4, "big"))
        return path
    picture = Image.new("L", (4, 3))
    picture.putpixel((0, 0), n % 256)
    picture.putpixel((1, 0), n // 256 % 256)
    picture.save(path, format=fmt)
    return path


def table_rows(path: Path) -> list[dict]:
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rt", newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def manifest_rows(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def refused(result, *words: str) -> None:
    """A refusal: exit 2, one line on stderr, no traceback, naming each of ``words``."""
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("xrayfeat: error: "), result.stderr
    for word in words:
        assert word in lines[0], (word, lines[0])
    assert "Traceback" not in result.stderr


# --------------------------------------------------------------------------- NIH ChestX-ray14

NIH_TABLE = """\
Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y],
00000001_000.png,Cardiomegaly,0,1,58,M,PA,2682,2749,0.143,0.143,
00000001_001.png,Cardiomegaly|Emphysema,1,1,58,M,PA,2894,2729,0.143,0.143,
00000001_002.png,Cardiomegaly|Effusion,2,1,58,M,PA,2500,2048,0.168,0.168,
00000002_000.png,No Finding,0,2,81,M,PA,2500,2048,0.171,0.171,
00000003_000.png,Hernia,0,3,081Y,F,PA,2582,2991,0.143,0.143,
00000003_001.png,Hernia|Infiltration,1,3,74,F,AP,2500,2048,0.168,0.168,
00000004_000.png,Mass|Nodule,0,4,82,M,AP,2500,2048,0.168,0.168,
00000005_000.png,No Finding,0,5,15,F,PA,2048,2500,0.168,0.168,
00000006_000.png,Atelectasis|Pleural_Thickening,0,6,19,F,AP,2500,2048,0.168,0.168,
00000007_000.png,Pneumothorax,0,7,145,M,PA,2992,2991,0.143,0.143,
"""
NIH_TRAIN_VAL = ["00000001_000.png", "00000001_001.png", "00000001_002.png", "00000003_000.png", "00000003_001.png",
                 "00000005_000.png", "00000007_000.png"]
NIH_TEST = ["00000002_000.png", "00000004_000.png", "00000006_000.png"]
NIH_MISSING = "00000004_000.png"


def nih_root(tmp_path: Path, *, lists: bool = True, table: str = NIH_TABLE) -> Path:
    """ROOT in the Kaggle layout (images_001/images, images_002/images), one listed image missing."""
    root = tmp_path / "nih"
    root.mkdir()
    (root / "Data_Entry_2017.csv").write_text(table)
    names = [line.split(",")[0] for line in table.splitlines()[1:]]
    for i, name in enumerate(names):
        if name != NIH_MISSING:
            image(root / f"images_00{1 + i % 2}" / "images" / name)
    if lists:
        (root / "train_val_list.txt").write_text("\n".join(NIH_TRAIN_VAL) + "\n")
        (root / "test_list.txt").write_text("\n".join(NIH_TEST) + "\n")
    return root


def test_nih_counts_patients_and_official_split_are_the_tables_own(tmp_path):
    root = nih_root(tmp_path)
    out = tmp_path / "nih.csv"
    result = run_cli_here("manifest", "nih", root, "--out", out, "--json")
    assert result.returncode == 0, result.stderr
    kept = [r for r in table_rows(root / "Data_Entry_2017.csv") if r["Image Index"] != NIH_MISSING]
    record = json.loads((tmp_path / "nih.csv.json").read_text())
    assert json.loads(result.stdout)["findings"] == record["findings"]
    assert record["table_rows"] == 10 and record["images"] == 9 == len(kept)
    assert record["missing"] == 1 and record["missing_paths"] == [NIH_MISSING]
    assert record["patients"] == len({r["Patient ID"] for r in kept})
    for name in (*NIH_FINDINGS, NO_FINDING):
        positives = sum(name in r["Finding Labels"].split("|") for r in kept)
        assert record["findings"][name] == {"positive": positives, "negative": 9 - positives, "uncertain": 0, "blank": 0}
    expected_split = {n: "train" for n in NIH_TRAIN_VAL} | {n: "test" for n in NIH_TEST}
    rows = manifest_rows(out)
    assert {Path(r["path"]).name: r["split"] for r in rows} == {r["Image Index"]: expected_split[r["Image Index"]] for r in kept}
    assert record["splits"] == {"train": 7, "val": 0, "test": 2}
    assert record["split_rule"].startswith("official")
    assert [t["path"] for t in record["tables"]] == [str(root / n) for n in ("Data_Entry_2017.csv", "train_val_list.txt",
                                                                             "test_list.txt")]
    assert all(len(t["sha256"]) == 64 for t in record["tables"])
    # groups: sex as given, age banded (058Y-style strings and ages over 100 kept), view as given
    first = rows[0]
    assert first["path"] == "nih/images_001/images/00000001_000.png"
    assert (first["patient_id"], first["source"], first["group:sex"], first["group:age"], first["group:view"]) == (
        "1", "nih", "M", "40-60", "PA")
    by_name = {Path(r["path"]).name: r for r in rows}
    assert by_name["00000003_000.png"]["group:age"] == "80+" and by_name["00000007_000.png"]["group:age"] == "80+"
    assert by_name["00000006_000.png"]["group:age"] == "0-20" and by_name["00000003_001.png"]["group:view"] == "AP"
    # the missing image: named on stderr as a warning, beside the record
    assert "1 image listed in the tables does not exist" in result.stderr and NIH_MISSING in result.stderr


def test_nih_manifest_is_discovered_as_a_multilabel_dataset(tmp_path):
    root = nih_root(tmp_path)
    out = root / "manifest.csv"  # in ROOT itself: paths relative to ROOT
    result = convert_manifest("nih", root, out)
    dataset = discover(out)
    assert dataset.multilabel and dataset.classes == (*NIH_FINDINGS, NO_FINDING)
    assert len(dataset) == result.images == 9
    targets = dataset.targets
    assert targets.shape == (9, 15)
    column = dict(zip(dataset.classes, targets.T))
    assert column["Cardiomegaly"].sum() == result.findings["Cardiomegaly"]["positive"] == 3
    assert column[NO_FINDING].sum() == 2 and not np.isnan(targets).any()
    for item in dataset:
        assert item.source == "nih" and item.group("sex") in ("F", "M") and item.group("view") in ("PA", "AP")
        assert item.relpath.startswith("images_00")
    assert {item.split for item in dataset} == {"train", "test"}


def test_nih_without_split_lists_is_split_by_patient_deterministically(tmp_path):
    root = nih_root(tmp_path, lists=False)
    first = convert_manifest("nih", root, tmp_path / "a.csv", seed=3)
    again = convert_manifest("nih", root, tmp_path / "b.csv", seed=3)
    assert "patient-grouped" in first.split_rule and "seed 3" in first.split_rule
    assert first.options == {"seed": 3}
    rows = manifest_rows(tmp_path / "a.csv")
    assert rows == manifest_rows(tmp_path / "b.csv")
    splits_of = {}
    for row in rows:
        splits_of.setdefault(row["patient_id"], set()).add(row["split"])
    assert all(len(s) == 1 for s in splits_of.values())
    assert first.splits == again.splits
    # the rule itself: about 70/10/20 of patients, independent of order
    split = patient_split(0)
    shares = Counter(split(str(i)) for i in range(5000))
    assert abs(shares["train"] / 5000 - 0.7) < 0.03 and abs(shares["val"] / 5000 - 0.1) < 0.02
    assert patient_split(0)("42") == split("42")


@pytest.mark.parametrize("cell,shown", [("Cardiomegaly|Pneumonitis", "'Pneumonitis'"),
                                        ("No Finding|Mass", "'No Finding|Mass'")])
def test_nih_unknown_finding_is_refused_naming_line_and_value(tmp_path, cell, shown):
    table = NIH_TABLE.replace("Mass|Nodule", cell)
    root = nih_root(tmp_path, table=table)
    result = run_cli_here("manifest", "nih", root, "--out", tmp_path / "nih.csv")
    refused(result, "Data_Entry_2017.csv", "line 8", "Finding Labels", shown)
    assert not (tmp_path / "nih.csv").exists() and not (tmp_path / "nih.csv.json").exists()


def test_a_table_without_the_official_columns_is_refused_naming_it(tmp_path):
    table = NIH_TABLE.replace("Patient Gender", "Sex", 1)
    root = nih_root(tmp_path, table=table)
    result = run_cli_here("manifest", "nih", root, "--out", tmp_path / "nih.csv")
    refused(result, str(root / "Data_Entry_2017.csv"), "'Patient Gender'", "official")


# --------------------------------------------------------------------------- CheXpert

CHEXPERT_HEADER = ("Path,Sex,Age,Frontal/Lateral,AP/PA,No Finding,Enlarged Cardiomediastinum,Cardiomegaly,Lung Opacity,"
                   "Lung Lesion,Edema,Consolidation,Pneumonia,Atelectasis,Pneumothorax,Pleural Effusion,Pleural Other,"
                   "Fracture,Support Devices")
CHEXPERT_TRAIN = CHEXPERT_HEADER + """
CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg,Female,68,Frontal,AP,1.0,,,,,,,,,0.0,,,,1.0
CheXpert-v1.0-small/train/patient00002/study2/view1_frontal.jpg,Female,87,Frontal,AP,,,-1.0,1.0,,-1.0,-1.0,,-1.0,,-1.0,,1.0,
CheXpert-v1.0-small/train/patient00002/study1/view1_frontal.jpg,Female,83,Frontal,AP,,,,1.0,,,-1.0,,,,,,1.0,
CheXpert-v1.0-small/train/patient00002/study1/view2_lateral.jpg,Female,83,Lateral,,,,,1.0,,,-1.0,,,,,,1.0,
CheXpert-v1.0-small/train/patient00003/study1/view1_frontal.jpg,Male,41,Frontal,PA,,,,,,1.0,,,,0.0,,,,
CheXpert-v1.0-small/train/patient00004/study1/view1_frontal.jpg,Unknown,20,Frontal,PA,1.0,0.0,,,,,,,,,0.0,,,1.0
"""
CHEXPERT_VALID = CHEXPERT_HEADER + """
CheXpert-v1.0-small/valid/patient64541/study1/view1_frontal.jpg,Male,73,Frontal,AP,0.0,1.0,1.0,1.0,0.0,1.0,0.0,0.0,0.0,0.0,0.0,0.0,0.0,1.0
CheXpert-v1.0-small/valid/patient64542/study1/view1_frontal.jpg,Male,70,Frontal,PA,0.0,0.0,0.0,1.0,0.0,0.0,0.0,0.0,0.0,0.0,0.0,0.0,0.0,0.0
CheXpert-v1.0-small/valid/patient64542/study1/view2_lateral.jpg,Male,70,Lateral,,0.0,0.0,0.0,1.0,0.0,0.0,0.0,0.0,0.0,0.0,0.0,0.0,0.0,0.0
"""
CHEXPERT_MISSING = "CheXpert-v1.0-small/train/patient00003/study1/view1_frontal.jpg"
CELL_WORDS = {"1.0": "positive", "0.0": "negative", "-1.0": "uncertain", "": "blank"}


def chexpert_root(tmp_path: Path, *, name: str = "CheXpert-v1.0-small", train: str = CHEXPERT_TRAIN) -> Path:
    root = tmp_path / name
    root.mkdir()
    (root / "train.csv").write_text(train)
    (root / "valid.csv").write_text(CHEXPERT_VALID)
    for text in (train, CHEXPERT_VALID):
        for line in text.splitlines()[1:]:
            path = line.split(",")[0]
            if path != CHEXPERT_MISSING:
                image(root / path.split("/", 1)[1], "JPEG")
    return root


def test_chexpert_counts_uncertain_and_blank_cells_and_splits_as_the_tables(tmp_path):
    root = chexpert_root(tmp_path)
    out = tmp_path / "chexpert.csv"
    result = convert_manifest("chexpert", root, out)
    kept = [(r, "train") for r in table_rows(root / "train.csv") if r["Path"] != CHEXPERT_MISSING]
    kept += [(r, "test") for r in table_rows(root / "valid.csv")]
    assert (result.table_rows, result.images, result.missing) == (9, 8, 1)
    assert result.missing_paths == (CHEXPERT_MISSING,)
    for name in OBSERVATIONS:
        expected = Counter(CELL_WORDS[r[name]] for r, _ in kept)
        assert result.findings[name] == {word: expected.get(word, 0) for word in CELL_WORDS.values()}, name
    assert result.splits == {"train": 5, "val": 0, "test": 3}
    assert result.patients == 5 and result.patients_per_split == {"train": 3, "val": 0, "test": 2}
    rows = manifest_rows(out)
    assert [r["path"] for r in rows] == [r["Path"] for r, _ in kept]  # the manifest sits above ROOT, as Path does
    assert [r["split"] for r in rows] == [split for _, split in kept]
    lateral = rows[3]
    assert (lateral["patient_id"], lateral["group:sex"], lateral["group:age"], lateral["group:view"]) == (
        "patient00002", "F", "80+", "Lateral")
    assert rows[4]["group:sex"] == "" and rows[4]["group:age"] == "20-40" and rows[4]["group:view"] == "PA"
    assert rows[1]["Cardiomegaly"] == "-1" and rows[1]["No Finding"] == ""
    dataset = discover(out)
    assert dataset.classes == OBSERVATIONS and dataset.multilabel
    targets = dataset.targets
    assert (targets == -1).sum() == sum(f["uncertain"] for f in result.findings.values())
    assert np.isnan(targets).sum() == sum(f["blank"] for f in result.findings.values())


def test_chexpert_frontal_only_and_valid_as_val_through_the_command(tmp_path):
    root = chexpert_root(tmp_path, name="chexpert")  # renamed: images found at ROOT/<Path less its first folder>
    out = root / "frontal.csv"
    result = run_cli_here("manifest", "chexpert", root, "--out", out, "--frontal-only", "--valid-as", "val", "--json")
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout)
    assert record["filtered"] == 2 and record["images"] == 6
    assert record["options"] == {"frontal_only": True, "valid_as": "val"}
    assert record["splits"] == {"train": 4, "val": 2, "test": 0}
    rows = manifest_rows(out)
    assert all("lateral" not in r["path"] for r in rows)
    assert rows[0]["path"] == "train/patient00001/study1/view1_frontal.jpg"
    assert json.loads((root / "frontal.csv.json").read_text())["options"]["frontal_only"] is True


def test_chexpert_unknown_value_is_refused_naming_line_column_and_value(tmp_path):
    train = CHEXPERT_TRAIN.replace("Male,41,Frontal,PA,,,,,,1.0", "Male,41,Frontal,PA,,,,,,2.0")
    root = chexpert_root(tmp_path, train=train)
    result = run_cli_here("manifest", "chexpert", root, "--out", tmp_path / "c.csv")
    refused(result, "train.csv", "line 6", "'Edema'", "'2.0'")


# --------------------------------------------------------------------------- MIMIC-CXR-JPG

MIMIC_LABELS = """subject_id,study_id,""" + ",".join(OBSERVATIONS) + """
10000032,50414267,,,,,,,,,,,,,,
10000032,53189527,1.0,,,,,,,,,,,,,
10000764,57375967,,,,1.0,,,-1.0,,,,0.0,,,
10000898,50771383,,,1.0,,,-1.0,,,,,,,,
"""
MIMIC_METADATA = """dicom_id,subject_id,study_id,PerformedProcedureStepDescription,ViewPosition,Rows,Columns,StudyDate,StudyTime,ProcedureCodeSequence_CodeMeaning,ViewCodeSequence_CodeMeaning,PatientOrientationCodeSequence_CodeMeaning
02aa804e-bde0afdd-112c0b34-7bc16630-4e384014,10000032,50414267,CHEST (PA AND LAT),PA,3056,2544,21800506,213014.531,CHEST (PA AND LAT),postero-anterior,Erect
174413ec-4ec4c1f7-34ea26b7-c5f994f8-79ef1962,10000032,50414267,CHEST (PA AND LAT),LATERAL,3056,2544,21800506,213014.531,CHEST (PA AND LAT),lateral,Erect
2a2277a9-b0ded155-c0de8eb9-c124d10e-82c5caab,10000032,53189527,CHEST (PA AND LAT),PA,3056,2544,21800626,165500.312,CHEST (PA AND LAT),postero-anterior,Erect
e084de3b-be89b11e-20fe3f9f-9c8d8dfe-4cfd202c,10000032,53189527,CHEST (PA AND LAT),LATERAL,3056,2544,21800626,165500.312,CHEST (PA AND LAT),lateral,Erect
68b5c4b1-227d0485-9cc38c3f-7b84ab51-4b472714,10000764,57375967,CHEST (PORTABLE AP),AP,2705,2539,21321015,104527.000,CHEST (PORTABLE AP),antero-posterior,Erect
fffabebf-74fd3a1f-673b6b41-96ec0ac9-2ab69818,10000898,50771383,CHEST (PA AND LAT),PA,3056,2544,21381218,195047.890,CHEST (PA AND LAT),postero-anterior,Erect
ea030e7a-2e3b1346-bc518786-7a8fd698-f673b44c,10000935,51178377,CHEST (PA AND LAT),PA,3056,2544,21870718,113526.781,CHEST (PA AND LAT),postero-anterior,Erect
"""
MIMIC_SPLIT = """dicom_id,study_id,subject_id,split
02aa804e-bde0afdd-112c0b34-7bc16630-4e384014,50414267,10000032,train
174413ec-4ec4c1f7-34ea26b7-c5f994f8-79ef1962,50414267,10000032,train
2a2277a9-b0ded155-c0de8eb9-c124d10e-82c5caab,53189527,10000032,train
e084de3b-be89b11e-20fe3f9f-9c8d8dfe-4cfd202c,53189527,10000032,train
68b5c4b1-227d0485-9cc38c3f-7b84ab51-4b472714,57375967,10000764,validate
fffabebf-74fd3a1f-673b6b41-96ec0ac9-2ab69818,50771383,10000898,test
ea030e7a-2e3b1346-bc518786-7a8fd698-f673b44c,51178377,10000935,test
"""
MIMIC_PATIENTS = """subject_id,gender,anchor_age,anchor_year,anchor_year_group,dod
10000032,F,52,2180,2014 - 2016,2180-09-09
10000764,M,86,2132,2014 - 2016,
10000898,F,19,2187,2011 - 2013,
"""
MIMIC_MISSING = "e084de3b-be89b11e-20fe3f9f-9c8d8dfe-4cfd202c"


def mimic_root(tmp_path: Path) -> Path:
    """MIMIC-CXR-JPG's layout with gzipped tables; one listed image missing, one study without labels."""
    root = tmp_path / "mimic-cxr-jpg" / "2.0.0"
    root.mkdir(parents=True)
    for name, text in (("chexpert", MIMIC_LABELS), ("metadata", MIMIC_METADATA), ("split", MIMIC_SPLIT)):
        with gzip.open(root / f"mimic-cxr-2.0.0-{name}.csv.gz", "wt", encoding="utf-8") as handle:
            handle.write(text)
    for row in csv.DictReader(io.StringIO(MIMIC_METADATA)):
        if row["dicom_id"] != MIMIC_MISSING:
            subject = row["subject_id"]
            image(root / "files" / f"p{subject[:2]}" / f"p{subject}" / f"s{row['study_id']}" / f"{row['dicom_id']}.jpg",
                  "JPEG")
    (tmp_path / "patients.csv").write_text(MIMIC_PATIENTS)
    return root


def test_mimic_joins_labels_metadata_and_split(tmp_path):
    root = mimic_root(tmp_path)
    out = tmp_path / "mimic.csv"
    result = convert_manifest("mimic", root, out, patients=tmp_path / "patients.csv")
    assert (result.table_rows, result.images, result.missing) == (7, 5, 1)
    assert result.counts["images_without_labels"] == 1
    assert result.missing_paths == (f"files/p10/p10000032/s53189527/{MIMIC_MISSING}.jpg",)
    assert result.splits == {"train": 3, "val": 1, "test": 1}
    assert result.patients == 3
    assert len(result.tables) == 4 and result.tables[3][0] == str(tmp_path / "patients.csv")
    # every image takes its study's labels
    assert result.findings["No Finding"] == {"positive": 1, "negative": 0, "uncertain": 0, "blank": 4}
    assert result.findings["Lung Opacity"] == {"positive": 1, "negative": 0, "uncertain": 0, "blank": 4}
    assert result.findings["Consolidation"]["uncertain"] == 1 and result.findings["Pleural Effusion"]["negative"] == 1
    rows = manifest_rows(out)
    assert rows[0]["path"] == ("mimic-cxr-jpg/2.0.0/files/p10/p10000032/s50414267/"
                               "02aa804e-bde0afdd-112c0b34-7bc16630-4e384014.jpg")
    assert [(r["group:sex"], r["group:age"], r["group:view"]) for r in rows] == [
        ("F", "40-60", "PA"), ("F", "40-60", "LATERAL"), ("F", "40-60", "PA"), ("M", "80+", "AP"), ("F", "0-20", "PA")]
    assert discover(out).classes == OBSERVATIONS
    frontal = convert_manifest("mimic", root, tmp_path / "frontal.csv", frontal_only=True)
    assert frontal.filtered == 2 and frontal.images == 4
    assert all(r["group:sex"] == "" for r in manifest_rows(tmp_path / "frontal.csv"))  # no patients table
    assert any("patients.csv" in note for note in frontal.notes)


# --------------------------------------------------------------------------- RSNA

RSNA_LABELS = """patientId,x,y,width,height,Target
0004cfab-14fd-4e49-80ba-63a80b6bddd6,,,,,0
00313ee0-9eaa-42f4-b0ab-c148ed3241cd,,,,,0
00322d4d-1c29-4943-afc9-b6754be640eb,,,,,0
00436515-870c-4b36-a041-de91049b9ab4,264.0,152.0,213.0,379.0,1
00436515-870c-4b36-a041-de91049b9ab4,562.0,152.0,256.0,453.0,1
00569f44-917d-4c86-a842-81832af98c30,,,,,0
00704310-78a8-4b38-8475-49f4573b2dbb,323.0,577.0,160.0,104.0,1
00704310-78a8-4b38-8475-49f4573b2dbb,695.0,575.0,162.0,137.0,1
"""
RSNA_DETAILS = """patientId,class
0004cfab-14fd-4e49-80ba-63a80b6bddd6,No Lung Opacity / Not Normal
00313ee0-9eaa-42f4-b0ab-c148ed3241cd,No Lung Opacity / Not Normal
00322d4d-1c29-4943-afc9-b6754be640eb,No Lung Opacity / Not Normal
00436515-870c-4b36-a041-de91049b9ab4,Lung Opacity
00436515-870c-4b36-a041-de91049b9ab4,Lung Opacity
00569f44-917d-4c86-a842-81832af98c30,Normal
00704310-78a8-4b38-8475-49f4573b2dbb,Lung Opacity
00704310-78a8-4b38-8475-49f4573b2dbb,Lung Opacity
"""


def rsna_root(tmp_path: Path, labels: str = RSNA_LABELS) -> Path:
    root = tmp_path / "rsna"
    root.mkdir()
    (root / "stage_2_train_labels.csv").write_text(labels)
    (root / "stage_2_detailed_class_info.csv").write_text(RSNA_DETAILS)
    for patient in dict.fromkeys(line.split(",")[0] for line in labels.splitlines()[1:]):
        if not patient.startswith("00569f44"):
            image(root / "stage_2_train_images" / f"{patient}.dcm", "DCM")
    return root


def test_rsna_one_row_per_image_with_its_target(tmp_path):
    root = rsna_root(tmp_path)
    result = convert_manifest("rsna", root, root / "manifest.csv")
    assert (result.table_rows, result.images, result.missing) == (8, 5, 1)
    assert result.findings == {"Pneumonia": {"positive": 2, "negative": 3, "uncertain": 0, "blank": 0}}
    assert result.counts["detailed_classes"] == {"Lung Opacity": 2, "Normal": 1, "No Lung Opacity / Not Normal": 3}
    assert result.patients == 5 and "patient-grouped" in result.split_rule
    rows = manifest_rows(root / "manifest.csv")
    assert rows[3]["path"] == "stage_2_train_images/00436515-870c-4b36-a041-de91049b9ab4.dcm"
    assert rows[3]["Pneumonia"] == "1"
    assert list(rows[0]) == ["path", "patient_id", "source", "split", "Pneumonia"]  # DICOM headers hold the groups
    assert {r["split"] for r in rows} <= {"train", "val", "test"}
    assert discover(root / "manifest.csv").classes == ("Pneumonia",)


def test_rsna_boxes_of_one_image_with_two_targets_are_refused(tmp_path):
    labels = RSNA_LABELS.replace("695.0,575.0,162.0,137.0,1", "695.0,575.0,162.0,137.0,0")
    root = rsna_root(tmp_path, labels)
    result = run_cli_here("manifest", "rsna", root, "--out", tmp_path / "rsna.csv")
    refused(result, "stage_2_train_labels.csv", "line 9", "00704310-78a8-4b38-8475-49f4573b2dbb", "line 8")


# --------------------------------------------------------------------------- COVIDx

COVIDX_TRAIN = """\
3 SARS-10.1148rad.2020200269-fig3-a.png positive cohen
3 SARS-10.1148rad.2020200269-fig3-b.png positive cohen
ANON41 ANON41_20200416.png negative actmed
8fcc7ebb-2ab6-4d69-8b5a-c5c6b8bdbf4b 8fcc7ebb-2ab6-4d69-8b5a-c5c6b8bdbf4b.png negative rsna
"""
COVIDX_TEST = """\
419639-003251 MIDRC-RICORD-1C-419639-003251-46647-0.png positive ricord
a77f6b2c e8a5b3c0-5d7d-4e8e-a97c-5b7ab0f1e3c1.png negative rsna
"""


def covidx_root(tmp_path: Path, train: str = COVIDX_TRAIN) -> Path:
    root = tmp_path / "covidx"
    root.mkdir()
    (root / "train.txt").write_text(train)
    (root / "test.txt").write_text(COVIDX_TEST)
    for split, text in (("train", train), ("test", COVIDX_TEST)):
        for line in text.splitlines()[:-1]:  # each table's last image is missing
            image(root / split / line.split()[1])
    return root


def test_covidx_is_a_single_label_manifest(tmp_path):
    root = covidx_root(tmp_path)
    result = convert_manifest("covidx", root, root / "manifest.csv")
    assert (result.table_rows, result.images, result.missing) == (6, 4, 2)
    assert result.classes == {"negative": 1, "positive": 3} and result.findings is None
    assert result.splits == {"train": 3, "val": 0, "test": 1}
    assert result.missing_paths == ("train/8fcc7ebb-2ab6-4d69-8b5a-c5c6b8bdbf4b.png",
                                    "test/e8a5b3c0-5d7d-4e8e-a97c-5b7ab0f1e3c1.png")
    rows = manifest_rows(root / "manifest.csv")
    assert list(rows[0]) == ["path", "patient_id", "source", "split", "label"]
    assert [r["source"] for r in rows] == ["cohen", "cohen", "actmed", "ricord"]
    dataset = discover(root / "manifest.csv")
    assert not dataset.multilabel and dataset.classes == ("negative", "positive")
    assert [item.label for item in dataset.subset("test")] == ["positive"]
    # COVIDx 8A and earlier: three fields and three classes; source "covidx"
    old = tmp_path / "old"
    old.mkdir()
    (old / "train.txt").write_text("1 a.png normal\n2 b.png COVID-19\n")
    image(old / "train" / "a.png")
    image(old / "train" / "b.png")
    assert convert_manifest("covidx", old, old / "m.csv").classes == {"COVID-19": 1, "normal": 1}
    assert {r["source"] for r in manifest_rows(old / "m.csv")} == {"covidx"}


@pytest.mark.parametrize("label,words", [("covid", ("'covid'", "positive, negative")),
                                         ("normal", ("'normal'", "another COVIDx version"))])
def test_covidx_unknown_class_is_refused(tmp_path, label, words):
    root = covidx_root(tmp_path, COVIDX_TRAIN.replace("ANON41_20200416.png negative", f"ANON41_20200416.png {label}"))
    result = run_cli_here("manifest", "covidx", root, "--out", tmp_path / "c.csv")
    refused(result, "train.txt", "line 3", *words)


# --------------------------------------------------------------------------- the command's rules


def test_an_out_whose_folder_does_not_hold_root_is_refused_before_reading(tmp_path):
    root = nih_root(tmp_path)
    (tmp_path / "elsewhere").mkdir()
    result = run_cli_here("manifest", "nih", root, "--out", tmp_path / "elsewhere" / "nih.csv")
    refused(result, "nih.csv", "does not hold", "--out")
    result = run_cli_here("manifest", "nih", root, "--out", root / "Data_Entry_2017.csv")
    refused(result, "would overwrite", "a table of the dataset")
    result = run_cli_here("manifest", "nih", root, "--out", root / "nih.txt")
    refused(result, "nih.txt", ".csv")


def test_an_option_the_dataset_does_not_take_is_refused_in_its_callers_words(tmp_path):
    root = nih_root(tmp_path)
    result = run_cli_here("manifest", "nih", root, "--out", tmp_path / "nih.csv", "--frontal-only")
    refused(result, "--frontal-only applies to chexpert and mimic, not to nih")
    with pytest.raises(OptionError, match="frontal_only= applies"):
        convert_manifest("nih", root, tmp_path / "nih.csv", frontal_only=True)
    with pytest.raises(OptionError, match="'valid_as' parameter"):
        convert_manifest("chexpert", root, tmp_path / "c.csv", valid_as="train")
    with pytest.raises(TypeError, match="frontal"):
        convert_manifest("chexpert", root, tmp_path / "c.csv", frontal=True)
    with pytest.raises(OptionError, match="'dataset' parameter"):
        convert_manifest("padchest", root, tmp_path / "c.csv")


def test_tables_absent_or_no_image_present_are_refused(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    for dataset in DATASET_NAMES:
        with pytest.raises(DatasetError, match=r"empty: no .* here"):
            convert_manifest(dataset, empty, tmp_path / f"{dataset}.csv")
    root = nih_root(tmp_path)
    for folder in ("images_001", "images_002"):
        for path in (root / folder / "images").iterdir():
            path.unlink()
    with pytest.raises(DatasetError, match="none of the 10 images"):
        convert_manifest("nih", root, tmp_path / "nih.csv")


def test_registry_and_groups():
    assert DATASET_NAMES == ("nih", "chexpert", "mimic", "rsna", "covidx")
    assert all(name == c.name and c.title and c.tables for name, c in CONVERTERS.items())
    assert [age_group(a) for a in ("", "0", "19.9", "20", "59", "60.0", "79.5", "80", "145", "058Y", "006M", "012D")] == [
        "", "0-20", "0-20", "20-40", "40-60", "60-80", "60-80", "80+", "80+", "40-60", "0-20", "0-20"]
    with pytest.raises(ValueError):
        age_group("fifty")
    assert [sex_group(s) for s in ("M", "F", "Male", "female", "Unknown", "")] == ["M", "F", "M", "F", "", ""]
    assert [view_group(v) for v in ("pa", "AP", "LL", "Lateral", "")] == ["PA", "AP", "LL", "Lateral", ""]
