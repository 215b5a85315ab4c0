"""DICOM series folders: files grouped into series, one series chosen, slices ordered and checked.

:func:`find_dicom_series` groups the DICOM files under a folder by SeriesInstanceUID (files are
read by :mod:`medseg.dicom_files`); :func:`load_dicom_folder` picks one image series and
:func:`sort_and_check_slices` orders its slices along the slice normal (by ImagePositionPatient;
file names and InstanceNumber play no part) and refuses mixed planes, duplicate positions and
irregular spacing. SimpleITK then decodes the ordered files and rescales them to HU.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .dicom_files import (
    DicomFile,
    Unusable,
    field_numbers,
    field_text,
    int_field,
    quiet_pydicom,
    read_dicom_file,
    sop_name,
)
from .errors import MedsegError
from .geometry import check_affine, sitk_to_ras_affine
from .scan import Scan, reason, sitk_array, sitk_module

# DICOM objects that are never a scan, even when they carry a pixel grid.
NON_SCAN_MODALITIES = {
    "RTPLAN", "RTSTRUCT", "RTDOSE", "RTRECORD", "RTIMAGE", "SR", "SEG", "REG", "PR", "KO", "DOC",
}
# Files in a DICOM folder that are never read as DICOM (reports, notes, viewer pages, archives).
# Any other non-hidden file must be readable DICOM, or loading the folder fails naming it.
COMPANION_SUFFIXES = frozenset(
    {".txt", ".md", ".json", ".xml", ".csv", ".pdf", ".html", ".htm", ".jpg", ".jpeg", ".png", ".ini", ".log", ".zip"}
)
_ORIENTATION_TOL = 1e-3  # scanners write direction cosines with about 6 decimals


@dataclass
class _Slice:
    path: Path
    position: np.ndarray  # ImagePositionPatient (LPS)
    orientation: np.ndarray  # ImageOrientationPatient (6 values)
    rows: int
    columns: int
    spacing: np.ndarray  # PixelSpacing (row spacing, column spacing) in mm


@dataclass
class DicomSeries:
    """One DICOM image series found in a folder (headers only).

    ``problems`` lists the files that belong to the series but cannot be slices of its volume
    (missing or invalid geometry, multi-frame, ...) with the reason; loading the series fails
    naming the first of them.
    """

    uid: str
    modality: str
    description: str
    slices: list[_Slice]
    problems: list[tuple[Path, str]] = field(default_factory=list)
    # others-style descriptions of members that carry no slice geometry at all
    _flat: list[str] = field(default_factory=list, repr=False)

    def summary(self) -> str:
        desc = self.description or "no description"
        bad = f", {len(self.problems)} unusable file(s)" if self.problems else ""
        return f"{self.uid} ({self.modality}, '{desc}', {len(self.slices)} slices{bad})"

    def problem_error(self) -> MedsegError:
        """The one-line error naming the first unusable file (and how many more there are)."""
        path, what = self.problems[0]
        more = len(self.problems) - 1
        tail = f" ({more} more unusable file(s) in series {self.uid})" if more else ""
        return MedsegError(f"{path}: {what}{tail}")


def looks_like_dicom(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def _folder_files(folder: Path):
    """Files of ``folder`` (recursively, sorted) that must be DICOM: not hidden, not DICOMDIR,
    not a companion file (:data:`COMPANION_SUFFIXES`), regular files only."""
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            path = Path(root) / name
            if name.startswith(".") or name.upper() == "DICOMDIR" or path.suffix.lower() in COMPANION_SUFFIXES:
                continue
            if path.is_file():
                yield path


def _check_orientation(iop: np.ndarray, text: list[str]) -> None:
    """Row and column direction cosines must be unit vectors at right angles."""
    with np.errstate(all="ignore"):
        for name, vec in (("row", iop[:3]), ("column", iop[3:])):
            norm = float(np.sqrt(vec @ vec))
            if not abs(norm - 1.0) <= _ORIENTATION_TOL:
                raise Unusable(f"ImageOrientationPatient {name} vector is not a unit vector (length {norm:.4g}) {text}")
        cosine = float(iop[:3] @ iop[3:])
    if not abs(cosine) <= _ORIENTATION_TOL:
        raise Unusable(f"ImageOrientationPatient row and column vectors are not orthogonal (cosine {cosine:.4g}) {text}")


def _slice_of(f: DicomFile) -> _Slice:
    """The slice geometry of an image file, or Unusable saying which field is missing or wrong."""
    ds = f.ds
    if int_field(ds, "NumberOfFrames", 1) > 1:
        raise Unusable("multi-frame (enhanced) DICOM images are not supported yet")
    position = field_numbers(ds, "ImagePositionPatient", 3)
    orientation = field_numbers(ds, "ImageOrientationPatient", 6)
    _check_orientation(orientation, field_text(ds, "ImageOrientationPatient"))
    spacing = field_numbers(ds, "PixelSpacing", 2)
    if not np.all(spacing > 0):
        raise Unusable(f"PixelSpacing must be positive, got {field_text(ds, 'PixelSpacing')}")
    rows, columns = int_field(ds, "Rows"), int_field(ds, "Columns")
    if rows < 1 or columns < 1:
        raise Unusable(f"image size Rows x Columns = {rows} x {columns}")
    if not f.has_pixels:
        raise Unusable("has no pixel data")
    return _Slice(f.path, position, orientation, rows, columns, spacing)


def _lacks_geometry(ds) -> bool:
    return "ImagePositionPatient" not in ds or "ImageOrientationPatient" not in ds


def _scan_folder(folder: Path) -> tuple[dict[str, DicomSeries], list[str], dict[str, DicomSeries]]:
    """Image series by UID, descriptions of non-image objects, and image sets without any slice
    geometry (secondary captures, radiographs) by UID. Raises on the first unreadable file."""
    series: dict[str, DicomSeries] = {}
    others: list[str] = []
    for path in _folder_files(folder):
        with quiet_pydicom():
            f = read_dicom_file(path)
            try:
                _file_into_series(f, series, others)
            except Exception as exc:  # a header value pydicom cannot convert
                raise MedsegError(f"{path}: not a readable DICOM file ({reason(exc)})") from None
    flat: dict[str, DicomSeries] = {}
    for uid, s in list(series.items()):
        if not s.slices and len(s._flat) == len(s.problems):  # no member has slice geometry at all
            flat[uid] = series.pop(uid)
            others.extend(s._flat)
    return series, others, flat


def _file_into_series(f: DicomFile, series: dict[str, DicomSeries], others: list[str]) -> None:
    """Add a file to its series (as a slice, or as an unusable member), or to the non-image objects."""
    ds = f.ds
    modality = " ".join(str(ds.get("Modality", "") or "").split()).upper()
    kind = f"{modality or '?'} ({sop_name(ds)})"
    if modality in NON_SCAN_MODALITIES or not (f.has_pixels or "Rows" in ds):
        others.append(kind)
        return
    uid = _series_key(ds)
    description = " ".join(str(ds.get("SeriesDescription", "") or "").split())
    entry = series.setdefault(uid, DicomSeries(uid, modality, description, []))
    try:
        entry.slices.append(_slice_of(f))
    except Unusable as exc:
        entry.problems.append((f.path, str(exc)))
        if _lacks_geometry(ds):
            entry._flat.append(kind)


def find_dicom_series(folder: str | os.PathLike) -> tuple[dict[str, DicomSeries], list[str]]:
    """Group the DICOM files under ``folder`` (recursively) by SeriesInstanceUID.

    Returns the image series by UID and a list describing the non-image DICOM objects found
    (RT plans, structure sets, reports, images without slice geometry, ...). Files of a series
    that cannot be slices are listed in its ``problems``. Raises a one-line MedsegError naming
    the first file that is not readable DICOM (companion files such as ``.txt`` are skipped).
    """
    series, others, _ = _scan_folder(Path(folder))
    return series, others


def _series_key(ds) -> str:
    """SeriesInstanceUID, or a stand-in built from other tags where anonymisation removed it."""
    uid = " ".join(str(ds.get("SeriesInstanceUID", "") or "").split())
    if uid:
        return uid
    parts = [str(ds.get(k, "") or "").strip() for k in ("FrameOfReferenceUID", "SeriesNumber", "Modality")]
    return "no-uid:" + ":".join(parts)


def _choose_series(
    folder: Path,
    series: dict[str, DicomSeries],
    others: list[str],
    uid: str | None,
    flat: dict[str, DicomSeries] | None = None,
) -> DicomSeries:
    flat = flat or {}
    if uid is not None and uid in flat:
        raise flat[uid].problem_error()
    if not series:
        if others:
            kinds = ", ".join(sorted(set(others)))
            hint = ""
            if flat:
                path, what = next(iter(flat.values())).problems[0]
                hint = f"; images without slice geometry, e.g. {path.name}: {what}"
            raise MedsegError(
                f"{folder}: no DICOM image series found, only {len(others)} non-image object(s): {kinds}{hint}"
            )
        raise MedsegError(f"{folder}: no DICOM files found")
    listing = "; ".join(s.summary() for s in series.values())
    if uid is not None:
        if uid not in series:
            raise MedsegError(f"{folder}: series {uid} not found; available: {listing}")
        return series[uid]
    if len(series) > 1:
        raise MedsegError(f"{folder}: holds {len(series)} DICOM series, choose one with --series UID: {listing}")
    return next(iter(series.values()))


def sort_and_check_slices(folder: Path, s: DicomSeries, *, regular: bool = True) -> tuple[list[Path], float | None]:
    """Order a series' slices along the slice normal and check the grid is regular.

    Returns the ordered files and the slice spacing (None for a single slice). Raises on
    unusable member files, mixed orientations, matrix sizes or pixel spacings, duplicate
    positions and irregular spacing (``regular=False`` allows irregular gaps along the normal,
    for objects placed slice by slice such as RTSTRUCT and SEG; the spacing is then the median).
    """
    if s.problems:
        raise s.problem_error()
    if not s.slices:
        raise MedsegError(f"{folder}: series {s.uid} holds no image slices")
    first = s.slices[0]
    for sl in s.slices[1:]:
        _check_same_plane(folder, s, first, sl)
    row, col = first.orientation[:3], first.orientation[3:]
    normal = np.cross(row, col)
    if np.linalg.norm(normal) < 1e-3:
        raise MedsegError(f"{first.path}: invalid ImageOrientationPatient {first.orientation.tolist()}")
    normal /= np.linalg.norm(normal)
    with np.errstate(all="ignore"):  # absurd (finite) positions overflow; the checks below refuse them
        ordered = sorted(s.slices, key=lambda sl: float(sl.position @ normal))
        pos = np.array([sl.position @ normal for sl in ordered])
        if len(ordered) < 2:
            return [sl.path for sl in ordered], None
        gaps = np.diff(pos)
        _check_gaps(folder, s, ordered, pos, gaps, regular)
        spacing = float(np.median(gaps))
        # In-plane offsets must not drift (a sheared stack is not a regular grid either).
        if regular:
            step, steps = (ordered[-1].position - ordered[0].position) / (len(ordered) - 1), np.arange(len(ordered))
        else:  # each slice on the normal through the first one, wherever along it
            step, steps = normal, pos - pos[0]
        expected = ordered[0].position + np.outer(steps, step)
        off = np.abs(np.array([sl.position for sl in ordered]) - expected).max(axis=1)
    tol = max(0.01, 0.01 * spacing)
    worst = int(np.argmax(off))
    if not off[worst] <= tol:
        raise MedsegError(
            f"{folder}: series {s.uid} slice positions do not lie on a straight line "
            f"(off by {off[worst]:.3f} mm at {ordered[worst].path.name})"
        )
    return [sl.path for sl in ordered], spacing


def _check_same_plane(folder: Path, s: DicomSeries, first: _Slice, sl: _Slice) -> None:
    """Every slice must share the first one's orientation, matrix size and pixel spacing."""
    if not np.allclose(sl.orientation, first.orientation, atol=1e-4):
        raise MedsegError(
            f"{folder}: series {s.uid} mixes slice orientations ({sl.path.name} differs from {first.path.name}; "
            "a localizer in the series?)"
        )
    if (sl.rows, sl.columns) != (first.rows, first.columns):
        raise MedsegError(
            f"{folder}: series {s.uid} mixes image sizes ({sl.rows}x{sl.columns} in {sl.path.name}, "
            f"{first.rows}x{first.columns} in {first.path.name})"
        )
    if not np.allclose(sl.spacing, first.spacing, rtol=1e-4, atol=1e-6):
        raise MedsegError(
            f"{folder}: series {s.uid} mixes pixel spacings ({sl.spacing.tolist()} mm in {sl.path.name}, "
            f"{first.spacing.tolist()} mm in {first.path.name})"
        )


