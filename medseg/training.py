"""Training and fine-tuning: 2D/2.5D slices, cross-entropy (+ Dice), best-by-validation-Dice bundles.

Pipeline (MONAI): :class:`~medseg.transforms.LoadCased` reads each image/label pair into a
common RAS orientation (checking that both lie on one grid), :class:`~medseg.transforms.ToModelSpaced`
applies the inference preset (per-modality intensity scaling, in-plane resampling to the
model's spacing, labels with nearest neighbour), and a ``CacheDataset`` keeps the result so
epochs never re-read files. Training slices (with their 2.5D neighbours) are drawn with
foreground oversampling and augmented (:func:`~medseg.transforms.training_augmentation`).

Every batch is drawn from a generator seeded by ``(seed, rank, epoch, step)``, so a run is
reproducible, a resumed run continues exactly where the killed one stopped, and batches can be
prepared ahead in a thread without changing what the model sees.

Run folder: ``best/`` and ``last/`` bundles (atomic), ``checkpoint.pt`` (model, optimizer,
scheduler, grad scaler, epoch, history; read back with ``weights_only=True``), ``history.csv``,
``curves.png`` and ``config.json``. Under ``torchrun`` each rank trains on its own shard of
the cases with DistributedDataParallel and only rank 0 validates and writes.
"""

from __future__ import annotations

import csv
import json
import math
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from . import __version__
from .bundle import Bundle, ModelCard, build_model, load_bundle, save_bundle
from .data import Case, find_cases, read_labels, read_modality
from .errors import MedsegError
from .inference import resolve_device, segment
from .io import Scan, atomic_write, atomic_write_text, load_scan
from .metrics import label_metrics
from .transforms import (
    LoadCased,
    ToModelSpaced,
    array_on_grid_of,
    context_indices,
    default_preprocessing,
    training_augmentation,
)

CHECKPOINT = "checkpoint.pt"


@dataclass
class TrainConfig:
    """Training settings; saved as ``config.json`` in the run folder (and reused by ``--resume``)."""

    epochs: int = 30
    steps_per_epoch: int = 40
    batch_size: int = 8
    lr: float | None = None  # None: 2e-3 from scratch, 5e-4 when fine-tuning (init)
    optimizer: str = "adamw"  # adamw | sgd
    schedule: str = "onecycle"  # onecycle | cosine | poly | constant
    weight_decay: float = 1e-4
    loss: str = "ce"  # ce | ce+dice
    class_weights: str = "none"  # none | sqrt-inverse (CE weighted by 1/sqrt(class frequency))
    width: int = 16
    context_slices: int = 1
    spacing: tuple[float, float] = (2.0, 2.0)
    crop: int = 160
    foreground_fraction: float = 0.7
    augment: bool = True
    rotate_deg: float = 10.0
    scale: float = 0.1
    flip_prob: float = 0.0
    intensity_jitter: float = 0.03
    val_cases: int = 2  # 0: validate on the training cases (an overfitting check, not a score)
    hd95: bool = True
    seed: int = 0
    device: str = "auto"
    amp: str = "auto"  # auto (CUDA: bf16 where supported, else fp16 + grad scaler; CPU: off) | off | bf16 | fp16
    channels_last: bool = True
    name: str = "medseg-segnet"
    modality: str | None = None
    init: str | None = None  # bundle to start from (fine-tuning)
    freeze_encoder: bool = False
    cache_workers: int = 0
    half_precision_weights: bool = True

    @property
    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else (5e-4 if self.init else 2e-3)

    def validate(self, where: str | os.PathLike | None = None) -> None:
        """Type- and range-check every setting; a one-line :class:`MedsegError` naming the field.

        ``where`` (the run's ``config.json``) is named in the message when the settings were read
        from a file; settings from the command line or the napari widget are named by field.
        """
        problem = _config_problem(self)
        if problem is None:
            return
        key, value, expected = problem
        if where is None:
            raise MedsegError(f"{key} {value!r}: expected {expected}")
        raise MedsegError(f"{where}: field '{key}': expected {expected}, got {value!r}")

    @classmethod
    def from_json(cls, path: Path) -> "TrainConfig":
        """A run's ``config.json``: every field type-checked (pydantic), then :meth:`validate`."""
        from .schema import read_json_object, validate_as

        path = Path(path)
        data = read_json_object(path, "run config")
        for f in fields(cls):  # JSON true/false or "5" are not numbers, numbers are not true/false
            if f.name not in data:
                continue
            kind, value = _FIELD_KINDS.get(f.name), data[f.name]
            if kind in ("int", "float", "float?") and (isinstance(value, (bool, str))):
                raise MedsegError(f"{path}: field '{f.name}': expected a number, got {value!r}")
            if kind == "bool" and not isinstance(value, bool):
                raise MedsegError(f"{path}: field '{f.name}': expected true or false, got {value!r}")
        cfg = validate_as(cls, data, path)
        cfg.spacing = tuple(cfg.spacing)  # type: ignore[assignment]
        cfg.validate(path)
        return cfg


