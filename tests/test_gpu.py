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
