"""How a viewer (napari) shows scans and label maps: colours, CT windows, contrast limits.

The display ORIENTATION (voxels in ``(S, P, L)`` order, world ``(z, y, x)`` LPS mm, radiological
display) is :func:`medseg.geometry.to_display` and :func:`medseg.geometry.from_display`.
"""

from __future__ import annotations

import numpy as np

from .intensity import looks_like_ct

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


def window_limits(level: float, width: float) -> tuple[float, float]:
    return level - width / 2.0, level + width / 2.0


def shows_as_ct(array: np.ndarray, modality: str | None) -> bool:
    """CT windows apply: the scan says CT, or says nothing and its values look like HU."""
    return (modality or "").upper() == "CT" or (not modality and looks_like_ct(array))


def default_contrast(array: np.ndarray, modality: str | None) -> tuple[float, float]:
    """Contrast limits: the soft-tissue window for CT (by the file's word, or by the values of a
    NIfTI that does not say), the 1-99 % percentile range otherwise."""
    if shows_as_ct(array, modality):
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
    "shows_as_ct",
    "window_limits",
]
