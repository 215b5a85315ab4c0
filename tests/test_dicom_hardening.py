"""DICOM series folders with broken files: no silently wrong volume.

Every file that claims to belong to the loaded series is in the volume or named in a one-line
error. Cases are mutations of a small generated phantom series (10 slices of 24x20).
"""

from __future__ import annotations

import shutil
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pydicom
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from pydicom.data import get_testdata_file
from pydicom.uid import RLELossless, SecondaryCaptureImageStorage, generate_uid

from medseg.errors import MedsegError
from medseg.dicom import find_dicom_series
from medseg.io import load_scan
from medseg.phantom import make_phantom, write_dicom_series

SHAPE = (24, 20, 10)
BAD = 3  # the slice (in slice order) most cases break


# ---------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    """A clean series (folder, paths in slice order) and its scan."""
    folder = tmp_path_factory.mktemp("clean") / "series"
    paths = write_dicom_series(make_phantom(0, shape=SHAPE), folder)
    return folder, paths, load_scan(folder)


def _copy(clean, dest: Path) -> tuple[Path, list[Path]]:
    folder, paths, _ = clean
    shutil.copytree(folder, dest)
    return dest, [dest / p.name for p in paths]


@pytest.fixture
def series(clean, tmp_path):
    """A fresh copy of the clean series: (folder, paths in slice order)."""
    return _copy(clean, tmp_path / "series")


def _edit(path: Path, **fields) -> None:
    """Rewrite a file with fields deleted (value None), set, or (bytes) stored exactly as given."""
    raw = {k: v for k, v in fields.items() if isinstance(v, bytes)}
    rest = {k: v for k, v in fields.items() if not isinstance(v, bytes)}
    if rest:
        ds = pydicom.dcmread(path)
        for name, value in rest.items():
            if value is None:
                if name in ds:
                    delattr(ds, name)
            else:
                setattr(ds, name, value)
        ds.save_as(path)
    for name, value in raw.items():
        _splice(path, name, value)


def _splice(path: Path, keyword: str, value: bytes) -> None:
    """Replace the stored value of an existing explicit-VR little-endian text element byte for byte
    (pydicom would refuse to store values such as 'abc' in a DS element)."""
    elem = pydicom.dcmread(path, stop_before_pixels=True).get_item(keyword)
    if len(value) % 2:
        value += b" "
    data = path.read_bytes()
    start = elem.value_tell
    length = struct.pack("<H", len(value))
    path.write_bytes(data[: start - 2] + length + value + data[start + elem.length :])


def _pixel_offset(path: Path) -> int:
    with open(path, "rb") as fh:
        pydicom.dcmread(fh, stop_before_pixels=True)
        return fh.tell()


def _assert_one_line_error(folder: Path, *needles: str, **kwargs) -> str:
    with pytest.raises(MedsegError) as exc:
        load_scan(folder, **kwargs)
    msg = str(exc.value)
    assert "\n" not in msg and "\r" not in msg, msg
    for needle in needles:
        assert needle in msg, (needle, msg)
    return msg


def _assert_same_as_clean(scan, clean_scan) -> None:
    assert scan.shape == SHAPE
    np.testing.assert_allclose(scan.spacing, clean_scan.spacing, atol=1e-6)
    np.testing.assert_allclose(scan.affine, clean_scan.affine, atol=1e-6)
    np.testing.assert_array_equal(scan.array, clean_scan.array)


# ---------------------------------------------------------------------------------------------- matrix

IPP, IOP, PS = "ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing"

