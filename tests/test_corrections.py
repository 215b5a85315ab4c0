"""Autosaved corrections (medseg.corrections): kept in the cache, found again for the same scan only."""

from __future__ import annotations

import numpy as np
import pytest

from medseg.corrections import CorrectionStore, cache_root, scan_key
from medseg.io import Scan, load_scan, save_image

NAMES = {"background": 0, "liver": 1, "spleen": 2}


def _scan(tmp_path, seed=0, affine=None, name="ct.nii.gz"):
    rng = np.random.default_rng(seed)
    arr = rng.integers(-1000, 400, size=(12, 10, 6)).astype(np.int16)
    aff = np.diag([-0.8, -0.8, 3.0, 1.0]) if affine is None else affine
    save_image(Scan(arr, aff, tmp_path / "elsewhere", modality="CT"), tmp_path / name)
    return load_scan(tmp_path / name)


def test_cache_root_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDSEG_CACHE", str(tmp_path / "c"))
    assert cache_root() == tmp_path / "c"
    monkeypatch.delenv("MEDSEG_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    if cache_root().parent == tmp_path / "xdg":  # not Windows
        assert cache_root() == tmp_path / "xdg" / "medseg"


def test_save_load_rename_and_forget(tmp_path):
    scan = _scan(tmp_path)
    labels = np.zeros(scan.shape, np.uint8)
    labels[2:5, 3:6, 1:3] = 2
    store = CorrectionStore(scan)
    out = store.save("ct corrected", labels, NAMES)
    assert out.is_file() and str(tmp_path / "medseg_cache") not in str(scan.source)
    assert not (scan.source.parent / "corrections.json").exists()  # nothing beside the scan
    (found,) = CorrectionStore(scan).load()
    assert found.layer == "ct corrected" and found.names == NAMES
    np.testing.assert_array_equal(found.labels, labels)
    # the layer is renamed (kept after a re-segment): the same file follows the new name
    labels[0, 0, 0] = 1
    store.save("ct corrected (kept 1)", labels, NAMES, was="ct corrected")
    store.save("ct corrected", np.zeros(scan.shape, np.uint8), NAMES)
    found = {c.layer: c for c in store.load()}
    assert set(found) == {"ct corrected (kept 1)", "ct corrected"}
    np.testing.assert_array_equal(found["ct corrected (kept 1)"].labels, labels)
    store.forget("ct corrected")
    assert [c.layer for c in store.load()] == ["ct corrected (kept 1)"]
    # the review's state travels with the labels
    store.save("ct corrected (kept 1)", labels, NAMES, review={"uncertainty": [0.1, 0.0], "reviewed": [1]})
    (found,) = store.load()
    assert found.review == {"uncertainty": [0.1, 0.0], "reviewed": [1]}


def test_another_scan_never_gets_these_corrections(tmp_path):
    scan = _scan(tmp_path)
    CorrectionStore(scan).save("ct corrected", np.ones(scan.shape, np.uint8), NAMES)
    other_voxels = _scan(tmp_path, seed=1, name="ct.nii.gz")  # same path, new contents
    moved = _scan(tmp_path, affine=np.diag([-0.8, -0.8, 2.5, 1.0]))  # same voxels, other grid
    assert scan_key(other_voxels) != scan_key(scan) and scan_key(moved) != scan_key(scan)
    assert CorrectionStore(other_voxels).load() == [] and CorrectionStore(moved).load() == []
    assert scan_key(_scan(tmp_path)) == scan_key(scan)  # the same scan, loaded again


def test_damaged_autosaves_are_skipped_not_shown_wrong(tmp_path):
    scan = _scan(tmp_path)
    store = CorrectionStore(scan)
    path = store.save("ct corrected", np.ones(scan.shape, np.uint8), NAMES)
    path.write_bytes(b"not a nifti")
    assert store.load() == []
    (store.folder / "corrections.json").write_text("{broken")
    assert store.load() == []


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_label_values_survive(tmp_path, dtype):
    scan = _scan(tmp_path)
    labels = np.zeros(scan.shape, dtype)
    labels[1, 1, 1] = 300 if dtype == np.uint16 else 200
    names = {"background": 0, "x": int(labels.max())}
    CorrectionStore(scan).save("m", labels, names)
    (found,) = CorrectionStore(scan).load()
    assert int(found.labels.max()) == int(labels.max())
