"""Overlap metrics and volumes (Dice via ``monai.metrics``)."""

from __future__ import annotations

import numpy as np
import torch
from monai.metrics import compute_dice


def dice_per_label(pred: np.ndarray, ref: np.ndarray, labels: dict[str, int]) -> dict[str, float]:
    """3D Dice of each named label (background excluded).

    A label absent from both prediction and reference gets NaN (leave it out of means); absent
    from the reference but predicted gets 0.
    """
    if pred.shape != ref.shape:
        raise ValueError(f"prediction shape {pred.shape} != reference shape {ref.shape}")
    out: dict[str, float] = {}
    for name, value in labels.items():
        if value == 0:
            continue
        p = torch.from_numpy(np.asarray(pred == value))[None, None]
        r = torch.from_numpy(np.asarray(ref == value))[None, None]
        if not p.any() and not r.any():
            out[name] = float("nan")
            continue
        out[name] = float(compute_dice(p.float(), r.float(), include_background=True, ignore_empty=False).item())
    return out


def label_volumes_ml(labels: np.ndarray, voxel_volume_ml: float, names: dict[str, int] | None = None) -> dict[str, float]:
    """Volume in mL of every non-zero label present (keys: names where known, else the value)."""
    counts = np.bincount(np.asarray(labels).ravel())
    by_value = {v: k for k, v in (names or {}).items()}
    return {by_value.get(v, str(v)): float(c) * voxel_volume_ml for v, c in enumerate(counts) if v != 0 and c > 0}