# name -> (fields to set on slice BAD, expected fragments of the message)
FIELD_CASES = {
    "ipp-nan": ({IPP: b"nan\\0\\12.5"}, [IPP, "non-finite", "'nan'"]),
    "ipp-inf": ({IPP: b"-inf\\0\\12.5"}, [IPP, "non-finite"]),
    "ipp-missing": ({IPP: None}, [IPP, "missing"]),
    "ipp-two-values": ({IPP: b"0\\12.5"}, [IPP, "2 value(s)", "expected 3"]),
    "ipp-empty": ({IPP: b""}, [IPP, "empty"]),
    "ipp-text": ({IPP: b"abc\\0\\1"}, [IPP, "non-numeric"]),
    "iop-missing": ({IOP: None}, [IOP, "missing"]),
    "iop-nan": ({IOP: b"1\\0\\0\\0\\nan\\0"}, [IOP, "non-finite"]),
    "iop-five-values": ({IOP: b"1\\0\\0\\0\\1"}, [IOP, "5 value(s)"]),
    "iop-zero-vector": ({IOP: b"0\\0\\0\\0\\1\\0"}, [IOP, "row vector is not a unit vector"]),
    "iop-non-orthogonal": ({IOP: b"1\\0\\0\\0.6\\0.8\\0"}, [IOP, "not orthogonal"]),
    "iop-non-unit": ({IOP: b"1\\0\\0\\0\\1.01\\0"}, [IOP, "column vector is not a unit vector"]),
    "ps-missing": ({PS: None}, [PS, "missing"]),
    "ps-zero": ({PS: b"0\\0"}, [PS, "positive"]),
    "ps-negative": ({PS: b"-19\\15.833333"}, [PS, "positive"]),
    "ps-nan": ({PS: b"nan\\15.833333"}, [PS, "non-finite"]),
    "ps-one-value": ({PS: b"19"}, [PS, "1 value(s)"]),
    "ps-mixed": ({PS: b"19\\16"}, ["mixes pixel spacings"]),
    "rows-missing": ({"Rows": None}, ["Rows", "missing"]),
}


@pytest.mark.parametrize("case", sorted(FIELD_CASES))
def test_bad_geometry_field_names_file_and_field(series, case):
    folder, paths = series
    fields, needles = FIELD_CASES[case]
    _edit(paths[BAD], **fields)
    msg = _assert_one_line_error(folder, paths[BAD].name, *needles)
    if case != "ps-mixed":
        assert msg.startswith(str(paths[BAD]) + ": "), msg


def _truncate_header(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: _pixel_offset(path) // 2])


def _truncate_header_at_pixels(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: _pixel_offset(path)])


def _truncate_pixels(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-100])


def _short_pixel_element(path: Path) -> None:  # a whole file whose PixelData is too short for Rows x Columns
    ds = pydicom.dcmread(path)
    ds.PixelData = ds.PixelData[:-40]
    ds.save_as(path)


def _random_bytes(path: Path) -> None:
    path.write_bytes(np.random.default_rng(7).bytes(2306))


def _random_bytes_with_preamble(path: Path) -> None:
    path.write_bytes(bytes(128) + b"DICM" + np.random.default_rng(8).bytes(2000))


def _empty(path: Path) -> None:
    path.write_bytes(b"")


# name -> (how slice BAD is damaged, expected fragments)
FILE_CASES = {
    "header-truncated": (_truncate_header, ["not a readable DICOM file", "truncated"]),
    "header-truncated-before-pixels": (_truncate_header_at_pixels, ["not a readable DICOM file", "before the image's pixel data"]),
    "pixels-truncated": (_truncate_pixels, ["not a readable DICOM file", "pixel data cut short"]),
    "pixels-too-short": (_short_pixel_element, ["pixel data too short"]),
    "random-bytes": (_random_bytes, ["not a readable DICOM file"]),
    "random-bytes-with-preamble": (_random_bytes_with_preamble, ["not a readable DICOM file"]),
    "empty-file": (_empty, ["not a readable DICOM file", "empty file"]),
}


@pytest.mark.parametrize("case", sorted(FILE_CASES))
def test_damaged_file_is_named(series, case):
    folder, paths = series
    damage, needles = FILE_CASES[case]
    damage(paths[BAD])
    msg = _assert_one_line_error(folder, *needles)
    assert msg.startswith(str(paths[BAD]) + ": "), msg