# what each TrainConfig field holds (checked by _config_problem, and before pydantic's lax coercion)
_FIELD_KINDS = {
    "epochs": "int", "steps_per_epoch": "int", "batch_size": "int", "lr": "float?", "optimizer": "str",
    "schedule": "str", "weight_decay": "float", "loss": "str", "class_weights": "str", "width": "int",
    "context_slices": "int", "spacing": "pair", "crop": "int", "foreground_fraction": "float", "augment": "bool",
    "rotate_deg": "float", "scale": "float", "flip_prob": "float", "intensity_jitter": "float", "val_cases": "int",
    "hd95": "bool", "seed": "int", "device": "str", "amp": "str", "channels_last": "bool", "name": "str",
    "modality": "str?", "init": "str?", "freeze_encoder": "bool", "cache_workers": "int",
    "half_precision_weights": "bool",
}

_CHOICES = {
    "optimizer": ("adamw", "sgd"),
    "schedule": ("onecycle", "cosine", "poly", "constant"),
    "loss": ("ce", "ce+dice"),
    "class_weights": ("none", "sqrt-inverse"),
    "amp": ("auto", "off", "bf16", "fp16"),
}

# (lowest, highest, what) per numeric field; None: unbounded on that side
_RANGES = {
    "epochs": (1, None, "an integer >= 1"),
    "steps_per_epoch": (1, None, "an integer >= 1"),
    "batch_size": (1, None, "an integer >= 1"),
    "width": (1, None, "an integer >= 1"),
    "crop": (1, None, "an integer >= 1"),
    "context_slices": (0, 16, "an integer 0..16"),
    "val_cases": (0, None, "an integer >= 0"),
    "seed": (0, 2**63 - 1, "an integer >= 0"),
    "cache_workers": (0, 256, "an integer 0..256"),
    "weight_decay": (0, None, "a finite number >= 0"),
    "foreground_fraction": (0, 1, "a number in 0..1"),
    "flip_prob": (0, 1, "a number in 0..1"),
    "rotate_deg": (0, 180, "a number of degrees in 0..180"),
    "scale": (0, 0.9, "a number in 0..0.9"),
    "intensity_jitter": (0, 1, "a number in 0..1"),
}


def _config_problem(cfg: "TrainConfig") -> tuple[str, object, str] | None:
    """The first bad field of a config as ``(field, value, what was expected)``, or None."""
    from .schema import finite_number

    for f in fields(cfg):
        key, value, kind = f.name, getattr(cfg, f.name), _FIELD_KINDS.get(f.name)
        if kind is None:
            continue
        if kind.endswith("?") and value is None:
            continue
        kind = kind.rstrip("?")
        if kind == "int" and (isinstance(value, bool) or not isinstance(value, (int, np.integer))):
            return key, value, _RANGES.get(key, (None, None, "an integer"))[2]
        if kind == "float" and not finite_number(float(value) if isinstance(value, np.floating) else value):
            return key, value, _RANGES[key][2] if key in _RANGES else "a finite number > 0" if key == "lr" else "a number"
        if kind == "bool" and not isinstance(value, (bool, np.bool_)):
            return key, value, "true or false"
        if kind == "str" and not isinstance(value, str):
            return key, value, "a string"
        if kind == "pair":
            ok = isinstance(value, (tuple, list)) and len(value) == 2 and all(
                finite_number(v) and v > 0 for v in value)
            if not ok:
                return key, value, "two positive, finite in-plane sizes (mm)"
    for key, (low, high, what) in _RANGES.items():
        value = getattr(cfg, key)
        if (low is not None and value < low) or (high is not None and value > high):
            return key, value, what
    if cfg.lr is not None and not cfg.lr > 0:
        return "lr", cfg.lr, "a finite number > 0"
    for key, allowed in _CHOICES.items():
        if getattr(cfg, key) not in allowed:
            return key, getattr(cfg, key), f"one of {', '.join(allowed)}"
    if not cfg.name.strip():
        return "name", cfg.name, "a non-empty model name"
    if cfg.modality is not None and cfg.modality.upper() not in ("CT", "MR"):
        return "modality", cfg.modality, "CT or MR (or null: from dataset.json)"
    if cfg.device != "auto":
        try:
            dev = torch.device(cfg.device)
        except (RuntimeError, ValueError):
            dev = None
        if dev is None or dev.type not in ("cpu", "cuda", "mps"):
            return "device", cfg.device, "auto, cpu, cuda or cuda:N"
    if cfg.init is not None and not cfg.init.strip():
        return "init", cfg.init, "a bundle folder (or null)"
    return None


