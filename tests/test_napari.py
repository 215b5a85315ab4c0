"""The napari plugin in a real viewer (run under Xvfb: `xvfb-run -a pytest`)."""

from __future__ import annotations

import os

import numpy as np
import pytest
from conftest import SAMPLE

napari = pytest.importorskip("napari", reason="napari is not installed (pip install -e .[napari])")
pytest.importorskip("pytestqt", reason="pytest-qt is not installed (pip install -e .[napari])")
if not os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY"):
    pytest.skip("no display for napari's OpenGL canvas: run the tests under xvfb-run", allow_module_level=True)

from medseg.geometry import from_display, to_display  # noqa: E402
from medseg.io import load_scan  # noqa: E402
from medseg.phantom import LABELS  # noqa: E402
from medseg_napari import _widget  # noqa: E402
from medseg_napari._reader import get_reader  # noqa: E402
from medseg_napari._widget import SegmentWidget  # noqa: E402

ORGANS = ("liver", "spleen", "kidney_right", "kidney_left")


def _display_index(scan, ijk):
    marker = np.zeros(scan.shape, dtype=np.uint8)
    marker[tuple(ijk)] = 1
    data, _ = to_display(marker, scan.affine)
    return tuple(int(v) for v in np.argwhere(data)[0])


def _expected_world(scan, ijk):
    ras = (scan.affine @ np.r_[np.asarray(ijk, dtype=float), 1.0])[:3]
    return (ras * [-1, -1, 1])[::-1]  # world (z, y, x) in LPS mm


@pytest.mark.parametrize("name", ["real_ct_dicom", "mr_3mm_lps.nii.gz", "ct_abdomen_3mm.nii.gz"])
def test_reader_places_real_scans_in_world_coordinates(make_napari_viewer, shared_data, name):
    viewer = make_napari_viewer()
    layers = viewer.open(str(shared_data / name), plugin="medseg")
    assert len(layers) == 1
    layer = layers[0]
    scan = load_scan(shared_data / name)
    rng = np.random.default_rng(0)
    for _ in range(5):
        ijk = [int(rng.integers(n)) for n in scan.shape]
        idx = _display_index(scan, ijk)
        assert layer.data[idx] == scan.array[tuple(ijk)]
        np.testing.assert_allclose(layer.data_to_world(idx), _expected_world(scan, ijk), atol=1e-3)
    # true proportions: the world extent along each axis is voxels x spacing (not squashed)
    extent = np.abs(np.diag(layer.affine.affine_matrix)[:3]) * np.array(layer.data.shape)
    np.testing.assert_allclose(sorted(extent), sorted(np.array(scan.shape) * scan.spacing), rtol=1e-4)
    if scan.modality == "CT":
        assert tuple(layer.contrast_limits) == (-160.0, 240.0)  # soft-tissue window


def test_reader_declines_what_it_cannot_read(tmp_path):
    (tmp_path / "notes.txt").write_text("not a scan")
    (tmp_path / "empty").mkdir()
    assert get_reader(str(tmp_path / "notes.txt")) is None
    assert get_reader(str(tmp_path / "empty")) is None
    assert get_reader(str(tmp_path)) is None  # a folder without DICOM files
    assert get_reader([str(SAMPLE / "phantom_ct.nii.gz"), str(SAMPLE / "phantom_ct.nii.gz")]) is None
    assert get_reader(str(SAMPLE / "phantom_ct_dicom")) is not None
    (tmp_path / "fake.dcm").write_bytes(b"\0" * 200)  # named like DICOM, no DICM preamble
    assert get_reader(str(tmp_path / "fake.dcm")) is None


def _plugin_manager():
    import npe2

    pm = npe2.PluginManager.instance()
    pm.discover()
    return pm


def test_manifest_is_discovered_and_valid():
    import npe2

    import medseg_napari

    manifest = _plugin_manager().get_manifest("medseg")
    kinds = manifest.contributions
    assert kinds.readers and kinds.writers and kinds.widgets and kinds.sample_data
    assert {c.python_name.split(".")[0] for c in kinds.commands} == {"medseg_napari"}
    # what `npe2 validate medseg --imports` checks: the installed manifest, every python_name importable
    installed = npe2.PluginManifest.from_distribution("medseg")
    installed.validate_imports()
    assert installed == npe2.PluginManifest.from_file(os.path.join(os.path.dirname(medseg_napari.__file__), "napari.yaml"))


