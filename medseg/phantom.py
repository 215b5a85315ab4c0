"""Deterministic synthetic abdominal CT volumes ("phantoms") with ground-truth labels.

``make_phantom(seed)`` renders a portal-venous abdominal CT with labelled liver, spleen,
kidneys and a hypodense liver tumour; ``write_nifti`` (through :mod:`medseg.io`),
``write_dicom_series`` (through :mod:`medseg.dicom_export`) and ``make_dataset`` put it on
disk. The anatomy is defined in world millimetres, so it does not depend on the voxel grid,
and every random choice comes from generators seeded with ``seed``: the same seed (and
grid) gives bit-identical arrays.

Arrays are indexed (i, j, k) = (towards patient Left, towards Posterior, towards
Superior), i.e. stored like DICOM ("LPS"); ``Phantom.affine`` maps (i, j, k, 1) to RAS
millimetres (nibabel convention).
"""

from __future__ import annotations

import collections
import os
from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .phantom_anatomy import HU_MAX, HU_MIN, LABELS, Waves, sample_anatomy
from .phantom_domain import FIELDS, PHASES, Style, style_extras
from .phantom_render import (
    anchors,
    drop_islands,
    enclose_tumour,
    organ_windows,
    place_tumour,
    render_slice,
    scanner_blur_and_noise,
    thickness_offsets,
)

if TYPE_CHECKING:
    from .io import Scan

__all__ = [
    "LABELS",
    "Phantom",
    "Style",
    "make_dataset",
    "make_phantom",
    "write_dicom_series",
    "write_nifti",
]

PathLike = str | os.PathLike[str]

_FOV_INPLANE_MM = 380.0
_FOV_Z_MM = 220.0  # used when only the shape is given

