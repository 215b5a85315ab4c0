"""`medseg batch`: mixed folders, isolation of bad files, resume after SIGKILL, previews, 2 ranks."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from medseg.io import load_scan
from medseg.phantom import make_phantom, write_dicom_series, write_nifti

SHAPE, SPACING = (96, 96, 24), (4.0, 4.0, 8.0)


def _batch(*args, timeout=900, env=None):
    return subprocess.run([sys.executable, "-m", "medseg.cli", "batch", *map(str, args)],
                          capture_output=True, text=True, timeout=timeout, env=env)


def _good(folder, seeds):
    folder.mkdir(parents=True, exist_ok=True)
    for s in seeds:
        write_nifti(make_phantom(s, shape=SHAPE, spacing=SPACING), folder / f"case{s}.nii.gz", None)


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    d = tmp_path_factory.mktemp("mixed")
    _good(d, [61, 62])
    write_dicom_series(make_phantom(63, shape=SHAPE, spacing=SPACING), d / "dicom_case")
    data = (d / "case61.nii.gz").read_bytes()
    (d / "truncated.nii.gz").write_bytes(data[: len(data) // 2])
    (d / "not_an_image.nii").write_text("hello, not an image")
    (d / "notes.txt").write_text("not a scan, not matched by the pattern")
    return d


def _rows(out):
    return {r["case"]: r for r in csv.DictReader(open(out / "summary.csv"))}


@pytest.mark.slow
def test_mixed_folder_isolates_bad_files(mixed, tmp_path):
    before = {p.name: p.stat().st_mtime_ns for p in mixed.iterdir()}
    out = tmp_path / "out"
    r = _batch(mixed, out, "--preview")
    assert r.returncode == 1, r.stderr
    assert "Traceback" not in r.stderr
    rows = _rows(out)
    assert set(rows) == {"case61.nii.gz", "case62.nii.gz", "dicom_case", "truncated.nii.gz", "not_an_image.nii"}
    for name, mask in (("case61.nii.gz", "case61.nii.gz"), ("case62.nii.gz", "case62.nii.gz"),
                       ("dicom_case", "dicom_case.nii.gz")):
        assert rows[name]["status"] == "done" and float(rows[name]["liver_ml"]) > 100, rows[name]
        scan, m = load_scan(mixed / name), load_scan(out / mask)
        assert m.shape == scan.shape
        np.testing.assert_allclose(m.affine, scan.affine, atol=1e-4)
        assert set(np.unique(m.array)) <= {0, 1, 2, 3, 4, 5}
        png = (out / mask.replace(".nii.gz", ".png")).read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert rows["truncated.nii.gz"]["status"] == "failed" and "truncated.nii.gz" in rows["truncated.nii.gz"]["error"]
    assert rows["not_an_image.nii"]["status"] == "failed" and "not_an_image.nii" in rows["not_an_image.nii"]["error"]
    assert not (out / "truncated.nii.gz").exists() and not (out / "not_an_image.nii.gz").exists()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["counts"] == {"done": 3, "skipped": 0, "failed": 2}
    assert "truncated.nii.gz" in r.stderr and "not_an_image.nii" in r.stderr
    assert {p.name: p.stat().st_mtime_ns for p in mixed.iterdir()} == before  # inputs untouched
    # the preview is a real picture
    import matplotlib.image as mpimg

    assert mpimg.imread(out / "dicom_case.png").shape[2] in (3, 4)

    # a second run skips what is done and tries the bad files again
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("*.nii.gz")}
    r = _batch(mixed, out, "--preview")
    assert r.returncode == 1
    rows = _rows(out)
    assert [rows[n]["status"] for n in ("case61.nii.gz", "case62.nii.gz", "dicom_case")] == ["skipped"] * 3
    assert float(rows["case61.nii.gz"]["liver_ml"]) > 100  # volumes still reported
    assert {p: p.stat().st_mtime_ns for p in out.glob("*.nii.gz")} == stamps
    # --overwrite redoes them
    r = _batch(mixed, out, "--overwrite")
    assert [_rows(out)[n]["status"] for n in ("case61.nii.gz", "dicom_case")] == ["done", "done"]


@pytest.mark.slow
def test_killed_run_finishes_on_rerun(tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    _good(src, range(70, 76))
    proc = subprocess.Popen([sys.executable, "-m", "medseg.cli", "batch", str(src), str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and len(list(out.glob("case*.nii.gz"))) < 2:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    finished = len(list(out.glob("case*.nii.gz")))
    assert 1 <= finished < 6, "the run was not killed mid-way"
    r = _batch(src, out)
    assert r.returncode == 0, r.stderr
    rows = _rows(out)
    assert len(rows) == 6 and {r["status"] for r in rows.values()} <= {"done", "skipped"}
    assert sum(r["status"] == "skipped" for r in rows.values()) >= finished
    for s in range(70, 76):
        m = load_scan(out / f"case{s}.nii.gz")  # every mask complete and readable
        assert m.shape == load_scan(src / f"case{s}.nii.gz").shape
    assert not [p.name for p in out.iterdir() if ".partial" in p.name]


@pytest.mark.slow
def test_recursive_pattern_and_empty(tmp_path):
    src = tmp_path / "in"
    _good(src, [80])
    _good(src / "site_b", [81])
    r = _batch(src, tmp_path / "flat", "--pattern", "*.nii.gz")
    assert r.returncode == 0 and set(_rows(tmp_path / "flat")) == {"case80.nii.gz"}
    r = _batch(src, tmp_path / "deep", "--recursive")
    assert r.returncode == 0 and set(_rows(tmp_path / "deep")) == {"case80.nii.gz", "site_b/case81.nii.gz"}
    assert (tmp_path / "deep" / "site_b" / "case81.nii.gz").is_file()
    r = _batch(src, src)
    assert r.returncode == 1 and "output folder is the input folder" in r.stderr
    (tmp_path / "empty").mkdir()
    r = _batch(tmp_path / "empty", tmp_path / "o")
    assert r.returncode == 1 and "no scans found" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.slow
def test_two_ranks_split_the_work(tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    _good(src, range(90, 95))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "medseg.cli",
         "batch", str(src), str(out)],
        capture_output=True, text=True, timeout=900, env=env,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    rows = list(csv.DictReader(open(out / "summary.csv")))
    assert sorted(x["case"] for x in rows) == [f"case{s}.nii.gz" for s in range(90, 95)]  # each exactly once
    assert all(x["status"] == "done" for x in rows)
    assert not list(out.glob("summary.rank*"))  # merged by rank 0
    assert r.stdout.count("medseg batch:") == 1
