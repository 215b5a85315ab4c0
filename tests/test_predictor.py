"""The prepared predictor: built once, reused for many scans, never changes the caller's bundle."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import assert_same_labels

from medseg.bundle import Bundle, ModelCard, build_model, load_bundle, save_bundle
from medseg.errors import MedsegError
from medseg.inference import Predictor, segment
from medseg.io import Scan, save_image


def _card() -> ModelCard:
    return ModelCard(
        name="tiny",
        labels={"background": 0, "liver": 1, "tumour": 2},
        modality="CT",
        preprocessing={"kind": "ct_window", "window": [-200.0, 300.0]},
        spacing=[2.0, 2.0],
        context_slices=1,
        arch_kwargs={"width": 4},
    )


def _bundle(seed: int = 0) -> Bundle:
    torch.manual_seed(seed)
    card = _card()
    model = build_model(card)
    # non-trivial batch-norm statistics, so folding them changes the weights for real
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    return Bundle(card, model.train())


def _scan(seed: int, shape=(40, 36, 6)) -> Scan:
    rng = np.random.default_rng(seed)
    array = rng.normal(40.0, 120.0, size=shape).astype(np.float32)
    affine = np.diag([2.0, 2.0, 3.0, 1.0])
    return Scan(array=array, affine=affine, source=Path(f"scan{seed}.nii.gz"), modality="CT")


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_the_callers_bundle_is_never_changed():
    bundle = _bundle()
    before = _state(bundle.model)
    kinds = [type(m).__name__ for m in bundle.model.modules()]
    predictor = Predictor(bundle, "cpu")
    predictor.predict_scan(_scan(1))
    assert bundle.model.training, "the caller's model was switched to eval mode"
    assert [type(m).__name__ for m in bundle.model.modules()] == kinds, "the caller's batch norms were folded away"
    after = bundle.model.state_dict()
    assert before.keys() == after.keys()
    for key, value in before.items():
        assert torch.equal(value, after[key]), key
    assert predictor.model is not bundle.model
    assert not predictor.model.training
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in predictor.model.modules())


def test_one_predictor_serves_many_scans_as_segment_does():
    bundle = _bundle()
    predictor = Predictor(bundle, "cpu", batch_size=3)
    for seed in (1, 2, 3):
        scan = _scan(seed)
        labels = predictor.predict_scan(scan)
        assert labels.shape == scan.shape
        assert_same_labels(labels, segment(scan, bundle, device="cpu", batch_size=5), f"seed {seed}")
    # the folded model predicts what the unfolded eval-mode model predicts
    reference = Bundle(bundle.card, _bundle().model.eval())
    assert_same_labels(predictor.predict_scan(_scan(4)), segment(_scan(4), reference, device="cpu"), "folded")


def test_predictions_vary_with_the_scan():
    """The comparison above would be empty if the model always answered one class."""
    predictor = Predictor(_bundle(), "cpu")
    labels = np.concatenate([predictor.predict_scan(_scan(s)).ravel() for s in (1, 2)])
    assert len(np.unique(labels)) > 1


def test_from_folder_and_predict_file(tmp_path):
    bundle = _bundle()
    save_bundle(bundle.model.eval(), bundle.card, tmp_path / "model")
    predictor = Predictor.from_folder(tmp_path / "model", "cpu")
    assert predictor.card.labels == bundle.card.labels
    scan = _scan(5)
    path = save_image(scan, tmp_path / "ct.nii.gz")
    loaded, labels = predictor.predict_file(path, modality="CT")
    assert loaded.shape == scan.shape
    np.testing.assert_array_equal(labels, Predictor(load_bundle(tmp_path / "model"), "cpu").predict_scan(loaded))


def test_the_predictor_checks_each_scan():
    predictor = Predictor(_bundle(), "cpu")
    mr = _scan(1)
    mr.modality = "MR"
    with pytest.raises(MedsegError, match=r"scan1\.nii\.gz: the model 'tiny' is for CT but the scan is MR"):
        predictor.predict_scan(mr)
    with pytest.raises(MedsegError, match="batch size 0: must be at least 1"):
        Predictor(_bundle(), "cpu", batch_size=0)
