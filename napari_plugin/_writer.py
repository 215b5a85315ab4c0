"""Writer: a Labels layer saved as NIfTI with exactly its source scan's geometry (atomic)."""

from __future__ import annotations

import numpy as np

from medseg.geometry import display_shape, from_display
from medseg.errors import MedsegError
from medseg.io import save_mask
from medseg.labels import check_label_map

from ._layers import SCAN_KEY


def labels_in_scan_order(data: np.ndarray, metadata: dict, name: str = "labels") -> tuple[np.ndarray, object]:
    """The layer's voxels in its scan's own order, and the scan; clear errors when they do not fit."""
    scan = (metadata or {}).get(SCAN_KEY)
    if scan is None:
        raise MedsegError(
            f"layer '{name}': no source scan is attached; segment a scan opened with medseg (its geometry is needed)"
        )
    data = np.asarray(data)
    expect = display_shape(scan.shape, scan.affine)
    if data.shape != tuple(expect):
        raise MedsegError(f"layer '{name}': shape {data.shape} does not match its scan {scan.source} ({expect})")
    data = check_label_map(data, f"layer '{name}'")
    return from_display(data, scan.affine), scan


def write_labels(path: str, data, meta: dict) -> list[str]:
    """npe2 single-layer writer: NIfTI mask on the source scan's grid; never over the source."""
    labels, scan = labels_in_scan_order(data, meta.get("metadata", {}), meta.get("name", "labels"))
    return [str(save_mask(labels, scan, path))]
