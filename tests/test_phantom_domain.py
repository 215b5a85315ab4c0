"""The phantom's clinical-domain knobs (medseg.phantom_domain): contrast phase, noise, slice
thickness, arms, table and liver veins. Each knob is checked on rendered phantoms against what
it claims, and the default style is the phantom medseg always made."""

from __future__ import annotations

import json

import numpy as np
import pytest

from medseg.phantom import LABELS, make_dataset, make_phantom
from medseg.phantom_domain import PHASES, Style, seeded_style, style_hu

SHAPE = (112, 112, 28)
LIVER, SPLEEN, KID_R, KID_L = LABELS["liver"], LABELS["spleen"], LABELS["kidney_right"], LABELS["kidney_left"]


def _median(ph, label: int) -> float:
    return float(np.median(ph.image[ph.labels == label]))


def test_the_default_style_is_the_packaged_sample_voxel_for_voxel():
    import nibabel as nib

    from medseg.resources import SAMPLE_IMAGE, SAMPLE_LABELS, sample_path
    from medseg.sample import SAMPLE_SEED, SAMPLE_SHAPE, SAMPLE_SPACING

    ph = make_phantom(SAMPLE_SEED, shape=SAMPLE_SHAPE, spacing=SAMPLE_SPACING, style=Style())
    assert np.array_equal(ph.image, np.asanyarray(nib.load(sample_path(SAMPLE_IMAGE)).dataobj))
    assert np.array_equal(ph.labels, np.asanyarray(nib.load(sample_path(SAMPLE_LABELS)).dataobj))


def test_phases_follow_the_published_attenuation_order():
    by_phase = {p: make_phantom(21, shape=SHAPE, style=Style(phase=p)) for p in PHASES}
    nc, art, pv, dl = (by_phase[p] for p in PHASES)
    assert 45 <= _median(nc, LIVER) <= 70 and _median(nc, LIVER) > _median(nc, SPLEEN) + 3  # unenhanced liver above spleen
    assert _median(nc, KID_R) < 45  # no enhancement
    assert _median(pv, LIVER) > _median(nc, LIVER) + 30
    assert _median(art, KID_R) > _median(nc, KID_R) + 80 and _median(art, SPLEEN) > _median(art, LIVER) + 15
    assert _median(dl, LIVER) < _median(pv, LIVER)
    for ph in by_phase.values():  # the anatomy is the seed's whatever the phase
        assert np.array_equal(ph.labels, nc.labels)


@pytest.mark.parametrize("phase", PHASES)
def test_drawn_values_stay_in_their_phase(phase):
    base = {"liver": 105.0, "spleen": 120.0, "cortex": 180.0, "medulla": 160.0, "sinus": 25.0, "tumour": 50.0,
            "aorta": 170.0, "noise": 12.0, "tex": 4.0, "muscle": 50.0}
    for n in range(30):
        hu = style_hu(base, Style(phase=phase), np.random.default_rng(n))
        if phase == "non-contrast":
            assert 50 <= hu["liver"] <= 65 and 35 <= hu["aorta"] <= 50 and hu["medulla"] <= hu["cortex"]
        elif phase == "arterial":
            assert hu["aorta"] > 200 and hu["cortex"] - hu["medulla"] > 50
        elif phase == "delayed":
            assert abs(hu["cortex"] - hu["medulla"]) <= 10 and 75 <= hu["liver"] <= 100
        else:
            assert hu["liver"] == 105.0 and hu["portal"] > hu["liver"]  # the phantom's own portal-venous draw
        assert hu["muscle"] == 50.0 and hu["noise"] == 12.0


@pytest.mark.parametrize("phase", PHASES)
def test_the_tumour_stands_out_of_the_liver_in_every_phase(phase):
    base = {"liver": 105.0, "spleen": 120.0, "cortex": 180.0, "medulla": 160.0, "sinus": 25.0, "tumour": 50.0,
            "aorta": 170.0, "noise": 12.0, "tex": 4.0, "muscle": 50.0}
    signs = set()
    for n in range(60):
        hu = style_hu(base, Style(phase=phase), np.random.default_rng(n))
        assert abs(hu["tumour"] - hu["liver"]) >= 20.0, (n, hu["tumour"], hu["liver"])
        signs.add(hu["tumour"] > hu["liver"])
    # hyper-enhancing tumours (HCC) only in the arterial phase, hypo-attenuating ones in every phase
    assert signs == ({True, False} if phase == "arterial" else {False})


