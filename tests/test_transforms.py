"""2.5D slice stacks: the neighbour order (inferior -> superior) and the clamping at the volume's ends,
the same for inference (context_indices + read_slices) and for the training sampler."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medseg.transforms import context_indices, intensity_transform, read_slices, resize_slices, target_size


def test_context_indices_order_and_edge_clamping():
    # depth 5, two neighbours each side: channel j of slice z is clamp(z - 2 + j, 0, 4)
    got = context_indices(np.arange(5), 2, 5)
    expected = [
        [0, 0, 0, 1, 2],  # first slice: the missing inferior neighbours repeat slice 0
        [0, 0, 1, 2, 3],
        [0, 1, 2, 3, 4],
        [1, 2, 3, 4, 4],
        [2, 3, 4, 4, 4],  # last slice: the missing superior neighbours repeat slice 4
    ]
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(context_indices(np.array([3, 1]), 1, 4), [[2, 3, 3], [0, 1, 2]])
    np.testing.assert_array_equal(context_indices(np.arange(3), 0, 3), [[0], [1], [2]])
    np.testing.assert_array_equal(context_indices(np.array([0]), 2, 1), [[0, 0, 0, 0, 0]])  # a single slice


def test_read_slices_copies_the_right_slices_of_flipped_views():
    vol = np.arange(4 * 3 * 6, dtype=np.int16).reshape(4, 3, 6)
    for view in (vol, vol[::-1, :, ::-1], vol.transpose(1, 0, 2)):
        out = read_slices(view, 2, 5)
        assert out.dtype == torch.float32 and tuple(out.shape) == (3, *view.shape[:2])
        for n, k in enumerate(range(2, 5)):
            np.testing.assert_array_equal(out[n].numpy(), view[:, :, k])
    out = read_slices(vol, 0, 1)
    out += 1000  # a copy: the volume is untouched
    assert vol[0, 0, 0] == 0


def test_intensity_scaling_clips_and_resizing_keeps_size():
    x = torch.tensor([-100.0, 0.0, 50.0, 100.0, 300.0])
    scaled = intensity_transform(0.0, 100.0)(x)
    np.testing.assert_allclose(np.asarray(scaled), [0.0, 0.0, 0.5, 1.0, 1.0])
    assert target_size((100, 50), (1.0, 2.0), (2.0, 2.0)) == (50, 50)
    assert target_size((3, 3), (1.0, 1.0), (10.0, 10.0)) == (1, 1)  # never empty
    batch = torch.rand(2, 3, 8, 6)
    assert resize_slices(batch, (8, 6)) is batch
    assert tuple(resize_slices(batch, (4, 3)).shape) == (2, 3, 4, 3)


@pytest.mark.parametrize("context", [1, 2])
def test_training_sampler_stacks_neighbours_like_inference(context):
    """The training sampler's channels for slice z are the same slices, in the same order, as the
    ones inference feeds the model (a mismatch would train on one order and predict with another)."""
    from medseg.training import PreparedCase, SliceSampler, TrainConfig

    depth, size = 6, 8
    image = np.broadcast_to(np.arange(depth, dtype=np.float16)[:, None, None], (depth, size, size)).copy()
    classes = np.zeros((depth, size, size), np.uint8)
    case = PreparedCase("c", image, classes, np.arange(0))
    cfg = TrainConfig(batch_size=16, crop=size, augment=False, foreground_fraction=0.0, seed=3)
    seen = set()
    for step in range(4):
        x, _ = SliceSampler([case], cfg, context).batch(0, step)
        assert tuple(x.shape) == (16, 2 * context + 1, size, size)
        for stack in x.numpy():
            assert np.all(stack == stack[:, :1, :1])  # each channel is one whole slice
            channels = stack[:, 0, 0].astype(int)
            z = channels[context]
            np.testing.assert_array_equal(channels, context_indices(np.array([z]), context, depth)[0])
            seen.add(int(z))
    assert {0, depth - 1} <= seen  # the clamped ends were drawn


@pytest.mark.parametrize("spacing_mm", [0.78, 1.3, 3.0])
def test_training_labels_stay_on_their_image_when_resampled_to_the_model_spacing(tmp_path, spacing_mm):
    """Training resamples each slice to the model's 2 mm: the labels must land where the image's
    organ lands. (torch's plain ``nearest`` moved them 0.4 pixel, 0.8 mm, from 0.78 mm scans,
    so the network learnt organs shifted by a spacing-dependent amount and over-segmented.)"""
    import nibabel as nib

    from medseg.bundle import ModelCard
    from medseg.trainset import preprocessing_pipeline

    n = int(round(200 / spacing_mm))
    ii, jj = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    disc = np.zeros((n, n, 3), np.uint8)
    for ci, cj, r in [(0.31, 0.42, 0.2), (0.7, 0.66, 0.12)]:  # centres and radii as fractions of the slice
        disc[(ii - ci * n) ** 2 + (jj - cj * n) ** 2 < (r * n) ** 2] = 1
    image = np.where(disc > 0, 200.0, -100.0).astype(np.float32)
    affine = np.diag([spacing_mm, spacing_mm, 2.0, 1.0])
    nib.save(nib.Nifti1Image(image, affine), str(tmp_path / "img.nii.gz"))
    nib.save(nib.Nifti1Image(disc, affine), str(tmp_path / "lab.nii.gz"))
    card = ModelCard(name="t", labels={"background": 0, "organ": 1}, modality="CT",
                     preprocessing={"kind": "ct_window", "window": [-100.0, 200.0]}, spacing=[2.0, 2.0])
    d = preprocessing_pipeline(card)({"image": str(tmp_path / "img.nii.gz"), "label": str(tmp_path / "lab.nii.gz"),
                                      "name": "t"})
    img, lab = d["image"][1].astype(np.float32), d["label"][1]
    assert img.shape == lab.shape == (100, 100)
    organ_in_image = img > 0.5  # half-way between the two intensities: where the image's edges are
    for axis in (0, 1):
        profile_img, profile_lab = organ_in_image.sum(axis=1 - axis), (lab == 1).sum(axis=1 - axis)
        centre_img = (profile_img * np.arange(100)).sum() / profile_img.sum()
        centre_lab = (profile_lab * np.arange(100)).sum() / profile_lab.sum()
        assert abs(centre_lab - centre_img) < 0.12, (axis, centre_lab, centre_img)
    assert abs(int((lab == 1).sum()) - int(organ_in_image.sum())) <= 0.02 * organ_in_image.sum()
    assert (lab[organ_in_image] == 1).mean() > 0.97 and (organ_in_image[lab == 1]).mean() > 0.97
