"""DICOM SEG and RTSTRUCT in and out on phantom series: round trips in several orientations and on an
irregularly spaced series, objects written by other tools (highdicom's own API, rt-utils), and the traps
(holes, contours on no slice, tilted contours, POINT and empty ROIs, another frame of reference)."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
from dicom_labels_helpers import dice, phantom_series

from medseg.dicom_grid import read_grid
from medseg.errors import MedsegError

hd = pytest.importorskip("highdicom", reason="the medseg[dicom] extra (highdicom) is not installed")

from medseg.dicom_seg import property_codes, read_seg, write_seg  # noqa: E402
from medseg.rtstruct import read_rtstruct, write_rtstruct  # noqa: E402

CASES = [("axial", ()), ("row_flipped", ()), ("coronal", ()), ("sagittal_flipped", ()), ("axial", (2, 3, 12))]


@pytest.mark.parametrize("orientation,drop", CASES, ids=["axial", "row_flipped", "coronal", "sagittal_flipped",
                                                         "irregular"])
def test_seg_round_trip_is_exact(tmp_path, orientation, drop):
    labels, names = phantom_series(tmp_path / "ct", orientation=orientation, drop=drop, ring=True)
    grid = read_grid(tmp_path / "ct")
    assert grid.regular == (not drop)
    write_seg(labels, names, grid, tmp_path / "seg.dcm", algorithm="test-model", version="9.9")
    back = read_seg(tmp_path / "seg.dcm", grid)
    assert set(back.masks) == set(names.values())
    for value, name in names.items():
        np.testing.assert_array_equal(back.masks[name], labels == value, err_msg=name)
    seg = hd.seg.segread(tmp_path / "seg.dcm")  # highdicom reads it back
    assert seg.SeriesInstanceUID != grid.series_uid and seg.PatientID == grid.headers[0].PatientID
    assert seg.StudyInstanceUID == grid.headers[0].StudyInstanceUID
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == grid.series_uid
    desc = {s.SegmentLabel: s for s in seg.SegmentSequence}
    assert desc["liver"].SegmentedPropertyTypeCodeSequence[0].CodeValue == "10200004"
    assert desc["liver_tumour"].SegmentedPropertyTypeCodeSequence[0].CodeValue == "108369006"
    assert desc["ring"].SegmentedPropertyTypeCodeSequence[0].CodeValue == "85756007"  # generic: Tissue
    algo = desc["liver"].SegmentationAlgorithmIdentificationSequence[0]
    assert (algo.AlgorithmName, algo.AlgorithmVersion) == ("test-model", "9.9")


@pytest.mark.parametrize("orientation,drop", CASES, ids=["axial", "row_flipped", "coronal", "sagittal_flipped",
                                                         "irregular"])
def test_rtstruct_round_trip_keeps_holes_and_slice_positions(tmp_path, orientation, drop):
    labels, names = phantom_series(tmp_path / "ct", orientation=orientation, drop=drop, ring=True)
    grid = read_grid(tmp_path / "ct")
    write_rtstruct(labels, names, grid, tmp_path / "rt.dcm")
    ds = pydicom.dcmread(tmp_path / "rt.dcm")
    along = grid.along
    for roi in ds.ROIContourSequence:  # every contour lies on a slice position, referencing that slice
        for c in roi.ContourSequence:
            pts = np.asarray(c.ContourData, float).reshape(-1, 3) @ grid.normal
            k = int(np.argmin(np.abs(along - pts.mean())))
            assert np.abs(pts - along[k]).max() < 1e-3
            assert c.ContourImageSequence[0].ReferencedSOPInstanceUID == grid.headers[k].SOPInstanceUID
    back = read_rtstruct(tmp_path / "rt.dcm", grid)
    for value, name in names.items():
        assert dice(back.masks[name], labels == value) >= 0.97, name
    ring = labels == 6
    assert ring.sum() == (12 * 12 - 4 * 4) * 4  # a square ring with its hole, on 4 slices
    np.testing.assert_array_equal(back.masks["ring"], ring)  # the hole stays a hole


def test_seg_written_by_highdicom_api_is_read_in_world_space(tmp_path):
    """A FRACTIONAL SEG built with highdicom's own API, segments in another order, empty frames omitted."""
    from pydicom.sr.codedict import codes
    from pydicom.uid import generate_uid

    labels, _ = phantom_series(tmp_path / "ct", orientation="coronal")
    grid = read_grid(tmp_path / "ct")
    algo = hd.AlgorithmIdentificationSequence(name="other", version="1", family=codes.cid7162.ArtificialIntelligence)
    segs = [hd.seg.SegmentDescription(segment_number=n, segment_label=name, segmented_property_category=codes.SCT.Organ,
                                      segmented_property_type=code, algorithm_type="AUTOMATIC",
                                      algorithm_identification=algo)
            for n, (name, code) in enumerate([("Spleen", codes.SCT.Spleen), ("LIVER", codes.SCT.Liver),
                                               ("nothing", codes.SCT.Pancreas)], start=1)]
    frames = np.stack([labels == 2, labels == 1, np.zeros_like(labels, bool)], axis=-1).transpose(2, 1, 0, 3)
    seg = hd.seg.Segmentation(
        source_images=grid.headers, pixel_array=frames.astype(np.float32) * 0.8,
        segmentation_type="FRACTIONAL", segment_descriptions=segs, series_instance_uid=generate_uid(),
        series_number=5, sop_instance_uid=generate_uid(), instance_number=1, manufacturer="x",
        manufacturer_model_name="y", software_versions="1", device_serial_number="1")
    seg.save_as(tmp_path / "other.dcm")
    back = read_seg(tmp_path / "other.dcm", grid)
    assert dice(back.masks["LIVER"], labels == 1) == 1.0 and dice(back.masks["Spleen"], labels == 2) == 1.0
    assert not back.masks["nothing"].any() and any("nothing" in n for n in back.notes)


