"""Overlap and distance metrics (``monai.metrics``) and label volumes; :mod:`medseg.evaluation` scores folders."""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch


def _crop_to_union(p: np.ndarray, r: np.ndarray, margin: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Both masks cropped to the bounding box of their union (+margin): metrics do not change."""
    both = p | r
    sl = []
    for ax in range(both.ndim):
        hit = np.flatnonzero(both.any(axis=tuple(a for a in range(both.ndim) if a != ax)))
        sl.append(slice(max(int(hit[0]) - margin, 0), int(hit[-1]) + margin + 1))
    return p[tuple(sl)], r[tuple(sl)]


def label_metrics(
    pred: np.ndarray, ref: np.ndarray, labels: dict[str, int], spacing=None, hd95: bool = False,
    ignore: int | None = None,
) -> dict[str, dict[str, float]]:
    """Per named label (background and ``ignore`` excluded): Dice, and HD95 in mm when ``hd95``.

    A label absent from both prediction and reference gets NaN (leave it out of means); absent
    from one side only gets Dice 0 and HD95 NaN (undefined). ``ignore``: the value of the
    reference's unlabelled voxels (nnU-Net's ``ignore`` label); whatever is predicted there
    counts for nothing (distances are measured between the labelled parts only).
    """
    from monai.metrics import compute_dice, compute_hausdorff_distance  # here: importing MONAI takes seconds

    if pred.shape != ref.shape:
        raise ValueError(f"prediction shape {pred.shape} != reference shape {ref.shape}")
    labelled = None if ignore is None else np.asarray(ref != ignore)
    out: dict[str, dict[str, float]] = {}
    for name, value in labels.items():
        if value == 0 or value == ignore:
            continue
        p, r = np.asarray(pred == value), np.asarray(ref == value)
        if labelled is not None:
            p &= labelled
        if not p.any() and not r.any():
            out[name] = {"dice": math.nan, **({"hd95": math.nan} if hd95 else {})}
            continue
        p, r = _crop_to_union(p, r)
        pt = torch.from_numpy(p)[None, None].float()
        rt = torch.from_numpy(r)[None, None].float()
        row = {"dice": float(compute_dice(pt, rt, include_background=True, ignore_empty=False).item())}
        if hd95:
            if p.any() and r.any():
                sp = None if spacing is None else [float(s) for s in spacing]
                with warnings.catch_warnings():  # monai >= 1.5 warns about its own internal call
                    warnings.filterwarnings("ignore", message=".*always_return_as_numpy", category=FutureWarning)
                    hd = compute_hausdorff_distance(pt, rt, include_background=True, percentile=95, spacing=sp)
                row["hd95"] = float(hd.item())
            else:
                row["hd95"] = math.nan
        out[name] = row
    return out


def dice_per_label(pred: np.ndarray, ref: np.ndarray, labels: dict[str, int]) -> dict[str, float]:
    """3D Dice of each named label (background excluded); NaN where absent from both."""
    return {k: v["dice"] for k, v in label_metrics(pred, ref, labels).items()}


def label_volumes_ml(labels: np.ndarray, voxel_volume_ml: float, names: dict[str, int] | None = None) -> dict[str, float]:
    """Volume in mL of every non-zero label present (keys: names where known, else the value)."""
    flat = np.ravel(np.asarray(labels), order="K")  # memory order (no copy for C or F layouts): counts are the same
    if flat.dtype == np.uint8:  # most label maps: torch counts bytes without widening them to int64 (2x numpy)
        counts = torch.bincount(torch.from_numpy(flat)).numpy()
    else:
        counts = _bincount_chunks(flat)
    by_value = {v: k for k, v in (names or {}).items()}
    return {by_value.get(v, str(v)): float(c) * voxel_volume_ml for v, c in enumerate(counts) if v != 0 and c > 0}


def _bincount_chunks(flat: np.ndarray) -> np.ndarray:
    """``np.bincount(flat)`` in chunks (bincount converts its input to int64: a full copy at once is large)."""
    counts = np.zeros(1, dtype=np.int64)
    for start in range(0, flat.size, 1 << 22):  # chunks: bincount converts its input to int64
        chunk = np.bincount(flat[start : start + (1 << 22)])
        if chunk.size > counts.size:
            chunk[: counts.size] += counts
            counts = chunk
        else:
            counts[: chunk.size] += chunk
    return counts