@dataclass(eq=False)
class Phantom:
    """A synthetic CT: ``image`` in HU (int16), ``labels`` (uint8, values of LABELS).

    Both arrays have shape (X, Y, Z) and Fortran memory order (each axial slice
    ``[:, :, k]`` is contiguous); ``affine`` maps voxel indices to RAS mm.
    """

    image: np.ndarray
    labels: np.ndarray
    affine: np.ndarray
    seed: int

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm along the three array axes."""
        sx, sy, sz = (float(np.linalg.norm(self.affine[:3, n])) for n in range(3))
        return (sx, sy, sz)

    def as_scan(self) -> Scan:
        """The image as a :class:`medseg.io.Scan` (CT, HU), for the writers in medseg.io."""
        from .io import Scan

        return Scan(self.image, self.affine, source=Path(f"phantom-seed-{self.seed}"), modality="CT",
                    description=f"medseg phantom seed {self.seed}")


# ------------------------------------------------------------------------- geometry


def _check_triple(name: str, value: object, kind: type) -> tuple:
    try:
        items = tuple(value)  # type: ignore[call-overload]
    except TypeError:
        raise ValueError(f"{name} must be a sequence of three numbers, got {value!r}") from None
    if len(items) != 3:
        raise ValueError(f"{name} must have three entries, got {value!r}")
    out = tuple(kind(v) for v in items)
    if not all(np.isfinite(v) and v > 0 for v in out) or (kind is int and out != items):
        raise ValueError(f"{name} must hold three positive {kind.__name__}s, got {value!r}")
    return out


def _grid(
    rng: np.random.Generator,
    shape: tuple[int, int, int] | None,
    spacing: tuple[float, float, float] | None,
    fov: float = _FOV_INPLANE_MM,
    extend: tuple[float, float] = (0.0, 0.0),
    inplane_mm: float | None = None,
) -> tuple[tuple[int, int, int], tuple[float, float, float], np.ndarray, np.ndarray]:
    """Shape, spacing, RAS origin of voxel (0,0,0) and RAS position of the anatomy."""
    # Always draw everything, in one order, so the world placement does not depend on
    # which of shape/spacing the caller fixed.
    inplane = round(float(rng.uniform(1.2, 1.8)), 3)
    thick = round(float(rng.uniform(2.5, 5.0)), 2)
    fov_z = float(rng.uniform(200.0, 240.0))
    centre = rng.uniform([-30.0, -30.0, -30.0], [30.0, 30.0, 30.0])
    jitter = rng.uniform([-5.0, -8.0, -8.0], [5.0, 8.0, 8.0])

    def inplane_size(s: float) -> int:
        return max(2, 2 * int(round(fov / s / 2.0)))

    if spacing is None and shape is None:
        inplane = inplane_mm if inplane_mm is not None else inplane
        spacing = (inplane, inplane, thick)
    if shape is None:
        assert spacing is not None
        fov_z += extend[0] + extend[1]  # a longer field of view: more slices, the anatomy where it was
        centre[2] += 0.5 * (extend[1] - extend[0])
        jitter[2] -= 0.5 * (extend[1] - extend[0])
        nz = max(1, int(round(fov_z / spacing[2])))
        shape = (inplane_size(spacing[0]), inplane_size(spacing[1]), nz)
    if spacing is None:
        spacing = (
            round(fov / shape[0], 6),
            round(fov / shape[1], 6),
            round(_FOV_Z_MM / shape[2], 6),
        )
    sx, sy, sz = spacing
    nx, ny, nz = shape
    origin = np.round(
        [
            centre[0] + 0.5 * (nx - 1) * sx,
            centre[1] + 0.5 * (ny - 1) * sy,
            centre[2] - 0.5 * (nz - 1) * sz,
        ],
        3,
    )
    # The anatomy sits a little below the middle of the volume (the liver dome is high).
    anatomy = centre + jitter + np.array([0.0, 0.0, -5.0])
    return shape, spacing, origin, anatomy


def make_phantom(
    seed: int,
    shape: tuple[int, int, int] | None = None,
    spacing: tuple[float, float, float] | None = None,
    style: Style | None = None,
) -> Phantom:
    """Render the phantom for ``seed``.

    ``style`` (:class:`~medseg.phantom_domain.Style`) sets the contrast phase, noise level, slice
    thickness, in-plane spacing, arms, table, liver veins and field of view along z; the default is
    the portal-venous phantom. A style never moves the seed's anatomy in world mm; it changes a
    seeded grid only by its in-plane spacing, a 500 mm field of view for arms beside the body, and
    the slices a chest or pelvis adds.

    With neither ``shape`` nor ``spacing`` the grid is seeded: in-plane spacing in
    [1.2, 1.8] mm, slice spacing in [2.5, 5.0] mm, field of view ~380 mm in-plane and
    200-240 mm along z. Given only ``spacing``, the shape covers that field of view;
    given only ``shape``, the spacing makes it 380 x 380 x 220 mm. The anatomy (in world
    mm) is the same for a seed whatever the grid.
    """
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    seed = int(seed)
    if shape is not None:
        shape = _check_triple("shape", shape, int)  # type: ignore[assignment]
    if spacing is not None:
        spacing = _check_triple("spacing", spacing, float)  # type: ignore[assignment]
    style = style if style is not None else Style()
    geo_ss, anat_ss, noise_ss = np.random.SeedSequence(seed).spawn(3)
    fov = 500.0 if style.arms == "beside" else _FOV_INPLANE_MM
    shape, spacing, origin, anatomy_pos = _grid(np.random.default_rng(geo_ss), shape, spacing, fov, FIELDS[style.field], style.inplane_mm)
    anat_rng = np.random.default_rng(anat_ss)
    an = place_tumour(sample_anatomy(anat_rng), anat_rng)
    extras = None
    if style != Style():
        extras = style_extras(style, an.hu, (an.body_a, an.body_b), an.liver, seed, anchors(an))
        if style.bowel_gas:  # gas pockets 15-45 mm across, placed by a field of their own
            extras = replace(extras, gas_field=Waves.random(np.random.default_rng([seed, 17]), 8, (30.0, 90.0), (0.5, 0.5)))
        an = replace(an, hu=extras.hu)
    noise_rng = np.random.default_rng(noise_ss)

    nx, ny, nz = shape
    sx, sy, sz = spacing
    affine = np.array(
        [
            [-sx, 0.0, 0.0, origin[0]],
            [0.0, -sy, 0.0, origin[1]],
            [0.0, 0.0, sz, origin[2]],
            [0.0, 0.0, 0.0, 1.0],
        ]
    )
    # Body-frame coordinates (RAS mm relative to the anatomy) of the voxel centres.
    xs = origin[0] - sx * np.arange(nx) - anatomy_pos[0]
    ys = origin[1] - sy * np.arange(ny) - anatomy_pos[1]
    zs = origin[2] + sz * np.arange(nz) - anatomy_pos[2]

    axes = (xs, ys, zs)
    windows = organ_windows(an, axes)

    # Pass 1: noise-free HU and labels, one axial slice at a time.
    image = np.empty(shape, dtype=np.int16, order="F")
    labels = np.empty(shape, dtype=np.uint8, order="F")
    offsets = thickness_offsets(style.thickness_mm)
    for k in range(nz):
        hu, lab = render_slice(an, xs, ys, float(zs[k]), k, windows, extras)
        if offsets.size > 1:  # partial volume: the image averages the slab, the labels are its centre
            hu = sum(render_slice(an, xs, ys, float(zs[k] + o), k, windows, extras)[0] for o in offsets if o != 0.0) + hu
            hu /= np.float32(offsets.size)
        image[:, :, k] = np.clip(np.rint(hu), HU_MIN, HU_MAX)
        labels[:, :, k] = lab

    drop_islands(an, labels, image, axes, windows)
    enclose_tumour(an, labels, image, windows)

    scanner_blur_and_noise(an, image, (sx, sy), noise_rng)
    return Phantom(image=image, labels=labels, affine=affine, seed=seed)


# ------------------------------------------------------------------------------ I/O


def write_nifti(phantom: Phantom, image_path: PathLike, label_path: PathLike | None = None) -> None:
    """Write the image (int16 HU) and optionally the labels (uint8) as NIfTI-1, atomically.

    Written by :func:`medseg.io.save_image` and :func:`medseg.io.save_mask`: both files get
    sform and qform (code 1, scanner) equal to ``phantom.affine``, units mm.
    """
    from .io import save_image, save_mask

    scan = phantom.as_scan()
    save_image(scan, image_path)
    if label_path is not None:
        save_mask(phantom.labels, scan, label_path)


def write_dicom_series(
    phantom: Phantom,
    folder: PathLike,
    *,
    series_description: str = "medseg phantom CT",
    patient_id: str = "PHANTOM",
    series_uid: str | None = None,
) -> list[Path]:
    """Write one CT Image Storage file per axial slice; return the paths in slice order.

    :func:`medseg.dicom_export.write_dicom_series` with the phantom's tags: stored values are
    HU + 1024 (unsigned, 12 bits stored; RescaleIntercept -1024). UIDs are derived from the
    seed and grid, so rewriting a phantom gives the same UIDs. Files are named by
    SOPInstanceUID, so their names do not sort in slice order.
    """
    from .dicom_export import write_dicom_series as write_series

    tags = {
        "ImageType": ["ORIGINAL", "PRIMARY", "AXIAL"],
        "Manufacturer": "medseg phantom",
        "StudyDescription": "medseg synthetic abdomen",
        "PatientName": f"Phantom^Seed{phantom.seed}",
        "BodyPartExamined": "ABDOMEN",
        "KVP": "120",
    }
    return write_series(
        phantom.as_scan(),
        folder,
        series_description=series_description,
        patient_id=patient_id,
        series_uid=series_uid,
        uid_key=str(phantom.seed),
        tags=tags,
        when=datetime(2024, 1, 1, 12, 0, 0),
    )


def make_dataset(
    out_dir: PathLike,
    seeds: Iterable[int],
    *,
    shape: tuple[int, int, int] | None = None,
    spacing: tuple[float, float, float] | None = None,
    overwrite: bool = False,
    varied: bool = False,
    phase: str | None = None,
    add: bool = False,
    workers: int = 1,
) -> Path:
    """Write phantoms for ``seeds`` as an nnU-Net v2 style raw dataset; return ``out_dir``.

    ``varied``: each seed gets its own :func:`~medseg.phantom_domain.seeded_style` (phase, noise,
    slice thickness, arms, table, liver veins); ``phase`` fixes the contrast phase (of every
    style). dataset.json records each case's style under ``phantom_styles``.

    Layout: imagesTr/phantom_{seed:04d}_0000.nii.gz, labelsTr/phantom_{seed:04d}.nii.gz
    and dataset.json. A folder that already holds a dataset (a dataset.json, or files in
    imagesTr/ or labelsTr/) is refused unless ``overwrite``; then the phantoms' files and
    dataset.json are written over (other files are left as they are). ``add``: the cases join
    the phantom dataset already in the folder (its dataset.json is extended, written last; a
    seed it holds is refused), so one dataset can mix styles. ``seeds`` must be a non-empty
    list of distinct non-negative integers. ``workers``: processes rendering cases at once (0: one
    per CPU core, at most 8); each case depends on its seed alone, so the files are the same.
    """
    from .data import write_dataset_json

    seeds = _check_seeds(seeds)
    styles = {seed: _dataset_style(seed, varied, phase) for seed in seeds}
    out = Path(out_dir)
    held = _held_styles(out, seeds, overwrite) if add else {}
    if not add:
        _prepare_dataset_folder(out, overwrite)
    _render_cases(out, [(seed, shape, spacing, styles[seed]) for seed in seeds], workers)
    all_styles = {**held, **{f"phantom_{seed:04d}": styles[seed].as_dict() for seed in seeds}}
    write_dataset_json(out, _phantom_meta(all_styles))
    return out


def _write_case(out: Path, seed: int, shape, spacing, style: Style) -> None:
    """Render one seed's phantom into the dataset folder ``out`` (imagesTr/ and labelsTr/)."""
    ph = make_phantom(seed, shape=shape, spacing=spacing, style=style)
    write_nifti(ph, out / "imagesTr" / f"phantom_{seed:04d}_0000.nii.gz", out / "labelsTr" / f"phantom_{seed:04d}.nii.gz")