def test_reader_patterns_claim_scan_formats_only(tmp_path):
    """npe2 offers our reader the formats medseg reads and any folder (get_reader then looks for
    DICOM), never other files: no "*" pattern, so a .png or .tif is not ours to open."""
    import shutil

    pm = _plugin_manager()

    def ours(path) -> bool:
        return "medseg" in {r.plugin_name for r in pm.iter_compatible_readers([str(path)])}

    dicom = tmp_path / "Series 3 (abdomen)"  # a DICOM folder of any name
    shutil.copytree(SAMPLE / "phantom_ct_dicom", dicom)
    one = next(dicom.iterdir())
    shutil.copy(one, tmp_path / "IM0001.IMA")
    for name in ("scan.nii", "scan.nii.gz", "SCAN.NII.GZ", "scan.nrrd", "scan.nhdr", "scan.mha", "scan.mhd",
                 "x.dcm", "X.DCM", "x.dicom", "x.ima"):
        assert ours(tmp_path / name), name
    assert ours(dicom) and ours(one) and ours(tmp_path / "IM0001.IMA")
    for name in ("photo.png", "cells.tif", "stack.tiff", "table.csv", "array.npy", "notes"):
        assert not ours(tmp_path / name), name
    assert get_reader(str(dicom)) is not None and get_reader(str(tmp_path / "IM0001.IMA")) is not None


def test_scans_open_without_choosing_a_reader(make_napari_viewer, tmp_path):
    """napari's built-in reader claims .nii.gz, .dcm, .mha ... too, so napari would ask "choose
    reader" each time; once the Segment widget is open, medseg is the preferred reader for the
    manifest's patterns, and a preference the user already set is kept."""
    import shutil

    from napari.errors import MultipleReaderError
    from napari.settings import get_settings

    from medseg_napari._layers import SCAN_KEY
    from medseg_napari._reader import SCAN_PATTERNS

    manifest = _plugin_manager().get_manifest("medseg")
    assert set(manifest.contributions.readers[0].filename_patterns) == set(SCAN_PATTERNS)
    viewer = make_napari_viewer()
    nii = tmp_path / "scan.nii.gz"
    shutil.copy(SAMPLE / "phantom_ct.nii.gz", nii)
    get_settings().plugins.extension2reader = {"*.mha": "napari"}  # the user's own choice
    with pytest.raises(MultipleReaderError):  # plugin=None: what File > Open does
        viewer.open(str(nii), plugin=None)
    widget = SegmentWidget(viewer)
    prefs = get_settings().plugins.extension2reader
    assert prefs["*.mha"] == "napari"
    assert all(prefs[p] == "medseg" for p in SCAN_PATTERNS if p != "*.mha")
    assert "Preferences > Plugins" in widget.status.text()
    (layer,) = viewer.open(str(nii), plugin=None)
    assert SCAN_KEY in layer.metadata and layer.data.shape == (48, 176, 176)


def test_window_follows_the_content(make_napari_viewer, tmp_path):
    """A CT NIfTI (which cannot say it is CT) opens with the soft-tissue window and the CT presets;
    an MR NIfTI opens with a percentile window and no CT presets."""
    import nibabel as nib

    from medseg.phantom import make_phantom, write_nifti

    ct, mr = tmp_path / "ct.nii.gz", tmp_path / "mr.nii.gz"
    ph = make_phantom(5, shape=(48, 48, 8))
    write_nifti(ph, ct)
    rng = np.random.default_rng(0)
    nib.save(nib.Nifti1Image(rng.gamma(2.0, 150.0, size=ph.image.shape).astype(np.float32), ph.affine), str(mr))
    viewer = make_napari_viewer()
    widget = SegmentWidget(viewer)
    viewer.window.add_dock_widget(widget)
    ct_layer = viewer.open(str(ct), plugin="medseg")[0]
    assert load_scan(ct).modality is None
    assert tuple(ct_layer.contrast_limits) == (-160.0, 240.0)
    widget.image_box.setCurrentText(ct_layer.name)
    assert widget.window_box.isVisibleTo(widget)
    mr_layer = viewer.open(str(mr), plugin="medseg")[0]
    widget.image_box.setCurrentText(mr_layer.name)
    assert tuple(mr_layer.contrast_limits) != (-160.0, 240.0) and mr_layer.contrast_limits[0] >= 0
    assert not widget.window_box.isVisibleTo(widget) and not widget.window_label.isVisibleTo(widget)
    widget.image_box.setCurrentText(ct_layer.name)
    assert widget.window_box.isVisibleTo(widget)


