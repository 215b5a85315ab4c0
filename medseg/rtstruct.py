"""DICOM RT Structure Sets in and out, on a series' own slice grid (pydicom and :mod:`medseg.contours`).

:func:`read_rtstruct` rasterises each ROI's CLOSED_PLANAR contours onto a
:class:`~medseg.dicom_grid.SliceGrid`: every contour goes to the slice whose position it lies on
along the slice normal (irregular series included), contours of one ROI on one slice combine by
the even-odd rule (holes), boundary voxel centres are inside. POINT, open and empty ROIs are
skipped with a note; a contour on no slice, or tilted out of the slice planes, is an error naming
the ROI and the position; a structure set on another frame of reference is refused.

:func:`write_rtstruct` writes one ROI per label, contours traced on each slice's own position
(holes as inner contours), referencing the source series and copying its patient and study.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np

from .contours import contours_of, rasterise
from .dicom_files import quiet_pydicom
from .dicom_grid import SliceGrid
from .errors import MedsegError
from .io import atomic_write
from .scan import reason

RTSTRUCT_STORAGE = "1.2.840.10008.5.1.4.1.1.481.3"
TYPE_2 = {"PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyID", "StudyDate", "StudyTime",
          "AccessionNumber", "ReferringPhysicianName"}
CONTOUR_DATA = 0x30060050
STUDY_COMPONENT = "1.2.840.10008.3.1.2.3.1"  # Detached Study Management, referenced by RT studies
PALETTE = [(220, 20, 60), (46, 139, 87), (65, 105, 225), (255, 165, 0), (148, 0, 211), (0, 206, 209),
           (255, 215, 0), (139, 69, 19), (255, 105, 180), (112, 128, 144)]
PATIENT_STUDY = ("SpecificCharacterSet", "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID", "StudyID",
                 "StudyDate", "StudyTime", "AccessionNumber", "ReferringPhysicianName", "StudyDescription",
                 "FrameOfReferenceUID")


@dataclass
class Structures:
    """ROIs read from a label object: name -> mask on the grid, and notes on what was skipped."""

    masks: dict[str, np.ndarray]
    notes: list[str] = field(default_factory=list)


def read_rtstruct(path: str | os.PathLike, grid: SliceGrid) -> Structures:
    """Every usable ROI of the RTSTRUCT at ``path`` as a boolean mask on ``grid`` (``[column, row, slice]``)."""
    from pydicom import dcmread

    path = Path(path)
    with quiet_pydicom():
        try:
            ds = dcmread(path)
        except Exception as exc:
            raise MedsegError(f"{path}: not a readable DICOM file ({reason(exc)})") from None
    if str(ds.get("Modality", "")).upper() != "RTSTRUCT":
        raise MedsegError(f"{path}: not an RT Structure Set (Modality {ds.get('Modality', 'missing')})")
    names = {int(r.ROINumber): str(r.get("ROIName", "") or f"ROI {r.ROINumber}").strip()
             for r in ds.get("StructureSetROISequence", [])}
    _check_frame(path, ds, grid)
    elsewhere = _other_frames(ds, grid)
    out = Structures({})
    seen: set[int] = set()
    for roi in ds.get("ROIContourSequence", []):
        number = int(roi.get("ReferencedROINumber", -1))
        name = names.get(number, f"ROI {number}")
        seen.add(number)
        if number in elsewhere:
            out.notes.append(f"{name}: skipped, drawn on another frame of reference ({elsewhere[number]})")
            continue
        mask = _roi_mask(path, name, roi, grid, out.notes)
        if mask is not None:
            if name in out.masks:
                out.masks[name] |= mask
            else:
                out.masks[name] = mask
    for number, name in names.items():
        if number not in seen:
            out.notes.append(f"{name}: skipped, no contours")
    return out


def _check_frame(path: Path, ds, grid: SliceGrid) -> None:
    """The structure set must be drawn on the series' frame of reference."""
    own = str(grid.headers[0].get("FrameOfReferenceUID", "") or "")
    theirs = {str(r.get("FrameOfReferenceUID", "")) for r in ds.get("ReferencedFrameOfReferenceSequence", [])}
    theirs.discard("")
    if own and theirs and own not in theirs:
        raise MedsegError(
            f"{path}: ReferencedFrameOfReferenceUID {sorted(theirs)[0]} is not the frame of reference of "
            f"series {grid.series_uid} ({own}): its contours are not in this scan's space"
        )


