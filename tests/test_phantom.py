"""Tests for medseg.phantom: determinism, anatomy, HU values and the NIfTI/DICOM writers."""

from __future__ import annotations

import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from scipy import ndimage

from medseg.phantom import (
    LABELS,
    Phantom,
    make_dataset,
    make_phantom,
    write_dicom_series,
    write_nifti,
)

SMALL = {"shape": (96, 96, 40), "spacing": (4.0, 4.0, 5.5)}


@pytest.fixture(scope="module")
def small() -> Phantom:
    return make_phantom(7, **SMALL)


@pytest.fixture(scope="module")
def default() -> Phantom:
    return make_phantom(3)


def world(phantom: Phantom, mask: np.ndarray) -> np.ndarray:
    """RAS mm coordinates (n, 3) of the voxels in ``mask``."""
    ijk = np.argwhere(mask)
    return ijk @ phantom.affine[:3, :3].T + phantom.affine[:3, 3]


def centroid(phantom: Phantom, label: str) -> np.ndarray:
    return world(phantom, phantom.labels == LABELS[label]).mean(axis=0)


def test_same_seed_gives_identical_phantoms(small: Phantom) -> None:
    again = make_phantom(7, **SMALL)
    assert again.seed == small.seed == 7
    assert np.array_equal(again.image, small.image)
    assert np.array_equal(again.labels, small.labels)
    assert np.array_equal(again.affine, small.affine)


def test_different_seeds_differ(small: Phantom) -> None:
    other = make_phantom(8, **SMALL)
    assert not np.array_equal(other.labels, small.labels)
    assert not np.array_equal(other.affine[:3, 3], small.affine[:3, 3])
    a, b = make_phantom(1), make_phantom(2)
    assert a.spacing != b.spacing or not np.array_equal(a.affine[:3, 3], b.affine[:3, 3])


def test_types_shapes_and_affine(small: Phantom) -> None:
    assert small.image.dtype == np.int16 and small.labels.dtype == np.uint8
    assert small.image.shape == small.labels.shape == SMALL["shape"]
    assert small.affine.shape == (4, 4) and small.affine.dtype == np.float64
    assert small.spacing == SMALL["spacing"]
    sx, sy, sz = SMALL["spacing"]
    assert np.array_equal(small.affine[:3, :3], np.diag([-sx, -sy, sz]))
    assert np.array_equal(small.affine[3], [0, 0, 0, 1])
    # Roughly centred on the world origin (a seeded offset of a few cm).
    centre = small.affine @ np.array([*(np.array(SMALL["shape"]) - 1) / 2.0, 1.0])
    assert np.all(np.abs(centre[:3]) < 50.0)
    assert set(np.unique(small.labels)) <= set(LABELS.values())
    assert small.image.min() >= -1024 and small.image.max() <= 3071


@pytest.mark.parametrize("seed", [0, 11, 12])
def test_every_label_present(seed: int) -> None:
    phantom = make_phantom(seed, **SMALL)
    assert set(np.unique(phantom.labels)) == set(LABELS.values())


def test_default_grid(default: Phantom) -> None:
    sx, sy, sz = default.spacing
    nx, ny, nz = default.image.shape
    assert sx == sy and 1.2 <= sx <= 1.8 and 2.5 <= sz <= 5.0
    assert nx % 2 == 0 and ny % 2 == 0
    assert abs(nx * sx - 380.0) <= 2 * sx and abs(ny * sy - 380.0) <= 2 * sy
    assert 200.0 - sz <= nz * sz <= 240.0 + sz
    assert set(np.unique(default.labels)) == set(LABELS.values())
    # Organs are inside the field of view: no organ voxels on the first/last slice.
    assert not default.labels[:, :, [0, -1]].any()


def test_shape_only_and_spacing_only() -> None:
    by_shape = make_phantom(5, shape=(64, 48, 20))
    assert by_shape.image.shape == (64, 48, 20)
    assert by_shape.spacing == pytest.approx((380 / 64, 380 / 48, 220 / 20), abs=1e-5)
    by_spacing = make_phantom(5, spacing=(5.0, 5.0, 8.0))
    assert by_spacing.spacing == (5.0, 5.0, 8.0)
    nx, ny, nz = by_spacing.image.shape
    assert nx == ny == 76 and 200 <= nz * 8.0 <= 248


