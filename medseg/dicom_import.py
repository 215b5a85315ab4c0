"""A hospital's DICOM studies (image series with their RTSTRUCT / SEG annotations) as a training dataset.

:func:`import_dicom` walks a folder tree once, groups the image series (CT, MR) and the label
objects, pairs each RTSTRUCT and SEG with the series it references (ReferencedSeriesInstanceUID,
else a FrameOfReferenceUID that one series alone has), rasterises or maps the label object on the
series' own slice grid (:mod:`medseg.rtstruct`, :mod:`medseg.dicom_seg`), names the structures
through a ROI map and writes the nnU-Net v2 / MSD layout that ``medseg train`` reads, plus a report
of every series and label object: which ROIs were used, skipped or missing, and why.

The ROI map is JSON, ``{"liver": ["liver", "liver_total"], "spleen": ["spleen"]}``: label values
follow its order (liver 1, spleen 2); ROI and segment names match case-insensitively, with spaces,
underscores and hyphens alike. Where structures overlap, a later label wins (list a tumour after
its organ). The dataset appears whole or not at all: it is built in a hidden folder beside
``dataset_dir`` and renamed when done.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from .curation import add_case
from .data import read_dataset_json, write_dataset_json
from .dicom import DicomSeries, _folder_files, _read_series, _scan_folder
from .dicom_files import quiet_pydicom
from .dicom_grid import SliceGrid, decode_slices, grid_of_series
from .dicom_grid import regularize as onto_regular_grid
from .dicom_seg import read_seg
from .errors import MedsegError
from .reports import write_csv
from .rtstruct import Structures, read_rtstruct
from .scan import Scan

KINDS = ("SEG", "RTSTRUCT")
REPORT = "import_report.csv"
COLUMNS = ("series_uid", "patient_id", "modality", "description", "folder", "slices", "status", "case", "label_object",
           "kind", "used", "missing", "unmatched", "notes")


@dataclass
class LabelObject:
    path: Path
    kind: str  # SEG or RTSTRUCT
    series_uids: set[str]
    frame_uid: str
    when: str  # content date and time, to choose the newest of several


@dataclass
class ImportResult:
    dataset_dir: Path
    rows: list[dict] = field(default_factory=list)

    def count(self, status: str) -> int:
        return sum(r["status"] == status for r in self.rows)


def _key(name: str) -> str:
    return re.sub(r"[\s_\-]+", " ", str(name)).strip().casefold()


def read_roi_map(path: str | os.PathLike) -> dict[str, list[str]]:
    """label name -> the ROI / segment names that mean it, in label order; a one-line error otherwise."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise MedsegError(f"{path}: cannot read the ROI map ({exc.strerror or exc})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise MedsegError(f"{path}: the ROI map is not valid JSON ({exc})") from None
    if not isinstance(data, dict) or not data:
        raise MedsegError(f'{path}: the ROI map must be a JSON object of label -> ROI names, e.g. {{"liver": ["liver"]}}')
    out: dict[str, list[str]] = {}
    claimed: dict[str, str] = {}
    for label, names in data.items():
        names = [names] if isinstance(names, str) else names
        if _key(label) in ("background", "ignore") or not label.strip():
            raise MedsegError(f"{path}: '{label}' cannot be a label of the ROI map (background and ignore are implied)")
        if not isinstance(names, list) or not names or not all(isinstance(n, str) and n.strip() for n in names):
            raise MedsegError(f"{path}: label '{label}' must map to a non-empty list of ROI names")
        for n in names:
            if claimed.setdefault(_key(n), label) != label:
                raise MedsegError(f"{path}: ROI name '{n}' is mapped to both '{claimed[_key(n)]}' and '{label}'")
        out[label] = list(names)
    return out


def find_label_objects(src: Path) -> list[LabelObject]:
    """Every RTSTRUCT and SEG under ``src``, with the series and frame of reference they reference."""
    from pydicom import dcmread

    found = []
    for path in _folder_files(src):
        with quiet_pydicom():
            try:
                ds = dcmread(path, stop_before_pixels=True)
            except Exception:
                continue  # not DICOM: the image scan names such files
            kind = str(ds.get("Modality", "")).upper()
            if kind in KINDS:
                found.append(_label_object(path, kind, ds))
    return found


