"""Radiological orientation in axial, coronal, sagittal (and 3-D) views and the linked multi-planar
layout, checked on screen in a real viewer (run under Xvfb: `xvfb-run -a pytest`).

The phantom is a body-like cylinder with a bright cube at the patient's RIGHT, ANTERIOR, SUPERIOR
corner, written from world coordinates (not with medseg's geometry code) as a RAS NIfTI and as an
MHA whose voxel axes run anterior, inferior, left (an ITK direction far from identity).
"""

from __future__ import annotations

import os
from types import SimpleNamespace

import numpy as np
import pytest

napari = pytest.importorskip("napari", reason="napari is not installed (pip install -e .[napari])")
pytest.importorskip("pytestqt", reason="pytest-qt is not installed (pip install -e .[napari])")
if not os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY"):
    pytest.skip("no display for napari's OpenGL canvas: run the tests under xvfb-run", allow_module_level=True)

from medseg_napari import _views  # noqa: E402
from medseg_napari._reader import prefer_medseg_reader  # noqa: E402

# Landmark cube in RAS mm (+x = patient's right, +y = anterior, +z = superior); body centred on 0.
CUBE = ((8.0, 16.0), (6.0, 12.0), (30.0, 42.0))
CUBE_CENTRE_RAS = np.array([np.mean(c) for c in CUBE])
BODY_SEMI_AXES = (22.0, 17.0)  # mm, x and y: a cylinder along z over the whole field of view
Z_EXTENT = 40 * 2.5  # mm along superior-inferior in both files


def _hu(ras: np.ndarray) -> np.ndarray:
    x, y, z = ras[..., 0], ras[..., 1], ras[..., 2]
    hu = np.where((x / BODY_SEMI_AXES[0]) ** 2 + (y / BODY_SEMI_AXES[1]) ** 2 <= 1.0, 40.0, -1000.0)
    inside = np.ones(x.shape, bool)
    for v, (lo, hi) in zip((x, y, z), CUBE):
        inside &= (v >= lo) & (v <= hi)
    hu[inside] = 1500.0
    return hu.astype(np.int16)


def _write_nifti_ras(path):
    import nibabel as nib

    shape, spacing = np.array([56, 48, 40]), np.array([0.9, 0.8, 2.5])  # i -> R, j -> A, k -> S
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = -spacing * (shape - 1) / 2.0
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), axis=-1)
    ras = ijk * spacing + affine[:3, 3]
    image = nib.Nifti1Image(_hu(ras), affine)
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    nib.save(image, str(path))
    return path


def _write_mha_lps(path):
    import SimpleITK as sitk

    # ITK direction columns (LPS): i -> anterior, j -> inferior, k -> left (a proper rotation)
    direction = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])
    size, spacing = np.array([48, 40, 56]), np.array([0.8, 2.5, 0.9])
    origin = -direction @ (spacing * (size - 1) / 2.0)
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in size], indexing="ij"), axis=-1)
    lps = (ijk * spacing) @ direction.T + origin
    hu = _hu(lps * [-1.0, -1.0, 1.0])  # LPS -> RAS
    image = sitk.GetImageFromArray(np.ascontiguousarray(hu.transpose(2, 1, 0)))  # numpy [k, j, i]
    image.SetSpacing(spacing.tolist())
    image.SetOrigin(origin.tolist())
    image.SetDirection(direction.ravel().tolist())
    sitk.WriteImage(image, str(path))
    return path


WRITERS = {"ras.nii.gz": _write_nifti_ras, "lps.mha": _write_mha_lps}


def _landmark_world() -> tuple[float, float, float]:
    x, y, z = CUBE_CENTRE_RAS * [-1.0, -1.0, 1.0]  # RAS -> LPS
    return z, y, x  # napari world (z, y, x)


def _open(viewer, tmp_path, name):
    prefer_medseg_reader()
    layers = viewer.open(str(WRITERS[name](tmp_path / name)), plugin=None)  # as File > Open
    assert len(layers) == 1 and layers[0].metadata.get("medseg_scan") is not None
    viewer.dims.point = _landmark_world()  # every plane through the landmark
    return layers[0]


