"""Sparse labels, nnU-Net v2's way: the ``ignore`` label in dataset.json, in losses, metrics, checks and training."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from medseg.config import TrainConfig, make_loss
from medseg.curation import add_case
from medseg.data import check_dataset, read_labels
from medseg.errors import MedsegError
from medseg.evaluation import evaluate_pair
from medseg.io import Scan, load_scan
from medseg.metrics import label_metrics
from medseg.phantom import LABELS, make_phantom
from medseg.transforms import IGNORE_INDEX

NAMES = {"background": 0, **{k: v for k, v in LABELS.items() if v}}


# ---------------------------------------------------------------------------------------------- dataset.json


def test_ignore_label_is_read_in_both_conventions():
    assert read_labels({"labels": {"background": 0, "liver": 1, "ignore": 2}})["ignore"] == 2
    assert read_labels({"labels": {"0": "background", "1": "liver", "2": "ignore"}}) == {
        "background": 0, "liver": 1, "ignore": 2}


@pytest.mark.parametrize("labels, words", [
    ({"background": 0, "ignore": 1, "liver": 2}, "highest value"),
    ({"background": 0, "liver": 1, "ignore": 0}, "duplicate label value"),
    ({"background": 0, "liver": 1, "ignore": 2, "Ignore": 3}, "several ignore labels"),
])
def test_a_misplaced_ignore_label_is_one_line_naming_the_field(labels, words):
    with pytest.raises(MedsegError, match=words) as info:
        read_labels({"labels": labels}, "ds/dataset.json")
    assert "ds/dataset.json" in str(info.value) and "\n" not in str(info.value)


# ---------------------------------------------------------------------------------------------- loss


def _labelled_only(logits: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The labelled voxels alone, as one image of shape (1, C, N, 1) and its targets (1, N, 1)."""
    keep = y != IGNORE_INDEX
    flat = logits.movedim(1, -1)[keep]  # (N, C)
    return flat.T[None, :, :, None], y[keep][None, :, None]


@pytest.mark.parametrize("loss", ["ce", "ce+dice"])
@pytest.mark.parametrize("weighted", [False, True])
def test_ignored_voxels_contribute_nothing_to_the_loss_or_its_gradients(loss, weighted):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 4, 12, 10, generator=g) * 2
    y = torch.randint(0, 4, (3, 12, 10), generator=g)
    y[0, :, :5] = IGNORE_INDEX  # half a slice
    y[1] = IGNORE_INDEX  # a whole slice
    y[2, ::3, ::2] = IGNORE_INDEX  # scattered voxels
    weight = torch.tensor([0.5, 1.0, 2.0, 1.5]) if weighted else None
    fn = make_loss(TrainConfig(loss=loss), weight)

    a = logits.clone().requires_grad_(True)
    value = fn(a, y)
    value.backward()
    b_flat, y_flat = _labelled_only(logits, y)
    b = b_flat.clone().requires_grad_(True)
    expected = fn(b, y_flat)
    expected.backward()

    torch.testing.assert_close(value, expected, rtol=1e-5, atol=1e-6)
    keep = y != IGNORE_INDEX
    torch.testing.assert_close(a.grad.movedim(1, -1)[keep], b.grad[0, :, :, 0].T, rtol=1e-4, atol=1e-7)
    assert float(a.grad.movedim(1, -1)[~keep].abs().max()) == 0.0
    # ...and whatever the model outputs at the ignored voxels does not matter
    moved = torch.where((y == IGNORE_INDEX)[:, None], torch.randn(logits.shape, generator=g) * 5, logits)
    torch.testing.assert_close(fn(moved, y), value.detach(), rtol=1e-6, atol=1e-7)


def test_a_batch_with_no_labelled_voxel_has_zero_loss_and_gradient():
    logits = torch.randn(2, 3, 8, 8, requires_grad=True)
    y = torch.full((2, 8, 8), IGNORE_INDEX)
    for loss in ("ce", "ce+dice"):
        value = make_loss(TrainConfig(loss=loss), None)(logits, y)
        value.backward()
        assert value.item() == 0.0 and torch.isfinite(logits.grad).all() and float(logits.grad.abs().max()) == 0.0


