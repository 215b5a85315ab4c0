"""The packaged sample case (``medseg/resources/``, linked as ``sample_data`` in a checkout): one
phantom CT as NIfTI and DICOM, with its labels.

Regenerate with ``medseg sample-data medseg/resources`` (or ``make sample-data``).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from .phantom import make_phantom, write_dicom_series, write_nifti
from .resources import SAMPLE_DICOM, SAMPLE_IMAGE, SAMPLE_LABELS

SAMPLE_SEED = 7
SAMPLE_SHAPE = (176, 176, 48)
SAMPLE_SPACING = (2.1, 2.1, 4.5)


def write_sample(folder: str | Path, seed: int = SAMPLE_SEED) -> list[Path]:
    """Write the sample case into ``folder``; returns the paths written."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    ph = make_phantom(seed, shape=SAMPLE_SHAPE, spacing=SAMPLE_SPACING)
    write_nifti(ph, folder / SAMPLE_IMAGE, folder / SAMPLE_LABELS)
    dicom = folder / SAMPLE_DICOM
    if dicom.exists():
        shutil.rmtree(dicom)
    write_dicom_series(ph, dicom, series_description=f"medseg sample phantom CT (seed {seed})")
    return [folder / SAMPLE_IMAGE, folder / SAMPLE_LABELS, dicom]