def test_unrelated_junk_file_is_named(series):
    folder, _ = series
    (folder / "notes").write_text("scanned on the old scanner\n")
    _assert_one_line_error(folder, "notes: not a readable DICOM file")
    sub = folder / "extra"  # also in sub-folders
    sub.mkdir()
    (folder / "notes").unlink()
    (sub / "IM0007").write_bytes(b"\x00\x01garbage" * 50)
    _assert_one_line_error(folder, "IM0007: not a readable DICOM file")


def _add_readme(folder: Path) -> None:
    (folder / "README.txt").write_text("exported by the PACS\n")
    (folder / "report.PDF").write_bytes(b"%PDF-1.4 not dicom")


def _add_hidden(folder: Path) -> None:
    (folder / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (folder / ".cache").mkdir()
    (folder / ".cache" / "junk").write_bytes(b"junk")


def _add_rtstruct(folder: Path) -> None:
    shutil.copy(get_testdata_file("rtstruct.dcm"), folder / "RS.dcm")


def _add_secondary_capture(folder: Path) -> None:
    """A dose-report screenshot: an SC image without slice geometry in its own series."""
    src = next(folder.glob("*.dcm"))
    ds = pydicom.dcmread(src)
    for name in (IPP, IOP, PS, "SliceLocation"):
        delattr(ds, name)
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=["sc"])
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=["sc-series"])
    ds.Modality = "OT"
    ds.save_as(folder / "dose_report.dcm")


def _add_dicomdir_name(folder: Path) -> None:
    (folder / "DICOMDIR").write_bytes(b"not parsed here")


OK_CASES = {
    "readme-and-pdf": _add_readme,
    "hidden-files": _add_hidden,
    "rtstruct": _add_rtstruct,
    "secondary-capture-own-series": _add_secondary_capture,
    "dicomdir": _add_dicomdir_name,
}


@pytest.mark.parametrize("case", sorted(OK_CASES))
def test_companion_files_do_not_change_the_volume(series, clean, case):
    folder, _ = series
    OK_CASES[case](folder)
    _assert_same_as_clean(load_scan(folder), clean[2])


def test_rtstruct_is_still_reported_as_non_image(series, clean):
    folder, _ = series
    _add_rtstruct(folder)
    found, others = find_dicom_series(folder)
    assert len(found) == 1 and next(iter(found.values())).slices.__len__() == SHAPE[2]
    assert any("RTSTRUCT" in o for o in others)


def test_orientation_written_with_six_decimals_loads(series, clean):
    folder, paths = series
    for p in paths:  # a slightly tilted plane as scanners write it: unit length to about 1e-6
        _edit(p, ImageOrientationPatient=b"0.999998\\0.001745\\0\\-0.001745\\0.999998\\0")
    scan = load_scan(folder)
    assert scan.shape == SHAPE
    np.testing.assert_allclose(scan.spacing, clean[2].spacing, rtol=1e-5)


def test_broken_member_of_another_series_only_blocks_that_series(series, clean):
    folder, paths = series
    other_uid = generate_uid(entropy_srcs=["other-series"])
    for i, src in enumerate(paths[:2]):  # a two-file second series; its second file is broken
        ds = pydicom.dcmread(src)
        ds.SeriesInstanceUID = other_uid
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=["other", str(i)])
        ds.save_as(folder / f"other{i}.dcm")
    _edit(folder / "other1.dcm", ImagePositionPatient=b"nan\\0\\0")
    msg = _assert_one_line_error(folder, "2 DICOM series", "--series", "1 unusable file")
    assert other_uid in msg
    clean_uid = clean[2].series_uid
    _assert_same_as_clean(load_scan(folder, series_uid=clean_uid), clean[2])
    _assert_one_line_error(folder, "other1.dcm", IPP, "non-finite", series_uid=other_uid)


