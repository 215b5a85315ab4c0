"""Per-case, per-label Dice and HD95 of predicted label maps against reference label maps.

Two entry points, one result (:class:`Evaluation`):

- :func:`evaluate_folders` pairs the files of a prediction folder with those of a reference
  folder by case name (extensions and an nnU-Net ``_0000`` channel suffix stripped);
- :func:`evaluate_model` segments every case of a dataset with a model bundle and scores the
  result against the case's label map.

A problem with one case (unreadable file, grid mismatch, unknown label value, a reference
without a prediction or the reverse) becomes a failure row and evaluation goes on.
:meth:`Evaluation.write` writes ``evaluation.csv`` (one row per case and label) and
``evaluation.json`` (cases, summary, failures), atomically.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .data import find_cases, read_labels, read_modality
from .errors import MedsegError
from .geometry import array_on_grid_of, grid_mismatch
from .io import NIFTI_SUFFIXES, SITK_SUFFIXES, Scan, load_scan
from .labels import check_label_map, split_ignore
from .metrics import label_metrics, label_volumes_ml
from .naming import case_name
from .reports import write_csv, write_json
from .schema import read_json_object

Progress = Callable[[int, int], None]

CSV_NAME = "evaluation.csv"
JSON_NAME = "evaluation.json"
COLUMNS = ("case", "label", "value", "dice", "hd95", "pred_ml", "ref_ml")


@dataclass
class Evaluation:
    """Scores of an evaluation run.

    ``rows``: one dict per case and label (background excluded) with ``case``, ``label``,
    ``value``, ``dice``, ``hd95`` (mm; NaN where undefined: label absent from one side, or HD95
    not computed), ``pred_ml`` and ``ref_ml``. Dice is NaN where the label is absent from both
    the prediction and the reference. ``failures``: one dict per case that could not be scored,
    with ``case`` and ``error``. ``labels``: name -> value of the labels scored.
    """

    rows: list[dict] = field(default_factory=list)
    failures: list[dict] = field(default_factory=list)
    labels: dict[str, int] = field(default_factory=dict)

    @property
    def cases(self) -> list[str]:
        """Names of the cases scored, in row order."""
        return list(dict.fromkeys(r["case"] for r in self.rows))

    def summary(self) -> dict[str, dict[str, float]]:
        """Per label: ``mean_dice``, ``std_dice`` (population SD), ``mean_hd95``, ``n``, ``n_hd95``.

        A case where the label is absent from both prediction and reference (Dice NaN) is left
        out of that label's statistics; ``n`` counts the cases that remain. ``mean_hd95``
        averages the ``n_hd95`` cases whose HD95 is defined (label present on both sides), so
        it can rest on fewer cases than the Dice.
        """
        out: dict[str, dict[str, float]] = {}
        for name, value in sorted(self.labels.items(), key=lambda kv: kv[1]):
            if value == 0:
                continue
            dice = np.array([r["dice"] for r in self.rows if r["label"] == name and not math.isnan(r["dice"])])
            hd = np.array(
                [r["hd95"] for r in self.rows if r["label"] == name and not math.isnan(r["dice"]) and math.isfinite(r["hd95"])]
            )
            out[name] = {
                "mean_dice": float(dice.mean()) if dice.size else math.nan,
                "std_dice": float(dice.std()) if dice.size else math.nan,
                "mean_hd95": float(hd.mean()) if hd.size else math.nan,
                "n": int(dice.size),
                "n_hd95": int(hd.size),
            }
        return out

    def mean_dice(self) -> float:
        """Mean over labels of each label's mean Dice (labels never present are left out)."""
        means = [s["mean_dice"] for s in self.summary().values() if s["n"] > 0]
        return float(np.mean(means)) if means else math.nan

    def to_dict(self) -> dict[str, Any]:
        """The JSON report: labels, per-case scores, summary, failures (NaN kept as float NaN)."""
        cases: dict[str, dict[str, Any]] = {}
        for r in self.rows:
            entry = cases.setdefault(r["case"], {"case": r["case"], "labels": {}})
            entry["labels"][r["label"]] = {k: r[k] for k in COLUMNS[2:]}
        return {
            "labels": dict(self.labels),
            "mean_dice": self.mean_dice(),
            "summary": self.summary(),
            "cases": list(cases.values()),
            "failures": list(self.failures),
        }

    def write(self, out_dir: str | os.PathLike) -> tuple[Path, Path]:
        """Write ``evaluation.csv`` and ``evaluation.json`` into ``out_dir``; return their paths.

        NaN becomes an empty CSV cell and ``null`` in JSON. Each file is written to a temporary
        file in ``out_dir`` and then renamed, so a reader never sees half a report.
        """
        out = Path(out_dir)
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise MedsegError(f"{out}: cannot create the output folder ({exc.strerror or exc})") from None
        csv_path = write_csv(out / CSV_NAME, self.rows, COLUMNS, digits=6)
        json_path = write_json(out / JSON_NAME, self.to_dict())
        return csv_path, json_path


# ---------------------------------------------------------------------------------------------- one pair


