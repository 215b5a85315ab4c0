"""Does the per-slice uncertainty rank the slices with the most errors first? Phantoms shifted from training.

Renders phantoms with seeds outside the training set (``TRAINING_SEEDS``), shifts them away from the
training distribution (another contrast phase, a fatty liver, more noise, a cropped and shifted field of view),
segments them with the bundled model and prints the Spearman correlation between each candidate
slice score and two per-slice errors: wrongly labelled voxels, and 1 - mean Dice over the
structures present in the slice (truth or prediction). ``old`` is the former score (mean
normalised entropy over the whole slice), ``new`` is :func:`medseg.inference.slice_uncertainty`
with its defaults; the others vary its settings. Last, the threshold table behind
``UNCERTAIN_SLICE``: how many of the bad slices (1 - Dice > 0.2) a threshold flags, and how
many flagged slices are bad. A few minutes on 2 CPU cores.

    python benchmarks/uncertainty_shift.py [--seeds 900 901] [--shape 256 256 40]
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr

from medseg.inference import UNCERTAIN_SLICE, Predictor, slice_uncertainty
from medseg.io import Scan
from medseg.phantom import LABELS, make_phantom

ORGAN = {name: LABELS[name] for name in ("liver", "spleen", "kidney_right", "kidney_left", "liver_tumour")}
# HU changes per structure from the portal-venous phantom. The first two were phases the first
# default model had not seen; "fatty" (a severely fatty liver, near water, as tests/test_sparse_labels.py
# uses) is outside what the current one was trained on, whatever the phase.
PHASES = {
    "arterial": {"liver": -40, "liver_tumour": -15, "spleen": 20, "kidney_right": 40, "kidney_left": 40},
    "delayed": {"liver": -30, "liver_tumour": -10, "spleen": -40, "kidney_right": -40, "kidney_left": -40},
    "fatty": {"liver": -90, "liver_tumour": -60},
}
BAD = 0.2  # a slice with 1 - Dice above this is "bad"
TRAINING_SEEDS = range(100, 624)  # covers the default model's training and validation phantoms (make model: 100-195, 400-463, 600-623)


def shifted(ph, shift: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(image, labels, affine) of phantom ``ph`` under ``shift``."""
    image, labels, affine = ph.image.astype(np.float32), ph.labels, ph.affine.copy()
    for phase, deltas in PHASES.items():
        if phase in shift:
            for name, delta in deltas.items():
                image[labels == ORGAN[name]] += delta
    if "noise" in shift:
        image = image + rng.normal(0.0, 45.0 if shift == "noise" else 30.0, image.shape).astype(np.float32)
    if shift == "fov":  # a small, off-centre field of view that cuts through the body
        nx, ny = image.shape[:2]
        i0, j0, w = nx // 6, ny // 4, int(nx * 0.62)
        image, labels = image[i0:i0 + w, j0:j0 + w], labels[i0:i0 + w, j0:j0 + w]
        affine[:3, 3] = affine[:3, :3] @ np.array([i0, j0, 0.0]) + affine[:3, 3]
    return np.ascontiguousarray(image), np.ascontiguousarray(labels), affine


