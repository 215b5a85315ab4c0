"""Overlays of a model on the real CT scans in ``../shared/data`` (PNG per scan, for people to look at).

    python docs/real_overlays.py [--model BUNDLE] [--data ../shared/data] [--out docs/real_ct]

Each CT scan there (the DICOM series folders and the NIfTI CTs) is segmented, and its PNG shows
the mask over four axial slices and a coronal reformat in the radiological convention
(:func:`medseg.reports.write_preview`). MR scans are left out (the default model is for CT). It
also prints each label's volume, so a glance at the numbers catches a liver of 30 mL, and how much
of it lies outside the label's largest connected piece ("apart": specks on other organs).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from scipy import ndimage

from medseg.bundle import load_bundle
from medseg.errors import MedsegError
from medseg.inference import Predictor
from medseg.io import load_scan
from medseg.metrics import label_volumes_ml
from medseg.reports import write_preview

ROOT = Path(__file__).resolve().parents[1]
CT_SCANS = ("real_ct_dicom", "ct_abdomen_3mm.nii.gz")


def apart_ml(labels: np.ndarray, value: int, voxel_ml: float) -> float:
    """mL of a label outside its largest 26-connected piece."""
    pieces, n = ndimage.label(labels == value, structure=np.ones((3, 3, 3), bool))
    if n < 2:
        return 0.0
    sizes = np.bincount(pieces.ravel())[1:]
    return float(sizes.sum() - sizes.max()) * voxel_ml


def overlay(predictor: Predictor, path: Path, out: Path) -> dict[str, tuple[float, float]]:
    """The PNG, and each label's (mL, mL apart from its largest piece)."""
    scan = load_scan(path, modality="CT")
    labels = predictor.predict_scan(scan, on_warning=lambda m: print(f"  warning: {m}"))
    write_preview(scan, labels, out, predictor.card.labels, n_axial=4)
    volumes = label_volumes_ml(labels, scan.voxel_volume_ml, predictor.card.labels)
    return {k: (v, apart_ml(labels, predictor.card.labels[k], scan.voxel_volume_ml)) for k, v in volumes.items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=None, help="model bundle (default: the packaged one)")
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "real_ct")
    args = ap.parse_args(argv)
    predictor = Predictor(load_bundle(args.model), "cpu")
    found = [args.data / name for name in CT_SCANS if (args.data / name).exists()]
    if not found:
        raise SystemExit(f"{args.data}: none of {', '.join(CT_SCANS)} is there")
    for path in found:
        name = path.name.split(".")[0]
        try:
            volumes = overlay(predictor, path, args.out / f"{name}.png")
        except MedsegError as exc:
            print(f"{path.name}: {exc}")
            continue
        print(f"{path.name} -> {args.out / (name + '.png')}: " + ", ".join(f"{k} {v:.0f} mL ({a:.0f} apart)" for k, (v, a) in volumes.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
