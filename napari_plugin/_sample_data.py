"""Sample data: the bundled phantom CT (DICOM series) and its ground-truth labels."""

from __future__ import annotations

from pathlib import Path

from medseg.io import load_scan
from medseg.phantom import LABELS
from medseg.transforms import array_on_grid_of

from ._layers import image_layer, labels_layer

SAMPLE = Path(__file__).resolve().parent.parent / "sample_data"


def phantom_ct() -> list[tuple]:
    scan = load_scan(SAMPLE / "phantom_ct_dicom")
    truth = array_on_grid_of(scan, load_scan(SAMPLE / "phantom_ct_labels.nii.gz"))
    return [image_layer(scan, "phantom CT"), labels_layer(truth, scan, LABELS, "phantom CT ground truth")]