def test_geometry_less_ct_file_alone_names_file_and_field(tmp_path, clean):
    folder, paths, _ = clean
    dest = tmp_path / "one"
    dest.mkdir()
    shutil.copy(paths[0], dest / "IM0001.dcm")
    _edit(dest / "IM0001.dcm", ImagePositionPatient=None)
    _assert_one_line_error(dest, "no DICOM image series", "IM0001.dcm", IPP)
    with pytest.raises(MedsegError, match="IM0001.dcm: ImagePositionPatient is missing"):
        load_scan(dest / "IM0001.dcm")


def test_single_file_path_checks_its_folder(series):
    folder, paths = series
    _edit(paths[BAD], ImagePositionPatient=b"1\\2\\inf")
    _assert_one_line_error(paths[0], paths[BAD].name, "non-finite")


# ---------------------------------------------------------------------------------------------- compressed


@pytest.fixture(scope="module")
def rle_series(clean, tmp_path_factory):
    """The clean series re-encoded as RLE Lossless (encapsulated pixel data)."""
    folder = tmp_path_factory.mktemp("rle") / "series"
    folder.mkdir()
    for p in clean[1]:
        ds = pydicom.dcmread(p)
        ds.compress(RLELossless)
        ds.save_as(folder / p.name)
    return folder, [folder / p.name for p in clean[1]]


def test_compressed_series_loads(rle_series, clean):
    _assert_same_as_clean(load_scan(rle_series[0]), clean[2])


def test_compressed_truncated_is_found_in_header_pass(rle_series, tmp_path):
    folder, paths = _copy((rle_series[0], rle_series[1], None), tmp_path / "rle")
    data = paths[BAD].read_bytes()
    paths[BAD].write_bytes(data[: len(data) - 30])
    msg = _assert_one_line_error(folder, "not a readable DICOM file", "compressed pixel data cut short")
    assert msg.startswith(str(paths[BAD]) + ": ")


def _garble_rle(path: Path) -> None:
    """Make a structurally whole RLE file whose first segment header is nonsense."""
    ds = pydicom.dcmread(path)
    frag = bytearray(ds.PixelData)
    start = 8 + struct.unpack("<I", frag[4:8])[0] + 8  # past the offset table and the first item header
    frag[start : start + 64] = b"\xff" * 64
    ds.PixelData = bytes(frag)
    ds.save_as(path)


def test_compressed_garbage_is_localised_to_its_file(rle_series, tmp_path):
    folder, paths = _copy((rle_series[0], rle_series[1], None), tmp_path / "rle")
    _garble_rle(paths[BAD])
    msg = _assert_one_line_error(folder, "cannot decode the pixel data")
    assert msg.startswith(str(paths[BAD]) + ": ")  # the file, not the folder
    assert ".cxx" not in msg and "0x" not in msg and "ITK ERROR" not in msg, msg


# ---------------------------------------------------------------------------------------------- CLI


def _cli_info(folder: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "medseg.cli", "info", str(folder)], capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize(
    "damage, needle",
    [
        (lambda p: _edit(p, PixelSpacing=b"0\\0"), "PixelSpacing"),
        (lambda p: _edit(p, ImagePositionPatient=b"nan\\0\\12.5"), "non-finite"),
        (_truncate_pixels, "not a readable DICOM file"),
    ],
    ids=["pixel-spacing-0", "ipp-nan", "truncated-pixels"],
)
def test_cli_prints_one_clean_error_line(series, damage, needle):
    folder, paths = series
    damage(paths[BAD])
    r = _cli_info(folder)
    assert r.returncode == 1, (r.stdout, r.stderr)
    lines = r.stderr.splitlines()
    assert len(lines) == 1, r.stderr  # no ITK, GDCM or pydicom warnings around it
    assert lines[0].startswith("error:") and paths[BAD].name in lines[0] and needle in lines[0], lines
    assert "Traceback" not in r.stderr + r.stdout


def test_cli_compressed_decode_failure_is_clean(rle_series, tmp_path):
    folder, paths = _copy((rle_series[0], rle_series[1], None), tmp_path / "rle")
    _garble_rle(paths[BAD])
    r = _cli_info(folder)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and paths[BAD].name in lines[0], r.stderr
    assert "cannot decode the pixel data" in lines[0] and ".cxx" not in lines[0]


