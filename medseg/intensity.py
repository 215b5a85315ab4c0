"""Is this scan something the model can segment? Intensity checks before any prediction.

Garbage in must not come out as organs. :func:`check_scan_intensities` is called by
:func:`medseg.inference.segment` (so the CLI, ``batch``, ``evaluate --model``, training
validation and the napari widget all get it) and

- **refuses** a scan with no finite voxel (all NaN/inf), a scan without contrast (every finite
  voxel has one value), and a scan whose values are far outside any CT or MR range (for
  example a NIfTI ``scl_slope`` of 1e38);
- **warns** when the scan's robust intensity range lies outside the range the model was
  trained on (the model card's ``intensity_range``; for CT cards without one, the usual
  -1024..3071 HU of a CT scanner): a CT stored without its rescale intercept, an MR scan given
  to a CT model as an unlabelled NIfTI, a parametric map.

Non-finite voxels in an otherwise valid scan are allowed: inference treats them as the
background value (the low end of the model's intensity range), and :func:`intensity_summary`
counts them for ``medseg info``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import MedsegError

# Values below this are padding / outside the field of view in CT (-1024 HU is air; scanners
# pad with -2048, -3024 or -32768), clipped away by any CT window: left out of the statistics.
CT_PADDING_BELOW = -1024.0
# No CT scanner's (extended) Hounsfield scale reaches beyond these.
CT_PLAUSIBLE = (-35000.0, 70000.0)
# MR values are arbitrary units, but not astronomically large.
MR_PLAUSIBLE = (-1e8, 1e8)
# The range of a 12-bit CT scanner: the training range assumed for CT cards without one.
CT_TYPICAL = (-1024.0, 3071.0)
# Percentiles (%) that describe a scan's robust range.
ROBUST = (1.0, 99.0)
# How far (as a fraction of the training range's width) a scan may reach beyond it unwarned.
MARGIN = 0.5

_SAMPLE_VOXELS = 1_000_000  # a strided sample: percentiles to well under 1 % of the range


@dataclass
class IntensitySummary:
    """Value statistics of a scan (finite voxels only)."""

    voxels: int
    nonfinite: int
    minimum: float
    maximum: float
    low: float  # ROBUST[0] percentile
    high: float  # ROBUST[1] percentile

    @property
    def finite(self) -> int:
        return self.voxels - self.nonfinite

    def describe(self) -> str:
        if self.finite == 0:
            return f"no finite values ({self.nonfinite} voxels are NaN or infinite)"
        text = f"{_fmt(self.minimum)} .. {_fmt(self.maximum)} (1-99 %: {_fmt(self.low)} .. {_fmt(self.high)})"
        if self.nonfinite:
            text += f"; {self.nonfinite} of {self.voxels} voxels are not finite (NaN/inf)"
        return text


def _fmt(value: float) -> str:
    return f"{value:.6g}"


def _sample(array: np.ndarray) -> np.ndarray:
    step = max(1, round((array.size / _SAMPLE_VOXELS) ** (1 / 3)))
    return np.asarray(array[::step, ::step, ::step] if array.ndim == 3 else array, dtype=np.float32).ravel()


def intensity_summary(array: np.ndarray, modality: str | None = None) -> IntensitySummary:
    """Counts, extremes and robust percentiles of ``array``'s finite values.

    For CT, percentiles leave out values below -1024 HU (padding outside the field of view).
    """
    arr = np.asarray(array)
    if arr.dtype.kind == "f":
        finite_mask = np.isfinite(arr)
        nonfinite = int(arr.size - np.count_nonzero(finite_mask))
        if nonfinite == arr.size:
            return IntensitySummary(int(arr.size), nonfinite, np.nan, np.nan, np.nan, np.nan)
        if nonfinite:
            finite = arr[finite_mask]
            lo, hi = float(finite.min()), float(finite.max())
        else:
            lo, hi = float(arr.min()), float(arr.max())
    else:
        nonfinite = 0
        if arr.size == 0:
            return IntensitySummary(0, 0, np.nan, np.nan, np.nan, np.nan)
        lo, hi = float(arr.min()), float(arr.max())
    sample = _sample(arr)
    if arr.dtype.kind == "f":
        sample = sample[np.isfinite(sample)]
    if (modality or "").upper() == "CT":
        inside = sample[sample >= CT_PADDING_BELOW]
        sample = inside if inside.size else sample
    if sample.size == 0:  # every sampled voxel was non-finite: fall back to the extremes
        plo, phi = lo, hi
    else:
        plo, phi = (float(v) for v in np.percentile(sample, ROBUST))
    return IntensitySummary(int(arr.size), nonfinite, lo, hi, plo, phi)


def looks_like_ct(array: np.ndarray) -> bool:
    """Whether a scan of unknown modality (a NIfTI says nothing) holds CT values in Hounsfield
    units: some air (at least 1 % of the voxels between -1100 and -900 HU, or scanner padding
    at -1024 and below), almost nothing above the 12-bit CT range, and at least a fifth of the
    rest between -200 and 300 HU (fat, water, soft tissue). MR magnitudes and z-scored MR are
    never around -1000; a phase image (values spread evenly over +-pi scaled) fails the last test.
    """
    sample = _sample(np.asarray(array))
    sample = sample[np.isfinite(sample)]
    if sample.size == 0:
        return False
    air = np.count_nonzero((sample >= -1100.0) & (sample <= -900.0)) / sample.size
    padding = np.count_nonzero(sample <= CT_PADDING_BELOW) / sample.size
    inside = sample[sample > CT_PADDING_BELOW]
    if inside.size == 0:
        return False
    top = float(np.percentile(inside, 99.0))
    tissue = np.count_nonzero((inside >= -200.0) & (inside <= 300.0)) / inside.size  # fat, water, soft tissue
    return bool((air >= 0.01 or padding >= 0.01) and top <= CT_TYPICAL[1] + 30.0 and tissue >= 0.2)


def expected_range(card) -> tuple[float, float] | None:
    """The raw intensity range a model was trained on, or None where it does not matter.

    The card's ``intensity_range`` when it has one; for a CT card without one, the typical CT
    range. MR models scale every scan by its own percentiles: no absolute range applies.
    """
    if card.intensity_range is not None:
        lo, hi = card.intensity_range
        return float(lo), float(hi)
    if card.modality.upper() == "CT":
        return CT_TYPICAL
    return None


def refuse_empty(s: IntensitySummary, where, consequence: str) -> None:
    """One-line :class:`MedsegError` for an image without content: no voxel, no finite voxel (all
    NaN/inf), or no contrast (one value everywhere). Inference and training both refuse these."""
    if s.voxels == 0:
        raise MedsegError(f"{where}: the image has no voxels; {consequence}")
    if s.finite == 0:
        raise MedsegError(f"{where}: no finite voxel values (all {s.voxels} are NaN or infinite); {consequence}")
    if s.maximum == s.minimum:
        raise MedsegError(f"{where}: no contrast (every finite voxel is {_fmt(s.minimum)}); {consequence}")


def check_scan_intensities(scan, card) -> list[str]:
    """Refuse scans no model can segment (one-line :class:`MedsegError` naming the scan); return
    warnings (one line each) for scans outside the model's training range."""
    modality = card.modality.upper()
    s = intensity_summary(scan.array, modality)
    where = scan.source
    refuse_empty(s, where, "nothing to segment")
    lo_ok, hi_ok = CT_PLAUSIBLE if modality == "CT" else MR_PLAUSIBLE
    if s.low < lo_ok or s.high > hi_ok:
        unit = "Hounsfield units" if modality == "CT" else "MR intensities"
        raise MedsegError(
            f"{where}: values {_fmt(s.low)} .. {_fmt(s.high)} (1-99 %) are far outside any range of {unit} "
            f"(a wrong scale factor, e.g. scl_slope/RescaleSlope?); refusing to segment"
        )
    warnings = []
    if s.nonfinite:
        warnings.append(f"{where}: {s.nonfinite} of {s.voxels} voxels are not finite (NaN/inf); segmented as background")
    expected = expected_range(card)
    if expected is not None:
        lo, hi = expected
        margin = MARGIN * (hi - lo)
        if s.high > hi + margin or s.low < lo - margin or s.high < lo or s.low > hi:
            warnings.append(
                f"{where}: intensities {_fmt(s.low)} .. {_fmt(s.high)} (1-99 %) lie outside the range the model "
                f"'{card.name}' was trained on ({_fmt(lo)} .. {_fmt(hi)}); check the scan's scaling and modality, "
                "the result may be wrong"
            )
    return warnings


__all__ = ["IntensitySummary", "intensity_summary", "check_scan_intensities", "expected_range", "refuse_empty"]
