"""Batch segmentation of a folder of scans: resumable, error-isolated, with a results table.

:func:`find_scans` lists the cases of an input folder (NIfTI files matching a pattern, and DICOM
series folders), :func:`run_batch` segments them one after the other while a background
thread reads and decodes the next scan, writes each mask atomically under the same relative
name, skips cases whose mask already exists (a killed run simply continues), records every
failure with its one-line reason and goes on, and writes ``summary.csv`` / ``summary.json``.

Under ``torchrun`` (or any launcher setting ``RANK`` / ``WORLD_SIZE``) each rank takes a
disjoint, deterministic share of the sorted cases; rank 0 writes the summary of all of them.
Finding the cases and where their outputs go lives in :mod:`medseg.batch_inputs` (re-exported here).
"""

from __future__ import annotations

import glob
import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .batch_inputs import (
    SUMMARY,
    BatchCase,
    check_outputs,
    ensure_output_folders,
    find_scans,
    is_active,
    mark_outputs_over_inputs,
    outputs_of,
)
from .errors import MedsegError
from . import __version__
from .dicom_results import check_extra, save_result
from .io import load_scan
from .reports import columns_of, write_csv, write_json, write_preview
from .scan import reason

STATUS_DONE, STATUS_SKIPPED, STATUS_FAILED = "done", "skipped", "failed"


@dataclass
class BatchResult:
    rows: list[dict] = field(default_factory=list)

    def count(self, status: str) -> int:
        return sum(1 for r in self.rows if r["status"] == status)

    @property
    def failed(self) -> int:
        return self.count(STATUS_FAILED)


# ---------------------------------------------------------------------------------------------- running


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
    return _one_line(path, str(exc) if isinstance(exc, MedsegError) else f"{type(exc).__name__}: {reason(exc)}")


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
    for target in outputs_of(case):
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
        if case.format != "nifti":
            return _existing_dicom(case)
        return existing_mask(case.output)
    except Exception:  # noqa: BLE001 - anything odd about the old mask: redo the case
        return None


def _existing_dicom(case: BatchCase):
    """A SEG / RTSTRUCT an earlier run wrote (written atomically: a readable header means whole), else None.
    Its volumes are not read back: the row keeps them empty."""
    from pydicom import dcmread

    if not case.output.is_file():
        return None
    ds = dcmread(case.output, stop_before_pixels=True)
    want = "SEG" if case.format == "dicom-seg" else "RTSTRUCT"
    return ds if str(ds.get("Modality", "")) == want else None


def _row(case: BatchCase, status: str, seconds: float, names: dict[str, int]) -> dict:
    output = "" if case.skip_reason is not None else str(case.output)
    row = {"case": case.name, "input": str(case.input), "output": output, "status": status,
           "seconds": seconds, "error": "", "warning": ""}
    row.update({f"{name}_ml": math.nan for name, v in sorted(names.items(), key=lambda kv: kv[1]) if v})
    return row


def _volumes(labels, scan, names: dict[str, int]) -> dict:
    from .metrics import label_volumes_ml

    volumes = label_volumes_ml(labels, scan.voxel_volume_ml, names)
    return {f"{name}_ml": round(float(volumes.get(name, 0.0)), 3) for name, v in names.items() if v}


def _row_without_work(case: BatchCase, overwrite: bool, names: dict[str, int]) -> dict | None:
    """The row of a case that is not segmented: failed or skipped by :func:`find_scans`, or
    completed by an earlier run (its volumes read from the mask); None for a case to segment."""
    if not is_active(case):
        row = _row(case, STATUS_SKIPPED if case.error is None else STATUS_FAILED, 0.0, names)
        row["error"] = _one_line(case.input, case.error or case.skip_reason)
        return row
    _remove_stale(case)
    existing = _finished(case, overwrite)
    if existing is None:
        return None
    row = _row(case, STATUS_SKIPPED, 0.0, names)
    if case.format == "nifti":
        row.update(_volumes(existing.array, existing, names))
    return row


def _loaded(pending, case: BatchCase, modality: str | None):
    """``(scan, error, seconds)`` of a case, from the background read when there is one."""
    t0 = time.perf_counter()
    try:
        return pending.result() if pending is not None else _load(case, modality)
    except Exception as exc:  # noqa: BLE001 - isolated: reported, batch goes on
        return None, _failure(case.input, exc), time.perf_counter() - t0


