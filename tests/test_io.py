"""Reading scans and writing masks: round trips on real scans (skipped without ../shared/data), clear
errors on bad input. Geometry on generated data is in test_geometry.py."""

import gzip
import shutil

import nibabel as nib
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.data import get_testdata_file

from medseg.errors import MedsegError
from medseg.dicom import find_dicom_series
from medseg.geometry import sitk_to_ras_affine
from medseg.io import load_scan, save_mask
from medseg.phantom import make_phantom, write_dicom_series

NIFTI_SCANS = ["ct_abdomen_3mm.nii.gz", "mr_3mm_lps.nii.gz", "mr_brain_tiny.nii", "mr_brain_tiny_labels.nii.gz"]


@pytest.fixture
def small_nifti(tmp_path):
    """A small generated MR-like volume (noise, big-endian int16 like mr_brain_tiny.nii), gzipped."""
    data = np.random.default_rng(0).integers(0, 1000, size=(12, 10, 8)).astype(">i2")
    path = tmp_path / "small.nii.gz"
    nib.save(nib.Nifti1Image(data, np.diag([0.9, 1.1, 3.0, 1.0])), str(path))
    return path


def _roundtrip(scan, tmp_path):
    labels = (np.arange(scan.array.size) % 7).reshape(scan.shape).astype(np.uint8)
    out = save_mask(labels, scan, tmp_path / "mask.nii.gz")
    back = nib.load(str(out))
    assert back.shape == scan.shape
    np.testing.assert_allclose(back.affine, scan.affine, atol=1e-4)
    assert back.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(np.asanyarray(back.dataobj), labels)
    # and the mask reads back through our own loader on the same grid
    again = load_scan(out)
    np.testing.assert_allclose(again.affine, scan.affine, atol=1e-4)
    return back


@pytest.mark.parametrize("name", NIFTI_SCANS)
def test_nifti_roundtrip_keeps_geometry(shared_data, tmp_path, name):
    src = nib.load(str(shared_data / name))
    scan = load_scan(shared_data / name)
    assert scan.shape == src.shape
    np.testing.assert_allclose(scan.affine, src.affine)
    np.testing.assert_array_equal(scan.array, np.asanyarray(src.dataobj))
    assert scan.array.dtype.isnative
    back = _roundtrip(scan, tmp_path)
    assert back.header.get_sform(coded=True)[1] == src.header.get_sform(coded=True)[1]
    assert back.header.get_qform(coded=True)[1] == src.header.get_qform(coded=True)[1]


def test_orientations_and_big_endian(shared_data):
    assert load_scan(shared_data / "ct_abdomen_3mm.nii.gz").axcodes == ("R", "A", "S")
    assert load_scan(shared_data / "mr_3mm_lps.nii.gz").axcodes == ("L", "P", "S")
    raw = nib.load(str(shared_data / "mr_brain_tiny.nii"))
    assert raw.get_data_dtype().byteorder == ">"
    scan = load_scan(shared_data / "mr_brain_tiny.nii")
    assert scan.array.dtype == np.int16 and scan.array.dtype.isnative


def test_dicom_series_matches_simpleitk(shared_data, tmp_path):
    folder = shared_data / "real_ct_dicom"
    scan = load_scan(folder)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    ref = reader.Execute()
    ref_ras = sitk_to_ras_affine(ref)
    assert scan.shape == (512, 512, 20)
    np.testing.assert_allclose(scan.affine, ref_ras, atol=1e-4)
    np.testing.assert_allclose(scan.spacing, [0.9765625, 0.9765625, 2.0], atol=1e-4)
    np.testing.assert_array_equal(scan.array, sitk.GetArrayFromImage(ref).transpose(2, 1, 0))
    assert scan.modality == "CT"
    # rescale slope/intercept applied: air is about -1000 HU, not stored values near 0
    assert scan.array.min() <= -1000 and np.median(scan.array[:50, :50, :]) < -900
    # slices are ordered by position, not by file name
    z = [scan.affine[2] @ [0, 0, k, 1] for k in range(scan.shape[2])]
    assert np.all(np.diff(z) > 0)
    _roundtrip(scan, tmp_path)


def test_irregular_spacing_is_refused(shared_data):
    with pytest.raises(MedsegError, match="irregular slice spacing") as exc:
        load_scan(shared_data / "irregular_ct_dicom")
    assert "irregular_ct_dicom" in str(exc.value)
    assert "\n" not in str(exc.value)


def test_multi_series_folder_lists_series(shared_data, tmp_path):
    for f in sorted((shared_data / "real_ct_dicom").iterdir())[:3]:
        shutil.copy(f, tmp_path / f.name)
    shutil.copy(get_testdata_file("CT_small.dcm"), tmp_path / "other.dcm")
    with pytest.raises(MedsegError) as exc:
        load_scan(tmp_path)
    msg = str(exc.value)
    assert "2 DICOM series" in msg and "--series" in msg and "\n" not in msg
    uid_real = next(s for s in find_dicom_series(tmp_path)[0] if s != pydicom.dcmread(tmp_path / "other.dcm").SeriesInstanceUID)
    assert uid_real in msg and "3 slices" in msg and "1 slices" in msg
    scan = load_scan(tmp_path, series_uid=uid_real)
    assert scan.shape == (512, 512, 3)
    with pytest.raises(MedsegError, match="not found"):
        load_scan(tmp_path, series_uid="1.2.3")