@dataclass
class PreparedCase:
    name: str
    image: np.ndarray  # (Z, X', Y') float16, intensity-scaled, resampled in-plane
    classes: np.ndarray  # (Z, X', Y') uint8 class indices
    foreground: np.ndarray  # indices of slices holding any foreground
    intensity_range: tuple[float, float] = (math.nan, math.nan)  # raw 1-99 % of the image


def training_intensity_range(cases: list[PreparedCase]) -> list[float] | None:
    """The raw intensity range of the training images (lowest 1st, highest 99th percentile),
    recorded in the model card so that scans far outside it are warned about."""
    lows = [c.intensity_range[0] for c in cases if math.isfinite(c.intensity_range[0])]
    highs = [c.intensity_range[1] for c in cases if math.isfinite(c.intensity_range[1])]
    if not lows or not highs or not min(lows) < max(highs):
        return None
    return [float(min(lows)), float(max(highs))]


# ---------------------------------------------------------------------------------------------- data


def preprocessing_pipeline(card: ModelCard):
    """The cached, deterministic part: MONAI ``Compose`` of load/orient and model-space transforms."""
    from monai.transforms import Compose

    return Compose(
        [LoadCased(card.modality, card.orientation), ToModelSpaced(card.preprocessing, card.spacing, card.label_values)]
    )


