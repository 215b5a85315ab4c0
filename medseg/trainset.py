"""Training data: cases prepared once, batches of 2.5D slices, the validation split and its scoring.

:func:`prepare_cases` reads each image/label pair through MONAI (:class:`~medseg.transforms.LoadCased`
puts both in a common RAS orientation and checks that they lie on one grid;
:class:`~medseg.transforms.ToModelSpaced` applies the inference preset: per-modality intensity
scaling, in-plane resampling to the model's spacing, labels with nearest neighbour) and a
``CacheDataset`` keeps the result, so epochs never re-read files. :class:`SliceSampler` draws
training slices (with their 2.5D neighbours) with foreground oversampling and augments them
(:func:`~medseg.transforms.training_augmentation`); every batch is a pure function of
``(seed, rank, epoch, step)``. :func:`split_cases` holds cases out for validation and
:func:`evaluate_cases` scores a model on them through the inference path.
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np
import torch

from .bundle import Bundle, ModelCard
from .config import TrainConfig
from .data import Case
from .errors import MedsegError
from .geometry import array_on_grid_of
from .io import Scan, load_scan
from .labels import is_lesion
from .metrics import label_metrics
from .transforms import IGNORE_INDEX, LoadCased, ToModelSpaced, context_indices, context_step, training_augmentation


@dataclass
class PreparedCase:
    name: str
    image: np.ndarray  # (Z, X', Y') float16, intensity-scaled, resampled in-plane
    classes: np.ndarray  # (Z, X', Y') uint8 class indices (IGNORE_INDEX: not labelled)
    foreground: np.ndarray  # indices of slices holding any foreground
    intensity_range: tuple[float, float] = (math.nan, math.nan)  # raw 1-99 % of the image
    labelled: np.ndarray | None = None  # indices of slices holding any labelled voxel (None: every slice)
    slice_mm: float = math.nan  # distance between slices (mm): how far apart the context neighbours are

    def slices(self) -> np.ndarray:
        """The slices training may draw: those holding labelled voxels."""
        return np.arange(self.image.shape[0]) if self.labelled is None else self.labelled


def training_intensity_range(ranges: Iterable[tuple[float, float]]) -> list[float] | None:
    """The raw intensity range of the training images (lowest 1st, highest 99th percentile) from
    each image's ``intensity_range``, recorded in the model card so that scans far outside it are
    warned about."""
    ranges = list(ranges)
    lows = [lo for lo, _ in ranges if math.isfinite(lo)]
    highs = [hi for _, hi in ranges if math.isfinite(hi)]
    if not lows or not highs or not min(lows) < max(highs):
        return None
    return [float(min(lows)), float(max(highs))]


def class_counts(cases: list[PreparedCase], num_classes: int) -> torch.Tensor:
    """Voxels of each class in the prepared training cases (float64)."""
    counts = torch.zeros(num_classes, dtype=torch.float64)
    for c in cases:
        counts += torch.from_numpy(np.bincount(c.classes.ravel(), minlength=num_classes)[:num_classes].astype(np.float64))
    return counts


def class_weights(counts: torch.Tensor | None, mode: str) -> torch.Tensor | None:
    """Cross-entropy class weights from the training voxels' class frequencies (mean weight 1)."""
    if mode == "none" or counts is None:
        return None
    w = 1.0 / torch.sqrt(torch.clamp(counts, min=1.0) / counts.sum())
    return (w / w.mean()).float()


def preprocessing_pipeline(card: ModelCard, ignore: int | None = None):
    """The cached, deterministic part: MONAI ``Compose`` of load/orient and model-space transforms
    (``ignore``: the dataset's ignore label value, whose voxels become :data:`IGNORE_INDEX`)."""
    from monai.transforms import Compose

    return Compose([LoadCased(card.modality, card.orientation),
                    ToModelSpaced(card.preprocessing, card.spacing, card.label_values, ignore)])