def _check_gaps(
    folder: Path, s: DicomSeries, ordered: list[_Slice], pos: np.ndarray, gaps: np.ndarray, regular: bool = True
) -> None:
    """Refuse duplicate slice positions and irregular (or absurd) slice spacing."""
    dup = np.flatnonzero(gaps < 1e-3)
    if dup.size:
        a, b = ordered[dup[0]], ordered[dup[0] + 1]
        raise MedsegError(
            f"{folder}: series {s.uid} has {dup.size} duplicate slice position(s) "
            f"({a.path.name} and {b.path.name} at {pos[dup[0]]:.2f} mm; several phases or echoes in one series?)"
        )
    spacing = float(np.median(gaps))
    if not np.isfinite(spacing) or (regular and not evenly_spaced(gaps)):
        lo, hi = int(np.argmin(gaps)), int(np.argmax(gaps))
        raise MedsegError(
            f"{folder}: irregular slice spacing in series {s.uid}: gaps from {gaps[lo]:.3f} mm "
            f"({ordered[lo].path.name} to {ordered[lo + 1].path.name}) to {gaps[hi]:.3f} mm "
            f"({ordered[hi].path.name} to {ordered[hi + 1].path.name}) "
            f"between slice positions {', '.join(f'{p:.2f}' for p in pos[:8])}{' ...' if len(pos) > 8 else ''}; "
            "refusing to build a distorted volume"
        )