def _unwrap(exc: BaseException) -> BaseException:
    """MONAI wraps errors raised inside transforms in RuntimeError; find our one-line error."""
    seen = exc
    while seen is not None:
        if isinstance(seen, MedsegError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return exc


def prepare_cases(cases: list[Case], card: ModelCard, workers: int = 0) -> list[PreparedCase]:
    """Load and preprocess every case once (MONAI ``CacheDataset``), ``workers`` threads at a time.

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
        ds = CacheDataset(items, transform=preprocessing_pipeline(card), cache_rate=1.0, num_workers=workers,
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
                            tuple(d.get("intensity_range", (math.nan, math.nan)))) for d in loaded]
    except Exception as exc:
        raise _unwrap(exc) from None
    return out


def _crop_or_pad(img: np.ndarray, lab: np.ndarray, size: int, rng: np.random.Generator):
    """Random ``size`` x ``size`` window of (C, H, W) / (H, W) arrays.

    Where a slice is smaller than the window it is placed at a random offset and padded by
    repeating its edge, as the network pads its input at inference (a zero border here would
    teach the model a context it never sees when segmenting, and small scans would fail).
    """
    c, h, w = img.shape
    y0 = rng.integers(0, h - size + 1) if h > size else 0
    x0 = rng.integers(0, w - size + 1) if w > size else 0
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
    foreground (so small organs and tumours are seen), crops/pads them to ``crop`` pixels and
    applies the MONAI augmentation. The generator is seeded by ``(seed, rank, epoch, step)``.
    """

    def __init__(self, cases: list[PreparedCase], cfg: TrainConfig, context: int, rank: int = 0) -> None:
        self.cases, self.cfg, self.context, self.rank = cases, cfg, context, rank
        self.augment = (
            training_augmentation(cfg.rotate_deg, cfg.scale, cfg.flip_prob, cfg.intensity_jitter) if cfg.augment else None
        )

    def batch(self, epoch: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        cfg = self.cfg
        rng = np.random.default_rng([cfg.seed, self.rank, epoch, step])
        if self.augment is not None:
            self.augment.set_random_state(seed=int(rng.integers(2**31 - 1)))
        xs, ys = [], []
        for _ in range(cfg.batch_size):
            case = self.cases[rng.integers(len(self.cases))]
            depth = case.image.shape[0]
            if case.foreground.size and rng.random() < cfg.foreground_fraction:
                z = int(rng.choice(case.foreground))
            else:
                z = int(rng.integers(depth))
            idx = context_indices(np.array([z]), self.context, depth)[0]
            img, lab = _crop_or_pad(case.image[idx].astype(np.float32), case.classes[z], cfg.crop, rng)
            if self.augment is not None:
                d = self.augment({"image": torch.from_numpy(img), "label": torch.from_numpy(lab[None].astype(np.float32))})
                img = np.asarray(d["image"], dtype=np.float32)
                lab = np.rint(np.asarray(d["label"])[0]).astype(np.int64)
            xs.append(img)
            ys.append(lab)
        return torch.from_numpy(np.stack(xs)), torch.from_numpy(np.stack(ys))


def load_validation(cases: list[Case], card: ModelCard) -> list[tuple[Scan, np.ndarray]]:
    """Held-out scans with their reference labels in the scans' axis order (read once per run)."""
    out = []
    for case in cases:
        image = load_scan(case.image, modality=card.modality)
        out.append((image, array_on_grid_of(image, load_scan(case.label))))
    return out


def evaluate_cases(
    model, cases: list[tuple[Scan, np.ndarray]], card: ModelCard, device, hd95: bool = False
) -> dict[str, dict[str, float]]:
    """Mean 3D Dice (and HD95, mm) per label of full-volume slice-wise predictions on held-out cases.

    Uses the inference path (:func:`~medseg.inference.segment`) and ``monai.metrics``; a label
    absent from both prediction and reference in a case is left out of that label's mean.
    """
    model.eval()
    bundle = Bundle(card, model)
    scores: dict[str, dict[str, list[float]]] = {}
    for image, ref in cases:
        pred = segment(image, bundle, device=device)
        for name, row in label_metrics(pred, ref, card.labels, spacing=image.spacing, hd95=hd95).items():
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
        try:
            names = [str(n) for n in json.loads(splits.read_text())[0]["val"]]
        except (OSError, ValueError, KeyError, IndexError, TypeError) as exc:
            raise MedsegError(f"{splits}: expected a list of {{'train': [...], 'val': [...]}} folds ({exc})") from None
    elif isinstance(meta.get("validation"), list) and meta["validation"]:
        from .data import image_case_name

        names = []
        for entry in meta["validation"]:
            ref = entry.get("label", entry.get("image")) if isinstance(entry, dict) else entry
            names.append(image_case_name(Path(str(ref)), by_name))
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


# ---------------------------------------------------------------------------------------------- model set-up


def transfer_weights(source: Bundle, model: torch.nn.Module, card: ModelCard) -> list[str]:
    """Copy a source bundle's weights into ``model`` (built from ``card``) for fine-tuning.

    Encoder and decoder weights are copied whole. Classifier rows are matched by label name:
    labels the source knows keep their weights, new labels keep their fresh initialisation.
    Returns the names of the classes whose classifier weights were kept.
    """
    src = source.model.state_dict()
    dst = model.state_dict()
    src_index = {name: i for i, name in enumerate(source.card.class_names)}
    kept = [name for name in card.class_names if name in src_index]
    for key, value in dst.items():
        if key not in src:
            continue
        if key.startswith("head."):
            for i, name in enumerate(card.class_names):
                if name in src_index:
                    value[i] = src[key][src_index[name]]
        elif src[key].shape == value.shape:
            value.copy_(src[key])
        else:
            raise MedsegError(f"{source.path}: layer {key} {tuple(src[key].shape)} does not fit {tuple(value.shape)}")
    model.load_state_dict(dst)
    return kept


def _class_weights(cases: list[PreparedCase], num_classes: int, mode: str, dist=None) -> torch.Tensor | None:
    """Cross-entropy class weights from the training voxels' class frequencies (mean weight 1)."""
    if mode == "none":
        return None
    counts = torch.zeros(num_classes, dtype=torch.float64)
    for c in cases:
        counts += torch.from_numpy(np.bincount(c.classes.ravel(), minlength=num_classes)[:num_classes].astype(np.float64))
    if dist is not None:
        dist.all_reduce(counts)
    w = 1.0 / torch.sqrt(torch.clamp(counts, min=1.0) / counts.sum())
    return (w / w.mean()).float()


def make_loss(cfg: TrainConfig, weight: torch.Tensor | None) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Cross-entropy (optionally class-weighted), or cross-entropy + soft Dice (MONAI ``DiceLoss``)."""
    if cfg.loss == "ce":
        return lambda logits, y: F.cross_entropy(logits.float(), y, weight=weight)
    from monai.losses import DiceLoss

    dice = DiceLoss(include_background=False, to_onehot_y=True, softmax=True, batch=True)
    return lambda logits, y: F.cross_entropy(logits.float(), y, weight=weight) + dice(logits.float(), y[:, None])


def onecycle_pct_start(total_steps: int, pct: float = 0.1) -> float:
    """OneCycleLR's ``pct_start``: ``pct`` (10 % warm-up) for long runs, adjusted for short ones.

    OneCycleLR's warm-up phase ends at step ``pct_start * total - 1`` and its annealing phase at
    ``total - 1``; a phase of zero length divides by zero (``--epochs 2 --steps-per-epoch 5``).
    The warm-up end is kept in ``[1, total - 1.5]`` (``0.5`` for two steps) so both phases last
    at least half a step for every ``total >= 2``, and a short run reaches the peak rate.
    """
    if total_steps < 2:
        raise ValueError(f"OneCycleLR needs at least 2 steps, got {total_steps}")
    warm_end = min(max(pct * total_steps - 1.0, 1.0), total_steps - 1.5)
    return (warm_end + 1.0) / total_steps


def make_optimizer(cfg: TrainConfig, params, total_steps: int):
    """Optimizer and per-step LR schedule for ``total_steps`` steps (any ``total_steps >= 1``)."""
    total_steps = max(int(total_steps), 1)
    lr = cfg.learning_rate
    if cfg.optimizer == "sgd":
        opt = torch.optim.SGD(params, lr=lr, momentum=0.99, nesterov=True, weight_decay=cfg.weight_decay)
    else:
        opt = torch.optim.AdamW(params, lr=lr, weight_decay=cfg.weight_decay)
    if cfg.schedule == "onecycle" and total_steps >= 2:
        sched = torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=lr, total_steps=total_steps, pct_start=onecycle_pct_start(total_steps)
        )
    elif cfg.schedule == "onecycle":  # a single step: no room for a warm-up and an annealing phase
        sched = torch.optim.lr_scheduler.ConstantLR(opt, factor=1.0, total_iters=0)
    elif cfg.schedule == "cosine":
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total_steps)
    elif cfg.schedule == "poly":  # nnU-Net's (1 - t/T)^0.9
        sched = torch.optim.lr_scheduler.PolynomialLR(opt, total_iters=total_steps, power=0.9)
    else:
        sched = torch.optim.lr_scheduler.ConstantLR(opt, factor=1.0, total_iters=0)
    return opt, sched


def amp_dtype(cfg: TrainConfig, device: torch.device) -> torch.dtype | None:
    """Autocast dtype: on CUDA bf16 where supported, else fp16 (with a grad scaler); none on CPU."""
    if cfg.amp == "off":
        return None
    if device.type == "cuda":
        if cfg.amp == "fp16" or (cfg.amp == "auto" and not torch.cuda.is_bf16_supported()):
            return torch.float16
        return torch.bfloat16
    return torch.bfloat16 if cfg.amp == "bf16" else None


def train_step(net, x, y, loss_fn, opt, sched, scaler, device: torch.device, amp: torch.dtype | None = None,
               channels_last: bool = True) -> float:
    """One optimisation step on a batch (autocast to ``amp`` when given); returns the loss."""
    x = x.to(device, non_blocking=True)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = y.to(device, non_blocking=True)
    with torch.autocast(device.type, dtype=amp) if amp is not None else nullcontext():
        logits = net(x)
    loss = loss_fn(logits, y)
    opt.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(opt)
    scaler.update()
    sched.step()
    return float(loss.item())


# ---------------------------------------------------------------------------------------------- distributed


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def dist_info() -> DistInfo:
    """This process's place under ``torchrun`` (from its environment); one process otherwise."""
    return DistInfo(
        int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0))
    )