def _label_object(path: Path, kind: str, ds) -> LabelObject:
    series: set[str] = set()
    frame = str(ds.get("FrameOfReferenceUID", "") or "")
    for ref in ds.get("ReferencedSeriesSequence", []):  # SEG
        series.add(str(ref.get("SeriesInstanceUID", "")))
    for fr in ds.get("ReferencedFrameOfReferenceSequence", []):  # RTSTRUCT
        frame = frame or str(fr.get("FrameOfReferenceUID", "") or "")
        for study in fr.get("RTReferencedStudySequence", []):
            for ref in study.get("RTReferencedSeriesSequence", []):
                series.add(str(ref.get("SeriesInstanceUID", "")))
    series.discard("")
    when = f"{ds.get('StructureSetDate', '') or ds.get('ContentDate', '') or ds.get('SeriesDate', '')}" \
           f"{ds.get('StructureSetTime', '') or ds.get('ContentTime', '') or ds.get('SeriesTime', '')}"
    return LabelObject(path, kind, series, frame, str(when))


def pair(series: dict[str, DicomSeries], objects: list[LabelObject], frame_of: Callable[[str], str]):
    """series UID -> its label objects, and the (object, reason) pairs that reference no series here."""
    paired: dict[str, list[LabelObject]] = {}
    lost: list[tuple[LabelObject, str]] = []
    frames: dict[str, list[str]] | None = None
    for obj in objects:
        uids = [u for u in sorted(obj.series_uids) if u in series]
        if not uids and obj.frame_uid:
            if frames is None:
                frames = {}
                for uid in series:
                    frames.setdefault(frame_of(uid), []).append(uid)
            uids = frames.get(obj.frame_uid, [])
            if len(uids) > 1:
                lost.append((obj, f"references no series here, and {len(uids)} series share its frame of reference "
                                  f"{obj.frame_uid}"))
                continue
        if not uids:
            refs = ", ".join(sorted(obj.series_uids)) or "none"
            lost.append((obj, f"references series {refs}, not found under the source folder"))
            continue
        for uid in uids:
            paired.setdefault(uid, []).append(obj)
    return paired, lost


def choose(objects: list[LabelObject], prefer: str) -> tuple[list[LabelObject], list[str]]:
    """A series' label objects in the order to try them (the preferred kind, then the newest), and notes."""
    prefer = prefer.upper().replace("DICOM-", "")
    ranked = sorted(objects, key=lambda o: (o.kind == prefer, o.when, str(o.path)), reverse=True)
    notes = []
    kinds = {o.kind for o in objects}
    if len(kinds) > 1:
        notes.append(f"has both SEG and RTSTRUCT: used {ranked[0].kind} (--prefer {prefer.lower()})")
    if len(objects) > len(kinds):
        notes.append(f"{len(objects)} label objects: used the newest {ranked[0].kind}; ignored "
                     + ", ".join(o.path.name for o in ranked[1:]))
    return ranked, notes


def map_structures(structures: Structures, roi_map: dict[str, list[str]], grid: SliceGrid):
    """Label map on ``grid`` (values in ROI-map order, later labels over earlier), and what was used,
    missing (labels with no ROI) and unmatched (ROIs no label names)."""
    by_key = {_key(n): label for label, names in roi_map.items() for n in names}
    labels = np.zeros(grid.shape, dtype=np.uint8 if len(roi_map) < 255 else np.uint16)
    used: dict[str, list[str]] = {}
    unmatched = []
    for name in structures.masks:
        label = by_key.get(_key(name))
        if label is None:
            unmatched.append(name)
        else:
            used.setdefault(label, []).append(name)
    for value, label in enumerate(roi_map, start=1):
        for name in used.get(label, []):
            labels[structures.masks[name]] = value
    missing = [label for label in roi_map if label not in used]
    return labels, used, missing, unmatched


