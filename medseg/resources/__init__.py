"""Files shipped inside the package: the default model and the sample case.

``model/`` holds the default bundle (``model.json`` + ``model.safetensors``); the sample case is
one phantom CT as NIfTI (:data:`SAMPLE_IMAGE`), as a DICOM series (:data:`SAMPLE_DICOM`) and its
labels (:data:`SAMPLE_LABELS`). A checkout's ``sample_data`` is a link to this folder.
Regenerate with ``make sample-data`` / ``make model``.
"""

from __future__ import annotations

import os
from importlib.resources import files
from pathlib import Path

from ..errors import MedsegError

MODEL = "model"
SAMPLE_IMAGE = "phantom_ct.nii.gz"
SAMPLE_LABELS = "phantom_ct_labels.nii.gz"
SAMPLE_DICOM = "phantom_ct_dicom"


def resource_root() -> Path:
    """This package's folder on the file system (a model bundle and a DICOM series need real files)."""
    root = files(__name__)
    if not isinstance(root, Path):  # e.g. imported from a zip archive
        raise MedsegError(f"{root}: medseg's packaged files are not on the file system; install medseg unzipped")
    return root


def model_path() -> Path:
    """The packaged default model bundle (folder)."""
    return resource_root() / MODEL


def default_bundle_path() -> Path:
    """The default model: ``$MEDSEG_MODEL`` if set, else the one packaged here (:func:`model_path`)."""
    env = os.environ.get("MEDSEG_MODEL")
    if env:
        return Path(env)
    return model_path()


def sample_path(name: str = SAMPLE_DICOM) -> Path:
    """A file or folder of the packaged sample case, e.g. ``sample_path(SAMPLE_LABELS)``."""
    path = resource_root() / name
    if not path.exists():
        raise MedsegError(f"{path}: not in the installed medseg package (regenerate it with `medseg sample-data`)")
    return path