@dataclass
class _Segmenter:
    """Segments loaded scans with one predictor and writes each case's outputs."""

    predictor: object
    names: dict[str, int]
    model_name: str
    on_case_start: Callable[[BatchCase, int, int], None] | None = None
    on_slices: Callable[[int, int], None] | None = None
    on_warning: Callable[[str], None] | None = None

    def row(self, case: BatchCase, n: int, total: int, loaded) -> dict:
        """The finished row of case ``n`` of ``total``: done, or failed with its one-line reason."""
        scan, error, load_s = loaded
        t0 = time.perf_counter()
        row = _row(case, STATUS_FAILED, 0.0, self.names)
        if error is None:
            try:
                if self.on_case_start:
                    self.on_case_start(case, n, total)
                self.segment(case, scan, row)
            except Exception as exc:  # noqa: BLE001 - isolated: reported, batch goes on
                error = _failure(case.input, exc)
        elif self.on_case_start:
            try:
                self.on_case_start(case, n, total)
            except Exception:  # noqa: BLE001 - progress display only; the case is reported as failed below
                pass
        row["error"] = error or ""
        row["seconds"] = round(time.perf_counter() - t0 + load_s, 3)
        return row

    def segment(self, case: BatchCase, scan, row: dict) -> None:
        """Segment ``scan`` and write the preview, then the mask (the marker a later run resumes
        from); on failure the outputs of this attempt are removed and the error raised."""
        notes: list[str] = []
        labels = self.predictor.predict_scan(scan, progress=self.on_slices, on_warning=notes.append)
        row["warning"] = " / ".join(notes)
        for note in notes:
            if self.on_warning:
                self.on_warning(note)
        volumes = _volumes(labels, scan, self.names)
        written: list[Path] = []
        try:
            if case.preview is not None:
                write_preview(scan, labels, case.preview, self.names)
                written.append(case.preview)
            # last: a mask on disk means the case is complete
            save_result(labels, scan, case.output, case.format, self.names, model_name=self.model_name,
                        version=f"medseg {__version__}")
        except Exception:
            for path in written:  # outputs of this attempt: the case is redone by the next run
                try:
                    path.unlink(missing_ok=True)
                except OSError:
                    pass
            raise
        row.update(volumes)
        row["status"] = STATUS_DONE


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
    from .inference import Predictor, resolve_device

    ensure_output_folders(cases)
    mark_outputs_over_inputs(cases)
    dev = resolve_device(device)
    names = bundle.card.labels
    todo: list[BatchCase] = []
    result = BatchResult()

    def report(row: dict) -> None:
        result.rows.append(row)
        if on_case_done:
            on_case_done(row)

    for case in cases:
        row = _row_without_work(case, overwrite, names)
        if row is None:
            todo.append(case)
        else:
            report(row)
    if todo:  # the model is prepared once, and only when there is something to segment
        run = _Segmenter(Predictor(bundle, dev, batch_size=batch_size), names, bundle.card.name, on_case_start,
                         on_slices, on_warning)
        _segment_all(todo, run, modality, report)
    result.rows.sort(key=lambda r: r["case"])
    return result


def _segment_all(todo: list[BatchCase], run: _Segmenter, modality: str | None, report: Callable[[dict], None]) -> None:
    """Segment ``todo`` in order, reading the next scan in a background thread meanwhile."""
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
            loaded = _loaded(pending, case, modality)
            pending = prefetch(n + 1)
            report(run.row(case, n, len(todo), loaded))


# ---------------------------------------------------------------------------------------------- reports


def write_summary(rows: list[dict], out_dir: Path, name: str = SUMMARY) -> tuple[Path, Path]:
    """``<name>.csv`` and ``<name>.json`` in ``out_dir`` (atomic); NaN -> empty cell / null."""
    out_dir.mkdir(parents=True, exist_ok=True)
    csv_path = write_csv(out_dir / f"{name}.csv", rows, columns_of(rows) or ["case", "status"])
    counts = {s: sum(1 for r in rows if r["status"] == s) for s in (STATUS_DONE, STATUS_SKIPPED, STATUS_FAILED)}
    json_path = write_json(out_dir / f"{name}.json", {"counts": counts, "cases": rows})
    return csv_path, json_path


__all__ = [
    "BatchCase", "BatchResult", "STATUS_DONE", "STATUS_FAILED", "STATUS_SKIPPED", "SUMMARY", "check_outputs",
    "existing_mask", "find_scans", "run_batch", "segment_folder", "write_summary",
]


# ---------------------------------------------------------------------------------------------- medseg batch


def _my_cases(ranks, input_dir, output_dir: Path, model, pattern: str, recursive: bool, preview: bool, fmt: str):
    """This rank's share of the scans and the model, once the outputs are known to be writable."""
    from .bundle import load_bundle
    from .safety import ensure_writable

    ensure_writable(output_dir, folder=True)
    cases = find_scans(input_dir, output_dir, pattern=pattern, recursive=recursive, preview=preview, fmt=fmt)
    check_extra(fmt)
    if not cases:
        raise MedsegError(f"{input_dir}: no scans found (patterns {pattern}; DICOM series folders)")
    check_outputs(cases, output_dir)  # writable, never over an input: before the model is even loaded
    return ranks.info.share(cases), load_bundle(model, device=ranks.device)


def segment_folder(
    input_dir: str | Path, output_dir: str | Path, *, model=None, device="auto", pattern: str = "*.nii.gz,*.nii",
    recursive: bool = False, preview: bool = False, on_cases: Callable[[int], None] | None = None, fmt: str = "nifti",
    **options,
) -> tuple[list[dict], bool]:
    """``medseg batch``: find the scans of ``input_dir``, check the outputs, segment the scans
    (``options``: :func:`run_batch`'s) and write the summary. Returns every case's row (on rank 0;
    ``[]`` on the others) and whether any case failed.

    Under ``torchrun`` each rank segments every N-th case of the sorted list and rank 0 writes the
    summary of them all. A failure outside the cases (a folder one rank cannot write, rank 0's
    summary) stops every rank with that rank's message (:mod:`medseg.distributed`).
    ``on_cases(n)`` is told how many cases this process goes through; ``fmt`` is the output format
    (nifti, dicom-seg, rtstruct: :mod:`medseg.dicom_results`).
    """
    from .distributed import process_group

    output_dir = Path(output_dir)
    with process_group(device) as ranks:
        mine, bundle = ranks.run(lambda: _my_cases(ranks, input_dir, output_dir, model, pattern, recursive, preview, fmt))
        if on_cases is not None:
            on_cases(len(mine))
        result = ranks.run(lambda: run_batch(mine, bundle, device=ranks.device, **options))
        rows = sorted((r for part in ranks.gather(result.rows) for r in part), key=lambda r: r["case"])
        ranks.run(lambda: write_summary(rows, output_dir), main_only=True)
    return (rows if ranks.is_main else []), any(r["status"] == STATUS_FAILED for r in rows)
