"""Slice-wise inference: geometry back on the scan's own grid, streaming, any callable."""

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from medseg.bundle import Bundle, ModelCard
from medseg.errors import MedsegError
from medseg.inference import predict_volume, resolve_device, segment
from medseg.io import Scan, load_scan


class Shared(list):
    """A record that survives the deep copy a Predictor makes of its model (the copy records here too)."""

    def __deepcopy__(self, memo):
        return self


class Threshold(torch.nn.Module):
    """A stand-in 'model': class 1 where the centre channel is above 0.5, else class 0."""

    def __init__(self, level=0.5):
        super().__init__()
        self.level = level
        self.batches = Shared()

    def forward(self, x):
        self.batches.append(tuple(x.shape))
        c = x[:, x.shape[1] // 2]
        return torch.stack([self.level - c, c - self.level], dim=1)


def _card(spacing, context=1, modality="MR"):
    return ModelCard(
        name="threshold",
        labels={"background": 0, "bright": 3},
        modality=modality,
        preprocessing={"kind": "mr_percentiles", "percentiles": [0, 100]},
        spacing=list(spacing),
        context_slices=context,
    )


@pytest.mark.parametrize("name", ["mr_3mm_lps.nii.gz", "ct_abdomen_3mm.nii.gz", "mr_brain_tiny.nii"])
def test_label_map_lands_on_the_scan_grid(shared_data, name):
    """With the model's spacing equal to the scan's, the threshold model's mask must equal the
    threshold of the scan's own array voxel for voxel, whatever the stored orientation."""
    scan = load_scan(shared_data / name)
    spacing = scan.spacing
    model = Threshold()
    card = _card((spacing[0], spacing[1]))
    labels = segment(scan, Bundle(card, model), device="cpu", batch_size=4)
    lo, hi = float(scan.array.min()), float(scan.array.max())
    expected = np.where((scan.array - lo) / (hi - lo) > 0.5, 3, 0)
    assert labels.shape == scan.shape and labels.dtype == np.uint8
    np.testing.assert_array_equal(labels, expected)
    # every slice went through the model, in batches of <= 4 slices with 3 channels (1 neighbour each side)
    axial = scan.shape[[code in "SI" for code in scan.axcodes].index(True)]
    assert sum(b[0] for b in model.batches) == axial
    assert model.batches and all(b[0] <= 4 and b[1] == 3 for b in model.batches)


def test_resampling_keeps_alignment(shared_data):
    """At a coarser model spacing the mask still overlaps the true threshold almost everywhere."""
    scan = load_scan(shared_data / "ct_abdomen_3mm.nii.gz")
    card = _card((4.5, 4.5), context=0)
    lo, hi = float(scan.array.min()), float(scan.array.max())
    labels = segment(scan, Bundle(card, Threshold((150 - lo) / (hi - lo))), device="cpu")
    expected = scan.array > 150  # contrast-filled vessels, kidneys and bone
    got = labels == 3
    dice = 2 * (got & expected).sum() / (got.sum() + expected.sum())
    assert expected.sum() > 1000 and dice > 0.8, dice


def test_predict_volume_takes_any_callable_and_streams():
    rng = np.random.default_rng(0)
    vol = rng.normal(size=(20, 30, 11)).astype(np.float32)
    seen = []

    def fn(x):
        seen.append(x.shape[0])
        return torch.cat([torch.zeros_like(x[:, :1]), x[:, :1]], dim=1)

    out = predict_volume(vol, (1.0, 1.0), fn, intensity=(-1.0, 1.0), target_spacing=(1.0, 1.0), batch_size=3)
    assert seen == [3, 3, 3, 2]
    np.testing.assert_array_equal(out, (np.clip((vol + 1) / 2, 0, 1) > 0).astype(np.uint8))


def test_progress_is_reported():
    vol = np.zeros((8, 8, 5), np.float32)
    calls = []
    predict_volume(
        vol, (1, 1), lambda x: torch.zeros(x.shape[0], 2, *x.shape[-2:]), intensity=(0, 1),
        target_spacing=(1, 1), batch_size=2, progress=lambda d, t: calls.append((d, t)),
    )
    assert calls == [(2, 5), (4, 5), (5, 5)]


def test_modality_mismatch_is_refused():
    scan = Scan(np.zeros((4, 4, 4), np.int16), np.eye(4), source=Path("x.nii"), modality="MR")
    with pytest.raises(MedsegError, match="is for CT but the scan is MR"):
        segment(scan, Bundle(_card((1, 1), modality="CT"), Threshold()))


def test_device_resolution():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device(None).type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(MedsegError, match="no CUDA device"):
            resolve_device("cuda")


def test_batch_norm_folding_keeps_outputs():
    from medseg.inference import inference_model
    from medseg.models import SegNet

    torch.manual_seed(0)
    net = SegNet(in_channels=3, num_classes=4, width=4)
    net.train()
    for _ in range(3):  # give batch norm non-trivial running statistics
        net(torch.randn(2, 3, 64, 64) * 3 + 1)
    net.eval()
    fused = inference_model(net)
    assert fused is not net and not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())  # the original is untouched
    x = torch.randn(2, 3, 50, 70)
    with torch.inference_mode():
        torch.testing.assert_close(fused(x), net(x), atol=1e-4, rtol=1e-4)
    assert inference_model(net.train()) is net  # training mode: no folding


