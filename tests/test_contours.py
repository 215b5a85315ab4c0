"""RTSTRUCT-style planar contours onto a voxel grid (medseg.contours): slice matching, holes, boundary voxels, orientation."""

from __future__ import annotations

import numpy as np
import pytest

from medseg.contours import rasterise
from medseg.errors import MedsegError

RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0])


def _lps(affine: np.ndarray, vox: np.ndarray) -> np.ndarray:
    """Voxel indices (N, 3) -> LPS millimetres through a RAS affine."""
    return (vox @ affine[:3, :3].T + affine[:3, 3]) @ RAS_TO_LPS.T


def _circle(affine, axis, k, centre, radius, n=180):
    """A closed polygon (LPS mm) of a circle of ``radius`` voxels on slice ``k`` along ``axis``."""
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    inplane = [a for a in range(3) if a != axis]
    vox = np.zeros((n, 3))
    vox[:, axis] = k
    vox[:, inplane[0]] = centre[0] + radius * np.cos(t)
    vox[:, inplane[1]] = centre[1] + radius * np.sin(t)
    return _lps(affine, vox)


def _disk(shape, axis, k, centre, radius):
    out = np.zeros(shape, bool)
    inplane = [a for a in range(3) if a != axis]
    r, c = np.meshgrid(np.arange(shape[inplane[0]]), np.arange(shape[inplane[1]]), indexing="ij")
    np.moveaxis(out, axis, 0)[k] = (r - centre[0]) ** 2 + (c - centre[1]) ** 2 <= radius**2
    return out


def _dice(a, b):
    return 2 * (a & b).sum() / (a.sum() + b.sum())


def test_boundary_centres_belong_to_the_structure():
    square = _lps(np.eye(4), np.array([[2, 2, 0], [2, 5, 0], [5, 5, 0], [5, 2, 0]], float))
    mask = rasterise([square], np.eye(4), (8, 8, 1))[:, :, 0]
    expected = np.zeros((8, 8), bool)
    expected[2:6, 2:6] = True  # a strict inside test would give only 3..4
    np.testing.assert_array_equal(mask, expected)


def test_a_contour_inside_another_is_a_hole_and_its_edge_stays_in():
    aff = np.eye(4)
    outer = _lps(aff, np.array([[1, 1, 0], [1, 8, 0], [8, 8, 0], [8, 1, 0]], float))
    inner = _lps(aff, np.array([[3, 3, 0], [3, 6, 0], [6, 6, 0], [6, 3, 0]], float))
    ring = np.zeros((10, 10), bool)
    ring[1:9, 1:9] = True
    ring[4:6, 4:6] = False  # the hole: the voxels strictly inside the inner contour
    np.testing.assert_array_equal(rasterise([outer, inner], aff, (10, 10, 1))[:, :, 0], ring)
    np.testing.assert_array_equal(rasterise([inner, outer], aff, (10, 10, 1))[:, :, 0], ring)  # any order


def _affines():
    axial = np.diag([0.8, 0.8, 2.5, 1.0])
    axial[:3, 3] = [-100.0, 40.0, 17.5]
    flipped = axial @ np.array([[1, 0, 0, 0], [0, -1, 0, 47], [0, 0, 1, 0], [0, 0, 0, 1.0]])  # rows flipped
    sagittal = np.array([[0, 0, 3.0, -60], [0.9, 0, 0, -80], [0, -0.9, 0, 90], [0, 0, 0, 1]])  # slices along x
    coronal = np.array([[0.7, 0, 0, -50], [0, 0, 4.0, -30], [0, 0.7, 0, -70], [0, 0, 0, 1]])  # slices along y
    slices_first = axial[:, [2, 0, 1, 3]]  # a file storing the slice axis first
    return {"axial": (axial, 2), "row-flipped": (flipped, 2), "sagittal": (sagittal, 2), "coronal": (coronal, 2),
            "slices-first": (slices_first, 0)}


@pytest.mark.parametrize("name", list(_affines()))
def test_contours_in_patient_coordinates_land_on_their_voxels_in_any_orientation(name):
    affine, axis = _affines()[name]
    shape = (12, 48, 48) if axis == 0 else (48, 48, 12)
    truth = np.zeros(shape, bool)
    contours = []
    for k, centre, radius in ((2, (20, 24), 9.3), (5, (25, 20), 12.6), (9, (30, 30), 6.2)):
        truth |= _disk(shape, axis, k, centre, radius)
        contours.append(_circle(affine, axis, k, centre, radius))
    mask = rasterise(contours, affine, shape, name="liver")
    assert _dice(mask, truth) >= 0.97
    held = np.flatnonzero(np.moveaxis(mask, axis, 0).any(axis=(1, 2))).tolist()
    assert held == [2, 5, 9]


def test_a_contour_between_slices_is_an_error_naming_the_structure_and_position():
    affine = np.diag([1.0, 1.0, 3.0, 1.0])
    off = _circle(affine, 2, 4.5, (10, 10), 4)  # half-way between slices 4 and 5
    with pytest.raises(MedsegError, match=r"spleen: a contour at \[.*\] mm \(LPS\) matches no slice") as info:
        rasterise([off], affine, (20, 20, 8), name="spleen")
    assert "slice position 4.50" in str(info.value)
    outside = _circle(affine, 2, 9, (10, 10), 4)
    with pytest.raises(MedsegError, match="matches no slice"):
        rasterise([outside], affine, (20, 20, 8), name="spleen")


def test_a_tilted_contour_is_refused():
    affine = np.diag([1.0, 1.0, 1.0, 1.0])
    tilted = _circle(affine, 2, 5, (10, 10), 6)
    tilted[:, 2] += 0.3 * (tilted[:, 1] - tilted[:, 1].mean())  # a plane tilted against the slices
    with pytest.raises(MedsegError, match="not in one slice plane"):
        rasterise([tilted], affine, (20, 20, 10), name="liver")


def test_the_slice_is_found_by_position_not_by_index():
    affine = np.diag([1.0, 1.0, 2.0, 1.0])
    affine[2, 3] = -37.0  # the series starts at z = -37 mm
    contour = _circle(affine, 2, 3, (8, 8), 4)
    assert np.allclose(contour[:, 2], -31.0)
    mask = rasterise([contour], affine, (16, 16, 6))
    assert np.flatnonzero(mask.any(axis=(0, 1))).tolist() == [3]


@pytest.mark.parametrize("name", list(_affines()))
def test_masks_traced_to_contours_and_rasterised_back_are_unchanged_holes_included(name):
    pytest.importorskip("skimage", reason="tracing contours needs scikit-image")
    from medseg.contours import contours_of
    from medseg.phantom import make_phantom

    affine, axis = _affines()[name]
    labels = make_phantom(321, shape=(64, 64, 12)).labels
    labels = np.moveaxis(labels, 2, 0) if axis == 0 else labels
    ring = labels == 1  # the phantom's liver on every slice
    at = [slice(None)] * 3
    at[axis] = 6
    annulus = _disk(ring.shape, axis, 6, (32, 32), 14) & ~_disk(ring.shape, axis, 6, (32, 32), 6)
    ring[tuple(at)] = annulus[tuple(at)]  # slice 6 holds a ring: an outline and a hole
    contours = contours_of(ring, affine, axis)
    assert {k for k, _ in contours} == set(np.flatnonzero(np.moveaxis(ring, axis, 0).any(axis=(1, 2))).tolist())
    back = rasterise([c for _, c in contours], affine, ring.shape, axis=axis, name="liver")
    np.testing.assert_array_equal(back, ring)
