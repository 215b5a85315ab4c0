"""What inference does to a label map after the network: the model card's ``postprocessing``.

``main_piece`` (nnU-Net's "keep the largest connected component", with a margin): an organ is
one piece of tissue, so a label's voxels far from the label's largest piece are the network
taking another structure for the organ (liver on a pelvic muscle, spleen on the humerus). Each
listed label keeps the pieces (26-connected) whose bounding box lies within ``margin_mm`` of
its largest piece's; the others become background. Pieces near the largest one (an organ the
network found in fragments) are kept. Lesions are never listed: a liver can hold several.

Pieces are found on the label's bounding box pooled to voxels of about 3 mm (no piece is lost;
pieces closer than that count as one, far inside the margin), their distances measured on the
full grid, so a 512 x 512 x 300 CT takes a fraction of a second.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy import ndimage

_CONNECTIVITY = np.ones((3, 3, 3), bool)  # 26-connected
_POOL_MM = 3.0  # pieces are found on a grid of about this size (pieces closer than it count as one)


def apply_postprocessing(labels: np.ndarray, spacing: Sequence[float], post: Mapping[str, Any],
                         names: Mapping[str, int]) -> np.ndarray:
    """``labels`` (X, Y, Z, any axis order whose ``spacing`` is given, mm) after the card's steps,
    changed in place and returned; an empty ``post`` changes nothing."""
    margin = float(post.get("margin_mm", 0.0))
    for name in post.get("main_piece", []):
        keep_main_piece(labels, int(names[name]), spacing, margin)
    return labels


def keep_main_piece(labels: np.ndarray, value: int, spacing: Sequence[float], margin_mm: float) -> int:
    """Set to 0 the voxels of ``value`` in pieces further than ``margin_mm`` from its largest
    piece (bounding box to bounding box); return how many voxels were set to 0."""
    whole = labels == value
    box = _bounding_box(whole)
    if box is None:
        return 0
    mask = whole[box]
    pool = tuple(max(1, int(_POOL_MM // float(sp))) for sp in spacing[:3])
    pieces, n = ndimage.label(_pooled(mask, pool), _CONNECTIVITY)
    if n < 2:
        return 0
    sizes = np.bincount(pieces.ravel(), minlength=n + 1)
    sizes[0] = 0
    main = int(np.argmax(sizes))
    boxes = {i: _piece_box(mask, pieces, i, obj, pool) for i, obj in enumerate(ndimage.find_objects(pieces), start=1)
             if obj is not None}
    step = np.asarray(spacing[:3], float)
    removed = 0
    for i, (box_i, voxels) in boxes.items():
        if i == main or _gap_mm(box_i, boxes[main][0], step) <= margin_mm:
            continue
        region = labels[box][box_i]
        region[voxels] = 0
        removed += int(voxels.sum())
    return removed


def _piece_box(mask: np.ndarray, pieces: np.ndarray, i: int, obj: tuple[slice, ...],
               pool: tuple[int, int, int]) -> tuple[tuple[slice, ...], np.ndarray]:
    """(the full-resolution box of pooled piece ``i``, its voxels in that box) within ``mask``."""
    full = tuple(slice(s.start * p, min(s.stop * p, m)) for s, p, m in zip(obj, pool, mask.shape))
    voxels = mask[full] & _unpooled(pieces[obj] == i, pool, [s.stop - s.start for s in full])
    inner = _bounding_box(voxels)
    assert inner is not None  # a pooled voxel is True only where a voxel of the mask is
    box = tuple(slice(f.start + b.start, f.start + b.stop) for f, b in zip(full, inner))
    return box, voxels[inner]


def _bounding_box(mask: np.ndarray) -> tuple[slice, ...] | None:
    """The smallest box holding every True voxel of ``mask``; None if it holds none. Each axis is
    searched within the range the axes before it found, so later passes read less."""
    box = [slice(0, n) for n in mask.shape]
    for axis in reversed(range(mask.ndim)):  # the last (contiguous, slice) axis first
        part = mask[tuple(box)]
        hit = np.flatnonzero(part.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))
        if hit.size == 0:
            return None
        box[axis] = slice(box[axis].start + int(hit[0]), box[axis].start + int(hit[-1]) + 1)
    return tuple(box)


def _pooled(mask: np.ndarray, pool: tuple[int, int, int]) -> np.ndarray:
    """``mask`` max-pooled by ``pool`` (padded with False to a multiple of it)."""
    if pool == (1, 1, 1):
        return mask
    pad = [(0, (-s) % p) for s, p in zip(mask.shape, pool)]
    m = np.pad(mask, pad)
    x, y, z = (s // p for s, p in zip(m.shape, pool))
    return m.reshape(x, pool[0], y, pool[1], z, pool[2]).any(axis=(1, 3, 5))


def _unpooled(small: np.ndarray, pool: tuple[int, int, int], shape: list[int]) -> np.ndarray:
    out = small
    for axis, p in enumerate(pool):
        if p > 1:
            out = np.repeat(out, p, axis=axis)
    return out[: shape[0], : shape[1], : shape[2]]


def _gap_mm(a: tuple[slice, ...], b: tuple[slice, ...], step: np.ndarray) -> float:
    """The distance between two boxes of voxels (0 where they touch or overlap)."""
    gaps = [max(0, sa.start - sb.stop, sb.start - sa.stop) for sa, sb in zip(a, b)]
    return float(np.linalg.norm(np.asarray(gaps, float) * step))


__all__ = ["apply_postprocessing", "keep_main_piece"]