def test_rtstruct_written_by_rt_utils_is_read_in_world_space(tmp_path):
    rt_utils = pytest.importorskip("rt_utils", reason="rt-utils (a test dependency) is not installed")
    labels, _ = phantom_series(tmp_path / "ct", orientation="axial")
    grid = read_grid(tmp_path / "ct")
    rt = rt_utils.RTStructBuilder.create_new(dicom_series_path=str(tmp_path / "ct"))
    # rt-utils takes masks as (rows, columns, slices) in its own slice order (by ImagePositionPatient z)
    order = np.argsort([float(h.ImagePositionPatient[2]) for h in grid.headers])
    for value, name in ((1, "Liver"), (2, "Spleen"), (4, "kidney_left")):
        rt.add_roi(mask=np.transpose(labels == value, (1, 0, 2))[:, :, order], name=name)
    rt.save(str(tmp_path / "rtutils.dcm"))
    back = read_rtstruct(tmp_path / "rtutils.dcm", grid)
    for value, name in ((1, "Liver"), (2, "Spleen"), (4, "kidney_left")):
        assert dice(back.masks[name], labels == value) >= 0.97, name


def _rt(tmp_path, **kw):
    labels, names = phantom_series(tmp_path / "ct", **kw)
    grid = read_grid(tmp_path / "ct")
    write_rtstruct(labels, names, grid, tmp_path / "rt.dcm")
    return grid, pydicom.dcmread(tmp_path / "rt.dcm")


def test_a_contour_between_slices_is_an_error_naming_the_roi_and_position(tmp_path):
    grid, ds = _rt(tmp_path)
    c = ds.ROIContourSequence[1].ContourSequence[0]
    pts = np.asarray(c.ContourData, float).reshape(-1, 3)
    pts[:, 2] += 0.5 * grid.gap(0)
    c.ContourData = [f"{v:.3f}" for v in pts.ravel()]
    ds.save_as(tmp_path / "bad.dcm")
    with pytest.raises(MedsegError, match=r"bad\.dcm: ROI 'spleen' has a contour at \[.*\] mm \(LPS\) on no slice"):
        read_rtstruct(tmp_path / "bad.dcm", grid)


def test_a_tilted_contour_is_refused(tmp_path):
    grid, ds = _rt(tmp_path)
    c = ds.ROIContourSequence[0].ContourSequence[3]
    pts = np.asarray(c.ContourData, float).reshape(-1, 3)
    pts[:, 2] += np.linspace(-0.4, 0.4, len(pts)) * grid.gap(0) * 2  # a plane tilted out of the slice
    c.ContourData = [f"{v:.3f}" for v in pts.ravel()]
    ds.save_as(tmp_path / "tilted.dcm")
    with pytest.raises(MedsegError, match="ROI 'liver'.*not in one slice plane.*gantry-tilted"):
        read_rtstruct(tmp_path / "tilted.dcm", grid)


def test_point_and_empty_rois_are_skipped_with_a_note(tmp_path):
    grid, ds = _rt(tmp_path)
    for c in ds.ROIContourSequence[1].ContourSequence:  # spleen becomes POINTs
        c.ContourGeometricType = "POINT"
        c.ContourData = c.ContourData[:3]
        c.NumberOfContourPoints = 1
    ds.ROIContourSequence[2].ContourSequence = []  # kidney_right: empty
    ds.save_as(tmp_path / "notes.dcm")
    back = read_rtstruct(tmp_path / "notes.dcm", grid)
    assert "spleen" not in back.masks and "kidney_right" not in back.masks and "liver" in back.masks
    assert any("spleen: skipped, only POINT" in n for n in back.notes)
    assert any("kidney_right: skipped, no contours" in n for n in back.notes)


