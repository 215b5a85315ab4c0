"""Sample data: the packaged phantom CT (DICOM series, medseg.resources) and its ground-truth labels."""

from __future__ import annotations

from medseg.io import load_scan
from medseg.phantom import LABELS
from medseg.resources import SAMPLE_DICOM, SAMPLE_LABELS, sample_path
from medseg.geometry import array_on_grid_of

from ._layers import image_layer, labels_layer


def phantom_ct() -> list[tuple]:
    scan = load_scan(sample_path(SAMPLE_DICOM))
    truth = array_on_grid_of(scan, load_scan(sample_path(SAMPLE_LABELS)))
    return [image_layer(scan, "phantom CT"), labels_layer(truth, scan, LABELS, "phantom CT ground truth")]