def checked_label_map(array: np.ndarray, source, labels: dict[str, int] | None = None) -> np.ndarray:
    """The label-map check of ``evaluate`` and ``segment --reference`` (:func:`~medseg.labels.check_label_map`
    with the labels scored): a scan given as a label map (the CT itself) fails here, naming ``source``."""
    return check_label_map(array, source, labels, declared_in="among the labels scored",
                           hint="not a label map of this model?")


def evaluate_pair(
    pred: Scan, ref: Scan, labels: dict[str, int] | None, hd95: bool = True, case: str | None = None,
    ignore: int | None = None,
) -> list[dict]:
    """Rows (one per label, background excluded) scoring ``pred`` against ``ref``.

    ``pred`` may store the grid in another axis order or with flips; a shifted, cropped or
    resampled grid is an error. Distances use the reference's voxel spacing. ``labels`` is
    name -> value; a value in either file that it does not declare is an error naming the
    file. ``labels=None`` scores every non-zero value present, named by its number.
    ``case`` defaults to the reference's file name without extensions. ``ignore``: the value of
    the reference's unlabelled voxels (a sparse reference, nnU-Net's ``ignore`` label); they are
    scored as nothing, and volumes count the labelled voxels only.
    """
    why = grid_mismatch(ref, pred)
    if why is not None:
        raise MedsegError(f"{pred.source}: {why} of its reference {ref.source.name}")
    p = checked_label_map(array_on_grid_of(ref, pred), pred.source, labels)
    declared = None if labels is None or ignore is None else {**labels, "ignore": ignore}
    r = checked_label_map(ref.array, ref.source, declared or labels)
    if ignore is not None:
        p = np.where(r == ignore, 0, p)
        r = np.where(r == ignore, 0, r)  # nothing predicted there now: no structure is scored there
    vml = ref.voxel_volume_ml
    pred_ml, ref_ml = label_volumes_ml(p, vml), label_volumes_ml(r, vml)  # keys: str(value)
    if labels is None:
        labels = {str(v): v for v in sorted({int(k) for k in (*pred_ml, *ref_ml)})}
    scores = label_metrics(p, r, labels, spacing=ref.spacing, hd95=hd95)
    name = case if case is not None else _case_key(ref.source)
    rows = []
    for label, value in sorted(labels.items(), key=lambda kv: kv[1]):
        if value == 0:
            continue
        m = scores[label]
        rows.append(
            {
                "case": name,
                "label": label,
                "value": int(value),
                "dice": float(m["dice"]),
                "hd95": float(m.get("hd95", math.nan)),
                "pred_ml": pred_ml.get(str(value), 0.0),
                "ref_ml": ref_ml.get(str(value), 0.0),
            }
        )
    return rows


# ---------------------------------------------------------------------------------------------- folders


def _case_key(path: Path) -> str:
    """Case name of a label-map file: extensions and an nnU-Net ``_0000`` channel suffix removed."""
    return case_name(path, channel=True)


def _label_files(folder: Path) -> list[Path]:
    """Visible NIfTI/NRRD/MHA files of a folder (reports, dataset.json and the like are skipped)."""
    suffixes = NIFTI_SUFFIXES + SITK_SUFFIXES
    return [
        p
        for p in sorted(folder.iterdir())
        if p.is_file() and not p.name.startswith((".", "_")) and p.name.lower().endswith(suffixes)
    ]


def _by_case(files: list[Path], failures: list[dict]) -> tuple[dict[str, Path], set[str]]:
    """Files by case name, and the names claimed by several files (each reported as a failure)."""
    groups: dict[str, list[Path]] = {}
    for p in files:
        groups.setdefault(_case_key(p), []).append(p)
    out, ambiguous = {}, set()
    for case, paths in groups.items():
        if len(paths) == 1:
            out[case] = paths[0]
        else:
            ambiguous.add(case)
            names = ", ".join(p.name for p in paths)
            failures.append({"case": case, "error": f"{paths[0].parent}: several files for case {case} ({names})"})
    return out, ambiguous


def _dataset_labels(ref_dir: Path) -> dict[str, int] | None:
    """Labels of a ``dataset.json`` in ``ref_dir`` or its parent, if there is one."""
    for meta_path in (ref_dir / "dataset.json", ref_dir.parent / "dataset.json"):
        if meta_path.is_file():
            labels = read_labels(read_json_object(meta_path, "dataset.json"), meta_path)
            if labels:
                return labels
    return None


