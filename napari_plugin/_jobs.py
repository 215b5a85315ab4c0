"""The Segment widget's background jobs (run in a napari ``thread_worker``, no Qt here):
segmenting with a prepared :class:`~medseg.inference.Predictor` kept between clicks, fine-tuning
with :func:`~medseg.training.train`, and the generator that reports their progress and honours Cancel.
"""

from __future__ import annotations

import queue
import threading
from pathlib import Path

import numpy as np

DEFAULT_MODEL = "bundled default model"


class Cancelled(Exception):
    pass


class Failed:
    """What a job returns instead of raising: superqt's worker treats a RuntimeError (torch's usual
    error) raised from a generator as a deleted Qt object, warns and never emits ``finished``, so
    errors travel as a value to the widget's one error path."""

    def __init__(self, error: BaseException) -> None:
        self.error = error


def _background(fn, *args, cancel: threading.Event | None = None, **kwargs):
    """Generator for a thread_worker: runs ``fn(*args, progress=..., **kwargs)`` in a thread,
    yields its (done, total) progress and returns its result. Setting ``cancel`` (or quitting
    the worker) stops ``fn`` at its next progress report."""
    updates: queue.Queue = queue.Queue()
    cancel = cancel if cancel is not None else threading.Event()
    result: dict = {}

    def progress(done: int, total: int) -> None:
        if cancel.is_set():
            raise Cancelled()
        updates.put((int(done), int(total)))

    def run() -> None:
        try:
            result["value"] = fn(*args, progress=progress, **kwargs)
        except BaseException as exc:  # noqa: BLE001 - handed to the worker's errored signal
            result["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        while thread.is_alive() or not updates.empty():
            try:
                yield updates.get(timeout=0.05)
            except queue.Empty:
                yield None
    finally:
        cancel.set()  # the worker was quit (Cancel), or we are done
        thread.join()
    if "error" in result and not isinstance(result["error"], Cancelled):
        return Failed(result["error"])
    return result.get("value")


_PREDICTOR: dict = {}  # the last model prepared: (folder, files' mtimes, device) -> Predictor


def _predictor(model_path, device):
    """The prepared model for ``model_path`` on ``device``, built once and reused across clicks
    (rebuilt when the bundle's files change on disk, e.g. after a fine-tune wrote over them)."""
    from medseg.bundle import default_bundle_path
    from medseg.inference import Predictor, resolve_device

    dev = resolve_device(device)
    folder = Path(default_bundle_path() if model_path in (None, "", DEFAULT_MODEL) else model_path)
    stamp = tuple(p.stat().st_mtime_ns for p in sorted(folder.glob("model.*")) if p.is_file())
    key = (str(folder.resolve()), stamp, str(dev))
    if key not in _PREDICTOR:
        predictor = Predictor.from_folder(folder, dev)
        _PREDICTOR.clear()
        _PREDICTOR[key] = predictor
    return _PREDICTOR[key]


def _segment_job(scan, model_path, device, progress):
    from medseg.geometry import display_shape

    predictor = _predictor(model_path, device)
    entropy = np.zeros(display_shape(scan.shape, scan.affine)[0], dtype=np.float32)  # one per axial slice
    notes: list[str] = []  # medseg's doubts about the scan (e.g. intensities outside the training range)
    labels = predictor.predict_scan(scan, progress=progress, uncertainty=entropy, on_warning=notes.append)
    return labels, entropy, predictor.card.labels, predictor.card.name, notes
