"""Layer data tuples for scans and label maps, placed in world coordinates (LPS mm, z-y-x)."""

from __future__ import annotations

import numpy as np

from medseg.display import CT_WINDOWS, default_contrast, label_colours, shows_as_ct, window_limits
from medseg.geometry import to_display
from medseg.io import Scan
from medseg.naming import case_name

SCAN_KEY = "medseg_scan"  # layer.metadata key: the source Scan (geometry for saving masks)
NAMES_KEY = "medseg_labels"  # layer.metadata key: label name -> value
MODEL_KEY = "medseg_model"  # layer.metadata key: the name of the model that segmented it


def scan_name(scan: Scan) -> str:
    return case_name(scan.source if scan.source is not None else "scan")


def image_layer(scan: Scan, name: str | None = None) -> tuple:
    data, affine = to_display(scan.array, scan.affine)
    ct = shows_as_ct(scan.array, scan.modality)  # a NIfTI that does not say: judged by its values
    kwargs = {
        "name": name or scan_name(scan),
        "affine": affine,
        "contrast_limits": window_limits(*CT_WINDOWS["soft tissue"]) if ct else default_contrast(scan.array, "MR"),
        "colormap": "gray",
        "units": "mm",
        "metadata": {SCAN_KEY: scan, "modality": scan.modality, "ct_windows": ct, "source": str(scan.source)},
    }
    return data, kwargs, "image"


def labels_layer(labels: np.ndarray, scan: Scan, names: dict[str, int], name: str, model: str | None = None) -> tuple:
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
        "metadata": {SCAN_KEY: scan, NAMES_KEY: dict(names), "source": str(scan.source),
                     **({MODEL_KEY: model} if model else {})},
        "opacity": 0.5,
    }
    return np.ascontiguousarray(data), kwargs, "labels"
