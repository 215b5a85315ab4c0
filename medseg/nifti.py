"""NIfTI-1/2 reading: header checks that name the bad field, voxels scaled in a compact type.

:func:`load_nifti` checks the header as stored (before nibabel's load-time fixes) and refuses, in
one line naming the file and the field, anything that would give an empty, mis-scaled or
mis-placed volume. The affine is nibabel's choice: the sform when its code is set, else the
qform, else pixdim (a diagonal). Masks later copy the qform/sform (and their codes) from
:attr:`~medseg.io.Scan.header`; a broken qform unused beside a valid sform is dropped there.
"""

from __future__ import annotations

import contextlib
import io
import struct
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np

from .errors import MedsegError
from .geometry import check_affine
from .scan import Scan, native_array, reason

# Largest finite float32: scaled NIfTI voxels are float32 and must not overflow to inf.
_FLOAT32_MAX = float(np.finfo(np.float32).max)


def load_nifti(path: Path) -> Scan:
    """A NIfTI file as a :class:`~medseg.io.Scan` (trailing singleton dimensions dropped)."""
    raw = _raw_nifti_header(path)
    try:
        with _quiet_nibabel():
            img = _open_nifti(path)
    except Exception as exc:  # nibabel raises many types for bad headers
        if raw is not None:
            _check_nifti_header(raw, path)  # a precise reason when a header field is at fault
        raise MedsegError(f"{path}: not a readable NIfTI file ({reason(exc)})") from None
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
        raise MedsegError(f"{path}: image data is truncated or corrupt ({reason(exc)})") from None
    return Scan(
        array=arr,
        affine=check_affine(img.affine, path, _nifti_affine_source(header)),
        source=path,
        header=_header_for_masks(img.header, header),
    )


def _open_nifti(path: Path):
    """nibabel's image of ``path``; a ``.nii.gz`` is decompressed in one go with ISA-L (``isal``,
    about twice zlib's speed) when it is installed. Anything odd goes through ``nib.load``, so its
    errors (and the checks on them) are the same either way."""
    if path.name.lower().endswith(".gz"):
        try:
            from isal import igzip

            data = igzip.decompress(path.read_bytes())
        except Exception:  # not installed, truncated, not gzip: nibabel reads it and says what is wrong
            return nib.load(str(path))
        size = (int.from_bytes(data[:4], "little"), int.from_bytes(data[:4], "big")) if len(data) >= 4 else ()
        if 348 in size:
            return nib.Nifti1Image.from_bytes(data)
        if 540 in size:
            return nib.Nifti2Image.from_bytes(data)
    return nib.load(str(path))


def _squeeze_to_3d(shape: tuple[int, ...], path: Path) -> tuple[int, ...]:
    """Index that drops trailing singleton dimensions, or an error if the image is not 3D."""
    if len(shape) > 3 and all(n == 1 for n in shape[3:]):
        return (slice(None),) * 3 + (0,) * (len(shape) - 3)
    if len(shape) != 3:
        raise MedsegError(f"{path}: expected a 3D volume, got a {len(shape)}D image of shape {tuple(shape)}")
    return (slice(None),) * 3



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
        check_affine(np.vstack([srows, [0, 0, 0, 1]]), Path("sform"))
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
        return native_array(np.asarray(proxy)[index], path)
    raw = native_array(np.asarray(proxy.get_unscaled())[index], path)
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


__all__ = ["load_nifti"]
