"""The Segment widget's save, training-set and fine-tune actions (a mixin of ``SegmentWidget``).

Save writes the corrected mask on the scan's grid; "Add to training set" appends the scan and its
mask to an nnU-Net-style folder (the same scan again updates its case); Fine-tune trains the current
model on that folder in a worker, showing epoch, loss and time left, and says what a Cancel kept.
"""

from __future__ import annotations

import queue
import threading
from pathlib import Path

from napari.layers import Labels
from napari.qt.threading import thread_worker
from napari.utils.notifications import show_info
from qtpy.QtWidgets import QFileDialog

from medseg.errors import MedsegError

from ._finetune import DEFAULT_STEPS, after_cancel, fine_tune_job
from ._jobs import DEFAULT_MODEL, _background
from ._layers import MODEL_KEY, NAMES_KEY
from ._writer import labels_in_scan_order


class TuningMixin:
    """Needs the widget's viewer, corrected, status, model_edit, device_box, epochs, autosave,
    dataset_dir, running, _cancel, _start and _fail."""

    def _labels_layer(self) -> Labels:
        active = self.viewer.layers.selection.active
        if isinstance(active, Labels):
            return active
        if self.corrected is not None and self.corrected in self.viewer.layers:
            return self.corrected
        raise MedsegError("no Labels layer to save: segment a scan first, or select a Labels layer")

    def save(self, path: str | Path, layer: Labels | None = None) -> Path | None:
        """Write the corrected mask (or ``layer``) as NIfTI in its scan's geometry."""
        return self.save_as(path, "nifti", layer)

    def save_dicom(self, path: str | Path, fmt: str, layer: Labels | None = None) -> Path | None:
        """Write the corrected mask (or ``layer``) as a DICOM SEG (``fmt`` "dicom-seg") or an RTSTRUCT
        ("rtstruct") that references the scan's DICOM series; an error for a scan that is not DICOM."""
        return self.save_as(path, fmt, layer)

    def save_as(self, path: str | Path, fmt: str, layer: Labels | None = None) -> Path | None:
        """:func:`medseg.dicom_results.save_result` of the layer; errors go to the widget's one error path."""
        from medseg import __version__
        from medseg.dicom_results import check_result_path, save_result

        try:
            layer = layer or self._labels_layer()
            labels, scan = labels_in_scan_order(layer.data, layer.metadata, layer.name)
            if fmt != "nifti" and scan.series_uid is None:
                raise MedsegError(f"{scan.source}: not a DICOM series; DICOM SEG and RTSTRUCT reference one "
                                  "(save the mask as NIfTI instead)")
            if fmt != "nifti":
                check_result_path(path, fmt, scan.source)
            out = save_result(labels, scan, path, fmt, layer.metadata.get(NAMES_KEY) or {},
                              model_name=layer.metadata.get(MODEL_KEY, "medseg"), version=f"medseg {__version__}")
            self.autosave.forget(layer)  # safe in the user's own file now
        except Exception as exc:  # noqa: BLE001
            self._fail(exc)
            return None
        show_info(f"saved {out}")
        self.status.setText(f"saved {out}")
        return out

    def _save_row(self):
        """Save mask… (NIfTI), Save as DICOM SEG…, Save as RTSTRUCT…"""
        from qtpy.QtWidgets import QHBoxLayout, QPushButton

        self.save_seg_button = QPushButton("Save as DICOM SEG…")
        self.save_seg_button.clicked.connect(lambda: self._save_dicom_dialog("dicom-seg"))
        self.save_rt_button = QPushButton("Save as RTSTRUCT…")
        self.save_rt_button.clicked.connect(lambda: self._save_dicom_dialog("rtstruct"))
        row = QHBoxLayout()
        for button in (self.save_button, self.save_seg_button, self.save_rt_button):
            row.addWidget(button)
        return row

    def _save_dicom_dialog(self, fmt: str):
        title = "Save as DICOM SEG" if fmt == "dicom-seg" else "Save as RTSTRUCT"
        path, _ = QFileDialog.getSaveFileName(self, title, "", "DICOM (*.dcm)")
        if path:
            self.save_dicom(path if path.lower().endswith(".dcm") else f"{path}.dcm", fmt)

    def add_to_training_set(self, folder: str | Path, layer: Labels | None = None):
        """Append the scan and its corrected mask to a dataset folder (nnU-Net layout).

        For the layer under review only the slices the user painted, ticked reviewed or accepted
        after a fill are labelled; every other slice is written as the dataset's ``ignore`` label and
        dataset.json records the slices. Any other Labels layer (a mask opened from a file) is added whole."""
        from medseg.curation import add_case

        try:
            layer = layer or self._labels_layer()
            labels, scan = labels_in_scan_order(layer.data, layer.metadata, layer.name)
            names = layer.metadata.get(NAMES_KEY) or {"background": 0}
            reviewed = layer is self.panel.corrected
            labelled = self.panel.labelled() if reviewed else None
            if reviewed and not labelled:
                raise MedsegError("no slice is labelled yet: paint your corrections on the slices that need them and "
                                  "tick the right ones reviewed (Shift-R); only those slices are added for training")
            case = add_case(folder, scan, labels, names, labelled=labelled)
        except Exception as exc:  # noqa: BLE001
            self._fail(exc)
            return None
        self.dataset_dir = Path(folder)
        what = "updated" if getattr(case, "updated", False) else "added"
        if labelled:
            n = len(self.panel.labelled_set())
            parts = ", ".join(f"{len(v)} {k.replace('_', ' ')}" for k, v in labelled.items())
            slices = f" with {n} labelled slice(s) ({parts}); the other {layer.data.shape[0] - n} are 'ignore'"
        else:
            slices = " (every slice labelled)"
        message = f"{what} {case.name} in {folder}{slices}" + (
            "; this scan was already there: its labels are replaced" if what == "updated" else "")
        show_info(message)
        self.status.setText(message)
        return case

    def fine_tune(self, run_dir: str | Path, dataset: str | Path | None = None, epochs: int | None = None,
                  steps: int = DEFAULT_STEPS, settings: dict | None = None) -> None:
        """Fine-tune the current model on the dataset folder in a worker; the result becomes the model.

        The status line follows it (epoch, step, loss, time left); after Cancel it says what was kept."""
        if self.running:
            return
        dataset = Path(dataset) if dataset else self.dataset_dir
        if dataset is None:
            self._fail(MedsegError("no training set yet: use 'Add to training set…' first"))
            return
        model = self.model_edit.text().strip()
        init = None if model in ("", DEFAULT_MODEL) else model
        if init is None:
            from medseg.bundle import default_bundle_path

            init = str(default_bundle_path())
        self._cancel = threading.Event()
        reports: queue.Queue = queue.Queue()
        job = thread_worker(_background, ignore_errors=True)(
            fine_tune_job, str(dataset), str(run_dir), init, int(epochs or self.epochs.value()), int(steps),
            self.device_box.currentText(), report=reports.put, settings=settings, cancel=self._cancel)

        def tick():
            latest = None
            while not reports.empty():
                latest = reports.get_nowait()
            if latest is not None:
                self.status.setText(f"fine-tuning on {dataset.name}: {latest}")

        def done(result):
            self.model_edit.setText(result.best)
            self.check_domain()
            show_info(f"fine-tuned model ready: {result.best}")
            self.status.setText(f"fine-tuned in {result.seconds / 60:.1f} min; {result.summary}. "
                                f"It is now the model for Segment: {result.best}")

        self._start(job, done, f"fine-tuning on {dataset}…", on_tick=tick,
                    on_cancel=lambda: f"fine-tune cancelled: {after_cancel(run_dir)}")

    def _browse_model(self):
        folder = QFileDialog.getExistingDirectory(self, "Model bundle folder")
        if folder:
            self.model_edit.setText(folder)

    def _save_dialog(self):
        path, _ = QFileDialog.getSaveFileName(self, "Save mask", "", "NIfTI (*.nii.gz *.nii)")
        if path:
            self.save(path)

    def _add_dialog(self):
        folder = QFileDialog.getExistingDirectory(self, "Training set folder")
        if folder:
            self.add_to_training_set(folder)

    def _fine_tune_dialog(self):
        folder = QFileDialog.getExistingDirectory(self, "Folder for the fine-tuning run (a new, empty folder)")
        if folder:
            self.fine_tune(folder)
