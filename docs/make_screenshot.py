"""Refresh the napari screenshots in docs/ from a real viewer (run under Xvfb).

- ``napari_segment.png``: the axial review: masks over the sample CT, the legend with volumes,
  the uncertain slices (worst first, highlighted above the threshold);
- ``napari_multiplanar.png``: the multi-planar layout (axial, coronal, sagittal, radiological);
- ``napari_domain_warning.png``: the warning for a scan outside the model's training data (a real
  MR from ``../shared/data`` when present, else an MR-like synthetic volume).

    xvfb-run -a -s "-screen 0 1600x1000x24" python docs/make_screenshot.py      # or: make screenshot
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

DOCS = Path(__file__).resolve().parent
SHARED_MR = DOCS.parent.parent / "shared" / "data" / "mr_3mm_lps.nii.gz"


def _settle(seconds: float = 1.0) -> None:
    from qtpy.QtWidgets import QApplication

    from napari._qt.dialogs.qt_notification import NapariQtNotification

    end = time.time() + seconds
    while time.time() < end:
        QApplication.processEvents()
        time.sleep(0.02)
    for w in QApplication.allWidgets():  # toasts hide the canvas
        if isinstance(w, NapariQtNotification):
            w.close()
    for _ in range(10):
        QApplication.processEvents()
        time.sleep(0.02)


def _wait(widget) -> bool:
    from qtpy.QtWidgets import QApplication

    deadline = time.time() + 600
    while widget.running and time.time() < deadline:
        QApplication.processEvents()
        time.sleep(0.02)
    return widget.corrected is not None


def _viewer():
    import napari

    from medseg_napari._widget import SegmentWidget

    viewer = napari.Viewer(title="medseg", show=True)
    viewer.window._qt_window.resize(1560, 960)
    widget = SegmentWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Segment (medseg)", area="right")
    return viewer, widget


def review(out: Path) -> int:
    viewer, widget = _viewer()
    viewer.open_sample("medseg", "phantom_ct")
    viewer.layers["phantom CT ground truth"].visible = False
    widget.image_box.setCurrentText("phantom CT")
    widget.segment("phantom CT")
    if not _wait(widget):
        print(f"segmentation failed: {widget.status.text()}", file=sys.stderr)
        return 1
    data = widget.corrected.data  # the axial slice showing the most organs
    k = int(np.argmax([len(np.unique(data[i])) * 1e6 + np.count_nonzero(data[i]) for i in range(data.shape[0])]))
    widget.go_to_slice(k)
    viewer.layers.selection.active = widget.corrected
    viewer.reset_view()
    _settle()
    viewer.screenshot(str(out), canvas_only=False, flash=False)
    print(f"wrote {out}")
    return _multiplanar(viewer, widget, DOCS / "napari_multiplanar.png")


def _multiplanar(viewer, widget, out: Path) -> int:
    if not hasattr(widget, "multiplanar"):
        viewer.close()
        return 0
    mpr = widget.multiplanar()
    _settle(1.0)
    for view in mpr.views.values():
        view.reset_view()
    _settle(2.0)
    viewer.screenshot(str(out), canvas_only=False, flash=False)
    print(f"wrote {out}")
    viewer.close()
    return 0


def _mr_path(tmp: Path) -> Path:
    if SHARED_MR.is_file():  # a copy: the warning names the file, not where this machine keeps it
        import shutil

        return Path(shutil.copy(SHARED_MR, tmp / SHARED_MR.name))
    import nibabel as nib

    from medseg.phantom import make_phantom

    ph = make_phantom(7, shape=(128, 128, 40))
    tissue = np.array([0.0, 520.0, 760.0, 900.0, 880.0, 300.0])
    mr = np.where(ph.image > -500, 420.0, 0.0) + tissue[ph.labels] * (ph.labels > 0)
    mr = (mr + np.random.default_rng(1).gamma(2.0, 20.0, size=mr.shape)).astype(np.float32)
    path = tmp / "abdomen_t2.nii.gz"
    nib.save(nib.Nifti1Image(mr, ph.affine), str(path))
    return path


def domain_warning(out: Path) -> int:
    import tempfile

    viewer, widget = _viewer()
    with tempfile.TemporaryDirectory() as tmp:
        layer = viewer.open(str(_mr_path(Path(tmp))), plugin="medseg")[0]
        widget.image_box.setCurrentText(layer.name)
        widget.segment(layer.name)
        if not _wait(widget):
            print(f"segmentation failed: {widget.status.text()}", file=sys.stderr)
            return 1
        widget.go_to_slice(layer.data.shape[0] // 2)
        viewer.reset_view()
        _settle()
        viewer.screenshot(str(out), canvas_only=False, flash=False)
    print(f"wrote {out}")
    viewer.close()
    return 0


def main() -> int:
    import warnings

    warnings.filterwarnings("ignore", message=".*PyQt5 backend is deprecated")
    return review(DOCS / "napari_segment.png") or domain_warning(DOCS / "napari_domain_warning.png")


if __name__ == "__main__":
    raise SystemExit(main())
