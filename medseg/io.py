"""Scans in, masks out, geometry kept.

:func:`load_scan` reads a NIfTI file, an NRRD/MHA/MHD file (SimpleITK) or a folder holding a
DICOM series (grouped with pydicom, checked for mixed series and irregular slice spacing,
decoded and rescaled to HU by SimpleITK). Every scan comes back as a :class:`Scan`: a voxel
array indexed ``[i, j, k]`` in the order the file stores it, and the 4x4 affine that maps
``(i, j, k, 1)`` to RAS world millimetres (the nibabel convention).

:func:`save_mask` writes a label map on exactly that grid as NIfTI, atomically.
"""

from __future__ import annotations

import os
import uuid
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np

from .errors import MedsegError

NIFTI_SUFFIXES = (".nii", ".nii.gz")
SITK_SUFFIXES = (".nrrd", ".nhdr", ".mha", ".mhd")
# LPS (DICOM/ITK) <-> RAS (NIfTI/nibabel) world coordinates: flip x and y.
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])
# DICOM objects that are never a scan, even when they carry a pixel grid.
NON_SCAN_MODALITIES = {"RTPLAN", "RTSTRUCT", "RTDOSE", "RTRECORD", "SR", "SEG", "REG", "PR", "KO", "DOC"}


@dataclass
class Scan:
    """A 3D scan and its geometry.

    ``array[i, j, k]`` is the voxel whose centre lies at ``affine @ (i, j, k, 1)`` in RAS mm.
    ``header`` is the source NIfTI header when there is one, so masks keep its qform/sform codes.
    """

    array: np.ndarray
    affine: np.ndarray
    source: Path
    modality: str | None = None
    series_uid: str | None = None
    description: str = ""
    header: nib.Nifti1Header | None = field(default=None, repr=False)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(n) for n in self.array.shape)  # type: ignore[return-value]

    @property
    def spacing(self) -> np.ndarray:
        """Voxel size in mm along array axes 0, 1, 2."""
        return np.sqrt((self.affine[:3, :3] ** 2).sum(axis=0))

    @property
    def origin(self) -> np.ndarray:
        """RAS position (mm) of the centre of voxel (0, 0, 0)."""
        return self.affine[:3, 3].copy()

    @property
    def direction(self) -> np.ndarray:
        """3x3 RAS direction cosines; column n is the world direction of array axis n."""
        return self.affine[:3, :3] / self.spacing

    @property
    def voxel_volume_ml(self) -> float:
        return float(abs(np.linalg.det(self.affine[:3, :3]))) / 1000.0

    @property
    def axcodes(self) -> tuple[str, str, str]:
        return nib.aff2axcodes(self.affine)


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
        scan = _load_dicom_folder(p, series_uid)
    else:
        name = p.name.lower()
        if name.endswith(NIFTI_SUFFIXES):
            scan = _load_nifti(p)
        elif name.endswith(SITK_SUFFIXES):
            scan = _load_sitk_file(p)
        elif looks_like_dicom(p):
            scan = _load_dicom_file(p)
        else:
            raise MedsegError(
                f"{p}: not a supported scan (expected .nii/.nii.gz, .nrrd/.mha/.mhd, or a DICOM series folder)"
            )
    if scan.modality is None and modality:
        scan.modality = modality.upper()
    return scan


def _native(arr: np.ndarray, path: Path) -> np.ndarray:
    if arr.dtype.kind == "b":
        return arr.astype(np.uint8)
    if arr.dtype.kind not in "iuf":
        raise MedsegError(f"{path}: unsupported voxel type {arr.dtype} (expected integer or real values)")
    if not arr.dtype.isnative:
        arr = arr.astype(arr.dtype.newbyteorder("="))
    return arr


def _squeeze_to_3d(shape: tuple[int, ...], path: Path) -> tuple[int, ...]:
    """Index that drops trailing singleton dimensions, or an error if the image is not 3D."""
    if len(shape) > 3 and all(n == 1 for n in shape[3:]):
        return (slice(None),) * 3 + (0,) * (len(shape) - 3)
    if len(shape) != 3:
        raise MedsegError(f"{path}: expected a 3D volume, got a {len(shape)}D image of shape {tuple(shape)}")
    return (slice(None),) * 3


