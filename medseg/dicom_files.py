"""DICOM files byte by byte: one file's header, checked cheaply for being whole, and its fields.

Used by :mod:`medseg.dicom`, which groups files into series. :func:`read_dicom_file` reads the
header with pydicom (pixel data not decoded) and compares the pixel data's extent with the file
size, so a truncated file is named before any decoding; :class:`Unusable` carries why a file
cannot be used (its message has no path: the caller adds it).
"""

from __future__ import annotations

import contextlib
import logging
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import MedsegError
from .scan import reason

# Tags where pydicom stops with stop_before_pixels: (Float/DoubleFloat)PixelData.
_PIXEL_TAGS = (0x7FE00010, 0x7FE00008, 0x7FE00009)
# Explicit VRs whose element header carries a 4-byte length (12-byte header).
_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
_UNDEFINED_LENGTH = 0xFFFFFFFF


class Unusable(Exception):
    """Why a DICOM file is unreadable or cannot be a slice of its series (message without the path)."""


@dataclass
class DicomFile:
    """A DICOM file's header (pixel data not read)."""

    path: Path
    ds: object  # pydicom Dataset
    has_pixels: bool


def read_dicom_file(path: Path) -> DicomFile:
    """Read one file's header and check, cheaply, that the file is whole.

    The pixel data are not decoded: their element header is read where pydicom stopped, and
    their extent is compared with the file size (and, for uncompressed transfer syntaxes, with
    Rows x Columns x SamplesPerPixel x BitsAllocated x NumberOfFrames); compressed fragments are
    walked by their item headers. Raises a one-line MedsegError naming the file otherwise.
    """
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh, quiet_pydicom():
            if size == 0:
                raise Unusable("empty file")
            ds = _parse_header(fh)
            has_pixels = _check_pixel_extent(fh, ds, size)
    except OSError as exc:
        raise MedsegError(f"{path}: cannot read ({exc.strerror or exc})") from None
    except Unusable as exc:
        raise MedsegError(f"{path}: not a readable DICOM file (truncated or not DICOM: {exc})") from None
    except Exception as exc:  # pydicom raises many types on garbage
        raise MedsegError(f"{path}: not a readable DICOM file (truncated or not DICOM: {reason(exc)})") from None
    return DicomFile(path, ds, has_pixels)


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
        raise Unusable("no SOPClassUID in the header" if fh.read(4) == b"DICM" else "no DICOM header found")
    return ds


def sop_name(ds) -> str:
    sop = ds.get("SOPClassUID", None)
    return getattr(sop, "name", "") or "unknown SOP class"


def _is_image_sop(ds) -> bool:
    return "Image Storage" in sop_name(ds)


def _check_pixel_extent(fh, ds, size: int) -> bool:
    """Whether the file holds pixel data; raises Unusable when the file is cut short."""
    ts = ds.get("file_meta", {}).get("TransferSyntaxUID", None)
    if ts is not None and getattr(ts, "is_deflated", False):
        return True  # the stream pydicom parsed is not the file: leave the check to the decoder
    start = fh.tell()
    head = fh.read(12)
    tag = _element_tag(head, ds) if len(head) >= 8 else None
    if tag not in _PIXEL_TAGS:
        cut = _cut_element(ds, size)
        if cut:
            raise Unusable(f"the file ends inside {cut}")
        if head:
            raise Unusable(f"the file ends inside a data element header at byte {start}")
        if _is_image_sop(ds) or "Rows" in ds:
            raise Unusable(f"the file ends at byte {size}, before the image's pixel data")
        return False
    offset, length = _element_extent(head, ds, start)
    if length == _UNDEFINED_LENGTH:
        problem = _encapsulated_problem(fh, offset, size)
        if problem:
            raise Unusable(problem)
        return True
    present = size - offset
    if present < length:
        raise Unusable(f"pixel data cut short: {max(present, 0)} of {length} bytes present")
    expected = _expected_pixel_bytes(ds)
    if expected is not None and not (ts is not None and ts.is_encapsulated) and length < expected:
        raise Unusable(f"pixel data too short: {length} bytes where the header's image size needs {expected}")
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
            raise Unusable(f"the file ends inside the pixel data element header at byte {start}")
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


def field_text(ds, keyword: str) -> list[str] | None:
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


def field_numbers(ds, keyword: str, count: int) -> np.ndarray:
    """``count`` finite numbers from a geometry field, or Unusable naming the field and its values."""
    text = field_text(ds, keyword)
    if text is None:
        raise Unusable(f"{keyword} is missing")
    if not text:
        raise Unusable(f"{keyword} is empty")
    if len(text) != count:
        raise Unusable(f"{keyword} has {len(text)} value(s) {text[:8]}, expected {count}")
    try:
        values = np.array([float(t) for t in text], dtype=np.float64)
    except ValueError:
        raise Unusable(f"{keyword} holds a non-numeric value {text}") from None
    if not np.all(np.isfinite(values)):
        raise Unusable(f"{keyword} holds a non-finite value {text}")
    return values


def int_field(ds, keyword: str, default: int | None = None) -> int:
    """A whole-number field (IS/US), ``default`` when absent; Unusable when absent without default or garbled."""
    try:
        value = ds.get(keyword, None)
    except Exception as exc:  # a garbled value pydicom cannot convert
        raise Unusable(f"{keyword} cannot be parsed ({reason(exc)})") from None
    if value is None or value == "":
        if default is None:
            raise Unusable(f"{keyword} is missing")
        return default
    try:
        return int(value)
    except (TypeError, ValueError):
        raise Unusable(f"{keyword} is not a whole number ({str(value)[:24]!r})") from None


@contextlib.contextmanager
def quiet_pydicom():
    """No pydicom (or highdicom) warnings (invalid values in odd files) on stderr, neither warnings nor log lines."""
    loggers = [logging.getLogger(name) for name in ("pydicom", "highdicom")]
    was = [(logger.disabled, logger.level) for logger in loggers]
    for logger in loggers:
        logger.disabled = True
        logger.setLevel(logging.ERROR)  # highdicom logs from child loggers, which only the level reaches
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, (disabled, level) in zip(loggers, was):
            logger.disabled = disabled
            logger.setLevel(level)


__all__ = [
    "DicomFile",
    "Unusable",
    "field_numbers",
    "field_text",
    "int_field",
    "quiet_pydicom",
    "read_dicom_file",
    "sop_name",
]