def test_anatomy_is_defined_in_world_mm() -> None:
    coarse = make_phantom(4, shape=(64, 64, 30), spacing=(6.0, 6.0, 7.5))
    fine = make_phantom(4, **SMALL)
    for label in ("liver", "spleen", "kidney_right", "kidney_left"):
        assert np.allclose(centroid(coarse, label), centroid(fine, label), atol=4.0), label
        vol = [(p.labels == LABELS[label]).sum() * np.prod(p.spacing) for p in (coarse, fine)]
        assert vol[0] == pytest.approx(vol[1], rel=0.1), label


def test_anatomical_sides(default: Phantom, small: Phantom) -> None:
    for p in (default, small):
        bone = world(p, (p.image > 300) & (p.labels == 0))
        body_x = world(p, p.image > -500)[:, 0].mean()
        spine_x = bone[np.abs(bone[:, 0] - body_x) < 40.0, 0].mean()
        liver, spleen = centroid(p, "liver"), centroid(p, "spleen")
        right, left = centroid(p, "kidney_right"), centroid(p, "kidney_left")
        # RAS: +x is the patient's right; array axis 0 runs towards the patient's left.
        assert liver[0] > spine_x + 20 and right[0] > spine_x + 20
        assert spleen[0] < spine_x - 20 and left[0] < spine_x - 20
        i_liver = np.argwhere(p.labels == LABELS["liver"])[:, 0].mean()
        assert i_liver < np.argwhere(p.labels == LABELS["spleen"])[:, 0].mean()
        # Kidneys posterior to the liver; the right kidney lower than the left.
        assert right[1] < liver[1] and left[1] < liver[1]
        assert right[2] < left[2]
        # Liver and spleen in the upper part of the volume, above the kidneys.
        assert liver[2] > right[2] and spleen[2] > left[2]


@pytest.mark.parametrize("seed", [7, 3])
def test_tumour_is_surrounded_by_liver(seed: int, small: Phantom, default: Phantom) -> None:
    p = small if seed == 7 else default
    tumour = p.labels == LABELS["liver_tumour"]
    assert tumour.any()
    grown = ndimage.binary_dilation(tumour, structure=np.ones((3, 3, 3), bool))
    assert np.isin(p.labels[grown], [LABELS["liver"], LABELS["liver_tumour"]]).all()
    diameter = 2.0 * (3.0 * tumour.sum() * np.prod(p.spacing) / (4.0 * np.pi)) ** (1 / 3)
    assert 12.0 <= diameter <= 45.0


def test_organs_are_single_components(default: Phantom) -> None:
    for label in ("spleen", "kidney_right", "kidney_left"):
        assert ndimage.label(default.labels == LABELS[label])[1] == 1, label
    liver = np.isin(default.labels, [LABELS["liver"], LABELS["liver_tumour"]])
    assert ndimage.label(liver)[1] == 1


def test_hounsfield_units(default: Phantom) -> None:
    p = default

    def mean(label: str) -> float:
        return float(p.image[p.labels == LABELS[label]].mean())

    assert 80 <= mean("liver") <= 130
    assert 100 <= mean("spleen") <= 140
    assert mean("kidney_right") > 120 and mean("kidney_left") > 120
    assert 25 <= mean("liver_tumour") <= 75 and mean("liver_tumour") < mean("liver") - 30
    assert abs(float(p.image[:8, :8, :].mean()) + 1000) < 10  # air in the corners
    body = p.image > -500
    assert (p.image[body & (p.labels == 0)] < -50).sum() > 1000  # fat
    assert (p.image[p.labels == 0] > 300).sum() > 100  # bone
    noise = p.image[:8, :8, :].astype(float).std()
    assert 8 <= noise <= 16


