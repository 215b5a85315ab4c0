"""Scans in, masks out, geometry kept.

:func:`load_scan` reads a NIfTI file (:mod:`medseg.nifti`), an NRRD/MHA/MHD file (SimpleITK,
here) or a folder holding a DICOM series (:mod:`medseg.dicom`: grouped with pydicom, checked for
mixed series and irregular slice spacing, decoded and rescaled to HU by SimpleITK). Every scan
comes back as a :class:`Scan`: a voxel array indexed ``[i, j, k]`` in the order the file stores
it, and the 4x4 affine that maps ``(i, j, k, 1)`` to RAS world millimetres (the nibabel
convention; :class:`Scan` itself is defined in :mod:`medseg.scan`, orientation and grid helpers
are in :mod:`medseg.geometry`).

:func:`save_mask` writes a label map on exactly that grid as NIfTI, atomically.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import nibabel as nib
import numpy as np

from .dicom import load_dicom_file, load_dicom_folder, looks_like_dicom
from .errors import MedsegError
from .labels import label_dtype
from .nifti import load_nifti
from .scan import Scan, load_sitk_file

NIFTI_SUFFIXES = (".nii", ".nii.gz")
SITK_SUFFIXES = (".nrrd", ".nhdr", ".mha", ".mhd")


# ----------------------------------------------------------------------------------------------
# reading


def load_scan(path: str | os.PathLike, *, series_uid: str | None = None, modality: str | None = None) -> Scan:
    """Load a scan from a NIfTI/NRRD/MHA file or a DICOM series folder.

    ``series_uid`` picks one series when a folder holds several; ``modality`` ("CT"/"MR") is a
    hint used where the file does not say (NIfTI, NRRD) and overrides nothing DICOM states.
    Raises :class:`MedsegError` with a one-line message for anything unreadable.
    """
    p = Path(path)
    if not p.exists():
        raise MedsegError(f"{p}: no such file or directory")
    if p.is_dir():
        scan = load_dicom_folder(p, series_uid)
    else:
        name = p.name.lower()
        if series_uid is not None and name.endswith(NIFTI_SUFFIXES + SITK_SUFFIXES):
            raise MedsegError(f"{p}: --series {series_uid} picks a DICOM series, but this is a single image file")
        if name.endswith(NIFTI_SUFFIXES):
            scan = load_nifti(p)
        elif name.endswith(SITK_SUFFIXES):
            scan = load_sitk_file(p)
        elif looks_like_dicom(p):
            scan = load_dicom_file(p)
        else:
            raise MedsegError(
                f"{p}: not a supported scan (expected .nii/.nii.gz, .nrrd/.mha/.mhd, or a DICOM series folder)"
            )
    if scan.modality is None and modality:
        scan.modality = modality.upper()
    return scan


# ----------------------------------------------------------------------------------------------
# writing


def check_mask_name(path: str | os.PathLike) -> None:
    """Refuse output names that are not NIfTI (masks and images are written as NIfTI)."""
    path = Path(path)
    if not path.name.lower().endswith(NIFTI_SUFFIXES):
        raise MedsegError(f"{path}: images and masks are written as NIfTI; use a .nii.gz or .nii file name")


def check_output_path(path: str | os.PathLike, scan: Scan) -> None:
    """Refuse output paths that are not NIfTI, or that would write over or into the input."""
    path = Path(path)
    check_mask_name(path)
    src = scan.source.resolve()
    out = path.resolve()
    if out == src or (src.is_dir() and src in out.parents):
        raise MedsegError(f"{path}: refusing to write into the input scan ({scan.source})")
    if out.is_dir():
        raise MedsegError(f"{path}: is a directory")


def mask_image(labels: np.ndarray, scan: Scan) -> nib.Nifti1Image:
    """A NIfTI label image on exactly the scan's grid (its qform/sform copied for NIfTI sources)."""
    if tuple(labels.shape) != scan.shape:
        raise MedsegError(f"{scan.source}: label map shape {tuple(labels.shape)} does not match the scan {scan.shape}")
    return _nifti_on_grid(np.asarray(labels).astype(label_dtype(labels), copy=False), scan, b"medseg label map")


def _nifti_on_grid(array: np.ndarray, scan: Scan, descrip: bytes) -> nib.Nifti1Image:
    img = nib.Nifti1Image(array, None)
    hdr = img.header
    src = scan.header
    if src is not None:
        qform, qcode = src.get_qform(coded=True)
        sform, scode = src.get_sform(coded=True)
        hdr.set_qform(qform if qform is not None else scan.affine, code=int(qcode))
        hdr.set_sform(sform if sform is not None else scan.affine, code=int(scode))
    else:
        hdr.set_qform(scan.affine, code=1)
        hdr.set_sform(scan.affine, code=1)
    hdr.set_xyzt_units("mm")
    hdr.set_data_dtype(array.dtype)
    hdr["descrip"] = descrip
    return img


def save_image(scan: Scan, path: str | os.PathLike) -> Path:
    """Write the scan's voxels (as read: HU for CT) as NIfTI with its geometry, atomically.

    For DICOM series this is the NIfTI copy a training set needs; never writes over the input.
    """
    path = Path(path)
    check_output_path(path, scan)
    return _save_nifti(_nifti_on_grid(np.asarray(scan.array), scan, b"medseg image"), path)


def save_mask(labels: np.ndarray, scan: Scan, path: str | os.PathLike) -> Path:
    """Write ``labels`` as NIfTI on the scan's grid, atomically (temporary file, then rename).

    Never writes over (or into) the input. Creates missing parent folders.
    """
    path = Path(path)
    check_output_path(path, scan)
    return _save_nifti(mask_image(labels, scan), path)


def _save_nifti(img: nib.Nifti1Image, path: Path) -> Path:
    suffix = ".nii.gz" if path.name.lower().endswith(".nii.gz") else ".nii"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise MedsegError(f"{path}: cannot create the output folder ({exc.strerror or exc})") from None
    return atomic_write(path, lambda tmp: nib.save(img, str(tmp)), suffix=suffix)


def atomic_write(path: str | os.PathLike, write, suffix: str = "") -> Path:
    """Write ``path`` through ``write(tmp)`` on a temporary file beside it, fsync, then rename.

    Readers see the old file or the new one, never half of one; a failure leaves no temporary
    file behind and raises a one-line error naming ``path``.
    """
    path = Path(path)
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex[:8]}.partial{suffix}"
    try:
        write(tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except OSError as exc:
        raise MedsegError(f"{path}: cannot write ({exc.strerror or exc})") from None
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """:func:`atomic_write` of a text file (UTF-8)."""
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


__all__ = [
    "Scan",
    "save_image",
    "atomic_write",
    "atomic_write_text",
    "load_scan",
    "save_mask",
    "check_mask_name",
    "check_output_path",
    "mask_image",
]
