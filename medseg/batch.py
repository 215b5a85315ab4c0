"""Batch segmentation of a folder of scans: resumable, error-isolated, with a results table.

:func:`find_scans` lists the cases of an input folder (NIfTI files matching a pattern, and DICOM
series folders), :func:`run_batch` segments them one after the other while a background
thread reads and decodes the next scan, writes each mask atomically under the same relative
name, skips cases whose mask already exists (a killed run simply continues), records every
failure with its one-line reason and goes on, and writes ``summary.csv`` / ``summary.json``.

Under ``torchrun`` (or any launcher setting ``RANK`` / ``WORLD_SIZE``) each rank takes a
disjoint, deterministic share of the sorted cases; rank 0 merges the per-rank summaries.
"""

from __future__ import annotations

import csv
import errno
import fnmatch
import glob
import io
import json
import math
import os
import stat
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from .errors import MedsegError
from .io import (
    _reason,
    atomic_write,
    atomic_write_text,
    load_scan,
    looks_like_dicom,
    save_mask,
)
from .safety import ensure_writable

SUMMARY = "summary"
STATUS_DONE, STATUS_SKIPPED, STATUS_FAILED = "done", "skipped", "failed"


@dataclass
class BatchCase:
    name: str  # relative path of the input (posix), the case's id
    input: Path
    output: Path
    preview: Path | None = None
    # set by find_scans / check_outputs: the case is not segmented, run_batch turns it into a row
    error: str | None = None  # -> "failed" (e.g. two inputs would write the same mask)
    skip_reason: str | None = None  # -> "skipped" (e.g. a dangling symbolic link)


@dataclass
class BatchResult:
    rows: list[dict] = field(default_factory=list)

    def count(self, status: str) -> int:
        return sum(1 for r in self.rows if r["status"] == status)

    @property
    def failed(self) -> int:
        return self.count(STATUS_FAILED)


def _is_dicom_folder(folder: Path) -> bool:
    for n, child in enumerate(sorted(folder.iterdir())):
        if n >= 64:
            break
        if child.is_file() and not child.name.startswith(".") and (child.suffix.lower() == ".dcm" or looks_like_dicom(child)):
            return True
    return False


