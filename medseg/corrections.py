"""Autosaved corrections: label maps painted on a scan, kept in medseg's cache so a crash loses nothing.

Each scan gets a folder in ``corrections_root()`` (``$MEDSEG_CACHE/corrections``, by default
``~/.cache/medseg/corrections`` or ``%LOCALAPPDATA%\\medseg\\cache\\corrections``) named after
:func:`scan_key`: its source path, grid and a sample of its voxels, so the same scan opened again
finds its corrections and another scan at the same path does not. Inside, one NIfTI mask per
corrected layer (on the scan's grid, written atomically) and ``corrections.json`` naming each
file's layer, labels and time. Nothing is ever written beside the scan itself.

>>> store = CorrectionStore(scan)                     # doctest: +SKIP
>>> store.save("CT corrected", labels, {"liver": 1})  # doctest: +SKIP
>>> [c.layer for c in store.load()]                   # doctest: +SKIP
['CT corrected']
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import MedsegError
from .io import Scan, atomic_write_text, save_mask
from .schema import read_json_object

INDEX = "corrections.json"


def cache_root() -> Path:
    """medseg's cache folder: ``$MEDSEG_CACHE``, else the platform's user cache folder."""
    if os.environ.get("MEDSEG_CACHE"):
        return Path(os.environ["MEDSEG_CACHE"]).expanduser()
    if os.name == "nt" and os.environ.get("LOCALAPPDATA"):
        return Path(os.environ["LOCALAPPDATA"]) / "medseg" / "cache"
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "medseg"


def corrections_root() -> Path:
    return cache_root() / "corrections"


def scan_key(scan: Scan) -> str:
    """A stable name for a scan: its source, series, grid and a sparse sample of its voxels."""
    h = hashlib.sha256()
    source = Path(scan.source).expanduser() if scan.source is not None else Path("scan")
    try:
        source = source.resolve()
    except OSError:
        pass
    h.update(str(source).encode())
    h.update(str(scan.series_uid or "").encode())
    h.update(repr(scan.shape).encode())
    h.update(np.round(np.asarray(scan.affine, dtype=np.float64), 3).tobytes())
    arr = scan.array
    step = tuple(max(1, n // 16) for n in arr.shape)  # ~4000 voxels: cheap, tells scans apart
    h.update(np.ascontiguousarray(arr[:: step[0], :: step[1], :: step[2]]).tobytes())
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", source.name)[:40] or "scan"
    return f"{stem}-{h.hexdigest()[:16]}"


@dataclass
class Correction:
    layer: str  # the layer's name when it was saved
    labels: np.ndarray  # on the scan's grid (scan.array's axis order)
    names: dict[str, int]
    saved: str  # local time, ISO format
    path: Path
    review: dict = field(default_factory=dict)  # the review's state: per-slice uncertainty, slices marked reviewed


class CorrectionStore:
    """The autosaved corrections of one scan. Thread-safe: saves may run in a background thread."""

    _lock = threading.Lock()

    def __init__(self, scan: Scan, root: str | os.PathLike | None = None) -> None:
        self.scan = scan
        self.folder = Path(root) if root is not None else corrections_root()
        self.folder = self.folder / scan_key(scan)

    def _index(self) -> dict:
        path = self.folder / INDEX
        if not path.exists():
            return {}
        try:
            return read_json_object(path)
        except MedsegError:
            return {}  # a damaged index: the masks are still listed by their files below

    def _file_for(self, index: dict, layer: str) -> str:
        for name, entry in index.items():
            if entry.get("layer") == layer:
                return name
        n = len(index) + 1
        while f"corrected_{n}.nii.gz" in index or (self.folder / f"corrected_{n}.nii.gz").exists():
            n += 1
        return f"corrected_{n}.nii.gz"

    def save(self, layer: str, labels: np.ndarray, names: dict[str, int], *, was: str | None = None,
             review: dict | None = None) -> Path:
        """Write ``labels`` (scan order) as the autosave of ``layer`` (renamed from ``was``, if given).

        ``review``: JSON-able state of the review beside it (``uncertainty``: one score per axial
        slice; ``reviewed``: the slices marked reviewed), restored with the labels."""
        with self._lock:
            index = self._index()
            file = self._file_for(index, was if was is not None else layer)
            out = save_mask(labels, self.scan, self.folder / file)
            index[file] = {"layer": layer, "labels": {k: int(v) for k, v in names.items()},
                           "saved": time.strftime("%Y-%m-%d %H:%M:%S"), "source": str(self.scan.source),
                           "review": dict(review or {})}
            atomic_write_text(self.folder / INDEX, json.dumps(index, indent=2) + "\n")
        return out

    def forget(self, layer: str) -> None:
        """Drop the autosave of ``layer`` (e.g. once the user saved it to a file of their own)."""
        with self._lock:
            index = self._index()
            for name in [n for n, e in index.items() if e.get("layer") == layer]:
                (self.folder / name).unlink(missing_ok=True)
                del index[name]
            if index:
                atomic_write_text(self.folder / INDEX, json.dumps(index, indent=2) + "\n")
            elif self.folder.exists():
                (self.folder / INDEX).unlink(missing_ok=True)

    def load(self) -> list[Correction]:
        """Every autosaved correction of this scan that still fits its grid, oldest first."""
        from .geometry import array_on_grid_of
        from .io import load_scan

        index = self._index()
        found = []
        for name, entry in sorted(index.items(), key=lambda kv: kv[1].get("saved", "")):
            path = self.folder / name
            try:
                mask = load_scan(path)
                labels = array_on_grid_of(self.scan, mask)
            except MedsegError:
                continue  # unreadable or from another grid: never shown on the wrong scan
            names = {str(k): int(v) for k, v in dict(entry.get("labels") or {}).items()}
            review = entry.get("review") if isinstance(entry.get("review"), dict) else {}
            found.append(Correction(str(entry.get("layer", name)), labels, names, str(entry.get("saved", "")), path,
                                    review))
        return found


__all__ = ["Correction", "CorrectionStore", "cache_root", "corrections_root", "scan_key"]
