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

import numpy as np

from .errors import MedsegError
from .io import NIFTI_SUFFIXES, SITK_SUFFIXES, as_label_map, grid_mismatch, load_scan

_CHANNEL = re.compile(r"_\d{4}$")


@dataclass
class Case:
    name: str
    image: Path
    label: Path


@dataclass
class DatasetIndex:
    """What a dataset folder holds: its cases, declared labels and modality, and its problems."""

    root: Path
    cases: list[Case] = field(default_factory=list)
    labels: dict[str, int] = field(default_factory=dict)
    modality: str | None = None
    meta: dict = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


def _case_name(path: Path) -> str:
    name = path.name
    for suffix in NIFTI_SUFFIXES[::-1] + SITK_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def _visible(folder: Path) -> list[Path]:
    """Entries of a folder, without hidden files (MSD archives carry macOS '._' files)."""
    return [p for p in sorted(folder.iterdir()) if not p.name.startswith((".", "_"))]


def read_labels(dataset_json: dict) -> dict[str, int]:
    """``name -> value`` from either dataset.json convention."""
    raw = dataset_json.get("labels") or {}
    out: dict[str, int] = {}
    for k, v in raw.items():
        if str(k).lstrip("-").isdigit() and not str(v).lstrip("-").isdigit():  # MSD: "1": "liver"
            out[str(v)] = int(k)
        else:  # nnU-Net v2: "liver": 1
            out[str(k)] = int(v)
    return out


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
    meta_path = root / "dataset.json"
    if meta_path.is_file():
        try:
            idx.meta = json.loads(meta_path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            idx.problems.append(f"{meta_path}: unreadable ({exc})")
    idx.labels = read_labels(idx.meta) if isinstance(idx.meta, dict) else {}
    idx.modality = read_modality(idx.meta) if isinstance(idx.meta, dict) else None
    if not idx.labels:
        idx.problems.append(f"{meta_path}: no labels declared (dataset.json 'labels')")
    elif 0 not in idx.labels.values():
        idx.problems.append(f"{meta_path}: labels {idx.labels} declare no background (value 0)")

    training = idx.meta.get("training") if isinstance(idx.meta, dict) else None
    if isinstance(training, list) and training:
        for entry in training:
            if not isinstance(entry, dict) or "image" not in entry or "label" not in entry:
                idx.problems.append(f"{meta_path}: 'training' entry {entry!r} lacks image or label")
                continue
            image, label = root / entry["image"], root / entry["label"]
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
                idx.cases.append(Case(_case_name(label), image, label))
    else:
        images, labels = root / "imagesTr", root / "labelsTr"
        if not images.is_dir() or not labels.is_dir():
            idx.problems.append(f"{root}: expected imagesTr/ and labelsTr/ folders (MSD / nnU-Net layout)")
            return idx
        label_files = {_case_name(p): p for p in _visible(labels) if p.is_file()}
        seen = set()
        for img in _visible(images):
            name = image_case_name(img, label_files)
            if name in label_files:
                idx.cases.append(Case(name, img, label_files[name]))
                seen.add(name)
            else:
                idx.problems.append(f"{img}: no label file for it in labelsTr/ (expected {name}.nii.gz)")
        for name, p in label_files.items():
            if name not in seen:
                idx.problems.append(f"{p}: label without an image in imagesTr/")
    if not idx.cases and not idx.problems:
        idx.problems.append(f"{root}: the dataset is empty (no image/label pairs)")
    return idx


def image_case_name(image: Path, known: dict | set) -> str:
    """An image's case name: without nnU-Net's ``_0000`` channel suffix, unless the name itself
    is a case (``case_0001.nii.gz`` in an MSD-style folder is case ``case_0001``)."""
    name = _case_name(image)
    stripped = _CHANNEL.sub("", name)
    return name if name in known or stripped not in known else stripped


def _with_channel(path: Path) -> Path | None:
    """MSD names images without nnU-Net's ``_0000``; accept either spelling."""
    name = _case_name(path)
    for cand in path.parent.glob(name + "_0000*"):
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
    declared in dataset.json; files are readable.
    """
    idx = index_dataset(root)
    declared = set(idx.labels.values())
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
            arr = as_label_map(label.array, case.label)
        except MedsegError as exc:
            idx.problems.append(str(exc))
            continue
        present = set(np.flatnonzero(np.bincount(arr.ravel())).tolist())
        undeclared = sorted(present - declared)
        if declared and undeclared:
            idx.problems.append(f"{case.label}: label values {undeclared} are not declared in dataset.json")
    return idx


def add_case(
    dataset_dir: str | Path,
    scan,
    labels: np.ndarray,
    label_names: dict[str, int],
    *,
    case: str | None = None,
    modality: str | None = None,
) -> Case:
    """Append a scan and its (corrected) mask to a dataset folder that ``medseg train`` reads.

    Writes ``imagesTr/<case>_0000.nii.gz`` (the scan's voxels, NIfTI, its geometry) and
    ``labelsTr/<case>.nii.gz``, and creates or updates an nnU-Net v2 ``dataset.json`` (an MSD
    ``training`` list, when the folder has one, gets the new pair too). The dataset's labels and
    modality must agree with the new case's; a case name already taken gets a numbered suffix.
    """
    from .io import atomic_write_text, save_image, save_mask

    root = Path(dataset_dir)
    meta_path = root / "dataset.json"
    meta: dict = {}
    if meta_path.is_file():
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise MedsegError(f"{meta_path}: unreadable ({exc})") from None
    existing = read_labels(meta)
    if existing and existing != dict(label_names):
        raise MedsegError(f"{meta_path}: the dataset's labels {existing} differ from this mask's {dict(label_names)}")
    mod = (modality or scan.modality or read_modality(meta) or "CT").upper()
    if read_modality(meta) not in (None, mod):
        raise MedsegError(f"{meta_path}: the dataset is {read_modality(meta)} but this scan is {mod}")
    present = set(np.unique(np.asarray(labels)).tolist())
    undeclared = sorted(present - set(label_names.values()))
    if undeclared:
        raise MedsegError(f"{scan.source}: mask values {undeclared} are not among the labels {dict(label_names)}")
    base = re.sub(r"[^A-Za-z0-9_.-]+", "_", case or _case_name(Path(scan.source)) or "case").strip("_.") or "case"
    name, n = base, 1
    while (root / "labelsTr" / f"{name}.nii.gz").exists() or (root / "imagesTr" / f"{name}_0000.nii.gz").exists():
        n += 1
        name = f"{base}_{n}"
    image = root / "imagesTr" / f"{name}_0000.nii.gz"
    label = root / "labelsTr" / f"{name}.nii.gz"
    save_image(scan, image)
    try:
        save_mask(labels, scan, label)
    except BaseException:
        image.unlink(missing_ok=True)  # no half-added case
        raise
    meta.setdefault("name", root.name)
    meta.setdefault("channel_names", {"0": mod})
    meta["labels"] = {k: int(v) for k, v in sorted(label_names.items(), key=lambda kv: kv[1])}
    meta.setdefault("file_ending", ".nii.gz")
    if isinstance(meta.get("training"), list):
        meta["training"].append({"image": f"./imagesTr/{image.name}", "label": f"./labelsTr/{label.name}"})
    meta["numTraining"] = len([p for p in (root / "labelsTr").iterdir() if p.name.endswith(".nii.gz")])
    atomic_write_text(meta_path, json.dumps(meta, indent=2) + "\n")
    return Case(name, image, label)
