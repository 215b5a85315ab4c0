"""Training patches: class-balanced foreground sampling, and validation every N epochs."""

import csv
import json

import numpy as np
import pytest

from medseg.config import TrainConfig
from medseg.phantom import make_dataset
from medseg.transforms import IGNORE_INDEX
from medseg.trainset import PreparedCase, SliceSampler, class_slices


def _case_with_a_small_tumour() -> PreparedCase:
    """A 40-slice, 200 x 200 case: a large organ (1) in 30 slices, a 6-pixel tumour (2) in 3 of them."""
    rng = np.random.default_rng(0)
    depth, size = 40, 200
    classes = np.zeros((depth, size, size), np.uint8)
    classes[5:35, 20:180, 20:180] = 1
    classes[18:21, 150:156, 30:36] = 2
    image = (classes[None] * 0.5 + rng.normal(0, 0.05, (1, depth, size, size))).astype(np.float16)[0]
    return PreparedCase("small_tumour", image, classes, np.arange(5, 35), slice_mm=3.0)


def test_class_slices_lists_each_foreground_class_and_skips_ignore():
    classes = np.zeros((6, 8, 8), np.uint8)
    classes[1:4, 2, 2] = 1
    classes[4, 5, 5] = 3
    classes[5] = IGNORE_INDEX
    found = class_slices(classes)
    assert sorted(found) == [1, 3]
    assert found[1].tolist() == [1, 2, 3] and found[3].tolist() == [4]


def _tumour_share(sampling: str) -> float:
    cfg = TrainConfig(batch_size=32, crop=64, augment=False, foreground_fraction=1.0, foreground_sampling=sampling)
    sampler = SliceSampler([_case_with_a_small_tumour()], cfg, 0)
    hits = [(y == 2).any(dim=(1, 2)).float().mean().item() for y in (sampler.batch(0, s)[1] for s in range(8))]
    return float(np.mean(hits))


def test_class_sampling_shows_a_small_tumour_in_half_the_patches():
    """Two foreground classes, drawn evenly: about half the patches hold the 6-pixel tumour, and
    each of them whole (the window is placed around it). Drawing any foreground slice with a
    random 64-pixel window of a 200-pixel slice shows it in about 1 % of the patches."""
    by_class, by_slice = _tumour_share("class"), _tumour_share("slice")
    assert 0.35 < by_class < 0.65, by_class
    assert by_slice < 0.05, by_slice


def test_class_sampling_is_reproducible_and_its_setting_checked():
    case = _case_with_a_small_tumour()
    cfg = TrainConfig(batch_size=4, crop=64, augment=False)
    a, b = SliceSampler([case], cfg, 1).batch(3, 2), SliceSampler([case], cfg, 1).batch(3, 2)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert TrainConfig().foreground_sampling == "class"
    with pytest.raises(Exception, match="foreground_sampling"):
        TrainConfig(foreground_sampling="organ").validate()


def test_a_config_from_before_the_field_resumes_with_slice_sampling(tmp_path):
    import dataclasses

    data = dataclasses.asdict(TrainConfig())
    del data["foreground_sampling"], data["val_every"]
    (tmp_path / "config.json").write_text(json.dumps(data))
    cfg = TrainConfig.from_json(tmp_path / "config.json")
    assert cfg.foreground_sampling == "slice" and cfg.val_every == 1


def test_validation_every_n_epochs_and_after_the_last(tmp_path):
    from medseg.training import train

    dataset = make_dataset(tmp_path / "ds", [11, 12, 13], shape=(48, 48, 12), spacing=(8.0, 8.0, 14.0))
    cfg = TrainConfig(epochs=5, steps_per_epoch=1, batch_size=2, width=4, crop=32, spacing=(8.0, 8.0), val_cases=1,
                      device="cpu", hd95=False, lr=0.01, val_every=2)
    bundle = train(dataset, tmp_path / "run", cfg)
    with open(tmp_path / "run" / "history.csv") as f:
        assert [int(r["epoch"]) for r in csv.DictReader(f)] == [2, 4, 5]
    assert bundle.card.training["epoch"] in (2, 4, 5)
    assert bundle.card.training["sampling"] == "0.7 of the patches on foreground, by class"
    with pytest.raises(Exception, match="val_every"):
        TrainConfig(val_every=0).validate()