def test_without_ignored_voxels_the_loss_is_plain_cross_entropy_plus_monai_dice():
    from monai.losses import DiceLoss

    g = torch.Generator().manual_seed(1)
    logits, y = torch.randn(2, 3, 9, 9, generator=g), torch.randint(0, 3, (2, 9, 9), generator=g)
    dice = DiceLoss(include_background=False, to_onehot_y=True, softmax=True, batch=True)
    expected = torch.nn.functional.cross_entropy(logits, y) + dice(logits, y[:, None])
    torch.testing.assert_close(make_loss(TrainConfig(loss="ce+dice"), None)(logits, y), expected)


# ---------------------------------------------------------------------------------------------- metrics


def test_metrics_skip_ignored_voxels():
    rng = np.random.default_rng(2)
    ref = np.zeros((20, 20, 10), np.uint8)
    ref[5:15, 5:15, :] = 1
    pred = ref.copy()
    pred[5:9, 5:15, 2:4] = 0  # a miss in a labelled part
    ref[:, :, 6:] = 9  # slices 6.. not labelled
    noisy = pred.copy()
    noisy[:, :, 6:] = rng.integers(0, 2, (20, 20, 4))  # anything predicted there counts for nothing
    labels = {"background": 0, "organ": 1}
    expected = 2 * (pred[:, :, :6] == 1).sum() / ((pred[:, :, :6] == 1).sum() + (ref[:, :, :6] == 1).sum())
    for p in (pred, noisy):
        got = label_metrics(p, ref, labels, ignore=9)["organ"]["dice"]
        assert got == pytest.approx(expected)
    assert label_metrics(noisy, ref, labels)["organ"]["dice"] < expected  # without ignore: counted
    aff = np.eye(4)
    rows = evaluate_pair(Scan(noisy, aff, "p.nii.gz"), Scan(ref, aff, "r.nii.gz"), labels, hd95=False, ignore=9)
    assert rows[0]["dice"] == pytest.approx(expected)


# ---------------------------------------------------------------------------------------------- curation and checks


def _lps_scan(tmp_path, seed=905, shape=(48, 48, 20)):
    """A phantom stored with the slice axis first and its rows flipped (not the model's axial order)."""
    ph = make_phantom(seed, shape=shape)
    arr = np.moveaxis(ph.image.astype(np.float32)[:, ::-1], 2, 0)
    lab = np.moveaxis(ph.labels[:, ::-1], 2, 0)
    flip = np.eye(4)
    flip[1, 1], flip[1, 3] = -1.0, shape[1] - 1
    aff = (ph.affine @ flip)[:, [2, 0, 1, 3]]
    return ph, Scan(np.ascontiguousarray(arr), aff, tmp_path / "lps.nii.gz"), np.ascontiguousarray(lab)


def test_add_case_keeps_only_the_labelled_axial_slices_and_records_them(tmp_path):
    ph, scan, lab = _lps_scan(tmp_path)
    case = add_case(tmp_path / "ds", scan, lab, NAMES, labelled={"reviewed": [3, 11], "painted": [11, 15]})
    meta = json.loads((tmp_path / "ds" / "dataset.json").read_text())
    assert meta["labels"]["ignore"] == 6
    assert meta["labelled_slices"][case.name]["reviewed"] == [3, 11]
    assert meta["labelled_slices"][case.name]["painted"] == [11, 15]
    written = load_scan(case.label)
    from medseg.geometry import array_on_grid_of

    stored = array_on_grid_of(Scan(ph.labels, ph.affine, "truth"), written)  # back in RAS, axial = third axis
    for k in range(ph.labels.shape[2]):
        if k in (3, 11, 15):
            np.testing.assert_array_equal(stored[:, :, k], ph.labels[:, :, k])
        else:
            assert (stored[:, :, k] == 6).all(), k
    idx = check_dataset(tmp_path / "ds")
    assert idx.problems == [] and idx.labelled == {case.name: (3, 20)}
    # the same scan corrected whole: its record is dropped, ignore stays declared
    again = add_case(tmp_path / "ds", scan, lab, NAMES)
    meta = json.loads((tmp_path / "ds" / "dataset.json").read_text())
    assert again.updated and "labelled_slices" not in meta and meta["labels"]["ignore"] == 6
    assert check_dataset(tmp_path / "ds").labelled == {case.name: (20, 20)}


