"""Lesion contrast augmentation: a lesion's contrast to the tissue around it, redrawn hypo or hyper."""

import dataclasses
import json

import numpy as np
import pytest
import torch

from medseg.bundle import ModelCard
from medseg.config import TrainConfig
from medseg.errors import MedsegError
from medseg.labels import is_lesion
from medseg.phantom import make_dataset
from medseg.transforms import IGNORE_INDEX, RandLesionContrastd
from medseg.trainset import PreparedCase, SliceSampler, lesion_classes

ORGAN, LESION = 0.5, 0.4  # a hypo-attenuating lesion: contrast -0.1 (50 HU on the CT window)


def _patch(size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """(3, size, size) image and (1, size, size) label: organ (1) over the middle, a disc lesion (2) in it."""
    rng = np.random.default_rng(1)
    label = np.zeros((size, size), np.float32)
    label[8:56, 8:56] = 1
    yy, xx = np.mgrid[:size, :size]
    label[(yy - 32) ** 2 + (xx - 30) ** 2 <= 36] = 2
    image = np.where(label == 2, LESION, np.where(label == 1, ORGAN, 0.1)).astype(np.float32)
    image = np.repeat(image[None], 3, axis=0) + rng.normal(0, 0.01, (3, size, size)).astype(np.float32)
    return image, label[None]


def _contrast(image: np.ndarray, label: np.ndarray) -> float:
    return float(image[1][label[0] == 2].mean() - image[1][(label[0] == 1)].mean())


def test_the_contrast_is_redrawn_in_range_both_signs_and_only_around_the_lesion():
    image, label = _patch()
    t = RandLesionContrastd([2], (0.05, 0.15), prob=1.0)
    t.set_random_state(0)
    far = np.zeros(label[0].shape, bool)
    far[:, 45:] = True  # more than two pixels from the lesion (x 24..36)
    contrasts = []
    for _ in range(40):
        out = t({"image": torch.from_numpy(image), "label": torch.from_numpy(label)})
        new = out["image"].numpy()
        assert out["label"] is not None and np.array_equal(np.asarray(out["label"]), label)
        np.testing.assert_array_equal(new[:, far], image[:, far])
        assert np.allclose(new[0] - image[0], new[2] - image[2], atol=1e-6)  # every channel shifted alike
        contrasts.append(_contrast(new, label))
    contrasts = np.array(contrasts)
    assert (contrasts > 0).sum() >= 10 and (contrasts < 0).sum() >= 10, contrasts
    # the lesion's edge pixels take part of the shift, so its mean sits a little inside the drawn range
    assert np.all(np.abs(contrasts) >= 0.03) and np.all(np.abs(contrasts) <= 0.151), contrasts


def test_patches_without_a_lesion_or_with_prob_zero_are_unchanged():
    image, label = _patch()
    no_lesion = np.where(label == 2, 1, label).astype(np.float32)
    t = RandLesionContrastd([2], (0.05, 0.15), prob=1.0)
    out = t({"image": torch.from_numpy(image), "label": torch.from_numpy(no_lesion)})
    np.testing.assert_array_equal(out["image"].numpy(), image)
    off = RandLesionContrastd([2], (0.05, 0.15), prob=0.0)
    out = off({"image": torch.from_numpy(image), "label": torch.from_numpy(label)})
    np.testing.assert_array_equal(np.asarray(out["image"]), image)


def test_unlabelled_surroundings_are_not_the_reference():
    """A lesion whose ring is half organ, half ``ignore``: the contrast is measured against the organ."""
    image, label = _patch()
    right = (label[0] == 1) & (np.arange(64)[None, :] >= 30)
    label[0][right] = IGNORE_INDEX
    image[:, right] = 0.9  # very bright where nothing is labelled
    t = RandLesionContrastd([2], (0.1, 0.1), prob=1.0)
    t.set_random_state(3)
    out = t({"image": torch.from_numpy(image), "label": torch.from_numpy(label)})["image"].numpy()
    contrast = float(out[1][label[0] == 2].mean() - out[1][label[0] == 1].mean())
    assert 0.06 <= abs(contrast) <= 0.101, contrast


def _case() -> PreparedCase:
    image, label = _patch(96)
    classes = np.repeat(label.astype(np.uint8), 6, axis=0)
    return PreparedCase("lesion", np.repeat(image[1:2], 6, axis=0).astype(np.float16), classes, np.arange(6), slice_mm=3.0)


def _sampled_contrasts(lesion_contrast: float) -> np.ndarray:
    cfg = TrainConfig(batch_size=8, crop=64, foreground_fraction=1.0, rotate_deg=0.0, scale=0.0, intensity_jitter=0.0,
                      lesion_contrast=lesion_contrast)
    sampler = SliceSampler([_case()], cfg, 0, lesion_classes=(2,))
    out = []
    for step in range(6):
        x, y = sampler.batch(0, step)
        for img, lab in zip(x.numpy(), y.numpy()):
            if (lab == 2).any() and (lab == 1).any():
                out.append(float(img[0][lab == 2].mean() - img[0][lab == 1].mean()))
    return np.array(out)


def test_training_batches_redraw_the_contrast_only_when_asked():
    off = _sampled_contrasts(0.0)  # the default
    assert off.size > 10 and np.allclose(off, LESION - ORGAN, atol=0.01)
    on = _sampled_contrasts(0.16)
    assert on.size > 10
    changed = np.abs(on - (LESION - ORGAN)) > 0.02
    assert 0.25 <= changed.mean() <= 0.75, on  # p = 0.5
    assert (on > 0.02).any(), on  # some turned hyper


def test_lesion_labels_are_found_by_name():
    assert all(is_lesion(n) for n in ("liver_tumour", "Tumor", "lung nodule", "bone metastasis", "lesion_2"))
    assert not any(is_lesion(n) for n in ("liver", "kidney_left", "background", "ignore"))
    card = ModelCard(name="m", modality="CT", labels={"background": 0, "liver": 1, "liver_tumour": 5, "spleen": 2})
    assert lesion_classes(card) == (3,)  # classes in value order: 0, 1, 2, 5


def test_the_setting_is_checked_and_old_configs_keep_it_off(tmp_path):
    with pytest.raises(MedsegError, match="lesion_contrast"):
        TrainConfig(lesion_contrast=1.5).validate()
    with pytest.raises(MedsegError, match="lesion_contrast_min"):
        TrainConfig(lesion_contrast_min=-0.1).validate()
    data = dataclasses.asdict(TrainConfig())
    del data["lesion_contrast"], data["lesion_contrast_min"]
    (tmp_path / "config.json").write_text(json.dumps(data))
    assert TrainConfig.from_json(tmp_path / "config.json").lesion_contrast == 0.0


def test_the_model_card_records_the_lesion_contrast(tmp_path):
    from medseg.training import train

    dataset = make_dataset(tmp_path / "ds", [11, 12], shape=(48, 48, 12), spacing=(8.0, 8.0, 14.0))
    cfg = TrainConfig(epochs=1, steps_per_epoch=1, batch_size=2, width=4, crop=32, spacing=(8.0, 8.0), val_cases=1,
                      device="cpu", hd95=False, lesion_contrast=0.16)
    bundle = train(dataset, tmp_path / "run", cfg)
    note = bundle.card.training["augmentation"]
    assert "lesion contrast +-0.03..0.16 of the intensity scale" in note and note.endswith("on liver_tumour")
