"""``medseg import-dicom``: studies with SEG, RTSTRUCT, both, unmatched ROI names and no labels become a
dataset that check-dataset passes and train accepts, with a report of every series; ``--format`` of
``segment`` writes SEG / RTSTRUCT that reference the source series."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import numpy as np
import pydicom
import pytest
from dicom_labels_helpers import dice, phantom_series

from medseg.data import check_dataset
from medseg.dicom_grid import read_grid
from medseg.errors import MedsegError
from medseg.io import load_scan

pytest.importorskip("highdicom", reason="the medseg[dicom] extra (highdicom) is not installed")

from medseg.dicom_import import import_dicom, read_roi_map  # noqa: E402
from medseg.dicom_seg import write_seg  # noqa: E402
from medseg.rtstruct import write_rtstruct  # noqa: E402

ROI_MAP = {"liver": ["Liver", "liver total"], "spleen": ["spleen"], "liver_tumour": ["liver tumour", "GTV"]}


def _study(root, name, seed, orientation="axial", seg_names=None, rt_names=None, drop=()):
    labels, names = phantom_series(root / name / "CT", seed=seed, orientation=orientation, patient=name, drop=drop)
    grid = read_grid(root / name / "CT")
    if seg_names:
        write_seg(labels, seg_names, grid, root / name / "seg.dcm")
    if rt_names:
        write_rtstruct(labels, rt_names, grid, root / name / "rt.dcm")
    return labels


@pytest.fixture(scope="module")
def studies(tmp_path_factory):
    root = tmp_path_factory.mktemp("studies")
    truth = {
        "P1": _study(root, "P1", 11, seg_names={1: "LIVER", 2: "Spleen", 3: "kidney_right"}),
        "P2": _study(root, "P2", 12, "coronal", rt_names={1: "liver_total", 2: "SPLEEN", 5: "GTV", 4: "Kidney L"}),
        "P3": _study(root, "P3", 13, seg_names={1: "liver", 2: "spleen"}, rt_names={1: "liver"}),
        "P4": _study(root, "P4", 14, rt_names={1: "Hepar"}),
        "P5": _study(root, "P5", 15),
    }
    (root / "map.json").write_text(json.dumps(ROI_MAP))
    return root, truth


def _report(dataset):
    with open(dataset / "import_report.csv", newline="") as fh:
        return {r["patient_id"]: r for r in csv.DictReader(fh) if r["patient_id"]}


def test_import_builds_a_dataset_with_a_report(studies, tmp_path):
    root, truth = studies
    result = import_dicom(root, tmp_path / "ds", read_roi_map(root / "map.json"))
    assert (result.count("imported"), result.count("skipped"), result.count("unlabelled")) == (3, 1, 1)
    rows = _report(tmp_path / "ds")
    assert rows["P1"]["kind"] == "SEG" and rows["P1"]["used"] == "liver<-LIVER; spleen<-Spleen"
    assert rows["P1"]["missing"] == "liver_tumour" and rows["P1"]["unmatched"] == "kidney_right"
    assert rows["P2"]["kind"] == "RTSTRUCT" and "liver_tumour<-GTV" in rows["P2"]["used"]
    assert rows["P2"]["unmatched"] == "Kidney L"
    assert rows["P3"]["kind"] == "SEG" and "has both SEG and RTSTRUCT: used SEG" in rows["P3"]["notes"]
    assert rows["P4"]["status"] == "skipped" and "no ROI matches a label" in rows["P4"]["notes"]
    assert rows["P4"]["unmatched"] == "Hepar"
    assert rows["P5"]["status"] == "unlabelled"

    idx = check_dataset(tmp_path / "ds")
    assert idx.problems == [] and len(idx.cases) == 3
    meta = json.loads((tmp_path / "ds" / "dataset.json").read_text())
    assert meta["labels"] == {"background": 0, "liver": 1, "spleen": 2, "liver_tumour": 3}
    assert meta["name"] == "ds" and meta["numTraining"] == 3
    for case in idx.cases:  # each label map lines up with its image and with the truth, in world space
        patient = case.name.split("_")[0]
        image, label = load_scan(case.image), load_scan(case.label)
        assert np.allclose(image.affine, label.affine)
        src = load_scan(root / patient / "CT")
        assert np.allclose(image.affine, src.affine) and np.array_equal(image.array, src.array)
        t = truth[patient]
        assert dice(label.array == 1, t == 1) >= (1.0 if patient != "P2" else 0.97)
        assert dice(label.array == 2, t == 2) >= 0.97


def test_prefer_rtstruct_and_the_dataset_appears_whole(studies, tmp_path):
    root, _ = studies
    import_dicom(root, tmp_path / "ds", ROI_MAP, prefer="rtstruct")
    assert _report(tmp_path / "ds")["P3"]["kind"] == "RTSTRUCT"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging folder left
    with pytest.raises(MedsegError, match="exists and is not an empty folder"):
        import_dicom(root, tmp_path / "ds", ROI_MAP)


def test_nothing_importable_writes_nothing(studies, tmp_path):
    root, _ = studies
    with pytest.raises(MedsegError, match=r"no series could be imported \(4 skipped, 1 unlabelled\); the first: no ROI matches a label of the ROI map; nothing written"):
        import_dicom(root, tmp_path / "ds", {"heart": ["heart"]})
    assert not (tmp_path / "ds").exists() and list(tmp_path.iterdir()) == []


def test_an_irregular_series_fails_with_its_reason_and_the_rest_imports(tmp_path):
    root = tmp_path / "src"
    _study(root, "A", 21, seg_names={1: "liver"})
    _study(root, "B", 22, rt_names={1: "liver"}, drop=(3, 4))
    result = import_dicom(root, tmp_path / "ds", ROI_MAP)
    rows = _report(tmp_path / "ds")
    assert rows["A"]["status"] == "imported"
    assert rows["B"]["status"] == "failed" and "irregular slice spacing" in rows["B"]["notes"]
    assert "--regularize" in rows["B"]["notes"] and result.count("failed") == 1


def test_regularize_resamples_an_irregular_series_in_world_space(tmp_path):
    """Slices 3 and 4 missing: the volume and its contours go back onto the full regular grid; the
    kept slices are the original ones exactly, each missing slice takes the nearest slice's labels."""
    from medseg.phantom import make_phantom

    root = tmp_path / "src"
    _study(root, "B", 22, rt_names={1: "liver", 2: "spleen"}, drop=(3, 4))
    result = import_dicom(root, tmp_path / "ds", ROI_MAP, regularize=True)
    row = _report(tmp_path / "ds")["B"]
    assert row["status"] == "imported", row["notes"]
    assert "resampled from 14 irregularly spaced slices" in row["notes"] and "onto 16 slices" in row["notes"]
    case = check_dataset(tmp_path / "ds").cases[0]
    image, label = load_scan(case.image), load_scan(case.label)
    p = make_phantom(22, shape=(48, 48, 16))
    np.testing.assert_allclose(image.affine, p.affine, atol=1e-3)  # the full grid, in the same place
    assert result.count("imported") == 1
    truth = np.zeros(p.labels.shape, np.uint8)
    truth[p.labels == 1], truth[p.labels == 2] = 1, 2
    kept = [k for k in range(16) if k not in (3, 4)]
    for k in kept:
        assert dice(label.array[:, :, k] == 1, truth[:, :, k] == 1) >= 0.97
        np.testing.assert_array_equal(image.array[:, :, k], np.asarray(p.as_scan().array)[:, :, k].astype(image.array.dtype))
    np.testing.assert_array_equal(label.array[:, :, 3], label.array[:, :, 2])  # nearest: slice 2
    np.testing.assert_array_equal(label.array[:, :, 4], label.array[:, :, 5])  # nearest: slice 5


