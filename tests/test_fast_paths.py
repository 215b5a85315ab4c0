"""The shortcuts of the performance work give what the plain computation gives: label volumes
counted by torch, augmentation noise drawn by torch, MONAI run without metadata, a warmed-up
predictor, and the scan read in a thread while `medseg segment` loads the model."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from medseg.metrics import label_volumes_ml


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int16])
@pytest.mark.parametrize("order", ["C", "F"])
def test_label_volumes_match_a_plain_count(dtype, order):
    rng = np.random.default_rng(7)
    labels = np.asarray(rng.choice([0, 0, 0, 1, 2, 5, 200], size=(37, 23, 11)), dtype=dtype, order=order)
    values, counts = np.unique(labels, return_counts=True)
    expected = {({1: "liver", 5: "tumour"}).get(int(v), str(int(v))): float(c) * 0.5
                for v, c in zip(values, counts) if v != 0}
    assert label_volumes_ml(labels, 0.5, {"liver": 1, "tumour": 5}) == expected


def test_label_volumes_of_an_empty_map():
    assert label_volumes_ml(np.zeros((4, 4, 0), np.uint8), 1.0) == {}
    assert label_volumes_ml(np.zeros((4, 4, 3), np.uint8), 1.0) == {}


def test_rand_noise_is_reproducible_and_bounded():
    from medseg.transforms import RandNoised

    image = torch.zeros(3, 64, 64)
    t = RandNoised("image", prob=1.0, std=0.1)
    t.set_random_state(seed=3)
    a = t({"image": image, "label": torch.ones(1, 64, 64)})
    t.set_random_state(seed=3)
    b = t({"image": image, "label": torch.ones(1, 64, 64)})
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["label"], torch.ones(1, 64, 64))
    assert a["image"].dtype == torch.float32 and 0 < float(a["image"].std()) < 0.1
    t.set_random_state(seed=4)
    assert not torch.equal(t({"image": image})["image"], a["image"])
    never = RandNoised("image", prob=0.0, std=0.1)
    assert torch.equal(never({"image": image})["image"], image)


def test_sampler_batches_are_plain_tensors_and_leave_monai_tracking_as_it_was(tmp_path):
    from monai.data import get_track_meta

    from medseg.data import find_cases, read_labels
    from medseg.phantom import make_dataset
    from medseg.training import TrainConfig, _model_card, prepare_cases
    from medseg.trainset import SliceSampler

    root = make_dataset(tmp_path / "ds", [5], shape=(48, 48, 8))
    cases, meta = find_cases(root)
    cfg = TrainConfig(batch_size=4, crop=32, width=4)
    card = _model_card(cfg, read_labels(meta), "CT", meta, None)
    sampler = SliceSampler(prepare_cases(cases, card), cfg, card.context_slices)
    x, y = sampler.batch(1, 2)
    assert get_track_meta() is True
    assert type(x) is torch.Tensor and x.shape == (4, card.in_channels, 32, 32) and y.dtype == torch.int64
    x2, y2 = sampler.batch(1, 2)
    assert torch.equal(x, x2) and torch.equal(y, y2)  # a pure function of its key
    assert not torch.equal(x, sampler.batch(1, 3)[0])


def test_warm_up_changes_nothing_the_predictor_returns():
    from medseg.bundle import load_bundle
    from medseg.inference import Predictor
    from medseg.io import load_scan
    from medseg.resources import SAMPLE_IMAGE, sample_path

    scan = load_scan(sample_path(SAMPLE_IMAGE), modality="CT")
    cold = Predictor(load_bundle(None), "cpu").predict_scan(scan)
    warm = Predictor(load_bundle(None), "cpu")
    warm.warm_up()
    assert np.array_equal(warm.predict_scan(scan), cold)


def _medseg(*args):
    return subprocess.run([sys.executable, "-m", "medseg.cli", *map(str, args)], capture_output=True, text=True)


def test_segment_reports_the_scan_read_in_its_thread_and_the_model_loaded_beside_it(tmp_path):
    """The scan is read while the model loads: each one's error is still one line, and nothing is written."""
    from medseg.resources import SAMPLE_IMAGE, sample_path

    bad_scan = tmp_path / "ct.nii.gz"
    bad_scan.write_bytes(b"not a nifti")
    r = _medseg("segment", bad_scan, "-o", tmp_path / "a.nii.gz")
    assert r.returncode == 1 and "Traceback" not in r.stderr and str(bad_scan) in r.stderr
    assert not (tmp_path / "a.nii.gz").exists()
    # a broken model and a broken scan: the scan's error
    (tmp_path / "model").mkdir()
    r = _medseg("segment", bad_scan, "-o", tmp_path / "b.nii.gz", "--model", tmp_path / "model")
    assert r.returncode == 1 and str(bad_scan) in r.stderr and "Traceback" not in r.stderr
    # a good scan and a broken model: the model's error
    r = _medseg("segment", sample_path(SAMPLE_IMAGE), "-o", tmp_path / "c.nii.gz", "--model", tmp_path / "model")
    assert r.returncode == 1 and "model" in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ct.nii.gz", "model"]  # no output, no temporary
