"""`medseg evaluate`: Dice and HD95 per case and label on tiny hand-made label maps."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import SAMPLE

from medseg.errors import MedsegError
from medseg.evaluation import Evaluation, evaluate_folders, evaluate_pair
from medseg.io import load_scan

SHAPE = (20, 20, 10)
SPACING = (2.0, 2.0, 3.0)
AFFINE = np.diag([*SPACING, 1.0])
AFFINE[:3, 3] = (-20.0, -20.0, 5.0)
LABELS = {"background": 0, "liver": 1, "spleen": 2}

# liver: 8x8x4 cubes, prediction shifted 2 voxels along i: overlap 6x8x4
LIVER_DICE = 2 * (6 * 8 * 4) / (2 * 8 * 8 * 4)  # 0.75
# spleen: 4x4x3 cubes, prediction shifted 2 voxels along k (3 mm): overlap 4x4x1
SPLEEN_DICE = 2 * (4 * 4 * 1) / (2 * 4 * 4 * 3)  # 1/3
SPLEEN_HD95 = 2 * 3.0  # mm


def _maps(spleen: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(prediction, reference) on the RAS grid; ``spleen=False`` leaves label 2 out of both."""
    ref = np.zeros(SHAPE, np.uint8)
    pred = np.zeros(SHAPE, np.uint8)
    ref[4:12, 4:12, 2:6] = 1
    pred[6:14, 4:12, 2:6] = 1
    if spleen:
        ref[14:18, 14:18, 2:5] = 2
        pred[14:18, 14:18, 4:7] = 2
    return pred, ref


def _save(array: np.ndarray, path: Path, affine: np.ndarray = AFFINE) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, affine), str(path))
    return path


def _flipped_las(array: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The same voxels stored LAS: first axis reversed, affine adjusted so world positions stay."""
    flip = np.eye(4)
    flip[0, 0], flip[0, 3] = -1.0, SHAPE[0] - 1
    return np.ascontiguousarray(array[::-1]), AFFINE @ flip


def _transposed(array: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The same voxels stored with the last two axes swapped."""
    swap = np.eye(4)[:, [0, 2, 1, 3]]
    return np.ascontiguousarray(array.transpose(0, 2, 1)), AFFINE @ swap


@pytest.fixture
def folders(tmp_path: Path) -> tuple[Path, Path]:
    """pred/ and ref/ with cases a (both labels) and b (spleen absent on both sides), and dataset.json."""
    pred_dir, ref_dir = tmp_path / "pred", tmp_path / "ref"
    for case, spleen in (("a", True), ("b", False)):
        pred, ref = _maps(spleen)
        if case == "b":
            pred = ref.copy()  # perfect liver
        _save(pred, pred_dir / f"{case}.nii.gz")
        _save(ref, ref_dir / f"{case}.nii.gz")
    (ref_dir / "dataset.json").write_text(json.dumps({"labels": LABELS}))
    return pred_dir, ref_dir


def _close(a: float, b: float) -> bool:
    """Equal up to float32 rounding (monai computes in float32)."""
    return math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-9)


def _row(ev: Evaluation, case: str, label: str) -> dict:
    (row,) = [r for r in ev.rows if r["case"] == case and r["label"] == label]
    return row


def test_known_dice_and_hd95_in_mm(folders):
    ev = evaluate_folders(*folders)
    assert ev.failures == []
    assert ev.labels == LABELS
    assert [(r["case"], r["label"]) for r in ev.rows] == [("a", "liver"), ("a", "spleen"), ("b", "liver"), ("b", "spleen")]
    liver, spleen = _row(ev, "a", "liver"), _row(ev, "a", "spleen")
    assert _close(liver["dice"], LIVER_DICE)
    assert _close(liver["hd95"], 2 * 2.0)  # 2 voxels of 2 mm
    assert _close(spleen["dice"], SPLEEN_DICE)
    assert _close(spleen["hd95"], SPLEEN_HD95)  # 2 voxels along the 3 mm axis, not 2 * 2 mm
    voxel_ml = 2.0 * 2.0 * 3.0 / 1000
    assert _close(liver["pred_ml"], 256 * voxel_ml) and _close(liver["ref_ml"], 256 * voxel_ml)
    assert _close(spleen["ref_ml"], 48 * voxel_ml)
    b_liver, b_spleen = _row(ev, "b", "liver"), _row(ev, "b", "spleen")
    assert b_liver["dice"] == 1.0 and b_liver["hd95"] == 0.0
    assert math.isnan(b_spleen["dice"]) and math.isnan(b_spleen["hd95"])
    assert b_spleen["pred_ml"] == 0.0 and b_spleen["ref_ml"] == 0.0


