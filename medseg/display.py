"""Scans and label maps as a viewer shows them (napari), with their world geometry.

Viewer convention (the one DICOM viewers use): world axes are ``(z, y, x)`` in millimetres of
the patient's LPS frame, so an axial slice shows anterior at the top and the patient's right on
the left of the screen (radiological display). The array is the scan's voxels reordered (a
transpose and flips, no resampling) to ``(S, P, L)`` axis order; a 4x4 ``affine`` maps its
indices to world ``(z, y, x)``. For an axis-aligned scan the affine is diagonal (voxel sizes and
origin), so anisotropic voxels keep their true proportions and slicing is exact.

:func:`to_display` and :func:`from_display` are exact inverses, so a mask painted in the
viewer goes back to the scan's own voxel order and can be written with the scan's geometry.

>>> import numpy as np
>>> from medseg.io import Scan
>>> scan = Scan(np.zeros((4, 5, 6), np.int16), np.diag([0.8, 0.8, 3.0, 1.0]), source=None)
>>> data, affine = to_display(scan.array, scan.affine)
>>> data.shape, np.diag(affine).tolist()
((6, 5, 4), [3.0, 0.8, 0.8, 1.0])
"""

from __future__ import annotations

import nibabel as nib
import numpy as np

from .transforms import canonical_view, from_canonical

AXES = "LPS"
_REVERSE = np.eye(4)[[2, 1, 0, 3]]  # (x, y, z, 1) <-> (z, y, x, 1)
_RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])

# CT window presets (level, width) in HU -> contrast limits
CT_WINDOWS = {
    "soft tissue": (40.0, 400.0),
    "lung": (-600.0, 1500.0),
    "bone": (400.0, 1800.0),
    "brain": (40.0, 80.0),
}

# Stable colours per structure name (RGBA 0-1); other labels get a fixed palette by value.
ORGAN_COLOURS = {
    "liver": (0.80, 0.42, 0.25, 1.0),
    "spleen": (0.56, 0.27, 0.68, 1.0),
    "kidney_right": (0.95, 0.77, 0.06, 1.0),
    "kidney_left": (0.20, 0.60, 0.86, 1.0),
    "liver_tumour": (0.18, 0.80, 0.44, 1.0),
    "tumour": (0.18, 0.80, 0.44, 1.0),
    "pancreas": (0.95, 0.61, 0.07, 1.0),
}
_PALETTE = [
    (0.90, 0.30, 0.24, 1.0), (0.16, 0.50, 0.73, 1.0), (0.15, 0.68, 0.38, 1.0), (0.61, 0.35, 0.71, 1.0),
    (0.95, 0.77, 0.06, 1.0), (0.10, 0.74, 0.61, 1.0), (0.83, 0.33, 0.00, 1.0), (0.20, 0.29, 0.37, 1.0),
]


def label_colours(names: dict[str, int]) -> dict:
    """RGBA per label value: 0 transparent, a named structure always the same colour, others a fixed palette."""
    colours: dict = {None: (0.0, 0.0, 0.0, 0.0), 0: (0.0, 0.0, 0.0, 0.0)}
    for name, value in names.items():
        if value:
            colours[int(value)] = ORGAN_COLOURS.get(name.lower(), _PALETTE[int(value) % len(_PALETTE)])
    for value in range(1, 256):
        colours.setdefault(value, _PALETTE[value % len(_PALETTE)])
    return colours


def display_affine(ras_affine: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """The 4x4 map from display-array indices ``(S, P, L)`` to world ``(z, y, x)`` LPS mm."""
    ornt = nib.orientations.io_orientation(ras_affine)
    to_view = nib.orientations.ornt_transform(ornt, nib.orientations.axcodes2ornt(tuple(AXES)))
    view_affine = ras_affine @ nib.orientations.inv_ornt_aff(to_view, shape[:3])
    return _REVERSE @ _RAS_TO_LPS @ view_affine @ _REVERSE


def to_display(array: np.ndarray, ras_affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(data, affine)`` for a viewer layer: voxels in ``(S, P, L)`` order (a view, no copy)."""
    view, _ = canonical_view(array, ras_affine, AXES)
    return view.transpose(2, 1, 0), display_affine(ras_affine, array.shape)


def from_display(data: np.ndarray, ras_affine: np.ndarray) -> np.ndarray:
    """Undo :func:`to_display`: a display-order array back in the scan's own voxel order."""
    ornt = nib.orientations.io_orientation(ras_affine)
    return np.ascontiguousarray(from_canonical(np.asarray(data).transpose(2, 1, 0), ornt, AXES))


def display_shape(shape: tuple[int, ...], ras_affine: np.ndarray) -> tuple[int, int, int]:
    """The display array's shape for a scan of ``shape`` (to check a Labels layer against its image)."""
    ornt = nib.orientations.io_orientation(ras_affine)
    to_view = nib.orientations.ornt_transform(ornt, nib.orientations.axcodes2ornt(tuple(AXES)))
    view = [0, 0, 0]
    for axis, (target, _flip) in enumerate(to_view):
        view[int(target)] = shape[axis]
    return view[2], view[1], view[0]


def window_limits(level: float, width: float) -> tuple[float, float]:
    return level - width / 2.0, level + width / 2.0


def default_contrast(array: np.ndarray, modality: str | None) -> tuple[float, float]:
    """Contrast limits: the soft-tissue window for CT, the 1-99 % percentile range otherwise."""
    if (modality or "").upper() == "CT":
        return window_limits(*CT_WINDOWS["soft tissue"])
    sample = np.asarray(array)[:: max(1, array.shape[0] // 64)]
    sample = sample[np.isfinite(sample)]  # NaN/inf voxels do not set the contrast
    lo, hi = np.percentile(sample, [1.0, 99.0]) if sample.size else (0.0, 1.0)
    return float(lo), float(hi if hi > lo else lo + 1.0)


__all__ = [
    "CT_WINDOWS",
    "ORGAN_COLOURS",
    "label_colours",
    "default_contrast",
    "display_affine",
    "display_shape",
    "from_display",
    "to_display",
    "window_limits",
]
