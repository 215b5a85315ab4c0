"""Domain check (medseg.domain) and the model card's training_data: scans outside what the model
was trained on (modality, intensities, field of view, spacing) are warned about, one line each."""

import dataclasses
import json
import subprocess
import sys

import numpy as np
import pytest
from conftest import SAMPLE

from medseg.bundle import ModelCard, default_bundle_path, load_bundle
from medseg.data import find_cases
from medseg.domain import canonical_extent, describe_training_data, domain_warnings, training_data_of
from medseg.errors import MedsegError
from medseg.io import load_scan
from medseg.phantom import make_dataset
from medseg.resources import SAMPLE_DICOM, SAMPLE_IMAGE
from medseg.scan import Scan


@pytest.fixture(scope="module")
def card() -> ModelCard:
    path = default_bundle_path() / "model.json"
    return ModelCard.from_dict(json.loads(path.read_text()), path)


@pytest.fixture(scope="module")
def sample() -> Scan:
    return load_scan(SAMPLE / SAMPLE_IMAGE)  # 176 x 176 x 48 at 2.1 x 2.1 x 4.5 mm, NIfTI: modality unknown


def _like(scan: Scan, array=None, spacing=None, name="scan.nii.gz", modality=None) -> Scan:
    """``scan`` with another array, voxel size or modality (the same direction and origin)."""
    affine = scan.affine.copy()
    if spacing is not None:
        affine[:3, :3] = scan.direction * np.asarray(spacing, dtype=float)
    array = scan.array if array is None else array
    return Scan(array, affine, source=scan.source.parent / name, modality=modality)


def _mr_like(array: np.ndarray) -> np.ndarray:
    """MR-like magnitudes: positive, air at 0, tissue in the hundreds to a few thousand."""
    return ((array.astype(np.float32) + 1024.0) * 1.7).astype(np.int16)


def test_sample_ct_gives_no_warning(card, sample):
    assert domain_warnings(sample, card) == []
    dicom = load_scan(SAMPLE / SAMPLE_DICOM)
    assert dicom.modality == "CT" and domain_warnings(dicom, card) == []


def test_mr_like_nifti_warns_about_modality(card, sample):
    mr = _like(sample, _mr_like(sample.array), name="mr_like.nii.gz")
    warnings = domain_warnings(mr, card)
    modality = [w for w in warnings if "not look like CT" in w]
    assert len(modality) == 1 and "MR" in modality[0] and "mr_like.nii.gz" in modality[0], warnings
    assert all("\n" not in w and w.startswith(str(mr.source)) for w in warnings)
    # the same values labelled CT by their source: no guessing, the intensity check still warns
    labelled = domain_warnings(_like(sample, _mr_like(sample.array), modality="CT"), card)
    assert not any("not look like CT" in w for w in labelled) and any("intensities" in w for w in labelled)


def test_dicom_mr_series_warns(card, sample, tmp_path):
    from medseg.dicom_export import write_dicom_series

    mr = _like(sample, _mr_like(sample.array), modality="MR")
    write_dicom_series(mr, tmp_path / "mr", uid_key="domain-test")
    loaded = load_scan(tmp_path / "mr")
    assert loaded.modality == "MR"
    warnings = domain_warnings(loaded, card)
    assert any(w.startswith(f"{tmp_path / 'mr'}: the scan is MR") and "trained on CT" in w for w in warnings), warnings


def test_a_real_mr_warns(card, shared_data):
    scan = load_scan(shared_data / "mr_3mm_lps.nii.gz")
    assert scan.modality is None
    warnings = domain_warnings(scan, card)
    assert any("mr_3mm_lps.nii.gz" in w and "not look like CT" in w and "MR" in w for w in warnings), warnings


def test_a_real_ct_nifti_passes_the_modality_check(card, shared_data):
    scan = load_scan(shared_data / "ct_abdomen_3mm.nii.gz")  # 366 x 303 x 336 mm at 3 mm, HU
    assert domain_warnings(scan, card) == []