def test_label_absent_from_both_is_left_out_of_the_mean(folders):
    summary = evaluate_folders(*folders).summary()
    assert set(summary) == {"liver", "spleen"}  # background is not scored
    assert summary["liver"]["n"] == 2
    assert _close(summary["liver"]["mean_dice"], (LIVER_DICE + 1.0) / 2)
    assert _close(summary["liver"]["std_dice"], (1.0 - LIVER_DICE) / 2)  # population SD
    assert _close(summary["liver"]["mean_hd95"], (4.0 + 0.0) / 2)
    # case b has no spleen on either side: not a Dice of 1 (mean 0.667) nor 0 (mean 0.167)
    assert summary["spleen"]["n"] == 1
    assert _close(summary["spleen"]["mean_dice"], SPLEEN_DICE)
    assert _close(summary["spleen"]["mean_hd95"], SPLEEN_HD95)
    ev = evaluate_folders(*folders)
    assert _close(ev.mean_dice(), ((LIVER_DICE + 1.0) / 2 + SPLEEN_DICE) / 2)


def test_label_only_on_one_side_scores_zero_with_undefined_hd95(tmp_path):
    pred, ref = _maps()
    pred[pred == 2] = 0  # spleen missed entirely
    rows = evaluate_pair(
        load_scan(_save(pred, tmp_path / "p.nii.gz")), load_scan(_save(ref, tmp_path / "r.nii.gz")), LABELS
    )
    spleen = next(r for r in rows if r["label"] == "spleen")
    assert spleen["dice"] == 0.0 and math.isnan(spleen["hd95"]) and spleen["pred_ml"] == 0.0
    ev = Evaluation(rows=rows, labels=LABELS)
    assert ev.summary()["spleen"] == {"mean_dice": 0.0, "std_dice": 0.0, "mean_hd95": pytest.approx(math.nan, nan_ok=True), "n": 1, "n_hd95": 0}


@pytest.mark.parametrize(
    ("store", "axcodes"), [(_flipped_las, ("L", "A", "S")), (_transposed, ("R", "S", "A"))], ids=["LAS", "RSA"]
)
def test_prediction_stored_in_another_axis_order_scores_the_same(tmp_path, store, axcodes):
    pred, ref = _maps()
    ref_path = _save(ref, tmp_path / "ref.nii.gz")
    plain = evaluate_pair(load_scan(_save(pred, tmp_path / "ras.nii.gz")), load_scan(ref_path), LABELS, case="a")
    other, affine = store(pred)
    moved = _save(other, tmp_path / "other.nii.gz", affine)
    assert load_scan(moved).axcodes == axcodes and load_scan(ref_path).axcodes == ("R", "A", "S")
    again = evaluate_pair(load_scan(moved), load_scan(ref_path), LABELS, case="a")
    assert again == plain
    assert _close(again[1]["hd95"], SPLEEN_HD95)


def test_reference_in_another_axis_order_uses_its_own_spacing(tmp_path):
    pred, ref = _maps()
    ref_rsa, affine = _transposed(ref)  # reference axes (i, k, j): spacing (2, 3, 2)
    rows = evaluate_pair(
        load_scan(_save(pred, tmp_path / "p.nii.gz")), load_scan(_save(ref_rsa, tmp_path / "r.nii.gz", affine)), LABELS
    )
    assert _close(rows[1]["hd95"], SPLEEN_HD95) and _close(rows[0]["hd95"], 4.0)


