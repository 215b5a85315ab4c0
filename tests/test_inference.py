"""Slice-wise inference: geometry back on the scan's own grid, streaming, any callable."""

import numpy as np
import pytest
import torch

from medseg.bundle import Bundle, ModelCard
from medseg.errors import MedsegError
from medseg.inference import predict_volume, resolve_device, segment
from medseg.io import Scan, load_scan
from medseg.transforms import canonical_view


class Threshold(torch.nn.Module):
    """A stand-in 'model': class 1 where the centre channel is above 0.5, else class 0."""

    def __init__(self, level=0.5):
        super().__init__()
        self.level = level
        self.batches = []

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
    view, ornt = canonical_view(scan.array, scan.affine)
    card = _card((spacing[0], spacing[1]))
    labels = segment(scan, Bundle(card, model), device="cpu", batch_size=4)
    lo, hi = float(scan.array.min()), float(scan.array.max())
    expected = np.where((scan.array - lo) / (hi - lo) > 0.5, 3, 0)
    assert labels.shape == scan.shape and labels.dtype == np.uint8
    np.testing.assert_array_equal(labels, expected)
    assert all(b[0] <= 4 and b[1] == 3 for b in model.batches)  # batches of <= 4 slices, 3 channels


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
    scan = Scan(np.zeros((4, 4, 4), np.int16), np.eye(4), source=__import__("pathlib").Path("x.nii"), modality="MR")
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
