"""Datasets of image/label pairs and their checks.

Reads the layouts medical-imaging people already use:

- Medical Segmentation Decathlon (MSD): ``imagesTr/``, ``labelsTr/`` and a ``dataset.json``
  whose ``labels`` map value -> name and whose ``training`` list names image/label pairs;
- nnU-Net v2: the same folders, ``labels`` as name -> value, and a ``_0000`` channel suffix
  on image files;
- images may also be DICOM series folders inside ``imagesTr/`` with NIfTI masks in
  ``labelsTr/`` named after the folder.

:func:`check_dataset` reports every problem (missing labels, grids that do not match,
undeclared label values, files named in dataset.json that do not exist) with file names.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path


from .errors import MedsegError
from .geometry import canonical_view, grid_mismatch
from .io import NIFTI_SUFFIXES, SITK_SUFFIXES, load_scan
from .labels import MAX_LABEL, check_label_map, is_ignore, split_ignore
from .naming import case_name, split_suffix, strip_channel
from .scan import Scan
from .schema import read_json_object, short_repr


@dataclass
class Case:
    name: str
    image: Path
    label: Path
    updated: bool = False  # from add_case: the scan was already in the dataset and its label file was replaced


@dataclass
class DatasetIndex:
    """What a dataset folder holds: its cases, declared labels and modality, and its problems."""

    root: Path
    cases: list[Case] = field(default_factory=list)
    labels: dict[str, int] = field(default_factory=dict)
    modality: str | None = None
    meta: dict = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    labelled: dict[str, tuple[int, int]] = field(default_factory=dict)  # with an ignore label: case -> (labelled, all) axial slices

    @property
    def ignore(self) -> int | None:
        """The dataset's ignore label value (sparse labels), or None."""
        return split_ignore(self.labels)[1]


def _visible(folder: Path) -> list[Path]:
    """Entries of a folder, without hidden files (MSD archives carry macOS '._' files)."""
    return [p for p in sorted(folder.iterdir()) if not p.name.startswith((".", "_"))]


_INT = re.compile(r"^-?\d+$")


def _label_value(value, where: str, field_name: str) -> int:
    """A label value of dataset.json: a non-negative integer (or a string of digits)."""
    if isinstance(value, (list, tuple)):
        raise MedsegError(
            f"{where}: field '{field_name}': region-based labels (a list of values, as in nnU-Net's region-based "
            f"training) are not supported; give each label a single integer value, got {value!r}"
        )
    if isinstance(value, bool) or not (isinstance(value, int) or (isinstance(value, str) and _INT.match(value.strip()))):
        raise MedsegError(f"{where}: field '{field_name}': expected a non-negative integer label value, got {value!r}")
    number = int(value)
    if not 0 <= number <= MAX_LABEL:
        raise MedsegError(f"{where}: field '{field_name}': expected a non-negative integer label value "
                          f"(0..{MAX_LABEL}), got {value!r}")
    return number


