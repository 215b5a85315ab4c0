"""Radiological orientation in every view, and a linked multi-planar (axial, coronal, sagittal) layout.

Layers are ``(S, P, L)`` arrays in world ``(z, y, x)`` LPS mm (:func:`medseg.geometry.to_display`);
napari draws rows downward, so coronal and sagittal planes came out with superior at the bottom.
The *camera* is turned here, never the data: world coordinates stay LPS.

- :func:`follow_radiological_convention`: the camera's axis directions follow the displayed axes:
  superior up, anterior up in axial, patient's right on screen left (axial, coronal), anterior on
  screen left (sagittal). In 3-D the depth direction is chosen so the volume is a true view of the
  patient, never a mirror image (the default 3-D view looks from the feet, like an axial slice).
- :func:`show_axial`, :func:`show_coronal`, :func:`show_sagittal`: set the dims order to a plane.
- :class:`MultiPlanar` / :func:`open_multiplanar`: the main viewer plus a dock with the two other
  planes, each a napari ``ViewerModel`` drawn by its own ``QtViewer`` (napari has no multi-view
  and grid mode cannot show three orientations of one layer). The views share one world point
  (scrolling, or a click in pan/zoom mode, moves the others), mirror the main viewer's layers on
  the same arrays (label edits in the main viewer show at once) and follow layers added, removed or
  reordered later. Closing the dock disconnects everything.
"""

from __future__ import annotations

import weakref
from contextlib import contextmanager

import numpy as np
from qtpy.QtCore import QEvent, QSize
from qtpy.QtWidgets import QApplication, QLabel, QVBoxLayout, QWidget

# Dims order of the last three (spatial) axes for each plane; the last two are displayed.
PLANES = {"axial": (0, 1, 2), "coronal": (1, 0, 2), "sagittal": (2, 0, 1)}
DOCK_NAME = "Multi-planar (medseg)"
# Screen direction in which each LPS world axis (0: x = L, 1: y = P, 2: z = S) increases when shown
# vertically (R at the top, anterior up, superior up) or horizontally (patient's right, anterior on the left).
_VERTICAL = ("down", "down", "up")
_HORIZONTAL = ("right", "right", "right")
_SCREEN = {"right": (1, 0, 0), "left": (-1, 0, 0), "up": (0, 1, 0), "down": (0, -1, 0),
           "towards": (0, 0, 1), "away": (0, 0, -1)}


# ---------------------------------------------------------------------------------------------- orientation


def _camera(viewer):
    scene = getattr(viewer, "scene", None)  # napari >= 0.9; viewer.camera before
    return scene.camera if scene is not None else viewer.camera


def radiological_orientation(ndim: int, displayed) -> tuple[str, ...] | None:
    """napari camera orientation (``(vertical, horizontal)`` in 2-D, ``(depth, vertical, horizontal)``
    in 3-D) showing world axes ``displayed`` in the radiological convention; None when a displayed
    axis is not one of the last three (spatial) axes."""
    roles = [ndim - 1 - int(a) for a in displayed]
    if ndim < 3 or any(r < 0 or r > 2 for r in roles) or len(set(roles)) != len(roles):
        return None
    vertical, horizontal = _VERTICAL[roles[-2]], _HORIZONTAL[roles[-1]]
    if len(roles) == 2:
        return vertical, horizontal
    # depth: the one making screen <- LPS world a rotation (LPS is right-handed), not a mirror
    m = np.zeros((3, 3))
    m[:, roles[0]], m[:, roles[1]], m[:, roles[2]] = _SCREEN["towards"], _SCREEN[vertical], _SCREEN[horizontal]
    return ("towards" if np.linalg.det(m) > 0 else "away"), vertical, horizontal


def _settings_orientation() -> tuple[str, str, str]:
    from napari.settings import get_settings

    app = get_settings().application
    return app.depth_axis_orientation, app.vertical_axis_orientation, app.horizontal_axis_orientation


def apply_radiological_orientation(viewer) -> bool:
    """Turn ``viewer``'s camera to the radiological convention for the axes shown now (once).

    Other displays (a non-spatial axis shown, fewer than three dims) get napari's own setting.
    False where this napari's camera has no orientation (before 0.6).
    """
    camera = _camera(viewer)
    if not hasattr(camera, "orientation"):
        return False
    wanted = radiological_orientation(viewer.dims.ndim, viewer.dims.displayed)
    if wanted is None:
        wanted = _settings_orientation()[-len(viewer.dims.displayed):]
    if len(wanted) == 2:
        wanted = (camera.orientation[0], *wanted)
    if tuple(str(o) for o in camera.orientation) != tuple(wanted):
        camera.orientation = wanted
    return True