def test_noise_levels_order_the_noise():
    def liver_sd(level):
        ph = make_phantom(5, shape=SHAPE, style=Style(noise=level))
        return float(np.std(ph.image[ph.labels == LIVER]))

    low, standard, high = liver_sd("low"), liver_sd("standard"), liver_sd("high")
    assert low < standard < high and high > 1.3 * standard


def test_thick_slices_average_the_slab_and_keep_the_labels():
    point = make_phantom(8, shape=SHAPE, style=Style(phase="arterial"))
    thick = make_phantom(8, shape=SHAPE, style=Style(phase="arterial", thickness_mm=8.0))
    assert np.array_equal(point.labels, thick.labels)
    # voxels just above or below a bright (arterial) kidney take part of it in a thick slice
    kidney = np.isin(point.labels, [KID_R, KID_L])
    above = kidney[:, :, :-1] & (point.labels[:, :, 1:] == 0)
    below = kidney[:, :, 1:] & (point.labels[:, :, :-1] == 0)

    def edge_mean(img):
        return float(np.concatenate([img[:, :, 1:][above], img[:, :, :-1][below]]).mean())

    assert above.sum() + below.sum() > 50
    assert edge_mean(thick.image) > edge_mean(point.image) + 20


def test_arms_beside_the_body_widen_the_view_and_hold_bone_no_organ_label():
    beside = make_phantom(9, shape=SHAPE, style=Style(arms="beside", phase="delayed"))
    assert beside.spacing[0] > make_phantom(9, shape=SHAPE).spacing[0]  # a 500 mm field of view
    raised = make_phantom(9, shape=SHAPE, spacing=beside.spacing, style=Style(arms="raised", phase="delayed"))
    assert np.array_equal(raised.affine, beside.affine) and np.array_equal(raised.labels, beside.labels)
    arm = np.abs(beside.image.astype(int) - raised.image) > 100
    assert arm.sum() > 500 and (raised.image[arm] < -900).all()  # only air became arm
    columns = np.nonzero(arm.any(axis=(1, 2)))[0]
    body = np.nonzero((raised.image > -500).any(axis=(1, 2)))[0]
    assert columns.min() < body.min() and columns.max() > body.max()  # both arms, beside the body
    assert (beside.image[arm] > 700).any()  # humerus cortex


def test_table_lies_below_the_body_and_never_over_it():
    without = make_phantom(10, shape=SHAPE, style=Style(phase="non-contrast"))
    table = make_phantom(10, shape=SHAPE, style=Style(phase="non-contrast", table=True))
    changed = np.abs(table.image.astype(int) - without.image) > 100
    assert changed.any() and (without.image[changed] < -900).all()  # only air became table
    rows = np.nonzero(changed.any(axis=(0, 2)))[0]
    body_rows = np.nonzero((without.image > -500).any(axis=(0, 2)))[0]
    assert rows.min() > body_rows.mean()  # posterior (j grows towards posterior)


@pytest.mark.parametrize("phase,brighter", [("portal-venous", True), ("non-contrast", False)])
def test_liver_veins_are_liver_brighter_after_contrast_darker_before(phase, brighter):
    plain = make_phantom(12, shape=(160, 160, 40), style=Style(phase=phase, liver_vessels=False, table=True))
    veins = make_phantom(12, shape=(160, 160, 40), style=Style(phase=phase, liver_vessels=True, table=True))
    assert np.array_equal(plain.labels, veins.labels)  # veins inside the liver are liver
    changed = (veins.image != plain.image) & (plain.labels == LIVER)
    assert changed.sum() > 0.005 * (plain.labels == LIVER).sum()
    diff = float(np.median(veins.image[changed].astype(int) - plain.image[changed]))
    assert (diff > 20) if brighter else (diff < -5)


def test_seeded_styles_are_reproducible_and_span_the_domain():
    styles = [seeded_style(s) for s in range(60)]
    assert styles == [seeded_style(s) for s in range(60)]
    assert {s.phase for s in styles} == set(PHASES)
    assert {s.noise for s in styles} == {"low", "standard", "high"} and {s.arms for s in styles} == {"raised", "beside"}
    assert all(0.5 <= s.thickness_mm <= 5.0 for s in styles) and any(s.table for s in styles)


@pytest.mark.parametrize("kwargs", [{"phase": "venous"}, {"noise": "loud"}, {"arms": "up"}, {"thickness_mm": 0.0},
                                    {"thickness_mm": float("nan")}])
