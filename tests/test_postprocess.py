"""Post-processing: each organ label keeps the pieces near its largest (the model card's ``main_piece``)."""

from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage

from medseg.bundle import Bundle, ModelCard, build_model
from medseg.config import TrainConfig
from medseg.errors import MedsegError
from medseg.inference import Predictor
from medseg.io import Scan
from medseg.postprocess import apply_postprocessing, keep_main_piece
from medseg.training import _postprocessing

NAMES = {"background": 0, "liver": 1, "spleen": 2, "liver_tumour": 5}
POST = {"main_piece": ["liver", "spleen"], "margin_mm": 20.0}


def _volume() -> np.ndarray:
    lab = np.zeros((120, 100, 40), np.uint8)
    lab[10:60, 10:60, 5:30] = 1  # the liver
    lab[30:35, 30:35, 10:14] = 5  # a tumour inside it
    lab[63:66, 20:25, 10:12] = 1  # a fragment 3 voxels (2.1 mm) from it: kept
    lab[110:114, 90:94, 35:37] = 1  # a speck far away: dropped
    lab[70:100, 60:90, 5:30] = 2  # the spleen
    lab[15:18, 80:83, 36:38] = 2  # spleen label far from the spleen: dropped
    lab[100:104, 5:8, 2:4] = 5  # a tumour piece on its own: lesions are never touched
    return lab


def test_far_pieces_become_background_near_ones_and_lesions_stay():
    lab = _volume()
    out = apply_postprocessing(lab.copy(), (0.7, 0.7, 3.0), POST, NAMES)
    expected = lab.copy()
    expected[110:114, 90:94, 35:37] = 0
    expected[15:18, 80:83, 36:38] = 0
    np.testing.assert_array_equal(out, expected)


def test_pooling_gives_the_full_resolution_answer():
    """Pieces found on the pooled grid (3 x 3 x 1 here): the same voxels dropped as a full-resolution labelling."""
    rng = np.random.default_rng(4)
    lab = np.zeros((90, 90, 30), np.uint8)
    lab[20:60, 20:60, 5:25] = 1
    for _ in range(80):  # one-voxel specks, near and far, none within two pooled voxels (3 mm) of another
        x, y, z = rng.integers(0, 90), rng.integers(0, 90), rng.integers(0, 30)
        if lab[max(x - 8, 0):x + 9, max(y - 8, 0):y + 9, max(z - 3, 0):z + 4].sum() == 0:
            lab[x, y, z] = 1
    spacing = (0.8, 0.8, 2.0)
    got = lab.copy()
    removed = keep_main_piece(got, 1, spacing, 10.0)
    pieces, n = ndimage.label(lab == 1, np.ones((3, 3, 3), bool))
    objs = ndimage.find_objects(pieces)
    main = objs[int(np.argmax(np.bincount(pieces.ravel())[1:]))]
    expected = lab.copy()
    for i, obj in enumerate(objs, start=1):
        gap = [max(0, a.start - b.stop, b.start - a.stop) * s for a, b, s in zip(obj, main, spacing)]
        if np.linalg.norm(gap) > 10.0:
            expected[pieces == i] = 0
    assert 5 < removed < 80 and removed == int((lab != expected).sum())
    np.testing.assert_array_equal(got, expected)


def test_the_margin_is_in_millimetres_along_each_axis():
    lab = np.zeros((80, 80, 40), np.uint8)
    lab[10:40, 10:40, 5:15] = 1
    lab[10:12, 10:12, 19:20] = 1  # 4 slices of 5 mm above the box: 20 mm, kept
    lab[10:12, 10:12, 20:21] = 2
    lab[10:12, 10:12, 25:26] = 1  # 10 slices above: 50 mm, dropped
    lab[64:66, 10:12, 5:6] = 1  # 24 voxels of 0.7 mm to the side: 16.8 mm, kept
    out = apply_postprocessing(lab.copy(), (0.7, 0.7, 5.0), {"main_piece": ["liver"], "margin_mm": 20.0}, NAMES)
    assert out[10, 10, 19] == 1 and out[64, 10, 5] == 1 and out[10, 10, 25] == 0 and out[10, 10, 20] == 2


def test_nothing_to_do_leaves_the_map_alone():
    lab = np.zeros((20, 20, 5), np.uint8)
    assert keep_main_piece(lab, 1, (1.0, 1.0, 1.0), 20.0) == 0
    lab[2:8, 2:8, 1:3] = 1
    assert keep_main_piece(lab, 1, (1.0, 1.0, 1.0), 0.0) == 0
    assert apply_postprocessing(lab.copy(), (1.0, 1.0, 1.0), {}, NAMES).tolist() == lab.tolist()