@pytest.mark.parametrize("text,match", [
    ("[1, 2]", "must be a JSON object"),
    ('{"liver": []}', "non-empty list of ROI names"),
    ('{"liver": ["a"], "spleen": ["A"]}', "'A' is mapped to both 'liver' and 'spleen'"),
    ('{"background": ["x"]}', "cannot be a label"),
    ("{", "not valid JSON"),
])
def test_roi_map_errors(tmp_path, text, match):
    (tmp_path / "m.json").write_text(text)
    with pytest.raises(MedsegError, match=match):
        read_roi_map(tmp_path / "m.json")


def _cli(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "medseg.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.slow
def test_cli_import_then_train(studies, tmp_path):
    root, _ = studies
    r = _cli("import-dicom", root, tmp_path / "ds", "--roi-map", root / "map.json")
    assert r.returncode == 0, r.stderr
    assert "3 imported, 1 skipped, 1 unlabelled, 0 failed" in r.stdout
    r = _cli("check-dataset", tmp_path / "ds")
    assert r.returncode == 0 and "3 case(s)" in r.stdout, r.stderr
    r = _cli("train", tmp_path / "ds", "-o", tmp_path / "run", "--epochs", "1", "--steps-per-epoch", "1",
             "--batch-size", "2", "--width", "4", "--crop", "32", "--spacing", "10", "--val-cases", "1",
             "--device", "cpu", "--no-hd95")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "run" / "best" / "model.json").is_file()


