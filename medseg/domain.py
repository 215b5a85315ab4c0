"""Is this scan inside the model's domain? Warnings before (and after) segmenting, and what the
model card says the model was trained on.

A model only knows the data it was trained on: the bundled one has seen synthetic abdominal
CT phantoms (four contrast phases, lung bases to pelvis) and nothing else. :func:`domain_warnings` compares a scan with its
model card and returns one line per problem, each naming the scan file:

- **modality**: a scan whose modality is known (DICOM) and differs from the card's; a scan of
  unknown modality (NIfTI) whose values do not look like the card's modality
  (:func:`medseg.intensity.looks_like_ct`), e.g. an MR volume given to a CT model;
- **intensities**: the warnings (and refusals, as warnings) of
  :func:`medseg.intensity.check_scan_intensities`, which compares with the card's ``intensity_range``;
- **field of view**: the scan's physical extent along R-L, A-P or I-S far outside the
  ``training_data.field_of_view_mm`` range (a head, a thin slab, a whole-body scan);
- **voxel spacing**: far outside ``training_data.spacing_mm``;
- **contrast phase**: a series description that names a phase (:func:`described_phase`: "NC",
  "arterial", "portal venous", "delayed", ...) the card's training data did not cover
  (``training_data.phantom_styles.phase`` or ``training_data.phase``).

Cards without ``training_data`` get the modality and intensity checks only. Nothing here copies
the volume: geometry comes from the affine, values from the strided samples of medseg.intensity.

Tolerances (ratios to the training range, chosen so that ordinary clinical scans of the trained
region pass and only scans of another kind warn):

- in-plane field of view, factor 1.5: body CT is reconstructed at 300-500 mm, inside
  [min/1.5, max*1.5] for a ~380 mm training FOV; a head (~250 mm and less) or a limb is not;
- superior-inferior extent, factor 2: the network sees one slice (and its neighbours) at a
  time, so the extent only says how much of the scan is anatomy it has seen; half the trained
  coverage to twice it (about 100-480 mm for the bundled model) is a partial or an extended
  abdomen, while a slab of a few centimetres or a whole body (1-2 m) is mostly something else;
- spacing, factor 3: slices are resampled in-plane to the model's spacing, but detail below a
  much coarser spacing is lost, and 3x finer or coarser than anything trained on changes what the
  network sees. Along z, a card with ``context_mm`` takes its context slices about that far apart
  whatever the slice spacing, so thin slices are judged by the distance between the slices the
  network is given (0.5 mm slices, context 3 mm: every 6th slice, 3 mm), not by their own spacing.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from .bundle import ModelCard
from .errors import MedsegError
from .geometry import canonical_grid
from .intensity import check_scan_intensities, looks_like_ct

AXES = ("right-left", "anterior-posterior", "inferior-superior")
FOV_FACTOR = (1.5, 1.5, 2.0)  # per canonical axis R-L, A-P, I-S
SPACING_FACTOR = 3.0


def canonical_extent(affine: np.ndarray, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Field of view (number of voxels x voxel size, mm) and voxel size (mm) of a grid along the
    R-L, A-P and I-S axes (the file's axes matched to the nearest anatomical axis)."""
    canon_shape, canon_affine = canonical_grid(np.asarray(affine, dtype=float), tuple(shape[:3]))
    spacing = np.sqrt((canon_affine[:3, :3] ** 2).sum(axis=0))
    return np.asarray(canon_shape, dtype=float) * spacing, spacing


def domain_warnings(scan, card: ModelCard) -> list[str]:
    """One-line warnings, each naming the scan's file, for every way ``scan`` lies outside what
    ``card`` says its model was trained on (modality, intensities, field of view, spacing).
    An empty list: nothing the card knows of is out of range."""
    where = scan.source
    warnings = _modality_warnings(scan, card)
    try:
        warnings += check_scan_intensities(scan, card)
    except MedsegError as exc:  # segment() refuses these; here the reason is one more warning
        warnings.append(str(exc))
    data = card.training_data or {}
    fov, spacing = canonical_extent(scan.affine, scan.shape)
    for key, values, factor, what in (
        ("field_of_view_mm", fov, FOV_FACTOR, "field of view"),
        ("spacing_mm", spacing, (SPACING_FACTOR,) * 3, "voxel spacing"),
    ):
        if key in data:
            checked = _context_distances(card, values, data[key]) if key == "spacing_mm" else None
            warnings += _range_warnings(where, card, what, values, data[key], factor, checked)
    return warnings + _phase_warnings(scan, card)


