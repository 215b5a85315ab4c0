"""napari and hospital DICOM: a study folder opens with its RTSTRUCT / SEG as Labels layers in the right
place, and a Labels layer saves back as DICOM SEG or RTSTRUCT referencing the series (under xvfb-run)."""

from __future__ import annotations

import os

import numpy as np
import pytest
from dicom_labels_helpers import dice, phantom_series

napari = pytest.importorskip("napari", reason="napari is not installed (pip install -e .[napari])")
pytest.importorskip("pytestqt", reason="pytest-qt is not installed (pip install -e .[napari])")
pytest.importorskip("highdicom", reason="the medseg[dicom] extra (highdicom) is not installed")
if not os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY"):
    pytest.skip("no display for napari's OpenGL canvas: run the tests under xvfb-run", allow_module_level=True)

from medseg.dicom_grid import read_grid  # noqa: E402
from medseg.dicom_seg import read_seg, write_seg  # noqa: E402
from medseg.geometry import from_display  # noqa: E402
from medseg.rtstruct import read_rtstruct, write_rtstruct  # noqa: E402
from medseg_napari import _widget  # noqa: E402
from medseg_napari._widget import SegmentWidget  # noqa: E402


@pytest.fixture
def study(tmp_path):
    """A coronal-acquired CT series with an RTSTRUCT and a SEG beside it, in one study folder."""
    labels, names = phantom_series(tmp_path / "study" / "CT", orientation="coronal", ring=True)
    grid = read_grid(tmp_path / "study" / "CT")
    write_rtstruct(labels, {1: "Liver", 6: "ring"}, grid, tmp_path / "study" / "planning.dcm")
    write_seg(labels, {2: "spleen", 5: "liver_tumour"}, grid, tmp_path / "study" / "ai.dcm")
    return tmp_path / "study", labels


def test_study_folder_opens_with_its_structures_in_place(make_napari_viewer, study):
    folder, truth = study
    viewer = make_napari_viewer()
    viewer.open(str(folder), plugin="medseg")
    assert len(viewer.layers) == 3, [layer.name for layer in viewer.layers]
    image = viewer.layers[0]
    rt = next(layer for layer in viewer.layers if "RTSTRUCT" in layer.name)
    seg = next(layer for layer in viewer.layers if " SEG " in layer.name)
    scan = image.metadata["medseg_scan"]
    for layer in (rt, seg):  # same grid and world placement as the image
        assert layer.data.shape == image.data.shape
        np.testing.assert_allclose(layer.affine.affine_matrix, image.affine.affine_matrix)
    rt_names = rt.metadata["medseg_labels"]
    rt_map = from_display(np.asarray(rt.data), scan.affine)
    assert dice(rt_map == rt_names["Liver"], truth == 1) >= 0.97
    np.testing.assert_array_equal(rt_map == rt_names["ring"], truth == 6)  # hole kept
    seg_names = seg.metadata["medseg_labels"]
    seg_map = from_display(np.asarray(seg.data), scan.affine)
    np.testing.assert_array_equal(seg_map == seg_names["spleen"], truth == 2)
    assert list(seg.features["structure"]) == ["background", "spleen", "liver_tumour"]


def test_a_labels_layer_saves_as_seg_and_rtstruct(make_napari_viewer, study, tmp_path):
    folder, truth = study
    viewer = make_napari_viewer()
    viewer.open(str(folder), plugin="medseg")
    widget = SegmentWidget(viewer)
    layer = next(layer for layer in viewer.layers if " SEG " in layer.name)
    layer.data[layer.data == layer.metadata["medseg_labels"]["liver_tumour"]] = 0  # a correction
    grid = read_grid(folder / "CT")
    out = widget.save_dicom(tmp_path / "out_seg.dcm", "dicom-seg", layer=layer)
    assert out is not None, widget.status.text()
    back = read_seg(out, grid)
    np.testing.assert_array_equal(back.masks["spleen"], truth == 2)
    assert not back.masks["liver_tumour"].any()
    out = widget.save_dicom(tmp_path / "out_rt.dcm", "rtstruct", layer=layer)
    assert dice(read_rtstruct(out, grid).masks["spleen"], truth == 2) >= 0.97


def test_save_as_dicom_refuses_a_scan_that_is_not_dicom(make_napari_viewer, tmp_path):
    from conftest import SAMPLE

    from medseg_napari._layers import labels_layer

    viewer = make_napari_viewer()
    viewer.open(str(SAMPLE / "phantom_ct.nii.gz"), plugin="medseg")
    scan = viewer.layers[0].metadata["medseg_scan"]
    data, kwargs, _ = labels_layer(np.zeros(scan.shape, np.uint8), scan, {"background": 0, "liver": 1}, "mask")
    layer = viewer.add_labels(data, **kwargs)
    widget = SegmentWidget(viewer)
    messages = []
    old, _widget.show_error = _widget.show_error, messages.append
    try:
        assert widget.save_dicom(tmp_path / "x.dcm", "dicom-seg", layer=layer) is None
    finally:
        _widget.show_error = old
    assert "not a DICOM series" in messages[-1] and not (tmp_path / "x.dcm").exists()
