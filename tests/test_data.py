"""Dataset layouts (MSD, nnU-Net v2, DICOM images) and `check-dataset`."""

import json
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest

from medseg.data import check_dataset, find_cases, index_dataset
from medseg.errors import MedsegError
from medseg.phantom import make_phantom, write_dicom_series, write_nifti

SHAPE, SPACING = (40, 40, 12), (9.0, 9.0, 18.0)


def _msd_task(root, seeds=(2, 3)):
    """A tiny dataset laid out exactly like MSD's Task09_Spleen (spleen only, macOS junk files)."""
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    (root / "imagesTs").mkdir()
    training = []
    for s in seeds:
        ph = make_phantom(s, shape=SHAPE, spacing=SPACING)
        ph.labels = (ph.labels == 2).astype(np.uint8)  # spleen = 1
        write_nifti(ph, root / "imagesTr" / f"spleen_{s}.nii.gz", root / "labelsTr" / f"spleen_{s}.nii.gz")
        (root / "imagesTr" / f"._spleen_{s}.nii.gz").write_bytes(b"\x00\x05\x16\x07 mac resource fork")
        training.append({"image": f"./imagesTr/spleen_{s}.nii.gz", "label": f"./labelsTr/spleen_{s}.nii.gz"})
    (root / "dataset.json").write_text(json.dumps({
        "name": "Spleen", "tensorImageSize": "3D", "modality": {"0": "CT"},
        "labels": {"0": "background", "1": "spleen"}, "numTraining": len(seeds), "numTest": 0,
        "training": training, "test": [],
    }))
    return root


def _nnunet(root, seeds=(4, 5, 6)):
    from medseg.phantom import make_dataset

    return make_dataset(root, list(seeds), shape=SHAPE, spacing=SPACING)


def test_msd_layout(tmp_path):
    cases, meta = find_cases(_msd_task(tmp_path))
    assert [c.name for c in cases] == ["spleen_2", "spleen_3"]
    idx = check_dataset(tmp_path)
    assert idx.problems == [] and idx.labels == {"background": 0, "spleen": 1} and idx.modality == "CT"


def test_nnunet_layout(tmp_path):
    idx = check_dataset(_nnunet(tmp_path))
    assert idx.problems == []
    assert [c.image.name for c in idx.cases] == [f"phantom_000{s}_0000.nii.gz" for s in (4, 5, 6)]
    assert idx.labels["kidney_left"] == 4


def test_dicom_images_with_nifti_masks(tmp_path):
    (tmp_path / "imagesTr").mkdir()
    (tmp_path / "labelsTr").mkdir()
    ph = make_phantom(8, shape=SHAPE, spacing=SPACING)
    write_dicom_series(ph, tmp_path / "imagesTr" / "patient8")
    write_nifti(ph, tmp_path / "image_unused.nii.gz", tmp_path / "labelsTr" / "patient8.nii.gz")
    (tmp_path / "image_unused.nii.gz").unlink()
    (tmp_path / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "liver": 1, "spleen": 2,
        "kidney_right": 3, "kidney_left": 4, "liver_tumour": 5}, "channel_names": {"0": "CT"}}))
    idx = check_dataset(tmp_path)
    assert idx.problems == [] and idx.cases[0].image.is_dir()


def test_reoriented_mask_is_fine(tmp_path):
    """An image stored LPS with its mask stored LAS (same voxel centres) passes."""
    _nnunet(tmp_path, seeds=(4,))
    lab_path = tmp_path / "labelsTr" / "phantom_0004.nii.gz"
    lab = nib.load(str(lab_path))
    flip = np.diag([1.0, -1.0, 1.0, 1.0])
    flip[1, 3] = lab.shape[1] - 1  # new j = old (ny-1-j): same world grid, LAS storage
    flipped = nib.Nifti1Image(np.asanyarray(lab.dataobj)[:, ::-1, :].copy(), lab.affine @ flip)
    assert "".join(nib.aff2axcodes(flipped.affine)) == "LAS"
    nib.save(flipped, str(lab_path))
    assert check_dataset(tmp_path).problems == []