def _stack_volume(depth):
    """A (6, 5, depth) volume whose slice z holds the constant z."""
    return np.broadcast_to(np.arange(depth, dtype=np.float32), (6, 5, depth)).copy()


def _channels_fed(volume, context, batch_size):
    """The inputs ``predict_volume`` feeds the model, as slice numbers: (depth, 2 * context + 1)."""
    depth = volume.shape[2]
    seen = []

    def record(x):
        seen.append(x.numpy().copy())
        return torch.zeros(x.shape[0], 2, *x.shape[-2:])

    predict_volume(volume, (1.0, 1.0), record, intensity=(0.0, depth - 1.0), target_spacing=(1.0, 1.0),
                   context=context, batch_size=batch_size)
    x = np.concatenate(seen) * (depth - 1)
    assert np.allclose(x, x[:, :, :1, :1], atol=1e-5)  # each channel is one whole slice
    return np.rint(x[:, :, 0, 0]).astype(int)


@pytest.mark.parametrize("context,batch_size", [(1, 3), (2, 4), (2, 1), (0, 5)])
def test_neighbour_channels_run_inferior_to_superior_and_clamp_at_the_ends(context, batch_size):
    depth = 7
    got = _channels_fed(_stack_volume(depth), context, batch_size)
    assert got.shape == (depth, 2 * context + 1)
    for z in range(depth):
        assert got[z].tolist() == [min(max(z - context + j, 0), depth - 1) for j in range(2 * context + 1)], z
    if context == 2:  # the ends spelled out
        assert got[0].tolist() == [0, 0, 0, 1, 2] and got[-1].tolist() == [4, 5, 6, 6, 6]


def test_neighbour_channels_follow_anatomy_not_storage_order():
    """A scan stored superior -> inferior: the model still sees its neighbours inferior first."""
    depth = 5
    stored = _stack_volume(depth)  # stored slice k holds k; affine axis 2 points inferior
    affine = np.diag([1.0, 1.0, -1.0, 1.0])
    scan = Scan(stored, affine, source=Path("reversed.nii"), modality="MR")
    fed = Shared()

    class Record(torch.nn.Module):
        def forward(self, x):
            fed.append(x.numpy().copy())
            return torch.zeros(x.shape[0], 2, *x.shape[-2:])

    segment(scan, Bundle(_card((1.0, 1.0), context=1), Record()), device="cpu", batch_size=2,
            on_warning=lambda message: None)
    got = np.rint(np.concatenate(fed)[:, :, 0, 0] * (depth - 1)).astype(int)
    # canonical slice z (inferior first) is stored slice depth-1-z; neighbours are ordered inferior -> superior
    expected = [[depth - 1 - min(max(z - 1 + j, 0), depth - 1) for j in range(3)] for z in range(depth)]
    assert got.tolist() == expected
    assert got[0].tolist() == [4, 4, 3] and got[-1].tolist() == [1, 0, 0]