def test_thin_slab_and_whole_body_warn_about_field_of_view(card, sample):
    slab = _like(sample, sample.array[:, :, :7], name="slab.nii.gz")  # 7 x 4.5 = 31.5 mm
    [warning] = domain_warnings(slab, card)
    assert warning.startswith(f"{slab.source}: field of view 370 x 370 x 32 mm")
    lo, hi = card.training_data["field_of_view_mm"]["min"][2], card.training_data["field_of_view_mm"]["max"][2]
    assert "far smaller along inferior-superior" in warning and f"{lo:.0f}-{hi:.0f}" in warning
    body = _like(sample, np.concatenate([sample.array] * 6, axis=2), name="body.nii.gz")  # 1296 mm
    [warning] = domain_warnings(body, card)
    assert "far larger along inferior-superior" in warning and "1296" in warning
    head = _like(sample, sample.array[40:140, 40:140], name="head.nii.gz")  # 210 x 210 mm in-plane
    [warning] = domain_warnings(head, card)
    assert "far smaller along right-left, anterior-posterior than" in warning
    wide = _like(sample, sample.array, spacing=(6.0, 6.0, 4.5), name="wide.nii.gz")  # 1056 mm in-plane
    assert "far larger along right-left, anterior-posterior" in domain_warnings(wide, card)[0]


def test_far_outside_spacing_warns(card, sample):
    coarse = _like(sample, sample.array[::6, ::6], spacing=(12.6, 12.6, 4.5), name="coarse.nii.gz")
    [warning] = domain_warnings(coarse, card)  # 378 mm field of view: only the spacing is off
    assert "voxel spacing 13 x 13 x 4.5 mm" in warning and "far larger along right-left" in warning
    fine_z = _like(sample, sample.array, spacing=(2.1, 2.1, 0.5), name="thin.nii.gz")
    next_slice = dataclasses.replace(card, context_mm=None)  # context: the next slice, 0.5 mm away
    assert any("voxel spacing" in w and "far smaller along inferior-superior" in w
               for w in domain_warnings(fine_z, next_slice))
    # context slices 3 mm apart: every 6th of the 0.5 mm slices, as far apart as the trained 2.5-5 mm
    assert not any("voxel spacing" in w for w in domain_warnings(fine_z, dataclasses.replace(card, context_mm=3.0)))
    coarse_z = _like(sample, sample.array, spacing=(2.1, 2.1, 20.0), name="slabs.nii.gz")
    assert any("far larger along inferior-superior" in w for w in domain_warnings(coarse_z, dataclasses.replace(card, context_mm=3.0)))


def test_extent_is_measured_along_anatomical_axes():
    """A scan stored with its slice axis first (and flipped) measures its extents along R-L, A-P, I-S."""
    swapped = np.eye(4)
    swapped[:3, :3] = [[0, 0, -2.0], [0, 1.0, 0], [3.0, 0, 0]]  # axis 0 -> I-S 3 mm, 1 -> A-P 1 mm, 2 -> L-R 2 mm
    fov, spacing = canonical_extent(swapped, (10, 20, 30))
    np.testing.assert_allclose(fov, [60.0, 20.0, 30.0])
    np.testing.assert_allclose(spacing, [2.0, 1.0, 3.0])


def test_card_without_training_data(card, sample):
    bare = dataclasses.replace(card, training_data={})
    slab = _like(sample, sample.array[:, :, :7], name="slab.nii.gz")
    assert domain_warnings(slab, bare) == []  # nothing to compare the field of view with
    mr = _like(sample, _mr_like(sample.array), name="mr_like.nii.gz")
    assert any("not look like CT" in w for w in domain_warnings(mr, bare))
    text = describe_training_data(bare)
    lo, hi = card.intensity_range
    assert "does not say what it was trained on" in text and f"{lo:.0f} to {hi:.0f} HU" in text
    # an older card file without the field still loads
    data = json.loads((default_bundle_path() / "model.json").read_text())
    del data["training_data"]
    assert ModelCard.from_dict(data).training_data == {}