class _Follower:
    """Re-applies the orientation on dims changes; held by :data:`_FOLLOWERS` while its viewer lives."""

    def __init__(self, viewer):
        self._viewer = weakref.ref(viewer)
        for name in ("order", "ndisplay", "ndim"):
            getattr(viewer.dims.events, name).connect(self.update)  # bound method: a weak connection

    def update(self, event=None) -> None:
        viewer = self._viewer()
        if viewer is not None:
            apply_radiological_orientation(viewer)

    def stop(self) -> None:
        viewer = self._viewer()
        if viewer is not None:
            for name in ("order", "ndisplay", "ndim"):
                getattr(viewer.dims.events, name).disconnect(self.update)


_FOLLOWERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def follow_radiological_convention(viewer) -> bool:
    """Keep ``viewer`` (a napari Viewer or ViewerModel) in the radiological convention whatever
    dims are displayed, in 2-D and 3-D. Idempotent; the data and world coordinates are untouched.
    False (and nothing connected) where this napari's camera has no orientation (before 0.6)."""
    if not apply_radiological_orientation(viewer):
        return False
    if viewer not in _FOLLOWERS:
        _FOLLOWERS[viewer] = _Follower(viewer)
    return True


def stop_following(viewer) -> None:
    """Undo :func:`follow_radiological_convention` (the camera keeps its current orientation)."""
    follower = _FOLLOWERS.pop(viewer, None)
    if follower is not None:
        follower.stop()


# ---------------------------------------------------------------------------------------------- planes


def plane_order(ndim: int, plane: str) -> tuple[int, ...]:
    """The dims order showing ``plane`` ("axial", "coronal", "sagittal") of the last three axes."""
    lead = tuple(range(ndim - 3))
    return lead + tuple(ndim - 3 + a for a in PLANES[plane])


def displayed_plane(viewer) -> str | None:
    """The plane a 2-D viewer shows now, or None (3-D, fewer than three dims, other axes)."""
    dims = viewer.dims
    if dims.ndim < 3 or dims.ndisplay != 2:
        return None
    for plane in PLANES:
        if tuple(dims.displayed) == plane_order(dims.ndim, plane)[-2:]:
            return plane
    return None


def show_plane(viewer, plane: str) -> None:
    """Show ``plane`` in ``viewer`` (nothing for fewer than three dims), in the radiological convention."""
    if plane not in PLANES:
        raise ValueError(f"unknown plane {plane!r}: one of {', '.join(PLANES)}")
    if viewer.dims.ndim >= 3:
        viewer.dims.order = plane_order(viewer.dims.ndim, plane)
    apply_radiological_orientation(viewer)


def show_axial(viewer) -> None:
    show_plane(viewer, "axial")


def show_coronal(viewer) -> None:
    show_plane(viewer, "coronal")


def show_sagittal(viewer) -> None:
    show_plane(viewer, "sagittal")


# ---------------------------------------------------------------------------------------------- multi-planar


def _click_moves_point(viewer, event):
    """Mouse callback: a click without drag, in pan/zoom mode, puts the shared point where it falls."""
    active = viewer.layers.selection.active
    if event.button != 1 or (active is not None and str(getattr(active, "mode", "pan_zoom")) != "pan_zoom"):
        return
    start = np.asarray(event.pos, dtype=float)
    yield
    while event.type == "mouse_move":
        if np.abs(np.asarray(event.pos, dtype=float) - start).max() > 3:
            return  # a drag (pan), not a click
        yield
    point = list(viewer.dims.point)
    for axis in viewer.dims.displayed:
        point[axis] = float(event.position[axis])
    viewer.dims.point = point


# Layer attributes copied to the mirrors when they change in the main viewer.
_SYNCED = ("name", "opacity", "visible", "blending", "contrast_limits", "colormap", "gamma", "affine",
           "scale", "translate", "rotate", "shear", "interpolation2d", "contour", "show_selected_label",
           "selected_label", "iso_gradient_mode", "rendering")
# Events after which a mirror re-reads the shared array (in-place edits: paint, fill, refresh).
_DATA_EVENTS = ("data", "paint", "set_data")


def _mirror(layer):
    """A layer on the same data array as ``layer`` (not copied), with its display state; read-only."""
    from napari.layers import Layer

    data, state, kind = layer.as_layer_data_tuple()
    mirror = Layer.create(data, state, kind)
    if kind == "labels":
        mirror.editable = False  # corrections are made (and saved) in the main viewer
    return mirror