def _bundle(post: dict) -> Bundle:
    card = ModelCard(name="post", labels={"background": 0, "liver": 1, "spleen": 2}, modality="CT",
                     arch_kwargs={"width": 4}, spacing=[4.0, 4.0], postprocessing=post,
                     preprocessing={"kind": "ct_window", "window": [-200.0, 300.0]})
    torch.manual_seed(0)
    return Bundle(card, build_model(card))


def test_predict_scan_applies_the_card_and_can_leave_it_out():
    rng = np.random.default_rng(0)
    scan = Scan(rng.normal(40, 60, (64, 64, 12)).astype(np.float32), np.diag([-3.0, 3.0, 4.0, 1.0]),
                Path("noise.nii.gz"), modality="CT")
    post = {"main_piece": ["liver", "spleen"], "margin_mm": 0.0}
    raw = Predictor(_bundle(post), "cpu", postprocess=False).predict_scan(scan, on_warning=lambda m: None)
    done = Predictor(_bundle(post), "cpu").predict_scan(scan, on_warning=lambda m: None)
    assert (raw != done).any(), "a random network's speckle must lose pieces"
    assert np.all((done == raw) | (done == 0))
    # the step ran on the scan's geometry: the same as applying it to the raw map with its spacing
    expected = apply_postprocessing(np.asarray(raw).copy(), (3.0, 3.0, 4.0), post, {"liver": 1, "spleen": 2})
    np.testing.assert_array_equal(done, expected)


@pytest.mark.parametrize("post, field", [
    ({"main_piece": ["kidney"]}, "postprocessing.main_piece"),
    ({"main_piece": ["background"]}, "postprocessing.main_piece"),
    ({"main_piece": ["liver"], "margin_mm": -1}, "postprocessing.margin_mm"),
    ({"fill_holes": True}, "postprocessing.fill_holes"),
])
def test_a_bad_postprocessing_field_is_named(post, field):
    with pytest.raises(MedsegError, match=field.replace(".", r"\.")):
        _bundle(post).card.validate()


def test_training_writes_organs_only_and_fine_tuning_keeps_the_source_steps():
    labels = {"liver": 1, "spleen": 2, "liver_tumour": 5}
    assert _postprocessing(TrainConfig(postprocessing="main-piece").postprocessing, labels, None) == {
        "main_piece": ["liver", "spleen"], "margin_mm": 20.0}
    assert _postprocessing(TrainConfig().postprocessing, labels, None) == {}
    src = _bundle({"main_piece": ["liver", "spleen"], "margin_mm": 15.0}).card
    assert _postprocessing(TrainConfig().postprocessing, {"liver": 1, "tumour": 3}, src) == {"main_piece": ["liver"], "margin_mm": 15.0}
    assert _postprocessing(TrainConfig(postprocessing="none").postprocessing, labels, src) == {}


def test_set_postprocessing_copies_the_bundle_with_the_step_and_keeps_the_source(tmp_path):
    from medseg.bundle import load_bundle, save_bundle
    from medseg.training import set_postprocessing

    src = save_bundle(_bundle({}).model, _bundle({}).card, tmp_path / "src", half=True)
    before = {p.name: p.read_bytes() for p in src.iterdir()}
    out = set_postprocessing(src, "main-piece", tmp_path / "out")
    assert {p.name: p.read_bytes() for p in src.iterdir()} == before  # the source is never changed
    from safetensors.torch import load_file

    # the weights as they were, dtype included (not the file's bytes: safetensors writes its metadata in any order)
    old_w, new_w = load_file(src / "model.safetensors"), load_file(out / "model.safetensors")
    assert old_w.keys() == new_w.keys() and all(
        old_w[k].dtype == new_w[k].dtype == (torch.float16 if old_w[k].is_floating_point() else old_w[k].dtype)
        and torch.equal(old_w[k], new_w[k]) for k in old_w)
    assert load_bundle(out).card.postprocessing == {"main_piece": ["liver", "spleen"], "margin_mm": 20.0}
    assert load_bundle(set_postprocessing(out, "none", tmp_path / "off")).card.postprocessing == {}
    for bad_out, message in [(src, "refusing to write over"), (src / "x", "refusing to write into"),
                             (out, "not an empty folder"), (tmp_path, "holds the model bundle")]:
        with pytest.raises(MedsegError, match=message):
            set_postprocessing(src, "main-piece", bad_out)
    with pytest.raises(MedsegError, match="expected none or main-piece"):
        set_postprocessing(src, "fill-holes", tmp_path / "new")
    assert not (tmp_path / "new").exists()