@pytest.mark.parametrize("fmt", ["dicom-seg", "rtstruct"])
def test_segment_writes_dicom_referencing_the_series(tmp_path, fmt):
    from medseg.resources import __file__ as res

    from pathlib import Path

    series = Path(res).parent / "phantom_ct_dicom"
    r = _cli("segment", series, "-o", tmp_path / "out.dcm", "--format", fmt)
    assert r.returncode == 0, r.stderr
    ds = pydicom.dcmread(tmp_path / "out.dcm")
    grid = read_grid(series)
    assert ds.Modality == ("SEG" if fmt == "dicom-seg" else "RTSTRUCT")
    assert ds.StudyInstanceUID == grid.headers[0].StudyInstanceUID and ds.PatientID == grid.headers[0].PatientID
    r = _cli("segment", series, "-o", tmp_path / "out.nii.gz")
    assert r.returncode == 0, r.stderr
    mask = load_scan(tmp_path / "out.nii.gz").array
    if fmt == "dicom-seg":
        from medseg.dicom_seg import read_seg

        back = read_seg(tmp_path / "out.dcm", grid)
        assert ds.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0].AlgorithmVersion.startswith("medseg")
        np.testing.assert_array_equal(back.masks["liver"], mask == 1)
    else:
        from medseg.rtstruct import read_rtstruct

        assert dice(read_rtstruct(tmp_path / "out.dcm", grid).masks["liver"], mask == 1) >= 0.97


def test_dicom_format_on_a_nifti_is_a_clear_error(tmp_path):
    from pathlib import Path

    from medseg.resources import __file__ as res

    r = _cli("segment", Path(res).parent / "phantom_ct.nii.gz", "-o", tmp_path / "out.dcm", "--format", "dicom-seg")
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert "phantom_ct.nii.gz: --format dicom-seg writes DICOM that references the source series" in r.stderr
    assert not (tmp_path / "out.dcm").exists()


def test_batch_format_dicom_seg_writes_per_series_and_fails_nifti_cases(tmp_path):
    from medseg.phantom import make_phantom, write_nifti

    src = tmp_path / "in"
    phantom_series(src / "s1", seed=31)
    write_nifti(make_phantom(32, shape=(48, 48, 16)), src / "n1.nii.gz")
    r = _cli("batch", src, tmp_path / "out", "--format", "dicom-seg")
    assert r.returncode == 1, r.stderr  # the NIfTI case failed, the DICOM one is done
    with open(tmp_path / "out" / "summary.csv", newline="") as fh:
        rows = {row["case"]: row for row in csv.DictReader(fh)}
    assert rows["s1"]["status"] == "done" and rows["s1"]["output"].endswith("s1.dcm")
    assert rows["n1.nii.gz"]["status"] == "failed" and "needs a DICOM series" in rows["n1.nii.gz"]["error"]
    assert pydicom.dcmread(tmp_path / "out" / "s1.dcm").Modality == "SEG"
    assert not (tmp_path / "out" / "n1.dcm").exists()
    r = _cli("batch", src, tmp_path / "out", "--format", "dicom-seg")  # resumes: the SEG is kept
    with open(tmp_path / "out" / "summary.csv", newline="") as fh:
        assert {row["case"]: row for row in csv.DictReader(fh)}["s1"]["status"] == "skipped"


