"""Review panel: legend with volumes that follow corrections, and the uncertain slices, worst first.

- The legend lists every structure with its colour, its volume in mL on the corrected layer and
  the change from the model's prediction; it is recomputed shortly after each brush stroke.
- The slice list ranks axial slices by the model's uncertainty (its scale and the review
  threshold are stated above it); slices above the threshold are highlighted, reviewed ones ticked.
- Keys (on the viewer): ``N`` next uncertain slice, ``Shift-N`` previous, ``Shift-R`` mark the
  slice on screen reviewed and go to the next one.
- What the user checked is kept per axial slice: *painted* (a brush, fill or erase stroke made in
  the axial view), *reviewed* (Shift-R), *filled* (by "Fill between", not yet looked at: shown
  apart, and not used for training until accepted) and *accepted* fills. Painted, reviewed and
  accepted slices are the labelled ones that "Add to training set" keeps.
"""

from __future__ import annotations

import numpy as np
from napari.layers import Labels
from qtpy.QtCore import QTimer
from qtpy.QtGui import QBrush, QColor, QFont
from qtpy.QtWidgets import (
    QHeaderView,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from medseg.display import label_colours
from medseg.inference import UNCERTAIN_SLICE, UNCERTAINTY_SCALE
from medseg.metrics import label_volumes_ml

from ._layers import NAMES_KEY, SCAN_KEY

KEYS = {"next": "N", "previous": "Shift-N", "reviewed": "Shift-R"}
ROLE = 256  # Qt.UserRole: the slice index of a list item


def volumes(layer: Labels) -> dict[str, float]:
    """mL per structure of a medseg Labels layer (its scan's voxel size)."""
    scan = layer.metadata[SCAN_KEY]
    names = layer.metadata.get(NAMES_KEY) or {}
    return label_volumes_ml(np.asarray(layer.data), scan.voxel_volume_ml, names)


class ReviewPanel(QWidget):
    def __init__(self, viewer, on_reviewed=None) -> None:
        super().__init__()
        self.viewer = viewer
        self.on_reviewed = on_reviewed  # called after a slice is marked reviewed (the widget autosaves it)
        self.corrected: Labels | None = None
        self.prediction: Labels | None = None
        self.order: list[int] = []  # slices, worst first
        self.scores: np.ndarray = np.zeros(0)
        self.reviewed: set[int] = set()
        self.painted: set[int] = set()  # axial slices the user painted on (in the axial view)
        self.filled: set[int] = set()  # slices written by "Fill between", not yet accepted
        self.accepted: set[int] = set()  # filled slices the user accepted
        self.filling = False  # True while a fill writes the layer: its paint event is not the user's
        self._cursor = -1  # position in ``order`` of the slice last visited with N / Shift-N
        self._model_volumes: dict[str, float] = {}
        self.legend = QTableWidget(0, 3)
        self.legend.setHorizontalHeaderLabels(["structure", "mL", "Δ mL vs model"])
        self.legend.verticalHeader().setVisible(False)
        self.legend.horizontalHeader().setSectionResizeMode(QHeaderView.Stretch)
        self.legend.setEditTriggers(QTableWidget.NoEditTriggers)
        self.scale = QLabel("")
        self.scale.setWordWrap(True)
        self.slices = QListWidget()
        self.slices.itemClicked.connect(lambda item: self.go_to(int(item.data(ROLE))))
        self.position = QLabel("")
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(400)
        self._timer.timeout.connect(self.update_volumes)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.legend)
        layout.addWidget(self.scale)
        layout.addWidget(self.slices)
        layout.addWidget(self.position)
        viewer.dims.events.point.connect(self._show_position)
        self._bind_keys()

    # ------------------------------------------------------------------ result
    def set_result(self, corrected: Labels, prediction: Labels | None, scores: np.ndarray) -> None:
        self.corrected, self.prediction = corrected, prediction
        self.scores = np.asarray(scores, dtype=float)
        self.order = [int(k) for k in np.argsort(-self.scores, kind="stable")]
        for marks in (self.reviewed, self.painted, self.filled, self.accepted):
            marks.clear()
        self._cursor = -1
        self._model_volumes = volumes(prediction) if prediction is not None else {}
        corrected.events.paint.connect(lambda *_: self._timer.start())
        corrected.events.paint.connect(lambda event, layer=corrected: self._on_paint(layer, event))
        corrected.events.set_data.connect(lambda *_: self._timer.start())
        self._fill_legend()
        self._fill_slices()

    def _fill_legend(self) -> None:
        names = self.corrected.metadata.get(NAMES_KEY) or {}
        colours = label_colours(names)
        rows = [(n, v) for n, v in sorted(names.items(), key=lambda kv: kv[1]) if v]
        self.legend.setRowCount(len(rows))
        for r, (name, value) in enumerate(rows):
            item = QTableWidgetItem(f"{value}  {name}")
            rgba = np.asarray(colours.get(value, (1, 1, 1, 1)), dtype=float)
            item.setIcon(_swatch(rgba))
            self.legend.setItem(r, 0, item)
        self.update_volumes()

    def update_volumes(self) -> None:
        """Refresh the mL column from the corrected layer (after strokes, debounced)."""
        if self.corrected is None:
            return
        now = volumes(self.corrected)
        for r in range(self.legend.rowCount()):
            name = self.legend.item(r, 0).text().split("  ", 1)[1]
            ml = now.get(name, 0.0)
            delta = ml - self._model_volumes.get(name, ml)
            self.legend.setItem(r, 1, QTableWidgetItem(f"{ml:.1f}"))
            self.legend.setItem(r, 2, QTableWidgetItem(f"{delta:+.1f}" if abs(delta) >= 0.05 else "0"))

    def _fill_slices(self) -> None:
        flagged = int((self.scores > UNCERTAIN_SLICE).sum())
        self.scale.setText(f"uncertainty = {UNCERTAINTY_SCALE}. {flagged} of {len(self.scores)} slices above {UNCERTAIN_SLICE:g} "
                           f"(highlighted). Keys: {KEYS['next']} next, {KEYS['previous']} previous, "
                           f"{KEYS['reviewed']} mark reviewed.")
        self.slices.clear()
        for k in self.order:
            item = QListWidgetItem()
            item.setData(ROLE, k)
            self.slices.addItem(item)
            self._style(item)

    def _style(self, item: QListWidgetItem) -> None:
        k = int(item.data(ROLE))
        done = k in self.labelled_set()
        marks = "".join(m for m, on in (("✓", k in self.reviewed), ("✎", k in self.painted), ("≈", k in self.filled),
                                         ("≈✓", k in self.accepted)) if on)
        tail = " (filled, not reviewed)" if k in self.filled else ""
        item.setText(f"{marks + ' ' if marks else ''}slice {k}: {self.scores[k]:.3f}{tail}")
        high = bool(self.scores[k] > UNCERTAIN_SLICE) and not done
        colour = "#6fa8dc" if k in self.filled else ("#ff6b5a" if high else ("#7f7f7f" if done else "#d0d0d0"))
        item.setForeground(QBrush(QColor(colour)))
        font = QFont()
        font.setBold(high)
        item.setFont(font)

    # ------------------------------------------------------------------ navigation
    def current_slice(self) -> int | None:
        layer = self.corrected
        if layer is None:
            return None
        k = int(round(float(layer.world_to_data(self.viewer.dims.point)[0])))
        return min(max(k, 0), layer.data.shape[0] - 1)

    def go_to(self, k: int) -> None:
        """Show axial slice ``k`` (display axis 0, inferior to superior)."""
        if self.corrected is None:
            return
        if k in self.order:
            self._cursor = self.order.index(k)
            self.slices.setCurrentRow(self._cursor)
        self.viewer.dims.set_point(0, float(self.corrected.data_to_world((k, 0, 0))[0]))

    def step(self, direction: int) -> int | None:
        """Go to the next (+1) or previous (-1) slice not yet reviewed or painted, in worst-first order."""
        n = len(self.order)
        i = self._cursor
        done = self.labelled_set()
        for _ in range(n):
            i += direction
            if not 0 <= i < n:
                return None
            if self.order[i] not in done:
                self.go_to(self.order[i])
                return self.order[i]
        return None

    def mark_reviewed(self) -> int | None:
        """Tick the slice on screen as reviewed, then go to the next uncertain one."""
        k = self.current_slice()
        if k is None:
            return None
        self.reviewed.add(k)
        self.filled.discard(k)  # a filled slice looked at and ticked: reviewed
        self._restyle([k])
        if self.on_reviewed is not None:
            self.on_reviewed()
        return self.step(+1)

    # ------------------------------------------------------------------ what the user checked
    def labelled_set(self) -> set[int]:
        """Axial slices whose labels the user vouches for: painted, reviewed or accepted after a fill."""
        return self.reviewed | self.painted | self.accepted

    def labelled(self) -> dict[str, list[int]]:
        """The labelled slices by reason (what a training set records); filled, unaccepted ones are not among them."""
        out = {"painted": self.painted, "reviewed": self.reviewed, "filled_accepted": self.accepted}
        return {reason: sorted(ks) for reason, ks in out.items() if ks}

    def mark_filled(self, slices) -> None:
        """Slices a fill wrote: shown as filled (not reviewed) until accepted, painted or ticked."""
        new = {int(k) for k in slices} - self.labelled_set()
        self.filled |= new
        self._restyle(new)

    def accept_filled(self) -> list[int]:
        """The user accepts the filled slices: they become labelled. Returns them."""
        accepted = sorted(self.filled)
        self.accepted |= self.filled
        self.filled.clear()
        self._restyle(accepted)
        if self.on_reviewed is not None:
            self.on_reviewed()
        return accepted

    def _on_paint(self, layer: Labels, event) -> None:
        if layer is not self.corrected or self.filling:
            return
        touched = painted_slices(getattr(event, "value", None))
        if touched:
            self.painted |= touched
            self.filled -= touched
            self._restyle(touched)

    def _restyle(self, slices) -> None:
        for k in slices:
            if k in self.order:
                self._style(self.slices.item(self.order.index(k)))

    def state(self) -> dict:
        """What a restart must not lose: the scores and the slices reviewed, painted, filled and accepted."""
        # unrounded: a float survives JSON exactly, so the restored worst-first order is the same
        # even where two slices' scores differ in the sixth decimal
        return {"uncertainty": [float(v) for v in self.scores], "reviewed": sorted(self.reviewed),
                "painted": sorted(self.painted), "filled": sorted(self.filled), "accepted": sorted(self.accepted)}

    def restore(self, corrected: Labels, state: dict) -> bool:
        """Show a restored layer's review (scores, reviewed slices) as it was; False when there is none."""
        scores = state.get("uncertainty") if isinstance(state, dict) else None
        if not isinstance(scores, list) or len(scores) != corrected.data.shape[0]:
            return False
        self.set_result(corrected, None, np.asarray(scores, dtype=float))
        for key in ("reviewed", "painted", "filled", "accepted"):
            getattr(self, key).update(int(k) for k in state.get(key, []) if 0 <= int(k) < len(scores))
        for i in range(self.slices.count()):
            self._style(self.slices.item(i))
        return True

    def _bind_keys(self) -> None:
        self.viewer.bind_key(KEYS["next"], lambda _v: self.step(+1), overwrite=True)
        self.viewer.bind_key(KEYS["previous"], lambda _v: self.step(-1), overwrite=True)
        self.viewer.bind_key(KEYS["reviewed"], lambda _v: self.mark_reviewed(), overwrite=True)

    def _show_position(self, *_) -> None:
        k = self.current_slice()
        if k is None:
            return
        z = float(self.viewer.dims.point[0])
        mark = next((f" ({word})" for word, marks in (("reviewed", self.reviewed), ("painted", self.painted),
                     ("filled, not reviewed", self.filled), ("fill accepted", self.accepted)) if k in marks), "")
        self.position.setText(f"axial slice {k + 1} of {self.corrected.data.shape[0]}, z = {z:.1f} mm{mark}")


def painted_slices(item) -> set[int]:
    """The axial slices (display axis 0) a napari paint event's history item changed, counting only
    edits made within one axial slice (a stroke in a coronal or sagittal view, or a 3-D fill,
    touches many axial slices in part: those are not corrected slices).

    Recent napari records mask-based edits (``slice_key`` bounding boxes), older versions
    ``(indices, old, new)`` tuples; both are read."""
    out: set[int] = set()
    for atom in item or []:
        key = getattr(atom, "slice_key", None)
        if key is not None:
            first = key[0]
            start, stop = (first.start or 0, first.stop) if isinstance(first, slice) else (int(first), int(first) + 1)
            if stop is not None and stop - start == 1:
                out.add(int(start))
            continue
        try:
            zs = np.unique(np.asarray(atom[0][0]))
        except (TypeError, IndexError):
            continue
        if zs.size == 1:
            out.add(int(zs[0]))
    return out


def _swatch(rgba: np.ndarray):
    from qtpy.QtGui import QIcon, QPixmap

    pix = QPixmap(14, 14)
    pix.fill(QColor(*[int(round(255 * c)) for c in rgba[:3]]))
    return QIcon(pix)


__all__ = ["KEYS", "ReviewPanel", "painted_slices", "volumes"]