def _stem(name: str) -> str:
    for suffix in (".nii.gz", ".nii"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def _real(path: Path) -> Path:
    return Path(os.path.abspath(os.path.realpath(path)))


def find_scans(
    input_dir: str | Path, output_dir: str | Path, pattern: str = "*.nii.gz,*.nii", recursive: bool = False,
    preview: bool = False,
) -> list[BatchCase]:
    """Cases of ``input_dir``: files matching ``pattern`` (comma-separated globs) and DICOM series
    folders (sub-folders holding DICOM files), each with its output path under ``output_dir``.

    ``a/b.nii.gz`` -> ``OUT/a/b.nii.gz``; a DICOM folder ``a/series1/`` -> ``OUT/a/series1.nii.gz``.
    Hidden files and the output folder itself are skipped. Symbolic links are followed after
    every real entry, and each real folder and scan is taken once (a link to something already
    seen, such as a loop ``a/loop -> a``, is passed over); a dangling link becomes a "skipped"
    case with its reason. Cases that cannot be segmented safely come back with ``error`` set
    (``run_batch`` reports them as "failed" and segments the rest): two inputs whose masks would
    have the same name, or a mask that would be written over an input.
    """
    root = Path(input_dir)
    out = Path(output_dir)
    if not root.is_dir():
        raise MedsegError(f"{root}: not a folder")
    patterns = [p.strip() for p in pattern.split(",") if p.strip()]
    out_resolved = _real(out)
    root_resolved = _real(root)
    if out_resolved == root_resolved:
        raise MedsegError(f"{out}: the output folder is the input folder; masks would replace the scans")
    root_in_out = out_resolved in root_resolved.parents
    cases: list[BatchCase] = []
    seen: set[tuple[int, int]] = set()  # (st_dev, st_ino) of folders listed, series and scans taken
    links: list[Path] = []  # symbolic links, followed once every real entry is known

    def matches(name: str) -> bool:
        return any(fnmatch.fnmatch(name, p) for p in patterns)

    def dest(rel: Path, is_dir: bool) -> tuple[Path, Path | None]:
        stem = rel.name if is_dir else _stem(rel.name)
        return out / rel.parent / f"{stem}.nii.gz", (out / rel.parent / f"{stem}.png") if preview else None

    def add(path: Path, rel: Path, is_dir: bool) -> None:
        cases.append(BatchCase(rel.as_posix(), path, *dest(rel, is_dir)))

    def skip(path: Path, reason: str) -> None:
        rel = path.relative_to(root)
        cases.append(BatchCase(rel.as_posix(), path, Path(""), None, skip_reason=f"{path}: {reason}"))

    def in_output(real: Path) -> bool:  # a folder of (earlier) outputs, never scanned
        inside = real == out_resolved or out_resolved in real.parents
        return inside and not (root_in_out and (real == root_resolved or root_resolved in real.parents))

    def listing(folder: Path, via_link: bool) -> None:
        try:
            children = sorted(folder.iterdir())
        except OSError as exc:
            if folder == root:
                raise MedsegError(f"{root}: cannot read the folder ({exc.strerror or exc})") from None
            skip(folder, f"cannot read the folder ({exc.strerror or exc})")
            return
        for child in children:
            if child.name.startswith((".", "_")):
                continue
            if child.is_symlink():
                links.append(child)
            else:
                consider(child, via_link)  # inside a linked folder, everything is reached through a link

    def consider(child: Path, via_link: bool) -> None:
        try:
            st = child.stat()
        except OSError as exc:
            if not child.is_symlink():  # vanished meanwhile
                return
            if matches(child.name) or not Path(child.name).suffix:  # a scan or (perhaps) a series folder
                try:
                    target = os.readlink(child)
                except OSError:
                    target = "?"
                what = "symbolic link loop" if exc.errno == errno.ELOOP else "dangling symbolic link"
                skip(child, f"{what} -> {target}")
            return
        key = (st.st_dev, st.st_ino)
        rel = child.relative_to(root)
        if stat.S_ISDIR(st.st_mode):
            if key in seen or in_output(_real(child)):
                return
            try:
                is_series = _is_dicom_folder(child)
            except OSError as exc:
                seen.add(key)
                skip(child, f"cannot read the folder ({exc.strerror or exc})")
                return
            if is_series:
                seen.add(key)
                add(child, rel, True)
            elif recursive:
                seen.add(key)
                listing(child, via_link)
        elif stat.S_ISREG(st.st_mode) and matches(child.name):
            if via_link and key in seen:  # a second name for a scan already taken (real hard links both count)
                return
            seen.add(key)
            add(child, rel, False)

    st = root.stat()
    seen.add((st.st_dev, st.st_ino))
    listing(root, False)
    for link in links:  # links met inside linked folders join the queue as it is walked
        consider(link, True)
    cases.sort(key=lambda c: c.name)
    _mark_collisions(cases)
    _mark_outputs_over_inputs(cases)
    return cases


def _active(case: BatchCase) -> bool:
    return case.error is None and case.skip_reason is None


def _mark_collisions(cases: list[BatchCase]) -> None:
    """Every case whose mask name another case also maps to fails (all of them, none segmented)."""
    by_output: dict[str, list[BatchCase]] = {}
    for c in cases:
        if _active(c):
            by_output.setdefault(os.path.normcase(os.path.abspath(c.output)), []).append(c)
    for group in by_output.values():
        if len(group) < 2:
            continue
        for c in group:
            others = ", ".join(str(o.input) for o in group if o is not c)
            c.error = (f"{c.input}: its mask {c.output} would also be written for {others}; "
                       "rename one of them (not segmented)")


def _mark_outputs_over_inputs(cases: list[BatchCase]) -> None:
    """A case whose mask or preview would land on an input scan (or inside an input DICOM folder) fails."""
    files: dict[Path, BatchCase] = {}
    folders: dict[Path, BatchCase] = {}
    for c in cases:
        if c.skip_reason is None:
            real = _real(c.input)
            (folders if real.is_dir() else files)[real] = c
    for c in cases:
        if not _active(c):
            continue
        for target in (c.output, c.preview):
            if target is None:
                continue
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
    for name in (f"{SUMMARY}.csv", f"{SUMMARY}.json"):
        ensure_writable(out / name)
    return cases


def _ensure_output_folders(cases: list[BatchCase]) -> None:
    """Probe once per distinct folder that will receive masks/previews (raises MedsegError)."""
    done: set[Path] = set()
    for c in cases:
        if not _active(c):
            continue
        for target in (c.output, c.preview):
            if target is not None and target.parent not in done:
                done.add(target.parent)
                ensure_writable(target.parent, folder=True)


def shard(cases: list[BatchCase], rank: int, world_size: int) -> list[BatchCase]:
    """This rank's deterministic share: every ``world_size``-th case of the sorted list."""
    return sorted(cases, key=lambda c: c.name)[rank::world_size]


def existing_mask(path: Path):
    """The mask an earlier run wrote, read through (a truncated file is caught), or None.

    Masks are written atomically, so a file under the final name is complete unless something
    else damaged it; anything unreadable is redone.
    """
    if not path.is_file() or path.stat().st_size == 0:
        return None
    try:
        return load_scan(path)
    except MedsegError:
        return None


def _failure(path: Path, exc: BaseException) -> str:
    """One line for a case that failed: medseg's own message, or the file and the first line of the error."""
    return _one_line(path, str(exc) if isinstance(exc, MedsegError) else f"{type(exc).__name__}: {_reason(exc)}")


def _one_line(path: Path, message: str) -> str:
    """``message`` on one line, starting with ``path`` unless it already names the file."""
    text = " ".join(ln.strip() for ln in message.splitlines() if ln.strip()) or "unknown error"
    return text if str(path) in text else f"{path}: {text}"


def _load(case: BatchCase, modality: str | None):
    t0 = time.perf_counter()
    try:
        return load_scan(case.input, modality=modality), None, time.perf_counter() - t0
    except Exception as exc:  # noqa: BLE001 - isolated: reported, batch goes on
        return None, _failure(case.input, exc), time.perf_counter() - t0


def _remove_stale(case: BatchCase) -> None:
    """Temporary files a killed run left beside the case's outputs (never under a final name)."""
    for target in (case.output, case.preview):
        if target is None:
            continue
        try:
            if target.parent.is_dir():
                for stale in target.parent.glob(f".{glob.escape(target.name)}.*.partial*"):
                    stale.unlink(missing_ok=True)
        except OSError:
            pass


def _finished(case: BatchCase, overwrite: bool):
    """The mask of a case an earlier run completed (all of its outputs present), or None."""
    if overwrite or (case.preview is not None and not case.preview.is_file()):
        return None
    try:
        return existing_mask(case.output)
    except Exception:  # noqa: BLE001 - anything odd about the old mask: redo the case
        return None


def run_batch(
    cases: list[BatchCase],
    bundle,
    *,
    device=None,
    overwrite: bool = False,
    modality: str | None = None,
    batch_size: int = 8,
    on_case_start: Callable[[BatchCase, int, int], None] | None = None,
    on_slices: Callable[[int, int], None] | None = None,
    on_case_done: Callable[[dict], None] | None = None,
    on_warning: Callable[[str], None] | None = None,
) -> BatchResult:
    """Segment ``cases`` with ``bundle``; the next scan is read in a background thread meanwhile.

    medseg's doubts about a scan (intensities outside the model's training range, NaN voxels)
    go into the row's ``warning`` column and to ``on_warning``.

    Before any work, every folder that will receive outputs is probed for writing (one
    :class:`MedsegError` if one cannot be written) and cases whose outputs would land on an input
    are failed. A case is done only when all of its outputs exist: the preview is written first,
    the mask (the marker a later run resumes from) last, and a case that fails midway has the
    outputs of this attempt removed, so the next run redoes it.
    """
    from .inference import resolve_device, segment
    from .metrics import label_volumes_ml

    _ensure_output_folders(cases)
    _mark_outputs_over_inputs(cases)
    dev = resolve_device(device)
    names = bundle.card.labels
    todo: list[BatchCase] = []
    result = BatchResult()

    def report(row: dict) -> None:
        result.rows.append(row)
        if on_case_done:
            on_case_done(row)

    for case in cases:
        if case.skip_reason is not None or case.error is not None:
            status = STATUS_SKIPPED if case.error is None else STATUS_FAILED
            row = _row(case, status, 0.0, names)
            row["error"] = _one_line(case.input, case.error or case.skip_reason)
            report(row)
            continue
        _remove_stale(case)
        existing = _finished(case, overwrite)
        if existing is not None:
            row = _row(case, STATUS_SKIPPED, 0.0, names)
            row.update(_volumes(label_volumes_ml(existing.array, existing.voxel_volume_ml, names), names))
            report(row)
        else:
            todo.append(case)
    with ThreadPoolExecutor(1) as pool:

        def prefetch(i: int):
            if i >= len(todo):
                return None
            try:
                return pool.submit(_load, todo[i], modality)
            except Exception:  # noqa: BLE001 - no thread to spare: read it when its turn comes
                return None

        pending = prefetch(0)
        for n, case in enumerate(todo):
            t0 = time.perf_counter()
            try:
                scan, error, load_s = pending.result() if pending is not None else _load(case, modality)
            except Exception as exc:  # noqa: BLE001 - isolated: reported, batch goes on
                scan, error, load_s = None, _failure(case.input, exc), time.perf_counter() - t0
            pending = prefetch(n + 1)
            t0 = time.perf_counter()
            row = _row(case, STATUS_FAILED, 0.0, names)
            written: list[Path] = []
            if error is None:
                try:
                    if on_case_start:
                        on_case_start(case, n, len(todo))
                    notes: list[str] = []
                    labels = segment(scan, bundle, device=dev, batch_size=batch_size, progress=on_slices,
                                     on_warning=notes.append)
                    row["warning"] = " / ".join(notes)
                    for note in notes:
                        if on_warning:
                            on_warning(note)
                    volumes = _volumes(label_volumes_ml(labels, scan.voxel_volume_ml, names), names)
                    if case.preview is not None:
                        write_preview(scan, labels, case.preview, names)
                        written.append(case.preview)
                    save_mask(labels, scan, case.output)  # last: a mask on disk means the case is complete
                    written.append(case.output)
                    row.update(volumes)
                    row["status"] = STATUS_DONE
                except Exception as exc:  # noqa: BLE001 - isolated: reported, batch goes on
                    error = _failure(case.input, exc)
                    for path in written:  # outputs of this attempt: the case is redone by the next run
                        try:
                            path.unlink(missing_ok=True)
                        except OSError:
                            pass
            elif on_case_start:
                try:
                    on_case_start(case, n, len(todo))
                except Exception:  # noqa: BLE001 - progress display only; the case is reported as failed below
                    pass
            row["error"] = error or ""
            row["seconds"] = round(time.perf_counter() - t0 + load_s, 3)
            report(row)
    result.rows.sort(key=lambda r: r["case"])
    return result


def _row(case: BatchCase, status: str, seconds: float, names: dict[str, int]) -> dict:
    output = "" if case.skip_reason is not None else str(case.output)
    row = {"case": case.name, "input": str(case.input), "output": output, "status": status,
           "seconds": seconds, "error": "", "warning": ""}
    row.update({f"{name}_ml": math.nan for name, v in sorted(names.items(), key=lambda kv: kv[1]) if v})
    return row


def _volumes(volumes: dict[str, float], names: dict[str, int]) -> dict:
    return {f"{name}_ml": round(float(volumes.get(name, 0.0)), 3) for name, v in names.items() if v}


# ---------------------------------------------------------------------------------------------- reports


def write_summary(rows: list[dict], out_dir: Path, name: str = SUMMARY) -> tuple[Path, Path]:
    """``<name>.csv`` and ``<name>.json`` in ``out_dir`` (atomic); NaN -> empty cell / null."""
    out_dir.mkdir(parents=True, exist_ok=True)
    keys = list(dict.fromkeys(k for r in rows for k in r)) or ["case", "status"]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=keys, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()})
    csv_path, json_path = out_dir / f"{name}.csv", out_dir / f"{name}.json"
    atomic_write_text(csv_path, buf.getvalue())
    clean = [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()} for r in rows]
    counts = {s: sum(1 for r in rows if r["status"] == s) for s in (STATUS_DONE, STATUS_SKIPPED, STATUS_FAILED)}
    atomic_write_text(json_path, json.dumps({"counts": counts, "cases": clean}, indent=2) + "\n")
    return csv_path, json_path