def _other_frames(ds, grid: SliceGrid) -> dict[int, str]:
    """ROI number -> its frame of reference, for the ROIs drawn on another frame than the series'."""
    own = str(grid.headers[0].get("FrameOfReferenceUID", "") or "")
    out = {}
    for r in ds.get("StructureSetROISequence", []):
        frame = str(r.get("ReferencedFrameOfReferenceUID", "") or "")
        if own and frame and frame != own:
            out[int(r.ROINumber)] = frame
    return out


def _roi_mask(path: Path, name: str, roi, grid: SliceGrid, notes: list[str]) -> np.ndarray | None:
    """One ROI's mask, or None (with a note) when it has no closed planar contour."""
    per_slice: dict[int, list[np.ndarray]] = {}
    kinds: set[str] = set()
    for contour in roi.get("ContourSequence", []):
        kind = str(contour.get("ContourGeometricType", "CLOSED_PLANAR")).upper()
        data = _numbers(contour)
        if kind != "CLOSED_PLANAR" or data.size < 9:
            kinds.add(kind if kind != "CLOSED_PLANAR" else "degenerate")
            continue
        points = data.reshape(-1, 3)
        per_slice.setdefault(_contour_slice(path, name, points, grid), []).append(points)
    if not per_slice:
        what = f"only {', '.join(sorted(kinds))} contours" if kinds else "no contours"
        notes.append(f"{name}: skipped, {what}")
        return None
    mask = np.zeros(grid.shape, dtype=bool)
    for k, contours in per_slice.items():
        plane = rasterise(contours, grid.slice_affine(k), (grid.columns, grid.rows, 1), axis=2, name=f"{path}: {name}")
        mask[:, :, k] = plane[:, :, 0]
    return mask


def _numbers(contour) -> np.ndarray:
    """ContourData as floats, parsed from the raw bytes when pydicom has not converted them yet
    (converting hundreds of thousands of DS values one by one takes seconds)."""
    from pydicom.dataelem import RawDataElement

    if "ContourData" not in contour:
        return np.zeros(0)
    raw = contour.get_item("ContourData")
    if isinstance(raw, RawDataElement) and raw.value is not None:
        text = raw.value.decode("ascii", "replace").strip(" \x00")
        try:
            return np.array(text.split("\\"), dtype=float) if text else np.zeros(0)
        except ValueError:
            pass  # let pydicom say what is wrong with it
    return np.asarray(contour.ContourData, dtype=float)


def _contour_slice(path: Path, name: str, points: np.ndarray, grid: SliceGrid) -> int:
    """The slice a contour lies on, by position along the normal; an error naming the ROI otherwise."""
    along = points @ grid.normal
    where = np.round(points.mean(axis=0), 2).tolist()
    k = grid.slice_at(points.mean(axis=0))
    spread = float(np.ptp(along))
    if k is None:
        pos = grid.along
        raise MedsegError(
            f"{path}: ROI '{name}' has a contour at {where} mm (LPS) on no slice of series {grid.series_uid} "
            f"(it lies at {along.mean():.2f} mm along the slice normal; slices from {pos.min():.2f} to {pos.max():.2f} mm)"
        )
    if spread > 0.5 * grid.gap(k):
        raise MedsegError(
            f"{path}: ROI '{name}' has a contour at {where} mm (LPS) that is not in one slice plane "
            f"(it spans {spread:.2f} mm along the normal: a gantry-tilted or oblique series?)"
        )
    return k


def write_rtstruct(
    labels: np.ndarray,
    names: dict[int, str],
    grid: SliceGrid,
    path: str | os.PathLike,
    *,
    label: str = "medseg",
    software: str = "medseg",
    description: str = "",
) -> Path:
    """Write one ROI per label value of ``names`` (value -> name) as an RTSTRUCT at ``path``, atomically."""
    grid.check_shape(labels, str(path))
    ds = _structure_set(grid, label, software, description)
    for n, (value, name) in enumerate(sorted(names.items()), start=1):
        _add_roi(ds, grid, np.asarray(labels) == value, n, name)
    return atomic_write(path, lambda tmp: ds.save_as(tmp, enforce_file_format=True), suffix=".dcm")