def test_bad_knobs_are_refused(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        Style(**kwargs)


def test_a_varied_dataset_records_each_case_style(tmp_path):
    from medseg.data import find_cases

    root = make_dataset(tmp_path / "ds", [1, 2, 3], shape=(48, 48, 8), varied=True)
    meta = json.loads((root / "dataset.json").read_text())
    assert meta["phantom_styles"] == {f"phantom_{s:04d}": seeded_style(s).as_dict() for s in (1, 2, 3)}
    cases, _ = find_cases(root)
    assert len(cases) == 3
    fixed = make_dataset(tmp_path / "nc", [1, 2], shape=(48, 48, 8), varied=True, phase="non-contrast")
    styles = json.loads((fixed / "dataset.json").read_text())["phantom_styles"]
    assert {s["phase"] for s in styles.values()} == {"non-contrast"}


def test_the_model_card_records_the_phantom_knobs_it_was_trained_on(tmp_path):
    from medseg.data import find_cases
    from medseg.domain import describe_training_data, training_data_of

    root = make_dataset(tmp_path / "ds", [1, 2, 3, 4], shape=(48, 48, 8), varied=True)
    cases, meta = find_cases(root)
    data = training_data_of(cases[:3], cases[3:], "CT", meta, "ds")
    knobs = data["phantom_styles"]
    trained = [seeded_style(s) for s in (1, 2, 3)]
    assert knobs["cases"] == 3 and knobs["phase"] == sorted({s.phase for s in trained})
    assert knobs["thickness_mm"] == [min(s.thickness_mm for s in trained), max(s.thickness_mm for s in trained)]
    assert knobs["table"] == sum(s.table for s in trained) and data["body_region"] == "abdomen"
    assert all(p in data["phase"] for p in knobs["phase"])

    from medseg.bundle import ModelCard

    card = ModelCard(name="m", labels=dict(LABELS), modality="CT", training_data=data)
    assert "abdomen" in describe_training_data(card) and "portal-venous" in describe_training_data(card)


def test_fields_of_view_add_lung_bases_above_and_a_pelvis_below_keeping_the_abdomen():
    spacing = (6.0, 6.0, 6.0)
    abdomen = make_phantom(13, spacing=spacing, style=Style(phase="delayed"))
    chest = make_phantom(13, spacing=spacing, style=Style(phase="delayed", field="chest-abdomen"))
    pelvis = make_phantom(13, spacing=spacing, style=Style(phase="delayed", field="abdomen-pelvis"))
    nz = abdomen.image.shape[2]
    assert chest.image.shape[2] > nz + 10 and pelvis.image.shape[2] > nz + 20
    # the same organs at the same world positions: labels are unchanged where the grids overlap

    def organ_centre(ph, label):
        ijk = np.argwhere(ph.labels == label).mean(axis=0)
        return (ph.affine @ np.append(ijk, 1.0))[:3]

    for label in (LIVER, SPLEEN, KID_R):
        np.testing.assert_allclose(organ_centre(chest, label), organ_centre(abdomen, label), atol=2.0)
        np.testing.assert_allclose(organ_centre(pelvis, label), organ_centre(abdomen, label), atol=2.0)
    top = chest.image[:, :, -5:]  # above the dome: air-filled lung inside the body, no organ label
    assert ((top > -900) & (top < -700)).mean() > 0.05 and not chest.labels[:, :, -5:].any()
    bottom = pelvis.image[:, :, :25]  # below the kidneys: pelvic bone, no organ label
    assert (bottom > 600).sum() > 30 and not pelvis.labels[:, :, :5].any()
    assert Style(field="abdomen-pelvis") != Style()
    with pytest.raises(ValueError, match="field"):
        Style(field="head")


def test_inplane_spacing_knob_sets_a_seeded_grid_only():
    fine = make_phantom(14, style=Style(phase="non-contrast", inplane_mm=3.0))
    assert fine.spacing[:2] == pytest.approx((3.0, 3.0)) and fine.image.shape[0] == fine.image.shape[1] == 126
    given = make_phantom(14, shape=(40, 40, 10), style=Style(phase="non-contrast", inplane_mm=3.0))
    assert given.image.shape == (40, 40, 10)  # a caller's grid wins
    with pytest.raises(ValueError, match="inplane_mm"):
        Style(inplane_mm=-1.0)


@pytest.mark.parametrize("text,phase", [
    ("CT ABDOMEN NC 5mm", "non-contrast"), ("Abd/Pelvis w/o contrast", "non-contrast"), ("NATIVE 3.0 B30f", "non-contrast"),
    ("Arterial Phase 1.0", "arterial"), ("PORTAL VENOUS 2mm", "portal-venous"), ("ABD PV 5.0", "portal-venous"),
    ("Delayed 5 min", "delayed"), ("non contrast venous", "non-contrast"), ("Body 1.0 CE", None),
    ("arterial and portal venous", None), ("", None), ("advanced", None),
])
def test_series_descriptions_name_their_phase(text, phase):
    from medseg.domain import described_phase

    assert described_phase(text) == phase


def test_the_domain_check_warns_for_a_phase_the_model_never_saw(tmp_path):
    from medseg.bundle import ModelCard
    from medseg.domain import domain_warnings, trained_phases
    from medseg.io import Scan

    ph = make_phantom(3, shape=(48, 48, 8))
    pv_only = ModelCard(name="pv", labels=dict(LABELS), modality="CT",
                        training_data={"phantom_styles": {"phase": ["portal-venous"]}})
    every = ModelCard(name="all", labels=dict(LABELS), modality="CT",
                      training_data={"phase": "non-contrast, arterial, portal-venous, delayed"})
    assert trained_phases(every) == list(PHASES) and trained_phases(ModelCard(name="x", labels=dict(LABELS), modality="CT")) == []

    def warnings(description, card):
        scan = Scan(ph.image, ph.affine, source=tmp_path / "ct", modality="CT", description=description)
        return [w for w in domain_warnings(scan, card) if "series description" in w]

    assert len(warnings("ABDOMEN NC 3mm", pv_only)) == 1 and "non-contrast" in warnings("ABDOMEN NC 3mm", pv_only)[0]
    assert warnings("ABDOMEN NC 3mm", every) == [] and warnings("PORTAL VENOUS", pv_only) == []
    assert warnings("Body 1.0", pv_only) == []


def test_perirenal_fat_surrounds_the_kidneys_and_fills_the_sinus():
    from scipy import ndimage

    plain = make_phantom(12, shape=SHAPE, style=Style(phase="non-contrast"))
    fatty = make_phantom(12, shape=SHAPE, style=Style(phase="non-contrast", perirenal_fat=True))
    assert np.array_equal(plain.labels, fatty.labels)  # the anatomy and its labels are the seed's
    for kidney in (KID_R, KID_L):
        inside = plain.labels == kidney
        ring = ndimage.binary_dilation(inside, np.ones((3, 3, 1), bool), iterations=2) & (plain.labels == 0)
        assert np.median(fatty.image[ring]) < -40 < np.median(plain.image[ring])
        # the renal sinus (unlabelled, enclosed by the kidney in its slice) is fat too
        hole = np.zeros_like(inside)
        for k in range(inside.shape[2]):
            hole[:, :, k] = ndimage.binary_fill_holes(inside[:, :, k]) & ~inside[:, :, k]
        if hole.sum() > 5:
            assert np.median(fatty.image[hole]) < -20 < np.median(plain.image[hole])


def test_bowel_gas_is_unlabelled_air_between_the_organs():
    plain = make_phantom(13, shape=SHAPE, style=Style(table=False))
    gassy = make_phantom(13, shape=SHAPE, style=Style(bowel_gas=True))
    assert np.array_equal(plain.labels, gassy.labels)
    gas = (gassy.image < -700) & (plain.image > -300)
    assert gas.sum() > 200, gas.sum()
    assert not gassy.labels[gas].any()  # never inside an organ
    body = plain.image > -300
    assert gas.sum() < 0.1 * body.sum()


def test_seeded_styles_mostly_have_perirenal_fat_and_gas():
    styles = [seeded_style(s) for s in range(200)]
    assert 0.75 < np.mean([s.perirenal_fat for s in styles]) < 0.95
    assert 0.7 < np.mean([s.bowel_gas for s in styles]) < 0.9


@pytest.mark.parametrize("seed", [6, 131])
def test_the_lung_bases_never_cover_a_labelled_organ(seed):
    """Every labelled voxel looks like its organ: the chest's lungs and heart go around the liver's
    dome (they once overwrote its top, leaving liver and tumour labels on lung)."""
    ph = make_phantom(seed, style=Style(field="chest-abdomen", phase="arterial", thickness_mm=None))
    labelled = ph.labels > 0
    assert (ph.image < -500).sum() > 10_000  # the lungs are there
    assert ((ph.image < -300) & labelled).sum() <= 0.001 * labelled.sum()
