"""World geometry on generated data: every axis order, qform/sform, DICOM slice order, flips,
round trips and the display orientation.

Volumes are small (12x10x8) and "numbered": every voxel holds its own value, so the RAS position
of each value, computed through the affine, can be compared between two scans voxel by voxel
whatever axis order, flips or slice order their files use. No real scans needed.
"""

from __future__ import annotations

import itertools
import struct
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from medseg.dicom_export import write_dicom_series
from medseg.errors import MedsegError
from medseg.geometry import (
    array_on_grid_of,
    canonical_grid,
    canonical_spacing,
    canonical_view,
    display_affine,
    display_shape,
    from_canonical,
    from_display,
    grid_mismatch,
    to_display,
)
from medseg.io import Scan, load_scan, save_mask
from medseg.phantom import make_phantom
from medseg.phantom import write_dicom_series as write_phantom_series

SHAPE = (12, 10, 8)
SPACING = (0.7, 1.3, 2.9)
ORIGIN = (10.5, -20.25, 33.0)
_DIRECTIONS = {"R": (1, 0, 0), "L": (-1, 0, 0), "A": (0, 1, 0), "P": (0, -1, 0), "S": (0, 0, 1), "I": (0, 0, -1)}
# All 48 axis orders: each array axis along one world axis, in either direction.
AXCODES = ["".join(c) for pairs in itertools.permutations(("RL", "AP", "SI")) for c in itertools.product(*pairs)]
_LPS = np.diag([-1.0, -1.0, 1.0])  # RAS <-> LPS, written out here rather than taken from medseg


def rotation(about_z: float, about_x: float) -> np.ndarray:
    """A rotation by ``about_z`` then ``about_x`` degrees (an oblique acquisition)."""
    cz, sz = np.cos(np.radians(about_z)), np.sin(np.radians(about_z))
    cx, sx = np.cos(np.radians(about_x)), np.sin(np.radians(about_x))
    return np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]]) @ np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])


OBLIQUE = rotation(25.0, 10.0)


def affine_for(axcodes: str, rotate: np.ndarray = np.eye(3), origin=ORIGIN, spacing=SPACING) -> np.ndarray:
    """The RAS affine of a grid whose array axes point along ``axcodes`` (then rotated)."""
    affine = np.eye(4)
    affine[:3, :3] = rotate @ np.array([_DIRECTIONS[c] for c in axcodes], float).T @ np.diag(spacing)
    affine[:3, 3] = origin
    return affine


def numbered(shape=SHAPE) -> np.ndarray:
    """Every voxel holds its own value (0 .. n-1), in an order unrelated to any axis flip."""
    values = np.random.default_rng(7).permutation(int(np.prod(shape)))
    return values.reshape(shape).astype(np.int16)


