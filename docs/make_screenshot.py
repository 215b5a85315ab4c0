"""Refresh docs/napari_segment.png: a real napari viewer with the Segment widget's masks over the sample CT.

    xvfb-run -a python docs/make_screenshot.py      # or: make screenshot
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np


def main(out: Path = Path(__file__).resolve().parent / "napari_segment.png") -> int:
    import warnings

    warnings.filterwarnings("ignore", message=".*PyQt5 backend is deprecated")
    import napari
    from qtpy.QtWidgets import QApplication

    from medseg_napari._widget import SegmentWidget

    viewer = napari.Viewer(title="medseg", show=True)
    viewer.window._qt_window.resize(1500, 900)
    viewer.open_sample("medseg", "phantom_ct")
    viewer.layers["phantom CT ground truth"].visible = False
    widget = SegmentWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Segment (medseg)", area="right")
    widget.segment("phantom CT")
    deadline = time.time() + 600
    while widget.running and time.time() < deadline:
        QApplication.processEvents()
        time.sleep(0.02)
    if widget.corrected is None:
        print(f"segmentation failed: {widget.status.text()}", file=sys.stderr)
        return 1
    # the axial slice showing the most organs
    data = widget.corrected.data
    k = int(np.argmax([len(np.unique(data[i])) * 1e6 + np.count_nonzero(data[i]) for i in range(data.shape[0])]))
    widget.go_to_slice(k)
    viewer.layers.selection.active = widget.corrected
    viewer.reset_view()
    for _ in range(20):
        QApplication.processEvents()
        time.sleep(0.05)
    from napari._qt.dialogs.qt_notification import NapariQtNotification

    for w in QApplication.allWidgets():  # toasts (e.g. napari's PyQt5 deprecation notice) hide the canvas
        if isinstance(w, NapariQtNotification):
            w.close()
    for _ in range(10):
        QApplication.processEvents()
        time.sleep(0.05)
    viewer.screenshot(str(out), canvas_only=False, flash=False)
    print(f"wrote {out}")
    viewer.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