def evenly_spaced(gaps: np.ndarray) -> bool:
    """Slice gaps all within 1 % (at least 0.01 mm) of their median: one regular grid."""
    if len(gaps) == 0:
        return True
    spacing = float(np.median(gaps))
    return bool(np.all(np.abs(gaps - spacing) <= max(0.01, 0.01 * spacing)))


def load_dicom_folder(folder: Path, uid: str | None) -> Scan:
    """The folder's one image series (or series ``uid``) as a :class:`~medseg.io.Scan`."""
    series, others, flat = _scan_folder(folder)
    chosen = _choose_series(folder, series, others, uid, flat)
    return _read_series(folder, chosen)


def load_dicom_file(path: Path) -> Scan:
    """The series of one DICOM file, read from the file's folder (every slice, checked)."""
    with quiet_pydicom():
        ds = read_dicom_file(path).ds
        uid = _series_key(ds)
    series, others, flat = _scan_folder(path.parent)
    if uid in flat:
        raise flat[uid].problem_error()
    if uid not in series:
        with quiet_pydicom():
            kind = f"{ds.get('Modality', '?')}, {sop_name(ds)}"
        raise MedsegError(f"{path}: not an image series ({kind})")
    return _read_series(path.parent, series[uid])


def _read_series(folder: Path, s: DicomSeries) -> Scan:
    sitk = sitk_module()
    files, spacing = sort_and_check_slices(folder, s)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames([str(f) for f in files])
    try:
        image = reader.Execute()
    except RuntimeError as exc:
        raise _decode_error(folder, s, files, exc) from None
    if image.GetDimension() == 2:  # a single-slice series
        image = sitk.JoinSeries(image)
    _check_decoded(folder, s, image, len(files), spacing)
    return Scan(
        array=sitk_array(image, folder),
        affine=check_affine(sitk_to_ras_affine(image), folder),
        source=folder,
        modality=s.modality or None,
        series_uid=s.uid,
        description=s.description,
    )


