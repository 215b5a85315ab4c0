"""`medseg train`: datasets, a learning run, fine-tuning, resume after SIGKILL, torchrun, bad input."""

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import SAMPLE, SHARED

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


@pytest.mark.slow
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


def _train(*args, timeout=600, env=None):
    return subprocess.run([sys.executable, "-m", "medseg.cli", "train", *map(str, args)],
                          capture_output=True, text=True, timeout=timeout, env=env)


TINY = ["--batch-size", "4", "--width", "4", "--crop", "48", "--spacing", "8", "--val-cases", "1", "--device", "cpu",
        "--no-hd95", "--lr", "0.01"]


@pytest.mark.slow
def test_train_refuses_too_few_cases(tmp_path):
    ds = make_dataset(tmp_path / "ds", [1], shape=(32, 32, 8), spacing=(10.0, 10.0, 20.0))
    r = subprocess.run([sys.executable, "-m", "medseg.cli", "train", str(ds), "-o", str(tmp_path / "run")],
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


@pytest.mark.slow
def test_short_training_learns(tmp_path):
    """A short CPU run on small phantoms lowers the loss and segments held-out organs well."""
    ds = make_dataset(tmp_path / "ds", [31, 32, 33, 34, 35], shape=(64, 64, 20), spacing=(6.0, 6.0, 10.0))
    run = tmp_path / "run"
    r = _train(ds, "-o", run, "--epochs", "10", "--steps-per-epoch", "15", "--batch-size", "8", "--width", "8",
               "--crop", "64", "--spacing", "6", "--val-cases", "1", "--device", "cpu", "--loss", "ce+dice",
               "--lr", "0.01", "--seed", "3")
    assert r.returncode == 0, r.stderr
    rows = list(csv.DictReader(open(run / "history.csv")))
    losses = [float(x["loss"]) for x in rows]
    assert np.mean(losses[-2:]) < 0.5 * losses[0], losses
    best = load_bundle(run / "best").card.training
    assert best["val_dice"]["liver"] >= 0.8, best["val_dice"]  # an untrained model scores ~0
    assert all(np.isfinite(v) for v in best["val_hd95_mm"].values())
    assert "hd95_liver" in rows[-1] and float(rows[-1]["slices_per_s"]) > 0
    png = (run / "curves.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


@pytest.mark.slow
def test_msd_task_folder_trains_unmodified(tmp_path):
    from test_data import _msd_task

    root = _msd_task(tmp_path / "Task09_Spleen", seeds=(2, 3, 4))
    r = _train(root, "-o", tmp_path / "run", "--epochs", "1", "--steps-per-epoch", "2", *TINY)
    assert r.returncode == 0, r.stderr
    card = load_bundle(tmp_path / "run" / "best").card
    assert card.labels == {"background": 0, "spleen": 1} and card.modality == "CT"
    assert sorted(card.training["train_cases"] + card.training["val_cases"]) == ["spleen_2", "spleen_3", "spleen_4"]


def _state(path):
    import torch

    return torch.load(path, map_location="cpu", weights_only=True)


@pytest.mark.slow
def test_kill_and_resume_matches_an_uninterrupted_run(tiny_dataset, tmp_path):
    import torch
    from safetensors.torch import load_file

    args = ["--epochs", "6", "--steps-per-epoch", "8", *TINY, "--seed", "5"]
    full = tmp_path / "full"
    assert _train(tiny_dataset, "-o", full, *args).returncode == 0
    run = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "medseg.cli", "train", str(tiny_dataset), "-o", str(run), *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (run / "checkpoint.pt").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    stopped_at = _state(run / "checkpoint.pt")["epoch"]
    assert 1 <= stopped_at < 6, "the run was not killed mid-way"
    r = _train(tiny_dataset, "-o", run, "--resume", "--device", "cpu")
    assert r.returncode == 0, r.stderr
    rows = list(csv.DictReader(open(run / "history.csv")))
    assert [int(x["epoch"]) for x in rows] == [1, 2, 3, 4, 5, 6]
    assert _state(run / "checkpoint.pt")["epoch"] == 6
    assert load_bundle(run / "last").card.training["epoch"] == 6
    ref = list(csv.DictReader(open(full / "history.csv")))
    np.testing.assert_allclose([float(x["loss"]) for x in rows], [float(x["loss"]) for x in ref], rtol=1e-5)
    a, b = load_file(run / "last" / "model.safetensors"), load_file(full / "last" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not [p.name for p in run.iterdir() if p.name.startswith(".")]  # no temp files left
    # resuming a finished run is a no-op; starting afresh in a used folder is refused
    r = _train(tiny_dataset, "-o", run, "--resume", "--device", "cpu")
    assert r.returncode == 0 and len(list(csv.DictReader(open(run / "history.csv")))) == 6
    r = _train(tiny_dataset, "-o", run, *args)
    assert r.returncode == 1 and "--resume" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.slow
def test_torchrun_two_processes(tiny_dataset, tmp_path):
    run = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "medseg.cli",
         "train", str(tiny_dataset), "-o", str(run), "--epochs", "2", "--steps-per-epoch", "3", *TINY],
        capture_output=True, text=True, timeout=600, env=env,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "rank 0/2 finished epoch 2" in r.stderr and "rank 1/2 finished epoch 2" in r.stderr
    assert r.stderr.count("best model:") == 1  # one report, from rank 0
    rows = list(csv.DictReader(open(run / "history.csv")))
    assert [int(x["epoch"]) for x in rows] == [1, 2]  # written once per epoch, not once per rank
    card = load_bundle(run / "best").card
    assert card.training["world_size"] == 2 and len(card.training["train_cases"]) == 3
    assert sorted(p.name for p in run.iterdir()) == ["best", "checkpoint.pt", "config.json", "curves.png",
                                                     "history.csv", "last"]


def test_sqrt_inverse_class_weights(tiny_dataset, tmp_path):
    import torch

    from medseg.config import TrainConfig
    from medseg.training import train
    from medseg.trainset import class_weights

    w = class_weights(torch.tensor([900.0, 90.0, 0.0], dtype=torch.float64), "sqrt-inverse")
    assert w[2] > w[1] > w[0] and abs(float(w.mean()) - 1.0) < 1e-6  # rare classes weigh more; mean weight 1
    freq = torch.tensor([900.0, 90.0, 1.0], dtype=torch.float64) / 990.0  # an absent class counts as one voxel
    expected = 1 / freq.sqrt()
    torch.testing.assert_close(w, (expected / expected.mean()).float())
    assert class_weights(torch.tensor([5.0, 5.0]), "none") is None
    cfg = TrainConfig(epochs=1, steps_per_epoch=1, batch_size=2, width=4, crop=32, spacing=(8.0, 8.0), val_cases=1,
                      device="cpu", hd95=False, lr=0.01, class_weights="sqrt-inverse")
    card = train(tiny_dataset, tmp_path / "run", cfg).card
    assert card.training["loss"] == "ce (sqrt-inverse class weights)"


def test_train_options_default_to_the_config():
    """`medseg train`'s defaults are TrainConfig's (one source): an option cannot drift from its field."""
    import dataclasses

    import typer.main

    from medseg.cli import app
    from medseg.config import TrainConfig

    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    checked = []
    for param in typer.main.get_command(app).commands["train"].params:
        if param.name in defaults:
            default = (param.default, param.default) if param.name == "spacing" else param.default  # --spacing: both axes
            assert default == defaults[param.name], (param.name, param.default, defaults[param.name])
            checked.append(param.name)
    assert len(checked) >= 23 and {"epochs", "lr", "context_slices", "spacing", "augment", "hd95"} <= set(checked)


@pytest.mark.slow
def test_fine_tune_with_a_changed_label_map(tiny_dataset, tmp_path):
    """A hospital renames the tumour and renumbers: matching names keep their classifier rows."""
    ds = tmp_path / "hospital"
    shutil.copytree(tiny_dataset, ds)
    meta = json.loads((ds / "dataset.json").read_text())
    meta["labels"] = {"background": 0, "liver": 1, "spleen": 2, "kidney_right": 3, "kidney_left": 4, "lesion": 5}
    (ds / "dataset.json").write_text(json.dumps(meta))
    src = tmp_path / "src"
    assert _train(tiny_dataset, "-o", src, "--epochs", "1", "--steps-per-epoch", "2", *TINY).returncode == 0
    r = _train(ds, "-o", tmp_path / "ft", "--init", src / "best", "--epochs", "1", "--steps-per-epoch", "2",
               "--freeze-encoder", "--device", "cpu", "--val-cases", "1", "--no-hd95", "--crop", "48")
    assert r.returncode == 0, r.stderr
    src_b, ft = load_bundle(src / "best"), load_bundle(tmp_path / "ft" / "best")
    assert ft.card.labels == meta["labels"]
    assert ft.card.training["init"]["kept_classes"] == ["background", "liver", "spleen", "kidney_right", "kidney_left"]
    assert ft.card.training["frozen_encoder"] is True
    import re

    lr = re.fullmatch(r"adamw\(lr=([^,]+), weight_decay=[^)]+\), \w+ schedule", ft.card.training["optimizer"])
    assert lr is not None and float(lr.group(1)) == 5e-4, ft.card.training["optimizer"]  # the fine-tuning default
    import torch

    for (name, a), b in zip(src_b.model.encoder.state_dict().items(), ft.model.encoder.state_dict().values()):
        if a.is_floating_point():
            torch.testing.assert_close(a, b, atol=2e-3, rtol=2e-3, msg=name)  # frozen (fp16 storage)


@pytest.mark.parametrize("problem", ["empty", "shifted", "missing"])
@pytest.mark.slow
def test_bad_datasets_fail_before_training(tmp_path, problem):
    import nibabel as nib

    ds = make_dataset(tmp_path / "ds", [41, 42, 43], shape=(32, 32, 8), spacing=(10.0, 10.0, 20.0))
    if problem == "empty":
        for f in [*(ds / "imagesTr").iterdir(), *(ds / "labelsTr").iterdir()]:
            f.unlink()
        expect = "empty"
    elif problem == "shifted":
        lab = ds / "labelsTr" / "phantom_0042.nii.gz"
        img = nib.load(str(lab))
        aff = img.affine.copy()
        aff[:3, 3] += [0, 0, 20.0]
        nib.save(nib.Nifti1Image(np.asanyarray(img.dataobj), aff), str(lab))
        expect = "phantom_0042.nii.gz: grid is shifted"
    else:
        meta = json.loads((ds / "dataset.json").read_text())
        meta["training"] = [{"image": "./imagesTr/phantom_0041.nii.gz", "label": "./labelsTr/phantom_0041.nii.gz"},
                            {"image": "./imagesTr/nope.nii.gz", "label": "./labelsTr/nope.nii.gz"}]
        (ds / "dataset.json").write_text(json.dumps(meta))
        expect = "nope.nii.gz: named in dataset.json but missing"
    run = tmp_path / "run"
    r = _train(ds, "-o", run, "--epochs", "1", "--steps-per-epoch", "1", *TINY)
    assert r.returncode == 1 and expect in r.stderr, r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not (run / "checkpoint.pt").exists() and not (run / "best").exists()


@pytest.mark.slow
@pytest.mark.skipif(not (SHARED / "mr_brain_tiny.nii").exists(), reason="../shared/data is absent")
def test_fine_tune_overfits_a_real_mr(tmp_path):
    """Fine-tuning the bundled CT model on a real brain MR (one labelled structure) learns it."""
    from medseg.inference import segment
    from medseg.io import load_scan
    from medseg.metrics import dice_per_label

    ds = tmp_path / "brain"
    (ds / "imagesTr").mkdir(parents=True)
    (ds / "labelsTr").mkdir()
    shutil.copy(SHARED / "mr_brain_tiny.nii", ds / "imagesTr" / "brain_001_0000.nii")
    shutil.copy(SHARED / "mr_brain_tiny_labels.nii.gz", ds / "labelsTr" / "brain_001.nii.gz")
    (ds / "dataset.json").write_text(json.dumps({"channel_names": {"0": "MRI"}, "labels": {"background": 0,
                                                 "structure": 1}, "file_ending": ".nii.gz"}))
    run = tmp_path / "run"
    # one case, validated on itself; its structure is drawn on one slice only, so half of the
    # training slices come from the other slices (they must stay background)
    # 40 x 10 steps: the retrained bundled model needs about 30 epochs here (0.69 after 20, 0.98 after 40)
    r = _train(ds, "-o", run, "--init", SAMPLE / "model", "--epochs", "40", "--steps-per-epoch", "10",
               "--val-cases", "0", "--crop", "48", "--device", "cpu", "--lr", "2e-3", "--no-augment", "--no-hd95",
               "--foreground-fraction", "0.5", "--seed", "0")
    assert r.returncode == 0, r.stderr
    bundle = load_bundle(run / "best")
    assert bundle.card.modality == "MR" and bundle.card.preprocessing["kind"] == "mr_percentiles"
    assert bundle.card.training["init"]["kept_classes"] == ["background"]
    scan = load_scan(SHARED / "mr_brain_tiny.nii", modality="MR")
    ref = np.asarray(load_scan(SHARED / "mr_brain_tiny_labels.nii.gz").array)
    dice = dice_per_label(segment(scan, bundle, device="cpu"), ref, bundle.card.labels)
    assert dice["structure"] >= 0.8, dice


def test_validation_split_from_the_dataset(tiny_dataset, tmp_path):
    from medseg.data import find_cases
    from medseg.training import TrainConfig, split_cases

    cases, meta = find_cases(tiny_dataset)
    cfg = TrainConfig(val_cases=1, seed=0)
    trn, val = split_cases(cases, meta, tiny_dataset, cfg)
    assert len(val) == 1 and {c.name for c in trn} | {c.name for c in val} == {c.name for c in cases}
    assert split_cases(cases, meta, tiny_dataset, cfg)[1][0].name == val[0].name  # seeded: the same again
    # dataset.json's "validation" list (MONAI datalist style) wins over the seeded split
    meta2 = {**meta, "validation": [{"image": "./imagesTr/phantom_0012_0000.nii.gz",
                                     "label": "./labelsTr/phantom_0012.nii.gz"}, "phantom_0014"]}
    trn, val = split_cases(cases, meta2, tiny_dataset, cfg)
    assert [c.name for c in val] == ["phantom_0012", "phantom_0014"]
    assert [c.name for c in trn] == ["phantom_0011", "phantom_0013"]
    # nnU-Net's splits_final.json (fold 0)
    root = tmp_path / "ds"
    shutil.copytree(tiny_dataset, root)
    (root / "splits_final.json").write_text(json.dumps([{"train": ["phantom_0011", "phantom_0012", "phantom_0013"],
                                                          "val": ["phantom_0014"]}]))
    assert [c.name for c in split_cases(cases, meta, root, cfg)[1]] == ["phantom_0014"]
    with pytest.raises(MedsegError, match="not among the dataset's cases"):
        split_cases(cases, {**meta, "validation": ["nobody"]}, tiny_dataset, cfg)


@pytest.mark.slow
def test_autocast_path_runs_on_cpu(tiny_dataset, tmp_path):
    """The mixed-precision code path (autocast, grad scaler) runs end to end (bf16 autocast on CPU)."""
    r = _train(tiny_dataset, "-o", tmp_path / "run", "--epochs", "1", "--steps-per-epoch", "2", *TINY, "--amp", "bf16",
               "--optimizer", "sgd", "--schedule", "poly")
    assert r.returncode == 0, r.stderr
    card = load_bundle(tmp_path / "run" / "last").card
    assert card.training["amp"] == "bfloat16" and card.training["optimizer"].startswith("sgd")
    bad = _train(tiny_dataset, "-o", tmp_path / "bad", "--loss", "focal", *TINY)
    assert bad.returncode == 1 and "loss 'focal': expected one of ce, ce+dice" in bad.stderr