def test_add_case_refuses_no_labelled_slice_and_check_flags_an_all_ignore_case(tmp_path):
    ph, scan, lab = _lps_scan(tmp_path)
    with pytest.raises(MedsegError, match="no slice is labelled"):
        add_case(tmp_path / "ds", scan, lab, NAMES, labelled={"reviewed": []})
    assert not (tmp_path / "ds" / "imagesTr").exists()
    with pytest.raises(MedsegError, match=r"outside the scan's 20 axial slices"):
        add_case(tmp_path / "ds", scan, lab, NAMES, labelled={"reviewed": [20]})
    case = add_case(tmp_path / "ds", scan, lab, NAMES, labelled={"reviewed": [1]})
    from medseg.io import save_mask

    save_mask(np.full(lab.shape, 6, np.uint8), scan, case.label)
    problems = check_dataset(tmp_path / "ds").problems
    assert len(problems) == 1 and "every voxel is the ignore label" in problems[0] and str(case.label) in problems[0]


def test_check_dataset_command_reports_labelled_slices(tmp_path):
    from typer.testing import CliRunner

    from medseg.cli import app

    _, scan, lab = _lps_scan(tmp_path)
    add_case(tmp_path / "ds", scan, lab, NAMES, labelled={"reviewed": [2, 9]})
    result = CliRunner().invoke(app, ["check-dataset", str(tmp_path / "ds")])
    assert result.exit_code == 0, result.output
    assert "lps: 2 of 20 axial slices labelled (the rest is ignore=6)" in result.output
    assert "6=ignore" in result.output


# ---------------------------------------------------------------------------------------------- training


def test_the_sampler_draws_only_labelled_slices_and_windows_hold_labelled_pixels():
    from medseg.trainset import PreparedCase, SliceSampler

    depth = 12
    classes = np.full((depth, 64, 64), IGNORE_INDEX, np.uint8)
    classes[4] = 0
    classes[4, 20:30, 20:30] = 1
    classes[9, 50:60, 2:12] = 2  # labelled only in a corner
    image = np.zeros((depth, 64, 64), np.float16)
    case = PreparedCase("c", image, classes, foreground=np.array([4, 9]), labelled=np.array([4, 9]))
    cfg = TrainConfig(batch_size=8, crop=24, augment=False, foreground_fraction=0.0)
    sampler = SliceSampler([case], cfg, context=1)
    for step in range(10):
        _, y = sampler.batch(1, step)
        assert ((y != IGNORE_INDEX).flatten(1).any(dim=1)).all()


@pytest.mark.slow
def test_two_labelled_slices_fine_tune_and_improve_the_dice(tmp_path):
    """A phantom with a severely fatty liver (90 HU darker, near water: no phase the model learnt
    looks like it, and it finds no liver at all): the two slices the model is least sure of are
    corrected, every other voxel is ignored, and a short fine-tune with the viewer's few-slice
    settings lifts the whole volume."""
    from medseg.bundle import default_bundle_path
    from medseg.inference import Predictor
    from medseg.metrics import dice_per_label
    from medseg.training import train
    from medseg_napari._finetune import SPARSE

    ph = make_phantom(900, shape=(160, 160, 40))
    img = ph.image.astype(np.float32)
    for name, delta in {"liver": -90, "liver_tumour": -60}.items():
        img[ph.labels == LABELS[name]] += delta
    scan = Scan(img, ph.affine, tmp_path / "fatty.nii.gz")
    u = np.zeros(ph.labels.shape[2])
    pred = Predictor.from_folder(default_bundle_path(), "cpu").predict_scan(scan, uncertainty=u)
    before = dice_per_label(pred, ph.labels, NAMES)
    keys = sorted(int(k) for k in np.argsort(-u)[:2])
    add_case(tmp_path / "ds", scan, ph.labels, NAMES, labelled={"reviewed": keys})
    cfg = TrainConfig(epochs=1, steps_per_epoch=30, init=str(default_bundle_path()), crop=96, val_cases=0,
                      device="cpu", **SPARSE)  # the viewer's settings for a few labelled slices
    bundle = train(tmp_path / "ds", tmp_path / "run", cfg)
    after = dice_per_label(Predictor(bundle, "cpu").predict_scan(scan), ph.labels, NAMES)
    assert bundle.card.training["sparse_labels"]["labelled_slices"] == {"fatty": f"2/{ph.labels.shape[2]}"}
    assert np.mean(list(after.values())) >= np.mean(list(before.values())) + 0.1, (before, after)
    for organ in NAMES:  # learnt from two slices, and little lost elsewhere (measured: spleen 0.951 -> 0.916)
        if organ != "background":
            assert after[organ] >= before[organ] - 0.05, (organ, before, after)
