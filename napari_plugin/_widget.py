"""The Segment widget: run a model on an image layer, review worst-first, correct, save, fine-tune.

Long work (segmentation, fine-tuning) runs in a napari ``thread_worker``: the viewer stays
responsive, a progress bar follows it and Cancel stops it. Every problem is a napari
notification with medseg's one-line message; nothing is lost (the prediction stays as its own
layer, corrections happen on a copy).
"""

from __future__ import annotations

import os
import threading
import traceback
from pathlib import Path

import numpy as np
from napari.layers import Image, Labels
from napari.qt.threading import thread_worker
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from medseg.display import CT_WINDOWS, window_limits
from medseg.errors import MedsegError

from ._autosave import Autosaver, restore
from ._finetune import DEFAULT_EPOCHS
from ._jobs import DEFAULT_MODEL, Failed, _background, _predictor, _segment_job
from ._live import LivePreview
from ._loop import CorrectionLoopMixin
from ._layers import SCAN_KEY, labels_layer
from ._reader import prefer_medseg_reader
from ._review import ReviewPanel
from ._views import follow_radiological_convention, open_multiplanar, show_plane
from ._tuning import TuningMixin


def describe(exc: BaseException) -> str:
    """The one line every failure is shown with: medseg's message, else the type and first line."""
    from medseg.distributed import describe as one_line

    return one_line(exc)


def debugging() -> bool:
    """``MEDSEG_DEBUG=1``: failures also print their traceback in the terminal."""
    return os.environ.get("MEDSEG_DEBUG", "").strip().lower() not in ("", "0", "false", "no")

