"""dataset.json schema, check-dataset messages and make_dataset's refusals."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import hash_tree as hashes

from medseg.curation import add_case
from medseg.data import check_dataset, find_cases, index_dataset, read_labels
from medseg.errors import MedsegError
from medseg.phantom import LABELS, make_dataset, make_phantom, write_nifti

SHAPE, SPACING = (32, 32, 8), (10.0, 10.0, 20.0)



@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("base") / "ds", [1, 2], shape=SHAPE, spacing=SPACING)


def _with_meta(base: Path, root: Path, **changes) -> Path:
    shutil.copytree(base, root)
    meta = json.loads((root / "dataset.json").read_text())
    for key, value in changes.items():
        if value is None:
            meta.pop(key, None)
        else:
            meta[key] = value
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


TRAINING = [{"image": "./imagesTr/phantom_0001_0000.nii.gz", "label": "./labelsTr/phantom_0001.nii.gz"}]

# (dataset.json changes, field named in the message, words in the message)
BAD_META = {
    "labels-not-object": ({"labels": ["background", "liver"]}, "labels", "expected an object"),
    "labels-string": ({"labels": "liver"}, "labels", "expected an object"),
    "value-string": ({"labels": {"background": 0, "liver": "x"}}, "labels.liver",
                     "expected a non-negative integer label value, got 'x'"),
    "value-float": ({"labels": {"background": 0, "liver": 1.5}}, "labels.liver", "non-negative integer"),
    "value-negative": ({"labels": {"background": 0, "liver": -1}}, "labels.liver", "non-negative integer"),
    "value-bool": ({"labels": {"background": 0, "liver": True}}, "labels.liver", "non-negative integer"),
    "value-null": ({"labels": {"background": 0, "liver": None}}, "labels.liver", "non-negative integer"),
    "value-too-big": ({"labels": {"background": 0, "liver": 70000}}, "labels.liver", "0..65535"),
    "region-list": ({"labels": {"background": 0, "liver": [1, 2]}}, "labels.liver", "region-based labels"),
    "duplicate-value": ({"labels": {"background": 0, "liver": 1, "spleen": 1}}, "labels",
                        "duplicate label value 1 (labels 'liver', 'spleen')"),
    "msd-duplicate-name": ({"labels": {"0": "background", "1": "liver", "2": "liver"}}, "labels",
                           "duplicate label name 'liver' (values 1 and 2)"),
    "msd-negative": ({"labels": {"0": "background", "-1": "liver"}}, "labels.-1", "non-negative integer"),
    "msd-empty-name": ({"labels": {"0": "background", "1": " "}}, "labels.1", "expected a label name"),
    "mixed": ({"labels": {"0": "background", "liver": 1}}, "labels.0", "got 'background'"),
    "channel-names-string": ({"channel_names": "CT"}, "channel_names", "expected an object"),
    "channel-names-list": ({"channel_names": ["CT"]}, "channel_names", "expected an object"),
    "channel-name-number": ({"channel_names": {"0": 5}}, "channel_names.0", "expected a modality name"),
    "modality-string": ({"channel_names": None, "modality": "CT"}, "modality", "expected an object"),
    "training-object": ({"training": {"image": "a", "label": "b"}}, "training", "expected a list"),
    "training-string": ({"training": "imagesTr"}, "training", "expected a list"),
    "training-entry-string": ({"training": ["phantom_0001"]}, "training.0", "expected {\"image\""),
    "training-entry-no-label": ({"training": [{"image": "./imagesTr/phantom_0001_0000.nii.gz"}]},
                                "training.0.label", "is missing"),
    "training-entry-number": ({"training": [{**TRAINING[0], "label": 3}]}, "training.0.label",
                              "expected a file path"),
    "validation-object": ({"validation": {"a": 1}}, "validation", "expected a list"),
    "validation-entry-number": ({"validation": [7]}, "validation.0", "expected {\"image\""),
}


@pytest.mark.parametrize("name", list(BAD_META))
def test_bad_dataset_json_is_one_line_naming_file_and_field(base, tmp_path, name):
    changes, field, words = BAD_META[name]
    root = _with_meta(base, tmp_path / "ds", **changes)
    meta_path = root / "dataset.json"
    before = hashes(root)
    prefix = f"{meta_path}: field '{field}'"
    problems = index_dataset(root).problems
    hits = [p for p in problems if p.startswith(prefix)]
    assert hits and words in hits[0] and "\n" not in hits[0], problems
    with pytest.raises(MedsegError) as info:
        find_cases(root)
    assert str(info.value).startswith(prefix) and "\n" not in str(info.value)
    checked = check_dataset(root).problems
    assert not [p for p in checked if "not declared" in p], checked  # reported as the schema problem, not later
    assert hashes(root) == before


@pytest.mark.slow
def test_bad_dataset_json_through_the_cli(base, tmp_path):
    root = _with_meta(base, tmp_path / "ds", labels={"background": 0, "liver": 1, "spleen": 1})
    before = hashes(root)
    r = subprocess.run([sys.executable, "-m", "medseg.cli", "check-dataset", str(root)], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert f"{root / 'dataset.json'}: field 'labels': duplicate label value 1 (labels 'liver', 'spleen')" in r.stderr
    assert "not declared" not in r.stderr
    r = subprocess.run([sys.executable, "-m", "medseg.cli", "train", str(root), "-o", str(tmp_path / "run"), "--device",
                        "cpu"], capture_output=True, text=True, timeout=300)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 1 and len(lines) == 1 and "field 'labels': duplicate label value 1" in lines[0], r.stderr
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").iterdir())
    assert hashes(root) == before


@pytest.mark.parametrize("text,expect", [("[1]", "dataset.json is not a JSON object"),
                                         ("{\"labels\": ", "unreadable dataset.json"),
                                         ("{\"labels\": {\"a\": NaN}}", "unreadable dataset.json")])
def test_unreadable_dataset_json(base, tmp_path, text, expect):
    root = _with_meta(base, tmp_path / "ds")
    (root / "dataset.json").write_text(text)
    with pytest.raises(MedsegError, match=expect) as info:
        find_cases(root)
    assert str(info.value).startswith(str(root / "dataset.json"))


@pytest.mark.parametrize("labels,expect", [
    ({"0": "background", "1": "liver"}, {"background": 0, "liver": 1}),  # MSD
    ({"background": 0, "liver": 1}, {"background": 0, "liver": 1}),  # nnU-Net v2
    ({"background": "0", "liver": "1"}, {"background": 0, "liver": 1}),  # digits as strings: accepted as before
    (None, {}),
    ({}, {}),
])
def test_valid_labels_still_read(labels, expect):
    assert read_labels({} if labels is None else {"labels": labels}) == expect


def test_valid_variants_index_cleanly(base, tmp_path):
    root = _with_meta(base, tmp_path / "ds", training=TRAINING, validation=["phantom_0001"],
                      channel_names={"0": "CT"}, labels={str(v): k for k, v in LABELS.items()})
    idx = index_dataset(root)
    assert idx.problems == [] and idx.labels == LABELS and [c.name for c in idx.cases] == ["phantom_0001"]


def test_bad_dataset_json_refused_by_add_case(base, tmp_path):
    root = _with_meta(base, tmp_path / "ds", labels={"background": 0, "liver": [1, 2]})
    before = hashes(root)
    ph = make_phantom(3, shape=SHAPE, spacing=SPACING)
    from medseg.io import load_scan

    write_nifti(ph, tmp_path / "img.nii.gz", tmp_path / "lab.nii.gz")
    scan = load_scan(tmp_path / "img.nii.gz")
    with pytest.raises(MedsegError, match=r"dataset.json: field 'labels.liver': region-based labels"):
        add_case(root, scan, ph.labels, LABELS)
    assert hashes(root) == before


def test_add_case_checks_the_mask_and_keeps_the_dataset_consistent(base, tmp_path):
    from medseg.io import load_scan

    root = _with_meta(base, tmp_path / "ds")
    ph = make_phantom(3, shape=SHAPE, spacing=SPACING)
    write_nifti(ph, tmp_path / "new_0000.nii.gz", None)
    scan = load_scan(tmp_path / "new_0000.nii.gz")
    before = hashes(root)
    bad = ph.labels.copy()
    bad[0, 0, 0] = 42
    with pytest.raises(MedsegError) as info:
        add_case(root, scan, bad, LABELS)
    assert str(info.value).startswith(f"{scan.source}: label values [42] are not among the labels (0=background")
    with pytest.raises(MedsegError, match="negative label values"):
        add_case(root, scan, ph.labels.astype("int16") - 1, LABELS)
    assert hashes(root) == before  # nothing written
    case = add_case(root, scan, ph.labels.astype("float32"), LABELS)  # whole floats are a label map
    assert case.name == "new_0000" and case.label.name == "new_0000.nii.gz"  # named after the file, suffix kept
    meta = json.loads((root / "dataset.json").read_text())
    assert meta["numTraining"] == 3 and meta["labels"] == LABELS
    idx = check_dataset(root)
    assert idx.problems == [] and "new_0000" in [c.name for c in idx.cases]
    assert not [p for p in root.rglob(".*")]  # no temporary files left


# ---------------------------------------------------------------------------------------------- messages


def test_missing_label_suggests_the_label_name(base, tmp_path):
    root = _with_meta(base, tmp_path / "ds")
    (root / "labelsTr" / "phantom_0002.nii.gz").unlink()
    problems = index_dataset(root).problems
    assert len(problems) == 1, problems
    assert problems[0] == (f"{root / 'imagesTr' / 'phantom_0002_0000.nii.gz'}: no label file for it in labelsTr/ "
                           f"(expected phantom_0002.nii.gz)")
    # the only case: nothing to learn the convention from, the _0000 channel suffix is nnU-Net's
    (root / "labelsTr" / "phantom_0001.nii.gz").unlink()
    assert "(expected phantom_0001.nii.gz)" in index_dataset(root).problems[0]


def test_missing_label_msd_names_keep_their_number(tmp_path):
    """MSD-style names that happen to end in four digits are case names, not channel suffixes."""
    (tmp_path / "imagesTr").mkdir()
    (tmp_path / "labelsTr").mkdir()
    for s in (1, 2):
        ph = make_phantom(s, shape=SHAPE, spacing=SPACING)
        write_nifti(ph, tmp_path / "imagesTr" / f"case_{s:04d}.nii.gz", tmp_path / "labelsTr" / f"case_{s:04d}.nii.gz")
    (tmp_path / "dataset.json").write_text(json.dumps({"labels": {str(v): k for k, v in LABELS.items()}}))
    (tmp_path / "labelsTr" / "case_0002.nii.gz").unlink()
    assert "(expected case_0002.nii.gz)" in index_dataset(tmp_path).problems[0]


@pytest.mark.parametrize("labels,names", [({"background": 0, "liver": 1, "spleen": 1, "kidney_right": 3,
                                            "kidney_left": 4, "liver_tumour": 5}, "'liver', 'spleen'"),
                                           ({"0": "background", "1": "liver", "2": "liver", "3": "kidney_right",
                                             "4": "kidney_left", "5": "liver_tumour"}, "'liver' (values 1 and 2)")])
def test_duplicate_labels_reported_as_duplicates(base, tmp_path, labels, names):
    root = _with_meta(base, tmp_path / "ds", labels=labels)
    problems = check_dataset(root).problems
    assert len(problems) == 1, problems
    assert "duplicate" in problems[0] and names in problems[0] and "not declared" not in problems[0]


# ---------------------------------------------------------------------------------------------- make_dataset


@pytest.mark.parametrize("held", ["dataset.json", "imagesTr", "labelsTr"])
def test_make_dataset_refuses_an_existing_dataset(base, tmp_path, held):
    root = tmp_path / "ds"
    root.mkdir()
    if held == "dataset.json":
        shutil.copy(base / "dataset.json", root / "dataset.json")
    else:
        shutil.copytree(base / held, root / held)
    before = hashes(root)
    with pytest.raises(MedsegError, match=f"{root}: already holds a dataset .*--overwrite"):
        make_dataset(root, [7], shape=SHAPE, spacing=SPACING)
    assert hashes(root) == before


def test_make_dataset_overwrite_and_empty_folders(base, tmp_path):
    root = tmp_path / "ds"
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    make_dataset(root, [1], shape=SHAPE, spacing=SPACING)  # empty folders are not a dataset
    old = hashes(root)
    with pytest.raises(MedsegError):
        make_dataset(root, [1], shape=(40, 40, 8), spacing=SPACING)
    assert hashes(root) == old
    make_dataset(root, [1], shape=(40, 40, 8), spacing=SPACING, overwrite=True)
    assert hashes(root) != old and find_cases(root)[0][0].name == "phantom_0001"


@pytest.mark.parametrize("seeds,expect", [([], "no seeds"), ([3, 3], "more than once"), ([-1], "negative"),
                                          (["a"], "not an integer"), ([True], "not an integer"),
                                          ([1.5], "not an integer"), (5, "expected a list")])
def test_make_dataset_checks_seeds(tmp_path, seeds, expect):
    with pytest.raises(MedsegError, match=expect):
        make_dataset(tmp_path / "ds", seeds, shape=SHAPE, spacing=SPACING)
    assert not (tmp_path / "ds").exists()


def test_make_dataset_into_a_file(tmp_path):
    (tmp_path / "ds").write_text("x")
    with pytest.raises(MedsegError, match="is a file, expected a dataset folder"):
        make_dataset(tmp_path / "ds", [1], shape=SHAPE, spacing=SPACING)
