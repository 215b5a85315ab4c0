"""The slice grid of a DICOM image series, as DICOM results (SEG, RTSTRUCT) need it.

A :class:`SliceGrid` is an image series' slices ordered along the slice normal, each with its own
ImagePositionPatient and SOPInstanceUID, and the headers that a derived object copies (patient,
study, frame of reference). Label maps on the grid are indexed like a
:class:`~medseg.scan.Scan` read from the series: ``labels[column, row, slice]``, slices in
normal order. Unlike :func:`medseg.dicom.load_dicom_folder`, the grid allows irregular slice gaps:
SEG frames and RTSTRUCT contours are placed on each slice's own position, never on an index
computed from an averaged spacing.

>>> import numpy as np
>>> g = SliceGrid(Path("s"), [Path("a"), Path("b")], np.array([[0.0, 0, 0], [0, 0, 2.5]]),
...               np.array([1.0, 0, 0, 0, 1, 0]), np.array([0.5, 0.5]), 4, 4, [], "1.2")
>>> g.shape, g.along.tolist(), g.regular
((4, 4, 2), [0.0, 2.5], True)
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from .dicom import _choose_series, _scan_folder, evenly_spaced, sort_and_check_slices
from .dicom_files import quiet_pydicom
from .errors import MedsegError
from .scan import reason

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


@dataclass
class SliceGrid:
    """An image series' slices in normal order (see the module docstring)."""

    folder: Path
    files: list[Path]
    positions: np.ndarray  # (n, 3) ImagePositionPatient, LPS mm, in normal order
    orientation: np.ndarray  # ImageOrientationPatient (row direction, column direction)
    pixel_spacing: np.ndarray  # PixelSpacing (between rows, between columns) mm
    rows: int
    columns: int
    headers: list  # pydicom datasets without pixel data, in normal order
    series_uid: str

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.columns, self.rows, len(self.files))

    @cached_property
    def normal(self) -> np.ndarray:
        n = np.cross(self.orientation[:3], self.orientation[3:])
        return n / np.linalg.norm(n)

    @cached_property
    def along(self) -> np.ndarray:
        """Each slice's position along the normal (mm)."""
        return self.positions @ self.normal

    @cached_property
    def regular(self) -> bool:
        """Evenly spaced, by the same rule as :func:`medseg.dicom.load_dicom_folder`."""
        return evenly_spaced(np.diff(self.along))

    def gap(self, k: int) -> float:
        """The smaller distance from slice ``k`` to a neighbour (mm); 1 for a single slice."""
        along = self.along
        near = [abs(along[j] - along[k]) for j in (k - 1, k + 1) if 0 <= j < len(along)]
        return float(min(near)) if near else 1.0

    def slice_affine(self, k: int) -> np.ndarray:
        """RAS affine of slice ``k`` alone: voxel ``(column, row, 0)`` -> its centre; axis 2 is the
        normal scaled by :meth:`gap`, so a contour's distance from the slice reads in slices."""
        lps = np.eye(4)
        lps[:3, 0] = self.orientation[:3] * self.pixel_spacing[1]
        lps[:3, 1] = self.orientation[3:] * self.pixel_spacing[0]
        lps[:3, 2] = self.normal * self.gap(k)
        lps[:3, 3] = self.positions[k]
        ras = lps.copy()
        ras[:3] = LPS_TO_RAS @ lps[:3]
        return ras

    def affine(self) -> np.ndarray:
        """RAS affine of the whole (regular) grid, as :func:`medseg.io.load_scan` gives it."""
        if not self.regular:
            raise MedsegError(f"{self.folder}: series {self.series_uid} has irregular slice spacing (no single affine)")
        aff = self.slice_affine(0)
        if len(self.files) > 1:
            aff[:3, 2] = LPS_TO_RAS @ (self.positions[-1] - self.positions[0]) / (len(self.files) - 1)
        return aff

    def uids(self) -> list[str]:
        return [str(h.SOPInstanceUID) for h in self.headers]

    def slice_at(self, position_lps, tolerance: float = 0.25) -> int | None:
        """The slice whose plane holds ``position_lps`` (within ``tolerance`` of its gap), else None."""
        d = float(np.asarray(position_lps, dtype=float) @ self.normal)
        along = self.along
        k = int(np.argmin(np.abs(along - d)))
        return k if abs(along[k] - d) <= tolerance * self.gap(k) else None

    def check_shape(self, labels: np.ndarray, what: str) -> None:
        if tuple(labels.shape) != self.shape:
            raise MedsegError(
                f"{what}: label map of shape {tuple(labels.shape)} does not fit series {self.series_uid} "
                f"({self.shape[0]} columns x {self.shape[1]} rows x {self.shape[2]} slices)"
            )


def read_grid(folder: str | os.PathLike, series_uid: str | None = None) -> SliceGrid:
    """The slice grid of the folder's one image series (or series ``series_uid``); irregular gaps allowed."""

    folder = Path(folder)
    series, others, flat = _scan_folder(folder)
    return grid_of_series(folder, _choose_series(folder, series, others, series_uid, flat))