def test_shifted_grid_and_missing_files_are_failures_not_crashes(folders):
    pred_dir, ref_dir = folders
    pred, ref = _maps()
    shifted = AFFINE.copy()
    shifted[0, 3] += 2.0  # one voxel along x
    _save(pred, pred_dir / "c.nii.gz", shifted)
    _save(ref, ref_dir / "c.nii.gz")
    _save(ref, ref_dir / "d.nii.gz")  # no prediction
    _save(pred, pred_dir / "e.nii.gz")  # no reference
    (pred_dir / "f.nii.gz").write_bytes(b"not a nifti")
    _save(ref, ref_dir / "f.nii.gz")
    _save(pred, pred_dir / "g.nii")
    _save(pred, pred_dir / "g.nii.gz")  # two predictions for one case
    _save(ref, ref_dir / "g.nii.gz")
    ev = evaluate_folders(pred_dir, ref_dir)
    assert ev.cases == ["a", "b"]  # the good cases are still scored
    errors = {f["case"]: f["error"] for f in ev.failures}
    assert len(ev.failures) == 5 and set(errors) == {"c", "d", "e", "f", "g"}
    assert errors["g"] == f"{pred_dir}: several files for case g (g.nii, g.nii.gz)"
    assert errors["c"].startswith(str(pred_dir / "c.nii.gz") + ": grid is shifted by [2.0, 0.0, 0.0] mm")
    assert errors["c"].endswith("of its reference c.nii.gz")
    assert errors["d"] == f"{ref_dir / 'd.nii.gz'}: no prediction for this case in {pred_dir}"
    assert errors["e"] == f"{pred_dir / 'e.nii.gz'}: no reference for this case in {ref_dir}"
    assert errors["f"].startswith(str(pred_dir / "f.nii.gz") + ": not a readable NIfTI file")


def test_undeclared_label_value_is_a_failure_naming_the_file(folders):
    pred_dir, ref_dir = folders
    pred, _ = _maps()
    pred[0, 0, 0] = 7
    _save(pred, pred_dir / "a.nii.gz")
    ev = evaluate_folders(pred_dir, ref_dir)
    assert ev.cases == ["b"]
    assert ev.failures[0]["error"].startswith(f"{pred_dir / 'a.nii.gz'}: label values [7] are not among the labels")


def test_pairing_by_case_name_and_labels_without_dataset_json(tmp_path):
    pred, ref = _maps()
    _save(pred, tmp_path / "pred" / "case_001_0000.nii")  # nnU-Net channel suffix, other extension
    _save(ref, tmp_path / "ref" / "case_001.nii.gz")
    _, ref_b = _maps(spleen=False)
    _save(ref_b, tmp_path / "pred" / "case_002.nii.gz")
    _save(ref_b, tmp_path / "ref" / "case_002.nii.gz")
    (tmp_path / "pred" / "notes.txt").write_text("ignored")
    ev = evaluate_folders(tmp_path / "pred", tmp_path / "ref")
    assert ev.failures == []
    assert ev.labels == {"1": 1, "2": 2}  # named by value
    assert ev.cases == ["case_001", "case_002"]
    assert math.isnan(_row(ev, "case_002", "2")["dice"])  # filled in: absent from both
    assert ev.summary()["2"]["n"] == 1
    # explicit labels win; dataset.json in the parent of ref_dir is used too
    (tmp_path / "dataset.json").write_text(json.dumps({"labels": {"0": "background", "1": "liver", "2": "spleen"}}))
    assert evaluate_folders(tmp_path / "pred", tmp_path / "ref").labels == LABELS
    assert evaluate_folders(tmp_path / "pred", tmp_path / "ref", labels={"liver": 1, "spleen": 2}).cases == [
        "case_001",
        "case_002",
    ]


def test_no_pairs_at_all_is_an_error(tmp_path):
    pred, ref = _maps()
    _save(pred, tmp_path / "pred" / "x.nii.gz")
    _save(ref, tmp_path / "ref" / "y.nii.gz")
    with pytest.raises(MedsegError, match="no prediction matches a reference"):
        evaluate_folders(tmp_path / "pred", tmp_path / "ref")
    with pytest.raises(MedsegError, match="not a folder"):
        evaluate_folders(tmp_path / "missing", tmp_path / "ref")