def read_labels(dataset_json: dict, where: str | Path = "dataset.json") -> dict[str, int]:
    """``name -> value`` from either dataset.json convention; ``{}`` when none are declared.

    nnU-Net v2 maps names to values (``"liver": 1``), MSD values to names (``"1": "liver"``).
    Anything else (a value that is not a non-negative integer, nnU-Net region lists such as
    ``"liver": [1, 2]``, two labels sharing a value, a name given twice) is a one-line
    :class:`MedsegError` naming ``where`` (the dataset.json) and the field.

    Either convention may declare nnU-Net v2's ``ignore`` label (``"ignore": 3`` or ``"3": "ignore"``,
    the highest value): voxels that hold it are not labelled (see :func:`medseg.labels.split_ignore`).
    """
    if not isinstance(dataset_json, dict):
        raise MedsegError(f"{where}: expected a JSON object, found {type(dataset_json).__name__}")
    raw = dataset_json.get("labels")
    if raw is None or raw == {}:
        return {}
    if not isinstance(raw, dict):
        raise MedsegError(f"{where}: field 'labels': expected an object of label name -> integer value, got {short_repr(raw)}")
    msd = all(_INT.match(str(k).strip()) for k in raw) and all(
        isinstance(v, str) and not _INT.match(v.strip()) for v in raw.values()
    )
    out: dict[str, int] = {}
    if msd:  # MSD: "1": "liver"
        for k, v in raw.items():
            value = _label_value(k, where, f"labels.{k}")
            name = v
            if not name.strip():
                raise MedsegError(f"{where}: field 'labels.{k}': expected a label name, got {v!r}")
            if name in out:
                raise MedsegError(f"{where}: field 'labels': duplicate label name {name!r} (values {out[name]} and "
                                  f"{value}); each label needs its own name")
            out[name] = value
    else:  # nnU-Net v2: "liver": 1
        for k, v in raw.items():
            name = str(k)
            if not name.strip():
                raise MedsegError(f"{where}: field 'labels': a label has an empty name")
            out[name] = _label_value(v, where, f"labels.{k}")
    by_value: dict[int, list[str]] = {}
    for name, value in out.items():
        by_value.setdefault(value, []).append(name)
    for value, names in by_value.items():
        if len(names) > 1:
            raise MedsegError(f"{where}: field 'labels': duplicate label value {value} (labels "
                              f"{', '.join(repr(n) for n in names)}); each label needs its own value")
    _check_ignore(out, where)
    return out


def _check_ignore(labels: dict[str, int], where) -> None:
    """nnU-Net v2's rules for the ``ignore`` label: at most one, not background, the highest value."""
    ignored = [k for k in labels if is_ignore(k)]
    if len(ignored) > 1:
        raise MedsegError(f"{where}: field 'labels': several ignore labels ({', '.join(map(repr, ignored))}); give one")
    if not ignored:
        return
    value = labels[ignored[0]]
    top = max((v for k, v in labels.items() if not is_ignore(k)), default=0)
    if value == 0 or value <= top:
        raise MedsegError(f"{where}: field 'labels.{ignored[0]}': the ignore label must have the highest value "
                          f"(above {top}, as in nnU-Net v2), got {value}")


def _field(meta: dict, key: str, kind: type, expected: str, where, problems: list[str]):
    """``meta[key]`` when it is a ``kind``; None when absent, or (with a problem noted) of another type."""
    value = meta.get(key)
    if value is not None and not isinstance(value, kind):
        problems.append(f"{where}: field '{key}': expected {expected}, got {short_repr(value)}")
        return None
    return value


def dataset_json_problems(meta: dict, where: str | Path = "dataset.json") -> list[str]:
    """Every field of a dataset.json that medseg reads and that has the wrong shape, one line each.

    Checked: ``labels`` (see :func:`read_labels`), ``channel_names`` / ``modality`` (objects of
    channel -> modality name), ``training`` (a list of ``{"image": ..., "label": ...}``) and
    ``validation`` (a list of case names or such pairs).
    """
    if not isinstance(meta, dict):
        return [f"{where}: expected a JSON object, found {type(meta).__name__}"]
    problems = []
    try:
        read_labels(meta, where)
    except MedsegError as exc:
        problems.append(str(exc))
    for key in ("channel_names", "modality"):
        value = _field(meta, key, dict, 'an object of channel -> modality name (e.g. {"0": "CT"})', where, problems)
        for ch, name in (value or {}).items():
            if not isinstance(name, str) or not name.strip():
                problems.append(f"{where}: field '{key}.{ch}': expected a modality name such as \"CT\", got {short_repr(name)}")
                break
    for key in ("training", "validation"):
        value = _field(meta, key, list, 'a list of {"image": ..., "label": ...} entries', where, problems)
        for i, entry in enumerate(value or []):
            if key == "validation" and isinstance(entry, str) and entry.strip():
                continue
            if not isinstance(entry, dict):
                problems.append(f"{where}: field '{key}.{i}': expected {{\"image\": ..., \"label\": ...}}, "
                                f"got {short_repr(entry)}")
                continue
            need = ("image", "label") if key == "training" else ()
            bad = next((k for k in need if not isinstance(entry.get(k), str) or not entry.get(k).strip()), None)
            if bad is None and key == "validation":
                ref = entry.get("label", entry.get("image"))
                bad = None if isinstance(ref, str) and ref.strip() else "label"
            if bad is not None and bad not in entry:
                problems.append(f"{where}: field '{key}.{i}.{bad}' is missing")
            elif bad is not None:
                problems.append(f"{where}: field '{key}.{i}.{bad}': expected a file path, got {short_repr(entry[bad])}")
    return problems