def _all_ok(dist, error: BaseException | None) -> None:
    """Every rank learns whether any rank failed (so none waits forever), and raises the same error."""
    if dist is None:
        if error is not None:
            raise error
        return
    errors = [None] * dist.get_world_size()
    dist.all_gather_object(errors, None if error is None else str(error))
    first = next((e for e in errors if e), None)
    if first:
        raise MedsegError(first) if error is None else error


# ---------------------------------------------------------------------------------------------- the loop


def train(
    dataset_dir: str | Path,
    run_dir: str | Path,
    cfg: TrainConfig,
    *,
    resume: bool = False,
    on_epoch: Callable[[int, dict], None] | None = None,
    on_step: Callable[[int, int, dict], None] | None = None,
    command: str = "",
) -> Bundle:
    """Train (or fine-tune, ``cfg.init``) a SegNet on a dataset folder; returns the best bundle.

    ``resume`` continues the run in ``run_dir`` from its checkpoint with the run's own config
    (``cfg`` only supplies the device). Everything that can be checked is checked before the
    first step: the dataset layout, every pair's grid and label values, the validation split.
    """
    run_dir = Path(run_dir)
    dataset_dir = Path(dataset_dir)
    check_run_folder(run_dir, dataset_dir)
    if not resume:
        check_init_bundle(run_dir, cfg.init)
    ckpt_path = run_dir / CHECKPOINT
    state = None
    if resume:
        if not ckpt_path.is_file():
            raise MedsegError(f"{run_dir}: no {CHECKPOINT} to resume from")
        device_override = cfg.device
        cfg = TrainConfig.from_json(run_dir / "config.json")
        cfg.device = device_override
        cfg.validate()  # the device comes from the caller
        check_init_bundle(run_dir, cfg.init)
        state = _load_checkpoint(ckpt_path)
        check_resume_config(cfg, state, run_dir / "config.json")
    elif ckpt_path.exists():
        raise MedsegError(f"{run_dir}: already holds a training run; pass --resume to continue it, or pick another folder")
    else:
        cfg.validate()
    info = dist_info()
    dist = None
    if info.world_size > 1:
        import torch.distributed as dist  # noqa: F811

        if not dist.is_initialized():
            dist.init_process_group("nccl" if torch.cuda.is_available() and cfg.device != "cpu" else "gloo")
    if info.world_size > 1 and cfg.device in ("auto", "cuda") and torch.cuda.is_available():
        device = torch.device("cuda", info.local_rank)
        torch.cuda.set_device(device)
    else:
        device = resolve_device(cfg.device)

    error: BaseException | None = None
    try:
        cases, meta = find_cases(dataset_dir)
        labels = read_labels(meta) or {}
        if not labels:
            raise MedsegError(f"{dataset_dir}: dataset.json must declare the labels (name -> value)")
        modality = (cfg.modality or read_modality(meta) or "CT").upper()
        trn, val = split_cases(cases, meta, dataset_dir, cfg)
        if len(trn) < info.world_size:
            raise MedsegError(f"{dataset_dir}: {len(trn)} training case(s) cannot be shared by {info.world_size} processes")
        init = load_bundle(cfg.init) if cfg.init else None
        card = _model_card(cfg, labels, modality, meta, init)
        shard = trn[info.rank :: info.world_size]
        prepared = prepare_cases(shard, card, cfg.cache_workers)
        card.intensity_range = training_intensity_range(prepared)
        val_data = load_validation(val, card) if info.is_main else []
    except BaseException as exc:  # noqa: BLE001 - shared with the other ranks, then raised
        error = _unwrap(exc)
    _all_ok(dist, error)

    torch.manual_seed(cfg.seed)
    model = build_model(card)
    kept: list[str] = []
    if init is not None:
        kept = transfer_weights(init, model, card)
    if cfg.freeze_encoder:
        for p in model.encoder.parameters():
            p.requires_grad_(False)
    model = model.to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    weight = _class_weights(prepared, len(card.labels), cfg.class_weights, dist)
    loss_fn = make_loss(cfg, None if weight is None else weight.to(device))
    total = cfg.epochs * cfg.steps_per_epoch
    opt, sched = make_optimizer(cfg, [p for p in model.parameters() if p.requires_grad], total)
    dtype = amp_dtype(cfg, device)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    history: list[dict] = []
    best, start_epoch = -1.0, 1
    if state is not None:
        try:
            model.load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])
            sched.load_state_dict(state["scheduler"])
            if state.get("scaler"):
                scaler.load_state_dict(state["scaler"])
            history, best = list(state["history"]), float(state["best"])
            start_epoch = int(state["epoch"]) + 1
        except (RuntimeError, ValueError, KeyError, TypeError, IndexError) as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            raise MedsegError(f"{run_dir / 'config.json'}: does not fit {ckpt_path.name} ({first}); a run resumes "
                              f"with the settings it was started with") from None
        if "torch_rng" in state:
            torch.set_rng_state(state["torch_rng"])
    net = model
    if dist is not None:
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    sampler = SliceSampler(prepared, cfg, card.context_slices, info.rank)
    if info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        if state is None:
            atomic_write_text(run_dir / "config.json", json.dumps(asdict(cfg), indent=2) + "\n")
    training_notes = {
        "dataset": dataset_dir.name,
        "train_cases": [c.name for c in trn],
        "val_cases": [c.name for c in val],
        "validation": "held-out cases" if set(c.name for c in val).isdisjoint(c.name for c in trn) else "training cases",
        "loss": cfg.loss + (f" ({cfg.class_weights} class weights)" if weight is not None else ""),
        "optimizer": f"{cfg.optimizer}(lr={cfg.learning_rate}, weight_decay={cfg.weight_decay}), {cfg.schedule} schedule",
        "augmentation": (
            f"rotate +-{cfg.rotate_deg} deg, scale +-{cfg.scale}, flip p={cfg.flip_prob}, intensity +-{cfg.intensity_jitter}"
            if cfg.augment
            else "none"
        ),
        "seed": cfg.seed,
        "device": str(device),
        "amp": str(dtype).replace("torch.", "") if dtype else "off",
        "world_size": info.world_size,
        "command": command,
        "init": None if init is None else {"name": init.card.name, "path": str(cfg.init), "kept_classes": kept},
        "frozen_encoder": cfg.freeze_encoder,
        "medseg_version": __version__,
    }
    done = (start_epoch - 1) * cfg.steps_per_epoch
    prefetch = ThreadPoolExecutor(1, thread_name_prefix="medseg-prefetch") if device.type == "cuda" else None
    try:
        for epoch in range(start_epoch, cfg.epochs + 1):
            net.train()
            if cfg.freeze_encoder:
                model.encoder.eval()  # frozen batch-norm statistics too
            t0, losses = time.perf_counter(), []
            pending = prefetch.submit(sampler.batch, epoch, 0) if prefetch else None
            for step in range(cfg.steps_per_epoch):
                if prefetch:
                    x, y = pending.result()
                    if step + 1 < cfg.steps_per_epoch:
                        pending = prefetch.submit(sampler.batch, epoch, step + 1)
                else:
                    x, y = sampler.batch(epoch, step)
                losses.append(train_step(net, x, y, loss_fn, opt, sched, scaler, device, dtype, cfg.channels_last))
                done += 1
                if on_step is not None and info.is_main:
                    elapsed = time.perf_counter() - t0
                    on_step(done, total, {
                        "epoch": epoch,
                        "loss": float(np.mean(losses)),
                        "slices_per_s": (step + 1) * cfg.batch_size * info.world_size / max(elapsed, 1e-9),
                    })
            seconds = time.perf_counter() - t0
            if not np.isfinite(np.mean(losses)):
                raise MedsegError(f"{run_dir}: the loss became {np.mean(losses)} in epoch {epoch}; try a lower --lr")
            mean_loss = _mean_across(dist, float(np.mean(losses)), device)
            if info.is_main:
                metrics = evaluate_cases(model, val_data, card, device, hd95=cfg.hd95)
                dice = {k: v["dice"] for k, v in metrics.items() if "dice" in v}
                mean_dice = float(np.mean(list(dice.values()))) if dice else 0.0
                row = {
                    "epoch": epoch,
                    "loss": mean_loss,
                    "mean_dice": mean_dice,
                    "lr": float(opt.param_groups[0]["lr"]),
                    "seconds": seconds,
                    "slices_per_s": cfg.steps_per_epoch * cfg.batch_size * info.world_size / seconds,
                    **{f"dice_{k}": v for k, v in dice.items()},
                    **{f"hd95_{k}": v["hd95"] for k, v in metrics.items() if "hd95" in v},
                }
                history.append(row)
                card.training = {**training_notes, "epoch": epoch, "val_dice": dice,
                                 "val_hd95_mm": {k: v["hd95"] for k, v in metrics.items() if "hd95" in v}}
                save_bundle(model, card, run_dir / "last", half=cfg.half_precision_weights)
                if mean_dice > best:
                    best = mean_dice
                    save_bundle(model, card, run_dir / "best", half=cfg.half_precision_weights)
                _write_history(run_dir / "history.csv", history)
                _plot_curves(run_dir / "curves.png", history)
                _save_checkpoint(ckpt_path, {
                    "format": 1,
                    "epoch": epoch,
                    "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                    "optimizer": opt.state_dict(),
                    "scheduler": sched.state_dict(),
                    "scaler": scaler.state_dict() if scaler.is_enabled() else {},
                    "history": history,
                    "best": best,
                    "torch_rng": torch.get_rng_state(),
                    "config": json.loads(json.dumps(asdict(cfg))),
                })
                if on_epoch is not None:
                    on_epoch(epoch, row)
            if dist is not None:
                dist.barrier()
    finally:
        if prefetch:  # a batch being drawn is finished, not left running while the error unwinds
            prefetch.shutdown(wait=True, cancel_futures=True)
    if info.world_size > 1:
        print(f"rank {info.rank}/{info.world_size} finished epoch {cfg.epochs}", file=sys.stderr, flush=True)
    if dist is not None:
        dist.barrier()
        dist.destroy_process_group()
    if not (run_dir / "best").exists():
        raise MedsegError(f"{run_dir}: no best model written")
    return load_bundle(run_dir / "best", device=device)