class _Links:
    """The model side of the multi-planar layout (no Qt): mirrored layers and one shared world point
    between the main viewer and the side ViewerModels. Connections use bound methods (weak in napari)."""

    def __init__(self, main, sides: list):
        self.main, self.sides = main, list(sides)
        self.planes = [""] * len(self.sides)
        self._mirrors: dict[int, tuple] = {}  # id(main layer) -> (layer, [mirror per side], [connected events])
        self._busy = False
        for emitter, slot in self._main_connections():
            emitter.connect(slot)
        for side in self.sides:
            side.dims.events.point.connect(self._from_side)
            side.dims.events.ndim.connect(self.arrange)
            follow_radiological_convention(side)
            side.mouse_drag_callbacks.append(_click_moves_point)
        if _click_moves_point not in main.mouse_drag_callbacks:
            main.mouse_drag_callbacks.append(_click_moves_point)
        for layer in main.layers:
            self._add(layer)
        self.arrange()

    def _main_connections(self) -> list[tuple]:
        layers, dims = self.main.layers.events, self.main.dims.events
        return [(layers.inserted, self._on_inserted), (layers.removed, self._on_removed),
                (layers.moved, self._reorder), (layers.reordered, self._reorder),
                (dims.point, self._from_main), (dims.order, self.arrange), (dims.ndisplay, self.arrange)]

    @contextmanager
    def _quiet(self):
        """Point changes in the views (new layers re-centre a view) are not copied meanwhile."""
        busy, self._busy = self._busy, True
        try:
            yield
        finally:
            self._busy = busy

    # -------------------------------------------------------------------------- planes and point
    def arrange(self, event=None) -> None:
        """Side views show the planes the main viewer does not (coronal and sagittal beside axial)."""
        main_plane = displayed_plane(self.main)
        if main_plane is not None:
            self.planes = [p for p in PLANES if p != main_plane][: len(self.sides)]
        elif not all(self.planes):
            self.planes = ["coronal", "sagittal"][: len(self.sides)]
        with self._quiet():
            for side, plane in zip(self.sides, self.planes):
                if side.dims.ndim >= 3 and tuple(side.dims.order) != plane_order(side.dims.ndim, plane):
                    show_plane(side, plane)
                    side.reset_view()
        self._from_main()

    def _copy_point(self, source, targets) -> None:
        if self._busy:
            return
        self._busy = True
        try:
            point = tuple(source.dims.point)
            for target in targets:
                if target.dims.ndim == len(point) and tuple(target.dims.point) != point:
                    target.dims.point = point
        finally:
            self._busy = False

    def _from_main(self, event=None) -> None:
        self._copy_point(self.main, self.sides)

    def _from_side(self, event) -> None:
        source = next((s for s in self.sides if s.dims is event.source), None)
        if source is not None:
            self._copy_point(source, [self.main] + [s for s in self.sides if s is not source])

    # -------------------------------------------------------------------------- layers
    def _add(self, layer) -> None:
        if id(layer) in self._mirrors:
            return
        try:
            mirrors = [_mirror(layer) for _ in self.sides]
        except (TypeError, ValueError, KeyError):  # a layer type that cannot be rebuilt from its state
            return
        names = [n for n in _SYNCED if hasattr(layer.events, n)]
        for name in names:
            getattr(layer.events, name).connect(self._on_property)
        data_events = _DATA_EVENTS if mirrors and mirrors[0]._type_string == "labels" else ("data",)
        data_events = tuple(n for n in data_events if hasattr(layer.events, n))
        for name in data_events:
            getattr(layer.events, name).connect(self._on_data)
        self._mirrors[id(layer)] = (layer, mirrors, names + list(data_events))
        with self._quiet():
            for side, mirror in zip(self.sides, mirrors):
                side.layers.append(mirror)

    def _drop(self, layer) -> None:
        entry = self._mirrors.pop(id(layer), None)
        if entry is None:
            return
        _, mirrors, names = entry
        for name in names:
            slot = self._on_data if name in _DATA_EVENTS else self._on_property
            getattr(layer.events, name).disconnect(slot)
        for side, mirror in zip(self.sides, mirrors):
            if mirror in side.layers:
                with self._quiet():
                    side.layers.remove(mirror)

    def _on_inserted(self, event) -> None:
        self._add(event.value)
        self._reorder()
        self._from_main()

    def _on_removed(self, event) -> None:
        self._drop(event.value)

    def _reorder(self, event=None) -> None:
        for n, side in enumerate(self.sides):
            wanted = [self._mirrors[id(layer)][1][n] for layer in self.main.layers if id(layer) in self._mirrors]
            for index, mirror in enumerate(wanted):
                current = side.layers.index(mirror)
                if current != index:
                    side.layers.move(current, index)

    def _on_property(self, event) -> None:
        layer, name = event.source, event.type
        for mirror in self._mirrors.get(id(layer), (None, ()))[1]:
            try:
                setattr(mirror, name, getattr(layer, name))
            except (AttributeError, ValueError, TypeError):  # a state the mirror cannot take: keep its own
                pass

    def _on_data(self, event) -> None:
        layer = event.source
        for mirror in self._mirrors.get(id(layer), (None, ()))[1]:
            if mirror.data is not layer.data:
                mirror.data = layer.data
            else:
                mirror.refresh()

    def close(self) -> None:
        """Disconnect from the main viewer and empty the side views (idempotent)."""
        for layer, _, _ in list(self._mirrors.values()):
            self._drop(layer)
        for emitter, slot in self._main_connections():
            emitter.disconnect(slot)
        if _click_moves_point in self.main.mouse_drag_callbacks:
            self.main.mouse_drag_callbacks.remove(_click_moves_point)
        for side in self.sides:
            side.dims.events.point.disconnect(self._from_side)
            side.dims.events.ndim.disconnect(self.arrange)
            stop_following(side)
            side.layers.clear()
        self.sides = []