def _structure_set(grid: SliceGrid, label: str, software: str, description: str):
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian, generate_uid

    src = grid.headers[0]
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    for keyword in PATIENT_STUDY:
        if keyword in src:
            setattr(ds, keyword, src.data_element(keyword).value)
        elif keyword in TYPE_2:
            setattr(ds, keyword, "")  # type 2: present, even when empty
    ds.PositionReferenceIndicator = src.get("PositionReferenceIndicator", "")
    now = datetime.now()
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = RTSTRUCT_STORAGE
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SeriesInstanceUID, ds.SeriesNumber, ds.InstanceNumber = generate_uid(), 9001, 1
    ds.Modality, ds.Manufacturer, ds.SoftwareVersions = "RTSTRUCT", "medseg", software
    ds.SeriesDescription = description or f"{label} structures"
    ds.StructureSetLabel = label[:16]
    ds.StructureSetDate = ds.SeriesDate = ds.ContentDate = now.strftime("%Y%m%d")
    ds.StructureSetTime = ds.SeriesTime = ds.ContentTime = now.strftime("%H%M%S")
    ds.OperatorsName = ""
    ds.ReferencedFrameOfReferenceSequence = [_frame_reference(grid)]
    ds.StructureSetROISequence, ds.ROIContourSequence, ds.RTROIObservationsSequence = [], [], []
    return ds


def _image_ref(header):
    from pydicom.dataset import Dataset

    ref = Dataset()
    ref.ReferencedSOPClassUID = header.SOPClassUID
    ref.ReferencedSOPInstanceUID = header.SOPInstanceUID
    return ref


def _frame_reference(grid: SliceGrid):
    from pydicom.dataset import Dataset

    src = grid.headers[0]
    series = Dataset()
    series.SeriesInstanceUID = src.SeriesInstanceUID
    series.ContourImageSequence = [_image_ref(h) for h in grid.headers]
    study = Dataset()
    study.ReferencedSOPClassUID = STUDY_COMPONENT
    study.ReferencedSOPInstanceUID = src.StudyInstanceUID
    study.RTReferencedSeriesSequence = [series]
    frame = Dataset()
    frame.FrameOfReferenceUID = src.get("FrameOfReferenceUID", "")
    frame.RTReferencedStudySequence = [study]
    return frame


def _ds_element(points: np.ndarray):
    """ContourData as a raw element (bytes as they are written): pydicom's per-value DS objects are slow."""
    from pydicom.dataelem import RawDataElement

    text = "\\".join(f"{v:.4f}".rstrip("0").rstrip(".") or "0" for v in points.ravel())
    data = (text + " " * (len(text) % 2)).encode("ascii")
    return RawDataElement(CONTOUR_DATA, "DS", len(data), data, 0, False, True)


def _add_roi(ds, grid: SliceGrid, mask: np.ndarray, number: int, name: str) -> None:
    from pydicom.dataset import Dataset

    roi = Dataset()
    roi.ROINumber, roi.ROIName, roi.ROIGenerationAlgorithm = number, name, "AUTOMATIC"
    roi.ReferencedFrameOfReferenceUID = grid.headers[0].get("FrameOfReferenceUID", "")
    ds.StructureSetROISequence.append(roi)
    contours = Dataset()
    contours.ReferencedROINumber = number
    contours.ROIDisplayColor = list(PALETTE[(number - 1) % len(PALETTE)])
    contours.ContourSequence = []
    for k in np.flatnonzero(mask.any(axis=(0, 1))):
        for _, points in contours_of(mask[:, :, k : k + 1], grid.slice_affine(int(k)), axis=2):
            c = Dataset()
            c.ContourImageSequence = [_image_ref(grid.headers[int(k)])]
            c.ContourGeometricType = "CLOSED_PLANAR"
            c.NumberOfContourPoints = len(points)
            c[CONTOUR_DATA] = _ds_element(points)
            contours.ContourSequence.append(c)
    ds.ROIContourSequence.append(contours)
    obs = Dataset()
    obs.ObservationNumber, obs.ReferencedROINumber = number, number
    obs.RTROIInterpretedType, obs.ROIInterpreter = "ORGAN", ""
    ds.RTROIObservationsSequence.append(obs)


__all__ = ["Structures", "read_rtstruct", "write_rtstruct"]
