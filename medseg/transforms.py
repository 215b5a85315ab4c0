"""Preprocessing shared by training and inference.

- Orientation: scans are viewed in RAS axis order (a transpose and flips, no resampling), so
  slices along the third axis are axial whatever order the file stores them in.
- Intensity (per modality, MONAI ``ScaleIntensityRange``): CT clips a Hounsfield window and
  scales it to [0, 1]; MR scales the volume's own robust range (percentiles) to [0, 1].
- In-plane resampling (MONAI ``Resize``) of batches of slices to the model's spacing and back.
"""

from __future__ import annotations

from typing import Any

import nibabel as nib
import numpy as np
import torch
from monai.transforms import Resize, ScaleIntensityRange

CT_DEFAULT = {"kind": "ct_window", "window": [-200.0, 300.0]}
MR_DEFAULT = {"kind": "mr_percentiles", "percentiles": [0.5, 99.5]}


def default_preprocessing(modality: str) -> dict[str, Any]:
    return dict(CT_DEFAULT if modality.upper() == "CT" else MR_DEFAULT)


# ---------------------------------------------------------------------------------------------- orientation


def canonical_view(array: np.ndarray, affine: np.ndarray, axcodes: str = "RAS"):
    """View ``array`` in ``axcodes`` axis order (transpose and flips; shares memory).

    Returns ``(view, ornt)``; :func:`from_canonical` with the same ``ornt`` restores the file's
    order, and :func:`canonical_spacing` gives the view's voxel sizes.
    """
    ornt = nib.orientations.io_orientation(affine)
    to_canon = nib.orientations.ornt_transform(ornt, nib.orientations.axcodes2ornt(tuple(axcodes)))
    return nib.orientations.apply_orientation(array, to_canon), ornt


def from_canonical(array: np.ndarray, ornt: np.ndarray, axcodes: str = "RAS") -> np.ndarray:
    """Undo :func:`canonical_view`: ``array`` in ``axcodes`` order back to the file's order."""
    back = nib.orientations.ornt_transform(nib.orientations.axcodes2ornt(tuple(axcodes)), ornt)
    return nib.orientations.apply_orientation(array, back)


def canonical_spacing(affine: np.ndarray, ornt: np.ndarray) -> np.ndarray:
    """Voxel sizes (mm) along the canonical axes of :func:`canonical_view`."""
    spacing = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    out = np.empty(3)
    out[ornt[:, 0].astype(int)] = spacing  # file axis i becomes canonical axis ornt[i, 0] for RAS
    return out


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


def intensity_transform(low: float, high: float) -> ScaleIntensityRange:
    """Clip [low, high] and scale it to [0, 1]."""
    return ScaleIntensityRange(a_min=low, a_max=high, b_min=0.0, b_max=1.0, clip=True)


# ---------------------------------------------------------------------------------------------- slices


def context_indices(z: np.ndarray, context: int, depth: int) -> np.ndarray:
    """Slice indices ``z-k .. z+k`` for each ``z`` (clamped at the volume's ends), shape (len(z), 2k+1)."""
    offsets = np.arange(-context, context + 1)
    return np.clip(np.asarray(z)[:, None] + offsets[None, :], 0, depth - 1)


def read_slices(volume: np.ndarray, start: int, stop: int) -> torch.Tensor:
    """Float tensor (n, X, Y) of slices ``start:stop`` along the third axis.

    Copied slice by slice: ``np.take`` or fancy indexing would copy the whole volume when it is
    a flipped or transposed view (as canonical views of LPS files are).
    """
    out = np.empty((stop - start, volume.shape[0], volume.shape[1]), dtype=np.float32)
    for n, k in enumerate(range(start, stop)):
        out[n] = volume[:, :, k]
    return torch.from_numpy(out)


def target_size(size: tuple[int, int], spacing: tuple[float, float], target: tuple[float, float]) -> tuple[int, int]:
    """In-plane size after resampling from ``spacing`` to ``target`` mm (same field of view)."""
    return tuple(max(1, int(round(n * s / t))) for n, s, t in zip(size, spacing, target))  # type: ignore[return-value]


def resize_slices(x: torch.Tensor, size: tuple[int, int], mode: str = "bilinear") -> torch.Tensor:
    """Resize a batch (B, C, H, W) in-plane with MONAI ``Resize`` (``nearest`` for labels)."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    b, c = x.shape[:2]
    align = False if mode in ("bilinear", "bicubic") else None
    resize = Resize(spatial_size=size, mode=mode, align_corners=align, anti_aliasing=False)
    out = resize(x.reshape(b * c, *x.shape[-2:]))
    out = out.as_tensor() if hasattr(out, "as_tensor") else out
    return out.reshape(b, c, *size)


def array_on_grid_of(reference, other) -> np.ndarray:
    """``other``'s voxels in ``reference``'s axis order, for two scans on the same voxel grid.

    Both are :class:`~medseg.io.Scan`; their files may store the grid in different axis orders
    or flips. Raises :class:`~medseg.errors.MedsegError` naming ``other`` when the grids differ.
    """
    from .errors import MedsegError
    from .io import grid_mismatch

    why = grid_mismatch(reference, other)
    if why is not None:
        raise MedsegError(f"{other.source}: {why} of {reference.source.name}")
    view, _ = canonical_view(other.array, other.affine)
    _, ref_ornt = canonical_view(reference.array[:1, :1, :1], reference.affine)
    return np.ascontiguousarray(from_canonical(view, ref_ornt))