def _render_cases(out: Path, jobs: list[tuple], workers: int) -> None:
    """:func:`_write_case` for each (seed, shape, spacing, style), ``workers`` processes at a time.

    The processes are spawned (the parent may hold torch's threads) with one BLAS/OpenMP thread
    each: with their default threads, 2 processes on 2 cores took 52 s for 6 cases, against 36 s
    for one process and 18 s like this (``make model``'s 96: 150 s, the files unchanged). A failure
    stops the cases not yet started."""
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context
    from unittest.mock import patch

    n = min(int(workers) if workers else min(os.cpu_count() or 1, 8), len(jobs))
    if n <= 1:
        for job in jobs:
            _write_case(out, *job)
        return
    single = {k: "1" for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}
    # read by each spawned child as it starts; the parent's environment is restored after
    with patch.dict(os.environ, single), ProcessPoolExecutor(n, mp_context=get_context("spawn")) as pool:
        futures = [pool.submit(_write_case, out, *job) for job in jobs]
        try:
            for future in futures:
                future.result()
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise


def _phantom_meta(styles: dict[str, dict]) -> dict:
    """A phantom dataset's dataset.json for the cases' styles (case name -> style as a dict)."""
    phases = ", ".join(p for p in PHASES if p in {st["phase"] for st in styles.values()})
    return {
        "name": "MedsegPhantom",
        "description": f"Synthetic {phases} abdominal CT phantoms from medseg.phantom.make_phantom; "
        "each case is named after its seed.",
        "body_region": "abdomen",
        "phase": phases,
        "phantom_styles": styles,
        "channel_names": {"0": "CT"},
        "labels": dict(LABELS),
        "numTraining": len(styles),
        "file_ending": ".nii.gz",
    }


