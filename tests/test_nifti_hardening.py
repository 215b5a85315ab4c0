"""NIfTI headers with broken fields: a volume on a usable grid, or a one-line error naming the file.

Header fields are patched byte for byte in a small generated .nii (nibabel would fix or refuse
some of them on save), so the loader sees exactly what a damaged file holds.
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from medseg.errors import MedsegError
from medseg.io import load_scan, mask_image

SHAPE = (6, 5, 4)
AFFINE = np.array([[-2.0, 0, 0, 10], [0, 2.0, 0, -8], [0, 0, 3.0, 5], [0, 0, 0, 1]])


def _write(path: Path, data: np.ndarray | None = None) -> Path:
    data = np.arange(np.prod(SHAPE), dtype=np.int16).reshape(SHAPE) * 10 - 100 if data is None else data
    img = nib.Nifti1Image(data, AFFINE)
    img.header.set_qform(AFFINE, code=1)
    img.header.set_sform(AFFINE, code=1)
    nib.save(img, str(path))
    return path


def _patch(path: Path, **fields) -> None:
    """Set header fields in the file's stored header, nothing else changed."""
    data = path.read_bytes()
    hdr = nib.Nifti1Header(binaryblock=data[:348], check=False)
    for name, value in fields.items():
        _set(hdr, name, value)
    path.write_bytes(hdr.binaryblock + data[348:])


@pytest.fixture
def nii(tmp_path) -> Path:
    return _write(tmp_path / "scan.nii")


def _error(path: Path, *needles: str) -> str:
    with pytest.raises(MedsegError) as exc:
        load_scan(path)
    msg = str(exc.value)
    assert "\n" not in msg and msg.startswith(f"{path}: "), msg
    for needle in needles:
        assert needle in msg, (needle, msg)
    return msg


NaN, Inf = float("nan"), float("inf")
NO_XFORM = {"qform_code": 0, "sform_code": 0}
QFORM_ONLY = {"qform_code": 1, "sform_code": 0}

# name -> (fields, expected fragments)
ERROR_CASES = {
    "slope-nan": ({"scl_slope": NaN}, ["scl_slope"]),
    "slope-inf": ({"scl_slope": -Inf}, ["scl_slope"]),
    "slope-overflow": ({"scl_slope": 1e38, "scl_inter": 0.0}, ["scl_slope", "float32"]),
    "inter-nan": ({"scl_slope": 1.0, "scl_inter": NaN}, ["scl_inter"]),
    "inter-inf": ({"scl_slope": 2.0, "scl_inter": Inf}, ["scl_inter"]),
    "pixdim-zero": ({"pixdim[1]": 0.0, **NO_XFORM}, ["pixdim", "no qform or sform"]),
    "pixdim-negative": ({"pixdim[2]": -2.0, **NO_XFORM}, ["pixdim"]),
    "pixdim-nan": ({"pixdim[3]": NaN, **NO_XFORM}, ["pixdim"]),
    "qform-pixdim-zero": ({"pixdim[3]": 0.0, **QFORM_ONLY}, ["pixdim", "qform"]),
    "qform-pixdim-negative": ({"pixdim[1]": -1.0, **QFORM_ONLY}, ["pixdim", "qform"]),
    "qform-quaternion-nan": ({"quatern_c": NaN, **QFORM_ONLY}, ["qform", "quatern"]),
    "qform-quaternion-too-long": ({"quatern_b": 0.9, "quatern_c": 0.9, **QFORM_ONLY}, ["qform", "rotation"]),
    "qform-offset-inf": ({"qoffset_x": Inf, **QFORM_ONLY}, ["qform", "qoffset"]),
    "sform-nan": ({"srow_y": np.array([0.0, NaN, 0.0, 1.0])}, ["sform", "non-finite"]),
    "sform-singular": ({"srow_z": np.zeros(4)}, ["sform", "singular"]),
    "dim-zero": ({"dim[3]": 0}, ["dim[3] = 0"]),
    "dim0-zero": ({"dim[0]": 0}, ["dim[0] = 0"]),
    "dim-negative": ({"dim[2]": -5}, ["dim[2] = -5"]),
    "datatype-unknown": ({"datatype": 1234}, ["datatype 1234"]),
    "datatype-mismatch": ({"datatype": 8, "bitpix": 32}, ["truncated or corrupt"]),  # int32 header, int16 data
}


@pytest.mark.parametrize("case", sorted(ERROR_CASES))
def test_bad_header_field_is_named(nii, case):
    fields, needles = ERROR_CASES[case]
    _patch(nii, **fields)
    _error(nii, *needles)


def test_truncated_data(nii):
    nii.write_bytes(nii.read_bytes()[:-10])
    _error(nii, "truncated or corrupt")


def test_gzip_header_checks_too(tmp_path):
    path = _write(tmp_path / "scan.nii")
    _patch(path, **{"pixdim[1]": 0.0, **NO_XFORM})
    import gzip

    gz = tmp_path / "scan.nii.gz"
    gz.write_bytes(gzip.compress(path.read_bytes()))
    _error(gz, "pixdim")


def _raw(path: Path) -> np.ndarray:
    return np.asarray(nib.load(str(path)).dataobj.get_unscaled())