def test_mr_card_warns_about_ct_values(card, sample):
    mr_card = ModelCard(name="mr-model", labels={"background": 0, "liver": 1}, modality="MR",
                        preprocessing={"kind": "mr_percentiles"})
    assert any("look like CT" in w and "trained on MR" in w for w in domain_warnings(sample, mr_card))
    assert domain_warnings(_like(sample, _mr_like(sample.array)), mr_card) == []


@pytest.mark.parametrize(
    "change, field",
    [
        ({"field_of_view_mm": {"min": [400, 380, 200], "max": [380, 380, 240]}}, "training_data.field_of_view_mm"),
        ({"spacing_mm": {"min": [0, 1.2, 2.5], "max": [1.8, 1.8, 5]}}, "training_data.spacing_mm"),
        ({"spacing_mm": [1.2, 1.8]}, "training_data.spacing_mm"),
        ({"cases": 0}, "training_data.cases"),
        ({"cases": "72"}, "training_data.cases"),
        ({"modality": "MR"}, "training_data.modality"),
        ({"body_region": ""}, "training_data.body_region"),
    ],
)
def test_invalid_training_data_is_a_one_line_card_error(change, field):
    data = json.loads((default_bundle_path() / "model.json").read_text())
    data["training_data"].update(change)
    with pytest.raises(MedsegError) as err:
        ModelCard.from_dict(data, "x/model.json")
    text = str(err.value)
    assert "\n" not in text and text.startswith("x/model.json: invalid model card") and f"'{field}'" in text, text


def test_training_data_not_an_object_is_refused():
    data = json.loads((default_bundle_path() / "model.json").read_text())
    data["training_data"] = "phantoms"
    with pytest.raises(MedsegError, match=r"x/model.json: .*training_data"):
        ModelCard.from_dict(data, "x/model.json")


def test_bundled_card_says_what_it_was_trained_on(card):
    card.validate()
    data = card.training_data
    assert data["modality"] == "CT" and data["body_region"] == "abdomen"
    assert data["phase"] == "non-contrast, arterial, portal-venous, delayed"
    assert sorted(data["phantom_styles"]["phase"]) == sorted(["non-contrast", "arterial", "portal-venous", "delayed"])
    assert data["cases"] == len(card.training["train_cases"]) == 184
    # an average: each source's validation cases were training cases of another source
    assert data["validation_cases"] == len(card.training["val_cases"]) == 0
    styles = data["phantom_styles"]  # every knob of the generator, as the training cases had it
    assert sorted(styles["field"]) == ["abdomen", "abdomen-pelvis", "chest-abdomen"]
    assert styles["thickness_mm"][0] < 1.0 and styles["thickness_mm"][1] > 4.5
    assert 0 < styles["perirenal_fat"] < 184 and 0 < styles["bowel_gas"] < 184 and 0 < styles["table"] < 184
    assert card.context_mm == 3.0  # context slices ~3 mm apart, thin and thick scans alike
    text = describe_training_data(card)
    assert "Trained on 184 cases" in text and "CT" in text and "abdomen" in text
    fov = data["field_of_view_mm"]
    assert f"{fov['min'][2]:.0f}-{fov['max'][2]:.0f} mm" in text and f"{card.intensity_range[1]:.0f} HU" in text
    assert "non-contrast, arterial, portal-venous, delayed" in text


