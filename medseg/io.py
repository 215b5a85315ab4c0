"""Scans in, masks out, geometry kept.

:func:`load_scan` reads a NIfTI file, an NRRD/MHA/MHD file (SimpleITK) or a folder holding a
DICOM series (grouped with pydicom, checked for mixed series and irregular slice spacing,
decoded and rescaled to HU by SimpleITK). Every scan comes back as a :class:`Scan`: a voxel
array indexed ``[i, j, k]`` in the order the file stores it, and the 4x4 affine that maps
``(i, j, k, 1)`` to RAS world millimetres (the nibabel convention).

:func:`save_mask` writes a label map on exactly that grid as NIfTI, atomically.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import struct
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
NON_SCAN_MODALITIES = {
    "RTPLAN", "RTSTRUCT", "RTDOSE", "RTRECORD", "RTIMAGE", "SR", "SEG", "REG", "PR", "KO", "DOC",
}
# Files in a DICOM folder that are never read as DICOM (reports, notes, viewer pages, archives).
# Any other non-hidden file must be readable DICOM, or loading the folder fails naming it.
COMPANION_SUFFIXES = frozenset(
    {".txt", ".md", ".json", ".xml", ".csv", ".pdf", ".html", ".htm", ".jpg", ".jpeg", ".png", ".ini", ".log", ".zip"}
)
# Largest finite float32: scaled NIfTI voxels are float32 and must not overflow to inf.
_FLOAT32_MAX = float(np.finfo(np.float32).max)


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
        if series_uid is not None and name.endswith(NIFTI_SUFFIXES + SITK_SUFFIXES):
            raise MedsegError(f"{p}: --series {series_uid} picks a DICOM series, but this is a single image file")
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


def _check_affine(affine: np.ndarray, path: Path, source: str | None = None) -> np.ndarray:
    """``affine`` as float64, or a one-line error when it is non-finite or collapses an axis.

    ``source`` names where the affine came from ("sform", "qform", "pixdim", ...) for the message.
    """
    affine = np.asarray(affine, dtype=np.float64)
    where = f" ({source})" if source else ""
    if not np.all(np.isfinite(affine)):
        raise MedsegError(f"{path}: invalid geometry{where}: non-finite affine")
    with np.errstate(all="ignore"):
        norms = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
        det = abs(float(np.linalg.det(affine[:3, :3])))
        collapsed = not (np.all(norms > 0) and np.isfinite(det) and det > 1e-6 * float(np.prod(norms)))
    if collapsed:
        raise MedsegError(f"{path}: invalid geometry{where}: singular affine (a zero voxel size or collapsed axes)")
    return affine


def _load_nifti(path: Path) -> Scan:
    raw = _raw_nifti_header(path)
    try:
        with _quiet_nibabel():
            img = nib.load(str(path))
    except Exception as exc:  # nibabel raises many types for bad headers
        if raw is not None:
            _check_nifti_header(raw, path)  # a precise reason when a header field is at fault
        raise MedsegError(f"{path}: not a readable NIfTI file ({_reason(exc)})") from None
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise MedsegError(f"{path}: not a NIfTI image")
    header = raw if raw is not None else img.header
    _check_nifti_header(header, path)
    index = _squeeze_to_3d(img.shape, path)
    try:
        with _quiet_nibabel():
            arr = _nifti_voxels(img.dataobj, index, path)
    except MedsegError:
        raise
    except Exception as exc:  # truncated gzip (EOFError), zlib.error, short file (ValueError), ...
        raise MedsegError(f"{path}: image data is truncated or corrupt ({_reason(exc)})") from None
    return Scan(
        array=arr,
        affine=_check_affine(img.affine, path, _nifti_affine_source(header)),
        source=path,
        header=_header_for_masks(img.header, header),
    )


@contextlib.contextmanager
def _quiet_nibabel():
    """Silence nibabel's header-fix log lines ("setting 0 dims to 1"), which reach stderr; the fields
    they are about are checked by :func:`_check_nifti_header`. (nibabel's own LoggingOutputSuppressor
    drops its handler for good, after which Python's last-resort handler prints them anyway.)"""
    logger = nib.imageglobals.logger
    was = logger.disabled
    logger.disabled = True
    try:
        yield
    finally:
        logger.disabled = was


def _raw_nifti_header(path: Path):
    """The NIfTI-1/2 header exactly as stored (nibabel's load-time fixes not applied), or None."""
    try:
        with nib.openers.ImageOpener(str(path)) as fh:
            head = fh.read(540)
    except Exception:
        return None
    for klass, size in ((nib.Nifti1Header, 348), (nib.Nifti2Header, 540)):
        for order in "<>":
            if len(head) >= size and struct.unpack(f"{order}i", head[:4])[0] == size:
                try:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        return klass.from_fileobj(io.BytesIO(head[:size]), check=False)
                except Exception:
                    return None
    return None


def _xform_code(header, name: str) -> int:
    """A qform/sform code as nibabel uses it: unknown codes count as 0 (not set)."""
    code = int(header[name])
    return code if code in nib.nifti1.xform_codes.value_set() else 0


def _nifti_affine_source(header) -> str:
    """Which header fields give the image's affine (nibabel's choice: sform, then qform, then pixdim)."""
    if _xform_code(header, "sform_code"):
        return "sform"
    if _xform_code(header, "qform_code"):
        return "qform"
    return "pixdim"


def _check_nifti_header(header, path: Path) -> None:
    """One-line errors for header fields that would give an empty, mis-scaled or mis-placed volume."""
    _check_nifti_dims(header, path)
    _check_nifti_scaling(header, path)
    _check_nifti_transform(header, path)


def _check_nifti_dims(header, path: Path) -> None:
    dim = [int(v) for v in header["dim"]]
    if not 1 <= dim[0] <= 7:
        raise MedsegError(f"{path}: dim[0] = {dim[0]} (the number of dimensions must be 1 to 7)")
    for i in range(1, dim[0] + 1):
        if dim[i] < 1:
            raise MedsegError(f"{path}: dim[{i}] = {dim[i]} (every image axis needs at least one voxel)")
    code = int(header["datatype"])
    if code not in nib.nifti1.data_type_codes.value_set("code"):
        raise MedsegError(f"{path}: datatype {code} is not a NIfTI data type")


def _check_nifti_scaling(header, path: Path) -> None:
    """scl_slope 0 means "no scaling" (NIfTI standard); a NaN/inf slope or intercept is an error."""
    slope, inter = float(header["scl_slope"]), float(header["scl_inter"])
    if not np.isfinite(slope):
        raise MedsegError(f"{path}: scl_slope is {slope} (must be finite; 0 means no scaling)")
    if slope != 0 and not np.isfinite(inter):
        raise MedsegError(f"{path}: scl_inter is {inter} (must be finite)")


def _check_nifti_transform(header, path: Path) -> None:
    """The fields of the transform nibabel uses (sform, else qform, else pixdim) must be usable."""
    source = _nifti_affine_source(header)
    if source == "sform":
        problem = _sform_problem(header)
    elif source == "qform":
        problem = _qform_problem(header)
    else:
        problem = _pixdim_problem(header, "pixdim (no qform or sform)")
    if problem:
        raise MedsegError(f"{path}: {problem}")


def _sform_problem(header) -> str | None:
    srows = np.array([header["srow_x"], header["srow_y"], header["srow_z"]], dtype=np.float64)
    where = f"sform (sform_code {int(header['sform_code'])})"
    if not np.all(np.isfinite(srows)):
        return f"{where} holds non-finite values in srow_x/y/z {np.round(srows, 4).tolist()}"
    try:
        _check_affine(np.vstack([srows, [0, 0, 0, 1]]), Path("sform"))
    except MedsegError:
        return f"{where} srow_x/y/z {np.round(srows, 4).tolist()} is singular (a zero voxel size or collapsed axes)"
    return None


def _qform_problem(header) -> str | None:
    quat = np.array([header[k] for k in ("quatern_b", "quatern_c", "quatern_d")], dtype=np.float64)
    offset = np.array([header[k] for k in ("qoffset_x", "qoffset_y", "qoffset_z")], dtype=np.float64)
    where = f"qform (qform_code {int(header['qform_code'])})"
    if not (np.all(np.isfinite(quat)) and np.all(np.isfinite(offset))):
        return f"{where} holds non-finite values: quatern_b/c/d {quat.tolist()}, qoffset_x/y/z {offset.tolist()}"
    if float(quat @ quat) > 1.0 + 1e-6:
        return f"{where} quatern_b/c/d {quat.tolist()} is not a rotation (length above 1)"
    return _pixdim_problem(header, where)


def _pixdim_problem(header, where: str) -> str | None:
    zooms = np.array(header["pixdim"][1:4], dtype=np.float64)
    if np.all(np.isfinite(zooms)) and np.all(zooms > 0):
        return None
    return f"pixdim[1:4] {zooms.tolist()} used by the {where} must be positive, finite voxel sizes"


def _header_for_masks(loaded, raw):
    """The header masks copy their qform/sform from: an unused, broken qform is dropped (code 0)."""
    if raw is None or _nifti_affine_source(raw) != "sform" or not _xform_code(raw, "qform_code"):
        return loaded
    if _qform_problem(raw) is None:
        return loaded
    fixed = loaded.copy()
    fixed["qform_code"] = 0
    return fixed


def _finite_range(arr: np.ndarray) -> tuple[float, float] | None:
    """Smallest and largest finite value (non-finite values are left to later pipeline checks)."""
    if arr.dtype.kind in "iub":
        return float(arr.min()), float(arr.max())
    finite = np.isfinite(arr)
    if not finite.any():
        return None
    return float(arr.min(where=finite, initial=np.inf)), float(arr.max(where=finite, initial=-np.inf))


def _nifti_voxels(proxy, index: tuple, path: Path) -> np.ndarray:
    """Voxel values with scl_slope/scl_inter applied, in the narrowest sensible type.

    nibabel would return float64 for any scaled image (8 bytes a voxel); an integer image
    with slope 1 and an integer intercept (CT stored as uint16 + -1024) stays integer, other
    scaled images become float32. Scaling that would overflow float32 is an error.
    """
    if not hasattr(proxy, "get_unscaled"):  # already an array
        return _native(np.asarray(proxy)[index], path)
    raw = _native(np.asarray(proxy.get_unscaled())[index], path)
    slope, inter = float(proxy.slope), float(proxy.inter)
    if not np.isfinite(slope):
        raise MedsegError(f"{path}: scl_slope is {slope} (must be finite; 0 means no scaling)")
    if not np.isfinite(inter):
        raise MedsegError(f"{path}: scl_inter is {inter} (must be finite)")
    if slope == 0:
        slope, inter = 1.0, 0.0
    if slope == 1.0 and inter == 0.0:
        return raw
    _check_scaled_range(raw, slope, inter, path)
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


def _check_scaled_range(raw: np.ndarray, slope: float, inter: float, path: Path) -> None:
    """Refuse scl_slope/scl_inter that push stored values beyond float32 (they would become inf)."""
    limit = _FLOAT32_MAX * (1 - 1e-6)
    if abs(inter) > limit:
        raise MedsegError(f"{path}: scl_inter {inter:g} is beyond the float32 range")
    if abs(slope) > limit:
        raise MedsegError(f"{path}: scl_slope {slope:g} is beyond the float32 range")
    span = _finite_range(raw) if raw.size else None
    if span is None:
        return
    top = max(abs(span[0]), abs(span[1])) * abs(slope) + abs(inter)
    if not top <= limit:
        raise MedsegError(
            f"{path}: scl_slope {slope:g} (scl_inter {inter:g}) scales stored values up to {max(map(abs, span)):g} "
            "beyond the float32 range"
        )


def sitk_to_ras_affine(image) -> np.ndarray:
    """RAS affine for array ``GetArrayFromImage(image).T`` (axes i, j, k) of a 3D SimpleITK image."""
    direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    spacing = np.asarray(image.GetSpacing(), dtype=np.float64)
    origin = np.asarray(image.GetOrigin(), dtype=np.float64)
    affine = np.eye(4)
    affine[:3, :3] = LPS_TO_RAS @ direction @ np.diag(spacing)
    affine[:3, 3] = LPS_TO_RAS @ origin
    return affine


def _sitk():
    """SimpleITK, with ITK's warning output (printed straight onto stderr) switched off."""
    import SimpleITK as sitk

    sitk.ProcessObject_SetGlobalWarningDisplay(False)
    return sitk


def _sitk_array(image, path: Path) -> np.ndarray:
    sitk = _sitk()

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
    sitk = _sitk()

    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise MedsegError(f"{path}: cannot read image ({_reason(exc)})") from None
    if image.GetDimension() == 4 and image.GetSize()[3] == 1:
        image = image[:, :, :, 0]
    return Scan(array=_sitk_array(image, path), affine=_check_affine(sitk_to_ras_affine(image), path), source=path)


# ---------------------------------------------------------------------------------------------- DICOM

# Tags where pydicom stops with stop_before_pixels: (Float/DoubleFloat)PixelData.
_PIXEL_TAGS = (0x7FE00010, 0x7FE00008, 0x7FE00009)
# Explicit VRs whose element header carries a 4-byte length (12-byte header).
_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
_UNDEFINED_LENGTH = 0xFFFFFFFF
_ORIENTATION_TOL = 1e-3  # scanners write direction cosines with about 6 decimals


class _Unusable(Exception):
    """Why a DICOM file is unreadable or cannot be a slice of its series (message without the path)."""


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


@dataclass
class _DicomFile:
    """A DICOM file's header (pixel data not read)."""

    path: Path
    ds: object  # pydicom Dataset
    has_pixels: bool


def looks_like_dicom(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def _read_dicom_file(path: Path) -> _DicomFile:
    """Read one file's header and check, cheaply, that the file is whole.

    The pixel data are not decoded: their element header is read where pydicom stopped, and
    their extent is compared with the file size (and, for uncompressed transfer syntaxes, with
    Rows x Columns x SamplesPerPixel x BitsAllocated x NumberOfFrames); compressed fragments are
    walked by their item headers. Raises a one-line MedsegError naming the file otherwise.
    """
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh, _quiet_pydicom():
            if size == 0:
                raise _Unusable("empty file")
            ds = _parse_header(fh)
            has_pixels = _check_pixel_extent(fh, ds, size)
    except OSError as exc:
        raise MedsegError(f"{path}: cannot read ({exc.strerror or exc})") from None
    except _Unusable as exc:
        raise MedsegError(f"{path}: not a readable DICOM file (truncated or not DICOM: {exc})") from None
    except Exception as exc:  # pydicom raises many types on garbage
        raise MedsegError(f"{path}: not a readable DICOM file (truncated or not DICOM: {_reason(exc)})") from None
    return _DicomFile(path, ds, has_pixels)


def _parse_header(fh):
    """pydicom dataset up to the pixel data; files without the 128-byte preamble are accepted
    when they parse with a SOP Class UID."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(fh, stop_before_pixels=True)
    except InvalidDicomError:
        fh.seek(0)
        ds = pydicom.dcmread(fh, stop_before_pixels=True, force=True)
    sop = ds.get("SOPClassUID") or ds.get("file_meta", {}).get("MediaStorageSOPClassUID")
    if not sop:
        fh.seek(128)
        raise _Unusable("no SOPClassUID in the header" if fh.read(4) == b"DICM" else "no DICOM header found")
    return ds


def _sop_name(ds) -> str:
    sop = ds.get("SOPClassUID", None)
    return getattr(sop, "name", "") or "unknown SOP class"


def _is_image_sop(ds) -> bool:
    return "Image Storage" in _sop_name(ds)


def _check_pixel_extent(fh, ds, size: int) -> bool:
    """Whether the file holds pixel data; raises _Unusable when the file is cut short."""
    ts = ds.get("file_meta", {}).get("TransferSyntaxUID", None)
    if ts is not None and getattr(ts, "is_deflated", False):
        return True  # the stream pydicom parsed is not the file: leave the check to the decoder
    start = fh.tell()
    head = fh.read(12)
    tag = _element_tag(head, ds) if len(head) >= 8 else None
    if tag not in _PIXEL_TAGS:
        cut = _cut_element(ds, size)
        if cut:
            raise _Unusable(f"the file ends inside {cut}")
        if head:
            raise _Unusable(f"the file ends inside a data element header at byte {start}")
        if _is_image_sop(ds) or "Rows" in ds:
            raise _Unusable(f"the file ends at byte {size}, before the image's pixel data")
        return False
    offset, length = _element_extent(head, ds, start)
    if length == _UNDEFINED_LENGTH:
        problem = _encapsulated_problem(fh, offset, size)
        if problem:
            raise _Unusable(problem)
        return True
    present = size - offset
    if present < length:
        raise _Unusable(f"pixel data cut short: {max(present, 0)} of {length} bytes present")
    expected = _expected_pixel_bytes(ds)
    if expected is not None and not (ts is not None and ts.is_encapsulated) and length < expected:
        raise _Unusable(f"pixel data too short: {length} bytes where the header's image size needs {expected}")
    return True


def _element_tag(head: bytes, ds) -> int:
    little = ds.original_encoding[1] is not False
    group, elem = struct.unpack("<HH" if little else ">HH", head[:4])
    return (group << 16) | elem


def _element_extent(head: bytes, ds, start: int) -> tuple[int, int]:
    """(file offset of the value, value length) of the data element whose header is ``head``."""
    implicit, little = ds.original_encoding
    order = "<" if little is not False else ">"
    if implicit:
        return start + 8, struct.unpack(f"{order}I", head[4:8])[0]
    if head[4:6] in _LONG_VRS:
        if len(head) < 12:
            raise _Unusable(f"the file ends inside the pixel data element header at byte {start}")
        return start + 12, struct.unpack(f"{order}I", head[8:12])[0]
    return start + 8, struct.unpack(f"{order}H", head[6:8])[0]


def _cut_element(ds, size: int) -> str | None:
    """Keyword of the last data element when its value runs past the end of the file."""
    if not len(ds):
        return None
    last = max(ds.keys())
    elem = ds.get_item(last)
    tell, length = getattr(elem, "value_tell", None), getattr(elem, "length", None)
    if tell is None or length is None or length == _UNDEFINED_LENGTH or tell + length <= size:
        return None
    from pydicom.datadict import keyword_for_tag

    return keyword_for_tag(last) or f"element ({last >> 16:04X},{last & 0xFFFF:04X})"


def _encapsulated_problem(fh, offset: int, size: int) -> str | None:
    """Walk the item headers of encapsulated (compressed) pixel data up to the sequence delimiter."""
    pos = offset
    while True:
        fh.seek(pos)
        head = fh.read(8)
        if len(head) < 8:
            return f"compressed pixel data cut short at byte {pos} (no sequence delimiter)"
        group, elem, length = struct.unpack("<HHI", head)
        if (group, elem) == (0xFFFE, 0xE0DD):
            return None
        if (group, elem) != (0xFFFE, 0xE000) or length == _UNDEFINED_LENGTH:
            return f"compressed pixel data corrupt (unexpected item ({group:04X},{elem:04X}) at byte {pos})"
        pos += 8 + length
        if pos > size:
            return f"compressed pixel data cut short: a fragment runs {pos - size} bytes past the end of the file"


def _expected_pixel_bytes(ds) -> int | None:
    """Bytes of uncompressed pixel data the header describes, or None when it does not say."""
    try:
        n = int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel", 1) or 1)
        n *= int(ds.get("NumberOfFrames", 1) or 1)
        bits = int(ds.BitsAllocated)
    except Exception:
        return None
    return (n * bits + 7) // 8 if n > 0 and bits > 0 else None


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


def _field_text(ds, keyword: str) -> list[str] | None:
    """The values of a (decimal string) field as stored, or None when the field is absent."""
    elem = ds.get_item(keyword)
    if elem is None:
        return None
    value = elem.value
    if isinstance(value, bytes):
        text = value.decode("latin-1")
        parts = text.split("\\") if text.strip(" \x00") else []
    elif value is None or value == "":
        parts = []
    elif isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        parts = [str(v) for v in value]
    else:
        parts = str(value).split("\\")
    return [p.strip(" \x00")[:24] for p in parts]


def _field_numbers(ds, keyword: str, count: int) -> np.ndarray:
    """``count`` finite numbers from a geometry field, or _Unusable naming the field and its values."""
    text = _field_text(ds, keyword)
    if text is None:
        raise _Unusable(f"{keyword} is missing")
    if not text:
        raise _Unusable(f"{keyword} is empty")
    if len(text) != count:
        raise _Unusable(f"{keyword} has {len(text)} value(s) {text[:8]}, expected {count}")
    try:
        values = np.array([float(t) for t in text], dtype=np.float64)
    except ValueError:
        raise _Unusable(f"{keyword} holds a non-numeric value {text}") from None
    if not np.all(np.isfinite(values)):
        raise _Unusable(f"{keyword} holds a non-finite value {text}")
    return values


def _check_orientation(iop: np.ndarray, text: list[str]) -> None:
    """Row and column direction cosines must be unit vectors at right angles."""
    with np.errstate(all="ignore"):
        for name, vec in (("row", iop[:3]), ("column", iop[3:])):
            norm = float(np.sqrt(vec @ vec))
            if not abs(norm - 1.0) <= _ORIENTATION_TOL:
                raise _Unusable(f"ImageOrientationPatient {name} vector is not a unit vector (length {norm:.4g}) {text}")
        cosine = float(iop[:3] @ iop[3:])
    if not abs(cosine) <= _ORIENTATION_TOL:
        raise _Unusable(f"ImageOrientationPatient row and column vectors are not orthogonal (cosine {cosine:.4g}) {text}")


def _int_field(ds, keyword: str, default: int | None = None) -> int:
    """A whole-number field (IS/US), ``default`` when absent; _Unusable when absent without default or garbled."""
    try:
        value = ds.get(keyword, None)
    except Exception as exc:  # a garbled value pydicom cannot convert
        raise _Unusable(f"{keyword} cannot be parsed ({_reason(exc)})") from None
    if value is None or value == "":
        if default is None:
            raise _Unusable(f"{keyword} is missing")
        return default
    try:
        return int(value)
    except (TypeError, ValueError):
        raise _Unusable(f"{keyword} is not a whole number ({str(value)[:24]!r})") from None


def _slice_of(f: _DicomFile) -> _Slice:
    """The slice geometry of an image file, or _Unusable saying which field is missing or wrong."""
    ds = f.ds
    if _int_field(ds, "NumberOfFrames", 1) > 1:
        raise _Unusable("multi-frame (enhanced) DICOM images are not supported yet")
    position = _field_numbers(ds, "ImagePositionPatient", 3)
    orientation = _field_numbers(ds, "ImageOrientationPatient", 6)
    _check_orientation(orientation, _field_text(ds, "ImageOrientationPatient"))
    spacing = _field_numbers(ds, "PixelSpacing", 2)
    if not np.all(spacing > 0):
        raise _Unusable(f"PixelSpacing must be positive, got {_field_text(ds, 'PixelSpacing')}")
    rows, columns = _int_field(ds, "Rows"), _int_field(ds, "Columns")
    if rows < 1 or columns < 1:
        raise _Unusable(f"image size Rows x Columns = {rows} x {columns}")
    if not f.has_pixels:
        raise _Unusable("has no pixel data")
    return _Slice(f.path, position, orientation, rows, columns, spacing)


def _lacks_geometry(ds) -> bool:
    return "ImagePositionPatient" not in ds or "ImageOrientationPatient" not in ds


@contextlib.contextmanager
def _quiet_pydicom():
    """No pydicom warnings (invalid values in odd files) on stderr, neither warnings nor log lines."""
    logger = logging.getLogger("pydicom")
    was = logger.disabled
    logger.disabled = True
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.disabled = was


def _scan_folder(folder: Path) -> tuple[dict[str, DicomSeries], list[str], dict[str, DicomSeries]]:
    """Image series by UID, descriptions of non-image objects, and image sets without any slice
    geometry (secondary captures, radiographs) by UID. Raises on the first unreadable file."""
    series: dict[str, DicomSeries] = {}
    others: list[str] = []
    for path in _folder_files(folder):
        with _quiet_pydicom():
            f = _read_dicom_file(path)
            try:
                _file_into_series(f, series, others)
            except Exception as exc:  # a header value pydicom cannot convert
                raise MedsegError(f"{path}: not a readable DICOM file ({_reason(exc)})") from None
    flat: dict[str, DicomSeries] = {}
    for uid, s in list(series.items()):
        if not s.slices and len(s._flat) == len(s.problems):  # no member has slice geometry at all
            flat[uid] = series.pop(uid)
            others.extend(s._flat)
    return series, others, flat


def _file_into_series(f: _DicomFile, series: dict[str, DicomSeries], others: list[str]) -> None:
    """Add a file to its series (as a slice, or as an unusable member), or to the non-image objects."""
    ds = f.ds
    modality = " ".join(str(ds.get("Modality", "") or "").split()).upper()
    kind = f"{modality or '?'} ({_sop_name(ds)})"
    if modality in NON_SCAN_MODALITIES or not (f.has_pixels or "Rows" in ds):
        others.append(kind)
        return
    uid = _series_key(ds)
    description = " ".join(str(ds.get("SeriesDescription", "") or "").split())
    entry = series.setdefault(uid, DicomSeries(uid, modality, description, []))
    try:
        entry.slices.append(_slice_of(f))
    except _Unusable as exc:
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


def sort_and_check_slices(folder: Path, s: DicomSeries) -> tuple[list[Path], float | None]:
    """Order a series' slices along the slice normal and check the grid is regular.

    Returns the ordered files and the slice spacing (None for a single slice). Raises on
    unusable member files, mixed orientations, matrix sizes or pixel spacings, duplicate
    positions and irregular spacing.
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
        _check_gaps(folder, s, ordered, pos, gaps)
        spacing = float(np.median(gaps))
        # In-plane offsets must not drift (a sheared stack is not a regular grid either).
        step = (ordered[-1].position - ordered[0].position) / (len(ordered) - 1)
        expected = ordered[0].position + np.outer(np.arange(len(ordered)), step)
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


def _check_gaps(folder: Path, s: DicomSeries, ordered: list[_Slice], pos: np.ndarray, gaps: np.ndarray) -> None:
    """Refuse duplicate slice positions and irregular (or absurd) slice spacing."""
    dup = np.flatnonzero(gaps < 1e-3)
    if dup.size:
        a, b = ordered[dup[0]], ordered[dup[0] + 1]
        raise MedsegError(
            f"{folder}: series {s.uid} has {dup.size} duplicate slice position(s) "
            f"({a.path.name} and {b.path.name} at {pos[dup[0]]:.2f} mm; several phases or echoes in one series?)"
        )
    spacing = float(np.median(gaps))
    tol = max(0.01, 0.01 * spacing)
    if not (np.isfinite(spacing) and np.all(np.abs(gaps - spacing) <= tol)):
        lo, hi = int(np.argmin(gaps)), int(np.argmax(gaps))
        raise MedsegError(
            f"{folder}: irregular slice spacing in series {s.uid}: gaps from {gaps[lo]:.3f} mm "
            f"({ordered[lo].path.name} to {ordered[lo + 1].path.name}) to {gaps[hi]:.3f} mm "
            f"({ordered[hi].path.name} to {ordered[hi + 1].path.name}) "
            f"between slice positions {', '.join(f'{p:.2f}' for p in pos[:8])}{' ...' if len(pos) > 8 else ''}; "
            "refusing to build a distorted volume"
        )


def _load_dicom_folder(folder: Path, uid: str | None) -> Scan:
    series, others, flat = _scan_folder(folder)
    chosen = _choose_series(folder, series, others, uid, flat)
    return _read_series(folder, chosen)


def _load_dicom_file(path: Path) -> Scan:
    with _quiet_pydicom():
        ds = _read_dicom_file(path).ds
        uid = _series_key(ds)
    series, others, flat = _scan_folder(path.parent)
    if uid in flat:
        raise flat[uid].problem_error()
    if uid not in series:
        with _quiet_pydicom():
            kind = f"{ds.get('Modality', '?')}, {_sop_name(ds)}"
        raise MedsegError(f"{path}: not an image series ({kind})")
    return _read_series(path.parent, series[uid])


def _read_series(folder: Path, s: DicomSeries) -> Scan:
    sitk = _sitk()
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
        array=_sitk_array(image, folder),
        affine=_check_affine(sitk_to_ras_affine(image), folder),
        source=folder,
        modality=s.modality or None,
        series_uid=s.uid,
        description=s.description,
    )


def _decode_error(folder: Path, s: DicomSeries, files: list[Path], exc: RuntimeError) -> MedsegError:
    """Name the first file that fails to decode on its own; the series otherwise."""
    sitk = _sitk()
    for f in files:
        try:
            sitk.ReadImage(str(f), imageIO="GDCMImageIO")
        except RuntimeError as one:
            return MedsegError(f"{f}: cannot decode the pixel data ({_reason(one)})")
    return MedsegError(f"{folder}: cannot decode the pixel data of series {s.uid} ({_reason(exc)})")


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


# Noise in ITK/SimpleITK exception texts: wrapper, C++ source locations, class and object address.
_ITK_NOISE = re.compile(
    r"Exception thrown in SimpleITK \w+:|\S+\.(?:cxx|cpp|cc|hxx|txx|h):\d+:?|"
    r"(?:ITK|itk::|sitk::)\s*ERROR:\s*(?:\w+\(0x[0-9A-Fa-f]+\):)?"
)


def _reason(exc: BaseException) -> str:
    """The meaningful part of an exception message, on one line (ITK's are several lines long and
    name C++ source files); quoted paths are shortened to their file name."""
    text = _ITK_NOISE.sub(" ", str(exc))
    text = re.sub(r'"(?:[^"]*/)([^"/]+)"', r'"\1"', text)
    lines = [" ".join(ln.split()) for ln in text.splitlines() if ln.strip(" :")]
    for ln in lines:
        if "description:" in ln.lower():
            return ln.split(":", 1)[1].strip()[:200]
    return lines[0].strip(" :")[:200] if lines else type(exc).__name__


__all__ = [
    "Scan",
    "as_label_map",
    "save_image",
    "atomic_write",
    "atomic_write_text",
    "DicomSeries",
    "load_scan",
    "save_mask",
    "check_mask_name",
    "check_output_path",
    "canonical_grid",
    "grid_mismatch",
    "mask_image",
    "find_dicom_series",
    "sort_and_check_slices",
    "sitk_to_ras_affine",
    "label_dtype",
]