def grid_of_series(folder: Path, chosen) -> SliceGrid:
    """The slice grid of a :class:`~medseg.dicom.DicomSeries` found under ``folder``."""
    from pydicom import dcmread

    files, _ = sort_and_check_slices(folder, chosen, regular=False)
    by_path = {sl.path: sl for sl in chosen.slices}
    headers = []
    with quiet_pydicom():
        for f in files:
            try:
                headers.append(dcmread(f, stop_before_pixels=True))
            except Exception as exc:
                raise MedsegError(f"{f}: not a readable DICOM file ({reason(exc)})") from None
    _complete_headers(headers, chosen.uid)
    first = by_path[files[0]]
    return SliceGrid(
        folder=folder,
        files=files,
        positions=np.array([by_path[f].position for f in files], dtype=float),
        orientation=np.asarray(first.orientation, dtype=float),
        pixel_spacing=np.asarray(first.spacing, dtype=float),
        rows=first.rows,
        columns=first.columns,
        headers=headers,
        series_uid=chosen.uid,
    )


MAX_GAP_RATIO = 4.0  # regularize refuses series whose largest gap is more than this many smallest gaps


def decode_slices(grid: SliceGrid) -> np.ndarray:
    """The grid's voxels (``[column, row, slice]``, HU or stored MR values), whatever its slice gaps."""
    from .scan import sitk_array, sitk_module

    sitk = sitk_module()
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames([str(f) for f in grid.files])
    try:
        image = reader.Execute()
    except RuntimeError as exc:
        raise MedsegError(f"{grid.folder}: cannot decode the pixel data of series {grid.series_uid} ({reason(exc)})") from None
    if image.GetDimension() == 2:
        image = sitk.JoinSeries(image)
    array = sitk_array(image, grid.folder)
    if array.shape != grid.shape:
        raise MedsegError(f"{grid.folder}: series {grid.series_uid} decoded as {array.shape}, headers give {grid.shape}")
    return array


def regularize(grid: SliceGrid, image: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
    """An irregularly spaced series on a regular grid: (image, labels, RAS affine, what was done).

    The new slices run along the normal from the first slice to the last, one smallest gap apart;
    each new slice's image is interpolated linearly between the two original slices around it,
    its labels are those of the nearest original slice. Refused (one line) when the largest gap is
    more than :data:`MAX_GAP_RATIO` smallest gaps: two stacks, or a localizer, not one volume."""
    along = grid.along
    gaps = np.diff(along)
    small, large = float(gaps.min()), float(gaps.max())
    if large > MAX_GAP_RATIO * small:
        raise MedsegError(f"{grid.folder}: series {grid.series_uid} gaps from {small:.3f} to {large:.3f} mm "
                          f"(over {MAX_GAP_RATIO:g}x): too irregular to resample into one volume")
    n = int(round((along[-1] - along[0]) / small)) + 1
    step = (along[-1] - along[0]) / (n - 1)
    targets = along[0] + step * np.arange(n)
    below = np.clip(np.searchsorted(along, targets, side="right") - 1, 0, len(along) - 2)
    t = np.clip((targets - along[below]) / gaps[below], 0.0, 1.0)
    lo, hi = image[:, :, below].astype(np.float32), image[:, :, below + 1].astype(np.float32)
    mixed = lo * (1 - t) + hi * t
    if np.issubdtype(image.dtype, np.integer):
        info = np.iinfo(image.dtype)
        mixed = np.clip(np.round(mixed), info.min, info.max)
    nearest = np.where(t <= 0.5, below, below + 1)
    affine = grid.slice_affine(0)
    affine[:3, 2] = LPS_TO_RAS @ (grid.normal * step)
    what = (f"resampled from {len(along)} irregularly spaced slices (gaps {small:.3f} to {large:.3f} mm) "
            f"onto {n} slices {step:.3f} mm apart")
    return mixed.astype(image.dtype), np.ascontiguousarray(labels[:, :, nearest]), affine, what


def _complete_headers(headers: list, series_uid: str) -> None:
    """Fill, in these in-memory copies, the identifiers a derived object must reference but that
    anonymisers blank: SOP class and instance UIDs (from the file meta), and the study and series
    UIDs (one made-up UID, the same for every slice)."""
    from pydicom.uid import generate_uid

    study = None
    for h in headers:
        meta = getattr(h, "file_meta", None) or {}
        for keyword, fallback in (("SOPClassUID", "MediaStorageSOPClassUID"), ("SOPInstanceUID", "MediaStorageSOPInstanceUID")):
            if not str(h.get(keyword, "") or "").strip() and str(meta.get(fallback, "") or "").strip():
                setattr(h, keyword, meta[fallback].value)
        if not str(h.get("StudyInstanceUID", "") or "").strip():
            study = study or generate_uid(entropy_srcs=["medseg-study", series_uid])
            h.StudyInstanceUID = study
        if not str(h.get("SeriesInstanceUID", "") or "").strip():
            h.SeriesInstanceUID = generate_uid(entropy_srcs=["medseg-series", series_uid])
        if not str(h.get("SOPInstanceUID", "") or "").strip():
            raise MedsegError(f"{h.filename}: no SOPInstanceUID (nor MediaStorageSOPInstanceUID): a DICOM SEG or "
                              "RTSTRUCT cannot reference this slice")


__all__ = ["MAX_GAP_RATIO", "SliceGrid", "decode_slices", "regularize", "grid_of_series", "read_grid"]
