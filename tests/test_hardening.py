"""Hostile inputs to segment/info/evaluate/phantom: never a silently wrong result, never an input
overwritten, always one line naming the file and the field.

Each class of the hardening issue is a parametrised case on data generated here. Commands run
in-process through typer's runner (fast); a few run as real child processes to prove the exit
code and a clean stderr (no traceback, no third-party warnings).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import SAMPLE, hash_tree
from typer.testing import CliRunner

from medseg.bundle import default_bundle_path, load_bundle
from medseg.cli import app
from medseg.errors import MedsegError, MedsegWarning
from medseg.inference import resolve_device, segment
from medseg.intensity import intensity_summary
from medseg.io import Scan, load_scan
from medseg.phantom import make_dataset, make_phantom, write_nifti

SAMPLE_NIFTI = SAMPLE / "phantom_ct.nii.gz"
SAMPLE_LABELS = SAMPLE / "phantom_ct_labels.nii.gz"
SAMPLE_DICOM = SAMPLE / "phantom_ct_dicom"



def run(*args) -> tuple[int, str, str]:
    """The CLI in-process: exit code, stdout, stderr."""
    r = CliRunner().invoke(app, [str(a) for a in args])
    return r.exit_code, r.stdout, r.stderr


def one_error_line(stderr: str) -> str:
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("error:"), stderr
    assert "Traceback" not in stderr and "unexpected" not in stderr, stderr
    return lines[0]


@pytest.fixture(scope="module")
def bundle():
    return load_bundle()


@pytest.fixture(scope="module")
def phantom():
    return make_phantom(11, shape=(64, 64, 12))


def _scan(array: np.ndarray, affine=None, name="scan.nii.gz", modality=None) -> Scan:
    return Scan(array=array, affine=np.diag([3.0, 3.0, 5.0, 1.0]) if affine is None else affine,
                source=Path(name), modality=modality)


# ---------------------------------------------------------------------------------------------- garbage in


def _values(kind: str, base: np.ndarray) -> np.ndarray:
    if kind == "all NaN":
        return np.full(base.shape, np.nan, np.float32)
    if kind == "all inf":
        return np.full(base.shape, np.inf, np.float32)
    if kind == "NaN and inf only":
        a = np.full(base.shape, np.nan, np.float32)
        a[::2] = -np.inf
        return a
    if kind == "constant":
        return np.full(base.shape, 40, np.int16)
    if kind == "constant with NaN":
        a = np.full(base.shape, 40.0, np.float32)
        a[0] = np.nan
        return a
    if kind == "scale 1e38":
        with np.errstate(over="ignore"):
            return base.astype(np.float32) * np.float32(1e38)
    if kind == "scale 1e6":
        return base.astype(np.float32) * np.float32(1e6)
    raise AssertionError(kind)


@pytest.mark.parametrize(
    "kind, expected",
    [
        ("all NaN", "no finite voxel values"),
        ("all inf", "no finite voxel values"),
        ("NaN and inf only", "no finite voxel values"),
        ("constant", "no contrast"),
        ("constant with NaN", "no contrast"),
        ("scale 1e38", "far outside any range"),
        ("scale 1e6", "far outside any range"),
    ],
)
def test_garbage_scans_are_refused(bundle, phantom, kind, expected):
    scan = _scan(_values(kind, phantom.image), name=f"{kind}.nii.gz")
    with pytest.raises(MedsegError, match=expected) as info:
        segment(scan, bundle)
    assert f"{kind}.nii.gz" in str(info.value) and "\n" not in str(info.value)


def test_garbage_scan_through_the_cli_writes_nothing(tmp_path, phantom):
    path = tmp_path / "nan.nii.gz"
    nib.save(nib.Nifti1Image(_values("all NaN", phantom.image), np.eye(4)), str(path))
    before = hash_tree(tmp_path)
    code, _, stderr = run("segment", path, "-o", tmp_path / "mask.nii.gz")
    assert code == 1 and "nan.nii.gz" in one_error_line(stderr) and "no finite voxel" in stderr
    assert hash_tree(tmp_path) == before  # no output, no temporary file, input untouched


@pytest.mark.slow
def test_partly_nan_scan_is_segmented_with_nan_as_background(bundle, phantom):
    clean = _scan(phantom.image.astype(np.float32))
    noisy = phantom.image.astype(np.float32)
    noisy[:, :, 5] = np.nan  # a whole slice lost
    noisy[10:20, 10:20, :] = np.inf  # and a block of overflowed voxels
    notes: list[str] = []
    labels = segment(_scan(noisy), bundle, on_warning=notes.append)
    reference = segment(clean, bundle)
    assert labels.shape == noisy.shape
    assert not labels[:, :, 5].any()  # NaN slice: background, not organs
    assert not labels[10:20, 10:20, :].any()
    # elsewhere (away from the damaged slice's neighbours, 2.5D context) the result is unchanged
    keep = np.ones(noisy.shape, bool)
    keep[:, :, 4:7] = False
    keep[8:22, 8:22, :] = False
    assert (labels[keep] == reference[keep]).mean() > 0.99
    assert len(notes) == 1 and "not finite" in notes[0] and "scan.nii.gz" in notes[0]


@pytest.mark.slow
def test_out_of_range_intensities_warn_but_in_range_do_not(bundle, phantom):
    notes: list[str] = []
    segment(_scan(phantom.image), bundle, on_warning=notes.append)
    assert notes == []  # a phantom like the training ones
    shifted = phantom.image.astype(np.int32) + 1024  # CT stored without its rescale intercept
    segment(_scan(shifted, name="raw.nii.gz"), bundle, on_warning=notes.append)
    assert len(notes) == 1 and "raw.nii.gz" in notes[0] and "outside the range the model" in notes[0]
    # without a callback the doubt is a MedsegWarning, which the CLI prints as one line
    with pytest.warns(MedsegWarning, match="outside the range"):
        segment(_scan(shifted, name="raw.nii.gz"), bundle)


def test_real_ct_is_in_range(shared_data, bundle):
    for name in ("ct_abdomen_3mm.nii.gz", "real_ct_dicom"):
        scan = load_scan(shared_data / name)
        from medseg.intensity import check_scan_intensities

        assert check_scan_intensities(scan, bundle.card) == [], name


def test_cli_prints_medseg_warnings_and_drops_third_party_ones(tmp_path, phantom, monkeypatch):
    path = tmp_path / "raw.nii.gz"
    nib.save(nib.Nifti1Image(phantom.image.astype(np.int16) + np.int16(1024), np.diag([3.0, 3.0, 5.0, 1.0])), str(path))
    import medseg.inference as inference

    real = inference.predict_volume

    def noisy(*args, **kwargs):
        warnings.warn("torch says something internal", UserWarning)
        warnings.warn("numpy too", RuntimeWarning)
        return real(*args, **kwargs)

    monkeypatch.setattr(inference, "predict_volume", noisy)
    code, _, stderr = run("segment", path, "-o", tmp_path / "m.nii.gz")
    assert code == 0, stderr
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    warn = [ln for ln in lines if ln.startswith("warning:")]
    assert len(warn) == 1 and "raw.nii.gz" in warn[0] and "outside the range" in warn[0]
    assert "torch says" not in stderr and "numpy too" not in stderr


def test_info_counts_nonfinite_voxels(tmp_path, phantom):
    data = phantom.image.astype(np.float32)
    data[0] = np.nan
    data[1, :3] = np.inf
    path = tmp_path / "partial.nii.gz"
    nib.save(nib.Nifti1Image(data, np.eye(4)), str(path))
    code, stdout, _ = run("info", path)
    n_bad = data[0].size + data[1, :3].size
    assert code == 0 and f"{n_bad} of {data.size} voxels are not finite" in stdout
    assert "nan .. nan" not in stdout.lower()
    s = intensity_summary(data)
    assert s.nonfinite == n_bad and np.isfinite([s.minimum, s.maximum, s.low, s.high]).all()


# ---------------------------------------------------------------------------------------------- model bundles


def _bundle_copy(tmp_path: Path) -> Path:
    dst = tmp_path / "bundle"
    shutil.copytree(default_bundle_path(), dst)
    return dst


def _edit_card(folder: Path, **changes) -> None:
    card = json.loads((folder / "model.json").read_text())
    for key, value in changes.items():
        target = card
        parts = key.split("__")
        for part in parts[:-1]:
            target = target[part]
        if value is _DELETE:
            del target[parts[-1]]
        else:
            target[parts[-1]] = value
    (folder / "model.json").write_text(json.dumps(card))


_DELETE = object()


@pytest.mark.parametrize(
    "changes, field",
    [
        ({"preprocessing__window": [300.0, -200.0]}, "preprocessing.window"),  # inverted
        ({"preprocessing__window": [100.0, 100.0]}, "preprocessing.window"),  # empty
        ({"preprocessing__window": [-200.0]}, "preprocessing.window"),
        ({"preprocessing__window": ["low", "high"]}, "preprocessing.window"),
        ({"preprocessing__kind": "zscore"}, "preprocessing.kind"),
        ({"preprocessing": {"kind": "mr_percentiles", "percentiles": [99, 1]}, "modality": "MR"}, "preprocessing.percentiles"),
        ({"spacing": [0.0, 2.0]}, "spacing"),
        ({"spacing": [2.0, -1.0]}, "spacing"),
        ({"spacing": "2mm"}, "spacing"),
        ({"labels": {"background": 0, "liver": 1, "spleen": 1, "kidney_right": 3, "kidney_left": 4, "liver_tumour": 5}},
         "labels"),
        ({"labels": {"liver": 1, "spleen": 2, "kidney_right": 3, "kidney_left": 4, "liver_tumour": 5, "x": 6}}, "labels"),
        ({"labels__liver": -1}, "labels.liver"),
        ({"labels__liver": "one"}, "labels.liver"),
        ({"labels": ["background", "liver"]}, "labels"),
        ({"labels": _DELETE}, "labels"),
        ({"modality": "PET"}, "modality"),
        ({"context_slices": -1}, "context_slices"),
        ({"context_slices": 1.5}, "context_slices"),
        ({"arch_kwargs__width": 0}, "arch_kwargs.width"),
        ({"arch_kwargs__width": "wide"}, "arch_kwargs.width"),
        ({"architecture": "unet3000"}, "architecture"),
        ({"orientation": "LPS"}, "orientation"),
        ({"intensity_range": [500.0, -500.0]}, "intensity_range"),
        ({"name": ""}, "name"),
        ({"slice_size": [128]}, "slice_size"),
    ],
)
def test_inconsistent_model_cards_are_refused_at_load_naming_the_field(tmp_path, changes, field):
    folder = _bundle_copy(tmp_path)
    _edit_card(folder, **changes)
    with pytest.raises(MedsegError) as info:
        load_bundle(folder)
    text = str(info.value)
    assert "\n" not in text and "model.json" in text and f"'{field}" in text, text


def test_card_with_nan_window_is_refused(tmp_path):
    folder = _bundle_copy(tmp_path)
    text = (folder / "model.json").read_text().replace("-200.0", "NaN", 1)
    (folder / "model.json").write_text(text)
    with pytest.raises(MedsegError, match="model.json.*NaN"):
        load_bundle(folder)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_weights_that_are_not_finite_are_refused(tmp_path, bad):
    from safetensors.torch import load_file, save_file

    folder = _bundle_copy(tmp_path)
    state = load_file(str(folder / "model.safetensors"))
    key = sorted(k for k, v in state.items() if v.is_floating_point())[3]
    state[key] = state[key].clone()
    state[key].view(-1)[0] = bad
    save_file(state, str(folder / "model.safetensors"))
    with pytest.raises(MedsegError, match=f"tensor '{key}' holds 1 of"):
        load_bundle(folder)
    code, _, stderr = run("segment", SAMPLE_NIFTI, "-o", tmp_path / "m.nii.gz", "--model", folder)
    assert code == 1 and "model.safetensors" in one_error_line(stderr)
    assert not (tmp_path / "m.nii.gz").exists()


# ---------------------------------------------------------------------------------------------- --reference


def _label_like(tmp_path: Path, name: str, data: np.ndarray) -> Path:
    ref = nib.load(str(SAMPLE_LABELS))
    path = tmp_path / name
    nib.save(nib.Nifti1Image(data, ref.affine, ref.header), str(path))
    return path


@pytest.mark.parametrize("kind", ["float map", "negative", "the CT itself", "undeclared values", "probabilities"])
def test_reference_gets_the_same_check_as_evaluate(tmp_path, kind):
    labels = np.asarray(nib.load(str(SAMPLE_LABELS)).dataobj).astype(np.int16)
    if kind == "float map":
        data = labels.astype(np.float32) + 0.5
    elif kind == "negative":
        data = labels.copy()
        data[0, 0, 0] = -1
    elif kind == "the CT itself":
        data = None
    elif kind == "undeclared values":
        data = labels.copy()
        data[labels == 1] = 9
    else:
        data = (labels > 0).astype(np.float32) * 0.8
    path = SAMPLE_NIFTI if data is None else _label_like(tmp_path, "ref.nii.gz", data)
    before = hash_tree(path)
    code, stdout, stderr = run("segment", SAMPLE_NIFTI, "-o", tmp_path / "out" / "m.nii.gz", "--reference", path)
    line = one_error_line(stderr)
    assert code == 1 and path.name in line and "Dice" not in stdout
    assert not (tmp_path / "out").exists()  # checked before any work: nothing written
    # evaluate gives the same verdict on the same file
    (tmp_path / "pred").mkdir()
    (tmp_path / "refs").mkdir()
    shutil.copy(SAMPLE_LABELS, tmp_path / "pred" / "case.nii.gz")
    shutil.copy(path, tmp_path / "refs" / "case.nii.gz")
    labels_json = json.loads((default_bundle_path() / "model.json").read_text())["labels"]
    (tmp_path / "refs" / "dataset.json").write_text(json.dumps({"labels": labels_json}))
    code2, _, stderr2 = run("evaluate", tmp_path / "pred", tmp_path / "refs", "-o", tmp_path / "ev")
    assert code2 == 1
    reason = line.split(": ", 2)[-1].split(";")[0].split(" (")[0]
    assert reason in stderr2, (line, stderr2)
    assert hash_tree(path) == before


# ---------------------------------------------------------------------------------------------- outputs


@pytest.fixture()
def inputs(tmp_path):
    """A scan, its reference and a model bundle, copied so that any write would show."""
    scan = tmp_path / "in" / "ct.nii.gz"
    scan.parent.mkdir()
    shutil.copy(SAMPLE_NIFTI, scan)
    ref = tmp_path / "in" / "ref.nii.gz"
    shutil.copy(SAMPLE_LABELS, ref)
    dicom = tmp_path / "dicom"
    shutil.copytree(SAMPLE_DICOM, dicom)
    model = _bundle_copy(tmp_path)
    return {"scan": scan, "reference": ref, "dicom": dicom, "model": model}


@pytest.mark.parametrize(
    "output, source",
    [
        ("scan", "scan"),
        ("reference", "scan"),
        ("dicom/mask.nii.gz", "dicom"),
        ("link.nii.gz", "scan"),  # a symbolic link to the reference
        ("hardlink.nii.gz", "scan"),  # a hard link to the reference
    ],
)
def test_segment_never_writes_over_its_inputs(tmp_path, inputs, output, source):
    if output == "link.nii.gz":
        (tmp_path / "link.nii.gz").symlink_to(inputs["reference"])
        out = tmp_path / "link.nii.gz"
    elif output == "hardlink.nii.gz":
        out = tmp_path / "hardlink.nii.gz"
        out.hardlink_to(inputs["reference"])
    else:
        out = inputs[output] if output in inputs else tmp_path / output
    before = hash_tree(*inputs.values())
    code, _, stderr = run("segment", inputs[source], "-o", out, "--reference", inputs["reference"], "--model", inputs["model"])
    assert code == 1 and "refusing to write" in one_error_line(stderr)
    assert hash_tree(*inputs.values()) == before


@pytest.mark.parametrize("output", ["/proc/medseg/mask.nii.gz", "FILE/mask.nii.gz", "mask.png", "DIR"])
def test_unwritable_outputs_fail_before_any_work(tmp_path, inputs, monkeypatch, output):
    import medseg.inference as inference

    (tmp_path / "FILE").write_text("a file, not a folder")
    (tmp_path / "DIR.nii.gz").mkdir()
    out = Path(output.replace("FILE", str(tmp_path / "FILE"))) if output.startswith(("/", "FILE")) else tmp_path / output
    if output == "DIR":
        out = tmp_path / "DIR.nii.gz"
    calls = []
    monkeypatch.setattr(inference, "predict_volume", lambda *a, **k: calls.append(1))
    code, _, stderr = run("segment", inputs["scan"], "-o", out)
    assert code == 1 and str(out.name) in one_error_line(stderr)
    assert calls == []


# ---------------------------------------------------------------------------------------------- options


@pytest.mark.parametrize("device", ["tpu9", "cuda:x", "gpu", "cpu:3", ""])
def test_bad_devices_are_one_line_errors(device):
    with pytest.raises(MedsegError, match="--device"):
        resolve_device(device)
    code, _, stderr = run("segment", SAMPLE_NIFTI, "-o", "/tmp/never-written.nii.gz", "--device", device)
    assert code == 1 and "--device" in one_error_line(stderr)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_cuda_without_a_gpu():
    with pytest.raises(MedsegError, match="no CUDA device"):
        resolve_device("cuda")


@pytest.mark.parametrize(
    "seeds, expected",
    [("5-1", "runs backwards"), ("x", "expected a range"), ("", "no seed"), ("1,1", "given twice"),
     ("-3", "0 or more"), ("0-99999", "at most")],
)
def test_phantom_seed_errors(tmp_path, seeds, expected):
    code, _, stderr = run("phantom", tmp_path / "ds", "--seeds", seeds)
    assert code == 1 and expected in one_error_line(stderr)
    assert not (tmp_path / "ds").exists()


def test_phantom_refuses_an_existing_dataset_unless_overwrite(tmp_path):
    from medseg.phantom import make_dataset

    ds = make_dataset(tmp_path / "ds", [1], shape=(24, 20, 6))
    before = hash_tree(ds)
    code, _, stderr = run("phantom", ds, "--seeds", "2")
    assert code == 1 and "--overwrite" in one_error_line(stderr)
    assert hash_tree(ds) == before
    code, _, stderr = run("phantom", ds, "--seeds", "1", "--add")
    assert code == 1 and "already holds case phantom_0001" in one_error_line(stderr)
    assert hash_tree(ds) == before
    code, _, stderr = run("phantom", tmp_path / "none", "--seeds", "1", "--add")
    assert code == 1 and "no dataset to add to" in one_error_line(stderr)
    assert not (tmp_path / "none").exists()


def test_set_postprocessing_refuses_to_write_into_its_bundle(tmp_path):
    from medseg.bundle import default_bundle_path

    code, _, stderr = run("set-postprocessing", default_bundle_path(), "main-piece", "-o", default_bundle_path() / "x")
    assert code == 1 and "refusing to write into the model bundle" in one_error_line(stderr)
    assert not (default_bundle_path() / "x").exists()
    code, _, stderr = run("set-postprocessing", default_bundle_path(), "holes", "-o", tmp_path / "out")
    assert code == 1 and "expected none or main-piece" in one_error_line(stderr)


# ---------------------------------------------------------------------------------------------- child processes


@pytest.mark.slow
def test_cli_process_exit_codes_and_clean_stderr(tmp_path, phantom):
    """As a user runs it: exit 1, one line, no traceback, no third-party warning."""
    nan = tmp_path / "nan.nii.gz"
    nib.save(nib.Nifti1Image(_values("all NaN", phantom.image), np.eye(4)), str(nan))
    raw = tmp_path / "raw.nii.gz"
    write_nifti(phantom, raw)
    img = nib.load(str(raw))
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj).astype(np.int16) + np.int16(1024), img.affine), str(raw))
    cases = [
        (["segment", nan, "-o", tmp_path / "a.nii.gz"], 1, "no finite voxel"),
        (["segment", SAMPLE_NIFTI, "-o", tmp_path / "b.nii.gz", "--device", "tpu9"], 1, "--device tpu9"),
        (["segment", raw, "-o", tmp_path / "c.nii.gz"], 0, "outside the range"),
    ]
    for args, code, expected in cases:
        r = subprocess.run([sys.executable, "-m", "medseg.cli", *map(str, args)], capture_output=True, text=True,
                           timeout=300)
        lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
        assert r.returncode == code, (args, r.stderr)
        assert "Traceback" not in r.stderr and "Warning:" not in r.stderr and "warn(" not in r.stderr, r.stderr
        prefix = "error:" if code else "warning:"
        flagged = [ln for ln in lines if ln.startswith(("error:", "warning:"))]
        assert len(flagged) == 1 and flagged[0].startswith(prefix) and expected in flagged[0], r.stderr
        if code:
            assert len(lines) == 1, r.stderr


@pytest.mark.slow
def test_evaluate_leaves_its_inputs_alone(tmp_path):
    from medseg.phantom import make_dataset

    pred, refs = tmp_path / "pred", tmp_path / "refs"
    pred.mkdir()
    refs.mkdir()
    shutil.copy(SAMPLE_LABELS, pred / "case.nii.gz")
    shutil.copy(SAMPLE_LABELS, refs / "case.nii.gz")
    before = hash_tree(pred, refs)
    code, _, stderr = run("evaluate", pred, refs)  # writes evaluation.csv/json beside the predictions
    assert code == 0, stderr
    after = hash_tree(pred, refs)
    assert {k: v for k, v in after.items() if "evaluation." not in k} == before
    (tmp_path / "file").write_text("x")
    code, _, stderr = run("evaluate", pred, refs, "-o", tmp_path / "file")
    assert code == 1 and "is a file" in one_error_line(stderr)
    ds = make_dataset(tmp_path / "ds", [3], shape=(32, 32, 6))
    model = _bundle_copy(tmp_path)
    before = hash_tree(ds, model)
    code, _, stderr = run("evaluate", "--model", model, "--dataset", ds, "-o", tmp_path / "ev", "--no-hd95")
    assert code == 0, stderr
    assert hash_tree(ds, model) == before


@pytest.mark.slow
def test_batch_records_doubts_per_case(tmp_path, phantom):
    src = tmp_path / "in"
    src.mkdir()
    write_nifti(phantom, src / "ok.nii.gz")
    img = nib.load(str(src / "ok.nii.gz"))
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj).astype(np.int16) + np.int16(1024), img.affine), str(src / "raw.nii.gz"))
    before = hash_tree(src)
    code, _, stderr = run("batch", src, tmp_path / "out")
    assert code == 0, stderr
    rows = {r["case"]: r for r in json.loads((tmp_path / "out" / "summary.json").read_text())["cases"]}
    assert rows["ok.nii.gz"]["warning"] == "" and rows["ok.nii.gz"]["status"] == "done"
    assert "outside the range" in rows["raw.nii.gz"]["warning"] and rows["raw.nii.gz"]["status"] == "done"
    assert [ln for ln in stderr.splitlines() if ln.startswith("warning:")] == [f"warning: {rows['raw.nii.gz']['warning']}"]
    assert hash_tree(src) == before


@pytest.mark.parametrize("kind", ["all NaN", "constant"])
def test_training_refuses_garbage_images(tmp_path, kind):
    from medseg.data import find_cases
    from medseg.training import prepare_cases

    ds = make_dataset(tmp_path / "ds", [1, 2], shape=(32, 32, 6))
    image = ds / "imagesTr" / "phantom_0002_0000.nii.gz"
    img = nib.load(str(image))
    nib.save(nib.Nifti1Image(_values(kind, np.asarray(img.dataobj)), img.affine), str(image))
    cases, _ = find_cases(ds)
    with pytest.raises(MedsegError, match="phantom_0002_0000.nii.gz") as info:
        prepare_cases(cases, load_bundle().card, workers=1)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "args, expected",
    [
        (["segment", "scan.nii.gz", "-o", "m.nii.gz", "--batch-size", "0"], "--batch-size"),
        (["segment", "scan.nii.gz"], "Missing option '-o'"),
        (["train", "DS", "-o", "RUN", "--epochs", "many"], "--epochs"),
        (["info", "scan.nii.gz", "--bogus"], "--bogus"),
        (["frobnicate"], "No such command"),
    ],
)
def test_usage_errors_are_one_line_too(args, expected):
    r = subprocess.run([sys.executable, "-m", "medseg.cli", *args], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and expected in one_error_line(r.stderr) and "--help" in r.stderr


def test_series_option_on_an_image_file_is_refused():
    with pytest.raises(MedsegError, match="picks a DICOM series"):
        load_scan(SAMPLE_NIFTI, series_uid="1.2.3")
