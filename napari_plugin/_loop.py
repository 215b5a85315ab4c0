"""The correction loop's actions in the Segment widget (a mixin of ``SegmentWidget``): fill between slices, accept.

A user corrects a structure on a few axial slices (or ticks them reviewed), then *Fill between*
gives the slices between them the structure by shape-based interpolation
(:func:`medseg.interpolate.fill_between`). The filled slices are marked apart in the review list
("≈ filled, not reviewed") and count for nothing in training until the user accepts them (*Accept
filled*), paints on them or ticks them. The fill is one step of the layer's undo history (Ctrl-Z).
"""

from __future__ import annotations

import numpy as np
from napari.utils.notifications import show_info
from qtpy.QtWidgets import QHBoxLayout, QPushButton

from medseg.errors import MedsegError

from ._layers import NAMES_KEY


def display_spacing(layer) -> tuple[float, float]:
    """In-plane voxel size (mm) of a medseg Labels layer's axial slices (display axes 1 and 2)."""
    matrix = np.asarray(layer.affine.affine_matrix, dtype=float)[:3, :3] * np.asarray(layer.scale, dtype=float)
    sizes = np.sqrt((matrix**2).sum(axis=0))
    return float(sizes[1]), float(sizes[2])


def fill_structure(data: np.ndarray, keys: list[int], value: int, spacing: tuple[float, float]) -> tuple[tuple, list[int]]:
    """Where to write what so that the slices between ``keys`` hold the interpolated structure
    ``value`` (:func:`medseg.interpolate.fill_between` with ``replace``): ``((indices, new values),
    filled slices)`` on display data (axial = axis 0). Other structures are never overwritten."""
    from medseg.interpolate import fill_between

    new, slices = fill_between(data, keys, axis=0, spacing=spacing, values=[value], replace=True)
    changed = np.nonzero(new != data)
    return (changed, new[changed]), slices


class CorrectionLoopMixin:
    """Needs the widget's viewer, corrected, panel, label_box, status and _fail."""

    def _loop_controls(self) -> QHBoxLayout:
        self.fill_button = QPushButton("Fill between")
        self.fill_button.setToolTip("give the chosen structure to the slices between the slices you corrected or "
                                    "ticked reviewed (shape-based interpolation); they stay marked ≈ until accepted")
        self.fill_button.clicked.connect(lambda: self.fill_between_slices())
        self.accept_button = QPushButton("Accept filled")
        self.accept_button.setToolTip("the filled slices are right: count them as reviewed (used for training)")
        self.accept_button.clicked.connect(lambda: self.accept_filled())
        row = QHBoxLayout()
        row.addWidget(self.fill_button)
        row.addWidget(self.accept_button)
        return row

    def fill_between_slices(self, value: int | None = None) -> list[int]:
        """Fill the chosen structure (``value``, default the paint label) between the labelled slices; returns
        the slices filled (marked "filled, not reviewed" in the review list)."""
        try:
            layer = self.panel.corrected
            if layer is None or layer not in self.viewer.layers:
                raise MedsegError("nothing to fill: segment a scan first, then correct or review a few slices")
            value = int(self.label_box.currentData() if value is None else value)
            names = {v: k for k, v in (layer.metadata.get(NAMES_KEY) or {}).items()}
            keys = sorted(self.panel.labelled_set())
            if value == 0 or len(keys) < 2:
                raise MedsegError("fill between: choose a structure as the paint label and correct (or tick reviewed, "
                                  f"Shift-R) at least two slices of it first; {len(keys)} slice(s) so far")
            data = np.asarray(layer.data)
            (where, values), slices = fill_structure(data, keys, value, display_spacing(layer))
        except Exception as exc:  # noqa: BLE001 - the one error path
            self._fail(exc)
            return []
        name = names.get(value, str(value))
        if not slices:
            self.status.setText(f"fill between: no two of your slices {keys} hold {name} with slices between them")
            return []
        self.panel.filling = True
        try:
            if len(values):
                layer.data_setitem(where, values)  # one undoable step
        finally:
            self.panel.filling = False
        self.panel.mark_filled(slices)
        message = (f"filled {name} on {len(slices)} slice(s) ({slices[0]}-{slices[-1]}); they are marked ≈ (filled, "
                   f"not reviewed) and not used for training until you accept them, paint on them or tick them")
        self.status.setText(message)
        show_info(message)
        return slices

    def accept_filled(self) -> list[int]:
        """Count the filled slices as reviewed (labelled for training)."""
        accepted = self.panel.accept_filled()
        self.status.setText(f"accepted {len(accepted)} filled slice(s)" if accepted else "no filled slice to accept")
        return accepted