def world_by_value(array: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """RAS mm of the voxel holding each value (row ``v`` for value ``v``); values must be 0..n-1, once each."""
    array = np.asarray(array)
    assert np.array_equal(np.sort(array.ravel()), np.arange(array.size)), "not a numbered volume"
    index = np.indices(array.shape).reshape(3, -1)
    out = np.empty((array.size, 3))
    out[array.ravel().astype(np.int64)] = (affine[:3, :3] @ index + affine[:3, 3:]).T
    return out


def assert_same_world(a: Scan, b: Scan, atol: float = 1e-4) -> None:
    """Both scans put every value at the same RAS position."""
    np.testing.assert_allclose(world_by_value(b.array, b.affine), world_by_value(a.array, a.affine), atol=atol)


def write_nifti(path: Path, array: np.ndarray, qform=None, qcode: int = 0, sform=None, scode: int = 0) -> Path:
    img = nib.Nifti1Image(array, None)
    if qform is not None:
        img.header.set_qform(qform, code=qcode)
    if sform is not None:
        img.header.set_sform(sform, code=scode)
    nib.save(img, str(path))
    return path


def nifti_scan(tmp_path: Path, affine: np.ndarray, name: str = "scan.nii.gz") -> Scan:
    """A numbered volume on ``affine`` written as NIfTI (qform and sform, code 1) and read back."""
    return load_scan(write_nifti(tmp_path / name, numbered(), affine, 1, affine, 1))


def dicom_scan(tmp_path: Path, affine: np.ndarray, name: str = "series") -> tuple[Scan, list[Path]]:
    """A numbered volume on ``affine`` written as a DICOM series (slice k = file k), and its files."""
    source = Scan(numbered(), affine, source=Path("numbered"), modality="CT")
    return source, write_dicom_series(source, tmp_path / name, uid_key=f"geometry {name}")


def reoriented(scan: Scan, flips=(), perm=(0, 1, 2)) -> Scan:
    """The same voxel grid stored in another axis order / with flips (a new Scan)."""
    arr, aff = scan.array, scan.affine.copy()
    for ax in flips:
        arr = np.flip(arr, ax)
        f = np.eye(4)
        f[ax, ax], f[ax, 3] = -1, scan.shape[ax] - 1
        aff = aff @ f
    p = np.eye(4)[list(perm) + [3]].T
    return Scan(np.ascontiguousarray(arr.transpose(perm)), aff @ p, source=scan.source)


# ---------------------------------------------------------------------------------------------- axis orders


@pytest.mark.parametrize("axcodes", AXCODES)
def test_every_axis_order_reads_views_and_writes_the_same_world(tmp_path, axcodes):
    affine = affine_for(axcodes)
    scan = nifti_scan(tmp_path, affine)
    assert "".join(scan.axcodes) == axcodes
    np.testing.assert_allclose(scan.affine, affine, atol=1e-5)
    np.testing.assert_allclose(scan.spacing, SPACING, atol=1e-5)

    # canonical (RAS) view: positive diagonal affine, same value at the same place
    view, ornt = canonical_view(scan.array, scan.affine)
    shape, canon = canonical_grid(scan.affine, scan.shape)
    assert view.shape == shape and "".join(nib.aff2axcodes(canon)) == "RAS"
    np.testing.assert_allclose(canon[:3, :3], np.diag(canonical_spacing(scan.affine, ornt)), atol=1e-5)
    assert_same_world(scan, Scan(view, canon, scan.source))
    np.testing.assert_array_equal(from_canonical(view, ornt), scan.array)

    # load -> save_mask -> load: every voxel keeps its world position
    mask = load_scan(save_mask(scan.array.astype(np.uint16), scan, tmp_path / "mask.nii.gz"))
    assert_same_world(scan, mask)


@pytest.mark.parametrize("axcodes", ["LPS", "RAS", "PIR", "SLA"])
def test_oblique_grid_round_trips(tmp_path, axcodes):
    affine = affine_for(axcodes, OBLIQUE)
    scan = nifti_scan(tmp_path, affine)
    np.testing.assert_allclose(scan.affine, affine, atol=1e-5)
    view, _ = canonical_view(scan.array, scan.affine)
    _, canon = canonical_grid(scan.affine, scan.shape)
    assert "".join(nib.aff2axcodes(canon)) == "RAS"  # the nearest world axes, no resampling
    assert_same_world(scan, Scan(view, canon, scan.source))
    assert_same_world(scan, load_scan(save_mask(scan.array.astype(np.uint16), scan, tmp_path / "mask.nii")))


@pytest.mark.parametrize("axcodes, rotate", [("LPS", np.eye(3)), ("PIR", OBLIQUE)], ids=["LPS", "PIR-oblique"])
@pytest.mark.parametrize("suffix", [".mha", ".nrrd"])
def test_simpleitk_files_are_read_in_ras(tmp_path, axcodes, rotate, suffix):
    """ITK stores LPS geometry; the test converts by hand, the reader must agree."""
    affine = affine_for(axcodes, rotate)
    array = numbered()
    direction = affine[:3, :3] / np.asarray(SPACING)
    image = sitk.GetImageFromArray(array.transpose(2, 1, 0).copy())
    image.SetSpacing(SPACING)
    image.SetOrigin(tuple(_LPS @ affine[:3, 3]))
    image.SetDirection(tuple((_LPS @ direction).ravel()))
    sitk.WriteImage(image, str(tmp_path / f"scan{suffix}"))
    scan = load_scan(tmp_path / f"scan{suffix}")
    assert_same_world(Scan(array, affine, Path("expected")), scan)


# ---------------------------------------------------------------------------------------------- qform / sform

QFORM = affine_for("LPS", origin=(1.0, 2.0, 3.0))
SFORM = affine_for("RAS", rotation(20.0, 0.0), origin=(-5.0, 7.0, 11.0))


def _pixdim_affine() -> np.ndarray:
    """No transform set: voxel sizes only, x flipped, origin at the volume's centre (NIfTI/Analyze)."""
    zooms = np.array([-1.0, 1.0, 1.0]) * SPACING  # pixdim comes from the qform written beside it
    affine = np.diag([*zooms, 1.0])
    affine[:3, 3] = -zooms * (np.array(SHAPE) - 1) / 2.0
    return affine


@pytest.mark.parametrize(
    "qcode, scode, expected",
    [
        (1, 0, QFORM),  # qform only
        (0, 2, SFORM),  # sform only
        (1, 2, SFORM),  # both: the sform wins over the scanner qform ...
        (2, 1, SFORM),  # ... whatever the codes
        (1, 4, SFORM),
        (1, 7, QFORM),  # sform_code 7 is not a NIfTI code: counts as unset
        (0, 0, _pixdim_affine()),
    ],
    ids=["qform-only", "sform-only", "both-sform-wins", "both-codes-swapped", "sform-mni", "bad-sform-code", "neither"],
)
def test_sform_wins_then_qform_then_pixdim(tmp_path, qcode, scode, expected):
    path = write_nifti(tmp_path / "scan.nii", numbered(), QFORM, qcode, SFORM, min(scode, 4))
    if scode > 4:  # an unknown code, stored as is (nibabel would not write it)
        raw = bytearray(path.read_bytes())
        raw[254:256] = struct.pack("<h", scode)  # sform_code in the NIfTI-1 header
        path.write_bytes(bytes(raw))
    scan = load_scan(path)
    np.testing.assert_allclose(scan.affine, expected, atol=1e-4)
    # the mask copies the header's transforms and codes, so every reader places it like the scan
    out = save_mask(scan.array.astype(np.uint16), scan, tmp_path / "mask.nii.gz")
    back = nib.load(str(out))
    assert (int(back.header["qform_code"]), int(back.header["sform_code"])) == (qcode, min(scode, 4) * (scode <= 4))
    assert_same_world(scan, load_scan(out))


# ---------------------------------------------------------------------------------------------- DICOM


@pytest.mark.parametrize(
    "axcodes, rotate",
    [("LPS", np.eye(3)), ("RAS", np.eye(3)), ("PIR", np.eye(3)), ("LPS", OBLIQUE)],
    ids=["LPS-axial", "RAS-axial", "PIR-sagittal", "LPS-oblique"],
)
def test_dicom_series_reads_in_the_world_it_was_written_in(tmp_path, axcodes, rotate):
    source, _ = dicom_scan(tmp_path, affine_for(axcodes, rotate))
    scan = load_scan(tmp_path / "series")
    assert_same_world(source, scan, atol=1e-3)
    # DICOM -> NIfTI mask: lines up with the DICOM in world mm
    mask = load_scan(save_mask(scan.array.astype(np.uint16), scan, tmp_path / "mask.nii.gz"))
    assert_same_world(source, mask, atol=1e-3)


def test_dicom_slices_are_ordered_along_the_normal_not_as_written(tmp_path):
    """Slices written head to foot (ImagePositionPatient decreasing) come back foot to head."""
    source, paths = dicom_scan(tmp_path, affine_for("LPI"))
    z = [float(pydicom.dcmread(p).ImagePositionPatient[2]) for p in paths]
    assert np.all(np.diff(z) < 0)  # the test really writes decreasing positions
    scan = load_scan(tmp_path / "series")
    assert "".join(scan.axcodes) == "LPS"  # row x column = +S: the slice axis points along the normal
    np.testing.assert_array_equal(scan.array, source.array[:, :, ::-1])
    assert_same_world(source, scan, atol=1e-3)


def test_dicom_file_names_and_instance_numbers_do_not_order_slices(tmp_path):
    source, paths = dicom_scan(tmp_path, affine_for("LPS"))
    reference = load_scan(tmp_path / "series")
    shuffled = tmp_path / "shuffled"
    shuffled.mkdir()
    order = np.random.default_rng(3).permutation(len(paths))
    for name, k in enumerate(order):
        ds = pydicom.dcmread(paths[k])
        ds.InstanceNumber = len(paths) - k  # contradicts the positions
        ds.save_as(shuffled / f"{name:03d}.dcm")
    scan = load_scan(shuffled)
    np.testing.assert_array_equal(scan.array, reference.array)
    np.testing.assert_allclose(scan.affine, reference.affine)
    assert_same_world(source, scan, atol=1e-3)


def test_phantom_dicom_mask_lines_up_with_the_phantom(tmp_path):
    phantom = make_phantom(3, shape=SHAPE)
    assert phantom.labels.any()
    write_phantom_series(phantom, tmp_path / "ct")
    scan = load_scan(tmp_path / "ct")
    np.testing.assert_array_equal(scan.array, phantom.image)
    np.testing.assert_allclose(scan.affine, phantom.affine, atol=1e-3)
    mask = load_scan(save_mask(phantom.labels, scan, tmp_path / "labels.nii.gz"))
    for value in np.unique(phantom.labels[phantom.labels > 0]):
        where = np.argwhere(mask.array == value)
        expected = np.argwhere(phantom.labels == value)
        np.testing.assert_allclose(
            nib.affines.apply_affine(mask.affine, where), nib.affines.apply_affine(phantom.affine, expected), atol=1e-3
        )


# ---------------------------------------------------------------------------------------------- flips and grids


@pytest.mark.parametrize("flips, perm", [((1,), (0, 1, 2)), ((0, 2), (2, 0, 1)), ((0, 1, 2), (1, 0, 2))])
def test_flipped_storage_is_the_same_world_content(tmp_path, flips, perm):
    scan = nifti_scan(tmp_path, affine_for("LPS"))
    other = reoriented(scan, flips, perm)
    assert other.axcodes != scan.axcodes
    assert_same_world(scan, other)
    assert grid_mismatch(scan, other) is None
    np.testing.assert_array_equal(array_on_grid_of(scan, other), scan.array)  # back in the scan's order
    saved = load_scan(save_mask(other.array.astype(np.uint16), other, tmp_path / "flipped.nii.gz"))
    np.testing.assert_array_equal(array_on_grid_of(scan, saved), scan.array)


def test_grid_mismatch_names_what_differs(tmp_path):
    scan = nifti_scan(tmp_path, affine_for("LPS"))
    shift = np.eye(4)
    shift[0, 3] = 1.0
    shifted = Scan(scan.array, scan.affine @ shift, scan.source)
    assert "shifted by" in grid_mismatch(scan, shifted)
    assert "grid size" in grid_mismatch(scan, Scan(scan.array[1:], scan.affine, scan.source))
    coarse = Scan(scan.array, scan.affine @ np.diag([1.0, 1.0, 1.1, 1.0]), scan.source)
    assert "voxel size" in grid_mismatch(scan, coarse)
    turned = Scan(scan.array, affine_for("LPS", rotation(3.0, 0.0)), scan.source)
    assert "orientation differs" in grid_mismatch(scan, turned)
    with pytest.raises(MedsegError, match="shifted by"):
        array_on_grid_of(scan, shifted)


# ---------------------------------------------------------------------------------------------- display orientation


@pytest.mark.parametrize("axcodes", ["LPS", "RAS", "PIR", "ILA", "SRP"])
def test_display_round_trip_and_world(axcodes):
    affine = affine_for(axcodes)
    array = numbered()
    data, daff = to_display(array, affine)
    assert data.shape == display_shape(array.shape, affine)
    np.testing.assert_array_equal(from_display(data, affine), array)
    np.testing.assert_allclose(daff, display_affine(affine, array.shape))
    # the display affine maps (S, P, L) indices to world (z, y, x) in LPS mm
    ras = world_by_value(array, affine)
    shown = world_by_value(data, daff)
    np.testing.assert_allclose(shown, np.stack([ras[:, 2], -ras[:, 1], -ras[:, 0]], axis=1), atol=1e-6)
    assert np.all(np.diag(daff)[:3] > 0)  # axis-aligned scans: proportions kept, no rotation


@pytest.mark.parametrize("axcodes", ["LPS", "RAS", "PIR"])
def test_display_is_radiological(axcodes):
    """Axial display: the patient's left on the right of the screen (last axis), anterior at the top."""
    affine = affine_for(axcodes)
    array = numbered()
    data, _ = to_display(array, affine)
    ras = world_by_value(array, affine)
    position = {int(v): idx for idx, v in np.ndenumerate(data)}
    leftmost = int(np.argmin(ras[:, 0]))  # patient's left: smallest RAS x
    anterior = int(np.argmax(ras[:, 1]))
    superior = int(np.argmax(ras[:, 2]))
    assert position[leftmost][2] == data.shape[2] - 1  # rightmost screen column
    assert position[anterior][1] == 0  # top row
    assert position[superior][0] == data.shape[0] - 1  # last axial slice
