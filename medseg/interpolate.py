"""Fill the slices between corrected key slices: shape-based interpolation of each structure.

A user corrects a structure on a few slices; the slices between two corrected slices that both
hold the structure get it by interpolating its signed distance map (in millimetres, in-plane)
linearly between them and keeping where it is inside (Raya and Udupa's shape-based
interpolation, the classic equivalent of ITK's morphological contour interpolation). Distance
maps come from ``scipy.ndimage.distance_transform_edt``. Several structures are filled
independently; where two claim a voxel the one it lies deeper inside wins. Key slices are never
changed, and the slices filled are returned so a viewer can show them as "filled, not reviewed".

>>> filled, slices = fill_between(labels, key_slices=[10, 16], spacing=(0.8, 0.8))  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Iterable

import numpy as np
from scipy import ndimage

from .errors import MedsegError


def signed_distance(mask: np.ndarray, spacing: tuple[float, float] = (1.0, 1.0)) -> np.ndarray:
    """Signed distance (mm) to a 2-D mask's boundary: negative inside, positive outside."""
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        return np.full(mask.shape, np.inf, dtype=np.float32)
    if mask.all():
        return np.full(mask.shape, -np.inf, dtype=np.float32)
    outside = ndimage.distance_transform_edt(~mask, sampling=spacing)
    inside = ndimage.distance_transform_edt(mask, sampling=spacing)
    return (outside - inside + np.where(mask, 0.5, -0.5) * min(spacing)).astype(np.float32)


def fill_between(
    labels: np.ndarray,
    key_slices: Iterable[int] | None = None,
    *,
    axis: int = 2,
    spacing: tuple[float, float] = (1.0, 1.0),
    values: Iterable[int] | None = None,
    replace: bool = False,
) -> tuple[np.ndarray, list[int]]:
    """``labels`` with the slices between key slices filled, and the indices of the slices filled.

    ``key_slices`` (along ``axis``; default: every slice holding a label) are the corrected ones.
    For each structure (``values``, default every non-zero value) and each pair of consecutive key
    slices that both hold it, the slices between them get the structure where its interpolated
    signed distance is inside. Only background voxels of non-key slices are written. ``spacing``
    is the in-plane voxel size (mm) of the two other axes, in their order. ``replace``: on the
    slices between two key slices the structure gets exactly its interpolated shape (its old voxels
    there are cleared, as a model's prediction being corrected); other structures are still kept.
    """
    labels = np.asarray(labels)
    if labels.ndim != 3 or not 0 <= axis < 3:
        raise MedsegError(f"fill between slices: needs a 3-D label map and an axis 0..2, got shape {labels.shape}")
    moved = np.moveaxis(labels, axis, 0)
    depth = moved.shape[0]
    keys = sorted({int(k) for k in key_slices} if key_slices is not None
                  else {int(k) for k in np.flatnonzero(moved.reshape(depth, -1).any(axis=1))})
    if any(not 0 <= k < depth for k in keys):
        raise MedsegError(f"fill between slices: key slices {keys} outside 0..{depth - 1}")
    values = sorted(int(v) for v in (values if values is not None else np.unique(moved)) if int(v) != 0)
    best = np.full(moved.shape, np.inf, dtype=np.float32)  # the deepest claim per voxel (most negative distance)
    claim = np.zeros(moved.shape, dtype=moved.dtype)
    gaps = np.zeros(depth, dtype=bool)  # slices between two key slices holding a structure
    for value in values:
        holding = [k for k in keys if (moved[k] == value).any()]
        for a, b in zip(holding, holding[1:]):
            if b - a < 2 or any(a < k < b for k in keys if k not in holding):
                continue  # neighbours, or a key slice between them says the structure is absent there
            gaps[a + 1 : b] = True
            da, db = signed_distance(moved[a] == value, spacing), signed_distance(moved[b] == value, spacing)
            for k in range(a + 1, b):
                t = (k - a) / (b - a)
                d = (1 - t) * da + t * db
                wins = (d < 0) & (d < best[k])
                best[k][wins], claim[k][wins] = d[wins], value
    out = moved.copy()
    not_key = np.ones(depth, dtype=bool)
    not_key[keys] = False
    free = moved == 0
    if replace:  # the filled structures' old voxels between key slices make way for the interpolation
        old = np.isin(moved, values) & gaps[:, None, None]
        out[old] = 0
        free |= old
    write = (claim != 0) & free & not_key[:, None, None]
    out[write] = claim[write]
    touched = write | (out != moved)
    filled = [int(k) for k in np.flatnonzero(touched.reshape(depth, -1).any(axis=1))]
    return np.ascontiguousarray(np.moveaxis(out, 0, axis)), filled


__all__ = ["fill_between", "signed_distance"]