def test_reports_csv_and_json(folders, tmp_path):
    ev = evaluate_folders(*folders)
    ev.failures.append({"case": "z", "error": "z.nii.gz: broken"})
    csv_path, json_path = ev.write(tmp_path / "reports")
    assert sorted(p.name for p in (tmp_path / "reports").iterdir()) == ["evaluation.csv", "evaluation.json"]  # no temp files
    with open(csv_path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["case", "label", "value", "dice", "hd95", "pred_ml", "ref_ml"]
    assert len(rows) == 4
    assert rows[0]["case"] == "a" and rows[0]["label"] == "liver" and rows[0]["value"] == "1"
    assert float(rows[0]["dice"]) == pytest.approx(LIVER_DICE) and float(rows[1]["hd95"]) == pytest.approx(6.0)
    assert rows[3]["label"] == "spleen" and rows[3]["dice"] == "" and rows[3]["hd95"] == ""  # NaN -> empty
    text = json_path.read_text()
    assert "NaN" not in text
    data = json.loads(text)
    assert data["labels"] == LABELS
    assert [c["case"] for c in data["cases"]] == ["a", "b"]
    assert data["cases"][0]["labels"]["spleen"]["dice"] == pytest.approx(SPLEEN_DICE)
    assert data["cases"][1]["labels"]["spleen"]["dice"] is None
    assert data["summary"]["spleen"]["n"] == 1 and data["summary"]["liver"]["n"] == 2
    assert data["summary"]["liver"]["mean_dice"] == pytest.approx(0.875)
    assert data["mean_dice"] == pytest.approx((0.875 + SPLEEN_DICE) / 2)
    assert data["failures"] == [{"case": "z", "error": "z.nii.gz: broken"}]


# ---------------------------------------------------------------------------------------------- CLI


def medseg(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "medseg.cli", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=600,
        check=False,
    )


@pytest.mark.slow
def test_cli_evaluate_folders_prints_table_and_writes_reports(folders, tmp_path):
    pred_dir, ref_dir = folders
    r = medseg("evaluate", pred_dir, ref_dir, "-o", tmp_path / "out")
    assert r.returncode == 0, r.stderr
    assert "Warning" not in r.stderr  # monai's deprecation noise is not shown to users
    for text in ("liver", "spleen", "mean Dice", "HD95", "0.875", "0.333", "6.00"):
        assert text in r.stdout, text
    assert (tmp_path / "out" / "evaluation.csv").is_file() and (tmp_path / "out" / "evaluation.json").is_file()


@pytest.mark.slow
def test_cli_evaluate_failure_exits_1_after_writing_reports(folders):
    pred_dir, ref_dir = folders
    _save(_maps()[1], ref_dir / "c.nii.gz")  # reference without a prediction
    r = medseg("evaluate", pred_dir, ref_dir, "--no-hd95")
    assert r.returncode == 1
    assert "Traceback" not in r.stderr
    assert "failed:" in r.stderr and "no prediction for this case" in r.stderr and "c.nii.gz" in r.stderr
    assert "liver" in r.stdout and "0.875" in r.stdout  # the cases that could be scored are still reported
    # reports land in the prediction folder by default
    report = json.loads((pred_dir / "evaluation.json").read_text())
    assert [f["case"] for f in report["failures"]] == ["c"]
    assert report["cases"][0]["labels"]["liver"]["hd95"] is None  # --no-hd95


@pytest.mark.slow
def test_cli_evaluate_usage_errors(folders):
    pred_dir, ref_dir = folders
    for args in ((), (pred_dir,), (pred_dir, ref_dir, "--model", SAMPLE / "model"), ("--model", SAMPLE / "model")):
        r = medseg("evaluate", *args)
        assert r.returncode == 1 and r.stderr.startswith("error:") and "Traceback" not in r.stderr, (args, r.stderr)
    r = medseg("evaluate", "--model", SAMPLE / "model", "--dataset", pred_dir)
    assert "-o/--output" in r.stderr


@pytest.mark.slow
def test_cli_evaluate_model_on_a_phantom(tmp_path):
    from medseg.phantom import make_dataset

    root = make_dataset(tmp_path / "ds", [21], shape=(64, 64, 16), spacing=(4.0, 4.0, 8.0))
    r = medseg("evaluate", "--model", SAMPLE / "model", "--dataset", root, "-o", tmp_path / "out", "--device", "cpu")
    assert r.returncode == 0, r.stderr
    assert "liver" in r.stdout
    report = json.loads((tmp_path / "out" / "evaluation.json").read_text())
    assert [c["case"] for c in report["cases"]] == ["phantom_0021"]
    liver = report["cases"][0]["labels"]["liver"]["dice"]
    assert liver is not None and math.isfinite(liver) and liver > 0.5, report["cases"][0]