def test_write_nifti_round_trip(small: Phantom, tmp_path: Path) -> None:
    write_nifti(small, tmp_path / "img.nii.gz", tmp_path / "sub" / "lab.nii.gz")
    img, lab = nib.load(tmp_path / "img.nii.gz"), nib.load(tmp_path / "sub" / "lab.nii.gz")
    assert img.get_data_dtype() == np.int16 and lab.get_data_dtype() == np.uint8
    assert np.array_equal(np.asanyarray(img.dataobj), small.image)
    assert np.array_equal(np.asanyarray(lab.dataobj), small.labels)
    for loaded in (img, lab):
        assert np.allclose(loaded.affine, small.affine, atol=1e-4)
        sform, scode = loaded.header.get_sform(coded=True)
        qform, qcode = loaded.header.get_qform(coded=True)
        assert int(scode) == 1 and int(qcode) == 1
        assert np.allclose(sform, small.affine, atol=1e-4)
        assert np.allclose(qform, small.affine, atol=1e-4)
    write_nifti(small, tmp_path / "only.nii")
    assert np.array_equal(np.asanyarray(nib.load(tmp_path / "only.nii").dataobj), small.image)


def test_write_dicom_series(small: Phantom, tmp_path: Path) -> None:
    sitk = pytest.importorskip("SimpleITK")
    nz = small.image.shape[2]
    paths = write_dicom_series(small, tmp_path / "dcm")
    assert len(paths) == nz == len(list((tmp_path / "dcm").iterdir()))
    assert [p.name for p in paths] != sorted(p.name for p in paths)

    datasets = [pydicom.dcmread(p) for p in paths]
    uids = {(d.StudyInstanceUID, d.SeriesInstanceUID, d.FrameOfReferenceUID) for d in datasets}
    assert len(uids) == 1 and len({d.SOPInstanceUID for d in datasets}) == nz
    sx, sy, sz = small.spacing
    ox, oy, oz = small.affine[:3, 3]
    for k, d in enumerate(datasets):
        for uid in (d.SOPInstanceUID, d.StudyInstanceUID, d.SeriesInstanceUID):
            assert pydicom.uid.UID(uid).is_valid
        assert pydicom.uid.UID(d.FrameOfReferenceUID).is_valid
        assert d.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
        assert d.SOPClassUID == d.file_meta.MediaStorageSOPClassUID == pydicom.uid.CTImageStorage
        assert d.file_meta.MediaStorageSOPInstanceUID == d.SOPInstanceUID
        assert d.Modality == "CT" and d.Manufacturer == "medseg phantom"
        assert d.PatientID == "PHANTOM"
        assert d.InstanceNumber == k + 1
        assert (d.Rows, d.Columns) == (small.image.shape[1], small.image.shape[0])
        assert np.allclose([float(v) for v in d.PixelSpacing], [sy, sx])
        assert np.allclose([float(v) for v in d.ImagePositionPatient], [-ox, -oy, oz + k * sz])
        assert [float(v) for v in d.ImageOrientationPatient] == [1, 0, 0, 0, 1, 0]
        hu = d.pixel_array.astype(np.int32) * int(d.RescaleSlope) + int(d.RescaleIntercept)
        assert np.array_equal(hu, small.image[:, :, k].T)

    # Same phantom, same UIDs (so the same file names).
    again = write_dicom_series(small, tmp_path / "again")
    assert [p.name for p in again] == [p.name for p in paths]
    custom = write_dicom_series(small, tmp_path / "custom", series_uid="1.2.3.4", patient_id="P1")
    assert pydicom.dcmread(custom[0]).SeriesInstanceUID == "1.2.3.4"

    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(tmp_path / "dcm")))
    image = reader.Execute()
    arr = sitk.GetArrayFromImage(image).transpose(2, 1, 0)
    assert arr.shape == small.image.shape
    assert np.array_equal(arr, small.image)
    lps = np.eye(4)
    lps[:3, :3] = np.array(image.GetDirection()).reshape(3, 3) @ np.diag(image.GetSpacing())
    lps[:3, 3] = image.GetOrigin()
    ras = np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps
    assert np.allclose(ras, small.affine, atol=1e-4)


def test_make_dataset(tmp_path: Path) -> None:
    out = make_dataset(tmp_path / "ds", [2, 5], shape=(48, 48, 20), spacing=(8.0, 8.0, 11.0))
    assert out == tmp_path / "ds"
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["channel_names"] == {"0": "CT"}
    assert meta["labels"] == LABELS
    assert meta["numTraining"] == 2 and meta["file_ending"] == ".nii.gz"
    assert meta["name"] and meta["description"]
    for seed in (2, 5):
        img = nib.load(out / "imagesTr" / f"phantom_{seed:04d}_0000.nii.gz")
        lab = nib.load(out / "labelsTr" / f"phantom_{seed:04d}.nii.gz")
        expected = make_phantom(seed, shape=(48, 48, 20), spacing=(8.0, 8.0, 11.0))
        assert np.array_equal(np.asanyarray(img.dataobj), expected.image)
        assert np.array_equal(np.asanyarray(lab.dataobj), expected.labels)
    assert sorted(p.name for p in (out / "imagesTr").iterdir()) == [
        "phantom_0002_0000.nii.gz",
        "phantom_0005_0000.nii.gz",
    ]


