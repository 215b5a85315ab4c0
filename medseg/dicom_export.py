"""Write a volume as a DICOM series: one CT or MR Image Storage file per slice.

:func:`write_dicom_series` takes a :class:`~medseg.io.Scan` (voxels indexed ``[i, j, k]`` and
the affine mapping ``(i, j, k, 1)`` to RAS mm, the nibabel convention) and writes slice ``k``
as one file whose pixel rows follow ``j`` and columns follow ``i``. The geometry tags
(ImagePositionPatient, ImageOrientationPatient, PixelSpacing, SliceThickness) come from the
affine converted to DICOM's LPS world, so reading the folder back gives the same grid.

CT is stored as HU + 1024 (unsigned, 12 bits stored, RescaleIntercept -1024, values clipped to
-1024..3071 HU); MR as unsigned 16 bits, with a rescale slope and intercept when the values are
not whole numbers in 0..65535.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path

import numpy as np

from .errors import MedsegError
from .scan import Scan

__all__ = ["write_dicom_series"]

# Salt of the UIDs derived from ``uid_key``; unchanged from the phantom writer this came from,
# so a regenerated phantom series keeps its UIDs (and file names).
_UID_SALT = "medseg-phantom"
_CT_MIN, _CT_MAX = -1024, 3071  # 12 bits stored, intercept -1024
_FLIP_XY = np.array([-1.0, -1.0, 1.0])  # RAS <-> LPS


def _ds(value: float) -> str:
    """A decimal string (DICOM DS, at most 16 characters) for ``value``."""
    value = float(value)
    if value == 0.0:
        return "0"
    for digits in range(12, 0, -1):
        text = f"{value:.{digits}g}"
        if len(text) <= 16:
            return text
    raise ValueError(f"cannot write {value!r} as a DICOM decimal string")


def _plane(scan: Scan, folder: Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """LPS affine (3x4), slice normal and ImageOrientationPatient of ``scan``'s slices."""
    lps = scan.affine[:3] * _FLIP_XY[:, None]
    spacing = np.linalg.norm(lps[:, :3], axis=0)
    if not np.all(np.isfinite(lps)) or np.any(spacing <= 0):
        raise MedsegError(f"{folder}: cannot write DICOM: the scan's affine is degenerate")
    row, col = lps[:, 0] / spacing[0], lps[:, 1] / spacing[1]
    if abs(float(row @ col)) > 1e-4:
        raise MedsegError(f"{folder}: cannot write DICOM: the scan's in-plane axes are not perpendicular")
    normal = np.cross(row, col)
    if abs(float(normal @ lps[:, 2])) < 1e-3 * spacing[2]:
        raise MedsegError(f"{folder}: cannot write DICOM: the scan's slice axis lies in the slice plane")
    return lps, normal, [_ds(v) for v in (*row, *col)]


def _pixels(array: np.ndarray, modality: str) -> tuple[np.ndarray, float, float, int]:
    """Stored values (uint16, same shape), rescale slope and intercept, bits stored."""
    arr = np.asarray(array)
    if arr.dtype.kind not in "iub":  # non-finite voxels become air (CT) or 0 (MR)
        background = _CT_MIN if modality == "CT" else 0.0
        arr = np.nan_to_num(arr.astype(np.float64), nan=background, posinf=background, neginf=background)
    if modality == "CT":
        whole = arr.astype(np.int64) if arr.dtype.kind in "iub" else np.rint(arr).clip(_CT_MIN, _CT_MAX)
        stored = np.clip(whole.astype(np.int64) - _CT_MIN, 0, _CT_MAX - _CT_MIN)
        return stored.astype(np.uint16), 1.0, float(_CT_MIN), 12
    lo, hi = (float(arr.min()), float(arr.max())) if arr.size else (0.0, 0.0)
    if np.all(np.mod(arr, 1) == 0) and lo >= 0 and hi <= 65535:
        return arr.astype(np.uint16), 1.0, 0.0, 16
    slope = (hi - lo) / 65535.0 if hi > lo else 1.0
    return np.rint((arr - lo) / slope).astype(np.uint16), slope, lo, 16


def _uid_maker(uid_key: str | None):
    """``uid(*parts)``: a UID derived from ``uid_key`` and ``parts``, or a fresh random one."""
    from pydicom.uid import generate_uid

    if uid_key is None:
        return lambda *parts: generate_uid()
    return lambda *parts: generate_uid(entropy_srcs=[_UID_SALT, *map(str, parts)])