def check_run_folder(run_dir: Path, dataset_dir: Path) -> None:
    """Refuse, before anything is read, a run folder that is a file, lies in (or is) the dataset
    folder, or cannot be written (``train`` calls this first; so does the napari widget's run)."""
    from .safety import ensure_writable, is_inside, refuse_overwriting_inputs

    run_dir, dataset_dir = Path(run_dir), Path(dataset_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise MedsegError(f"{run_dir}: is a file, expected a run folder")
    refuse_overwriting_inputs(run_dir, [("dataset", dataset_dir)])
    for sub in ("best", "last"):
        if dataset_dir.exists() and is_inside(dataset_dir, run_dir / sub):
            raise MedsegError(f"{run_dir}: refusing to train into it: the dataset ({dataset_dir}) lies in its {sub}/ "
                              f"folder, which the run replaces; choose another output")
    ensure_writable(run_dir, folder=True)


def check_init_bundle(run_dir: Path, init: str | os.PathLike | None) -> None:
    """Refuse an ``--init`` bundle that this run would replace (``RUN/best``, ``RUN/last``) or write into."""
    from .safety import is_inside, refuse_overwriting_inputs

    if init is None:
        return
    run_dir, init_path = Path(run_dir), Path(init)
    for sub in ("best", "last"):
        if is_inside(init_path, run_dir / sub):
            raise MedsegError(f"{run_dir}: refusing to train into it: its {sub}/ bundle would replace the --init "
                              f"bundle ({init}); choose another output or copy the bundle elsewhere first")
    refuse_overwriting_inputs(run_dir, [("--init bundle", init_path)])


# settings that may differ between a run's start and its resumption (they shape neither the
# model, nor the batches, nor the schedule)
RESUME_MAY_CHANGE = frozenset({"device", "cache_workers", "hd95"})


def check_resume_config(cfg: TrainConfig, state: dict, where: Path) -> None:
    """Refuse a hand-edited ``config.json`` that no longer fits the run's checkpoint.

    Checkpoints record the config they were made with; older ones are checked by the length of
    their LR schedule (an edited ``epochs`` would otherwise fail at the last steps).
    """
    saved = state.get("config")
    if isinstance(saved, dict):
        now = json.loads(json.dumps(asdict(cfg)))
        for key, value in now.items():
            if key in RESUME_MAY_CHANGE or key not in saved or saved[key] == value:
                continue
            raise MedsegError(f"{where}: field '{key}': {value!r} differs from {saved[key]!r} in {CHECKPOINT}; a run "
                              f"resumes with the settings it was started with (start a new run to change it)")
        return
    total = cfg.epochs * cfg.steps_per_epoch
    sched = state.get("scheduler") if isinstance(state.get("scheduler"), dict) else {}
    key = {"onecycle": "total_steps", "cosine": "T_max", "poly": "total_iters"}.get(cfg.schedule)
    if key and key in sched and sched[key] != total:
        raise MedsegError(f"{where}: field 'epochs': {cfg.epochs} x {cfg.steps_per_epoch} steps do not fit the "
                          f"{sched[key]}-step schedule in {CHECKPOINT}; a run resumes with the settings it was "
                          f"started with")


def _model_card(cfg: TrainConfig, labels: dict[str, int], modality: str, meta: dict, init: Bundle | None) -> ModelCard:
    """The new model's card: fine-tuning keeps the source's architecture and input contract
    (width, spacing, context); a source for another modality gets this modality's preprocessing."""
    src = init.card if init is not None else None
    same_modality = src is not None and src.modality.upper() == modality
    card = ModelCard(
        name=cfg.name,
        labels=labels,
        modality=modality,
        architecture=src.architecture if src else "segnet",
        arch_kwargs=dict(src.arch_kwargs) if src else {"width": cfg.width},
        preprocessing=dict(src.preprocessing) if same_modality else default_preprocessing(modality),
        spacing=list(src.spacing) if src else [float(s) for s in cfg.spacing],
        slice_size=[cfg.crop, cfg.crop],
        context_slices=src.context_slices if src else cfg.context_slices,
        description=str(meta.get("description", "")),
    )
    card.validate()
    return card


def _mean_across(dist, value: float, device) -> float:
    if dist is None:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device if device.type == "cuda" else "cpu")
    dist.all_reduce(t)
    return float(t.item()) / dist.get_world_size()


