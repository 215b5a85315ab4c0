"""The cases of a batch: the scans of an input folder and where each one's outputs go.

:func:`find_scans` walks the input folder (NIfTI files matching a pattern, DICOM series folders,
symbolic links followed once) and marks the cases that cannot be segmented safely;
:func:`check_outputs` probes the output folder before any work. :mod:`medseg.batch` runs them.
"""

from __future__ import annotations

import errno
import fnmatch
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from .dicom import looks_like_dicom
from .dicom_results import SUFFIXES, check_format, is_dicom_source
from .errors import MedsegError
from .naming import case_name
from .safety import ensure_writable

SUMMARY = "summary"


@dataclass
class BatchCase:
    name: str  # relative path of the input (posix), the case's id
    input: Path
    output: Path
    preview: Path | None = None
    # set by find_scans / check_outputs: the case is not segmented, run_batch turns it into a row
    error: str | None = None  # -> "failed" (e.g. two inputs would write the same mask)
    skip_reason: str | None = None  # -> "skipped" (e.g. a dangling symbolic link)
    format: str = "nifti"  # of the output: nifti, dicom-seg or rtstruct (medseg.dicom_results)


def _is_dicom_folder(folder: Path) -> bool:
    for n, child in enumerate(sorted(folder.iterdir())):
        if n >= 64:
            break
        if child.is_file() and not child.name.startswith(".") and (child.suffix.lower() == ".dcm" or looks_like_dicom(child)):
            return True
    return False


def _real(path: Path) -> Path:
    return Path(os.path.abspath(os.path.realpath(path)))


def outputs_of(case: BatchCase) -> list[Path]:
    """The files a case writes: its mask and, when asked for, its preview."""
    return [p for p in (case.output, case.preview) if p is not None]


# ---------------------------------------------------------------------------------------------- finding


class _ScanFinder:
    """The walk of :func:`find_scans`: real entries first, then symbolic links, each real folder
    and scan taken once (``seen`` holds their ``(st_dev, st_ino)``)."""

    def __init__(self, root: Path, out: Path, patterns: list[str], recursive: bool, preview: bool,
                 fmt: str = "nifti") -> None:
        self.root, self.out, self.patterns, self.fmt = root, out, patterns, fmt
        self.recursive, self.preview = recursive, preview
        self.out_real, self.root_real = _real(out), _real(root)
        if self.out_real == self.root_real:
            raise MedsegError(f"{out}: the output folder is the input folder; masks would replace the scans")
        self.root_in_out = self.out_real in self.root_real.parents
        self.cases: list[BatchCase] = []
        self.seen: set[tuple[int, int]] = set()  # folders listed, series and scans taken
        self.links: list[Path] = []  # symbolic links, followed once every real entry is known

    def walk(self) -> list[BatchCase]:
        st = self.root.stat()
        self.seen.add((st.st_dev, st.st_ino))
        self.listing(self.root, False)
        for link in self.links:  # links met inside linked folders join the queue as it is walked
            self.consider(link, True)
        return self.cases

    def matches(self, name: str) -> bool:
        return any(fnmatch.fnmatch(name, p) for p in self.patterns)

    def add(self, path: Path, is_dir: bool) -> None:
        rel = path.relative_to(self.root)
        stem = rel.name if is_dir else case_name(rel)
        folder = self.out / rel.parent
        preview = folder / f"{stem}.png" if self.preview else None
        case = BatchCase(rel.as_posix(), path, folder / f"{stem}{SUFFIXES[self.fmt]}", preview, format=self.fmt)
        if self.fmt != "nifti" and not is_dir and not is_dicom_source(path):
            case.error = f"{path}: --format {self.fmt} needs a DICOM series; this scan is not DICOM (not segmented)"
        self.cases.append(case)

    def skip(self, path: Path, reason: str) -> None:
        rel = path.relative_to(self.root)
        self.cases.append(BatchCase(rel.as_posix(), path, Path(""), None, skip_reason=f"{path}: {reason}"))

    def in_output(self, real: Path) -> bool:  # a folder of (earlier) outputs, never scanned
        inside = real == self.out_real or self.out_real in real.parents
        return inside and not (self.root_in_out and (real == self.root_real or self.root_real in real.parents))

    def listing(self, folder: Path, via_link: bool) -> None:
        try:
            children = sorted(folder.iterdir())
        except OSError as exc:
            if folder == self.root:
                raise MedsegError(f"{self.root}: cannot read the folder ({exc.strerror or exc})") from None
            self.skip(folder, f"cannot read the folder ({exc.strerror or exc})")
            return
        for child in children:
            if child.name.startswith((".", "_")):
                continue
            if child.is_symlink():
                self.links.append(child)
            else:
                self.consider(child, via_link)  # inside a linked folder, everything is reached through a link

    def consider(self, child: Path, via_link: bool) -> None:
        try:
            st = child.stat()
        except OSError as exc:
            self.broken(child, exc)
            return
        key = (st.st_dev, st.st_ino)
        if stat.S_ISDIR(st.st_mode):
            if key not in self.seen and not self.in_output(_real(child)):
                self.folder(child, key, via_link)
        elif stat.S_ISREG(st.st_mode) and self.matches(child.name):
            if via_link and key in self.seen:  # a second name for a scan already taken (real hard links both count)
                return
            self.seen.add(key)
            self.add(child, False)

    def broken(self, child: Path, exc: OSError) -> None:
        """An entry that cannot be followed: a dangling link or loop that looks like a case is skipped."""
        if not child.is_symlink():  # vanished meanwhile
            return
        if self.matches(child.name) or not Path(child.name).suffix:  # a scan or (perhaps) a series folder
            try:
                target = os.readlink(child)
            except OSError:
                target = "?"
            what = "symbolic link loop" if exc.errno == errno.ELOOP else "dangling symbolic link"
            self.skip(child, f"{what} -> {target}")

    def folder(self, child: Path, key: tuple[int, int], via_link: bool) -> None:
        """A DICOM series folder is a case; another folder is walked when ``recursive``."""
        try:
            is_series = _is_dicom_folder(child)
        except OSError as exc:
            self.seen.add(key)
            self.skip(child, f"cannot read the folder ({exc.strerror or exc})")
            return
        if is_series:
            self.seen.add(key)
            self.add(child, True)
        elif self.recursive:
            self.seen.add(key)
            self.listing(child, via_link)


