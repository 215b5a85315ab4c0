"""A segmentation result written as NIfTI, DICOM SEG or RTSTRUCT (``--format`` of ``segment`` and ``batch``).

The DICOM formats reference the source series (the scan must come from a DICOM folder) and are
written on its own slice grid, the one :func:`medseg.io.load_scan` read: the label map's
``[column, row, slice]`` is the series' slices in normal order. Asking for them on a NIfTI file is
a one-line error before any work.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .dicom import looks_like_dicom
from .errors import MedsegError, need_extra
from .io import check_mask_name, save_mask
from .labels import split_ignore
from .scan import Scan

FORMATS = ("nifti", "dicom-seg", "rtstruct")
SUFFIXES = {"nifti": ".nii.gz", "dicom-seg": ".dcm", "rtstruct": ".dcm"}


def check_format(fmt: str) -> str:
    fmt = fmt.lower()
    if fmt not in FORMATS:
        raise MedsegError(f"--format {fmt}: choose one of {', '.join(FORMATS)}")
    return fmt


def is_dicom_source(path: str | os.PathLike) -> bool:
    """A DICOM series folder or a DICOM file (what the DICOM formats can reference)."""
    p = Path(path)
    return p.is_dir() or (p.is_file() and (p.suffix.lower() == ".dcm" or looks_like_dicom(p)))


def check_result_path(path: str | os.PathLike, fmt: str, source: str | os.PathLike) -> None:
    """Before any work: the output's name suits ``fmt``, and a DICOM format has a DICOM source."""
    fmt = check_format(fmt)
    if fmt == "nifti":
        check_mask_name(path)
        return
    if not is_dicom_source(source):
        raise MedsegError(f"{source}: --format {fmt} writes DICOM that references the source series, "
                          "but this is not DICOM (use --format nifti)")
    if not str(path).lower().endswith(".dcm"):
        raise MedsegError(f"{path}: a {fmt} result is one DICOM file; name it .dcm")
    check_extra(fmt)


def check_extra(fmt: str) -> None:
    """The optional packages a format needs are installed (a one-line error naming ``medseg[dicom]``)."""
    if fmt == "dicom-seg":
        need_extra("highdicom", "--format dicom-seg")
    elif fmt == "rtstruct":
        need_extra("skimage.measure", "--format rtstruct")


def save_result(
    labels: np.ndarray, scan: Scan, path: str | os.PathLike, fmt: str, label_names: dict[str, int], *,
    model_name: str = "medseg", version: str = "0",
) -> Path:
    """Write ``labels`` (on ``scan``'s grid) as ``fmt`` at ``path``, atomically; the DICOM formats get one
    segment / ROI per label of ``label_names`` (background and ignore left out)."""
    fmt = check_format(fmt)
    if fmt == "nifti":
        return save_mask(labels, scan, path)
    from .dicom_grid import read_grid

    if scan.series_uid is None:
        raise MedsegError(f"{scan.source}: --format {fmt} needs a scan read from a DICOM series")
    grid = read_grid(scan.source, scan.series_uid)
    if grid.shape != scan.shape or not np.allclose(grid.affine(), scan.affine, atol=1e-3):
        raise MedsegError(f"{scan.source}: the series on disk is not the grid that was segmented (changed since?)")
    try:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise MedsegError(f"{path}: cannot create the output folder ({exc.strerror or exc})") from None
    structures, _ = split_ignore(label_names)
    names = {int(v): str(n) for n, v in structures.items() if int(v) != 0}
    if fmt == "dicom-seg":
        from .dicom_seg import write_seg

        return write_seg(labels, names, grid, path, algorithm=model_name, version=version)
    from .rtstruct import write_rtstruct

    return write_rtstruct(labels, names, grid, path, label=model_name, software=version,
                          description=f"{model_name} structures")


__all__ = ["FORMATS", "SUFFIXES", "check_extra", "check_format", "check_result_path", "is_dicom_source", "save_result"]