def _series_dataset(scan: Scan, modality: str, *, series_description: str, patient_id: str, when: datetime):
    """The tags every file of the series shares (no per-slice, UID or pixel tags yet)."""
    from pydicom.dataset import Dataset

    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["DERIVED", "SECONDARY", "AXIAL"]
    ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = when.strftime("%Y%m%d")
    ds.StudyTime = ds.SeriesTime = ds.AcquisitionTime = ds.ContentTime = when.strftime("%H%M%S")
    ds.AccessionNumber = ""
    ds.Modality = modality
    ds.Manufacturer = "medseg"
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = scan.description or "medseg export"
    ds.SeriesDescription = series_description
    ds.PatientName = "Anonymous"
    ds.PatientID = patient_id
    ds.PatientBirthDate = ""
    ds.PatientSex = "O"
    ds.SliceThickness = _ds(np.linalg.norm(scan.affine[:3, 2]))
    if modality == "CT":
        ds.KVP = ""
    else:  # the MR Image module's required tags, as "research mode, unknown"
        ds.ScanningSequence, ds.SequenceVariant, ds.ScanOptions, ds.MRAcquisitionType = "RM", "NONE", "", "2D"
        ds.EchoTime = ds.RepetitionTime = ds.EchoTrainLength = ""
    ds.PatientPosition = "HFS"
    ds.StudyID = "1"
    ds.SeriesNumber = 1
    ds.AcquisitionNumber = 1
    ds.PositionReferenceIndicator = ""
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = scan.shape[1], scan.shape[0]
    ds.PixelSpacing = [_ds(v) for v in np.linalg.norm(scan.affine[:3, [1, 0]], axis=0)]
    ds.BitsAllocated = 16
    ds.PixelRepresentation = 0
    return ds


def write_dicom_series(
    scan: Scan,
    folder: str | os.PathLike,
    *,
    series_description: str = "medseg export",
    patient_id: str = "ANONYMOUS",
    series_uid: str | None = None,
    uid_key: str | None = None,
    tags: Mapping[str, object] | None = None,
    when: datetime | None = None,
) -> list[Path]:
    """Write ``scan`` as one DICOM file per slice ``k`` in ``folder``; return the paths in slice order.

    The modality is ``scan.modality`` (CT when unset; CT and MR are written). UIDs are random, or
    derived from ``uid_key`` (with the grid, patient and description) so that writing the same
    thing twice gives the same UIDs; ``series_uid`` fixes the series UID. ``tags`` (keyword ->
    value) are set last on every file, over the defaults (e.g. ``{"Manufacturer": ...}``);
    ``when`` is the study date and time (default: now). Files are named by SOPInstanceUID, so
    their names do not sort in slice order.
    """
    from pydicom.uid import CTImageStorage, MRImageStorage

    folder = Path(folder)
    modality = (scan.modality or "CT").upper()
    if modality not in ("CT", "MR"):
        raise MedsegError(f"{folder}: cannot write a {modality} series as DICOM (CT or MR only)")
    if len(scan.shape) != 3:
        raise MedsegError(f"{folder}: cannot write DICOM: the scan has shape {scan.shape}, expected 3 axes")
    lps, normal, orientation = _plane(scan, folder)
    stored, slope, intercept, bits = _pixels(scan.array, modality)
    sop_class = CTImageStorage if modality == "CT" else MRImageStorage
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise MedsegError(f"{folder}: cannot create the folder ({exc.strerror or exc})") from None

    uid = _uid_maker(uid_key)
    grid = f"{scan.shape}|{scan.affine.tolist()}"
    ds = _series_dataset(scan, modality, series_description=series_description, patient_id=patient_id,
                         when=when or datetime.now())
    ds.SOPClassUID = sop_class
    ds.StudyInstanceUID = uid(uid_key, patient_id, "study")
    ds.FrameOfReferenceUID = uid(uid_key, grid, "frame-of-reference")
    ds.SeriesInstanceUID = series_uid or uid(uid_key, grid, series_description, "series")
    ds.ImageOrientationPatient = orientation
    ds.BitsStored, ds.HighBit = bits, bits - 1
    ds.RescaleIntercept, ds.RescaleSlope = _ds(intercept), _ds(slope)
    if modality == "CT":
        ds.WindowCenter, ds.WindowWidth, ds.RescaleType = "40", "400", "HU"
    for keyword, value in (tags or {}).items():
        setattr(ds, keyword, value)

    return _write_slices(ds, stored, lps, normal, folder, uid)


def _write_slices(ds, stored: np.ndarray, lps: np.ndarray, normal: np.ndarray, folder: Path, uid) -> list[Path]:
    """One file per slice ``k`` of ``stored``: ``ds`` with the slice's UID, position and pixels."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian

    paths: list[Path] = []
    for k in range(stored.shape[2]):
        sop_uid = uid(ds.SeriesInstanceUID, k, "instance")
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = ds.SOPClassUID
        meta.MediaStorageSOPInstanceUID = sop_uid
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
        ds.file_meta = meta
        ds.SOPInstanceUID = sop_uid
        ds.InstanceNumber = k + 1
        position = lps[:, 3] + k * lps[:, 2]
        ds.ImagePositionPatient = [_ds(v) for v in position]
        ds.SliceLocation = _ds(position @ normal)
        ds.PixelData = np.ascontiguousarray(stored[:, :, k].T, dtype="<u2").tobytes()
        path = folder / f"{sop_uid}.dcm"
        try:
            ds.save_as(path, enforce_file_format=True)
        except OSError as exc:
            raise MedsegError(f"{path}: cannot write ({exc.strerror or exc})") from None
        paths.append(path)
    return paths
