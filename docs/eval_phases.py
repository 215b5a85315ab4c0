"""Per-phase and per-spacing Dice of a model on unseen phantoms (``make eval``).

    python docs/eval_phases.py [--model BUNDLE] [--seeds 1,2,...,2024,31337] [--work runs/phases]
                               [--out docs/eval_phases.md]

For each contrast phase, the seeds are rendered with their own seeded style
(:func:`medseg.phantom_domain.seeded_style`: noise, slice thickness, in-plane spacing, arms,
table, field of view) and that phase, then segmented and scored (:func:`medseg.evaluation.evaluate_model`).
Two tables come out: mean Dice per phase and label (with each phase's gap to the best phase:
the issue asks for none over 0.05), and mean Dice per slice-thickness and in-plane-spacing band
over every phase. Written as Markdown to ``--out`` and printed; the raw rows go beside it as JSON.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np

from medseg.cli import _parse_seeds
from medseg.evaluation import evaluate_model
from medseg.io import atomic_write_text
from medseg.phantom import make_dataset
from medseg.phantom_domain import PHASES, seeded_style

ROOT = Path(__file__).resolve().parents[1]
THICKNESS = (("<= 1.5 mm", 0.0, 1.5), ("1.5-3 mm", 1.5, 3.0), ("3-5 mm", 3.0, 5.01))
INPLANE = (("0.8-1.2 mm", 0.0, 1.21), ("1.2-1.8 mm", 1.21, 2.0), ("3 mm", 2.0, 9.0))


def score(model: Path | None, seeds: list[int], work: Path) -> list[dict]:
    """One row per phase, case and label: dice, with the case's thickness and in-plane spacing."""
    from medseg.bundle import default_bundle_path

    rows = []
    for phase in PHASES:
        ds = make_dataset(work / phase, seeds, varied=True, phase=phase, overwrite=True, workers=0)
        result = evaluate_model(model or default_bundle_path(), ds, hd95=False)
        for failure in result.failures:
            print(f"{phase}: {failure['case']}: {failure['error']}")
        grids = {case: _grid_of(ds, case) for case in result.cases}
        for r in result.rows:
            rows.append({"phase": phase, "case": r["case"], "label": r["label"], "dice": r["dice"], **grids[r["case"]]})
    return rows


def _grid_of(ds: Path, case: str) -> dict[str, float]:
    """A case's slice thickness (its style's) and in-plane spacing (read back from its image header)."""
    import nibabel as nib

    style = seeded_style(int(case.split("_")[-1]))
    inplane = float(nib.load(ds / "imagesTr" / f"{case}_0000.nii.gz").header.get_zooms()[0])
    return {"thickness_mm": style.thickness_mm, "inplane_mm": round(inplane, 3)}


def _mean(values: list[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return float(np.mean(finite)) if finite else math.nan


def tables(rows: list[dict]) -> str:
    labels = list(dict.fromkeys(r["label"] for r in rows))
    head = "| | " + " | ".join(label.replace("_", " ") for label in labels) + " | mean | gap to best |"
    rule = "| --- |" + " --- |" * (len(labels) + 2)
    by_phase = {p: [_mean([r["dice"] for r in rows if r["phase"] == p and r["label"] == label]) for label in labels]
                for p in PHASES}
    means = {p: _mean(v) for p, v in by_phase.items()}
    best = max(means.values())
    lines = ["Mean Dice per contrast phase", "", head, rule]
    for p in PHASES:
        lines.append(f"| {p} | " + " | ".join(f"{v:.3f}" for v in by_phase[p]) + f" | {means[p]:.3f} | {best - means[p]:.3f} |")
    for title, key, bands in (("slice thickness", "thickness_mm", THICKNESS), ("in-plane spacing", "inplane_mm", INPLANE)):
        lines += ["", f"Mean Dice per {title} (all phases)", "",
                  "| | cases | " + " | ".join(label.replace("_", " ") for label in labels) + " | mean |",
                  "| --- | --- |" + " --- |" * (len(labels) + 1)]
        for name, lo, hi in bands:
            sel = [r for r in rows if lo < r[key] <= hi]
            if not sel:
                continue
            per = [_mean([r["dice"] for r in sel if r["label"] == label]) for label in labels]
            n = len({(r["phase"], r["case"]) for r in sel})
            lines.append(f"| {name} | {n} | " + " | ".join(f"{v:.3f}" for v in per) + f" | {_mean(per):.3f} |")
    cases = len({(r["phase"], r["case"]) for r in rows})
    return "\n".join(lines) + f"\n\n{cases} cases ({cases // len(PHASES)} seeds x {len(PHASES)} phases).\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=None, help="model bundle (default: the packaged one)")
    ap.add_argument("--seeds", default="1,2,3,4,5,6,7,8,2024,31337", help="a range 1-8 or a list 1,2,5")
    ap.add_argument("--work", type=Path, default=ROOT / "runs" / "phases")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "eval_phases.md")
    args = ap.parse_args(argv)
    rows = score(args.model, _parse_seeds(args.seeds), args.work)
    text = tables(rows)
    print(text)
    atomic_write_text(args.out, text)
    atomic_write_text(args.out.with_suffix(".json"), json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