def find_scans(
    input_dir: str | Path, output_dir: str | Path, pattern: str = "*.nii.gz,*.nii", recursive: bool = False,
    preview: bool = False, fmt: str = "nifti",
) -> list[BatchCase]:
    """Cases of ``input_dir``: files matching ``pattern`` (comma-separated globs) and DICOM series
    folders (sub-folders holding DICOM files), each with its output path under ``output_dir``.

    ``a/b.nii.gz`` -> ``OUT/a/b.nii.gz``; a DICOM folder ``a/series1/`` -> ``OUT/a/series1.nii.gz``
    (``.dcm`` with ``fmt`` dicom-seg or rtstruct, which fail the cases that are not DICOM).
    Hidden files and the output folder itself are skipped. Symbolic links are followed after
    every real entry, and each real folder and scan is taken once (a link to something already
    seen, such as a loop ``a/loop -> a``, is passed over); a dangling link becomes a "skipped"
    case with its reason. Cases that cannot be segmented safely come back with ``error`` set
    (``run_batch`` reports them as "failed" and segments the rest): two inputs whose masks would
    have the same name, or a mask that would be written over an input.
    """
    root = Path(input_dir)
    if not root.is_dir():
        raise MedsegError(f"{root}: not a folder")
    patterns = [p.strip() for p in pattern.split(",") if p.strip()]
    cases = _ScanFinder(root, Path(output_dir), patterns, recursive, preview, check_format(fmt)).walk()
    cases.sort(key=lambda c: c.name)
    _mark_collisions(cases)
    mark_outputs_over_inputs(cases)
    return cases


def is_active(case: BatchCase) -> bool:
    return case.error is None and case.skip_reason is None


def _mark_collisions(cases: list[BatchCase]) -> None:
    """Every case whose mask name another case also maps to fails (all of them, none segmented)."""
    by_output: dict[str, list[BatchCase]] = {}
    for c in cases:
        if is_active(c):
            by_output.setdefault(os.path.normcase(os.path.abspath(c.output)), []).append(c)
    for group in by_output.values():
        if len(group) < 2:
            continue
        for c in group:
            others = ", ".join(str(o.input) for o in group if o is not c)
            c.error = (f"{c.input}: its mask {c.output} would also be written for {others}; "
                       "rename one of them (not segmented)")


def mark_outputs_over_inputs(cases: list[BatchCase]) -> None:
    """A case whose mask or preview would land on an input scan (or inside an input DICOM folder) fails."""
    files: dict[Path, BatchCase] = {}
    folders: dict[Path, BatchCase] = {}
    for c in cases:
        if c.skip_reason is None:
            real = _real(c.input)
            (folders if real.is_dir() else files)[real] = c
    for c in filter(is_active, cases):
        for target in outputs_of(c):
            real = _real(target)
            hit = files.get(real) or folders.get(real)
            if hit is not None:
                c.error = f"{target}: refusing to write over the input {hit.input}; choose another output folder"
                break
            inside = next((folders[p] for p in real.parents if p in folders), None)
            if inside is not None:
                c.error = f"{target}: refusing to write into the input DICOM folder {inside.input}; choose another output folder"
                break


def check_outputs(cases: list[BatchCase], output_dir: str | Path) -> list[BatchCase]:
    """Before any work: raise :class:`MedsegError` when ``output_dir`` or its summaries cannot be
    written (probed, so ``/proc`` and read-only mounts are caught). Returns ``cases``; outputs
    over inputs were already marked by :func:`find_scans` (and are again by :func:`run_batch`).
    """
    out = Path(output_dir)
    ensure_writable(out, folder=True)
    summaries = [out / f"{SUMMARY}.csv", out / f"{SUMMARY}.json"]
    for path in summaries:
        ensure_writable(path)
    _mark_outputs_over_summaries(cases, summaries)
    return cases


def _mark_outputs_over_summaries(cases: list[BatchCase], summaries: list[Path]) -> None:
    """A case whose mask or preview would be, or lie inside, a summary file fails (an input folder
    named ``summary.csv`` under ``--recursive``): the summary is written last and must not be lost."""
    reserved = {os.path.normcase(os.path.abspath(p)): p for p in summaries}
    for c in filter(is_active, cases):
        for target in outputs_of(c):
            path = Path(os.path.normcase(os.path.abspath(target)))
            hit = next((reserved[str(p)] for p in (path, *path.parents) if str(p) in reserved), None)
            if hit is not None:
                c.error = (f"{target}: would replace the batch summary {hit}; rename the input folder "
                           f"or choose another output folder (not segmented)")
                break


def ensure_output_folders(cases: list[BatchCase]) -> None:
    """Probe once per distinct folder that will receive masks/previews (raises MedsegError)."""
    done: set[Path] = set()
    for c in filter(is_active, cases):
        for target in outputs_of(c):
            if target.parent not in done:
                done.add(target.parent)
                ensure_writable(target.parent, folder=True)


__all__ = ["BatchCase", "SUMMARY", "check_outputs", "find_scans"]
