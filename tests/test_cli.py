"""The `medseg` command line, run as a user would (a child process)."""

import gzip
import shutil
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
from conftest import SAMPLE
from pydicom.data import get_testdata_file

from medseg.io import load_scan

SAMPLE_DICOM = SAMPLE / "phantom_ct_dicom"
SAMPLE_NIFTI = SAMPLE / "phantom_ct.nii.gz"
SAMPLE_LABELS = SAMPLE / "phantom_ct_labels.nii.gz"


def medseg(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "medseg.cli", *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=600
    )


@pytest.mark.slow
def test_segment_sample_dicom_writes_mask_in_scan_geometry(tmp_path):
    out = tmp_path / "mask.nii.gz"
    r = medseg("segment", SAMPLE_DICOM, "-o", out, "--reference", SAMPLE_LABELS)
    assert r.returncode == 0, r.stderr
    scan = load_scan(SAMPLE_DICOM)
    mask = nib.load(str(out))
    assert mask.shape == scan.shape
    np.testing.assert_allclose(mask.affine, scan.affine, atol=1e-4)
    # the DICOM series and the NIfTI of the same phantom share one world grid
    np.testing.assert_allclose(mask.affine, nib.load(str(SAMPLE_NIFTI)).affine, atol=1e-3)
    assert mask.get_data_dtype() == np.uint8
    values = set(np.unique(np.asanyarray(mask.dataobj)).tolist())
    assert {0, 1, 2, 3, 4} <= values
    for organ in ("liver", "spleen", "kidney_right", "kidney_left"):
        assert organ in r.stdout
    assert "mL" in r.stdout and "Dice" in r.stdout


@pytest.mark.slow
def test_segment_nifti_matches_dicom(tmp_path):
    r1 = medseg("segment", SAMPLE_NIFTI, "-o", tmp_path / "a.nii.gz")
    r2 = medseg("segment", SAMPLE_DICOM, "-o", tmp_path / "b.nii.gz")
    assert r1.returncode == 0 and r2.returncode == 0, r1.stderr + r2.stderr
    a, b = nib.load(str(tmp_path / "a.nii.gz")), nib.load(str(tmp_path / "b.nii.gz"))
    np.testing.assert_allclose(a.affine, b.affine, atol=1e-3)
    np.testing.assert_array_equal(np.asanyarray(a.dataobj), np.asanyarray(b.dataobj))


def _bad_inputs(tmp_path, shared):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("no scans here")
    plan = tmp_path / "plan"
    plan.mkdir()
    shutil.copy(get_testdata_file("rtplan.dcm"), plan / "rtplan.dcm")
    data = SAMPLE_NIFTI.read_bytes()
    truncated = tmp_path / "truncated.nii.gz"
    truncated.write_bytes(data[: len(data) // 3])
    corrupt = tmp_path / "corrupt.nii.gz"
    corrupt.write_bytes(gzip.compress(b"\x00garbage" * 100))
    four_d = tmp_path / "four_d.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 8, 2), np.int16), np.eye(4)), str(four_d))
    cases = {
        "missing": (tmp_path / "nope.nii.gz", "no such file"),
        "no dicom": (empty, "no DICOM files found"),
        "rt plan": (plan, "RTPLAN"),
        "truncated": (truncated, "truncated or corrupt"),
        "corrupt": (corrupt, "not a readable NIfTI"),
        "4d": (four_d, "expected a 3D volume"),
    }
    if shared is not None:
        cases["irregular"] = (shared / "irregular_ct_dicom", "irregular slice spacing")
    return cases


@pytest.mark.slow
def test_bad_inputs_give_one_line_errors(tmp_path, request):
    from conftest import SHARED

    cases = _bad_inputs(tmp_path, SHARED if SHARED.is_dir() else None)
    for name, (path, expected) in cases.items():
        out = tmp_path / f"out_{name.replace(' ', '_')}.nii.gz"
        r = medseg("segment", path, "-o", out)
        assert r.returncode == 1, (name, r.stdout, r.stderr)
        lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
        assert len(lines) == 1, (name, r.stderr)
        assert lines[0].startswith("error:") and expected in lines[0] and path.name in lines[0], (name, lines)
        assert "Traceback" not in r.stderr + r.stdout
        assert not out.exists(), name
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files left


@pytest.mark.slow
def test_output_errors(tmp_path):
    r = medseg("segment", SAMPLE_NIFTI, "-o", SAMPLE_NIFTI)
    assert r.returncode == 1 and "refusing to write over the scan" in r.stderr
    r = medseg("segment", SAMPLE_NIFTI, "-o", tmp_path / "mask.png")
    assert r.returncode == 1 and ".nii.gz" in r.stderr
    r = medseg("segment", SAMPLE_NIFTI, "-o", tmp_path / "m.nii.gz", "--model", tmp_path)
    assert r.returncode == 1 and "not a model bundle" in r.stderr and "Traceback" not in r.stderr


def test_info(tmp_path):
    r = medseg("info", SAMPLE_DICOM)
    assert r.returncode == 0 and "LPS" in r.stdout and "CT" in r.stdout


def test_version():
    from importlib.metadata import version

    import medseg as package

    r = medseg("--version")
    assert r.returncode == 0, r.stderr
    assert r.stdout == f"medseg {package.__version__}\n"
    assert version("medseg") == package.__version__  # the installed metadata reads the same one source


@pytest.mark.parametrize("name", ["real_ct_dicom", "ct_abdomen_3mm.nii.gz", "mr_3mm_lps.nii.gz"])
@pytest.mark.slow
def test_segment_real_scans_keeps_geometry(shared_data, tmp_path, name):
    out = tmp_path / "mask.nii.gz"
    r = medseg("segment", shared_data / name, "-o", out)
    assert r.returncode == 0, r.stderr
    scan = load_scan(shared_data / name)
    mask = nib.load(str(out))
    assert mask.shape == scan.shape
    np.testing.assert_allclose(mask.affine, scan.affine, atol=1e-4)


@pytest.mark.slow
def test_modality_mismatch_from_cli(shared_data, tmp_path):
    r = medseg("segment", shared_data / "mr_3mm_lps.nii.gz", "-o", tmp_path / "m.nii.gz", "--modality", "MR")
    assert r.returncode == 1 and "is for CT but the scan is MR" in r.stderr