def evaluate_folders(
    pred_dir: str | os.PathLike,
    ref_dir: str | os.PathLike,
    labels: dict[str, int] | None = None,
    hd95: bool = True,
    progress: Progress | None = None,
) -> Evaluation:
    """Score every prediction in ``pred_dir`` against the reference of the same case in ``ref_dir``.

    ``ref_dir`` may also be a dataset root whose ``labelsTr/`` holds the references. Labels:
    ``labels`` if given, else the ``dataset.json`` in ``ref_dir`` or its parent, else every
    non-zero value found, named by its number. Unpaired files and per-case errors become
    failures; having no pair at all is an error.
    """
    pred_dir, ref_dir = Path(pred_dir), Path(ref_dir)
    for folder in (pred_dir, ref_dir):
        if not folder.is_dir():
            raise MedsegError(f"{folder}: not a folder")
    ref_files = _label_files(ref_dir)
    if not ref_files and (ref_dir / "labelsTr").is_dir():
        ref_files = _label_files(ref_dir / "labelsTr")
    ignore = None
    if labels is None:
        labels, ignore = split_ignore(_dataset_labels(ref_dir) or {})
        labels = labels or None
    failures: list[dict] = []
    preds, pred_dups = _by_case(_label_files(pred_dir), failures)
    refs, ref_dups = _by_case(ref_files, failures)
    for case in sorted(set(refs) - set(preds) - pred_dups):
        failures.append({"case": case, "error": f"{refs[case]}: no prediction for this case in {pred_dir}"})
    for case in sorted(set(preds) - set(refs) - ref_dups):
        failures.append({"case": case, "error": f"{preds[case]}: no reference for this case in {ref_dir}"})
    cases = sorted(set(preds) & set(refs))
    if not cases:
        raise MedsegError(
            f"{pred_dir}: no prediction matches a reference in {ref_dir} "
            f"({len(preds)} prediction(s), {len(refs)} reference(s); files are paired by case name)"
        )
    rows: list[dict] = []
    scored: list[str] = []
    for i, case in enumerate(cases):
        try:
            rows += evaluate_pair(load_scan(preds[case]), load_scan(refs[case]), labels, hd95=hd95, case=case,
                                  ignore=ignore)
            scored.append(case)
        except MedsegError as exc:
            failures.append({"case": case, "error": str(exc)})
        if progress is not None:
            progress(i + 1, len(cases))
    if labels is None:  # values found: name each by its number, fill cases where it is absent on both sides
        labels = {str(v): v for v in sorted({r["value"] for r in rows})}
        rows = _fill_absent(rows, scored, labels)
    failures.sort(key=lambda f: f["case"])
    return Evaluation(rows=rows, failures=failures, labels=dict(labels))


def _fill_absent(rows: list[dict], cases: list[str], labels: dict[str, int]) -> list[dict]:
    """Rows for every case x label, a label missing from a case counted as absent from both sides."""
    have = {(r["case"], r["value"]): r for r in rows}
    out = []
    for case in cases:
        for name, value in labels.items():
            out.append(
                have.get(
                    (case, value),
                    {"case": case, "label": name, "value": value, "dice": math.nan, "hd95": math.nan, "pred_ml": 0.0, "ref_ml": 0.0},
                )
            )
    return out


# ---------------------------------------------------------------------------------------------- model


def _check_label_names(dataset: dict[str, int], model: dict[str, int], where: Path, model_name: str) -> None:
    """Refuse a dataset whose labels use a name or value the model uses for something else."""
    by_value = {v: k for k, v in model.items()}
    for name, value in dataset.items():
        if name in model and model[name] != value:
            raise MedsegError(f"{where}: label '{name}' is {value} here but {model[name]} for the model '{model_name}'")
        if value in by_value and by_value[value] != name:
            raise MedsegError(
                f"{where}: label value {value} is '{name}' here but '{by_value[value]}' for the model '{model_name}'"
            )


def evaluate_model(
    bundle,
    dataset_dir: str | os.PathLike,
    device: str = "cpu",
    hd95: bool = True,
    progress: Progress | None = None,
) -> Evaluation:
    """Segment every case of a dataset with ``bundle`` and score it against the case's label map.

    ``bundle`` is a :class:`~medseg.bundle.Bundle` or a bundle folder; labels are the model
    card's. The dataset is read with :func:`~medseg.data.find_cases` (MSD / nnU-Net layout).
    """
    from .bundle import Bundle, load_bundle
    from .inference import Predictor, resolve_device

    dev = resolve_device(device)
    if not isinstance(bundle, Bundle):
        bundle = load_bundle(bundle, device=dev)
    cases, meta = find_cases(dataset_dir)
    labels = dict(bundle.card.labels)
    structures, ignore = split_ignore(read_labels(meta))
    _check_label_names(structures, labels, Path(dataset_dir) / "dataset.json", bundle.card.name)
    modality = read_modality(meta)
    predictor = Predictor(bundle, dev)
    rows: list[dict] = []
    failures: list[dict] = []
    for i, case in enumerate(cases):
        try:
            image = load_scan(case.image, modality=modality)
            ref = load_scan(case.label)
            why = grid_mismatch(ref, image)  # checked before the (slow) segmentation
            if why is not None:
                raise MedsegError(f"{case.image}: {why} of its reference {ref.source.name}")
            pred = Scan(array=predictor.predict_scan(image), affine=image.affine, source=case.image)
            rows += evaluate_pair(pred, ref, labels, hd95=hd95, case=case.name, ignore=ignore)
        except MedsegError as exc:
            failures.append({"case": case.name, "error": str(exc)})
        if progress is not None:
            progress(i + 1, len(cases))
    return Evaluation(rows=rows, failures=failures, labels=labels)


__all__ = ["Evaluation", "evaluate_folders", "evaluate_model", "evaluate_pair"]