def test_missing_path(tmp_path):
    with pytest.raises(MedsegError, match="no such file"):
        load_scan(tmp_path / "nope.nii.gz")


def test_folder_without_dicom(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(MedsegError, match="no DICOM files found"):
        load_scan(tmp_path)


def test_non_image_dicom(tmp_path):
    shutil.copy(get_testdata_file("rtplan.dcm"), tmp_path / "plan.dcm")
    with pytest.raises(MedsegError, match="no DICOM image series.*RTPLAN"):
        load_scan(tmp_path)
    with pytest.raises(MedsegError, match="not an image series"):
        load_scan(tmp_path / "plan.dcm")


def test_truncated_nifti(small_nifti, tmp_path):
    data = small_nifti.read_bytes()
    bad = tmp_path / "truncated.nii.gz"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(MedsegError, match="truncated or corrupt") as exc:
        load_scan(bad)
    assert "truncated.nii.gz" in str(exc.value)
    raw = gzip.decompress(data)
    short = tmp_path / "short.nii"
    short.write_bytes(raw[: len(raw) - 1000])
    with pytest.raises(MedsegError, match="truncated or corrupt"):
        load_scan(short)


def test_corrupt_header(tmp_path):
    bad = tmp_path / "garbage.nii.gz"
    bad.write_bytes(gzip.compress(b"not a nifti header" * 40))
    with pytest.raises(MedsegError, match="garbage.nii.gz: not a readable NIfTI"):
        load_scan(bad)


def test_4d_is_refused_unless_singleton(tmp_path):
    aff = np.diag([2.0, 2.0, 3.0, 1.0])
    nib.save(nib.Nifti1Image(np.zeros((4, 5, 6, 3), np.int16), aff), str(tmp_path / "fmri.nii.gz"))
    with pytest.raises(MedsegError, match="expected a 3D volume, got a 4D image"):
        load_scan(tmp_path / "fmri.nii.gz")
    nib.save(nib.Nifti1Image(np.ones((4, 5, 6, 1), np.float32), aff), str(tmp_path / "one.nii.gz"))
    scan = load_scan(tmp_path / "one.nii.gz")
    assert scan.shape == (4, 5, 6)


def test_save_mask_refuses_bad_outputs(small_nifti, tmp_path):
    scan = load_scan(small_nifti)
    labels = np.zeros(scan.shape, np.uint8)
    with pytest.raises(MedsegError, match="refusing to write into the input"):
        save_mask(labels, scan, scan.source)
    write_dicom_series(make_phantom(0, shape=(6, 5, 4)), tmp_path / "dicom")
    dicom = load_scan(tmp_path / "dicom")
    with pytest.raises(MedsegError, match="refusing to write into the input"):
        save_mask(np.zeros(dicom.shape, np.uint8), dicom, tmp_path / "dicom" / "mask.nii.gz")
    with pytest.raises(MedsegError, match="use a .nii.gz"):
        save_mask(labels, scan, tmp_path / "mask.png")
    with pytest.raises(MedsegError, match="does not match the scan"):
        save_mask(np.zeros((2, 2, 2), np.uint8), scan, tmp_path / "m.nii.gz")


def test_save_mask_is_atomic_and_wide_labels(small_nifti, tmp_path):
    scan = load_scan(small_nifti)
    labels = np.zeros(scan.shape, np.int64)
    labels[1, 2, 3] = 300
    out = save_mask(labels, scan, tmp_path / "sub" / "wide.nii.gz")
    img = nib.load(str(out))
    assert img.get_data_dtype() == np.uint16 and np.asanyarray(img.dataobj)[1, 2, 3] == 300
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["wide.nii.gz"]  # no temp files left


def test_unwritable_output(small_nifti, tmp_path):
    scan = load_scan(small_nifti)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(MedsegError, match="cannot"):
        save_mask(np.zeros(scan.shape, np.uint8), scan, blocker / "mask.nii.gz")


def test_scaled_nifti_values_and_compact_types(tmp_path):
    raw = (np.arange(120, dtype=np.uint16).reshape(4, 5, 6) * 30).astype(np.uint16)
    img = nib.Nifti1Image(raw, np.diag([0.8, 0.8, 2.5, 1.0]))
    img.header.set_slope_inter(1.0, -1024.0)  # CT stored unsigned with an intercept
    nib.save(img, str(tmp_path / "ct.nii.gz"))
    scan = load_scan(tmp_path / "ct.nii.gz")
    assert scan.array.dtype == np.int16
    np.testing.assert_array_equal(scan.array, raw.astype(np.int32) - 1024)
    img.header.set_slope_inter(0.5, 3.25)
    nib.save(img, str(tmp_path / "mr.nii.gz"))
    scan = load_scan(tmp_path / "mr.nii.gz")
    assert scan.array.dtype == np.float32
    np.testing.assert_allclose(scan.array, raw * 0.5 + 3.25)
