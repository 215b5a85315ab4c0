"""Slices for the model, without MONAI (so ``medseg segment`` starts fast): intensity presets and
ranges, context slices, reading slices out of a volume, in-plane sizes and resizing.

:mod:`medseg.transforms` builds the training pipeline (MONAI) on these and re-exports them.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

CT_DEFAULT = {"kind": "ct_window", "window": [-200.0, 300.0]}
MR_DEFAULT = {"kind": "mr_percentiles", "percentiles": [0.5, 99.5]}


def default_preprocessing(modality: str) -> dict[str, Any]:
    return dict(CT_DEFAULT if modality.upper() == "CT" else MR_DEFAULT)


# ---------------------------------------------------------------------------------------------- intensity


def intensity_range(volume: np.ndarray, preprocessing: dict[str, Any]) -> tuple[float, float]:
    """The (low, high) input values mapped to 0 and 1 for this volume."""
    kind = preprocessing.get("kind")
    if kind == "ct_window":
        lo, hi = preprocessing["window"]
        return float(lo), float(hi)
    if kind == "mr_percentiles":
        # Robust per-volume range; a strided sample keeps this cheap on big volumes.
        step = max(1, round((volume.size / 4e6) ** (1 / 3)))
        sample = np.asarray(volume[::step, ::step, ::step], dtype=np.float32)
        sample = sample[np.isfinite(sample)]
        if sample.size == 0:
            return 0.0, 1.0
        lo, hi = np.percentile(sample, preprocessing.get("percentiles", [0.5, 99.5]))
        if hi <= lo:
            hi = lo + 1.0
        return float(lo), float(hi)
    raise ValueError(f"unknown preprocessing kind {kind!r}; valid: ct_window, mr_percentiles")


# ---------------------------------------------------------------------------------------------- slices


def context_indices(z: np.ndarray, context: int, depth: int, step: int = 1) -> np.ndarray:
    """Slice indices ``z-k*step .. z+k*step`` (every ``step``-th slice) for each ``z``, clamped at the
    volume's ends, shape (len(z), 2k+1)."""
    offsets = np.arange(-context, context + 1) * max(1, int(step))
    return np.clip(np.asarray(z)[:, None] + offsets[None, :], 0, depth - 1)


def context_step(context_mm: float | None, slice_mm: float) -> int:
    """How many slices apart the context neighbours are: the slice nearest ``context_mm`` from the
    centre (at least the next one), so that thin and thick slices give the network neighbours at
    about the same distance. ``context_mm`` None (cards before it existed): the next slice."""
    if context_mm is None or not slice_mm > 0 or not math.isfinite(slice_mm):
        return 1
    return max(1, int(math.floor(context_mm / slice_mm + 0.5)))


def read_slices(volume: np.ndarray, start: int, stop: int) -> torch.Tensor:
    """Float tensor (n, X, Y) of slices ``start:stop`` along the third axis.

    Copied slice by slice: ``np.take`` or fancy indexing would copy the whole volume when it is
    a flipped or transposed view (as canonical views of LPS files are).
    """
    return read_slices_at(volume, range(start, stop))


def read_slices_at(volume: np.ndarray, ks) -> torch.Tensor:
    """Float tensor (len(ks), X, Y) of the slices ``ks`` along the third axis (as :func:`read_slices`)."""
    ks = list(ks)
    out = np.empty((len(ks), volume.shape[0], volume.shape[1]), dtype=np.float32)
    for n, k in enumerate(ks):
        out[n] = volume[:, :, int(k)]
    return torch.from_numpy(out)


def target_size(size: tuple[int, int], spacing: tuple[float, float], target: tuple[float, float]) -> tuple[int, int]:
    """In-plane size after resampling from ``spacing`` to ``target`` mm (same field of view)."""
    return tuple(max(1, int(round(n * s / t))) for n, s, t in zip(size, spacing, target))  # type: ignore[return-value]


def resize_slices(x: torch.Tensor, size: tuple[int, int], mode: str = "bilinear") -> torch.Tensor:
    """Resize a batch (B, C, H, W) in-plane, in float32 (``nearest`` for labels): what MONAI's
    ``Resize`` does (``interpolate`` with half-pixel centres, no anti-aliasing), without importing MONAI.

    ``nearest`` takes, for each output pixel, the input pixel under its centre (torch's
    ``nearest-exact``), the same half-pixel grid as ``bilinear``: torch's own ``nearest`` picks
    ``floor(i * scale)``, which moves labels by up to half an output pixel against their image
    (0.4 pixel, 0.8 mm, from 0.8 to 2 mm)."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    b, c = x.shape[:2]
    mode = "nearest-exact" if mode == "nearest" else mode
    align = False if mode in ("bilinear", "bicubic") else None
    flat = x.reshape(1, b * c, *x.shape[-2:]).to(torch.float32)
    return F.interpolate(flat, size=tuple(size), mode=mode, align_corners=align).reshape(b, c, *size)
