"""Live preview: the axial slice on screen is segmented as the user scrolls, before (or without)
running the whole volume.

Each slice takes one forward pass of the prepared model (``Predictor.predict_slice``: the same
neighbour slices, intensity range and resampling as the full run, so the same labels), about
50-100 ms for a 512x512 slice on 2 CPU cores (``benchmarks/bench_live.py``). It runs in the GUI
thread after a short pause in scrolling, so a fast scroll costs one prediction, not dozens; slices
already shown are kept. The result goes to its own read-only layer, ``<image> live``.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
from napari.layers import Image, Labels
from qtpy.QtCore import QTimer

from ._layers import SCAN_KEY, labels_layer

PAUSE_MS = 60  # scrolling pause before a slice is predicted


class LivePreview:
    def __init__(self, viewer, predictor_for: Callable, on_error: Callable[[BaseException], None]) -> None:
        self.viewer = viewer
        self.predictor_for = predictor_for  # () -> Predictor (the widget's model and device)
        self.on_error = on_error
        self.image: Image | None = None
        self.layer: Labels | None = None
        self.done: set[int] = set()
        self._predictor = None
        self._live = None
        self._timer = QTimer()
        self._timer.setSingleShot(True)
        self._timer.setInterval(PAUSE_MS)
        self._timer.timeout.connect(self.update)
        viewer.dims.events.point.connect(self._moved)

    @property
    def active(self) -> bool:
        return self.image is not None

    def start(self, image: Image) -> Labels:
        """Preview ``image`` from now on; returns the live layer (created, or reused when empty)."""
        self.stop()
        scan = image.metadata[SCAN_KEY]
        predictor = self.predictor_for()
        self._live = predictor.prepare_live(scan)  # refuses what Segment refuses, at once
        self._predictor = predictor
        name = f"{image.name} live"
        if name in self.viewer.layers:
            self.viewer.layers.remove(name)
        dtype = np.uint8 if max(predictor.card.label_values) < 256 else np.uint16
        data, kwargs, _ = labels_layer(np.zeros(scan.shape, dtype), scan, predictor.card.labels, name)  # scan order
        self.layer = self.viewer.add_labels(data, **kwargs)
        self.layer.editable = False
        self.image, self.done = image, set()
        self.viewer.layers.selection.active = image
        self.update()
        return self.layer

    def stop(self) -> None:
        self._timer.stop()
        self.image, self._predictor, self._live = None, None, None

    def _moved(self, *_) -> None:
        if self.active:
            self._timer.start()

    def current_slice(self) -> int | None:
        if self.image is None or self.image not in self.viewer.layers:
            return None
        k = int(round(float(self.image.world_to_data(self.viewer.dims.point)[0])))
        return k if 0 <= k < self.image.data.shape[0] else None

    def update(self) -> int | None:
        """Predict the axial slice on screen (if not done yet); returns its index."""
        k = self.current_slice()
        if k is None or self.layer is None or self.layer not in self.viewer.layers:
            return None
        if k in self.done:
            return k
        try:
            labels = self._predictor.predict_slice(self.image.metadata[SCAN_KEY], k, cache=self._live)
        except Exception as exc:  # noqa: BLE001 - the one error path; live mode stops
            self.stop()
            self.on_error(exc)
            return None
        self.layer.data[k] = labels
        self.done.add(k)
        self.layer.refresh()
        return k
