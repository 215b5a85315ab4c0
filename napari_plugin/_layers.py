"""Layer data tuples for scans and label maps, placed in world coordinates (LPS mm, z-y-x)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medseg.display import default_contrast, to_display
from medseg.io import Scan

SCAN_KEY = "medseg_scan"  # layer.metadata key: the source Scan (geometry for saving masks)
NAMES_KEY = "medseg_labels"  # layer.metadata key: label name -> value

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


def scan_name(scan: Scan) -> str:
    src = Path(scan.source) if scan.source is not None else Path("scan")
    name = src.name
    for suffix in (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".dcm"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def image_layer(scan: Scan, name: str | None = None) -> tuple:
    data, affine = to_display(scan.array, scan.affine)
    kwargs = {
        "name": name or scan_name(scan),
        "affine": affine,
        "contrast_limits": default_contrast(scan.array, scan.modality),
        "colormap": "gray",
        "units": "mm",
        "metadata": {SCAN_KEY: scan, "modality": scan.modality, "source": str(scan.source)},
    }
    return data, kwargs, "image"


def label_colours(names: dict[str, int]) -> dict:
    colours: dict = {None: (0.0, 0.0, 0.0, 0.0), 0: (0.0, 0.0, 0.0, 0.0)}
    for name, value in names.items():
        if value:
            colours[int(value)] = ORGAN_COLOURS.get(name.lower(), _PALETTE[int(value) % len(_PALETTE)])
    for value in range(1, 256):
        colours.setdefault(value, _PALETTE[value % len(_PALETTE)])
    return colours


def labels_layer(labels: np.ndarray, scan: Scan, names: dict[str, int], name: str) -> tuple:
    """A Labels layer tuple on the scan's grid: same world placement as its image layer."""
    from napari.utils.colormaps import DirectLabelColormap

    data, affine = to_display(labels, scan.affine)
    by_value = {int(v): k for k, v in names.items()}
    values = sorted(set(by_value) | {0})
    kwargs = {
        "name": name,
        "affine": affine,
        "units": "mm",
        "colormap": DirectLabelColormap(color_dict=label_colours(names)),
        "features": {"index": values, "structure": [by_value.get(v, str(v)) for v in values]},
        "metadata": {SCAN_KEY: scan, NAMES_KEY: dict(names), "source": str(scan.source)},
        "opacity": 0.5,
    }
    return np.ascontiguousarray(data), kwargs, "labels"