def _save_checkpoint(path: Path, state: dict) -> None:
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def _load_checkpoint(path: Path) -> dict:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable checkpoint is one message
        raise MedsegError(f"{path}: unreadable checkpoint ({str(exc).splitlines()[0][:200]})") from None
    if not isinstance(state, dict) or state.get("format") != 1:
        raise MedsegError(f"{path}: not a medseg training checkpoint")
    return state


def _write_history(path: Path, rows: list[dict]) -> None:
    import io

    keys = list(dict.fromkeys(k for r in rows for k in r))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=keys)
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def _plot_curves(path: Path, rows: list[dict]) -> None:
    """Training curve PNG: loss and validation Dice per label, per epoch (matplotlib, no pyplot)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    epochs = [r["epoch"] for r in rows]
    fig = Figure(figsize=(10, 4), dpi=100)
    FigureCanvasAgg(fig)
    ax1, ax2 = fig.subplots(1, 2)
    ax1.plot(epochs, [r["loss"] for r in rows], marker=".")
    ax1.set(xlabel="epoch", ylabel="training loss", title="loss", yscale="log")
    for key in dict.fromkeys(k for r in rows for k in r if k.startswith("dice_")):
        ax2.plot(epochs, [r.get(key, float("nan")) for r in rows], marker=".", label=key[5:])
    ax2.plot(epochs, [r["mean_dice"] for r in rows], color="black", lw=2, label="mean")
    ax2.set(xlabel="epoch", ylabel="validation Dice", title="validation Dice", ylim=(0, 1))
    ax2.legend(fontsize=7, loc="lower right")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"), suffix=".png")