def _blobs(shot: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Screen (row, col) centroids of the landmark (white) and the body (lit pixels), and the body's
    (height, width) on screen."""
    rgb = shot[..., :3].astype(int)
    white = np.argwhere(rgb.min(axis=-1) > 235)
    lit = np.argwhere(rgb.max(axis=-1) > 60)
    assert len(white) > 10, "landmark not on screen"
    assert len(lit) > 500, "body not on screen"
    return white.mean(axis=0), lit.mean(axis=0), np.ptp(lit, axis=0) + 1


def _assert_on_screen(shot, plane):
    """The landmark's screen quadrant for ``plane`` in the radiological convention."""
    (lm_row, lm_col), (body_row, body_col), (height, width) = _blobs(shot)
    assert lm_row < body_row - 0.1 * height, f"{plane}: landmark not in the top half (row {lm_row} vs {body_row})"
    assert lm_col < body_col - 0.1 * width, f"{plane}: landmark not on screen left (col {lm_col} vs {body_col})"
    if plane != "axial":  # true proportions: superior-inferior extent vs width (mm) of the body's section
        across, other = (0, 1) if plane == "coronal" else (1, 0)  # the axis shown across, the sliced one
        cut = CUBE_CENTRE_RAS[other] / BODY_SEMI_AXES[other]
        mm_wide = 2 * BODY_SEMI_AXES[across] * np.sqrt(1 - cut**2)
        assert height / width == pytest.approx(Z_EXTENT / mm_wide, rel=0.1)


SHOW = {"axial": _views.show_axial, "coronal": _views.show_coronal, "sagittal": _views.show_sagittal}


@pytest.mark.parametrize("name", list(WRITERS))
def test_landmark_in_radiological_position_in_each_view(make_napari_viewer, tmp_path, name):
    viewer = make_napari_viewer(show=True)
    assert _views.follow_radiological_convention(viewer)
    layer = _open(viewer, tmp_path, name)
    world_before = layer.data_to_world((0, 0, 0))
    for plane, show in SHOW.items():
        show(viewer)
        assert _views.displayed_plane(viewer) == plane
        viewer.reset_view()
        _assert_on_screen(viewer.screenshot(canvas_only=True, flash=False), plane)
    np.testing.assert_allclose(layer.data_to_world((0, 0, 0)), world_before)  # data and world untouched


def test_orientation_follows_dims_rolled_by_hand_and_is_idempotent(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer(show=True)
    _open(viewer, tmp_path, "ras.nii.gz")
    camera = viewer.scene.camera
    n_before = len(viewer.dims.events.order.callbacks)
    assert _views.follow_radiological_convention(viewer)
    assert _views.follow_radiological_convention(viewer)
    assert len(viewer.dims.events.order.callbacks) == n_before + 1  # connected once
    viewer.dims.order = (1, 0, 2)  # the user rolls the dims to coronal
    assert tuple(camera.orientation2d) == ("up", "right")
    viewer.dims.order = (0, 1, 2)
    assert tuple(camera.orientation2d) == ("down", "right")
    _views.stop_following(viewer)
    viewer.dims.order = (1, 0, 2)
    assert tuple(camera.orientation2d) == ("down", "right")  # no longer followed


def test_3d_view_is_the_patient_not_a_mirror_image(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer(show=True)
    _views.follow_radiological_convention(viewer)
    _open(viewer, tmp_path, "lps.mha")
    viewer.dims.ndisplay = 3
    camera = viewer.scene.camera
    assert tuple(camera.orientation) == ("away", "down", "right")  # looking from the feet, like axial
    # Seen from the patient's left side, superior up, the anterior side must be on screen left
    # (as in the sagittal convention); a mirror-image rendering puts it on the right.
    viewer.reset_view()  # (resets the angles too)
    camera.set_view_direction((0.0, 0.0, -1.0), up_direction=(1.0, 0.0, 0.0))
    viewer.fit_to_view()
    (lm_row, lm_col), (body_row, body_col), _ = _blobs(viewer.screenshot(canvas_only=True, flash=False))
    assert lm_row < body_row and lm_col < body_col


def test_plane_orders_with_a_leading_axis():
    assert _views.plane_order(4, "coronal") == (0, 2, 1, 3)
    assert _views.radiological_orientation(4, (2, 3)) == ("down", "right")
    assert _views.radiological_orientation(4, (0, 3)) is None  # a non-spatial axis on screen
    assert _views.radiological_orientation(3, (2, 0, 1)) == ("towards", "up", "right")  # from the left
    with pytest.raises(ValueError, match="unknown plane"):
        _views.show_plane(SimpleNamespace(), "oblique")


def _orange(shot: np.ndarray) -> np.ndarray:
    """Screen pixels tinted by the 'liver' label colour (orange over grey)."""
    rgb = shot[..., :3].astype(int)
    return np.argwhere((rgb[..., 0] - rgb[..., 2] > 40) & (rgb[..., 0] > 60))


def _paint_inferior_slab(labels) -> None:
    """Label 1 in every voxel 28-40 mm below the centre: at the bottom of coronal and sagittal views."""
    z = np.array([labels.data_to_world((k, 0, 0))[0] for k in range(labels.data.shape[0])])
    ks = np.flatnonzero((z > -40.0) & (z < -28.0))
    idx = np.meshgrid(ks, *[np.arange(n) for n in labels.data.shape[1:]], indexing="ij")
    labels.data_setitem(tuple(i.ravel() for i in idx), 1)  # as a paint stroke: undo history, paint event


@pytest.mark.slow
def test_multiplanar_layout_links_views_and_mirrors_layers(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer(show=True)
    viewer.window.resize(1400, 900)
    image = _open(viewer, tmp_path, "lps.mha")
    n_point = len(viewer.dims.events.point.callbacks)
    viewer.dims.ndisplay = 3
    widget = _views.open_multiplanar(viewer)
    assert viewer.dims.ndisplay == 2  # the layout starts from an axial main view
    assert _views.open_multiplanar(viewer) is widget  # one dock
    views = widget.views
    assert set(views) == set(_views.PLANES) and views["axial"] is viewer
    assert len({id(v) for v in views.values()}) == 3
    for plane, view in views.items():
        assert _views.displayed_plane(view) == plane
        view.reset_view()
        _assert_on_screen(widget.screenshot(plane), plane)  # three canvases, one convention

    # one shared point: scrolling the coronal view moves the main viewer and the sagittal view
    coronal, sagittal = views["coronal"], views["sagittal"]
    coronal.dims.set_point(1, -2.0)
    assert viewer.dims.point[1] == pytest.approx(-2.0, abs=0.5)
    assert sagittal.dims.point == pytest.approx(viewer.dims.point)
    viewer.dims.set_point(0, 10.0)  # scrolling the main (axial) viewer
    assert coronal.dims.point[0] == pytest.approx(viewer.dims.point[0])
    # a click (press and release, no drag) in the sagittal view puts the point under the cursor
    press = SimpleNamespace(button=1, pos=(5, 5), type="mouse_press", position=(20.0, 3.0, -12.0))
    assert _views._click_moves_point in sagittal.mouse_drag_callbacks
    clicks = _views._click_moves_point(sagittal, press)
    next(clicks)
    press.type = "mouse_release"
    with pytest.raises(StopIteration):
        next(clicks)
    assert viewer.dims.point[0] == pytest.approx(20.0, abs=2.5) and viewer.dims.point[1] == pytest.approx(3.0, abs=0.8)
    viewer.dims.point = _landmark_world()
    _check_labels_mirrored(viewer, widget, image)

    # closing the dock disconnects everything
    viewer.window.remove_dock_widget(widget)
    assert widget.views == {}
    assert len(viewer.dims.events.point.callbacks) == n_point
    assert _views._click_moves_point not in viewer.mouse_drag_callbacks
    viewer.dims.set_point(0, 0.0)  # no error, nothing linked


def _check_labels_mirrored(viewer, widget, image) -> None:
    """A labels layer added later is mirrored on the same array; an edit in the main viewer shows at
    once in the other views; its properties, order and removal follow."""
    from napari.layers import Layer

    from medseg_napari._layers import SCAN_KEY, labels_layer

    coronal, sagittal = widget.views["coronal"], widget.views["sagittal"]
    scan = image.metadata[SCAN_KEY]
    empty = np.zeros(scan.shape, np.uint8)
    labels = viewer.add_layer(Layer.create(*labels_layer(empty, scan, {"liver": 1}, "corrected")))
    mirrors = [next(m for m in v.layers if m.name == "corrected") for v in (coronal, sagittal)]
    assert all(m.data is labels.data for m in mirrors)
    assert all(len(_orange(widget.screenshot(p))) == 0 for p in ("coronal", "sagittal"))
    _paint_inferior_slab(labels)
    for plane in ("coronal", "sagittal"):
        shot = widget.screenshot(plane)
        tinted = _orange(shot)
        assert len(tinted) > 100, f"{plane}: the edit is not shown"
        assert tinted[:, 0].mean() > _blobs(shot)[1][0]  # inferior: below the body's centre
    labels.opacity = 0.2
    assert all(m.opacity == pytest.approx(0.2) for m in mirrors)
    viewer.layers.move(viewer.layers.index(labels), 0)  # reordered below the image: order follows
    assert [m.name for m in coronal.layers] == [layer.name for layer in viewer.layers]
    viewer.layers.remove(labels)
    assert "corrected" not in [m.name for m in sagittal.layers]


def test_multiplanar_opened_before_the_scan_and_closed_with_the_viewer(make_napari_viewer, tmp_path):
    """Opened on an empty viewer, the layout takes the scan opened next; when the main viewer turns
    to coronal the dock shows axial and sagittal. Closing the viewer with the dock open leaves no
    canvas behind (the fixture fails on leaked QtViewers)."""
    viewer = make_napari_viewer(show=True)
    widget = _views.open_multiplanar(viewer)
    _open(viewer, tmp_path, "ras.nii.gz")
    assert {p: _views.displayed_plane(v) for p, v in widget.views.items()} == {p: p for p in _views.PLANES}
    assert widget.titles == ["Coronal", "Sagittal"]
    _views.show_coronal(viewer)
    assert set(widget.views) == set(_views.PLANES) and widget.views["coronal"] is viewer
    assert widget.titles == ["Axial", "Sagittal"]
    for plane in ("axial", "sagittal"):
        assert _views.displayed_plane(widget.views[plane]) == plane
        widget.views[plane].reset_view()
        _assert_on_screen(widget.screenshot(plane), plane)