def _held_styles(out: Path, seeds: list[int], overwrite: bool) -> dict[str, dict]:
    """The styles of the phantom dataset in ``out`` that ``add`` extends; one-line errors for no
    such dataset, ``overwrite`` given too, or a seed the dataset (or its folders) already holds."""
    from .errors import MedsegError
    from .safety import ensure_writable
    from .schema import read_json_object

    if overwrite:
        raise MedsegError("--add and --overwrite: choose one (add cases to a dataset, or replace it)")
    meta_path = out / "dataset.json"
    if not meta_path.is_file():
        raise MedsegError(f"{out}: holds no dataset to add to (no dataset.json); leave out --add to start one")
    styles = read_json_object(meta_path, "dataset.json").get("phantom_styles")
    if not isinstance(styles, dict):
        raise MedsegError(f"{meta_path}: not a phantom dataset (no 'phantom_styles'); --add extends one that "
                          f"medseg phantom wrote")
    for seed in seeds:
        name = f"phantom_{seed:04d}"
        if name in styles or (out / "labelsTr" / f"{name}.nii.gz").exists() or (
                out / "imagesTr" / f"{name}_0000.nii.gz").exists():
            raise MedsegError(f"{out}: already holds case {name} (seed {seed}); each seed is one case")
    ensure_writable(out, folder=True)
    return dict(styles)