def read_dataset_json(path: str | Path) -> dict:
    """A dataset.json read and checked (:func:`dataset_json_problems`); the first problem is raised."""
    meta = read_json_object(path, "dataset.json")
    problems = dataset_json_problems(meta, path)
    if problems:
        raise MedsegError(problems[0])
    return meta


def read_modality(dataset_json: dict) -> str | None:
    """CT or MR from nnU-Net's ``channel_names`` or MSD's ``modality``."""
    channels = dataset_json.get("channel_names") or dataset_json.get("modality") or {}
    if isinstance(channels, dict) and channels:
        first = str(next(iter(channels.values()))).upper()
        if first == "CT":
            return "CT"
        if first in ("MR", "MRI", "T1", "T2", "FLAIR", "T1W", "T2W", "ADC", "DWI", "T1GD", "T1C"):
            return "MR"
    return None


def index_dataset(root: str | Path) -> DatasetIndex:
    """Find a dataset's cases without reading any image; problems are collected, not raised."""
    root = Path(root)
    idx = DatasetIndex(root)
    if not root.is_dir():
        idx.problems.append(f"{root}: not a folder")
        return idx
    _read_meta(idx, root / "dataset.json")
    training = idx.meta.get("training")
    if training is not None and not isinstance(training, list):
        return idx  # reported by _read_meta
    if training:
        _index_training_list(idx, training)
    else:
        _index_folders(idx)
    if not idx.cases and not idx.problems:
        idx.problems.append(f"{root}: the dataset is empty (no image/label pairs)")
    return idx


def _read_meta(idx: DatasetIndex, meta_path: Path) -> None:
    """The dataset.json's contents, labels and modality into ``idx``; its problems into ``idx.problems``."""
    if meta_path.exists():
        try:
            idx.meta = read_json_object(meta_path, "dataset.json")
        except MedsegError as exc:
            idx.problems.append(str(exc))
    schema = dataset_json_problems(idx.meta, meta_path)
    idx.problems += schema
    try:
        idx.labels = read_labels(idx.meta, meta_path)
    except MedsegError:
        idx.labels = {}  # reported above
    idx.modality = read_modality(idx.meta)
    if not idx.labels:
        if not any("field 'labels" in p for p in schema):
            idx.problems.append(f"{meta_path}: no labels declared (dataset.json 'labels')")
    elif 0 not in idx.labels.values():
        idx.problems.append(f"{meta_path}: labels {idx.labels} declare no background (value 0)")


def _index_training_list(idx: DatasetIndex, training: list) -> None:
    """Cases named by dataset.json's ``training`` list (an image may lack or carry ``_0000``)."""
    for entry in training:
        if not isinstance(entry, dict) or not all(isinstance(entry.get(k), str) for k in ("image", "label")):
            continue  # reported by dataset_json_problems
        image, label = idx.root / entry["image"], idx.root / entry["label"]
        ok = True
        for p in (image, label):
            if not p.exists():
                alt = _with_channel(p)
                if alt is not None and p == image:
                    image = alt
                    continue
                idx.problems.append(f"{p}: named in dataset.json but missing")
                ok = False
        if ok:
            idx.cases.append(Case(case_name(label), image, label))


