"""The per-slice uncertainty: the share of uncertain voxels near predicted structures."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from medseg.inference import (
    UNCERTAIN_ENTROPY,
    UNCERTAIN_SLICE,
    UNCERTAINTY_SCALE,
    Predictor,
    slice_uncertainty,
)
from medseg.io import Scan


def _logits(probs, shape=(32, 32)) -> torch.Tensor:
    """Logits (1, K, H, W) whose softmax is ``probs`` at every pixel."""
    p = torch.tensor(probs, dtype=torch.float32).clamp_min(1e-30)
    return torch.log(p)[None, :, None, None].expand(1, len(probs), *shape).clone()


def test_confident_background_scores_zero_and_uniform_scores_one():
    assert float(slice_uncertainty(_logits([1.0, 0.0, 0.0]), (2.0, 2.0))[0]) == 0.0
    assert float(slice_uncertainty(_logits([1 / 3, 1 / 3, 1 / 3]), (2.0, 2.0))[0]) == pytest.approx(1.0)
    # a confident structure is near foreground but certain
    assert float(slice_uncertainty(_logits([0.0, 1.0, 0.0]), (2.0, 2.0))[0]) == 0.0


def test_background_does_not_dilute_the_score():
    """An uncertain patch scores the same in a small or a large field of background."""
    def slice_with_patch(size):
        logits = torch.full((1, 3, size, size), -50.0)
        logits[0, 0] = 50.0  # confident background
        logits[0, :, 8:16, 8:16] = 0.0  # uniform patch: uncertain and near a structure
        return logits

    small, large = (float(slice_uncertainty(slice_with_patch(n), (2.0, 2.0))[0]) for n in (32, 256))
    assert 0.0 < small <= 1.0
    assert large == pytest.approx(small)
    # the old score, the mean entropy over the slice, fell ~64x with the larger field
    entropy_small = (8 * 8) / 32**2
    assert entropy_small / ((8 * 8) / 256**2) == pytest.approx(64.0)


def test_entropy_is_normalised_by_the_number_of_classes():
    # an even split between two classes: entropy log 2 / log K
    for k in (3, 6, 12):
        probs = [0.5, 0.5] + [0.0] * (k - 2)
        expected = 1.0 if math.log(2) / math.log(k) > UNCERTAIN_ENTROPY else 0.0
        assert float(slice_uncertainty(_logits(probs), (2.0, 2.0))[0]) == expected, k


def test_the_scale_is_named():
    assert "0..1" in UNCERTAINTY_SCALE and 0.0 < UNCERTAIN_SLICE < 1.0


@pytest.fixture(scope="module")
def phantom_scores():
    """Scores of a phantom clean and with slices 6..9 corrupted by heavy noise, and its labels."""
    from medseg.phantom import make_phantom

    ph = make_phantom(905, shape=(160, 160, 18), spacing=(2.4, 2.4, 11.0))
    predictor = Predictor.from_folder(None, "cpu")
    clean = ph.image.astype(np.float32)
    clean[:, :, :2] = -1000.0  # two slices of air: nothing to segment
    corrupt = clean.copy()
    rng = np.random.default_rng(0)
    bad = slice(6, 10)
    corrupt[:, :, bad] += rng.normal(0.0, 200.0, corrupt[:, :, bad].shape).astype(np.float32)
    out = {}
    for name, array in (("clean", clean), ("corrupt", corrupt)):
        unc = np.full(array.shape[2], np.nan, dtype=np.float32)
        labels = predictor.predict_scan(Scan(array, ph.affine, Path(f"{name}.nii.gz"), modality="CT"), uncertainty=unc)
        out[name], out[name + " labels"] = unc, labels
    return out, bad


@pytest.mark.slow
def test_scores_are_shares(phantom_scores):
    scores, _ = phantom_scores
    for unc in (scores["clean"], scores["corrupt"]):
        assert np.all(np.isfinite(unc)) and np.all((unc >= 0) & (unc <= 1))


@pytest.mark.slow
def test_background_only_slices_score_zero(phantom_scores):
    """A slice labelled background everywhere, with no structure nearby, scores 0 (air next to the body)."""
    scores, _ = phantom_scores
    empty = ~scores["clean labels"].any(axis=(0, 1))
    assert empty[1], "the air slice next to the body should be labelled background"
    np.testing.assert_array_equal(scores["clean"][empty], 0.0)
    assert np.all(scores["clean"][~empty] > 0)
    # (the slice with air on both sides, slice 0, is not empty: the model invents organs there, and scores high)


@pytest.mark.slow
def test_corrupted_slices_score_higher_than_clean_ones(phantom_scores):
    scores, bad = phantom_scores
    corrupt, clean = scores["corrupt"], scores["clean"]
    assert np.all(corrupt[bad] > clean[bad])
    assert corrupt[bad].min() > np.median(clean[2:])
    # the worst slices come first: the corrupted slices rank above every clean one of the same scan
    others = np.r_[corrupt[2:6], corrupt[10:]]
    assert corrupt[bad].mean() > np.percentile(others, 75)