def slice_errors(pred: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per axial slice (third axis): wrongly labelled voxels, and 1 - mean Dice over structures present."""
    wrong = (pred != truth).sum(axis=(0, 1)).astype(float)
    one_minus_dice = np.zeros(pred.shape[2])
    for k in range(pred.shape[2]):
        p, t = pred[:, :, k], truth[:, :, k]
        dices = []
        for v in ORGAN.values():
            a, b = p == v, t == v
            n = a.sum() + b.sum()
            if n:
                dices.append(2.0 * (a & b).sum() / n)
        one_minus_dice[k] = 1.0 - np.mean(dices) if dices else 0.0
    return wrong, one_minus_dice


def candidate_scores(logits: torch.Tensor, spacing: tuple[float, float]) -> dict[str, np.ndarray]:
    """Every candidate slice score from the model's logits (Z, K, H, W) at the model's spacing."""
    p = torch.softmax(logits, dim=1)
    ent = -(p * torch.log(p.clamp_min(1e-12))).sum(dim=1) / math.log(p.shape[1])
    out = {"old": ent.flatten(1).mean(1)}
    out["new"] = slice_uncertainty(logits, spacing)
    for level in (0.1, 0.2, 0.3, 0.5):
        out[f"new entropy>{level}"] = slice_uncertainty(logits, spacing, entropy_level=level)
    for mm in (0.0, 10.0):
        out[f"new near {mm:g} mm"] = slice_uncertainty(logits, spacing, near_mm=mm)
    out["new p(bg)<0.5"] = slice_uncertainty(logits, spacing, near_foreground=0.5)
    near = torch.nn.functional.max_pool2d((p[:, :1] < 0.9).float(), 5, stride=1, padding=2)[:, 0] > 0
    out["mean entropy near"] = (ent * near).flatten(1).sum(1) / near.flatten(1).sum(1).clamp_min(1)
    pixel_cm2 = spacing[0] * spacing[1] / 100.0
    out["uncertain area cm2"] = (ent > 0.5).flatten(1).sum(1).float() * pixel_cm2
    return {name: v.numpy().astype(float) for name, v in out.items()}


def segment(predictor: Predictor, image, labels, affine) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Predicted labels and candidate scores (indexed by the third array axis, inferior to superior)."""
    recorded: list[torch.Tensor] = []
    model = predictor.model

    def recording(x):
        logits = model(x)
        recorded.append(logits.float().clone())
        return logits

    predictor.model = recording
    try:
        pred = predictor.predict_scan(Scan(image, affine, Path("shifted.nii.gz"), modality="CT"),
                                      on_warning=lambda m: None)
    finally:
        predictor.model = model
    return pred, candidate_scores(torch.cat(recorded), tuple(predictor.card.spacing))


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    rho = spearmanr(a, b).statistic
    return float(rho) if np.isfinite(rho) else float("nan")


def report(rows: dict[str, dict[str, list]], scores: list[str]) -> None:
    print("\nSpearman rho: slice score vs per-slice error (wrong voxels / 1 - Dice); n = slices")
    header = f"{'score':22s}" + "".join(f"{s:>19s}" for s in rows)
    print(header)
    print(" " * 22 + "".join(f"{'n=' + str(len(r['wrong'])):>19s}" for r in rows.values()))
    for name in scores:
        cells = []
        for r in rows.values():
            s = np.asarray(r[name])
            cells.append(f"{spearman(s, np.asarray(r['wrong'])):+.2f} / {spearman(s, np.asarray(r['dice'])):+.2f}")
        print(f"{name:22s}" + "".join(f"{c:>19s}" for c in cells))


def thresholds(score: np.ndarray, bad: np.ndarray) -> None:
    print(f"\nthreshold on 'new' (pooled; bad = 1 - Dice > {BAD}: {int(bad.sum())} of {len(bad)} slices)")
    print(f"{'threshold':>10s} {'flagged':>8s} {'bad found':>10s} {'flagged bad':>12s}")
    for t in (0.02, 0.04, 0.06, 0.08, 0.1, 0.12, 0.15, 0.2, 0.3):
        flag = score > t
        found = (flag & bad).sum() / max(bad.sum(), 1)
        precision = (flag & bad).sum() / max(flag.sum(), 1)
        mark = "  <- UNCERTAIN_SLICE" if abs(t - UNCERTAIN_SLICE) < 1e-9 else ""
        print(f"{t:10.2f} {int(flag.sum()):8d} {found:10.0%} {precision:12.0%}{mark}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=(900, 901))
    ap.add_argument("--shape", type=int, nargs=3, default=(256, 256, 40))
    ap.add_argument("--spacing", type=float, nargs=3, default=(1.5, 1.5, 5.5))
    args = ap.parse_args()
    if any(s in TRAINING_SEEDS for s in args.seeds):
        ap.error(f"seeds {TRAINING_SEEDS.start}..{TRAINING_SEEDS.stop - 1} are the model's training and validation cases")

    torch.set_grad_enabled(False)
    predictor = Predictor.from_folder(None, "cpu")
    shifts = ("none", "arterial", "delayed", "fatty", "noise", "fov", "arterial+noise", "fatty+noise")
    rows: dict[str, dict[str, list]] = {s: {} for s in (*shifts, "pooled shifted")}
    for seed in args.seeds:
        ph = make_phantom(seed, shape=tuple(args.shape), spacing=tuple(args.spacing))
        for shift in shifts:
            image, labels, affine = shifted(ph, shift, np.random.default_rng(seed))
            pred, scores = segment(predictor, image, labels, affine)
            wrong, dice = slice_errors(pred, labels)
            targets = [rows[shift]] + ([rows["pooled shifted"]] if shift != "none" else [])
            for row in targets:
                for key, values in {"wrong": wrong, "dice": dice, **scores}.items():
                    row.setdefault(key, []).extend(values.tolist())
            print(f"seed {seed} {shift:15s} wrong voxels {int(wrong.sum()):7d}  mean 1-Dice {dice.mean():.3f}  "
                  f"new score mean {scores['new'].mean():.3f}", flush=True)
    names = [k for k in rows["none"] if k not in ("wrong", "dice")]
    report(rows, names)
    pooled = rows["pooled shifted"]
    thresholds(np.asarray(pooled["new"]), np.asarray(pooled["dice"]) > BAD)
    return 0


if __name__ == "__main__":
    sys.exit(main())