class SegmentWidget(TuningMixin, CorrectionLoopMixin, QWidget):
    """Dock widget: Segment, review (uncertain slices first), correct, fill between, save, add to a dataset, fine-tune."""

    def __init__(self, napari_viewer):
        super().__init__()
        self.viewer = napari_viewer
        self.worker = None
        self._cancel = threading.Event()
        self.running = False
        self.prediction: Labels | None = None
        self.corrected: Labels | None = None

        self.autosave = Autosaver(self._fail, review_of=self._review_state)
        self.live = LivePreview(self.viewer, lambda: _predictor(self.model_edit.text().strip(),
                                                                 self.device_box.currentText()), self._live_failed)
        self.panel = ReviewPanel(self.viewer, on_reviewed=lambda: self.autosave.touch(self.panel.corrected))
        self._make_controls()
        self._lay_out()
        self.dataset_dir: Path | None = None

        self.viewer.layers.events.inserted.connect(self._inserted)
        self.viewer.layers.events.removing.connect(self._removing)
        self.viewer.layers.events.removed.connect(self._refresh_images)
        for layer in list(self.viewer.layers):
            self._adopt(layer)
        self._refresh_images()
        self.check_domain()
        follow_radiological_convention(self.viewer)  # superior up in coronal and sagittal, right on the left
        if prefer_medseg_reader():  # scans open with medseg from now on, without "choose reader"
            self.status.setText("medseg now opens NIfTI, NRRD, MHA and DICOM files (Preferences > Plugins to change)")

    def _make_controls(self) -> None:
        self.image_box = QComboBox()
        self.model_edit = QLineEdit(DEFAULT_MODEL)
        self.browse_button = QPushButton("Browse…")
        self.browse_button.clicked.connect(self._browse_model)
        self.device_box = QComboBox()
        self.device_box.addItems(["auto", "cpu", "cuda"])
        self.plane_buttons = {}
        for plane in ("axial", "coronal", "sagittal"):
            button = QPushButton(plane)
            button.clicked.connect(lambda _=False, p=plane: show_plane(self.viewer, p))
            self.plane_buttons[plane] = button
        self.mpr_button = QPushButton("multi-planar")
        self.mpr_button.setToolTip("axial, coronal and sagittal side by side, linked, radiological convention")
        self.mpr_button.clicked.connect(lambda: self.multiplanar())
        self.live_box = QCheckBox("live preview: segment the axial slice on screen as you scroll")
        self.live_box.toggled.connect(self.set_live)
        self.window_box = QComboBox()
        self.window_box.addItems(list(CT_WINDOWS))
        self.window_box.textActivated.connect(self.set_window)
        self.image_box.currentTextChanged.connect(self._show_windows)
        self.image_box.currentTextChanged.connect(self.check_domain)
        self.model_edit.editingFinished.connect(self.check_domain)
        self.card_label = QLabel("")  # what the model was trained on (its card)
        self.card_label.setWordWrap(True)
        self.domain_label = QLabel("")  # this scan against that: shown before and after segmenting
        self.domain_label.setWordWrap(True)
        self.domain_label.setStyleSheet("color: #ffb347;")
        self.domain_label.setVisible(False)
        self._domain: dict = {}
        self.run_button = QPushButton("Segment")
        self.run_button.clicked.connect(lambda: self.segment())
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.cancel_button.clicked.connect(self.cancel)
        self.progress = QProgressBar()
        self.status = QLabel("")
        self.status.setWordWrap(True)
        self.label_box = QComboBox()
        self.label_box.currentIndexChanged.connect(self._pick_label)
        self.save_button = QPushButton("Save mask…")
        self.save_button.clicked.connect(self._save_dialog)
        self.add_button = QPushButton("Add to training set…")
        self.add_button.clicked.connect(self._add_dialog)
        self.epochs = QSpinBox()
        self.epochs.setRange(1, 500)
        self.epochs.setValue(DEFAULT_EPOCHS)
        self.epochs.setToolTip("about half a minute per epoch and case on 2 CPU cores")
        self.tune_button = QPushButton("Fine-tune")
        self.tune_button.clicked.connect(self._fine_tune_dialog)

    def _lay_out(self) -> None:
        form = QFormLayout()
        form.addRow("image", self.image_box)
        row = QHBoxLayout()
        row.addWidget(self.model_edit)
        row.addWidget(self.browse_button)
        form.addRow("model", row)
        form.addRow("", self.card_label)
        form.addRow("device", self.device_box)
        form.addRow("CT window", self.window_box)
        views = QHBoxLayout()
        for button in [*self.plane_buttons.values(), self.mpr_button]:
            views.addWidget(button)
        form.addRow("view", views)
        form.addRow("", self.live_box)
        self.window_label = form.labelForField(self.window_box)
        buttons = QHBoxLayout()
        buttons.addWidget(self.run_button)
        buttons.addWidget(self.cancel_button)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addLayout(buttons)
        layout.addWidget(self.progress)
        layout.addWidget(self.domain_label)
        layout.addWidget(self.status)
        layout.addWidget(QLabel("review: structures, and the least certain slices first (click to go there)"))
        layout.addWidget(self.panel)
        paint = QFormLayout()
        paint.addRow("paint label", self.label_box)
        layout.addLayout(paint)
        layout.addLayout(self._loop_controls())
        layout.addLayout(self._save_row())
        layout.addWidget(self.add_button)
        tune_row = QHBoxLayout()
        tune_row.addWidget(QLabel("epochs"))
        tune_row.addWidget(self.epochs)
        tune_row.addWidget(self.tune_button)
        layout.addLayout(tune_row)

    # ------------------------------------------------------------------ helpers

    def _inserted(self, event) -> None:
        self._adopt(event.value)
        self._refresh_images()

    def _adopt(self, layer) -> None:
        """Autosave every Labels layer of a medseg scan; restore a newly opened scan's autosaved corrections."""
        if isinstance(layer, Labels) and SCAN_KEY in layer.metadata:
            restored = "restored" in layer.metadata  # its autosave file is known by its name then
            self.autosave.watch(layer, saved_as=layer.metadata.get("autosave_name") if restored else None)
        elif isinstance(layer, Image) and SCAN_KEY in layer.metadata:
            try:
                restored = restore(self.viewer, layer)
            except Exception as exc:  # noqa: BLE001 - the one error path
                self._fail(exc)
                return
            if restored:
                self.corrected = restored[-1]
                self.panel.restore(self.corrected, self.corrected.metadata.get("review") or {})
                when = restored[-1].metadata.get("restored", "")
                message = (f"restored your autosaved corrections of {layer.name} ({when}): "
                           + ", ".join(f"'{r.name}'" for r in restored))
                self.status.setText(message)
                show_info(message)

    def _review_state(self, layer) -> dict | None:
        return self.panel.state() if layer is self.panel.corrected else None

    def _removing(self, event) -> None:
        layer = self.viewer.layers[event.index] if isinstance(event.index, int) else None
        if isinstance(layer, Labels):
            self.autosave.flush([layer])  # a stroke in the last second is not lost with the layer

    def _refresh_images(self, *_):
        current = self.image_box.currentText()
        names = [layer.name for layer in self.viewer.layers if isinstance(layer, Image)]
        self.image_box.clear()
        self.image_box.addItems(names)
        if current in names:
            self.image_box.setCurrentText(current)

    def _show_windows(self, *_) -> None:
        """CT window presets only for CT images (MR has no Hounsfield units)."""
        name = self.image_box.currentText()
        layer = self.viewer.layers[name] if name in self.viewer.layers else None
        ct = layer is None or bool(layer.metadata.get("ct_windows", True))
        self.window_box.setVisible(ct)
        self.window_label.setVisible(ct)

    def _card(self):
        from medseg.bundle import load_card

        model = self.model_edit.text().strip()
        return load_card(None if model in ("", DEFAULT_MODEL) else model)

    def check_domain(self, *_) -> list[str]:
        """The chosen scan against what the model was trained on (its card): the warnings are shown
        in the widget, and once per scan and model as a notification. Returns them."""
        from medseg.domain import describe_training_data, domain_warnings

        name = self.image_box.currentText()
        layer = self.viewer.layers[name] if name in self.viewer.layers else None
        try:
            card = self._card()
        except MedsegError as exc:
            self.card_label.setText(str(exc))
            self.domain_label.setVisible(False)
            return []
        self.card_label.setText(f"{card.name}. {describe_training_data(card)}")
        if layer is None or SCAN_KEY not in layer.metadata:
            self.domain_label.setVisible(False)
            return []
        key = (id(layer), card.name, self.model_edit.text().strip())
        new = key not in self._domain
        if new:
            self._domain[key] = domain_warnings(layer.metadata[SCAN_KEY], card)
        found = self._domain[key]
        self.domain_label.setText(f"⚠ {layer.name} is outside what the model was trained on; check the result closely:\n"
                                  + "\n".join("• " + w for w in found))
        self.domain_label.setVisible(bool(found))
        if new and found:
            more = f" (+{len(found) - 1} more in the widget)" if len(found) > 1 else ""
            show_warning(f"outside the model's training data: {found[0]}{more}")
        return found

    def multiplanar(self):
        """One click: axial, coronal and sagittal at once, linked (a dock beside the main view)."""
        try:
            return open_multiplanar(self.viewer)
        except Exception as exc:  # noqa: BLE001 - the one error path
            self._fail(exc)
            return None

    def set_live(self, on: bool) -> None:
        """Live preview of the chosen image on or off (the checkbox)."""
        if not on:
            self.live.stop()
            return
        try:
            layer = self._image()
            self.live.start(layer)
        except Exception as exc:  # noqa: BLE001 - the one error path
            self._live_failed(exc)
            return
        self.status.setText(f"live preview of {layer.name}: scroll through the axial slices (Segment runs them all)")

    def _live_failed(self, exc: BaseException) -> None:
        self.live_box.blockSignals(True)
        self.live_box.setChecked(False)
        self.live_box.blockSignals(False)
        self._fail(exc)

    def _image(self, name: str | None = None) -> Image:
        name = name or self.image_box.currentText()
        if not name or name not in self.viewer.layers:
            raise MedsegError("no image layer: open a scan first (File > Open, or File > Open Sample > medseg)")
        layer = self.viewer.layers[name]
        if SCAN_KEY not in layer.metadata:
            raise MedsegError(f"layer '{name}': not opened with medseg's reader, so its geometry is unknown")
        return layer

    def set_window(self, preset: str) -> None:
        """Apply a CT window preset (soft tissue, lung, bone, brain) to the chosen image layer."""
        try:
            layer = self._image()
        except MedsegError as exc:
            self._fail(exc)
            return
        low, high = window_limits(*CT_WINDOWS[preset])
        layer.contrast_limits_range = (min(low, layer.contrast_limits_range[0]), max(high, layer.contrast_limits_range[1]))
        layer.contrast_limits = (low, high)

    def _fail(self, exc: BaseException) -> None:
        """The one error path: one notification with one line; the traceback only with MEDSEG_DEBUG=1."""
        message = describe(exc)
        self.status.setText(message)
        show_error(message)
        if debugging():
            traceback.print_exception(type(exc), exc, exc.__traceback__)

    def _start(self, worker, on_done, label: str, on_tick=None, on_cancel=None) -> None:
        """Run ``worker``: progress bar, Cancel, one error path. ``on_tick()`` runs in the GUI thread
        at each report (e.g. to show epoch and loss); ``on_cancel()`` gives the line shown after Cancel."""
        self.worker = worker
        self.running = True
        self.run_button.setEnabled(False)
        self.tune_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        self.progress.setValue(0)
        self.status.setText(label)

        def cancelled():
            message = on_cancel() if on_cancel is not None else "cancelled"
            self.status.setText(message)
            if on_cancel is not None:
                show_info(message)

        def yielded(value):
            if value is not None:
                done, total = value
                self.progress.setMaximum(max(total, 1))
                self.progress.setValue(done)
            if on_tick is not None:
                on_tick()

        def returned(value):
            if isinstance(value, Failed):
                self._fail(value.error)
                return
            if value is None:
                cancelled()
                return
            try:
                on_done(value)
            except Exception as exc:  # noqa: BLE001 - shown, never a crash
                self._fail(exc)

        def finished():
            self.running = False
            self.worker = None
            self.run_button.setEnabled(True)
            self.tune_button.setEnabled(True)
            self.cancel_button.setEnabled(False)

        worker.yielded.connect(yielded)
        worker.returned.connect(returned)
        worker.aborted.connect(cancelled)
        worker.errored.connect(self._fail)
        worker.finished.connect(finished)
        worker.start()

    def cancel(self) -> None:
        if self.worker is not None:
            self._cancel.set()  # stops the computation itself at its next progress report
            self.worker.quit()
            self.status.setText("cancelling…")

    # ------------------------------------------------------------------ segment and review

    def segment(self, image_name: str | None = None) -> None:
        """Segment the chosen image layer in a worker; adds '<image> prediction' and '<image> corrected'."""
        if self.running:
            return
        try:
            layer = self._image(image_name)
            model = self.model_edit.text().strip()
            if model and model != DEFAULT_MODEL:
                from medseg.bundle import load_bundle

                load_bundle(model)  # a folder that is not a bundle fails here, with its reason
        except Exception as exc:  # noqa: BLE001
            self._fail(exc)
            return
        scan = layer.metadata[SCAN_KEY]
        self._cancel = threading.Event()
        # ignore_errors: a failure goes to the one error path (errored -> _fail), not also to napari's hook
        job = thread_worker(_background, ignore_errors=True)(
            _segment_job, scan, model, self.device_box.currentText(), cancel=self._cancel
        )
        self._start(job, lambda value: self._show_result(layer, scan, *value), f"segmenting {layer.name}…")

    def _show_result(self, layer: Image, scan, labels, entropy, names, model_name, notes=()) -> None:
        pred_name, corr_name = f"{layer.name} prediction", f"{layer.name} corrected"
        if self.live.image is layer or f"{layer.name} live" in self.viewer.layers:  # the full result replaces it
            self.live_box.setChecked(False)
            if f"{layer.name} live" in self.viewer.layers:
                self.viewer.layers.remove(f"{layer.name} live")
        kept = self._keep_corrections(pred_name, corr_name)
        if pred_name in self.viewer.layers:
            self.viewer.layers.remove(pred_name)
        data, kwargs, _ = labels_layer(labels, scan, names, pred_name, model_name)
        self.prediction = self.viewer.add_labels(data, **kwargs)
        self.prediction.editable = False
        self.prediction.visible = False
        data, kwargs, _ = labels_layer(labels, scan, names, corr_name, model_name)
        self.corrected = self.viewer.add_labels(data.copy(), **kwargs)
        self.viewer.layers.selection.active = self.corrected
        self.label_box.blockSignals(True)
        self.label_box.clear()
        for name, value in sorted(names.items(), key=lambda kv: kv[1]):
            self.label_box.addItem(f"{value}: {name}", int(value))
        self.label_box.blockSignals(False)
        self.label_box.setCurrentIndex(1 if len(names) > 1 else 0)
        self._pick_label()
        self.entropy = entropy
        self.panel.set_result(self.corrected, self.prediction, entropy)
        present = sorted(set(np.unique(labels).tolist()) - {0})
        found = ", ".join(n for n, v in names.items() if v in present) or "nothing"
        text = f"{model_name}: found {found}. Correct '{corr_name}' with the paint tools."
        if kept:
            text += f" Your earlier corrections are kept in '{kept}'."
        if self.image_box.currentText() != layer.name:
            self.image_box.setCurrentText(layer.name)
        domain = self.check_domain()
        for note in notes:
            if note not in domain:  # an intensity doubt is also a domain warning: told once
                show_warning(note)
        if domain:
            text += f" The scan is outside the model's training data ({len(domain)} warning(s) above): check it closely."
        self.status.setText("\n".join(["warning: " + n for n in notes if n not in domain] + [text]))

    def _keep_corrections(self, pred_name: str, corr_name: str) -> str | None:
        """Before a new result replaces ``corr_name``: a corrected layer the user painted on (it
        differs from the prediction it started as, or that prediction is gone) is renamed, never
        removed; an untouched one is removed. Returns the name it was kept under, or None."""
        if corr_name not in self.viewer.layers:
            return None
        old = self.viewer.layers[corr_name]
        start = self.viewer.layers[pred_name].data if pred_name in self.viewer.layers else None
        if start is not None and start.shape == old.data.shape and np.array_equal(start, old.data):
            self.viewer.layers.remove(corr_name)
            return None
        n = 1
        while f"{corr_name} (kept {n})" in self.viewer.layers:
            n += 1
        old.name = f"{corr_name} (kept {n})"
        return old.name

    def go_to_slice(self, k: int) -> None:
        """Show axial slice ``k`` (display axis 0, inferior to superior) of the segmented scan."""
        self.panel.go_to(k)

    def _pick_label(self, *_):
        value = self.label_box.currentData()
        if self.corrected is not None and value is not None:
            self.corrected.selected_label = int(value)
