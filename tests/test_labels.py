"""medseg.labels (the one label-map check) and medseg.naming (the one case-name rule)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from medseg.errors import MedsegError
from medseg.labels import as_label_map, check_label_map, label_dtype, present_values
from medseg.naming import case_name, split_suffix

LABELS = {"background": 0, "liver": 1, "spleen": 2}


def test_label_dtype():
    assert label_dtype(np.array([0, 255])) == np.uint8
    assert label_dtype(np.array([0, 256])) == np.uint16
    assert label_dtype(np.zeros(0, np.int64)) == np.uint8
    with pytest.raises(MedsegError, match="at most 65535"):
        label_dtype(np.array([70000]))
    with pytest.raises(MedsegError, match="negative"):
        label_dtype(np.array([-1, 2]))


def test_whole_floats_become_integers_others_fail_naming_the_file():
    out = as_label_map(np.array([0.0, 1.0, 2.0], np.float32), "a.nii.gz")
    assert out.dtype.kind == "i" and out.tolist() == [0, 1, 2]
    with pytest.raises(MedsegError, match=r"^a.nii.gz: label values are not whole numbers"):
        as_label_map(np.array([0.5]), "a.nii.gz")
    with pytest.raises(MedsegError, match="not whole numbers"):
        as_label_map(np.array([np.nan, 1.0]), "a.nii.gz")
    with pytest.raises(MedsegError, match=r"^b.nrrd: negative label values"):
        check_label_map(np.array([0, -3], np.int16), "b.nrrd", LABELS)


@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.uint64, np.int64])
def test_present_values(dtype):
    arr = np.array([[0, 5], [5, 2]], dtype)
    assert present_values(arr) == [0, 2, 5]
    assert present_values(np.array([0, 1 << 30], np.int64)) == [0, 1 << 30]  # huge: no huge histogram
    assert present_values(np.zeros(0, np.uint8)) == []


def test_undeclared_values_are_one_line_naming_file_values_and_labels():
    arr = np.zeros((4, 4, 4), np.uint8)
    assert check_label_map(arr, "x", LABELS) is arr  # integers pass through unchanged
    arr[0, 0, :2] = [7, 9]
    with pytest.raises(MedsegError) as info:
        check_label_map(arr, Path("/d/ref.nii.gz"), LABELS, declared_in="declared in dataset.json")
    assert str(info.value) == "/d/ref.nii.gz: label values [7, 9] are not declared in dataset.json (0=background, 1=liver, 2=spleen)"
    with pytest.raises(MedsegError, match=r"\(0, 1, 2\); not a label map\?$"):
        check_label_map(arr, "p", [2, 1, 0], hint="not a label map?")
    # 0 is always allowed; labels=None checks whole, non-negative values only
    assert check_label_map(np.array([0, 1]), "p", {"liver": 1}).tolist() == [0, 1]
    assert check_label_map(arr, "p", None) is arr


def test_many_undeclared_values_are_cut_short():
    arr = np.arange(40, dtype=np.int32)  # e.g. a CT given as a label map
    with pytest.raises(MedsegError) as info:
        check_label_map(arr, "ct.nii.gz", LABELS)
    text = str(info.value)
    assert "\n" not in text and "[3, 4, 5, 6, 7, 8, 9, 10, ... (37 values)]" in text


@pytest.mark.parametrize("name,stem", [
    ("liver_3.nii.gz", "liver_3"), ("liver_3.NII.GZ", "liver_3"), ("a.nii", "a"), ("a.nrrd", "a"),
    ("a.nhdr", "a"), ("a.mha", "a"), ("a.mhd", "a"), ("x.dcm", "x"), ("series1", "series1"),
    ("notes.txt", "notes.txt"), ("a.b.nii.gz", "a.b"),
])
def test_case_name_strips_the_image_suffix(name, stem):
    assert case_name(Path("/some/folder") / name) == stem
    assert case_name(name) == stem
    assert split_suffix(name)[0] == stem and stem + split_suffix(name)[1] == name


def test_case_name_channel_suffix():
    # without known cases, only nnU-Net's first channel is stripped (never the whole name)
    assert case_name("case_0000.nii.gz", channel=True) == "case"
    assert case_name("case_0001.nii.gz", channel=True) == "case_0001"
    assert case_name("_0000.nii.gz", channel=True) == "_0000"
    assert case_name("case_0000.nii.gz") == "case_0000"
    # with known cases: any channel suffix whose remainder is a case, unless the name itself is one
    assert case_name("phantom_0002_0000.nii.gz", channel=True, known={"phantom_0002"}) == "phantom_0002"
    assert case_name("case_0001.nii.gz", channel=True, known={"case_0001", "case"}) == "case_0001"
    assert case_name("case_0001.nii.gz", channel=True, known={"case"}) == "case"
    assert case_name("case_0001.nii.gz", channel=True, known={"other"}) == "case_0001"


def test_napari_writer_uses_the_same_check(tmp_path):
    from medseg.geometry import display_shape
    from medseg.io import Scan
    from medseg_napari._layers import SCAN_KEY
    from medseg_napari._writer import labels_in_scan_order

    scan = Scan(array=np.zeros((6, 5, 4), np.float32), affine=np.diag([2.0, 2.0, 3.0, 1.0]), source=tmp_path / "s.nii.gz")
    data = np.zeros(display_shape(scan.shape, scan.affine), np.int32)
    data[0, 0, 0] = 3
    labels, got = labels_in_scan_order(data, {SCAN_KEY: scan}, "corrected")
    assert got is scan and labels.shape == scan.shape and int(labels.max()) == 3
    data[0, 0, 0] = -1
    with pytest.raises(MedsegError, match=r"^layer 'corrected': negative label values"):
        labels_in_scan_order(data, {SCAN_KEY: scan}, "corrected")
    with pytest.raises(MedsegError, match=r"^layer 'corrected': label values are not whole numbers"):
        labels_in_scan_order(data + 0.5, {SCAN_KEY: scan}, "corrected")


def test_training_transform_refuses_undeclared_values():
    from medseg.transforms import ToModelSpaced

    label = np.zeros((8, 8, 3), np.uint8)
    label[2:4, 2:4, 1] = 5
    data = {"image": np.zeros((8, 8, 3), np.float32), "label": label, "label_path": "labelsTr/c.nii.gz",
            "image_path": "imagesTr/c_0000.nii.gz", "spacing": (1.0, 1.0)}
    step = ToModelSpaced({"kind": "ct_window", "window": [-100, 200]}, (1.0, 1.0), [0, 1, 2])
    with pytest.raises(MedsegError) as info:
        step(data)
    assert str(info.value) == "labelsTr/c.nii.gz: label values [5] are not declared in the dataset's labels (0, 1, 2)"