# ---------------------------------------------------------------------------------------------- property

_FIELDS = {IPP: 3, IOP: 6, PS: 2}
_weird_floats = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, -0.0, 1.0, -1.0, 1e-300, 1e300, -1e300, float("nan"), float("inf"), 0.5, 19.0]),
)
_weird_text = st.text(alphabet="0123456789.-+eEnaif x\\", max_size=12)
_value = st.one_of(_weird_floats.map(repr), _weird_text)


_FORMATS = ("{!r}", "{:.6f}", "{:+.10g}", "{:.12e}", " {!r} ", "{:.10g}")


HOWS = ["delete", "random", "count", "jitter", "reformat"]


@st.composite
def _mutations(draw, how: str):
    """(slice index, field, values): values are raw strings, offsets to the stored numbers
    (jitter), format strings for the stored numbers (reformat), or None (delete)."""
    index = draw(st.integers(0, SHAPE[2] - 1))
    name = draw(st.sampled_from(sorted(_FIELDS)))
    n = _FIELDS[name]
    if how == "delete":
        values = None
    elif how == "count":
        values = draw(st.lists(_value, min_size=0, max_size=8))
    elif how == "random":
        values = draw(st.lists(_value, min_size=n, max_size=n))
    elif how == "jitter":  # a small change to one stored number: some stay inside the tolerances, some do not
        values = [0.0] * n
        values[draw(st.integers(0, n - 1))] = draw(st.sampled_from([1e-7, 1e-5, 1e-4, 1e-3, 0.05, 0.5, 3.0, -1e-5]))
    else:  # the same numbers written differently: must load exactly like the clean series
        values = draw(st.lists(st.sampled_from(_FORMATS), min_size=n, max_size=n))
    return index, name, values


def _apply(path: Path, name: str, how: str, values) -> None:
    if how == "delete":
        _edit(path, **{name: None})
        return
    if how in ("jitter", "reformat"):
        stored = [float(v) for v in pydicom.dcmread(path, stop_before_pixels=True).get(name)]
        if how == "jitter":
            values = [repr(s + d) for s, d in zip(stored, values)]
        else:
            values = [fmt.format(s) for s, fmt in zip(stored, values)]
    _edit(path, **{name: "\\".join(values).encode()})


@pytest.mark.parametrize("how", HOWS)
@settings(
    max_examples=12,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_geometry_mutations_never_give_a_silently_wrong_volume(clean, how, data):
    """Mutate IPP/IOP/PixelSpacing of one random slice: the exact clean grid or a one-line error."""
    index, name, values = data.draw(_mutations(how), label="mutation")
    ref = clean[2]
    with tempfile.TemporaryDirectory() as tmp:
        folder, paths = _copy(clean, Path(tmp) / "series")
        target = paths[index]
        _apply(target, name, how, values)
        try:
            scan = load_scan(folder)
        except MedsegError as exc:
            msg = str(exc)
            assert "\n" not in msg and "\r" not in msg, msg
            assert any(p.name in msg for p in paths), msg  # names a file of the series
            if name in msg:  # a field-level error: it names the mutated file
                assert target.name in msg, msg
            assert how != "reformat", msg  # the same numbers must always load
            event(f"refused ({how})")
            return
        event(f"loaded ({how})")
        # accepted: exactly the clean grid (mutations inside the tolerances move it a little at most)
        assert scan.shape == SHAPE
        np.testing.assert_allclose(scan.spacing, ref.spacing, rtol=0.02)
        np.testing.assert_allclose(scan.direction, ref.direction, atol=2e-3)
        np.testing.assert_allclose(scan.origin, ref.origin, atol=0.5)
        np.testing.assert_array_equal(scan.array, ref.array)
        if how == "reformat":
            np.testing.assert_allclose(scan.affine, ref.affine, atol=1e-5)