def test_slope_zero_means_no_scaling(nii):
    _patch(nii, scl_slope=0.0, scl_inter=NaN)  # the intercept is ignored when the slope is 0
    scan = load_scan(nii)
    np.testing.assert_array_equal(scan.array, _raw(nii))
    assert scan.array.dtype == np.int16


def test_large_but_finite_scaling_is_float32(nii):
    _patch(nii, scl_slope=1e30, scl_inter=0.0)
    scan = load_scan(nii)
    assert scan.array.dtype == np.float32 and np.all(np.isfinite(scan.array))


def test_unused_pixdim_and_broken_qform_do_not_matter_with_an_sform(nii):
    _patch(nii, **{"pixdim[1]": 0.0, "quatern_b": NaN})
    scan = load_scan(nii)
    np.testing.assert_allclose(scan.affine, AFFINE)
    img = mask_image(np.zeros(SHAPE, np.uint8), scan)  # a mask of it can still be written
    np.testing.assert_allclose(img.header.get_best_affine(), AFFINE)


def test_non_finite_voxel_values_are_not_a_load_error(tmp_path):
    data = np.ones(SHAPE, np.float32)
    data[1, 2, 3], data[0, 0, 0] = np.nan, np.inf
    scan = load_scan(_write(tmp_path / "f.nii", data))
    assert np.isnan(scan.array[1, 2, 3]) and np.isinf(scan.array[0, 0, 0])
    _patch(tmp_path / "f.nii", scl_slope=2.0, scl_inter=1.0)  # scaling ignores them as well
    assert np.isnan(load_scan(tmp_path / "f.nii").array[1, 2, 3])


def test_no_nibabel_fix_messages_on_stderr(nii, capfd, caplog):
    for _ in range(2):  # twice: a broken suppressor loses nibabel's handler after the first use
        _patch(nii, **{"pixdim[1]": 0.0, "qform_code": 1, "sform_code": 1})  # nibabel "fixes" pixdim, logs it
        load_scan(nii)
        _patch(nii, **{"pixdim[1]": 0.0, **NO_XFORM})
        with pytest.raises(MedsegError):
            load_scan(nii)
    assert capfd.readouterr().err == ""
    assert not [r for r in caplog.records if r.name.startswith("nibabel")]


# ---------------------------------------------------------------------------------------------- property

_floats = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True, width=32),
    st.sampled_from([0.0, -0.0, 1.0, -1.0, 2.0, 0.5, 1e-30, 1e30, 1e38, -1e38, 3.0e38, NaN, Inf, -Inf]),
)
_FLOAT_FIELDS = ["scl_slope", "scl_inter", "quatern_b", "quatern_c", "quatern_d", "qoffset_x"]
_PIXDIM = [f"pixdim[{i}]" for i in range(4)]
_SROW = [f"srow_x[{i}]" for i in range(4)]


@st.composite
def _header_edits(draw):
    edits = {}
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["float", "pixdim", "srow", "code", "dim"]))
        if kind == "float":
            edits[draw(st.sampled_from(_FLOAT_FIELDS))] = draw(_floats)
        elif kind == "pixdim":
            edits[draw(st.sampled_from(_PIXDIM))] = draw(_floats)
        elif kind == "srow":
            edits[draw(st.sampled_from(_SROW))] = draw(_floats)
        elif kind == "code":
            edits[draw(st.sampled_from(["qform_code", "sform_code"]))] = draw(st.integers(-2, 7))
        else:
            idx = draw(st.integers(0, 5))
            edits[f"dim[{idx}]"] = draw(st.integers(-2, 9) if idx else st.integers(-1, 8))
    return edits


def _set(hdr, name: str, value) -> None:
    if "[" in name:
        key, idx = name[:-1].split("[")
        arr = hdr[key].copy()
        arr[int(idx)] = value
        hdr[key] = arr
    else:
        hdr[name] = value


@settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(edits=_header_edits())
def test_header_mutations_give_a_usable_grid_or_one_line_error(edits):
    with tempfile.TemporaryDirectory() as tmp:
        path = _write(Path(tmp) / "scan.nii")
        data = path.read_bytes()
        hdr = nib.Nifti1Header(binaryblock=data[:348], check=False)
        for name, value in edits.items():
            _set(hdr, name, value)
        path.write_bytes(hdr.binaryblock + data[348:])
        dims = [int(v) for v in hdr["dim"]]
        try:
            scan = load_scan(path)
        except MedsegError as exc:
            msg = str(exc)
            assert "\n" not in msg and msg.startswith(f"{path}: "), msg
            event("refused")
            return
        event("loaded")
        assert scan.shape == tuple(dims[1:4])  # exactly the header's grid
        assert all(n == 1 for n in dims[4 : dims[0] + 1])
        assert np.all(np.isfinite(scan.affine))
        det = np.linalg.det(scan.affine[:3, :3])
        assert math.isfinite(det) and abs(det) > 0
        slope = float(hdr["scl_slope"])
        if slope != 0:  # scaled as the header says, without overflowing to inf
            assert np.all(np.isfinite(scan.array))
        mask_image(np.zeros(scan.shape, np.uint8), scan)  # and a mask of it can be written
