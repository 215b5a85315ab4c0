from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "data"
SAMPLE = ROOT / "medseg" / "resources"  # the packaged sample case and model (`sample_data` links here)


@pytest.fixture(autouse=True)
def _own_cache(tmp_path_factory, monkeypatch):
    """Each test its own medseg cache (autosaved corrections): nothing leaks between tests or into ~/.cache."""
    monkeypatch.setenv("MEDSEG_CACHE", str(tmp_path_factory.mktemp("medseg_cache")))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED.is_dir():
        pytest.skip(f"real scans not available: {SHARED} is absent (see shared/data/README.md)")
    return SHARED


def hash_tree(*paths) -> dict[str, str]:
    """sha256 of every file under ``paths`` (files or folders; file links followed, folder links
    not, so a symbolic-link loop is read once), keyed by path: compare before and after a command
    to prove it left its inputs alone."""
    import hashlib
    import os

    digests: dict[str, str] = {}
    for root in map(Path, paths):
        files = [root] if root.is_file() else [
            Path(d) / n for d, _dirs, names in os.walk(root) for n in names  # os.walk does not follow folder links
        ]
        for p in sorted(files):
            if p.is_file():
                digests[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
    return digests


def assert_same_labels(got, want, err_msg: str = "", max_share: float = 0.005) -> None:
    """Two label maps of one model and input computed two ways (another batch size, one slice or
    the whole volume): equal but for the odd near-tied voxel. CPU kernels chosen per batch size
    round differently on some processors (seen on AMD EPYC: 1-2 voxels of 800-8600), which flips
    the argmax where two classes are within rounding of each other. A slice-order, flip or
    context error changes a large share of these tests' voxels (their labels vary slice to slice)."""
    import numpy as np

    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape and got.dtype == want.dtype, (err_msg, got.shape, want.shape, got.dtype, want.dtype)
    differ = int((got != want).sum())
    assert differ <= max(1, int(max_share * got.size)), f"{err_msg}: {differ} of {got.size} voxels differ"