def test_cli_bad_label_objects_are_one_line_failures(tmp_path):
    root = tmp_path / "src"
    _study(root, "A", 41, seg_names={1: "liver"})
    _study(root, "B", 42, rt_names={1: "liver", 2: "spleen"})
    ds = pydicom.dcmread(root / "B" / "rt.dcm")  # a spleen contour half-way between two slices
    c = ds.ROIContourSequence[1].ContourSequence[0]
    pts = np.asarray(c.ContourData, float).reshape(-1, 3)
    pts[:, 2] += 0.5 * read_grid(root / "B" / "CT").gap(0)
    c.ContourData = [f"{v:.3f}" for v in pts.ravel()]
    ds.save_as(root / "B" / "rt.dcm")
    (tmp_path / "map.json").write_text(json.dumps(ROI_MAP))
    r = _cli("import-dicom", root, tmp_path / "ds", "--roi-map", tmp_path / "map.json")
    assert r.returncode == 1 and "Traceback" not in r.stderr + r.stdout
    failed = [ln for ln in r.stderr.splitlines() if ln.startswith("failed:")]
    assert len(failed) == 1 and "rt.dcm: ROI 'spleen' has a contour at" in failed[0] and "on no slice" in failed[0]
    assert "1 imported, 0 skipped, 0 unlabelled, 1 failed" in r.stdout
    (tmp_path / "bad.json").write_text('{"liver": "liver", "spleen": 3}')
    r = _cli("import-dicom", root, tmp_path / "ds2", "--roi-map", tmp_path / "bad.json")
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 1 and len(lines) == 1 and "bad.json: label 'spleen' must map to a non-empty list" in lines[0]
    assert not (tmp_path / "ds2").exists()


def test_without_the_dicom_extra_the_message_names_it(monkeypatch, tmp_path):
    from medseg.dicom_results import check_result_path

    phantom_series(tmp_path / "ct")
    grid = read_grid(tmp_path / "ct")
    monkeypatch.setitem(sys.modules, "highdicom", None)  # as if not installed
    monkeypatch.setitem(sys.modules, "skimage.measure", None)
    for fmt in ("dicom-seg", "rtstruct"):
        with pytest.raises(MedsegError, match=r"needs the optional package '.*': pip install 'medseg\[dicom\]'"):
            check_result_path(tmp_path / "x.dcm", fmt, tmp_path / "ct")
    with pytest.raises(MedsegError, match=r"reading DICOM SEG needs .*medseg\[dicom\]"):
        from medseg.dicom_seg import read_seg

        read_seg(tmp_path / "x.dcm", grid)


def test_an_unusable_preferred_object_falls_back_to_the_other(tmp_path):
    """Both kinds for one series, the SEG on another frame of reference: the RTSTRUCT is used, and the
    report says why."""
    root = tmp_path / "src"
    _study(root, "C", 51, seg_names={1: "liver"}, rt_names={1: "liver", 2: "spleen"})
    seg = pydicom.dcmread(root / "C" / "seg.dcm")
    seg.FrameOfReferenceUID = "1.2.3.4"
    seg.save_as(root / "C" / "seg.dcm")
    result = import_dicom(root, tmp_path / "ds", ROI_MAP)
    row = _report(tmp_path / "ds")["C"]
    assert result.count("imported") == 1 and row["kind"] == "RTSTRUCT" and row["label_object"].endswith("rt.dcm")
    assert "SEG not used: " in row["notes"] and "FrameOfReferenceUID 1.2.3.4" in row["notes"]
    assert "used RTSTRUCT rt.dcm instead" in row["notes"] and row["used"] == "liver<-liver; spleen<-spleen"