def _segmented(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    viewer.open_sample("medseg", "phantom_ct")
    widget = SegmentWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget.segment("phantom CT")
    qtbot.waitUntil(lambda: not widget.running, timeout=300_000)
    assert widget.corrected is not None, widget.status.text()
    return viewer, widget


@pytest.mark.slow
def test_segment_widget_on_the_sample(make_napari_viewer, qtbot):
    viewer, widget = _segmented(make_napari_viewer, qtbot)
    image, truth = viewer.layers["phantom CT"], viewer.layers["phantom CT ground truth"]
    pred = viewer.layers["phantom CT prediction"]
    assert widget.corrected.name == "phantom CT corrected" and not pred.editable
    for layer in (pred, widget.corrected):
        assert layer.data.shape == image.data.shape
        np.testing.assert_allclose(layer.affine.affine_matrix, image.affine.affine_matrix)
    for name in ORGANS:
        v = LABELS[name]
        p, r = pred.data == v, truth.data == v
        dice = 2 * (p & r).sum() / (p.sum() + r.sum())
        assert dice >= 0.9, (name, dice)
    # names and stable colours
    assert list(widget.corrected.features["structure"][:3]) == ["background", "liver", "spleen"]
    np.testing.assert_allclose(widget.corrected.colormap.map(np.array([1]))[0][:3], [0.80, 0.42, 0.25], atol=1e-3)
    # worst-first review: one entry per axial slice, sorted, and a click moves the viewer there
    panel = widget.panel
    assert panel.slices.count() == image.data.shape[0]
    values = [float(panel.slices.item(i).text().rsplit(" ", 1)[1]) for i in range(panel.slices.count())]
    assert values == sorted(values, reverse=True) and values[0] > values[-1]
    worst = int(panel.slices.item(0).data(256))
    panel.slices.itemClicked.emit(panel.slices.item(0))
    assert viewer.dims.point[0] == pytest.approx(image.data_to_world((worst, 0, 0))[0])
    assert panel.current_slice() == worst and f"axial slice {worst + 1} of" in panel.position.text()
    # keys: next / previous uncertain slice, mark reviewed (then on to the next)
    second, third = panel.order[1], panel.order[2]
    assert panel.step(+1) == second and panel.current_slice() == second
    assert panel.step(-1) == worst
    assert panel.mark_reviewed() == second and worst in panel.reviewed
    assert panel.slices.item(0).text().startswith("✓ ")
    assert panel.step(-1) is None and panel.step(+1) == third  # reviewed slices are skipped
    # legend: one row per structure with its volume; it follows a correction
    rows = {panel.legend.item(r, 0).text().split("  ", 1)[1]: r for r in range(panel.legend.rowCount())}
    assert set(rows) == set(ORGANS) | {"liver_tumour"}
    scan = image.metadata["medseg_scan"]
    liver_ml = (pred.data == 1).sum() * scan.voxel_volume_ml
    assert float(panel.legend.item(rows["liver"], 1).text()) == pytest.approx(liver_ml, abs=0.06)
    assert panel.legend.item(rows["liver"], 2).text() == "0"
    erased = int((widget.corrected.data[20] == 1).sum())
    widget.corrected.data[20][widget.corrected.data[20] == 1] = 0
    widget.corrected.events.paint()  # as a stroke does
    qtbot.waitUntil(lambda: panel.legend.item(rows["liver"], 2).text() != "0", timeout=5_000)
    assert float(panel.legend.item(rows["liver"], 2).text()) == pytest.approx(-erased * scan.voxel_volume_ml, abs=0.06)
    # CT window presets
    widget.set_window("lung")
    assert tuple(image.contrast_limits) == (-1350.0, 150.0)
    # the label picker sets the paint label
    widget.label_box.setCurrentIndex(2)
    assert widget.corrected.selected_label == 2


@pytest.mark.slow
def test_resegmenting_never_loses_corrections(make_napari_viewer, qtbot):
    """Segment again after painting: the painted layer is kept (renamed), a fresh corrected layer
    holds the new result; an untouched corrected layer is simply replaced."""
    viewer, widget = _segmented(make_napari_viewer, qtbot)
    widget.segment("phantom CT")  # nothing painted yet: replaced, not kept
    qtbot.waitUntil(lambda: not widget.running, timeout=300_000)
    assert [la.name for la in viewer.layers if "corrected" in la.name] == ["phantom CT corrected"]
    painted = widget.corrected
    painted.data[21, 10:20, 10:20] = 5
    edited = painted.data.copy()
    widget.segment("phantom CT")
    qtbot.waitUntil(lambda: not widget.running, timeout=300_000)
    kept = viewer.layers["phantom CT corrected (kept 1)"]
    assert kept is painted
    np.testing.assert_array_equal(kept.data, edited)
    fresh = viewer.layers["phantom CT corrected"]
    assert fresh is widget.corrected and fresh is not painted and fresh.data[21, 10:20, 10:20].max() < 5
    assert "phantom CT corrected (kept 1)" in widget.status.text()


@pytest.mark.slow
def test_painted_correction_saved_and_reread(make_napari_viewer, qtbot, tmp_path):
    viewer, widget = _segmented(make_napari_viewer, qtbot)
    layer = widget.corrected
    before = viewer.layers["phantom CT prediction"].data.copy()
    layer.paint((20, 80, 80), 2, refresh=True)  # a brush stroke of label 2 (spleen)
    layer.data[21, 10:20, 10:20] = 5
    assert not np.array_equal(layer.data, before)
    np.testing.assert_array_equal(viewer.layers["phantom CT prediction"].data, before)  # prediction kept
    out = tmp_path / "corrected.nii.gz"
    written = napari.save_layers(str(out), [layer], plugin="medseg")
    assert written == [str(out)]
    scan = viewer.layers["phantom CT"].metadata["medseg_scan"]
    back = load_scan(out)
    np.testing.assert_allclose(back.affine, scan.affine, atol=1e-4)
    np.testing.assert_array_equal(back.array, from_display(layer.data, scan.affine))
    # the widget's own Save does the same
    assert widget.save(tmp_path / "again.nii.gz") is not None
    np.testing.assert_array_equal(load_scan(tmp_path / "again.nii.gz").array, back.array)
    # never over the source
    messages = []
    widget_errors = _capture_errors(messages)
    try:
        assert widget.save(SAMPLE / "phantom_ct_dicom" / "x.nii.gz") is None
    finally:
        widget_errors.undo()
    assert "refusing to write into the input" in messages[-1]


class _capture_errors:
    def __init__(self, sink):
        self.old = _widget.show_error
        _widget.show_error = sink.append

    def undo(self):
        _widget.show_error = self.old


def _dice(a, b):
    return 2 * (a & b).sum() / max(a.sum() + b.sum(), 1)


@pytest.mark.slow
def test_correction_loop_fill_add_and_fine_tune(make_napari_viewer, qtbot, tmp_path):
    """Correct two slices, fill the liver between them, accept, add to a training set (the other
    slices become 'ignore'), fine-tune on it: the loop of the README's napari section."""
    import json

    from medseg.bundle import load_bundle
    from medseg.data import check_dataset
    from medseg.geometry import to_display

    viewer, widget = _segmented(make_napari_viewer, qtbot)
    panel, layer = widget.panel, widget.corrected
    truth = viewer.layers["phantom CT ground truth"].data
    depth = layer.data.shape[0]
    liver = np.flatnonzero((truth == 1).any(axis=(1, 2)))
    a = int(liver[len(liver) // 3])
    b = a + 5
    assert widget.add_to_training_set(tmp_path / "empty") is None  # nothing labelled yet: refused, with a message
    assert "no slice is labelled yet" in widget.status.text() and not (tmp_path / "empty").exists()
    # the user corrects slice a with the brush (axial view), and slice b too, then ticks b reviewed
    layer.paint((a, 5, 5), 1, refresh=True)  # a stroke that changes something (the corner is background)
    assert panel.painted == {a}
    for k in (a, b):
        where = np.nonzero(layer.data[k] != truth[k])
        layer.data_setitem((np.full(where[0].size, k), *where), truth[k][where])
    panel.go_to(b)
    panel.mark_reviewed()
    assert panel.labelled() == {"painted": [a, b], "reviewed": [b]}
    # the model missed the liver between them; Fill between gives it back
    between = layer.data[a + 1 : b]
    between[between == 1] = 0
    before_fill = layer.data.copy()
    widget.label_box.setCurrentIndex(1)  # 1: liver
    filled = widget.fill_between_slices()
    assert filled == list(range(a + 1, b))
    for k in filled:
        assert _dice(layer.data[k] == 1, truth[k] == 1) >= 0.9, k
    assert panel.filled == set(filled) and panel.painted == {a, b}  # a fill is not the user's painting
    assert "filled, not reviewed" in panel.slices.item(panel.order.index(filled[0])).text()
    layer.undo()  # one undoable step
    np.testing.assert_array_equal(layer.data, before_fill)
    layer.redo()
    # added before accepting: only the painted and reviewed slices are labelled
    ds = tmp_path / "hospital"
    case = widget.add_to_training_set(ds)
    assert case is not None and "2 labelled slice(s)" in widget.status.text(), widget.status.text()
    assert check_dataset(ds).labelled == {case.name: (2, depth)}
    widget.accept_filled()
    assert panel.filled == set() and panel.labelled()["filled_accepted"] == filled
    again = widget.add_to_training_set(ds)
    assert again.updated and again.name == case.name
    idx = check_dataset(ds)
    assert idx.problems == [] and idx.labelled == {case.name: (2 + len(filled), depth)}
    assert idx.labels == {**LABELS, "ignore": 6}
    meta = json.loads((ds / "dataset.json").read_text())
    assert meta["labelled_slices"][case.name]["filled_accepted"] == filled
    scan = viewer.layers["phantom CT"].metadata["medseg_scan"]
    written, _ = to_display(load_scan(again.label).array, scan.affine)
    keep = [a, *filled, b]
    np.testing.assert_array_equal(written[keep], layer.data[keep])
    assert (np.delete(written, keep, axis=0) == 6).all()
    # fine-tune on it at once
    seen = set()
    widget.fine_tune(tmp_path / "run", epochs=2, steps=3)
    qtbot.waitUntil(lambda: seen.add(widget.status.text()) or not widget.running, timeout=600_000)
    assert widget.model_edit.text() == str(tmp_path / "run" / "best"), widget.status.text()
    assert any("epoch 1/2" in t and "loss" in t and "left" in t for t in seen), seen
    assert "Dice on the 1 training case (no case held out)" in widget.status.text(), widget.status.text()
    card = load_bundle(tmp_path / "run" / "best").card
    assert card.training["init"]["kept_classes"] == list(LABELS) and "ignore" not in card.labels
    assert card.training["sparse_labels"]["labelled_slices"] == {case.name: f"{len(keep)}/{depth}"}
    # a cancelled fine-tune says what it kept
    widget.fine_tune(tmp_path / "run2", epochs=5, steps=3)
    qtbot.waitUntil(lambda: (tmp_path / "run2" / "best" / "model.json").exists(), timeout=600_000)
    widget.cancel()
    qtbot.waitUntil(lambda: not widget.running, timeout=600_000)
    assert widget.status.text().startswith("fine-tune cancelled: kept the best model so far"), widget.status.text()
    assert str(tmp_path / "run2" / "best") in widget.status.text()


def test_cancel_leaves_nothing_half_done(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    viewer.open_sample("medseg", "phantom_ct")
    widget = SegmentWidget(viewer)
    widget.segment("phantom CT")
    assert widget.running
    widget.cancel()
    qtbot.waitUntil(lambda: not widget.running, timeout=120_000)
    assert widget.status.text() == "cancelled" and widget.corrected is None and widget._cancel.is_set()
    assert [layer.name for layer in viewer.layers] == ["phantom CT", "phantom CT ground truth"]


def test_bad_input_gives_notifications(make_napari_viewer, qtbot, tmp_path):
    viewer = make_napari_viewer()
    viewer.open_sample("medseg", "phantom_ct")
    widget = SegmentWidget(viewer)
    messages: list[str] = []
    capture = _capture_errors(messages)
    try:
        (tmp_path / "not_a_bundle").mkdir()
        widget.model_edit.setText(str(tmp_path / "not_a_bundle"))
        widget.segment("phantom CT")
        assert not widget.running and "not_a_bundle" in messages[-1]
        # a Labels layer whose shape does not match its scan
        truth = viewer.layers["phantom CT ground truth"]
        wrong = viewer.add_labels(np.zeros((3, 4, 5), np.uint8), metadata=dict(truth.metadata), name="wrong")
        assert widget.save(tmp_path / "wrong.nii.gz", wrong) is None
        assert "does not match its scan" in messages[-1] and not (tmp_path / "wrong.nii.gz").exists()
        # a Labels layer drawn from scratch, with no scan behind it
        loose = viewer.add_labels(np.zeros((3, 4, 5), np.uint8), name="loose")
        assert widget.save(tmp_path / "loose.nii.gz", loose) is None and "no source scan" in messages[-1]
        # fine-tuning before any case was added
        widget.fine_tune(tmp_path / "run")
        assert "no training set" in messages[-1]
    finally:
        capture.undo()
    # a folder of broken DICOM: the reader raises medseg's one-line message (napari shows it)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "a.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"garbage")
    reader = get_reader(str(broken))
    from medseg.errors import MedsegError

    with pytest.raises(MedsegError, match=r"a\.dcm: not a readable DICOM file \(truncated or not DICOM") as err:
        reader(str(broken))
    assert "\n" not in str(err.value)


def test_sample_data_layers_align():
    from medseg_napari._sample_data import phantom_ct

    (img, img_kw, kind1), (lab, lab_kw, kind2) = phantom_ct()
    assert (kind1, kind2) == ("image", "labels") and img.shape == lab.shape
    np.testing.assert_allclose(img_kw["affine"], lab_kw["affine"])
    assert set(np.unique(lab)) == set(LABELS.values())


@pytest.mark.slow
def test_widget_shows_intensity_doubts_and_refuses_garbage(make_napari_viewer, qtbot, tmp_path):
    """A CT stored without its rescale intercept is segmented with a warning in the status; a scan
    with no finite voxel is refused with medseg's one-line message, and no layer is added."""
    import nibabel as nib

    from medseg.phantom import make_phantom, write_nifti

    ph = make_phantom(11, shape=(48, 48, 10))
    raw, nan = tmp_path / "raw.nii.gz", tmp_path / "nan.nii.gz"
    write_nifti(ph, raw)
    img = nib.load(str(raw))
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj).astype(np.int16) + np.int16(1024), img.affine), str(raw))
    nib.save(nib.Nifti1Image(np.full(ph.image.shape, np.nan, np.float32), img.affine), str(nan))
    viewer = make_napari_viewer()
    widget = SegmentWidget(viewer)
    viewer.window.add_dock_widget(widget)
    layer = viewer.open(str(raw), plugin="medseg")[0]
    widget.segment(layer.name)
    qtbot.waitUntil(lambda: not widget.running, timeout=120_000)
    assert widget.corrected is not None
    # the intensity doubt is one of the domain warnings shown above the status (told once, not twice)
    assert "outside the range" in widget.domain_label.text() and widget.domain_label.isVisibleTo(widget)
    assert "outside the model's training data" in widget.status.text() and "outside the range" not in widget.status.text()
    layer = viewer.open(str(nan), plugin="medseg")[0]
    n_layers = len(viewer.layers)
    widget.segment(layer.name)
    qtbot.waitUntil(lambda: not widget.running, timeout=120_000)
    assert "no finite voxel values" in widget.status.text() and "nan.nii.gz" in widget.status.text()
    assert len(viewer.layers) == n_layers


@pytest.mark.slow
def test_corrections_autosaved_and_restored_after_a_crash(make_napari_viewer, qtbot, tmp_path):
    """A stroke reaches medseg's cache within seconds; a new viewer opening the same scan gets it back."""
    viewer, widget = _segmented(make_napari_viewer, qtbot)
    layer = widget.corrected
    layer.paint((20, 80, 80), 2, refresh=True)  # one brush stroke, as the paint tool makes it
    widget.panel.go_to(widget.panel.order[0])
    widget.panel.mark_reviewed()  # review progress is kept too
    qtbot.waitUntil(lambda: widget.autosave.saved >= 1 and not widget.autosave.pending(), timeout=30_000)
    painted = layer.data.copy()
    # the process died here: a fresh viewer opens the same scan, the widget restores the strokes
    viewer2 = make_napari_viewer()
    viewer2.open_sample("medseg", "phantom_ct")
    widget2 = SegmentWidget(viewer2)
    restored = viewer2.layers["phantom CT corrected"]
    np.testing.assert_array_equal(restored.data, painted)
    np.testing.assert_allclose(restored.affine.affine_matrix, viewer2.layers["phantom CT"].affine.affine_matrix)
    assert widget2.corrected is restored and "restored your autosaved corrections" in widget2.status.text()
    # the review comes back as it was: the ranking and the slice marked reviewed
    assert widget2.panel.order == widget.panel.order and widget2.panel.reviewed == {widget.panel.order[0]}
    assert widget2.panel.painted == {20}  # the slice painted on
    np.testing.assert_allclose(widget2.panel.scores, widget.panel.scores, atol=1e-5)
    assert widget2.panel.slices.item(0).text().startswith("✓ ")
    # segmenting again keeps the restored work (it differs from any new prediction)
    widget2.segment("phantom CT")
    qtbot.waitUntil(lambda: not widget2.running, timeout=300_000)
    np.testing.assert_array_equal(viewer2.layers["phantom CT corrected (kept 1)"].data, painted)
    # once saved to the user's own file, the autosave is no longer offered
    out = widget2.save(tmp_path / "mine.nii.gz", viewer2.layers["phantom CT corrected (kept 1)"])
    assert out is not None
    viewer3 = make_napari_viewer()
    viewer3.open_sample("medseg", "phantom_ct")
    SegmentWidget(viewer3)
    assert "phantom CT corrected (kept 1)" not in viewer3.layers


@pytest.mark.parametrize("failure", ["cuda", "crash", "fine-tune"])
def test_a_worker_error_is_one_notification(make_napari_viewer, qtbot, capfd, monkeypatch, tmp_path, failure):
    """Any exception in a background job: one notification with one line, no traceback, viewer alive."""
    import torch
    from napari.utils.notifications import notification_manager

    viewer = make_napari_viewer()
    viewer.open_sample("medseg", "phantom_ct")
    widget = SegmentWidget(viewer)
    if failure == "cuda":
        if torch.cuda.is_available():
            pytest.skip("checks the no-CUDA message on a machine without CUDA")
        widget.device_box.setCurrentText("cuda")
        expected = "no CUDA device is available"
    elif failure == "crash":
        def broken(*args, **kwargs):
            raise RuntimeError("index 7 is out of bounds\n" + "array([[0, 1, 2 ...]])\n" * 50)

        monkeypatch.setattr(_widget, "_segment_job", broken)
        expected = "unexpected RuntimeError: index 7 is out of bounds"
    else:  # the fine-tune worker: a training set whose only case lost its label file
        from medseg.phantom import make_dataset

        ds = make_dataset(tmp_path / "ds", [3], shape=(32, 32, 8), spacing=(10.0, 10.0, 20.0))
        next((ds / "labelsTr").iterdir()).unlink()
        expected = "no label file for it in labelsTr"
    seen = []
    notification_manager.notification_ready.connect(seen.append)
    try:
        if failure == "fine-tune":
            widget.fine_tune(tmp_path / "run", dataset=ds, epochs=1, steps=1)
        else:
            widget.segment("phantom CT")
        qtbot.waitUntil(lambda: not widget.running, timeout=60_000)
        qtbot.wait(200)
    finally:
        notification_manager.notification_ready.disconnect(seen.append)
    errors = [n for n in seen if str(n.severity).lower().endswith("error")]
    assert len(errors) == 1, [n.message for n in seen]
    assert expected in errors[0].message and "\n" not in errors[0].message
    assert widget.status.text() == errors[0].message
    err = capfd.readouterr().err
    assert "Traceback" not in err and "array([[" not in err
    assert widget.run_button.isEnabled() and viewer.layers["phantom CT"] is not None  # the viewer goes on


@pytest.mark.slow
def test_domain_warning_for_an_mr_scan_with_the_ct_model(make_napari_viewer, qtbot, tmp_path):
    """An MR NIfTI (no modality in the file) given to the CT model: a visible warning before and after
    segmenting; the widget says what the model was trained on; the CT sample gets no warning."""
    import nibabel as nib
    from napari.utils.notifications import notification_manager

    from medseg.phantom import make_phantom

    ph = make_phantom(7, shape=(96, 96, 20))
    rng = np.random.default_rng(1)
    tissue = np.array([0.0, 520.0, 760.0, 900.0, 880.0, 300.0])  # T2-like: organs brighter than fat here
    mr = np.where(ph.image > -500, 420.0, 0.0) + tissue[ph.labels] * (ph.labels > 0)
    mr = (mr + rng.gamma(2.0, 20.0, size=mr.shape)).astype(np.float32)
    path = tmp_path / "abdomen_t2.nii.gz"
    nib.save(nib.Nifti1Image(mr, ph.affine), str(path))
    viewer = make_napari_viewer()
    viewer.open_sample("medseg", "phantom_ct")
    widget = SegmentWidget(viewer)
    viewer.window.add_dock_widget(widget)
    from medseg.bundle import load_card

    cases = load_card().training_data["cases"]
    assert f"Trained on {cases} cases" in widget.card_label.text() and "abdomen" in widget.card_label.text()
    widget.image_box.setCurrentText("phantom CT")
    assert not widget.domain_label.isVisibleTo(widget)  # the sample is what the model knows
    seen = []
    notification_manager.notification_ready.connect(seen.append)
    try:
        layer = viewer.open(str(path), plugin="medseg")[0]
        widget.image_box.setCurrentText(layer.name)
        assert widget.domain_label.isVisibleTo(widget)
        before = widget.domain_label.text()
        assert "outside what the model was trained on" in before and "MR" in before
        widget.segment(layer.name)
        qtbot.waitUntil(lambda: not widget.running, timeout=300_000)
    finally:
        notification_manager.notification_ready.disconnect(seen.append)
    assert widget.corrected is not None and widget.corrected.name == f"{layer.name} corrected"
    assert widget.domain_label.isVisibleTo(widget) and widget.domain_label.text() == before
    assert "outside the model's training data" in widget.status.text()
    warnings = [n.message for n in seen if "training data" in n.message]
    assert len(warnings) == 1 and "MR" in warnings[0]  # told once, not at every click


@pytest.mark.slow
def test_live_preview_gives_the_full_runs_labels(make_napari_viewer, qtbot):
    """Live mode segments the axial slice on screen as the user scrolls; each slice equals the full run's."""
    viewer = make_napari_viewer()
    viewer.open_sample("medseg", "phantom_ct")
    widget = SegmentWidget(viewer)
    image = viewer.layers["phantom CT"]
    widget.image_box.setCurrentText("phantom CT")
    widget.live_box.setChecked(True)
    live = viewer.layers["phantom CT live"]
    assert not live.editable and live.data.shape == image.data.shape
    last = image.data.shape[0] - 1
    for k in (0, last // 2, last):
        viewer.dims.set_point(0, float(image.data_to_world((k, 0, 0))[0]))
        qtbot.waitUntil(lambda k=k: k in widget.live.done, timeout=10_000)
    shown = {k: live.data[k].copy() for k in widget.live.done}
    assert set(shown) >= {0, last // 2, last} and live.data[1].max() == 0  # only the slices scrolled to
    assert shown[last // 2].max() > 0  # organs at mid-abdomen
    widget.segment("phantom CT")
    qtbot.waitUntil(lambda: not widget.running, timeout=300_000)
    full = viewer.layers["phantom CT prediction"].data
    for k, labels in shown.items():
        np.testing.assert_array_equal(labels, full[k])
    assert "phantom CT live" not in viewer.layers and not widget.live_box.isChecked()


def test_view_buttons_keep_the_radiological_convention(make_napari_viewer):
    """The widget's plane buttons show each plane superior-up / right-on-the-left; multi-planar docks the others."""
    from medseg_napari._views import _camera, displayed_plane

    viewer = make_napari_viewer()
    viewer.open_sample("medseg", "phantom_ct")
    widget = SegmentWidget(viewer)
    widget.plane_buttons["coronal"].click()
    assert displayed_plane(viewer) == "coronal" and tuple(_camera(viewer).orientation)[1:] == ("up", "right")
    widget.plane_buttons["sagittal"].click()
    assert displayed_plane(viewer) == "sagittal" and tuple(_camera(viewer).orientation)[1:] == ("up", "right")
    widget.plane_buttons["axial"].click()
    assert displayed_plane(viewer) == "axial" and tuple(_camera(viewer).orientation)[1:] == ("down", "right")
    mpr = widget.multiplanar()
    assert set(mpr.views) == {"axial", "coronal", "sagittal"} and "phantom CT" in mpr.views["coronal"].layers
    mpr.close_views()
