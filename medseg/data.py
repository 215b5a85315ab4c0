"""Datasets of image/label pairs and their checks.

Reads the Medical Segmentation Decathlon / nnU-Net layout: ``imagesTr/`` and ``labelsTr/``
with matching names (nnU-Net's ``_0000`` channel suffix on images is accepted) and an
optional ``dataset.json`` whose ``labels`` are ``name -> value`` (nnU-Net v2) or
``value -> name`` (MSD).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from .errors import MedsegError
from .io import NIFTI_SUFFIXES, SITK_SUFFIXES

_CHANNEL = re.compile(r"_\d{4}$")


@dataclass
class Case:
    name: str
    image: Path
    label: Path


def _case_name(path: Path) -> str:
    name = path.name
    for suffix in NIFTI_SUFFIXES[::-1] + SITK_SUFFIXES:
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    return name


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


def find_cases(root: str | Path) -> tuple[list[Case], dict]:
    """Image/label pairs of a dataset folder and its dataset.json (``{}`` when absent)."""
    root = Path(root)
    images, labels = root / "imagesTr", root / "labelsTr"
    if not images.is_dir() or not labels.is_dir():
        raise MedsegError(f"{root}: expected imagesTr/ and labelsTr/ folders (MSD / nnU-Net layout)")
    meta: dict = {}
    if (root / "dataset.json").is_file():
        try:
            meta = json.loads((root / "dataset.json").read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise MedsegError(f"{root / 'dataset.json'}: unreadable ({exc})") from None
    label_files = {
        _case_name(p): p for p in sorted(labels.iterdir()) if not p.name.startswith((".", "_")) and p.is_file()
    }
    cases, missing = [], []
    for img in sorted(images.iterdir()):
        if img.name.startswith((".", "_")):
            continue
        name = _CHANNEL.sub("", _case_name(img))
        if name in label_files:
            cases.append(Case(name, img, label_files[name]))
        else:
            missing.append(img.name)
    if missing:
        raise MedsegError(f"{root}: no label in labelsTr/ for {len(missing)} image(s): {', '.join(missing[:5])}")
    if not cases:
        raise MedsegError(f"{root}: no image/label pairs found")
    return cases, meta
