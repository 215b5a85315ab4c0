"""Curating a training set: adding a scan and its corrected mask, all of it or only the slices a person checked.

:func:`add_case` writes the nnU-Net v2 layout that ``medseg train`` reads. With ``labelled``
(the axial slices a person painted, marked reviewed or accepted after a fill, by reason) only
those slices carry labels: every other voxel gets the dataset's ``ignore`` label (nnU-Net v2's
sparse-annotation convention: the highest value, counted in no loss, metric or check), and
dataset.json records, per case, which slices were labelled and why (``labelled_slices``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from pathlib import Path

import nibabel as nib
import numpy as np

from .data import Case, index_dataset, read_dataset_json, read_labels, read_modality, write_dataset_json
from .errors import MedsegError
from .geometry import array_on_grid_of, canonical_view, grid_mismatch
from .io import NIFTI_SUFFIXES, load_scan
from .labels import IGNORE, check_label_map, split_ignore
from .naming import case_name
from .scan import Scan

RECORD = "labelled_slices"  # dataset.json: case -> {reason: [axial slices]}, for cases labelled slice by slice
AXIS_NOTE = "axial slices, 0-based, inferior to superior"


def add_case(
    dataset_dir: str | Path,
    scan,
    labels: np.ndarray,
    label_names: dict[str, int],
    *,
    case: str | None = None,
    modality: str | None = None,
    labelled: Mapping[str, Iterable[int]] | None = None,
) -> Case:
    """Add a scan and its (corrected) mask to a dataset folder that ``medseg train`` reads.

    Writes ``imagesTr/<case>_0000.nii.gz`` (the scan's voxels, NIfTI, its geometry) and
    ``labelsTr/<case>.nii.gz``, and creates or updates an nnU-Net v2 ``dataset.json`` (an MSD
    ``training`` list, when the folder has one, gets the new pair too). The dataset's labels and
    modality must agree with the new case's. A scan already in the dataset (see
    :func:`find_same_case`) is not added twice: its case's label file is replaced, atomically, and
    the case comes back with ``updated=True``. A different scan whose name is taken gets a
    numbered suffix (``<case>_2``).

    ``labelled``: reason -> axial slice indices (``{"reviewed": [...], "painted": [...]}``; axial
    as the model sees the scan, 0-based from inferior). Only those slices keep their labels; the
    rest become the dataset's ``ignore`` value (declared, the highest value, when the dataset has
    none yet), and dataset.json's ``labelled_slices`` records the slices by reason.
    """
    from .io import save_image, save_mask

    root = Path(dataset_dir)
    meta, mod = _dataset_meta_for(root, scan, label_names, modality)
    labels = check_label_map(labels, scan.source, label_names)
    names, ignore = split_ignore(label_names)
    ignore = split_ignore(read_labels(meta))[1] or ignore
    record = None
    if labelled is not None:
        record = _slices_record(labelled, scan)
        ignore = ignore if ignore is not None else max(names.values()) + 1
        labels = _ignore_other_slices(labels, scan, sorted({k for ks in record.values() for k in ks}), ignore)
    base = re.sub(r"[^A-Za-z0-9_.-]+", "_", case or case_name(Path(scan.source)) or "case").strip("_.") or "case"
    result = _write_pair(root, scan, labels, base, meta, save_image, save_mask)
    meta.setdefault("name", root.name)
    meta.setdefault("channel_names", {"0": mod})
    declared = {**names, **({IGNORE: ignore} if ignore is not None else {})}
    meta["labels"] = {k: int(v) for k, v in sorted(declared.items(), key=lambda kv: kv[1])}
    meta.setdefault("file_ending", ".nii.gz")
    meta["numTraining"] = len([p for p in (root / "labelsTr").iterdir() if p.name.endswith(".nii.gz")])
    _record(meta, result.name, record)
    write_dataset_json(root, meta)
    return result


def _write_pair(root: Path, scan, labels: np.ndarray, base: str, meta: dict, save_image, save_mask) -> Case:
    """The image and label files of a new case, or the label file of the case already holding ``scan``."""
    same = find_same_case(root, scan, base)
    if same is not None:
        image, found = same  # the same voxels on the same grid: the labels go onto that image's axis order
        save_mask(array_on_grid_of(image, Scan(labels, scan.affine, scan.source)), image, found.label)
        return Case(found.name, found.image, found.label, updated=True)
    name, n = base, 1
    while (root / "labelsTr" / f"{name}.nii.gz").exists() or (root / "imagesTr" / f"{name}_0000.nii.gz").exists():
        n += 1
        name = f"{base}_{n}"
    result = Case(name, root / "imagesTr" / f"{name}_0000.nii.gz", root / "labelsTr" / f"{name}.nii.gz")
    save_image(scan, result.image)
    try:
        save_mask(labels, scan, result.label)
    except BaseException:
        result.image.unlink(missing_ok=True)  # no half-added case
        raise
    if isinstance(meta.get("training"), list):
        meta["training"].append({"image": f"./imagesTr/{result.image.name}",
                                 "label": f"./labelsTr/{result.label.name}"})
    return result


def _slices_record(labelled: Mapping[str, Iterable[int]], scan) -> dict[str, list[int]]:
    """``labelled`` as reason -> sorted slice list, checked against the scan's axial slices."""
    depth = axial_depth(scan)
    record = {str(reason): sorted({int(k) for k in ks}) for reason, ks in labelled.items()}
    every = sorted({k for ks in record.values() for k in ks})
    if not every:
        raise MedsegError(f"{scan.source}: no slice is labelled: correct (paint) some slices or mark them reviewed "
                          f"first; only those are added for training")
    bad = [k for k in every if not 0 <= k < depth]
    if bad:
        raise MedsegError(f"{scan.source}: labelled slices {bad[:5]} outside the scan's {depth} axial slices")
    return {reason: ks for reason, ks in record.items() if ks}


