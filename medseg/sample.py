"""The bundled sample case (``sample_data/``): one phantom CT as NIfTI and DICOM, with its labels.

Regenerate with ``medseg sample-data sample_data`` (or ``make sample-data``).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from .phantom import make_phantom, write_dicom_series, write_nifti

SAMPLE_SEED = 7
SAMPLE_SHAPE = (176, 176, 48)
SAMPLE_SPACING = (2.1, 2.1, 4.5)
IMAGE = "phantom_ct.nii.gz"
LABELS = "phantom_ct_labels.nii.gz"
DICOM = "phantom_ct_dicom"


def write_sample(folder: str | Path, seed: int = SAMPLE_SEED) -> list[Path]:
    """Write the sample case into ``folder``; returns the paths written."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    ph = make_phantom(seed, shape=SAMPLE_SHAPE, spacing=SAMPLE_SPACING)
    write_nifti(ph, folder / IMAGE, folder / LABELS)
    dicom = folder / DICOM
    if dicom.exists():
        shutil.rmtree(dicom)
    write_dicom_series(ph, dicom, series_description=f"medseg sample phantom CT (seed {seed})")
    return [folder / IMAGE, folder / LABELS, dicom]