def import_dicom(
    src: str | os.PathLike,
    dataset_dir: str | os.PathLike,
    roi_map: dict[str, list[str]],
    *,
    prefer: str = "seg",
    regularize: bool = False,
    progress: Callable[[str], None] | None = None,
) -> ImportResult:
    """Build a training dataset at ``dataset_dir`` (new or empty) from the DICOM studies under ``src``.

    Every image series and label object gets a row in ``import_report.csv`` (also returned):
    ``imported``, ``unlabelled`` (no SEG or RTSTRUCT references it), ``skipped`` (no ROI matches a
    label, or not CT/MR), ``failed`` (the reason: irregular spacing, contours on no slice, ...).
    Raises a one-line :class:`MedsegError` when nothing can be imported (then nothing is written).
    An irregularly spaced series fails (the label object is still placed slice by slice, but no
    regular volume holds it) unless ``regularize``: then image and labels are resampled onto a
    regular grid (:func:`medseg.dicom_grid.regularize`) and the report says so.
    """
    src, dataset_dir = Path(src), Path(dataset_dir)
    if prefer.lower().replace("dicom-", "") not in ("seg", "rtstruct"):
        raise MedsegError(f"--prefer {prefer}: choose seg or rtstruct")
    _check_target(src, dataset_dir)
    series, others, flat = _scan_folder(src)
    objects = find_label_objects(src)
    paired, lost = pair(series, objects, lambda uid: _frame_of(series[uid]))
    staging = dataset_dir.parent / f".{dataset_dir.name}.partial-{uuid.uuid4().hex[:8]}"
    result = ImportResult(dataset_dir)
    names = {label: value for value, label in enumerate(roi_map, start=1)}
    try:
        for uid, s in sorted(series.items(), key=lambda kv: str(kv[1].slices[0].path if kv[1].slices else kv[0])):
            if progress:
                progress(s.summary())
            result.rows.append(_import_one(s, paired.get(uid, []), roi_map, names, prefer, staging,
                                           not regularize))
        result.rows += [_object_row(obj, "failed", why) for obj, why in lost]
        result.rows += [dict(series_uid=uid, status="skipped", notes=f"not a volume: {f.problem_error().args[0]}")
                        for uid, f in flat.items()]
        if not result.count("imported"):
            first = next((r for r in result.rows if r["status"] in ("failed", "skipped")), None)
            why = f"; the first: {first['notes']}" if first else ""
            raise MedsegError(f"{src}: no series could be imported ({_tally(result)}){why}; nothing written")
        meta = read_dataset_json(staging / "dataset.json")
        meta["name"] = dataset_dir.name  # not the staging folder's
        meta["description"] = f"imported from DICOM by medseg import-dicom ({src.name})"
        write_dataset_json(staging, meta)
        write_csv(staging / REPORT, result.rows, COLUMNS)
        if dataset_dir.exists():
            dataset_dir.rmdir()  # empty, checked above
        os.replace(staging, dataset_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return result


def _tally(result: ImportResult) -> str:
    counts: dict[str, int] = {}
    for r in result.rows:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    return ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "no image series found"


def _check_target(src: Path, dataset_dir: Path) -> None:
    from .safety import is_inside

    if not src.is_dir():
        raise MedsegError(f"{src}: not a folder of DICOM studies")
    if is_inside(dataset_dir, src):
        raise MedsegError(f"{dataset_dir}: the dataset folder must not be inside the source folder {src}")
    if dataset_dir.exists() and (not dataset_dir.is_dir() or any(dataset_dir.iterdir())):
        raise MedsegError(f"{dataset_dir}: exists and is not an empty folder; choose a new dataset folder")
    try:
        dataset_dir.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise MedsegError(f"{dataset_dir.parent}: cannot create the folder ({exc.strerror or exc})") from None
    if not os.access(dataset_dir.parent, os.W_OK):
        raise MedsegError(f"{dataset_dir.parent}: not writable")


def _frame_of(s: DicomSeries) -> str:
    from pydicom import dcmread

    if not s.slices:
        return ""
    with quiet_pydicom():
        return str(dcmread(s.slices[0].path, stop_before_pixels=True).get("FrameOfReferenceUID", "") or "")


def _series_row(s: DicomSeries) -> dict:
    from pydicom import dcmread

    patient = ""
    if s.slices:
        with quiet_pydicom():
            patient = str(dcmread(s.slices[0].path, stop_before_pixels=True).get("PatientID", "") or "")
    members = [sl.path for sl in s.slices] + [p for p, _ in s.problems]
    folder = os.path.commonpath([str(p.parent) for p in members]) if members else ""
    return dict(series_uid=s.uid, patient_id=patient, modality=s.modality, description=s.description,
                folder=folder, slices=len(members))


def _object_row(obj: LabelObject, status: str, notes: str) -> dict:
    return dict(series_uid=";".join(sorted(obj.series_uids)), status=status, label_object=str(obj.path),
                kind=obj.kind, notes=notes)


def _import_one(s: DicomSeries, objects, roi_map, names, prefer: str, staging: Path, strict: bool) -> dict:
    row = _series_row(s)
    if not objects:
        return {**row, "status": "unlabelled", "notes": "no SEG or RTSTRUCT references this series"}
    ranked, notes = choose(objects, prefer)
    row.update(label_object=str(ranked[0].path), kind=ranked[0].kind)
    if s.modality not in ("CT", "MR"):
        return {**row, "status": "skipped", "notes": f"modality {s.modality or 'missing'}: CT or MR only"}
    try:
        scan, grid, resample = _scan_and_grid(Path(row["folder"]), s, strict)
        obj, structures = _first_readable(ranked, grid, notes)
        row.update(label_object=str(obj.path), kind=obj.kind)
        labels, used, missing, unmatched = map_structures(structures, roi_map, grid)
        row.update(used="; ".join(f"{lab}<-{'+'.join(rois)}" for lab, rois in used.items()),
                   missing="; ".join(missing), unmatched="; ".join(unmatched))
        notes += structures.notes
        if not used:
            return {**row, "status": "skipped", "notes": "; ".join(["no ROI matches a label of the ROI map", *notes])}
        if resample is not None:
            scan, labels, what = resample(labels)
            notes.append(what)
        case = re.sub(r"[^A-Za-z0-9]+", "_", f"{row['patient_id'] or 'case'}_{s.uid[-8:]}").strip("_")
        added = add_case(staging, scan, labels, {"background": 0, **names}, case=case, modality=s.modality)
        return {**row, "status": "imported", "case": added.name, "notes": "; ".join(notes)}
    except MedsegError as exc:
        return {**row, "status": "failed", "notes": "; ".join([str(exc), *notes])}


def _scan_and_grid(folder: Path, s: DicomSeries, strict: bool):
    """The series' volume (None for an irregular series unless ``strict``), its slice grid, and for such
    a series a function that resamples a label map and the volume onto a regular grid."""
    grid = grid_of_series(folder, s)
    if grid.regular or strict:
        try:
            scan = _read_series(folder, s)
        except MedsegError as exc:
            hint = " (import-dicom --regularize resamples such a series)" if "irregular slice spacing" in str(exc) else ""
            raise MedsegError(f"{exc}{hint}") from None
        if grid.shape != scan.shape or not np.allclose(grid.affine(), scan.affine, atol=1e-3):
            raise MedsegError(f"{folder}: series {s.uid}: the slice grid and the decoded volume disagree")
        return scan, grid, None
    image = decode_slices(grid)

    def resample(labels):
        array, labels, affine, what = onto_regular_grid(grid, image, labels)
        scan = Scan(array=array, affine=affine, source=folder, modality=s.modality, series_uid=s.uid,
                    description=s.description)
        return scan, labels, what

    return None, grid, resample


def _first_readable(ranked: list[LabelObject], grid: SliceGrid, notes: list[str]) -> tuple[LabelObject, Structures]:
    """The first label object that reads onto the grid (the others' failures noted); the first error if none does."""
    errors: list[MedsegError] = []
    for obj in ranked:
        try:
            structures = (read_seg if obj.kind == "SEG" else read_rtstruct)(obj.path, grid)
        except MedsegError as exc:
            errors.append(exc)
            continue
        notes += [f"{ranked[n].kind} not used: {e}" for n, e in enumerate(errors)]
        if errors:
            notes.append(f"used {obj.kind} {obj.path.name} instead")
        return obj, structures
    raise errors[0]


@dataclass
class SeriesLabels:
    """A label object of a series as a label map on its grid: ROI name -> value (the object's order)."""

    obj: LabelObject
    names: dict[str, int]
    labels: np.ndarray | None
    notes: list[str]
    error: str | None = None


def labels_of_series(folder: str | os.PathLike, series_uid: str) -> list[SeriesLabels]:
    """Every RTSTRUCT and SEG under ``folder`` that references series ``series_uid`` (by UID, else by
    its frame of reference), read onto the series' grid (``[column, row, slice]``, normal order); an
    object that cannot be read comes back with ``error`` set, the others still read."""
    folder = Path(folder)
    series, _, _ = _scan_folder(folder)
    if series_uid not in series:
        return []
    paired, _ = pair({series_uid: series[series_uid]}, find_label_objects(folder),
                     lambda uid: _frame_of(series[uid]))
    out = []
    grid = None
    for obj in sorted(paired.get(series_uid, []), key=lambda o: (o.kind, str(o.path))):
        try:
            grid = grid or grid_of_series(folder, series[series_uid])
            structures = (read_seg if obj.kind == "SEG" else read_rtstruct)(obj.path, grid)
            names = {name: value for value, name in enumerate(structures.masks, start=1)}
            labels, *_ = map_structures(structures, {name: [name] for name in names}, grid)
            out.append(SeriesLabels(obj, names, labels, structures.notes))
        except MedsegError as exc:
            out.append(SeriesLabels(obj, {}, None, [], str(exc)))
    return out


__all__ = ["ImportResult", "LabelObject", "SeriesLabels", "choose", "labels_of_series", "find_label_objects", "import_dicom", "map_structures",
           "pair", "read_roi_map"]
