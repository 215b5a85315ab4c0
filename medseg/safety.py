"""Outputs that never go over inputs, and are known to be writable before the work starts.

Every command that writes calls :func:`refuse_overwriting_inputs` with its outputs and all of
its inputs (scan, reference, model bundle, dataset files) and :func:`ensure_writable` on each
output location *before* it reads, segments or trains anything, so a bad ``-o`` fails in a
second with a one-line message instead of after minutes of work, and never leaves a partial
file behind.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Iterable

from .errors import MedsegError


def _resolved(path: str | os.PathLike) -> Path:
    return Path(os.path.abspath(os.path.realpath(path)))


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """True when ``a`` and ``b`` name the same file or folder (symlinks and hard links included)."""
    ra, rb = _resolved(a), _resolved(b)
    if ra == rb:
        return True
    try:
        return os.path.samefile(ra, rb)
    except OSError:
        return False


def is_inside(path: str | os.PathLike, folder: str | os.PathLike) -> bool:
    """True when ``path`` is ``folder`` or lies anywhere below it (after resolving links)."""
    rp, rf = _resolved(path), _resolved(folder)
    return rp == rf or rf in rp.parents


def refuse_overwriting_inputs(
    output: str | os.PathLike, inputs: Iterable[tuple[str, str | os.PathLike | None]], *, into_folders: bool = True
) -> None:
    """Raise when ``output`` is one of ``inputs`` (``(role, path)`` pairs, e.g. ``("reference", p)``).

    A folder input (a DICOM series, a model bundle, a dataset) also protects everything inside
    it when ``into_folders``: a mask written into a DICOM folder would join the series on the
    next read, a file written into a bundle or dataset could replace one of its files.
    """
    out = Path(output)
    for role, src in inputs:
        if src is None:
            continue
        src = Path(src)
        if not src.exists():
            continue
        if same_file(out, src) if out.exists() else _resolved(out) == _resolved(src):
            raise MedsegError(f"{output}: refusing to write over the {role} ({src}); choose another output")
        if into_folders and src.is_dir() and is_inside(out, src):
            raise MedsegError(f"{output}: refusing to write into the {role} folder ({src}); choose another output")


def ensure_writable(path: str | os.PathLike, *, folder: bool = False) -> None:
    """Check now that ``path`` (a file, or a folder when ``folder``) can be created or replaced.

    Probes the real file system: the nearest existing ancestor must be a folder in which a
    temporary file can be created and removed (``os.access`` is not enough: root passes it
    on read-only mounts and on ``/proc``). Creates nothing that outlives the call.
    """
    path = Path(path)
    if path.exists():
        if folder and not path.is_dir():
            raise MedsegError(f"{path}: is a file, expected a folder")
        if not folder and path.is_dir():
            raise MedsegError(f"{path}: is a folder, expected a file name")
    probe_dir = path if (folder and path.is_dir()) else path.parent
    while not probe_dir.exists():
        if probe_dir.parent == probe_dir:
            break
        probe_dir = probe_dir.parent
    if not probe_dir.is_dir():
        raise MedsegError(f"{path}: cannot write here ({probe_dir} is a file, not a folder)")
    probe = probe_dir / f".medseg-write-test-{uuid.uuid4().hex[:8]}"
    try:
        fd = os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        os.close(fd)
    except OSError as exc:
        raise MedsegError(f"{path}: cannot write here ({exc.strerror or exc} in {probe_dir})") from None
    finally:
        try:
            probe.unlink()
        except OSError:
            pass


def check_new_folder(output: str | os.PathLike, inputs: Iterable[tuple[str, str | os.PathLike]]) -> Path:
    """Check that ``output`` can become a new folder (a model bundle, written whole): not one of
    ``inputs`` nor inside a folder input, not holding one of them (replacing it would delete the
    input), new or an empty folder, and writable."""
    out = Path(output)
    inputs = [(role, Path(src)) for role, src in inputs]
    refuse_overwriting_inputs(out, inputs)
    for role, src in inputs:
        if src.exists() and is_inside(src, out):
            raise MedsegError(f"{out}: holds the {role} {src}; choose another output")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise MedsegError(f"{out}: already exists and is not an empty folder; choose a new output folder")
    ensure_writable(out, folder=True)
    return out


__all__ = ["same_file", "is_inside", "refuse_overwriting_inputs", "ensure_writable", "check_new_folder"]