def _decode_error(folder: Path, s: DicomSeries, files: list[Path], exc: RuntimeError) -> MedsegError:
    """Name the first file that fails to decode on its own; the series otherwise."""
    sitk = sitk_module()
    for f in files:
        try:
            sitk.ReadImage(str(f), imageIO="GDCMImageIO")
        except RuntimeError as one:
            return MedsegError(f"{f}: cannot decode the pixel data ({reason(one)})")
    return MedsegError(f"{folder}: cannot decode the pixel data of series {s.uid} ({reason(exc)})")


def _check_decoded(folder: Path, s: DicomSeries, image, n: int, spacing: float | None) -> None:
    """The decoded volume must have the size and voxel spacing the headers promise."""
    first = s.slices[0]
    size = tuple(int(v) for v in image.GetSize())
    if size != (first.columns, first.rows, n):
        raise MedsegError(
            f"{folder}: series {s.uid} decoded as {size[0]}x{size[1]}x{size[2]} voxels, "
            f"headers give {first.columns}x{first.rows}x{n}"
        )
    inplane = np.asarray(image.GetSpacing()[:2], dtype=np.float64)
    stated = first.spacing[::-1]  # PixelSpacing is (row spacing, column spacing) = (y, x)
    if not np.allclose(inplane, stated, rtol=1e-3, atol=1e-4):
        raise MedsegError(
            f"{folder}: in-plane pixel spacing decoded as {inplane.tolist()} mm but PixelSpacing gives "
            f"{stated.tolist()} mm ({first.path.name})"
        )
    if spacing is not None and abs(image.GetSpacing()[2] - spacing) > max(0.01, 0.01 * spacing):
        raise MedsegError(
            f"{folder}: slice spacing read as {image.GetSpacing()[2]:.3f} mm but positions give {spacing:.3f} mm"
        )


__all__ = [
    "COMPANION_SUFFIXES",
    "DicomSeries",
    "NON_SCAN_MODALITIES",
    "evenly_spaced",
    "find_dicom_series",
    "load_dicom_file",
    "load_dicom_folder",
    "looks_like_dicom",
    "sort_and_check_slices",
]