# Words a series description uses for each contrast phase (DICOM SeriesDescription, any case).
_PHASE_PHRASES = {
    "non-contrast": ("non-contrast", "noncontrast", "non contrast", "without contrast", "w/o contrast", "unenhanced",
                     "native", "nativ", "plain", "nc", "sin contraste", "ohne km"),
    "arterial": ("arterial", "arteriell", "art", "cta", "angio"),
    "portal-venous": ("portal", "portal venous", "portal-venous", "venous", "pv", "pvp", "ven"),
    "delayed": ("delayed", "delay", "late", "excretory", "urographic", "nephrographic"),
}


def described_phase(text: str) -> str | None:
    """The contrast phase a series description names (one of medseg.phantom_domain.PHASES), or None
    when it names none or several."""
    low = f" {' '.join(text.lower().replace('_', ' ').split())} "
    words = set(low.split())
    hits = {phase for phase, phrases in _PHASE_PHRASES.items()
            if any((f" {p} " in low) if " " in p else (p in words) for p in phrases)}
    if "non-contrast" in hits:  # "non contrast venous" and the like: the negation decides
        return "non-contrast"
    return next(iter(hits)) if len(hits) == 1 else None


def trained_phases(card: ModelCard) -> list[str]:
    """The contrast phases the card's training data covered ([] when it does not say)."""
    data = card.training_data or {}
    styles = data.get("phantom_styles")
    if isinstance(styles, dict) and isinstance(styles.get("phase"), list):
        return [str(p) for p in styles["phase"]]
    text = data.get("phase")
    return [p.strip() for p in text.split(",") if p.strip()] if isinstance(text, str) else []


def _phase_warnings(scan, card: ModelCard) -> list[str]:
    have, trained = described_phase(getattr(scan, "description", "") or ""), trained_phases(card)
    if have is None or not trained or have in trained:
        return []
    return [f"{scan.source}: the series description '{scan.description}' says {have}, but the model '{card.name}' "
            f"was trained on {', '.join(trained)} CT only; the result may be wrong"]


def _modality_warnings(scan, card: ModelCard) -> list[str]:
    want = card.modality.upper()
    where, name = scan.source, card.name
    have = (scan.modality or "").strip().upper()
    if have:
        if have != want:
            return [f"{where}: the scan is {have} but the model '{name}' was trained on {want}; the result may be wrong"]
        return []
    ct_like = looks_like_ct(scan.array)
    if want == "CT" and not ct_like:
        return [
            f"{where}: the values do not look like CT in Hounsfield units (no air near -1000 HU or little soft "
            f"tissue): likely MR or another non-CT image, but the model '{name}' was trained on CT; the result may be wrong"
        ]
    if want == "MR" and ct_like:
        return [f"{where}: the values look like CT (Hounsfield units), not MR, but the model '{name}' was trained on MR; "
                "the result may be wrong"]
    return []


def _context_distances(card: ModelCard, spacing: np.ndarray, trained: dict) -> tuple[np.ndarray, list, list]:
    """The spacing as the network sees it (along I-S, the distance between its context slices) and
    the range of that over the trained spacings (each trained slice spacing from min to max taken
    with its own step), for :func:`_range_warnings`."""
    def seen(s: float) -> float:
        return s * card.context_step(s)

    lo, hi = float(trained["min"][2]), float(trained["max"][2])
    over = [seen(s) for s in np.linspace(lo, hi, 200)] if hi > lo else [seen(lo)]
    values = np.array([spacing[0], spacing[1], seen(float(spacing[2]))])
    return values, [*trained["min"][:2], min(over)], [*trained["max"][:2], max(over)]


def _range_warnings(where: Path, card: ModelCard, what: str, values: np.ndarray, trained: dict,
                    factor: tuple[float, ...], checked: tuple[np.ndarray, list, list] | None = None) -> list[str]:
    """One line when any axis of ``values`` (as reported) is far outside the ``trained`` min..max (by
    ``factor``); ``checked``, when given, is what is compared instead: (values, lows, highs)."""
    lows, highs = trained["min"], trained["max"]
    test, test_lows, test_highs = checked if checked is not None else (values, lows, highs)
    small = [axis for axis, v, lo, f in zip(AXES, test, test_lows, factor) if v < lo / f]
    large = [axis for axis, v, hi, f in zip(AXES, test, test_highs, factor) if v > hi * f]
    if not small and not large:
        return []
    how = "; ".join(f"far {side} along {', '.join(axes)}" for side, axes in (("smaller", small), ("larger", large)) if axes)
    have = " x ".join(_mm(v) for v in values)
    had = " x ".join(_span(lo, hi) for lo, hi in zip(lows, highs))
    return [
        f"{where}: {what} {have} mm (R-L x A-P x I-S) is {how} than the model '{card.name}' was trained on "
        f"({had} mm); another body region or resolution? the result may be wrong"
    ]


def _mm(value: float) -> str:
    return f"{value:.0f}" if value >= 20 else f"{value:.2g}"