def _check_affine(affine: np.ndarray, path: Path) -> np.ndarray:
    affine = np.asarray(affine, dtype=np.float64)
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise MedsegError(f"{path}: invalid geometry (singular or non-finite affine)")
    return affine


def _load_nifti(path: Path) -> Scan:
    try:
        img = nib.load(str(path))
    except Exception as exc:  # nibabel raises many types for bad headers
        raise MedsegError(f"{path}: not a readable NIfTI file ({_reason(exc)})") from None
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise MedsegError(f"{path}: not a NIfTI image")
    index = _squeeze_to_3d(img.shape, path)
    try:
        arr = _nifti_voxels(img.dataobj, index, path)
    except MedsegError:
        raise
    except Exception as exc:  # truncated gzip (EOFError), zlib.error, short file (ValueError), ...
        raise MedsegError(f"{path}: image data is truncated or corrupt ({_reason(exc)})") from None
    return Scan(
        array=arr,
        affine=_check_affine(img.affine, path),
        source=path,
        header=img.header,
    )


def _nifti_voxels(proxy, index: tuple, path: Path) -> np.ndarray:
    """Voxel values with scl_slope/scl_inter applied, in the narrowest sensible type.

    nibabel would return float64 for any scaled image (8 bytes a voxel); an integer image
    with slope 1 and an integer intercept (CT stored as uint16 + -1024) stays integer, other
    scaled images become float32.
    """
    if not hasattr(proxy, "get_unscaled"):  # already an array
        return _native(np.asarray(proxy)[index], path)
    raw = _native(np.asarray(proxy.get_unscaled())[index], path)
    slope, inter = float(proxy.slope), float(proxy.inter)
    if not np.isfinite(slope) or slope == 0:
        slope = 1.0
    if not np.isfinite(inter):
        inter = 0.0
    if slope == 1.0 and inter == 0.0:
        return raw
    if slope == 1.0 and inter.is_integer() and raw.dtype.kind in "iu" and raw.size:
        lo, hi = int(raw.min()) + int(inter), int(raw.max()) + int(inter)
        for dtype in (np.int16, np.int32, np.int64):
            if np.iinfo(dtype).min <= lo and hi <= np.iinfo(dtype).max:
                out = raw.astype(dtype)
                out += dtype(inter)
                return out
    out = raw.astype(np.float32)
    out *= np.float32(slope)
    out += np.float32(inter)
    return out


def sitk_to_ras_affine(image) -> np.ndarray:
    """RAS affine for array ``GetArrayFromImage(image).T`` (axes i, j, k) of a 3D SimpleITK image."""
    direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    spacing = np.asarray(image.GetSpacing(), dtype=np.float64)
    origin = np.asarray(image.GetOrigin(), dtype=np.float64)
    affine = np.eye(4)
    affine[:3, :3] = LPS_TO_RAS @ direction @ np.diag(spacing)
    affine[:3, 3] = LPS_TO_RAS @ origin
    return affine


def _sitk_array(image, path: Path) -> np.ndarray:
    import SimpleITK as sitk

    if image.GetNumberOfComponentsPerPixel() != 1:
        raise MedsegError(
            f"{path}: {image.GetNumberOfComponentsPerPixel()} components per voxel (colour or vector image); "
            "expected a scalar volume"
        )
    if image.GetDimension() != 3:
        raise MedsegError(f"{path}: expected a 3D volume, got a {image.GetDimension()}D image of size {image.GetSize()}")
    # SimpleITK arrays are (k, j, i); transpose to (i, j, k) without copying.
    return _native(sitk.GetArrayFromImage(image).transpose(2, 1, 0), path)


def _load_sitk_file(path: Path) -> Scan:
    import SimpleITK as sitk

    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise MedsegError(f"{path}: cannot read image ({_reason(exc)})") from None
    if image.GetDimension() == 4 and image.GetSize()[3] == 1:
        image = image[:, :, :, 0]
    return Scan(array=_sitk_array(image, path), affine=_check_affine(sitk_to_ras_affine(image), path), source=path)


# ---------------------------------------------------------------------------------------------- DICOM


@dataclass
class _Slice:
    path: Path
    position: np.ndarray  # ImagePositionPatient (LPS)
    orientation: np.ndarray  # ImageOrientationPatient (6 values)
    rows: int
    columns: int


