"""Weight averaging of model bundles (`medseg average-models`): the mean is exact, the card says
what was averaged and covers every source's training domain, and bundles that cannot be averaged
are refused with a one-line error naming the bundle and the field."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
import torch
from conftest import SAMPLE
from safetensors.torch import load_file

from medseg.averaging import average_bundles
from medseg.bundle import ModelCard, build_model, load_bundle, save_bundle
from medseg.errors import MedsegError


def _card(**changes) -> ModelCard:
    card = ModelCard(
        name="tiny", labels={"background": 0, "liver": 1, "liver_tumour": 2}, modality="CT",
        preprocessing={"kind": "ct_window", "window": [-200.0, 300.0]}, spacing=[2.0, 2.0],
        context_slices=1, context_mm=3.0, arch_kwargs={"width": 4}, intensity_range=[-1000.0, 400.0],
        training={"dataset": "a", "train_cases": ["c1", "c2"], "val_cases": ["v1"], "epoch": 3,
                  "val_dice": {"liver": 0.9, "liver_tumour": 0.5}},
        training_data={"source": "phantoms", "dataset": "a", "cases": 2, "validation_cases": 1, "modality": "CT",
                       "phase": "portal-venous",
                       "phantom_styles": {"cases": 2, "phase": ["portal-venous"], "thickness_mm": [1.0, 3.0]},
                       "spacing_mm": {"min": [0.8, 0.8, 1.0], "max": [1.0, 1.0, 3.0]}},
    )
    return replace(card, **changes)


def _save(tmp_path, name, seed, half=False, **changes):
    torch.manual_seed(seed)
    card = _card(**changes)
    model = build_model(card)
    for m in model.modules():  # batch-norm statistics that differ between the two bundles
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.num_batches_tracked.fill_(seed + 1)
    return save_bundle(model, card, tmp_path / name, half=half)


def _second_card_changes():
    return dict(
        intensity_range=[-1024.0, 600.0],
        training={"dataset": "b", "train_cases": ["c2", "c3", "c4"], "val_cases": ["v2"], "epoch": 7},
        training_data={"source": "phantoms", "dataset": "b", "cases": 3, "validation_cases": 1, "modality": "CT",
                       "phase": "arterial, portal-venous",
                       "phantom_styles": {"cases": 3, "phase": ["arterial", "portal-venous"], "thickness_mm": [0.5, 2.0]},
                       "spacing_mm": {"min": [0.7, 0.9, 0.5], "max": [1.5, 0.9, 2.0]}},
    )


def test_the_average_is_the_weighted_mean_of_every_tensor_and_the_sources_stay(tmp_path):
    a = _save(tmp_path, "a", 0)
    b = _save(tmp_path, "b", 1, **_second_card_changes())
    before = {p: p.read_bytes() for d in (a, b) for p in d.iterdir()}
    out = average_bundles([a, b], tmp_path / "soup", [1, 3])
    assert {p: p.read_bytes() for d in (a, b) for p in d.iterdir()} == before
    wa, wb, wm = (load_file(d / "model.safetensors") for d in (a, b, out))
    assert wm.keys() == wa.keys()
    floats = [k for k in wa if wa[k].is_floating_point()]
    assert any("running_var" in k for k in floats)  # batch-norm statistics are averaged too
    for k in floats:
        torch.testing.assert_close(wm[k], 0.25 * wa[k] + 0.75 * wb[k], rtol=1e-6, atol=1e-7)
        assert wm[k].dtype == torch.float32
    for k in set(wa) - set(floats):  # counters come from the first bundle
        assert torch.equal(wm[k], wa[k])
    # weights 1, 0 give the first bundle back
    one = load_file(average_bundles([a, b], tmp_path / "first", [1, 0]) / "model.safetensors")
    assert all(torch.equal(one[k], wa[k]) for k in wa)


def test_the_card_records_the_sources_and_covers_both_training_domains(tmp_path):
    a = _save(tmp_path, "a", 0)
    b = _save(tmp_path, "b", 1, **_second_card_changes())
    card = load_bundle(average_bundles([a, b], tmp_path / "soup")).card
    sources = card.training["averaged_from"]
    assert [s["path"] for s in sources] == [str(a), str(b)] and [s["weight"] for s in sources] == [0.5, 0.5]
    assert [s["epoch"] for s in sources] == [3, 7] and sources[0]["val_dice"] == {"liver": 0.9, "liver_tumour": 0.5}
    assert card.training["train_cases"] == ["c1", "c2", "c3", "c4"] and card.training["val_cases"] == ["v1", "v2"]
    assert sources[0]["val_cases"] == ["v1"] and data_validation(card) == 2
    assert "val_dice" not in card.training  # no score is claimed for the average itself
    data = card.training_data
    assert data["cases"] == 4  # c1..c4, each once
    assert data["dataset"] == "a + b" and data["source"] == "phantoms"
    assert data["phase"] == "portal-venous, arterial"
    assert data["phantom_styles"]["phase"] == ["arterial", "portal-venous"]
    assert data["phantom_styles"]["thickness_mm"] == [0.5, 3.0]
    assert data["spacing_mm"] == {"min": [0.7, 0.8, 0.5], "max": [1.5, 1.0, 3.0]}
    assert card.intensity_range == [-1024.0, 600.0]
    # an average of an average keeps the whole tree; the dataset names are not repeated
    c = _save(tmp_path, "c", 2, **_second_card_changes())
    nested = load_bundle(average_bundles([tmp_path / "soup", c], tmp_path / "soup2")).card
    assert nested.training["averaged_from"][0]["averaged_from"] == sources
    assert nested.training["averaged_from"][0]["dataset"] == "a + b" and nested.training_data["dataset"] == "a + b"
    # the domain check reads the merged card: arterial is now inside the training domain
    from medseg.domain import describe_training_data

    assert "arterial" in describe_training_data(card)


def data_validation(card) -> int:
    return card.training_data["validation_cases"]


def test_a_validation_case_another_source_trained_on_is_not_held_out(tmp_path):
    a = _save(tmp_path, "a", 0)
    changes = _second_card_changes()
    changes["training"] = {**changes["training"], "train_cases": ["c2", "v1"], "val_cases": ["v2"]}
    card = load_bundle(average_bundles([a, _save(tmp_path, "b", 1, **changes)], tmp_path / "soup")).card
    assert card.training["val_cases"] == ["v2"] and data_validation(card) == 1
    assert card.training["train_cases"] == ["c1", "c2", "v1"] and card.training_data["cases"] == 3


def test_half_precision_sources_give_a_half_precision_average(tmp_path):
    a, b = _save(tmp_path, "a", 0, half=True), _save(tmp_path, "b", 1, half=True)
    w = load_file(average_bundles([a, b], tmp_path / "soup") / "model.safetensors")
    assert {v.dtype for v in w.values() if v.is_floating_point()} == {torch.float16}


@pytest.mark.parametrize("changes, field", [
    ({"labels": {"background": 0, "liver": 1, "spleen": 2}}, "labels"),
    ({"arch_kwargs": {"width": 8}}, "arch_kwargs"),
    ({"context_mm": 5.0}, "context_mm"),
    ({"spacing": [1.5, 1.5]}, "spacing"),
    ({"postprocessing": {"main_piece": ["liver"], "margin_mm": 20.0}}, "postprocessing"),
])
def test_bundles_that_differ_in_set_up_are_refused_naming_the_field(tmp_path, changes, field):
    a, b = _save(tmp_path, "a", 0), _save(tmp_path, "b", 1, **changes)
    with pytest.raises(MedsegError, match=rf"^{b}: field '{field}'"):
        average_bundles([a, b], tmp_path / "soup")
    assert not (tmp_path / "soup").exists()


def test_bad_outputs_and_weights_are_refused_before_anything_is_written(tmp_path):
    a, b = _save(tmp_path, "a", 0), _save(tmp_path, "b", 1)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    for out, message in [(a, "refusing to write over"), (a / "sub", "refusing to write into"),
                         (tmp_path, "holds the model bundle"), (tmp_path / "full", "not an empty folder")]:
        with pytest.raises(MedsegError, match=message):
            average_bundles([a, b], out)
    for weights, message in [([1.0], "1 given for 2"), ([1, -1], "must be finite, >= 0"), ([0, 0], "not all 0"),
                             ([float("nan"), 1], "must be finite")]:
        with pytest.raises(MedsegError, match=message):
            average_bundles([a, b], tmp_path / "soup", weights)
    with pytest.raises(MedsegError, match="at least two"):
        average_bundles([a], tmp_path / "soup")
    with pytest.raises(MedsegError, match="no such model bundle"):
        average_bundles([a, tmp_path / "missing"], tmp_path / "soup")
    assert not (tmp_path / "soup").exists()


@pytest.mark.slow
def test_the_cli_averages_the_default_model_with_itself_into_the_same_segmentation(tmp_path):
    """`medseg average-models` run as a user would: the default model averaged with itself segments
    the sample as the default model does; a bad call is one error line, exit 1, no output."""
    from medseg.inference import segment
    from medseg.io import load_scan

    model = SAMPLE / "model"
    run = lambda *a: subprocess.run([sys.executable, "-m", "medseg.cli", "average-models", *map(str, a)],  # noqa: E731
                                    capture_output=True, text=True, timeout=600)
    r = run(model, model, "-o", tmp_path / "soup", "--weights", "0.3,0.7")
    assert r.returncode == 0, r.stderr
    scan = load_scan(SAMPLE / "phantom_ct.nii.gz")
    ref = segment(scan, load_bundle(model))
    got = segment(scan, load_bundle(tmp_path / "soup"))
    assert (ref > 0).sum() > 1000 and np.mean(ref == got) > 0.9999
    bad = run(model, tmp_path / "soup", "-o", tmp_path / "other", "--weights", "a,b")
    assert bad.returncode == 1 and bad.stderr.strip().count("\n") == 0 and "--weights 'a,b'" in bad.stderr
    assert "Traceback" not in bad.stderr and not (tmp_path / "other").exists()