def _uncertainty_of(logits_for_slice, depth):
    """``predict_volume``'s per-slice uncertainty when slice z gets ``logits_for_slice(z, shape)``."""
    volume = _stack_volume(depth)

    def model(x):
        zs = np.rint(x[:, 0, 0, 0].numpy() * (depth - 1)).astype(int)
        return torch.stack([logits_for_slice(int(z), x.shape[-2:]) for z in zs])

    unc = np.full(depth, np.nan)
    predict_volume(volume, (1.0, 1.0), model, intensity=(0.0, depth - 1.0), target_spacing=(1.0, 1.0),
                   batch_size=2, uncertainty=unc)
    return unc


def test_uncertainty_is_the_share_of_uncertain_voxels_near_structures():
    """predict_volume fills ``uncertainty`` with slice_uncertainty: the share of voxels near predicted
    structures (p(background) < 0.9, widened by 4 mm) whose normalised entropy exceeds 0.3."""
    log3 = math.log(3.0)

    def logits(z, shape):
        two = torch.zeros(2, *shape)
        if z == 0:  # confident background everywhere: nothing near a structure
            two[0] = 100.0
        elif z == 2:  # p = (0.25, 0.75): entropy 0.81 everywhere
            two[1] = log3
        elif z == 3:  # confident background in the top half, uniform below
            two[0, : shape[0] // 2] = 100.0
        elif z == 4:  # a confident structure: near, but certain
            two[1] = 100.0
        return two  # z == 1: uniform (all zeros)

    unc = _uncertainty_of(logits, 5)
    np.testing.assert_allclose(unc[[0, 1, 2, 4]], [0.0, 1.0, 1.0, 0.0], atol=1e-6)
    assert 0.0 < unc[3] < 1.0  # certain voxels within 4 mm of the uncertain half count in the share


def test_uncertainty_is_normalised_by_the_number_of_classes():
    unc = _uncertainty_of(lambda z, shape: torch.zeros(5, *shape), 3)  # uniform over 5 classes
    np.testing.assert_allclose(unc, [1.0, 1.0, 1.0], atol=1e-6)
    # p = (0.9, 0.1 / 3, ...) over 4 classes: entropy 0.27 of log 4, below the 0.3 level: certain enough
    p = torch.tensor([0.9, 0.1 / 3, 0.1 / 3, 0.1 / 3])
    unc = _uncertainty_of(lambda z, shape: p.log()[:, None, None].expand(4, *shape), 3)
    np.testing.assert_allclose(unc, [0.0, 0.0, 0.0], atol=1e-6)


@pytest.mark.parametrize("shape,size", [((192, 192), (512, 512)), ((100, 80), (333, 271)), ((50, 70), (20, 30)),
                                        ((64, 64), (64, 64))])
@pytest.mark.parametrize("speckle", [False, True])
def test_resized_argmax_equals_resizing_every_class(shape, size, speckle):
    """Interpolating only near boundaries gives exactly the argmax of every class resized (and the LUT)."""
    from medseg.inference import resized_argmax
    from medseg.transforms import resize_slices

    torch.manual_seed(3)
    coarse = torch.randn(4, 5, shape[0] // (2 if speckle else 24) + 2, shape[1] // (2 if speckle else 24) + 2)
    coarse[:, 0] += 1.5  # mostly background, as a real slice
    logits = torch.nn.functional.interpolate(coarse, size=shape, mode="bicubic", align_corners=False)
    logits = logits.contiguous(memory_format=torch.channels_last)  # as the model gives them
    classes = resize_slices(logits, size, "bilinear").argmax(dim=1)
    lut = torch.tensor([0, 1, 2, 7, 9])
    got = resized_argmax(logits, size, lut)
    assert got.shape == (4, *size) and got.dtype == torch.uint8
    assert torch.equal(got.long(), lut[classes])
    wide = torch.tensor([0, 1, 2, 3, 300])  # a label value over 255: int64 out
    assert torch.equal(resized_argmax(logits, size, wide), wide[classes])