def _dataset_style(seed: int, varied: bool, phase: str | None) -> Style:
    """The style of a dataset's case (a one-line error for an unknown phase)."""
    from .errors import MedsegError
    from .phantom_domain import seeded_style

    style = seeded_style(seed) if varied else Style()
    try:
        return replace(style, phase=phase) if phase is not None else style
    except ValueError as exc:
        raise MedsegError(f"--phase: {exc}") from None


def _check_seeds(seeds: Iterable[int]) -> list[int]:
    """``seeds`` as a non-empty list of distinct non-negative integers; a one-line error otherwise."""
    from .errors import MedsegError

    try:
        raw = list(seeds)
    except TypeError:
        raise MedsegError(f"seeds {seeds!r}: expected a list of non-negative integers") from None
    bad = [s for s in raw if isinstance(s, bool) or not isinstance(s, (int, np.integer))]
    if bad:
        raise MedsegError(f"seeds: {bad[0]!r} is not an integer (expected non-negative integers such as 100-123)")
    out = [int(s) for s in raw]
    if not out:
        raise MedsegError("seeds: no seeds given (expected at least one, e.g. 100-123)")
    negative = [s for s in out if s < 0]
    if negative:
        raise MedsegError(f"seeds: {negative[0]} is negative; seeds must be 0 or more")
    dups = sorted(s for s, n in collections.Counter(out).items() if n > 1)
    if dups:
        raise MedsegError(f"seeds: seed {dups[0]} is given twice (each seed is one case: none may come more than once)")
    return out


def _prepare_dataset_folder(out: Path, overwrite: bool) -> None:
    """Create ``out/imagesTr`` and ``out/labelsTr``; refuse a file, an unwritable folder, or (unless
    ``overwrite``) a folder that already holds a dataset."""
    from .errors import MedsegError
    from .safety import ensure_writable

    if out.exists() and not out.is_dir():
        raise MedsegError(f"{out}: is a file, expected a dataset folder")
    if not overwrite:
        held = [p for p in (out / "dataset.json",) if p.exists()]
        held += [d for d in (out / "imagesTr", out / "labelsTr") if d.is_dir() and any(d.iterdir())]
        if held:
            raise MedsegError(f"{out}: already holds a dataset ({held[0].name}); choose an empty folder, "
                              f"or overwrite it (--overwrite)")
    ensure_writable(out, folder=True)
    for sub in ("imagesTr", "labelsTr"):
        if (out / sub).exists() and not (out / sub).is_dir():
            raise MedsegError(f"{out / sub}: is a file, expected a folder")
    (out / "imagesTr").mkdir(parents=True, exist_ok=True)
    (out / "labelsTr").mkdir(parents=True, exist_ok=True)