def axial_depth(scan) -> int:
    """The number of axial slices of a scan (its RAS view's third axis)."""
    return int(canonical_view(np.broadcast_to(np.zeros((), np.uint8), scan.shape), scan.affine, "RAS")[0].shape[2])


def _ignore_other_slices(labels: np.ndarray, scan, keep: list[int], ignore: int) -> np.ndarray:
    """``labels`` with every axial slice not in ``keep`` set to ``ignore`` (in the scan's own axis order)."""
    from .labels import label_dtype

    out = np.array(labels, dtype=np.promote_types(label_dtype(np.asarray([ignore])), np.asarray(labels).dtype))
    view, _ = canonical_view(out, scan.affine, "RAS")  # a view: writing it writes ``out``
    drop = np.ones(view.shape[2], dtype=bool)
    drop[keep] = False
    view[:, :, drop] = ignore
    return out


def _record(meta: dict, case: str, record: dict[str, list[int]] | None) -> None:
    """dataset.json's ``labelled_slices`` entry of ``case``: set, or removed when the case is labelled whole."""
    records = meta.get(RECORD) if isinstance(meta.get(RECORD), dict) else {}
    if record is None:
        records.pop(case, None)
    else:
        records[case] = {"axis": AXIS_NOTE, **record}
    if records:
        meta[RECORD] = records
    else:
        meta.pop(RECORD, None)


def _dataset_meta_for(root: Path, scan, label_names: dict[str, int], modality: str | None) -> tuple[dict, str]:
    """The folder's dataset.json (``{}`` when none) and the modality, refused when either disagrees with the new case."""
    meta_path = root / "dataset.json"
    meta: dict = read_dataset_json(meta_path) if meta_path.exists() else {}
    existing, _ = split_ignore(read_labels(meta, meta_path))
    mine, _ = split_ignore(label_names)
    if existing and existing != mine:
        raise MedsegError(f"{meta_path}: the dataset's labels {existing} differ from this mask's {mine}")
    mod = (modality or scan.modality or read_modality(meta) or "CT").upper()
    if read_modality(meta) not in (None, mod):
        raise MedsegError(f"{meta_path}: the dataset is {read_modality(meta)} but this scan is {mod}")
    return meta, mod


def find_same_case(dataset_dir: str | Path, scan, base: str) -> tuple[Scan, Case] | None:
    """The dataset's case whose image is ``scan`` (same voxel grid, same voxel values), with that image read.

    Only cases named ``base`` or a numbered variant (``base_2``, ...) are candidates; a NIfTI
    image whose header gives another grid is passed over without reading its voxels, so a check
    costs at most a read of the few candidates that lie on the scan's grid. None when no case holds it.
    """
    named = re.compile(rf"{re.escape(base)}(_\d+)?")
    for found in index_dataset(dataset_dir).cases:
        if not named.fullmatch(found.name) or not _may_hold(found.image, scan):
            continue
        try:
            image = load_scan(found.image)
        except MedsegError:
            continue  # an unreadable image is check_dataset's to report, not a match
        if grid_mismatch(image, scan) is None and np.array_equal(array_on_grid_of(image, scan), image.array):
            return image, found
    return None


def _may_hold(image_path: Path, scan) -> bool:
    """False when a NIfTI image's header alone shows a grid other than the scan's (no voxels read)."""
    if not image_path.name.lower().endswith(NIFTI_SUFFIXES):
        return True
    try:
        img = nib.load(str(image_path))
        shape = tuple(int(n) for n in img.shape)
        if len(shape) > 3 and all(n == 1 for n in shape[3:]):
            shape = shape[:3]
        if len(shape) != 3 or sorted(shape) != sorted(scan.shape):
            return False
        header_only = Scan(np.broadcast_to(np.zeros((), np.uint8), shape), np.asarray(img.affine, float), image_path)
        return grid_mismatch(scan, header_only) is None
    except Exception:  # noqa: BLE001 - a header nibabel cannot read is left to load_scan to judge
        return True


