"""Fill between corrected slices (medseg.interpolate): shape-based interpolation of each structure."""

from __future__ import annotations

import numpy as np
import pytest

from medseg.errors import MedsegError
from medseg.interpolate import fill_between, signed_distance
from medseg.phantom import LABELS, make_phantom


@pytest.fixture(scope="module")
def phantom():
    return make_phantom(321, shape=(128, 128, 60))


def _dice(a, b):
    return 2 * (a & b).sum() / max(a.sum() + b.sum(), 1)


@pytest.mark.parametrize("organ", ["liver", "spleen", "kidney_left"])
def test_middle_slices_of_an_organ_come_back_from_the_slices_either_side(phantom, organ):
    value = LABELS[organ]
    zs = np.flatnonzero((phantom.labels == value).any(axis=(0, 1)))
    mid = int(zs[len(zs) // 2])
    a, b = mid - 2, mid + 2  # two slices corrected, three slices between (about 11 mm)
    sparse = np.zeros_like(phantom.labels)
    sparse[:, :, [a, b]] = phantom.labels[:, :, [a, b]]
    spacing = tuple(float(s) for s in np.sqrt((phantom.affine[:3, :3] ** 2).sum(axis=0))[:2])
    filled, slices = fill_between(sparse, key_slices=[a, b], spacing=spacing)
    assert slices == [a + 1, a + 2, a + 3]
    for k in slices:
        d = _dice(filled[:, :, k] == value, phantom.labels[:, :, k] == value)
        assert d >= 0.9, (organ, k, d)
    np.testing.assert_array_equal(filled[:, :, [a, b]], sparse[:, :, [a, b]])  # key slices untouched
    assert filled[:, :, : a].max() == 0 and filled[:, :, b + 1:].max() == 0  # nothing outside the keys


def test_a_key_slice_without_the_structure_stops_the_fill():
    labels = np.zeros((20, 20, 9), np.uint8)
    labels[5:15, 5:15, 0] = 1
    labels[5:15, 5:15, 8] = 1
    labels[2:4, 2:4, 4] = 2  # slice 4 was corrected: structure 1 is absent there
    filled, slices = fill_between(labels, key_slices=[0, 4, 8])
    assert not (filled == 1)[:, :, 1:8].any() and slices == []
    filled, slices = fill_between(labels, key_slices=[0, 8])  # without that key slice: filled through
    assert slices == list(range(1, 8)) and (filled[:, :, 1:8] == 1).sum() > 0


def test_interpolation_moves_and_grows_the_shape():
    labels = np.zeros((40, 40, 5), np.uint8)
    labels[10:20, 10:20, 0] = 3  # a small square
    labels[14:34, 14:34, 4] = 3  # a larger one, shifted (overlapping, as anatomy a few mm apart does)
    filled, _ = fill_between(labels)
    areas = [(filled[:, :, k] == 3).sum() for k in range(5)]
    assert all(a > 0 for a in areas) and areas[0] < areas[2] < areas[3] < areas[4]
    centres = [np.argwhere(filled[:, :, k] == 3).mean(axis=0)[0] for k in range(5)]
    assert all(c0 < c1 for c0, c1 in zip(centres, centres[1:]))


def test_painted_voxels_and_other_structures_are_kept():
    labels = np.zeros((20, 20, 5), np.uint8)
    labels[4:16, 4:16, 0] = 1
    labels[4:16, 4:16, 4] = 1
    labels[8:12, 8:12, 2] = 2  # an existing label on a slice in between (not a key slice)
    filled, slices = fill_between(labels, key_slices=[0, 4], values=[1])
    assert (filled[8:12, 8:12, 2] == 2).all() and slices == [1, 2, 3]


def test_axis_and_errors():
    labels = np.zeros((6, 10, 10), np.uint8)
    labels[0, 2:8, 2:8] = 1
    labels[5, 2:8, 2:8] = 1
    filled, slices = fill_between(labels, axis=0)
    assert slices == [1, 2, 3, 4] and (filled[3] == 1).sum() == 36
    with pytest.raises(MedsegError, match="outside 0..5"):
        fill_between(labels, key_slices=[0, 9], axis=0)
    with pytest.raises(MedsegError, match="3-D label map"):
        fill_between(labels[0])


def test_signed_distance_is_negative_inside():
    mask = np.zeros((9, 9), bool)
    mask[3:6, 3:6] = True
    d = signed_distance(mask, (2.0, 2.0))
    assert d[4, 4] < 0 < d[0, 0] and d[4, 4] == pytest.approx(-3.0) and np.isinf(signed_distance(~np.ones((3, 3), bool))).all()


def test_replace_gives_the_between_slices_exactly_the_interpolated_shape():
    labels = np.zeros((20, 20, 5), np.uint8)
    labels[5:15, 5:15, [0, 4]] = 1
    labels[0:20, 0:20, 2] = 1  # the model's prediction there: far too large
    labels[0:2, 0:2, 2] = 2  # another structure: kept
    kept, _ = fill_between(labels, key_slices=[0, 4])
    assert (kept[:, :, 2] == 1).sum() == 20 * 20 - 4  # without replace only background is written
    filled, slices = fill_between(labels, key_slices=[0, 4], values=[1], replace=True)
    assert slices == [1, 2, 3]
    np.testing.assert_array_equal(filled[:, :, 2] == 1, labels[:, :, 0] == 1)
    assert (filled[0:2, 0:2, 2] == 2).all()
