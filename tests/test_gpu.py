"""CUDA paths: inference and training on a GPU agree with the CPU (skipped, with the reason, without CUDA)."""

from __future__ import annotations

import csv
import subprocess
import sys

import numpy as np
import pytest
import torch

from medseg.bundle import load_bundle
from medseg.inference import Predictor, resolve_device
from medseg.phantom import LABELS, make_dataset, make_phantom

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (none on this machine)"),
]


@pytest.fixture(scope="module")
def phantom():
    return make_phantom(4321, shape=(192, 192, 24))


def _scan(ph):
    from medseg.io import Scan

    return Scan(ph.image.astype(np.int16), ph.affine, source=__import__("pathlib").Path("phantom.nii.gz"), modality="CT")


def test_auto_picks_the_gpu():
    assert resolve_device("auto").type == "cuda" and resolve_device("cuda:0").index == 0


def test_cuda_prediction_matches_the_cpu(phantom):
    scan = _scan(phantom)
    cpu = Predictor.from_folder(None, "cpu").predict_scan(scan)
    gpu_predictor = Predictor.from_folder(None, "cuda")
    assert next(gpu_predictor.model.parameters()).is_cuda
    gpu = gpu_predictor.predict_scan(scan)
    agree = float((cpu == gpu).mean())
    assert agree >= 0.995, agree  # fp16 autocast on the GPU: a few boundary voxels may differ
    liver = LABELS["liver"]
    p, t = gpu == liver, phantom.labels == liver
    assert 2 * (p & t).sum() / (p.sum() + t.sum()) > 0.9


def test_cuda_live_slice_matches_the_full_run(phantom):
    from medseg.geometry import to_display

    scan = _scan(phantom)
    predictor = Predictor.from_folder(None, "cuda")
    full, _ = to_display(predictor.predict_scan(scan), scan.affine)
    for k in (0, 11, full.shape[0] - 1):
        # fp16 autocast: one slice and a batch of 8 take different kernels, so a few boundary
        # voxels may differ on the GPU (the CPU gives the same labels exactly: test_live_slice.py)
        agree = float((predictor.predict_slice(scan, k) == full[k]).mean())
        assert agree >= 0.998, (k, agree)


def test_training_on_cuda(tmp_path):
    ds = make_dataset(tmp_path / "ds", [11, 12, 13], shape=(64, 64, 16), spacing=(6.0, 6.0, 14.0))
    run = tmp_path / "run"
    r = subprocess.run(
        [sys.executable, "-m", "medseg.cli", "train", str(ds), "-o", str(run), "--epochs", "2",
         "--steps-per-epoch", "4", "--batch-size", "4", "--width", "4", "--crop", "64", "--spacing", "6",
         "--val-cases", "1", "--device", "cuda"],
        capture_output=True, text=True, timeout=600,
    )
    assert r.returncode == 0, r.stderr
    card = load_bundle(run / "best").card
    assert card.training["device"].startswith("cuda")
    rows = list(csv.DictReader(open(run / "history.csv")))
    assert len(rows) == 2 and all(np.isfinite(float(row["loss"])) for row in rows)


@pytest.mark.parametrize("loss", ["ce", "ce+dice"])
def test_sparse_loss_under_autocast_on_cuda_matches_the_labelled_voxels_alone(loss):
    """The ignore label on the GPU, logits from bf16/fp16 autocast as training makes them."""
    from medseg.config import TrainConfig, make_loss
    from medseg.transforms import IGNORE_INDEX

    g = torch.Generator(device="cuda").manual_seed(0)
    logits = (torch.randn(4, 6, 32, 32, generator=g, device="cuda") * 2).to(torch.bfloat16)
    y = torch.randint(0, 6, (4, 32, 32), generator=g, device="cuda")
    y[:2] = IGNORE_INDEX
    fn = make_loss(TrainConfig(loss=loss), None)
    keep = y != IGNORE_INDEX
    alone = fn(logits.movedim(1, -1)[keep].T[None, :, :, None], y[keep][None, :, None])
    torch.testing.assert_close(fn(logits, y), alone, rtol=1e-4, atol=1e-5)


def test_sparse_fine_tune_on_cuda(tmp_path):
    """Two labelled slices, the rest ignore: a fine-tune on CUDA (AMP, the viewer's sparse settings) runs and records them."""
    from medseg.bundle import default_bundle_path
    from medseg.config import TrainConfig
    from medseg.curation import add_case
    from medseg.io import Scan
    from medseg.training import train

    ph = make_phantom(905, shape=(96, 96, 24))
    names = {"background": 0, **{k: v for k, v in LABELS.items() if v}}
    add_case(tmp_path / "ds", Scan(ph.image.astype(np.float32), ph.affine, tmp_path / "p.nii.gz"), ph.labels, names,
             labelled={"reviewed": [8, 14]})
    cfg = TrainConfig(epochs=1, steps_per_epoch=4, init=str(default_bundle_path()), crop=64, val_cases=0,
                      device="cuda", freeze_batchnorm=True, lr=1e-4)
    bundle = train(tmp_path / "ds", tmp_path / "run", cfg)
    assert bundle.card.training["device"].startswith("cuda") and bundle.card.training["amp"] != "off"
    assert bundle.card.training["sparse_labels"]["labelled_slices"] == {"p": "2/24"}
    assert all(np.isfinite(v) for v in bundle.card.training["val_dice"].values())
