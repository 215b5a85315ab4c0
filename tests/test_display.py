"""Windowing by content: a NIfTI that does not name its modality opens with the CT window when
its values are Hounsfield units, with a percentile window otherwise."""

from __future__ import annotations

import numpy as np
import pytest

from medseg.display import CT_WINDOWS, default_contrast, shows_as_ct, window_limits
from medseg.intensity import looks_like_ct
from medseg.phantom import make_phantom

SOFT_TISSUE = window_limits(*CT_WINDOWS["soft tissue"])


@pytest.fixture(scope="module")
def ct() -> np.ndarray:
    return make_phantom(5, shape=(64, 64, 12)).image.astype(np.int16)


def test_ct_values_look_like_ct(ct):
    assert looks_like_ct(ct)
    padded = ct.copy()
    padded[:6] = -3024  # scanner padding outside the reconstructed field of view
    assert looks_like_ct(padded)
    assert looks_like_ct(ct.astype(np.float32) + np.float32(0.25))  # resampled, not integers


def test_other_values_do_not(ct):
    rng = np.random.default_rng(0)
    shape = ct.shape
    mr = rng.gamma(2.0, 150.0, size=shape).astype(np.float32)  # magnitudes: never near -1000
    zscored = rng.normal(0.0, 1.0, size=shape).astype(np.float32)
    phase = rng.uniform(-3142.0, 3142.0, size=shape).astype(np.float32)  # air-like values, but no tissue peak
    raw = (ct + 1024).astype(np.uint16)  # CT stored without its rescale intercept
    for name, array in (("mr", mr), ("zscored", zscored), ("phase", phase), ("raw CT", raw)):
        assert not looks_like_ct(array), name
    assert not looks_like_ct(np.full(shape, np.nan, np.float32))


def test_default_contrast_follows_the_file_then_the_values(ct):
    rng = np.random.default_rng(1)
    mr = rng.gamma(2.0, 150.0, size=ct.shape).astype(np.float32)
    assert shows_as_ct(ct, None) and default_contrast(ct, None) == SOFT_TISSUE
    assert not shows_as_ct(mr, None) and default_contrast(mr, None) != SOFT_TISSUE
    lo, hi = default_contrast(mr, None)
    assert (lo, hi) == pytest.approx(tuple(np.percentile(mr[:: max(1, mr.shape[0] // 64)], [1, 99])))
    assert not shows_as_ct(ct, "MR")  # what the file says wins
    assert shows_as_ct(mr, "CT")


@pytest.mark.parametrize("name, is_ct", [("ct_abdomen_3mm.nii.gz", True), ("mr_3mm_lps.nii.gz", False),
                                         ("mr_brain_tiny.nii", False)])
def test_real_nifti_scans_are_told_apart(shared_data, name, is_ct):
    from medseg.io import load_scan

    scan = load_scan(shared_data / name)
    assert scan.modality is None  # NIfTI does not say: the values decide
    assert looks_like_ct(scan.array) is is_ct