def test_all_problems_reported_in_one_run(tmp_path):
    _nnunet(tmp_path)
    # 1. a mask on a shifted grid
    lab4 = tmp_path / "labelsTr" / "phantom_0004.nii.gz"
    img = nib.load(str(lab4))
    aff = img.affine.copy()
    aff[:3, 3] += [SPACING[0], 0, 0]
    nib.save(nib.Nifti1Image(np.asanyarray(img.dataobj), aff), str(lab4))
    # 2. an undeclared label value
    lab5 = tmp_path / "labelsTr" / "phantom_0005.nii.gz"
    img = nib.load(str(lab5))
    data = np.asanyarray(img.dataobj).copy()
    data[0, 0, 0] = 9
    nib.save(nib.Nifti1Image(data, img.affine), str(lab5))
    # 3. a missing label file
    (tmp_path / "labelsTr" / "phantom_0006.nii.gz").unlink()
    idx = check_dataset(tmp_path)
    text = "\n".join(idx.problems)
    assert len(idx.problems) == 3, text
    assert "phantom_0004.nii.gz" in text and "shifted by" in text
    assert "phantom_0005.nii.gz" in text and "[9]" in text
    assert "phantom_0006_0000.nii.gz" in text and "no label" in text
    r = subprocess.run([sys.executable, "-m", "medseg.cli", "check-dataset", str(tmp_path)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 1 and r.stderr.count("problem:") == 3 and "Traceback" not in r.stderr
    with pytest.raises(MedsegError, match="no label"):
        find_cases(tmp_path)


def test_json_naming_missing_files_and_empty(tmp_path):
    _msd_task(tmp_path)
    (tmp_path / "labelsTr" / "spleen_3.nii.gz").unlink()
    assert any("spleen_3.nii.gz: named in dataset.json but missing" in p for p in index_dataset(tmp_path).problems)
    empty = tmp_path / "empty"
    (empty / "imagesTr").mkdir(parents=True)
    (empty / "labelsTr").mkdir()
    (empty / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "x": 1}}))
    assert any("empty" in p for p in index_dataset(empty).problems)


# ---------------------------------------------------------------------------------------------- add_case


def _scan_file(tmp_path, seed, name, order=(0, 1, 2)):
    """A phantom written as ``name`` (its axes stored in ``order``), read back as the widget would."""
    from medseg.io import load_scan, save_image

    ph = make_phantom(seed, shape=SHAPE, spacing=SPACING)
    scan = ph.as_scan()
    if order != (0, 1, 2):
        affine = scan.affine.copy()
        affine[:3, :3] = scan.affine[:3, list(order)]
        scan = type(scan)(np.ascontiguousarray(scan.array.transpose(order)), affine, scan.source, "CT")
        labels = np.ascontiguousarray(ph.labels.transpose(order))
    else:
        labels = ph.labels
    save_image(scan, tmp_path / name)
    return load_scan(tmp_path / name), labels


def test_adding_the_same_scan_again_updates_its_case(tmp_path):
    from medseg.curation import add_case
    from medseg.io import load_scan
    from medseg.phantom import LABELS

    root = tmp_path / "ds"
    scan, labels = _scan_file(tmp_path, 3, "patient.nii.gz")
    first = add_case(root, scan, labels, LABELS)
    assert (first.name, first.updated) == ("patient", False)
    corrected = labels.copy()
    corrected[labels == 1] = 0  # the reviewer removed the liver
    again = add_case(root, load_scan(tmp_path / "patient.nii.gz"), corrected, LABELS)
    assert (again.name, again.updated, again.label) == ("patient", True, first.label)
    cases, meta = find_cases(root)
    assert [c.name for c in cases] == ["patient"] and meta["numTraining"] == 1
    assert np.array_equal(load_scan(first.label).array, corrected)  # the label file was replaced
    assert check_dataset(root).problems == []
    assert not [p for p in root.rglob(".*")]  # no temporary files left


def test_a_different_scan_with_a_taken_name_gets_a_suffix_and_updates_there(tmp_path):
    from medseg.curation import add_case
    from medseg.phantom import LABELS

    root = tmp_path / "ds"
    a, la = _scan_file(tmp_path / "a", 3, "patient.nii.gz")
    b, lb = _scan_file(tmp_path / "b", 4, "patient.nii.gz")  # same name and grid, other voxels
    assert add_case(root, a, la, LABELS).name == "patient"
    second = add_case(root, b, lb, LABELS)
    assert (second.name, second.updated) == ("patient_2", False)
    third = add_case(root, b, lb, LABELS)  # the numbered variant is recognised as the same scan
    assert (third.name, third.updated) == ("patient_2", True)
    assert [c.name for c in find_cases(root)[0]] == ["patient", "patient_2"]
    # the same scan under another name is a new case (only same-named cases are compared)
    assert add_case(root, a, la, LABELS, case="renamed").updated is False


def test_update_writes_the_labels_in_the_stored_images_axis_order(tmp_path):
    from medseg.curation import add_case
    from medseg.io import load_scan
    from medseg.phantom import LABELS

    root = tmp_path / "ds"
    stored, lab_stored = _scan_file(tmp_path / "a", 5, "p.nii.gz", order=(2, 0, 1))
    add_case(root, stored, lab_stored, LABELS)
    scan, labels = _scan_file(tmp_path / "b", 5, "p.nii.gz")  # the same grid, stored in the usual order
    case = add_case(root, scan, labels, LABELS)
    assert case.updated and case.name == "p"
    written = load_scan(case.label)
    assert written.shape == stored.shape and np.array_equal(written.array, lab_stored)
    assert check_dataset(root).problems == []