class MultiPlanar(QWidget):
    """Dock widget: the two planes the main viewer does not show, linked to it (see the module doc).

    ``views`` maps each plane to the viewer (model) showing it, the main viewer included;
    :meth:`screenshot` grabs one plane's canvas. :meth:`close_views` (also run when the dock is
    closed) disconnects everything; the widget is then empty.
    """

    def __init__(self, viewer, parent=None):
        from napari.components import ViewerModel
        from napari.qt import QtViewer

        super().__init__(parent)
        self._viewer = viewer
        self._docked = False
        if displayed_plane(viewer) is None:  # 3-D or another display: the layout starts from axial
            viewer.dims.ndisplay = 2
            show_axial(viewer)
        follow_radiological_convention(viewer)
        sides = [ViewerModel(title=f"medseg view {n}") for n in range(2)]
        self._qt_views = [QtViewer(side) for side in sides]
        self._titles = [QLabel() for _ in sides]
        layout = QVBoxLayout(self)
        layout.setContentsMargins(2, 2, 2, 2)
        for title, qt_view in zip(self._titles, self._qt_views):
            qt_view.setMinimumSize(220, 200)
            layout.addWidget(title)
            layout.addWidget(qt_view, stretch=1)
        self._links: _Links | None = _Links(viewer, sides)
        viewer.dims.events.order.connect(self._update_titles, position="last")  # after the links
        self._update_titles()

    def sizeHint(self):  # noqa: N802 - Qt override: a dock column, not two 800x600 canvases
        return QSize(380, 760)

    @property
    def views(self) -> dict:
        """Plane name -> the viewer (model) showing it: the main viewer and the two side views."""
        if self._links is None:
            return {}
        out = {plane: side for plane, side in zip(self._links.planes, self._links.sides)}
        main_plane = displayed_plane(self._viewer)
        if main_plane is not None:
            out[main_plane] = self._viewer
        return out

    def screenshot(self, plane: str) -> np.ndarray:
        """RGBA image of the canvas showing ``plane`` (row 0 at the top of the screen)."""
        QApplication.processEvents()  # a dock just opened draws nothing until Qt has laid it out
        view = self.views[plane]
        if view is self._viewer:
            return self._viewer.screenshot(canvas_only=True, flash=False)
        return self._qt_views[self._links.sides.index(view)].screenshot(flash=False)

    @property
    def titles(self) -> list[str]:
        """The side views' titles, top to bottom."""
        return [title.text() for title in self._titles]

    def _update_titles(self, event=None) -> None:
        if self._links is None:
            return
        for title, plane in zip(self._titles, self._links.planes):
            title.setText(plane.capitalize())

    def close_views(self) -> None:
        """Disconnect from the main viewer and release the side canvases (idempotent)."""
        links, self._links = self._links, None
        if links is None:
            return
        self._viewer.dims.events.order.disconnect(self._update_titles)
        links.close()
        for qt_view in self._qt_views:
            qt_view.close()  # deletes its vispy canvas; the QtViewer deletes itself on close
        self._qt_views = []

    def event(self, event):  # noqa: D102 - Qt override
        if event.type() == QEvent.Type.ParentChange:
            if self.parent() is not None:
                self._docked = True
            elif self._docked:  # napari's dock "x" takes the widget out of its dock: closed
                self.close_views()
        return super().event(event)

    def closeEvent(self, event):  # noqa: N802 - Qt override
        self.close_views()
        super().closeEvent(event)


def open_multiplanar(viewer) -> MultiPlanar:
    """One click: the main viewer in a plane (axial unless it shows one) and a dock with the two
    others, linked. Opening again shows the existing dock."""
    existing = viewer.window.dock_widgets.get(DOCK_NAME)
    if isinstance(existing, MultiPlanar) and existing._links is not None:
        existing.parent().show()
        return existing
    widget = MultiPlanar(viewer)
    viewer.window.add_dock_widget(widget, name=DOCK_NAME, area="right")
    return widget