def test_another_frame_of_reference_is_refused(tmp_path):
    grid, ds = _rt(tmp_path)
    ds.ReferencedFrameOfReferenceSequence[0].FrameOfReferenceUID = "1.2.3.4"
    ds.save_as(tmp_path / "for.dcm")
    with pytest.raises(MedsegError, match=r"for\.dcm: ReferencedFrameOfReferenceUID 1\.2\.3\.4 is not the frame"):
        read_rtstruct(tmp_path / "for.dcm", grid)
    ds = pydicom.dcmread(tmp_path / "rt.dcm")  # one ROI drawn on another (registered) frame: skipped, said
    ds.StructureSetROISequence[1].ReferencedFrameOfReferenceUID = "1.2.3.4"
    ds.save_as(tmp_path / "roi_for.dcm")
    back = read_rtstruct(tmp_path / "roi_for.dcm", grid)
    assert "spleen" not in back.masks and "liver" in back.masks
    assert any("spleen: skipped, drawn on another frame of reference (1.2.3.4)" in n for n in back.notes)


def test_a_label_map_of_another_shape_is_refused(tmp_path):
    labels, names = phantom_series(tmp_path / "ct")
    grid = read_grid(tmp_path / "ct")
    with pytest.raises(MedsegError, match="does not fit series"):
        write_seg(labels[:, :, :-1], names, grid, tmp_path / "s.dcm")
    assert not (tmp_path / "s.dcm").exists()


def test_property_codes():
    assert property_codes("Kidney_Left")[1] == ("18639004", "Left kidney")
    assert property_codes("liver lesion 2")[1][1] == "Neoplasm"
    assert property_codes("whatever")[0] == ("85756007", "Tissue")


def test_real_ct_body_with_air_holes_round_trips(shared_data, tmp_path):
    """A real 512x512 CT: the body (HU > -300) with its gas pockets as holes, through SEG and RTSTRUCT."""
    from medseg.io import load_scan

    src = shared_data / "real_ct_dicom"
    scan, grid = load_scan(src), read_grid(src)  # its SOP, study UIDs are blanked: the grid fills them in
    assert grid.shape == scan.shape and np.allclose(grid.affine(), scan.affine)
    body = scan.array > -300
    labels = body.astype(np.uint8)
    labels[scan.array > 300] = 2  # bone inside the body
    names = {1: "body", 2: "bone"}
    write_seg(labels, names, grid, tmp_path / "seg.dcm")
    write_rtstruct(labels, names, grid, tmp_path / "rt.dcm")
    for back in (read_seg(tmp_path / "seg.dcm", grid), read_rtstruct(tmp_path / "rt.dcm", grid)):
        for value, name in names.items():
            np.testing.assert_array_equal(back.masks[name], labels == value, err_msg=name)


def test_real_irregular_series_places_objects_on_each_slices_position(shared_data, tmp_path):
    """Four real slices at -99.48, 103.02, 104.27, 105.52 mm: nothing averages their spacing."""
    grid = read_grid(shared_data / "irregular_ct_dicom")
    assert not grid.regular and grid.shape == (16, 16, 4)
    labels = np.zeros(grid.shape, np.uint8)
    labels[3:9, 4:12, 0] = 1
    labels[5:14, 2:7, 2:] = 1
    labels[8:10, 3:5, 3] = 0  # a hole
    write_seg(labels, {1: "lesion"}, grid, tmp_path / "seg.dcm")
    write_rtstruct(labels, {1: "lesion"}, grid, tmp_path / "rt.dcm")
    for back in (read_seg(tmp_path / "seg.dcm", grid), read_rtstruct(tmp_path / "rt.dcm", grid)):
        np.testing.assert_array_equal(back.masks["lesion"], labels == 1)
    z = {round(float(v), 2) for c in pydicom.dcmread(tmp_path / "rt.dcm").ROIContourSequence[0].ContourSequence
         for v in np.asarray(c.ContourData, float).reshape(-1, 3)[:, 2]}
    assert z == {-99.48, 104.27, 105.52}


def test_regularize_refuses_two_stacks_in_one_series(shared_data):
    """The real irregular series: -99.48 then 103.02, 104.27, 105.52 mm is two stacks, not one volume."""
    from medseg.dicom_grid import decode_slices, regularize

    grid = read_grid(shared_data / "irregular_ct_dicom")
    image = decode_slices(grid)
    assert image.shape == grid.shape
    with pytest.raises(MedsegError, match=r"gaps from 1\.250 to 202\.500 mm \(over 4x\): too irregular to resample"):
        regularize(grid, image, np.zeros(grid.shape, np.uint8))
