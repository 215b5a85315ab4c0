"""Phantom DICOM series in several orientations, with their label maps, for the RTSTRUCT / SEG tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medseg.dicom_export import write_dicom_series
from medseg.phantom import make_phantom
from medseg.scan import Scan

NAMES = {1: "liver", 2: "spleen", 3: "kidney_right", 4: "kidney_left", 5: "liver_tumour"}
SHAPE = (48, 48, 16)


def reoriented(array: np.ndarray, affine: np.ndarray, perm=(0, 1, 2), flips=()) -> tuple[np.ndarray, np.ndarray]:
    """The same voxels in world space, stored with axes permuted then flipped (the affine follows)."""
    array = np.transpose(array, perm)
    affine = affine.copy()
    affine[:, :3] = affine[:, list(perm)]
    for ax in flips:
        array = np.flip(array, ax)
        n = array.shape[ax]
        affine[:3, 3] = affine[:3, 3] + affine[:3, ax] * (n - 1)
        affine[:3, ax] = -affine[:3, ax]
    return np.ascontiguousarray(array), affine


ORIENTATIONS = {
    "axial": dict(),
    "row_flipped": dict(flips=(0,)),
    "coronal": dict(perm=(0, 2, 1)),
    "sagittal_flipped": dict(perm=(1, 2, 0), flips=(1,)),
}


def with_ring(labels: np.ndarray) -> np.ndarray:
    """Add a structure with a hole (label 6, a square ring) on the middle slices."""
    out = labels.copy()
    nx, ny, nz = out.shape
    ring = np.zeros(out.shape, bool)
    ring[4:16, 4:16, nz // 2 - 2 : nz // 2 + 2] = True
    ring[8:12, 8:12, :] = False
    out[ring] = 6
    return out


def phantom_series(folder: Path, seed: int = 3, orientation: str = "axial", *, drop=(), patient: str = "P1",
                   ring: bool = False) -> tuple[np.ndarray, dict[int, str]]:
    """Write a phantom CT series (in ``orientation``; slices ``drop`` removed, which makes the spacing
    irregular) and return its label map on the series' grid ([column, row, slice], slices in normal order)."""
    p = make_phantom(seed, shape=SHAPE)
    labels = p.labels.astype(np.uint8)
    names = dict(NAMES)
    if ring:
        labels, names = with_ring(labels), {**names, 6: "ring"}
    image, affine = reoriented(np.asarray(p.as_scan().array), p.affine, **ORIENTATIONS[orientation])
    labels, _ = reoriented(labels, p.affine, **ORIENTATIONS[orientation])
    scan = Scan(array=image, affine=affine, source=folder, modality="CT")
    paths = write_dicom_series(scan, folder, patient_id=patient, uid_key=f"{seed}-{orientation}-{patient}",
                               tags={"PatientName": f"Phantom^{patient}"})
    for k in drop:
        paths[k].unlink()
    keep = [k for k in range(labels.shape[2]) if k not in set(drop)]
    labels = labels[:, :, keep]
    # slices in normal order: the writer's k order runs along the slice axis, which may point against the normal
    from medseg.dicom_grid import read_grid

    grid = read_grid(folder)
    if grid.files[0] != paths[keep[0]]:
        labels = labels[:, :, ::-1]
    return np.ascontiguousarray(labels), names


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    return 1.0 if not (a.sum() + b.sum()) else float(2 * (a & b).sum() / (a.sum() + b.sum()))