def test_cases_rendered_in_parallel_are_the_same_files(tmp_path: Path) -> None:
    """workers=2 (spawned processes) writes what one process writes: each case depends on its seed."""
    small = {"shape": (40, 40, 12), "spacing": (9.0, 9.0, 14.0), "varied": True}
    one = make_dataset(tmp_path / "one", [3, 4, 5], workers=1, **small)
    two = make_dataset(tmp_path / "two", [3, 4, 5], workers=2, **small)
    assert (one / "dataset.json").read_text() == (two / "dataset.json").read_text()
    for sub in ("imagesTr", "labelsTr"):
        names = sorted(p.name for p in (one / sub).iterdir())
        assert names == sorted(p.name for p in (two / sub).iterdir()) and len(names) == 3
        for name in names:
            a, b = nib.load(one / sub / name), nib.load(two / sub / name)
            assert np.array_equal(np.asanyarray(a.dataobj), np.asanyarray(b.dataobj))
            assert np.array_equal(a.affine, b.affine) and a.get_data_dtype() == b.get_data_dtype()


def test_a_case_failing_in_a_worker_raises_its_error_and_writes_no_dataset_json(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    monkeypatch.delenv("OPENBLAS_NUM_THREADS", raising=False)
    with pytest.raises(ValueError, match="shape"):
        make_dataset(tmp_path / "ds", [3, 4, 5], shape=(40, 0, 12), workers=2)
    assert not (tmp_path / "ds" / "dataset.json").exists()
    # the workers' one-thread settings do not stay in this process's environment
    assert os.environ["OMP_NUM_THREADS"] == "3" and "OPENBLAS_NUM_THREADS" not in os.environ


def test_add_mixes_styles_in_one_dataset_and_refuses_what_it_cannot_add(tmp_path: Path) -> None:
    from medseg.errors import MedsegError

    small = {"shape": (40, 40, 12), "spacing": (9.0, 9.0, 14.0)}
    out = make_dataset(tmp_path / "ds", [2, 3], varied=True, phase="arterial", **small)
    make_dataset(out, [7], add=True, **small)  # a default-style (portal-venous) case joins them
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["numTraining"] == 3
    assert {k: v["phase"] for k, v in meta["phantom_styles"].items()} == {
        "phantom_0002": "arterial", "phantom_0003": "arterial", "phantom_0007": "portal-venous"}
    assert meta["phase"] == "arterial, portal-venous" and "arterial, portal-venous" in meta["description"]
    assert len(list((out / "labelsTr").iterdir())) == 3
    expected = make_phantom(7, **small)
    assert np.array_equal(np.asanyarray(nib.load(out / "labelsTr" / "phantom_0007.nii.gz").dataobj), expected.labels)
    before = (out / "dataset.json").read_text()
    with pytest.raises(MedsegError, match="already holds case phantom_0003"):
        make_dataset(out, [8, 3], add=True, **small)
    assert not (out / "labelsTr" / "phantom_0008.nii.gz").exists()  # checked before anything is written
    with pytest.raises(MedsegError, match="choose one"):
        make_dataset(out, [9], add=True, overwrite=True, **small)
    assert (out / "dataset.json").read_text() == before
    with pytest.raises(MedsegError, match="no dataset to add to"):
        make_dataset(tmp_path / "empty", [9], add=True, **small)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "dataset.json").write_text(json.dumps({"labels": {"background": 0}}))
    with pytest.raises(MedsegError, match="not a phantom dataset"):
        make_dataset(tmp_path / "other", [9], add=True, **small)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"seed": -1},
        {"seed": 1.5},
        {"seed": 0, "shape": (10, 10)},
        {"seed": 0, "shape": (10, 0, 10)},
        {"seed": 0, "spacing": (1.0, -1.0, 1.0)},
    ],
)
def test_bad_arguments(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        make_phantom(**kwargs)