def _index_folders(idx: DatasetIndex) -> None:
    """Cases of ``imagesTr/`` and ``labelsTr/``, paired by case name."""
    images, labels = idx.root / "imagesTr", idx.root / "labelsTr"
    if not images.is_dir() or not labels.is_dir():
        idx.problems.append(f"{idx.root}: expected imagesTr/ and labelsTr/ folders (MSD / nnU-Net layout)")
        return
    label_files = {case_name(p): p for p in _visible(labels) if p.is_file()}
    seen = set()
    unmatched = []
    channel_suffixed = False  # evidence of nnU-Net naming: an image 'case_0000' with label 'case'
    for img in _visible(images):
        name = case_name(img, channel=True, known=label_files)
        if name in label_files:
            idx.cases.append(Case(name, img, label_files[name]))
            seen.add(name)
            channel_suffixed |= name != case_name(img)
        else:
            unmatched.append(img)
    for img in unmatched:
        idx.problems.append(f"{img}: no label file for it in labelsTr/ "
                            f"(expected {_expected_label_name(img, idx, channel_suffixed, bool(seen))})")
    for name, p in label_files.items():
        if name not in seen:
            idx.problems.append(f"{p}: label without an image in imagesTr/")


def _expected_label_name(image: Path, idx: DatasetIndex, channel_suffixed: bool, any_matched: bool) -> str:
    """The label file name an unmatched image needs: nnU-Net's ``case_0000.nii.gz`` has the label
    ``case.nii.gz``; an MSD-style image keeps its name unless other images carry a channel suffix."""
    name, suffix = split_suffix(image.name)
    stripped = strip_channel(name)
    if stripped != name and (channel_suffixed or not any_matched):
        name = stripped
    ending = idx.meta.get("file_ending")
    if not (isinstance(ending, str) and ending.startswith(".") and ending.lower().endswith(SITK_SUFFIXES + NIFTI_SUFFIXES)):
        ending = suffix if suffix.lower() in NIFTI_SUFFIXES else ".nii.gz"
    return name + ending


def _with_channel(path: Path) -> Path | None:
    """MSD names images without nnU-Net's ``_0000``; accept either spelling."""
    for cand in path.parent.glob(case_name(path) + "_0000*"):
        return cand
    return None


def find_cases(root: str | Path) -> tuple[list[Case], dict]:
    """Image/label pairs of a dataset folder and its dataset.json; raises on any indexing problem."""
    idx = index_dataset(root)
    if idx.problems:
        more = f" (and {len(idx.problems) - 1} more problem(s); run medseg check-dataset)" if len(idx.problems) > 1 else ""
        raise MedsegError(idx.problems[0] + more)
    return idx.cases, idx.meta


def check_dataset(root: str | Path) -> DatasetIndex:
    """Index a dataset and read every pair: all problems land in ``.problems`` with file names.

    Checks: every image has a label; each label lies on its image's voxel grid in world space
    (any axis order or flips, but not shifted, cropped or resampled); every label value is
    declared in dataset.json; files are readable. With an ``ignore`` label, ``.labelled`` holds
    each case's labelled and total axial slices, and a case with no labelled voxel is a problem.
    """
    idx = index_dataset(root)
    ignore = idx.ignore
    for case in idx.cases:
        try:
            image = load_scan(case.image, modality=idx.modality)
            label = load_scan(case.label)
        except MedsegError as exc:
            idx.problems.append(str(exc))
            continue
        why = grid_mismatch(image, label)
        if why is not None:
            idx.problems.append(f"{case.label}: {why} of its image {case.image.name}")
        try:
            check_label_map(label.array, case.label, idx.labels or None, declared_in="declared in dataset.json")
        except MedsegError as exc:
            idx.problems.append(str(exc))
            continue
        if ignore is not None:
            idx.labelled[case.name] = labelled_slices(label, ignore)
            if idx.labelled[case.name][0] == 0:
                idx.problems.append(f"{case.label}: every voxel is the ignore label ({ignore}): nothing to learn from")
    return idx


def labelled_slices(label: Scan, ignore: int) -> tuple[int, int]:
    """(axial slices holding any voxel other than ``ignore``, all axial slices) of a label map."""
    view, _ = canonical_view(label.array, label.affine, "RAS")
    return int((view != ignore).any(axis=(0, 1)).sum()), int(view.shape[2])


def write_dataset_json(root: str | Path, meta: dict) -> Path:
    """Write ``meta`` as ``root/dataset.json`` (indented, one final newline), atomically; return its path."""
    from .io import atomic_write_text

    return atomic_write_text(Path(root) / "dataset.json", json.dumps(meta, indent=2) + "\n")