def test_bundled_ranges_are_those_of_the_training_phantoms(card):
    """The card's field of view and spacing ranges are the phantoms' seeded grids (computed without rendering)."""
    from medseg import phantom
    from medseg.phantom_domain import FIELDS, seeded_style

    extents, spacings = [], []
    for name in card.training["train_cases"]:
        seed = int(name.split("_")[1])
        style = seeded_style(seed)
        geo, _, _ = np.random.SeedSequence(seed).spawn(3)
        fov = 500.0 if style.arms == "beside" else 380.0
        shape, spacing, _, _ = phantom._grid(np.random.default_rng(geo), None, None, fov, FIELDS[style.field],
                                             style.inplane_mm)
        extents.append(np.multiply(shape, spacing))
        spacings.append(spacing)
    data = card.training_data
    np.testing.assert_allclose(data["field_of_view_mm"]["min"], np.min(extents, 0), atol=0.01)
    np.testing.assert_allclose(data["field_of_view_mm"]["max"], np.max(extents, 0), atol=0.01)
    np.testing.assert_allclose(data["spacing_mm"]["min"], np.min(spacings, 0), atol=0.001)
    np.testing.assert_allclose(data["spacing_mm"]["max"], np.max(spacings, 0), atol=0.001)


def test_training_data_of_a_dataset(tmp_path):
    ds = make_dataset(tmp_path / "ds", [1, 2, 3], shape=(32, 32, 8), spacing=(10.0, 10.0, 20.0))
    cases, meta = find_cases(ds)
    data = training_data_of(cases[:2], cases[2:], "CT", meta, ds.name)
    assert data["cases"] == 2 and data["validation_cases"] == 1 and data["modality"] == "CT"
    assert data["dataset"] == "ds" and data["source"].startswith("Synthetic portal-venous")
    assert data["field_of_view_mm"] == {"min": [320.0, 320.0, 160.0], "max": [320.0, 320.0, 160.0]}
    assert data["spacing_mm"] == {"min": [10.0, 10.0, 20.0], "max": [10.0, 10.0, 20.0]}
    card = ModelCard(name="m", labels={"background": 0, "liver": 1}, modality="CT", training_data=data,
                     preprocessing={"kind": "ct_window", "window": [-200.0, 300.0]})
    card.validate()
    assert "Trained on 2 cases (+1 for validation) of Synthetic" in describe_training_data(card)


@pytest.mark.slow
def test_training_writes_training_data(tmp_path):
    ds = make_dataset(tmp_path / "ds", [1, 2, 3], shape=(32, 32, 8), spacing=(10.0, 10.0, 20.0))
    r = subprocess.run(
        [sys.executable, "-m", "medseg.cli", "train", str(ds), "-o", str(tmp_path / "run"), "--epochs", "1",
         "--steps-per-epoch", "1", "--batch-size", "2", "--width", "4", "--crop", "32", "--spacing", "10",
         "--val-cases", "1", "--device", "cpu", "--no-hd95"],
        capture_output=True, text=True, timeout=300,
    )
    assert r.returncode == 0, r.stderr
    data = load_bundle(tmp_path / "run" / "best").card.training_data
    assert data["cases"] == 2 and data["validation_cases"] == 1 and data["dataset"] == "ds"
    assert data["field_of_view_mm"]["max"] == [320.0, 320.0, 160.0]


def test_large_scan_is_checked_cheaply(card):
    """A 512 x 512 x 300 thin-slice CT: the check reads samples and the affine, in well under a second
    or two; 0.8 mm slices are 3x thinner than any the model was trained on, which matters to a model
    whose context is the next slice (the bundled one takes every 4th: 3.2 mm, as trained)."""
    import time

    rng = np.random.default_rng(0)
    array = np.full((512, 512, 300), -1000, dtype=np.int16)
    array[100:412, 100:412] = rng.integers(-100, 200, size=(312, 312, 1), dtype=np.int16)
    affine = np.diag([-0.75, -0.75, 0.8, 1.0])  # 384 x 384 x 240 mm
    scan = Scan(array, affine, source=SAMPLE / "big.nii.gz")
    start = time.perf_counter()
    [warning] = domain_warnings(scan, dataclasses.replace(card, context_mm=None))
    assert time.perf_counter() - start < 5.0
    assert domain_warnings(scan, card) == []
    assert "voxel spacing 0.75 x 0.75 x 0.8 mm" in warning and "far smaller along inferior-superior than" in warning
