"""The minimal `medseg train`: a tiny CPU run writes usable bundles and lowers the loss."""

import csv
import json
import subprocess
import sys

import numpy as np
import pytest

from medseg.bundle import load_bundle
from medseg.data import find_cases, read_labels
from medseg.errors import MedsegError
from medseg.phantom import LABELS, make_dataset


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("ds")
    return make_dataset(root, [11, 12, 13, 14], shape=(48, 48, 16), spacing=(8.0, 8.0, 14.0))


def test_dataset_layout(tiny_dataset):
    cases, meta = find_cases(tiny_dataset)
    assert [c.name for c in cases] == ["phantom_0011", "phantom_0012", "phantom_0013", "phantom_0014"]
    assert read_labels(meta) == LABELS
    assert read_labels({"labels": {"0": "background", "1": "spleen"}}) == {"background": 0, "spleen": 1}  # MSD


def test_missing_label_is_reported(tmp_path):
    make_dataset(tmp_path, [1], shape=(32, 32, 8), spacing=(10.0, 10.0, 20.0))
    next((tmp_path / "labelsTr").iterdir()).unlink()
    with pytest.raises(MedsegError, match="phantom_0001_0000.nii.gz: no label file for it in labelsTr"):
        find_cases(tmp_path)


def test_train_cli_writes_bundles(tiny_dataset, tmp_path):
    run = tmp_path / "run"
    r = subprocess.run(
        [sys.executable, "-m", "medseg.cli", "train", str(tiny_dataset), "-o", str(run), "--epochs", "3",
         "--steps-per-epoch", "6", "--batch-size", "4", "--width", "4", "--crop", "64", "--spacing", "8",
         "--val-cases", "1", "--device", "cpu", "--lr", "0.01"],
        capture_output=True, text=True, timeout=600,
    )
    assert r.returncode == 0, r.stderr
    for name in ("best", "last"):
        bundle = load_bundle(run / name)
        assert bundle.card.labels == LABELS and bundle.card.modality == "CT"
        assert bundle.card.context_slices == 1 and bundle.card.arch_kwargs["width"] == 4
        assert bundle.card.training["val_cases"] and "medseg train" in bundle.card.training["command"]
    rows = list(csv.DictReader(open(run / "history.csv")))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    losses = [float(r["loss"]) for r in rows]
    assert losses[-1] < losses[0] and all(np.isfinite(losses))
    assert json.loads((run / "config.json").read_text())["epochs"] == 3
    # fine-tuning from the run's best bundle keeps its input contract and all matching classes
    r = subprocess.run(
        [sys.executable, "-m", "medseg.cli", "train", str(tiny_dataset), "-o", str(tmp_path / "ft"), "--epochs", "1",
         "--steps-per-epoch", "2", "--batch-size", "2", "--crop", "64", "--val-cases", "1", "--device", "cpu",
         "--init", str(run / "best"), "--width", "8", "--spacing", "3"],
        capture_output=True, text=True, timeout=600,
    )
    assert r.returncode == 0, r.stderr
    ft = load_bundle(tmp_path / "ft" / "best").card
    assert ft.arch_kwargs["width"] == 4 and ft.spacing == [8.0, 8.0]  # from the source, not the flags
    assert ft.training["init"]["kept_classes"] == list(LABELS)


def test_train_refuses_too_few_cases(tmp_path):
    make_dataset(tmp_path, [1], shape=(32, 32, 8), spacing=(10.0, 10.0, 20.0))
    r = subprocess.run([sys.executable, "-m", "medseg.cli", "train", str(tmp_path), "-o", str(tmp_path / "run")],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 1 and "too few" in r.stderr and "Traceback" not in r.stderr


def test_transfer_weights_matches_labels_by_name():
    import torch

    from medseg.bundle import Bundle, ModelCard, build_model
    from medseg.training import transfer_weights

    src_card = ModelCard(name="src", labels={"background": 0, "liver": 1, "spleen": 2, "kidney": 3}, modality="CT",
                         arch_kwargs={"width": 4}, context_slices=1)
    torch.manual_seed(0)
    src = build_model(src_card)
    # the hospital renumbers: drops the kidney, adds a tumour, and swaps liver/spleen values
    new_card = ModelCard(name="new", labels={"background": 0, "spleen": 1, "liver": 2, "tumour": 3}, modality="CT",
                         arch_kwargs={"width": 4}, context_slices=1)
    torch.manual_seed(1)
    new = build_model(new_card)
    fresh_tumour = new.head.weight[3].clone()
    kept = transfer_weights(Bundle(src_card, src), new, new_card)
    assert kept == ["background", "spleen", "liver"]
    for new_i, src_i in ((0, 0), (1, 2), (2, 1)):
        torch.testing.assert_close(new.head.weight[new_i], src.head.weight[src_i])
        torch.testing.assert_close(new.head.bias[new_i], src.head.bias[src_i])
    torch.testing.assert_close(new.head.weight[3], fresh_tumour)
    torch.testing.assert_close(new.encoder.stages[0][0][0].weight, src.encoder.stages[0][0][0].weight)
