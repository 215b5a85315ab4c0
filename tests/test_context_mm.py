"""2.5D context chosen in millimetres: 0.5 mm and 5 mm slices give the network neighbours at about
the same distance, in training and in inference alike."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import assert_same_labels

from medseg.bundle import ModelCard
from medseg.config import TrainConfig
from medseg.errors import MedsegError
from medseg.inference import Predictor, _model_input
from medseg.scan import Scan
from medseg.slices import context_indices, context_step
from medseg.trainset import PreparedCase, SliceSampler
from test_live_slice import _assert_slices_equal, _bundle, _volume


@pytest.mark.parametrize(
    "slice_mm, step",
    [(0.5, 6), (0.625, 5), (1.0, 3), (1.25, 2), (2.0, 2), (2.5, 1), (3.0, 1), (5.0, 1), (10.0, 1)],
)
def test_the_step_is_the_slice_nearest_the_context_distance(slice_mm, step):
    assert context_step(3.0, slice_mm) == step
    assert context_step(None, slice_mm) == 1  # cards written before context_mm: the next slice


def test_context_indices_skip_slices_and_clamp_at_the_ends():
    got = context_indices(np.array([0, 5, 9]), 1, 10, step=3)
    np.testing.assert_array_equal(got, [[0, 0, 3], [2, 5, 8], [6, 9, 9]])
    np.testing.assert_array_equal(context_indices(np.array([4]), 2, 10), [[2, 3, 4, 5, 6]])


def test_model_input_takes_the_neighbours_step_slices_away():
    volume = np.repeat(np.arange(12, dtype=np.float32)[None, None, :] * 20.0, 16, 0).repeat(16, 1)  # slice z: 20 z HU
    x = _model_input(volume, 0, 12, (0.0, 240.0), (16, 16), 1, torch.device("cpu"), step=3)
    centre = x[:, 1, 8, 8].numpy() * 240.0 / 20.0
    below, above = x[:, 0, 8, 8].numpy() * 240.0 / 20.0, x[:, 2, 8, 8].numpy() * 240.0 / 20.0
    np.testing.assert_allclose(centre, np.arange(12), atol=1e-4)
    np.testing.assert_allclose(below, np.clip(np.arange(12) - 3, 0, 11), atol=1e-4)
    np.testing.assert_allclose(above, np.clip(np.arange(12) + 3, 0, 11), atol=1e-4)


def test_thin_slices_live_and_full_runs_agree_and_use_millimetres():
    """A 1 mm scan with a 3 mm context: the live slice equals the full run's, and both differ from
    a next-slice context (so the step is really used)."""
    bundle = _bundle()
    bundle_mm = dataclasses.replace(bundle, card=dataclasses.replace(bundle.card, context_mm=3.0))
    scan = Scan(_volume((36, 32, 14), 7), np.diag([1.5, 1.5, 1.0, 1.0]), Path("thin.nii.gz"), modality="CT")
    predictor = Predictor(bundle_mm, "cpu", batch_size=5)
    assert predictor.prepare_live(scan).context_step == 3
    _assert_slices_equal(predictor, scan, ks=range(14))
    by_mm = predictor.predict_scan(scan, on_warning=lambda m: None)
    by_slice = Predictor(bundle, "cpu", batch_size=5).predict_scan(scan, on_warning=lambda m: None)
    assert (by_mm != by_slice).any()
    # 3 mm slices: the same input whichever way the card says it
    thick = Scan(scan.array, np.diag([1.5, 1.5, 3.0, 1.0]), Path("thick.nii.gz"), modality="CT")
    assert_same_labels(predictor.predict_scan(thick, on_warning=lambda m: None),
                       Predictor(bundle, "cpu").predict_scan(thick, on_warning=lambda m: None), "3 mm slices")


def test_training_draws_the_same_neighbours_as_inference():
    depth = 20
    image = np.repeat(np.arange(depth, dtype=np.float16)[:, None, None], 32, 1).repeat(32, 2)  # slice z holds z
    classes = np.ones((depth, 32, 32), dtype=np.uint8)
    thin = PreparedCase("thin", image, classes, np.arange(depth), slice_mm=0.5)
    thick = PreparedCase("thick", image, classes, np.arange(depth), slice_mm=4.0)
    cfg = TrainConfig(batch_size=16, crop=32, augment=False)
    for case, step in ((thin, 6), (thick, 1)):
        x, _ = SliceSampler([case], cfg, 1, context_mm=3.0).batch(0, 0)
        z = x[:, 1, 0, 0].numpy()
        np.testing.assert_array_equal(x[:, 0, 0, 0].numpy(), np.clip(z - step, 0, depth - 1))
        np.testing.assert_array_equal(x[:, 2, 0, 0].numpy(), np.clip(z + step, 0, depth - 1))


def test_the_card_checks_context_mm_and_training_records_it():
    card = _bundle().card
    for bad in (0.0, -1.0, 80.0, float("nan")):
        with pytest.raises(MedsegError, match="context_mm"):
            dataclasses.replace(card, context_mm=bad).validate()
    data = dataclasses.asdict(dataclasses.replace(card, context_mm=3.0))
    assert ModelCard.from_dict(data).context_step(0.5) == 6
    assert TrainConfig().context_mm == 3.0
    with pytest.raises(MedsegError, match="context_mm"):
        TrainConfig(context_mm=0.0).validate()


def test_a_run_started_before_context_mm_resumes_with_the_next_slice(tmp_path):
    data = dataclasses.asdict(TrainConfig())
    del data["context_mm"]  # config.json of a run started by a medseg without it
    (tmp_path / "config.json").write_text(json.dumps(data))
    assert TrainConfig.from_json(tmp_path / "config.json").context_mm is None


def test_a_card_with_context_mm_is_format_2_so_older_medseg_refuses_it():
    card = _bundle().card
    assert json.loads(card.to_json())["format_version"] == 1  # read the same way by any medseg
    with_mm = json.loads(dataclasses.replace(card, context_mm=3.0).to_json())
    assert with_mm["format_version"] == 2 and ModelCard.from_dict(with_mm).context_mm == 3.0
    with pytest.raises(MedsegError, match="newer than this medseg"):
        ModelCard.from_dict({**with_mm, "format_version": 3})


def test_the_domain_check_compares_context_distances_with_the_trained_ones():
    from medseg.domain import domain_warnings

    card = dataclasses.replace(_bundle().card, context_mm=3.0, training_data={
        "spacing_mm": {"min": [0.7, 0.7, 0.5], "max": [0.9, 0.9, 0.8]}})

    def spacing_warned(z: float, card=card) -> bool:
        scan = Scan(np.zeros((300, 300, 40), np.int16), np.diag([0.8, 0.8, z, 1.0]), Path(f"z{z}.nii.gz"), modality="CT")
        return any("voxel spacing" in w for w in domain_warnings(scan, card))

    # trained on 0.5-0.8 mm slices: context slices ~3 mm apart, as they are for 0.2-1.5 mm scans
    assert not any(spacing_warned(z) for z in (0.2, 0.6, 1.0, 1.5))
    assert spacing_warned(12.0)  # 12 mm between context slices: far more than the trained ~3 mm
    next_slice = dataclasses.replace(card, context_mm=None)
    assert not any(spacing_warned(z, next_slice) for z in (0.2, 0.6, 2.0))  # 0.5/3 .. 0.8*3 mm, as before
    assert spacing_warned(3.0, next_slice) and spacing_warned(0.1, next_slice)