@dataclass
class DicomSeries:
    """One DICOM image series found in a folder (headers only)."""

    uid: str
    modality: str
    description: str
    slices: list[_Slice]

    def summary(self) -> str:
        desc = self.description or "no description"
        return f"{self.uid} ({self.modality}, '{desc}', {len(self.slices)} slices)"


def looks_like_dicom(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def _read_header(path: Path):
    """pydicom dataset without pixel data, or None when the file is not DICOM."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return pydicom.dcmread(str(path), stop_before_pixels=True)
        except InvalidDicomError:
            pass
        except Exception:
            return None
        # Files without the 128-byte preamble are still DICOM if they parse with the basic tags.
        try:
            ds = pydicom.dcmread(str(path), stop_before_pixels=True, force=True)
        except Exception:
            return None
    return ds if "SOPClassUID" in ds and "SeriesInstanceUID" in ds else None


def find_dicom_series(folder: str | os.PathLike) -> tuple[dict[str, DicomSeries], list[str]]:
    """Group the DICOM files under ``folder`` (recursively) by SeriesInstanceUID.

    Returns the image series by UID and a list describing the non-image DICOM objects found
    (RT plans, structure sets, reports, ...).
    """
    folder = Path(folder)
    series: dict[str, DicomSeries] = {}
    others: list[str] = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if name.startswith(".") or name.upper() == "DICOMDIR":
                continue
            path = Path(root) / name
            ds = _read_header(path)
            if ds is None:
                continue
            modality = str(ds.get("Modality", "")).upper()
            is_image = all(k in ds for k in ("Rows", "Columns", "ImagePositionPatient", "ImageOrientationPatient"))
            if not is_image or modality in NON_SCAN_MODALITIES:
                sop = getattr(ds.get("SOPClassUID", None), "name", "") or "unknown SOP class"
                others.append(f"{modality or '?'} ({sop})")
                continue
            if int(ds.get("NumberOfFrames", 1) or 1) > 1:
                raise MedsegError(f"{path}: multi-frame (enhanced) DICOM images are not supported yet")
            uid = _series_key(ds)
            entry = series.setdefault(
                uid, DicomSeries(uid, modality, str(ds.get("SeriesDescription", "")).strip(), [])
            )
            try:
                entry.slices.append(
                    _Slice(
                        path=path,
                        position=np.asarray([float(v) for v in ds.ImagePositionPatient], dtype=np.float64),
                        orientation=np.asarray([float(v) for v in ds.ImageOrientationPatient], dtype=np.float64),
                        rows=int(ds.Rows),
                        columns=int(ds.Columns),
                    )
                )
            except (TypeError, ValueError) as exc:
                raise MedsegError(f"{path}: malformed image position/orientation ({_reason(exc)})") from None
    return series, others


def _series_key(ds) -> str:
    """SeriesInstanceUID, or a stand-in built from other tags where anonymisation removed it."""
    uid = str(ds.get("SeriesInstanceUID", "") or "").strip()
    if uid:
        return uid
    parts = [str(ds.get(k, "") or "").strip() for k in ("FrameOfReferenceUID", "SeriesNumber", "Modality")]
    return "no-uid:" + ":".join(parts)


def _choose_series(folder: Path, series: dict[str, DicomSeries], others: list[str], uid: str | None) -> DicomSeries:
    if not series:
        if others:
            kinds = ", ".join(sorted(set(others)))
            raise MedsegError(f"{folder}: no DICOM image series found, only {len(others)} non-image object(s): {kinds}")
        raise MedsegError(f"{folder}: no DICOM files found")
    listing = "; ".join(s.summary() for s in series.values())
    if uid is not None:
        if uid not in series:
            raise MedsegError(f"{folder}: series {uid} not found; available: {listing}")
        return series[uid]
    if len(series) > 1:
        raise MedsegError(f"{folder}: holds {len(series)} DICOM series, choose one with --series UID: {listing}")
    return next(iter(series.values()))


def sort_and_check_slices(folder: Path, s: DicomSeries) -> tuple[list[Path], float | None]:
    """Order a series' slices along the slice normal and check the grid is regular.

    Returns the ordered files and the slice spacing (None for a single slice). Raises on mixed
    orientations or matrix sizes, duplicate positions and irregular spacing.
    """
    first = s.slices[0]
    for sl in s.slices[1:]:
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
    row, col = first.orientation[:3], first.orientation[3:]
    normal = np.cross(row, col)
    if np.linalg.norm(normal) < 1e-3:
        raise MedsegError(f"{first.path}: invalid ImageOrientationPatient {first.orientation.tolist()}")
    normal /= np.linalg.norm(normal)
    ordered = sorted(s.slices, key=lambda sl: float(sl.position @ normal))
    pos = np.array([sl.position @ normal for sl in ordered])
    if len(ordered) < 2:
        return [sl.path for sl in ordered], None
    gaps = np.diff(pos)
    dup = np.flatnonzero(gaps < 1e-3)
    if dup.size:
        a, b = ordered[dup[0]], ordered[dup[0] + 1]
        raise MedsegError(
            f"{folder}: series {s.uid} has {dup.size} duplicate slice position(s) "
            f"({a.path.name} and {b.path.name} at {pos[dup[0]]:.2f} mm; several phases or echoes in one series?)"
        )
    spacing = float(np.median(gaps))
    tol = max(0.01, 0.01 * spacing)
    if np.any(np.abs(gaps - spacing) > tol):
        raise MedsegError(
            f"{folder}: irregular slice spacing in series {s.uid}: gaps from {gaps.min():.3f} to {gaps.max():.3f} mm "
            f"between slice positions {', '.join(f'{p:.2f}' for p in pos[:8])}{' ...' if len(pos) > 8 else ''}; "
            "refusing to build a distorted volume"
        )
    # In-plane offsets must not drift (a sheared stack is not a regular grid either).
    step = (ordered[-1].position - ordered[0].position) / (len(ordered) - 1)
    expected = ordered[0].position + np.outer(np.arange(len(ordered)), step)
    drift = np.abs(np.array([sl.position for sl in ordered]) - expected).max()
    if drift > tol:
        raise MedsegError(f"{folder}: series {s.uid} slice positions do not lie on a straight line (off by {drift:.3f} mm)")
    return [sl.path for sl in ordered], spacing


def _load_dicom_folder(folder: Path, uid: str | None) -> Scan:
    series, others = find_dicom_series(folder)
    chosen = _choose_series(folder, series, others, uid)
    return _read_series(folder, chosen)


def _load_dicom_file(path: Path) -> Scan:
    ds = _read_header(path)
    if ds is None:
        raise MedsegError(f"{path}: not a readable DICOM file")
    uid = _series_key(ds)
    series, others = find_dicom_series(path.parent)
    if uid not in series:
        modality = str(ds.get("Modality", "?"))
        sop = getattr(ds.get("SOPClassUID", None), "name", "") or "unknown SOP class"
        raise MedsegError(f"{path}: not an image series ({modality}, {sop})")
    return _read_series(path.parent, series[uid])


def _read_series(folder: Path, s: DicomSeries) -> Scan:
    import SimpleITK as sitk

    files, spacing = sort_and_check_slices(folder, s)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames([str(f) for f in files])
    try:
        image = reader.Execute()
    except RuntimeError as exc:
        raise MedsegError(f"{folder}: cannot decode the pixel data of series {s.uid} ({_reason(exc)})") from None
    if image.GetDimension() == 2:  # a single-slice series
        image = sitk.JoinSeries(image)
    if spacing is not None and abs(image.GetSpacing()[2] - spacing) > max(0.01, 0.01 * spacing):
        raise MedsegError(
            f"{folder}: slice spacing read as {image.GetSpacing()[2]:.3f} mm but positions give {spacing:.3f} mm"
        )
    return Scan(
        array=_sitk_array(image, folder),
        affine=_check_affine(sitk_to_ras_affine(image), folder),
        source=folder,
        modality=s.modality or None,
        series_uid=s.uid,
        description=s.description,
    )


# ---------------------------------------------------------------------------------------------- grids


def canonical_grid(affine: np.ndarray, shape: tuple[int, ...], axcodes: str = "RAS") -> tuple[tuple[int, ...], np.ndarray]:
    """Shape and affine of the same voxel grid viewed in ``axcodes`` axis order (no resampling)."""
    ornt = nib.orientations.io_orientation(affine)
    to_canon = nib.orientations.ornt_transform(ornt, nib.orientations.axcodes2ornt(tuple(axcodes)))
    new_shape = tuple(int(shape[int(i)]) for i in np.argsort(to_canon[:, 0]))
    return new_shape, affine @ nib.orientations.inv_ornt_aff(to_canon, shape)


def grid_mismatch(a: Scan, b: Scan, tol: float | None = None) -> str | None:
    """Why ``b``'s voxel centres differ from ``a``'s, or None when both grids hold the same centres.

    Axis order and flips may differ (an image stored LPS with its mask stored LAS is fine); a
    shifted, cropped, resampled or rotated grid is not. ``tol`` (mm) defaults to 1 % of the
    smallest voxel size.
    """
    sa, aa = canonical_grid(a.affine, a.shape)
    sb, ab = canonical_grid(b.affine, b.shape)
    if sa != sb:
        return f"grid size {b.shape} does not match {a.shape} (in RAS order {sb} vs {sa})"
    if tol is None:
        tol = 0.01 * float(min(a.spacing.min(), b.spacing.min())) + 1e-4
    corners = np.array([[i, j, k, 1] for i in (0, sa[0] - 1) for j in (0, sa[1] - 1) for k in (0, sa[2] - 1)], float)
    gap = float(np.abs(corners @ aa.T - corners @ ab.T)[:, :3].max())
    if gap <= tol:
        return None
    spa, spb = np.sqrt((aa[:3, :3] ** 2).sum(0)), np.sqrt((ab[:3, :3] ** 2).sum(0))
    if not np.allclose(spa, spb, atol=tol):
        return f"voxel size {np.round(spb, 4).tolist()} mm does not match {np.round(spa, 4).tolist()} mm"
    shift = ab[:3, 3] - aa[:3, 3]
    if np.allclose(aa[:3, :3], ab[:3, :3], atol=1e-4):
        return f"grid is shifted by {np.round(shift, 3).tolist()} mm"
    return f"grid orientation differs (voxel centres up to {gap:.3f} mm apart)"


# ----------------------------------------------------------------------------------------------
# writing


def label_dtype(labels: np.ndarray) -> np.dtype:
    """uint8 when every label fits, uint16 above 255 labels."""
    top = int(labels.max()) if labels.size else 0
    if labels.size and int(labels.min()) < 0:
        raise MedsegError("label map has negative values")
    if top <= 255:
        return np.dtype(np.uint8)
    if top <= 65535:
        return np.dtype(np.uint16)
    raise MedsegError(f"label map has values up to {top}; at most 65535 labels are supported")


def as_label_map(array: np.ndarray, source) -> np.ndarray:
    """A label map's voxels as non-negative integers (floats holding whole numbers are converted);
    a one-line error naming ``source`` otherwise."""
    arr = np.asarray(array)
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)) or not np.all(np.mod(arr, 1) == 0):
            raise MedsegError(f"{source}: label values are not whole numbers (not a label map?)")
        arr = arr.astype(np.int64)
    if arr.size and int(arr.min()) < 0:
        raise MedsegError(f"{source}: negative label values (not a label map?)")
    return arr


def check_output_path(path: str | os.PathLike, scan: Scan) -> None:
    """Refuse output paths that are not NIfTI, or that would write over or into the input."""
    path = Path(path)
    if not path.name.lower().endswith(NIFTI_SUFFIXES):
        raise MedsegError(f"{path}: images and masks are written as NIfTI; use a .nii.gz or .nii file name")
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


def _reason(exc: BaseException) -> str:
    """First meaningful line of an exception message (SimpleITK's are several lines long)."""
    text = str(exc).strip() or type(exc).__name__
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for ln in lines:
        if "description:" in ln.lower():
            return ln.split(":", 1)[1].strip()
    return lines[0][:200] if lines else type(exc).__name__


__all__ = [
    "Scan",
    "as_label_map",
    "save_image",
    "atomic_write",
    "atomic_write_text",
    "DicomSeries",
    "load_scan",
    "save_mask",
    "check_output_path",
    "canonical_grid",
    "grid_mismatch",
    "mask_image",
    "find_dicom_series",
    "sort_and_check_slices",
    "sitk_to_ras_affine",
    "label_dtype",
]
