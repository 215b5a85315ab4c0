"""Live single-slice prediction: one display axial slice equals that slice of the full run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import assert_same_labels

from medseg.bundle import Bundle, ModelCard, build_model, load_bundle
from medseg.errors import MedsegError
from medseg.geometry import to_display
from medseg.inference import Predictor
from medseg.io import Scan


def _bundle(modality: str = "CT", context: int = 1, orientation: str = "RAS") -> Bundle:
    preprocessing = (
        {"kind": "ct_window", "window": [-200.0, 300.0]}
        if modality == "CT"
        else {"kind": "mr_percentiles", "percentiles": [0.5, 99.5]}
    )
    card = ModelCard(name="tiny", labels={"background": 0, "liver": 1, "tumour": 7}, modality=modality,
                     preprocessing=preprocessing, spacing=[2.0, 2.0], context_slices=context,
                     orientation=orientation, arch_kwargs={"width": 4})
    torch.manual_seed(0)
    model = build_model(card)
    for m in model.modules():  # non-trivial batch norms, so the output depends on the input's scale
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    return Bundle(card, model.eval())


def _volume(shape, seed: int, scale: float = 150.0) -> np.ndarray:
    """Smooth blobs plus noise: labels that change from slice to slice."""
    rng = np.random.default_rng(seed)
    i, j, k = np.meshgrid(*(np.linspace(-1, 1, n) for n in shape), indexing="ij")
    blobs = np.sin(3 * i + 2 * k) * np.cos(4 * j - k) * scale
    return (blobs + rng.normal(0, scale / 3, size=shape)).astype(np.float32)


def _oblique_lps_affine() -> np.ndarray:
    """Stored (S, L, A) with a few degrees of in-plane tilt: axes permuted and flipped."""
    t = np.radians(7.0)
    rot = np.array([[np.cos(t), -np.sin(t), 0], [np.sin(t), np.cos(t), 0], [0, 0, 1]])
    axes = np.array([[0.0, -1.7, 0.0], [0.0, 0.0, 1.3], [2.5, 0.0, 0.0]])  # columns: i -> +S, j -> -R (L), k -> +A
    affine = np.eye(4)
    affine[:3, :3] = rot @ axes
    affine[:3, 3] = (10.0, -20.0, 30.0)
    return affine


def _assert_slices_equal(predictor: Predictor, scan: Scan, ks=None, cache=None) -> None:
    full, _ = to_display(predictor.predict_scan(scan, on_warning=lambda m: None), scan.affine)
    depth = full.shape[0]
    for k in ks if ks is not None else (0, 1, depth // 2, depth - 2, depth - 1):
        got = predictor.predict_slice(scan, k, cache=cache)
        assert got.shape == full.shape[1:]
        assert got.dtype == full.dtype
        assert_same_labels(got, full[k], f"display slice {k}")
    assert len(np.unique(full)) > 1, "a constant label map would not test anything"


def test_ras_nifti_like_scan():
    scan = Scan(_volume((40, 36, 9), 1), np.diag([1.5, 1.5, 3.0, 1.0]), Path("ras.nii.gz"), modality="CT")
    _assert_slices_equal(Predictor(_bundle(), "cpu", batch_size=4), scan)


def test_lps_oblique_permuted_scan():
    scan = Scan(_volume((8, 30, 26), 2), _oblique_lps_affine(), Path("lps.nii.gz"), modality="CT")
    predictor = Predictor(_bundle(context=2), "cpu", batch_size=3)
    live = predictor.prepare_live(scan)
    assert live.depth == 8
    _assert_slices_equal(predictor, scan, cache=live)


def test_model_in_another_axis_order():
    """A card whose axial axis runs superior to inferior: display slice k is model slice depth-1-k."""
    scan = Scan(_volume((30, 28, 7), 3), np.diag([-1.6, 1.6, 2.0, 1.0]), Path("las.nii.gz"), modality="CT")
    _assert_slices_equal(Predictor(_bundle(orientation="LPI"), "cpu"), scan)


def test_mr_uses_the_whole_volume_percentile_range():
    array = _volume((36, 32, 8), 4, scale=50.0) + 300.0
    array[:, :, 6] *= 6.0  # one bright slice: the volume's range differs from any one slice's
    scan = Scan(array, np.diag([1.8, 1.8, 4.0, 1.0]), Path("mr.nii.gz"), modality="MR")
    predictor = Predictor(_bundle("MR"), "cpu")
    _assert_slices_equal(predictor, scan, ks=range(8))
    # the range is computed once per scan and kept
    assert predictor._live(scan, None) is predictor._live(scan, None)


def test_slice_outside_the_scan_is_refused():
    scan = Scan(_volume((20, 20, 5), 5), np.eye(4), Path("small.nii.gz"), modality="CT")
    predictor = Predictor(_bundle(), "cpu")
    for k in (-1, 5):
        with pytest.raises(MedsegError, match="small.nii.gz: axial slice"):
            predictor.predict_slice(scan, k)


def test_bundled_model_on_a_phantom_slice_and_its_uncertainty():
    from medseg.bundle import default_bundle_path
    from medseg.phantom import make_phantom

    ph = make_phantom(7, shape=(160, 160, 24), spacing=(2.4, 2.4, 9.0))
    scan = Scan(ph.image, ph.affine, Path("phantom.nii.gz"), modality="CT")
    predictor = Predictor(load_bundle(default_bundle_path()), "cpu")
    unc = np.zeros(24, dtype=np.float32)
    full, _ = to_display(predictor.predict_scan(scan, uncertainty=unc), scan.affine)
    assert full.max() > 0
    for k in (0, 8, 12, 23):
        labels, score = predictor.predict_slice_with_uncertainty(scan, k)
        assert_same_labels(labels, full[k], f"display slice {k}")
        assert score == pytest.approx(float(unc[k]), abs=1e-6)