def _span(lo: float, hi: float) -> str:
    return _mm(lo) if _mm(lo) == _mm(hi) else f"{_mm(lo)}-{_mm(hi)}"


def describe_training_data(card: ModelCard) -> str:
    """What the model was trained on, in a sentence or two for people (the widget, ``medseg info``)."""
    data = card.training_data or {}
    if not data:
        text = f"The model card of '{card.name}' does not say what it was trained on ({card.modality} model)."
    else:
        source = str(data.get("source") or data.get("dataset") or "data not described").rstrip(". ")
        count = f"{data['cases']} cases" if data.get("cases") else ""
        if count and data.get("validation_cases"):
            count += f" (+{data['validation_cases']} for validation)"
        text = f"Trained on {count} of {source}." if count else f"Trained on {source}."
        kind = [data.get("modality", card.modality)] + [data[k] for k in ("body_region", "phase") if data.get(k)]
        text += f" {', '.join(kind)}."
        sizes = [
            f"{what} {' x '.join(_span(lo, hi) for lo, hi in zip(data[key]['min'], data[key]['max']))} mm"
            for key, what in (("field_of_view_mm", "field of view"), ("spacing_mm", "voxel spacing"))
            if key in data
        ]
        if sizes:
            joined = ', '.join(sizes)
            text += f" {joined[0].upper()}{joined[1:]} (R-L x A-P x I-S)."
    if card.intensity_range is not None:
        unit = " HU" if card.modality.upper() == "CT" else ""
        lo, hi = card.intensity_range
        text += f" Intensities {lo:.0f} to {hi:.0f}{unit} (1-99 %)."
    return text


def training_data_of(cases: Iterable, val_cases: Iterable, modality: str, meta: dict[str, Any],
                     dataset: str) -> dict[str, Any]:
    """``training_data`` for a model card from its training cases (:class:`medseg.data.Case`): counts,
    modality, the dataset (folder name; its ``dataset.json`` description or name as the source),
    and the field of view and voxel spacing ranges over the training images (from their headers)."""
    cases, dataset = list(cases), dataset.strip() or "dataset"
    data: dict[str, Any] = {
        "source": str(meta.get("description") or meta.get("name") or dataset).strip() or dataset,
        "dataset": dataset,
        "cases": len(cases),
        "validation_cases": len({c.name for c in val_cases} - {c.name for c in cases}),
        "modality": modality,
    }
    for key in ("body_region", "phase"):
        if isinstance(meta.get(key), str) and meta[key].strip():
            data[key] = meta[key].strip()
    styles = meta.get("phantom_styles")
    if isinstance(styles, dict):  # phantoms: the knobs they were drawn with (medseg.phantom_domain)
        data["phantom_styles"] = _style_summary([styles[c.name] for c in cases if isinstance(styles.get(c.name), dict)])
    grids = [_image_grid(c.image) for c in cases]
    if grids:
        fov = np.array([g[0] for g in grids])
        spacing = np.array([g[1] for g in grids])
        data["field_of_view_mm"] = {"min": _rounded(fov.min(0)), "max": _rounded(fov.max(0))}
        data["spacing_mm"] = {"min": _rounded(spacing.min(0)), "max": _rounded(spacing.max(0))}
    return data


def _rounded(values: np.ndarray) -> list[float]:
    return [float(round(v, 3)) for v in values]


def _image_grid(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Field of view and spacing of a training image from its NIfTI header (no voxels read), or
    from the loaded scan for other formats."""
    name = Path(path).name.lower()
    if name.endswith((".nii", ".nii.gz")):
        import nibabel as nib

        try:
            img = nib.load(str(path))
            if len(img.shape) >= 3 and all(math.isfinite(v) for v in np.ravel(img.affine)):
                return canonical_extent(img.affine, img.shape)
        except Exception:  # noqa: BLE001 - the full reader gives the one-line reason
            pass
    from .io import load_scan

    scan = load_scan(path)
    return canonical_extent(scan.affine, scan.shape)


__all__ = ["domain_warnings", "describe_training_data", "training_data_of", "canonical_extent"]


def _style_summary(styles: list[dict[str, Any]]) -> dict[str, Any]:
    """The range of phantom knobs over the training cases: values seen, thickness span, counts."""
    thick = [float(s["thickness_mm"]) for s in styles if isinstance(s.get("thickness_mm"), (int, float))]
    return {
        "cases": len(styles),
        **{key: sorted({str(s.get(key)) for s in styles}) for key in ("phase", "noise", "arms", "field")},
        "thickness_mm": [min(thick), max(thick)] if thick else None,
        **{key: sum(bool(s.get(key)) for s in styles) for key in ("table", "liver_vessels", "perirenal_fat", "bowel_gas")},
    }