def merge_summaries(out_dir: Path, world_size: int) -> list[dict]:
    """Rank 0: read every rank's ``summary.rank<r>.json`` and write the merged summary."""
    rows: list[dict] = []
    for r in range(world_size):
        part = out_dir / f"{SUMMARY}.rank{r}.json"
        data = json.loads(part.read_text())
        rows += [{k: (math.nan if v is None else v) for k, v in row.items()} for row in data["cases"]]
    rows.sort(key=lambda r: r["case"])
    write_summary(rows, out_dir)
    for r in range(world_size):
        for ext in ("json", "csv"):
            (out_dir / f"{SUMMARY}.rank{r}.{ext}").unlink(missing_ok=True)
    return rows


def write_preview(scan, labels: np.ndarray, path: Path, names: dict[str, int], n_axial: int = 3) -> Path:
    """PNG: the mask over ``n_axial`` axial slices (where it is largest) and one coronal reformat."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colors import ListedColormap
    from matplotlib.figure import Figure

    from .display import default_contrast, display_affine, label_colours, to_display

    # display order (S, P, L): an axial slice shows anterior up and the patient's right on the
    # left (radiological convention), a coronal one superior up
    data, _ = to_display(scan.array, scan.affine)
    lab, _ = to_display(labels, scan.affine)
    sz, sy, sx = np.abs(np.diag(display_affine(scan.affine, scan.shape))[:3])
    lo, hi = default_contrast(scan.array, scan.modality)
    area = np.array([np.count_nonzero(lab[k]) for k in range(lab.shape[0])])
    if area.any():
        ks = np.flatnonzero(area)
        picks = [int(ks[int(round(q * (len(ks) - 1)))]) for q in np.linspace(0.2, 0.8, n_axial)]
    else:
        picks = [int(round(q * (data.shape[0] - 1))) for q in np.linspace(0.25, 0.75, n_axial)]
    vmax = max(max(names.values(), default=1), 1)
    table = label_colours(names)
    colours = ListedColormap([table.get(v, (0.5, 0.5, 0.5, 1.0)) for v in range(vmax + 1)])
    fig = Figure(figsize=(4 * (n_axial + 1), 4.4), dpi=80)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, n_axial + 1)
    overlay = {"cmap": colours, "vmin": 0, "vmax": vmax, "alpha": 0.5, "interpolation": "nearest"}
    for ax, k in zip(axes[:n_axial], picks):
        ax.imshow(data[k], cmap="gray", vmin=lo, vmax=hi, aspect=sy / sx)
        ax.imshow(np.ma.masked_equal(lab[k], 0), aspect=sy / sx, **overlay)
        ax.set_title(f"axial {k}", fontsize=9)
    j = int(np.argmax([np.count_nonzero(lab[:, jj]) for jj in range(lab.shape[1])])) if area.any() else data.shape[1] // 2
    ax = axes[n_axial]
    ax.imshow(data[:, j], cmap="gray", vmin=lo, vmax=hi, origin="lower", aspect=sz / sx)
    ax.imshow(np.ma.masked_equal(lab[:, j], 0), origin="lower", aspect=sz / sx, **overlay)
    ax.set_title(f"coronal {j}", fontsize=9)
    for ax in axes:
        ax.set_axis_off()
    fig.suptitle(Path(str(scan.source)).name, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"), suffix=".png")
