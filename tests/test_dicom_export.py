"""medseg.dicom_export: any CT/MR volume out as a DICOM series, and back through medseg's loader."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest

from medseg.dicom_export import write_dicom_series
from medseg.errors import MedsegError
from medseg.io import Scan, load_scan


def _oblique_affine(spacing=(1.5, 2.0, 3.0), degrees=30.0, origin=(10.0, -20.0, 5.0)) -> np.ndarray:
    """Rotated about the superior axis, array axis 0 running towards the patient's left."""
    t = np.deg2rad(degrees)
    rot = np.array([[np.cos(t), -np.sin(t), 0.0], [np.sin(t), np.cos(t), 0.0], [0.0, 0.0, 1.0]])
    affine = np.eye(4)
    affine[:3, :3] = rot @ np.diag([-1.0, -1.0, 1.0]) @ np.diag(spacing)
    affine[:3, 3] = origin
    return affine


def test_an_oblique_mr_volume_comes_back_on_its_grid(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    array = rng.uniform(-50.0, 900.0, size=(12, 10, 5)).astype(np.float32)  # not whole numbers: rescaled
    scan = Scan(array, _oblique_affine(), source=Path("mr.nii"), modality="MR")
    paths = write_dicom_series(scan, tmp_path / "mr", series_description="oblique MR")
    assert len(paths) == 5
    first = pydicom.dcmread(paths[0])
    assert first.Modality == "MR" and first.SOPClassUID == pydicom.uid.MRImageStorage
    assert (first.Rows, first.Columns) == (10, 12)
    assert [float(v) for v in first.PixelSpacing] == [2.0, 1.5] and float(first.SliceThickness) == 3.0
    t = np.deg2rad(30.0)
    np.testing.assert_allclose([float(v) for v in first.ImageOrientationPatient],
                               [np.cos(t), np.sin(t), 0.0, -np.sin(t), np.cos(t), 0.0], atol=1e-9)
    loaded = load_scan(tmp_path / "mr")
    assert loaded.modality == "MR" and loaded.shape == scan.shape
    np.testing.assert_allclose(loaded.affine, scan.affine, atol=1e-4)
    step = float(first.RescaleSlope)
    assert 0 < step < 0.02
    np.testing.assert_allclose(loaded.array, array, atol=step / 2 + 1e-4)


def test_a_slice_axis_against_the_normal_is_read_back_in_position_order(tmp_path: Path) -> None:
    array = np.arange(6 * 4 * 3, dtype=np.int16).reshape(6, 4, 3) + 100  # whole numbers: stored as they are
    affine = np.diag([-2.0, -2.0, -4.0, 1.0])  # stored superior -> inferior
    write_dicom_series(Scan(array, affine, source=Path("x.nii"), modality="MR"), tmp_path / "s")
    loaded = load_scan(tmp_path / "s")
    world = [affine @ [i, j, k, 1.0] for i, j, k in [(0, 0, 0), (5, 3, 2), (2, 1, 1)]]
    for w, (i, j, k) in zip(world, [(0, 0, 0), (5, 3, 2), (2, 1, 1)]):
        ijk = np.rint(np.linalg.solve(loaded.affine, w)[:3]).astype(int)
        assert loaded.array[tuple(ijk)] == array[i, j, k]  # the same voxel at the same place


def test_ct_values_are_rounded_clipped_and_nan_is_air(tmp_path: Path) -> None:
    array = np.array([[[-3000.0, -1024.0], [0.4, 39.6]], [[3071.0, 5000.0], [np.nan, -0.6]]], dtype=np.float32)
    paths = write_dicom_series(Scan(array, np.eye(4), source=Path("ct.nii"), modality="CT"), tmp_path / "ct")
    ds = [pydicom.dcmread(p) for p in paths]
    assert ds[0].RescaleIntercept == -1024 and ds[0].BitsStored == 12 and ds[0].Modality == "CT"
    hu = np.stack([d.pixel_array.T.astype(int) - 1024 for d in ds], axis=2)
    np.testing.assert_array_equal(hu, [[[-1024, -1024], [0, 40]], [[3071, 3071], [-1024, -1]]])


def test_uids_are_fresh_unless_derived_from_a_key(tmp_path: Path) -> None:
    scan = Scan(np.zeros((4, 4, 2), np.int16), np.eye(4), source=Path("a.nii"), modality="CT")

    def series(name: str, **kw) -> str:
        return pydicom.dcmread(write_dicom_series(scan, tmp_path / name, **kw)[0]).SeriesInstanceUID

    assert series("a") != series("b")
    assert series("c", uid_key="k1") == series("d", uid_key="k1") != series("e", uid_key="k2")
    ds = pydicom.dcmread(write_dicom_series(scan, tmp_path / "f", tags={"Manufacturer": "here"})[0])
    assert ds.Manufacturer == "here"


@pytest.mark.parametrize(
    "modality, affine, problem",
    [
        ("PT", np.eye(4), "cannot write a PT series as DICOM"),
        ("CT", np.array([[1.0, 0.5, 0, 0], [0, 1.0, 0, 0], [0, 0, 1.0, 0], [0, 0, 0, 1]]), "not perpendicular"),
        ("CT", np.diag([1.0, 0.0, 1.0, 1.0]), "degenerate"),
    ],
)
def test_what_dicom_cannot_hold_is_refused(tmp_path: Path, modality, affine, problem) -> None:
    scan = Scan(np.zeros((3, 3, 2), np.int16), affine, source=Path("a.nii"), modality=modality)
    with pytest.raises(MedsegError, match=problem) as err:
        write_dicom_series(scan, tmp_path / "out")
    assert str(err.value).startswith(str(tmp_path / "out")) and "\n" not in str(err.value)
    assert not (tmp_path / "out").exists()