def _unwrap(exc: BaseException) -> BaseException:
    """MONAI wraps errors raised inside transforms in RuntimeError; find our one-line error."""
    seen = exc
    while seen is not None:
        if isinstance(seen, MedsegError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return exc


def prepare_cases(cases: list[Case], card: ModelCard, workers: int = 0, ignore: int | None = None) -> list[PreparedCase]:
    """Load and preprocess every case once (MONAI ``CacheDataset``), ``workers`` threads at a time.

    ``ignore``: the dataset's ignore label value (sparse labels); a case with no labelled voxel
    at all is an error naming its label file.

    ``workers=0``: one per CPU core, at most 8 and at most one per case. The cache is filled by
    our own thread pool (``runtime_cache``) rather than MONAI's, because MONAI's ``ThreadPool``
    is terminated without being joined when a case fails: its other threads went on reading and
    resampling while the interpreter shut down, and the process aborted ("terminate called
    without an active exception", exit 134) after printing the error. Here a failure cancels
    the cases not started and waits for those being read before the error is raised.
    """
    from monai.data import CacheDataset

    if not cases:
        return []
    items = [{"image": str(c.image), "label": str(c.label), "name": c.name} for c in cases]
    workers = int(workers) if workers else min(os.cpu_count() or 1, 8)
    workers = max(1, min(workers, len(items)))
    try:
        ds = CacheDataset(items, transform=preprocessing_pipeline(card, ignore), cache_rate=1.0, num_workers=workers,
                          progress=False, runtime_cache=True)
        if workers == 1:
            loaded = [ds[i] for i in range(len(ds))]
        else:
            pool = ThreadPoolExecutor(workers, thread_name_prefix="medseg-cache")
            try:
                futures = [pool.submit(ds.__getitem__, i) for i in range(len(ds))]
                loaded = [f.result() for f in futures]
            finally:
                pool.shutdown(wait=True, cancel_futures=True)
        out = [PreparedCase(d["name"], d["image"], d["label"], d["foreground"],
                            tuple(d.get("intensity_range", (math.nan, math.nan))),
                            d["labelled"] if ignore is not None else None, float(d["slice_mm"])) for d in loaded]
    except Exception as exc:
        raise _unwrap(exc) from None
    for case, prepared in zip(cases, out):
        if prepared.labelled is not None and prepared.labelled.size == 0:
            raise MedsegError(f"{case.label}: every voxel is the ignore label (no labelled slice): nothing to learn from")
    return out


def _window_start(n: int, size: int, at: int | None, rng: np.random.Generator) -> int:
    """A random start of a ``size`` window in ``n`` (``n > size``), one that holds ``at`` when given."""
    if at is None:
        return int(rng.integers(0, n - size + 1))
    return int(rng.integers(max(0, at - size + 1), min(n - size, at) + 1))


def class_slices(classes: np.ndarray) -> dict[int, np.ndarray]:
    """For each foreground class of a (Z, H, W) class array, the slices holding it (sorted)."""
    present = np.zeros((classes.shape[0], 256), dtype=bool)
    for z in range(classes.shape[0]):
        present[z] = np.bincount(classes[z].ravel(), minlength=256)[:256] > 0
    present[:, [0, IGNORE_INDEX]] = False
    return {int(c): np.flatnonzero(present[:, c]) for c in np.flatnonzero(present.any(axis=0))}


def _crop_or_pad(img: np.ndarray, lab: np.ndarray, size: int, rng: np.random.Generator, centre: int | None = None):
    """Random ``size`` x ``size`` window of (C, H, W) / (H, W) arrays.

    Where a slice is smaller than the window it is placed at a random offset and padded by
    repeating its edge, as the network pads its input at inference (a zero border here would
    teach the model a context it never sees when segmenting, and small scans would fail). A
    slice labelled only in part (the rest :data:`IGNORE_INDEX`) gets a window around one of
    its labelled pixels, so a step is never spent on unlabelled voxels alone. ``centre``: a class
    the window must hold (around one of its pixels, drawn at random).
    """
    c, h, w = img.shape
    at = (None, None)
    if (h > size or w > size) and (centre is not None or (lab == IGNORE_INDEX).any()):
        ys, xs = np.nonzero(lab == centre if centre is not None else lab != IGNORE_INDEX)
        if ys.size:
            i = int(rng.integers(ys.size))
            at = (int(ys[i]), int(xs[i]))
    y0 = _window_start(h, size, at[0], rng) if h > size else 0
    x0 = _window_start(w, size, at[1], rng) if w > size else 0
    oy = rng.integers(0, size - h + 1) if h < size else 0
    ox = rng.integers(0, size - w + 1) if w < size else 0
    hh, ww = min(h, size), min(w, size)
    pad = ((oy, size - hh - oy), (ox, size - ww - ox))
    out_i = np.pad(img[:, y0 : y0 + hh, x0 : x0 + ww], ((0, 0), *pad), mode="edge").astype(np.float32, copy=False)
    out_l = np.pad(lab[y0 : y0 + hh, x0 : x0 + ww], pad, mode="edge").astype(np.int64)
    return out_i, out_l


class SliceSampler:
    """Batches of augmented 2.5D training slices, each batch a pure function of its key.

    ``batch(epoch, step)`` draws ``foreground_fraction`` of its slices from slices holding
    foreground (so small organs and tumours are seen), the others from the slices holding any
    labelled voxel (all of them, unless the dataset has an ``ignore`` label), crops/pads them to ``crop`` pixels and
    applies the MONAI augmentation. The generator is seeded by ``(seed, rank, epoch, step)``.

    ``foreground_sampling="class"`` (nnU-Net's oversampling): a foreground draw first picks one
    of the classes the case holds, each as likely, then a slice holding it, and the patch is
    placed around one of that class's pixels, so a small tumour or kidney is not cropped away
    and is seen as often as the liver. ``"slice"``: any slice holding foreground, a random window.
    ``lesion_classes`` (the class indices of lesion labels, :func:`lesion_classes`) get their
    contrast redrawn when ``cfg.lesion_contrast`` > 0.
    """

    def __init__(self, cases: list[PreparedCase], cfg: TrainConfig, context: int, rank: int = 0,
                 context_mm: float | None = None, lesion_classes: tuple[int, ...] = ()) -> None:
        self.cases, self.cfg, self.context, self.rank = cases, cfg, context, rank
        self.steps = [context_step(context_mm, case.slice_mm) for case in cases]  # as inference takes them
        self.by_class = [class_slices(case.classes) for case in cases] if cfg.foreground_sampling == "class" else None
        self.augment = (
            training_augmentation(cfg.rotate_deg, cfg.scale, cfg.flip_prob, cfg.intensity_jitter,
                                  lesion_classes=lesion_classes,
                                  lesion_contrast=cfg.lesion_contrast_range)
            if cfg.augment else None
        )

    def batch(self, epoch: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        cfg = self.cfg
        rng = np.random.default_rng([cfg.seed, self.rank, epoch, step])
        if self.augment is not None:
            self.augment.set_random_state(seed=int(rng.integers(2**31 - 1)))
        with _plain_tensors():
            return self._draw(rng)

    def _draw(self, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        cfg = self.cfg
        xs, ys = [], []
        for _ in range(cfg.batch_size):
            i = int(rng.integers(len(self.cases)))
            case = self.cases[i]
            depth = case.image.shape[0]
            centre = None
            if case.foreground.size and rng.random() < cfg.foreground_fraction:
                if self.by_class is not None and self.by_class[i]:
                    centre = int(rng.choice(list(self.by_class[i])))
                    z = int(rng.choice(self.by_class[i][centre]))
                else:
                    z = int(rng.choice(case.foreground))
            else:
                z = int(rng.choice(case.slices()))  # sparse labels: only labelled slices
            idx = context_indices(np.array([z]), self.context, depth, self.steps[i])[0]
            img, lab = _crop_or_pad(case.image[idx], case.classes[z], cfg.crop, rng, centre)
            if self.augment is not None:
                d = self.augment({"image": torch.from_numpy(img), "label": torch.from_numpy(lab[None].astype(np.float32))})
                img = np.asarray(d["image"], dtype=np.float32)
                lab = np.rint(np.asarray(d["label"])[0]).astype(np.int64)
            xs.append(img)
            ys.append(lab)
        return torch.from_numpy(np.stack(xs)), torch.from_numpy(np.stack(ys))


def lesion_classes(card: ModelCard) -> tuple[int, ...]:
    """The class indices of the card's lesion labels (:func:`~medseg.labels.is_lesion`)."""
    return tuple(c for c, name in enumerate(card.class_names) if is_lesion(name))


@contextmanager
def _plain_tensors():
    """MONAI's transforms on plain tensors, not MetaTensors (``set_track_meta(False)``), then the
    setting as it was: the same values, and the batch costs ~30 % less (the metadata is never used)."""
    from monai.data import get_track_meta, set_track_meta

    was = get_track_meta()
    set_track_meta(False)
    try:
        yield
    finally:
        set_track_meta(was)


def load_validation(cases: list[Case], card: ModelCard) -> list[tuple[Scan, np.ndarray]]:
    """Held-out scans with their reference labels in the scans' axis order (read once per run)."""
    out = []
    for case in cases:
        image = load_scan(case.image, modality=card.modality)
        out.append((image, array_on_grid_of(image, load_scan(case.label))))
    return out


def evaluate_cases(
    model, cases: list[tuple[Scan, np.ndarray]], card: ModelCard, device, hd95: bool = False, ignore: int | None = None
) -> dict[str, dict[str, float]]:
    """Mean 3D Dice (and HD95, mm) per label of full-volume slice-wise predictions on held-out cases.

    ``ignore``: the reference's ignore label value; its voxels are left out of every metric.

    One :class:`~medseg.inference.Predictor` (a copy of ``model``, so the model being trained is
    left as it is) segments every case through the inference path; metrics from
    ``monai.metrics``. A label absent from both prediction and reference in a case is left out
    of that label's mean.
    """
    from .inference import Predictor

    predictor = Predictor(Bundle(card, model), device)
    scores: dict[str, dict[str, list[float]]] = {}
    for image, ref in cases:
        pred = predictor.predict_scan(image)
        for name, row in label_metrics(pred, ref, card.labels, spacing=image.spacing, hd95=hd95, ignore=ignore).items():
            for metric, value in row.items():
                if not math.isnan(value):
                    scores.setdefault(name, {}).setdefault(metric, []).append(value)
    return {name: {m: float(np.mean(v)) for m, v in row.items()} for name, row in scores.items()}


def split_cases(cases: list[Case], meta: dict, root: Path, cfg: TrainConfig) -> tuple[list[Case], list[Case]]:
    """(train, validation): nnU-Net's ``splits_final.json`` fold 0, or dataset.json's
    ``validation`` list, or a split seeded by ``cfg.seed`` with ``cfg.val_cases`` held out."""
    by_name = {c.name: c for c in cases}
    names: list[str] | None = None
    splits = root / "splits_final.json"
    if splits.is_file():
        from .schema import read_json

        try:
            names = [str(n) for n in read_json(splits, "splits file")[0]["val"]]
        except (OSError, ValueError, KeyError, IndexError, TypeError) as exc:
            raise MedsegError(f"{splits}: expected a list of {{'train': [...], 'val': [...]}} folds ({exc})") from None
    elif isinstance(meta.get("validation"), list) and meta["validation"]:
        from .naming import case_name

        names = []
        for entry in meta["validation"]:
            ref = entry.get("label", entry.get("image")) if isinstance(entry, dict) else entry
            names.append(case_name(Path(str(ref)), channel=True, known=by_name))
    if names is not None:
        missing = [n for n in names if n not in by_name]
        if missing:
            raise MedsegError(f"{root}: validation case(s) {missing[:3]} are not among the dataset's cases")
        val = [by_name[n] for n in names]
        trn = [c for c in cases if c.name not in set(names)]
        if not trn:
            raise MedsegError(f"{root}: the validation split leaves no training cases")
        return trn, val
    if cfg.val_cases == 0:
        return list(cases), list(cases)
    if len(cases) <= cfg.val_cases:
        raise MedsegError(f"{root}: {len(cases)} case(s) is too few for {cfg.val_cases} validation case(s)")
    order = np.random.default_rng(cfg.seed).permutation(len(cases))
    return [cases[i] for i in sorted(order[cfg.val_cases :])], [cases[i] for i in sorted(order[: cfg.val_cases])]

