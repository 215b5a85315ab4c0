"""Autosave of corrections: every brush stroke on a medseg Labels layer reaches disk within seconds.

A stroke (napari's ``paint`` event, also fill and erase) or new data restarts a short timer; when
it fires, the layer's voxels are copied in scan order and written by a background thread to the
scan's :class:`~medseg.corrections.CorrectionStore` (medseg's cache, never beside the scan). A
crash therefore loses at most the last couple of seconds. Opening the scan again restores them.
"""

from __future__ import annotations

import threading
from typing import Callable

from napari.layers import Labels
from qtpy.QtCore import QObject, QTimer, Signal

from medseg.corrections import CorrectionStore
from medseg.geometry import from_display

from ._layers import NAMES_KEY, SCAN_KEY

DELAY_MS = 1500  # after the last stroke


class Autosaver(QObject):
    """Watches Labels layers of medseg scans and keeps their autosave current."""

    failed = Signal(object)  # an exception from the writing thread, delivered in the GUI thread

    def __init__(self, on_error: Callable[[BaseException], None], delay_ms: int = DELAY_MS,
                 review_of: Callable[[Labels], dict | None] | None = None) -> None:
        super().__init__()
        self.review_of = review_of  # the review's state to keep with a layer (uncertainty, reviewed slices)
        self.failed.connect(on_error)
        self.on_error = on_error
        self.delay_ms = delay_ms
        self._timers: dict[int, QTimer] = {}
        self._names: dict[int, str] = {}  # layer id -> the name its autosave was written under
        self._threads: list[threading.Thread] = []
        self.saved = 0  # number of autosaves written (for the status line and tests)

    def watch(self, layer: Labels, saved_as: str | None = None) -> None:
        """Autosave ``layer`` after each edit (a layer watched already is left as it is).
        ``saved_as``: the name of its existing autosave (a restored layer)."""
        if id(layer) in self._timers or SCAN_KEY not in layer.metadata:
            return
        if saved_as is not None:
            self._names[id(layer)] = saved_as
        timer = QTimer()
        timer.setSingleShot(True)
        timer.setInterval(self.delay_ms)
        timer.timeout.connect(lambda: self.save_now(layer))
        self._timers[id(layer)] = timer
        for event in (layer.events.paint, layer.events.set_data, layer.events.labels_update):
            event.connect(lambda *_: timer.start())
        layer.events.name.connect(lambda *_: self._renamed(layer))

    def touch(self, layer: Labels) -> None:
        """Something kept with ``layer`` changed (e.g. a slice marked reviewed): autosave it soon."""
        timer = self._timers.get(id(layer))
        if timer is not None:
            timer.start()

    def _renamed(self, layer: Labels) -> None:
        if id(layer) in self._names:
            self.save_now(layer)  # the autosave follows the layer's new name

    def pending(self) -> bool:
        return any(t.isActive() for t in self._timers.values()) or any(t.is_alive() for t in self._threads)

    def save_now(self, layer: Labels, wait: bool = False) -> None:
        """Write ``layer``'s autosave now (in a background thread unless ``wait``)."""
        timer = self._timers.get(id(layer))
        if timer is not None:
            timer.stop()
        scan = layer.metadata.get(SCAN_KEY)
        if scan is None or layer.data.ndim != 3:
            return
        try:
            labels = from_display(layer.data, scan.affine)  # a copy: painting may go on meanwhile
        except Exception as exc:  # noqa: BLE001 - the one error path
            self.on_error(exc)
            return
        names = dict(layer.metadata.get(NAMES_KEY) or {"background": 0})
        review = self.review_of(layer) if self.review_of is not None else None
        was, self._names[id(layer)] = self._names.get(id(layer)), layer.name
        name = layer.name

        def write() -> None:
            try:
                CorrectionStore(scan).save(name, labels, names, was=was, review=review)
                self.saved += 1
            except Exception as exc:  # noqa: BLE001 - reported, never a crash
                self.failed.emit(exc)

        if wait:
            write()
            return
        self._threads = [t for t in self._threads if t.is_alive()]
        thread = threading.Thread(target=write, name="medseg-autosave", daemon=False)
        self._threads.append(thread)
        thread.start()

    def flush(self, layers) -> None:
        """Write every pending autosave now and wait (the viewer or widget is closing)."""
        for layer in layers:
            timer = self._timers.get(id(layer))
            if timer is not None and timer.isActive():
                self.save_now(layer, wait=True)
        for thread in self._threads:
            thread.join()

    def forget(self, layer: Labels) -> None:
        """The user saved ``layer`` to a file: its autosave is no longer needed."""
        scan = layer.metadata.get(SCAN_KEY)
        if scan is not None:
            for thread in self._threads:
                thread.join()
            CorrectionStore(scan).forget(self._names.pop(id(layer), layer.name))


def restore(viewer, image) -> list[Labels]:
    """Add the autosaved corrections of ``image``'s scan as Labels layers (those not shown yet)."""
    import numpy as np

    from ._layers import labels_layer

    scan = image.metadata.get(SCAN_KEY)
    if scan is None:
        return []
    added = []
    for c in CorrectionStore(scan).load():
        labels = c.labels.astype(np.uint8 if c.labels.max(initial=0) < 256 else np.uint16)
        name = c.layer
        if name in viewer.layers:
            shown = viewer.layers[name]
            if np.array_equal(np.asarray(shown.data), labels_layer(labels, scan, {}, name)[0]):
                continue  # already on screen
            name = f"{name} (restored)"  # e.g. the sample's ground truth, painted on, then reopened
            if name in viewer.layers:
                continue
        data, kwargs, _ = labels_layer(labels, scan, c.names or {"background": 0}, name)
        kwargs["metadata"]["restored"] = c.saved
        kwargs["metadata"]["autosave_name"] = c.layer
        kwargs["metadata"]["review"] = c.review
        added.append(viewer.add_labels(data, **kwargs))
    return added
