"""`medseg batch` hardening: all-or-nothing cases (preview + mask), symlink loops and dangling links,
colliding output names, outputs checked before any work, inputs never written."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import hash_tree

import medseg.batch as batch_mod
import medseg.inference as inference_mod
from medseg.batch import BatchCase, check_outputs, find_scans, run_batch, write_summary
from medseg.errors import MedsegError
from medseg.io import load_scan
from medseg.phantom import make_phantom, write_dicom_series, write_nifti

SHAPE = (24, 20, 10)


@pytest.fixture(scope="module")
def bundle():
    from medseg.bundle import load_bundle

    return load_bundle()



def _scan(path: Path, seed: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_nifti(make_phantom(seed, shape=SHAPE), path)
    return path


def _rows(result) -> dict[str, dict]:
    return {r["case"]: r for r in result.rows}


def _one_line(text: str) -> bool:
    return bool(text) and "\n" not in text and "Traceback" not in text


# ------------------------------------------------------------------ all outputs of a case, or none


def _fail_preview_raises(monkeypatch, case):
    def boom(*args, **kwargs):
        raise RuntimeError("preview renderer crashed\nsecond line of detail")

    monkeypatch.setattr(batch_mod, "write_preview", boom)


def _fail_preview_is_dir(monkeypatch, case):
    case.preview.mkdir(parents=True)
    (case.preview / "keep").write_text("in the way")


def _fail_mask_raises(monkeypatch, case):
    def boom(labels, scan, path, *args, **kwargs):
        assert case.preview.is_file(), "the preview is written before the mask"
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(batch_mod, "save_result", boom)


@pytest.mark.parametrize("fault", [_fail_preview_raises, _fail_preview_is_dir, _fail_mask_raises],
                         ids=["preview-raises", "preview-is-a-folder", "mask-write-fails"])
@pytest.mark.slow
def test_failed_case_leaves_no_output_and_is_redone(bundle, tmp_path, monkeypatch, fault):
    src, out = tmp_path / "in", tmp_path / "out"
    _scan(src / "a.nii.gz", 1)
    _scan(src / "b.nii.gz", 2)
    before = hash_tree(src)
    cases = find_scans(src, out, preview=True)
    a = next(c for c in cases if c.name == "a.nii.gz")
    with monkeypatch.context() as m:
        fault(m, a)
        # only case a meets the fault (the monkeypatched functions fail for every case, so run a alone)
        result = run_batch([a], bundle)
    row = _rows(result)["a.nii.gz"]
    assert row["status"] == "failed" and _one_line(row["error"]) and "a.nii.gz" in row["error"], row
    assert not a.output.exists(), "a failed case must not leave its mask (the resume marker)"
    if fault is not _fail_preview_is_dir:
        assert not a.preview.exists()
    assert not [p.name for p in out.rglob("*") if ".partial" in p.name]
    if fault is _fail_preview_is_dir:
        (a.preview / "keep").unlink()
        a.preview.rmdir()
    # the next run, without the fault, redoes a (and does b)
    result = run_batch(find_scans(src, out, preview=True), bundle)
    rows = _rows(result)
    assert rows["a.nii.gz"]["status"] == "done" and rows["b.nii.gz"]["status"] == "done", rows
    for name in ("a", "b"):
        assert load_scan(out / f"{name}.nii.gz").shape == SHAPE
        assert (out / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # and a third run has nothing left to do
    assert {r["status"] for r in run_batch(find_scans(src, out, preview=True), bundle).rows} == {"skipped"}
    assert hash_tree(src) == before


@pytest.mark.slow
def test_resume_needs_every_output(bundle, tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    for s in (3, 4, 5):
        _scan(src / f"c{s}.nii.gz", s)
    before = hash_tree(src)
    assert {r["status"] for r in run_batch(find_scans(src, out, preview=True), bundle).rows} == {"done"}
    # what a kill -9 may leave: a mask whose preview is missing cannot happen (preview first), but a
    # preview without its mask can, as can temporary files
    (out / "c3.nii.gz").unlink()
    (out / "c4.png").unlink()
    (out / ".c5.nii.gz.deadbeef.partial.nii.gz").write_bytes(b"half")
    stamp = (out / "c5.nii.gz").stat().st_mtime_ns
    rows = _rows(run_batch(find_scans(src, out, preview=True), bundle))
    assert [rows[f"c{s}.nii.gz"]["status"] for s in (3, 4, 5)] == ["done", "done", "skipped"]
    assert (out / "c5.nii.gz").stat().st_mtime_ns == stamp
    assert not [p.name for p in out.iterdir() if ".partial" in p.name]
    assert hash_tree(src) == before


# ------------------------------------------------------------------------------ symbolic links


@pytest.mark.slow
def test_symlink_loops_visit_each_real_folder_once(bundle, tmp_path):
    src, out, outside = tmp_path / "in", tmp_path / "out", tmp_path / "elsewhere"
    _scan(src / "top.nii.gz", 10)
    _scan(src / "a" / "one.nii.gz", 11)
    _scan(src / "zreal" / "two.nii.gz", 12)
    _scan(outside / "ext.nii.gz", 13)
    (src / "a" / "loop").symlink_to(src / "a")  # a/loop -> a
    (src / "a" / "up").symlink_to("..")  # a/up -> in (relative)
    (src / "alias").symlink_to(src / "zreal")  # sorts before its target: the real name wins
    (src / "again.nii.gz").symlink_to(src / "top.nii.gz")  # a second name of a scan already taken
    (src / "ext.nii.gz").symlink_to(outside / "ext.nii.gz")  # a real scan outside the tree: taken once
    (src / "extdir").symlink_to(outside)  # ... also reachable through a folder link: still once
    before = hash_tree(src)
    t0 = time.perf_counter()
    cases = find_scans(src, out, recursive=True)
    assert time.perf_counter() - t0 < 5
    names = sorted(c.name for c in cases)
    assert names == ["a/one.nii.gz", "ext.nii.gz", "top.nii.gz", "zreal/two.nii.gz"], names
    result = run_batch(cases, bundle)
    assert {r["status"] for r in result.rows} == {"done"} and len(result.rows) == 4
    masks = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.nii.gz"))
    assert masks == ["a/one.nii.gz", "ext.nii.gz", "top.nii.gz", "zreal/two.nii.gz"]
    assert hash_tree(src) == before
    assert hash_tree(outside) == {str(outside / "ext.nii.gz"): before[str(src / "ext.nii.gz")]}


@pytest.mark.parametrize("kind", ["file", "folder", "self-loop"])
@pytest.mark.slow
def test_dangling_links_are_reported_as_skipped(bundle, tmp_path, kind):
    src, out = tmp_path / "in", tmp_path / "out"
    _scan(src / "good.nii.gz", 20)
    if kind == "file":
        link, target = src / "gone.nii.gz", tmp_path / "missing.nii.gz"
    elif kind == "folder":
        link, target = src / "series_gone", tmp_path / "missing_series"
    else:
        link, target = src / "self.nii.gz", src / "self.nii.gz"
    link.symlink_to(target)
    before = hash_tree(src)
    cases = find_scans(src, out, recursive=True)
    result = run_batch(cases, bundle)
    rows = _rows(result)
    assert set(rows) == {"good.nii.gz", link.name}
    assert rows["good.nii.gz"]["status"] == "done"
    row = rows[link.name]
    assert row["status"] == "skipped" and row["output"] == "", row
    expected = "symbolic link loop" if kind == "self-loop" else "dangling symbolic link"
    assert f"{expected} -> {target}" in row["error"] and str(link) in row["error"] and _one_line(row["error"])
    assert result.failed == 0
    csv_path, _ = write_summary(result.rows, out)
    assert {r["case"]: r["status"] for r in csv.DictReader(open(csv_path))}[link.name] == "skipped"
    assert hash_tree(src) == before


# --------------------------------------------------------------------------- colliding outputs


def _collide_nii_and_niigz(src: Path) -> tuple[set[str], str]:
    _scan(src / "a.nii", 30)
    _scan(src / "a.nii.gz", 31)
    return {"a.nii", "a.nii.gz"}, "a.nii.gz"


def _collide_file_and_dicom(src: Path) -> tuple[set[str], str]:
    _scan(src / "s1.nii.gz", 32)
    write_dicom_series(make_phantom(33, shape=SHAPE), src / "s1")
    return {"s1.nii.gz", "s1"}, "s1.nii.gz"


@pytest.mark.parametrize("make", [_collide_nii_and_niigz, _collide_file_and_dicom], ids=["nii+nii.gz", "file+dicom"])
@pytest.mark.slow
def test_colliding_outputs_fail_those_cases_only(bundle, tmp_path, make):
    src, out = tmp_path / "in", tmp_path / "out"
    colliding, mask = make(src)
    _scan(src / "b.nii.gz", 34)
    before = hash_tree(src)
    cases = find_scans(src, out)  # no longer raises
    result = run_batch(cases, bundle)
    rows = _rows(result)
    assert set(rows) == colliding | {"b.nii.gz"}
    assert rows["b.nii.gz"]["status"] == "done"
    for name in colliding:
        row = rows[name]
        assert row["status"] == "failed" and _one_line(row["error"]), row
        for other in colliding:  # names both inputs and the output
            assert str(src / other) in row["error"]
        assert str(out / mask) in row["error"]
    assert not (out / mask).exists()
    assert result.failed == len(colliding)
    assert hash_tree(src) == before


@pytest.mark.slow
def test_cli_collision_exit_code_and_summary(tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    _scan(src / "a.nii", 40)
    _scan(src / "a.nii.gz", 41)
    _scan(src / "b.nii.gz", 42)
    (src / "dangling.nii.gz").symlink_to(tmp_path / "nowhere.nii.gz")
    before = hash_tree(src)
    r = subprocess.run([sys.executable, "-m", "medseg.cli", "batch", str(src), str(out), "--recursive"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 1, r.stderr
    assert "Traceback" not in r.stderr
    rows = {x["case"]: x for x in csv.DictReader(open(out / "summary.csv"))}
    assert {k: v["status"] for k, v in rows.items()} == {
        "a.nii": "failed", "a.nii.gz": "failed", "b.nii.gz": "done", "dangling.nii.gz": "skipped"}
    assert "dangling symbolic link" in rows["dangling.nii.gz"]["error"]
    assert str(src / "a.nii") in r.stderr and str(src / "a.nii.gz") in r.stderr
    assert (out / "b.nii.gz").is_file() and not (out / "a.nii.gz").exists()
    assert hash_tree(src) == before


def test_an_input_folder_named_like_the_summary_is_refused_up_front(tmp_path):
    """Under --recursive, masks of an input folder called summary.csv/ would turn OUT/summary.csv
    into a folder, and the summary (written last) would be lost: that case fails before any work,
    the others are segmented, and the summary is written."""
    src, out = tmp_path / "in", tmp_path / "out"
    _scan(src / "a.nii.gz", 40)
    _scan(src / "summary.csv" / "b.nii.gz", 41)
    _scan(src / "summary.json" / "c.nii.gz", 42)
    cases = check_outputs(find_scans(src, out, recursive=True), out)
    errors = {c.name: c.error for c in cases}
    assert errors["a.nii.gz"] is None
    for case, summary in (("summary.csv/b.nii.gz", "summary.csv"), ("summary.json/c.nii.gz", "summary.json")):
        assert errors[case] == (f"{out / summary / case.split('/')[1]}: would replace the batch summary "
                                f"{out / summary}; rename the input folder or choose another output folder "
                                "(not segmented)")
    rows, any_failed = batch_mod.segment_folder(src, out, recursive=True, device="cpu")
    assert any_failed and {r["case"]: r["status"] for r in rows} == {
        "a.nii.gz": "done", "summary.csv/b.nii.gz": "failed", "summary.json/c.nii.gz": "failed"}
    assert (out / "summary.csv").is_file() and (out / "summary.json").is_file() and (out / "a.nii.gz").is_file()


# ------------------------------------------------------------- outputs checked before the work


@pytest.fixture
def no_segmenting(monkeypatch):
    calls = []

    def forbidden(*args, **kwargs):
        calls.append(args)
        raise AssertionError("no model may be prepared or used")

    monkeypatch.setattr(inference_mod.Predictor, "__init__", forbidden)
    monkeypatch.setattr(inference_mod.Predictor, "predict_scan", forbidden)
    return calls


def _unwritable(tmp_path: Path, where: str) -> Path:
    if where == "proc":
        return Path("/proc/medseg-test")
    if os.geteuid() == 0:
        pytest.skip("running as root: a chmod 0o555 folder stays writable")
    ro = tmp_path / "readonly"
    ro.mkdir()
    ro.chmod(0o555)
    return ro / "out"


@pytest.mark.parametrize("where", ["proc", "read-only-folder"])
def test_unwritable_output_refused_before_any_work(bundle, tmp_path, no_segmenting, where):
    src = tmp_path / "in"
    _scan(src / "a.nii.gz", 50)
    _scan(src / "sub" / "b.nii.gz", 51)
    before = hash_tree(src)
    out = _unwritable(tmp_path, where)
    try:
        cases = find_scans(src, out, recursive=True, preview=True)
        assert len(cases) == 2
        with pytest.raises(MedsegError) as exc:
            check_outputs(cases, out)
        assert _one_line(str(exc.value)) and str(out) in str(exc.value)
        seen = []
        with pytest.raises(MedsegError) as exc:  # run_batch checks too, before segmenting anything
            run_batch(cases, bundle, on_case_done=seen.append, on_case_start=lambda *a: seen.append(a))
        assert _one_line(str(exc.value))
        assert seen == [] and no_segmenting == []
    finally:
        if where != "proc":
            (tmp_path / "readonly").chmod(0o755)
    assert hash_tree(src) == before


@pytest.mark.slow
def test_cli_unwritable_output_one_line(tmp_path):
    src = tmp_path / "in"
    _scan(src / "a.nii.gz", 52)
    before = hash_tree(src)
    r = subprocess.run([sys.executable, "-m", "medseg.cli", "batch", str(src), "/proc/medseg-test"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "/proc/medseg-test" in r.stderr and "cannot write" in r.stderr, r.stderr
    assert hash_tree(src) == before


def test_input_link_into_output_folder_is_never_overwritten(bundle, tmp_path, no_segmenting):
    src, out = tmp_path / "in", tmp_path / "out"
    _scan(out / "x.nii.gz", 60)  # a scan that lives in the output folder ...
    (src).mkdir()
    (src / "x.nii.gz").symlink_to(out / "x.nii.gz")  # ... and is an input through a link
    before_in, before_out = hash_tree(src), hash_tree(out)
    cases = find_scans(src, out)
    result = run_batch(check_outputs(cases, out), bundle)
    row = _rows(result)["x.nii.gz"]
    assert row["status"] == "failed" and "refusing to write over the input" in row["error"], row
    assert _one_line(row["error"]) and no_segmenting == []
    assert hash_tree(src) == before_in and hash_tree(out) == before_out


@pytest.mark.slow
def test_output_that_is_another_input_fails_that_case(bundle, tmp_path):
    # INPUT_DIR inside OUTPUT_DIR with --pattern '*': in/scans/y.nii.gz -> OUT/scans/y.nii.gz, which
    # is the input in/y.nii.gz; and a file named like a mask of a DICOM folder
    out = tmp_path / "data"
    src = out / "scans"
    _scan(src / "y.nii.gz", 61)
    _scan(src / "scans" / "y.nii.gz", 62)
    _scan(src / "z.nii.gz", 63)
    before = hash_tree(src)
    cases = find_scans(src, out, pattern="*", recursive=True)
    result = run_batch(check_outputs(cases, out), bundle)
    rows = _rows(result)
    assert rows["scans/y.nii.gz"]["status"] == "failed"
    assert "refusing to write over the input" in rows["scans/y.nii.gz"]["error"]
    assert rows["y.nii.gz"]["status"] == "done" and rows["z.nii.gz"]["status"] == "done"
    assert hash_tree(src) == before


def test_output_inside_input_dicom_folder_fails(bundle, tmp_path):
    src = tmp_path / "in"
    write_dicom_series(make_phantom(64, shape=SHAPE), src / "series")
    _scan(src / "b.nii.gz", 65)
    before = hash_tree(src)
    out = src / "series" / "masks"  # would join the series on the next read
    cases = find_scans(src, out)
    rows = _rows(run_batch(check_outputs(cases, out), bundle))
    assert rows["series"]["status"] == "failed" and "input DICOM folder" in rows["series"]["error"]
    assert rows["b.nii.gz"]["status"] == "failed" and "input DICOM folder" in rows["b.nii.gz"]["error"]
    assert hash_tree(src) == before


# ---------------------------------------------------------------- unexpected errors stay rows


def _load_raises(monkeypatch):
    real = batch_mod.load_scan

    def load(path, **kwargs):
        if Path(path).name == "bad.nii.gz":
            raise ValueError("decoder exploded\nwith a second line")
        return real(path, **kwargs)

    monkeypatch.setattr(batch_mod, "load_scan", load)


def _prefetch_thread_raises(monkeypatch):
    real = batch_mod._load

    def load(case, modality):
        if case.name == "bad.nii.gz":
            raise MemoryError("no memory for the prefetch")
        return real(case, modality)

    monkeypatch.setattr(batch_mod, "_load", load)


def _segment_raises(monkeypatch):
    real = inference_mod.Predictor.predict_scan

    def seg(self, scan, *args, **kwargs):
        if Path(str(scan.source)).name == "bad.nii.gz":
            raise RuntimeError("CUDA error: an illegal memory access\nmore")
        return real(self, scan, *args, **kwargs)

    monkeypatch.setattr(inference_mod.Predictor, "predict_scan", seg)


@pytest.mark.parametrize("fault", [_load_raises, _prefetch_thread_raises, _segment_raises],
                         ids=["load", "prefetch-thread", "segment"])
@pytest.mark.slow
def test_unexpected_errors_become_failed_rows(bundle, tmp_path, monkeypatch, fault):
    src, out = tmp_path / "in", tmp_path / "out"
    for name, seed in (("a.nii.gz", 70), ("bad.nii.gz", 71), ("c.nii.gz", 72)):
        _scan(src / name, seed)
    before = hash_tree(src)
    fault(monkeypatch)
    rows = _rows(run_batch(find_scans(src, out), bundle))
    assert rows["a.nii.gz"]["status"] == "done" and rows["c.nii.gz"]["status"] == "done"
    bad = rows["bad.nii.gz"]
    assert bad["status"] == "failed" and _one_line(bad["error"]) and str(src / "bad.nii.gz") in bad["error"], bad
    assert not (out / "bad.nii.gz").exists()
    assert hash_tree(src) == before


def test_marked_cases_are_rows_without_segmenting(bundle, tmp_path, no_segmenting):
    cases = [BatchCase("x.nii.gz", tmp_path / "x.nii.gz", tmp_path / "o" / "x.nii.gz", error="x: collides"),
             BatchCase("y", tmp_path / "y", Path(""), skip_reason="y: dangling symbolic link -> z")]
    seen = []
    result = run_batch(cases, bundle, on_case_done=seen.append)
    assert [(r["case"], r["status"]) for r in result.rows] == [("x.nii.gz", "failed"), ("y", "skipped")]
    assert len(seen) == 2 and no_segmenting == [] and not (tmp_path / "o").exists()
