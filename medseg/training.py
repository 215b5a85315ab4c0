"""A minimal training loop: 2D/2.5D slices, cross-entropy, best-by-validation-Dice bundles.

The preprocessing is the inference pipeline's own (:mod:`medseg.transforms`): RAS view,
per-modality intensity scaling, in-plane resampling to the model's spacing, so a trained
bundle segments scans exactly as it saw them in training.
"""

from __future__ import annotations

import csv
import json
import math
import time
from dataclasses import asdict, dataclass
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
from .io import Scan, grid_mismatch, load_scan
from .metrics import dice_per_label
from .transforms import (
    array_on_grid_of,
    canonical_spacing,
    canonical_view,
    context_indices,
    default_preprocessing,
    intensity_range,
    intensity_transform,
    resize_slices,
    target_size,
)


@dataclass
class TrainConfig:
    """Training settings; saved as ``config.json`` in the run folder."""

    epochs: int = 30
    steps_per_epoch: int = 40
    batch_size: int = 8
    lr: float = 2e-3
    weight_decay: float = 1e-4
    width: int = 16
    context_slices: int = 1
    spacing: tuple[float, float] = (2.0, 2.0)
    crop: int = 160
    foreground_fraction: float = 0.7
    val_cases: int = 2
    seed: int = 0
    device: str = "auto"
    name: str = "medseg-segnet"
    modality: str | None = None
    init: str | None = None  # bundle to start from (fine-tuning)
    class_weights: str = "none"  # "none", or "sqrt-inverse": CE weighted by 1/sqrt(class frequency)
    half_precision_weights: bool = True


@dataclass
class PreparedCase:
    name: str
    image: np.ndarray  # (Z, X', Y') float16, intensity-scaled, resampled in-plane
    classes: np.ndarray  # (Z, X', Y') uint8 class indices
    foreground: np.ndarray  # indices of slices holding any foreground


def _label_lut(values: list[int], path: Path, present: np.ndarray) -> np.ndarray:
    undeclared = sorted(set(np.flatnonzero(present).tolist()) - set(values))
    if undeclared:
        raise MedsegError(f"{path}: label values {undeclared} are not declared in the dataset's labels {values}")
    lut = np.zeros(len(present), dtype=np.uint8)
    for c, v in enumerate(values):
        if v < len(lut):
            lut[v] = c
    return lut


def prepare_case(case: Case, card: ModelCard) -> PreparedCase:
    """Load one pair and bring it into the model's input space (slices first)."""
    image = load_scan(case.image, modality=card.modality)
    label = load_scan(case.label)
    why = grid_mismatch(image, label)
    if why is not None:
        raise MedsegError(f"{case.label}: {why} of its image {case.image.name}")
    view, ornt = canonical_view(image.array, image.affine, card.orientation)
    lview, _ = canonical_view(label.array, label.affine, card.orientation)
    spacing = canonical_spacing(image.affine, ornt)
    size = target_size(view.shape[:2], (spacing[0], spacing[1]), tuple(card.spacing))
    lo, hi = intensity_range(view, card.preprocessing)
    x = torch.from_numpy(np.ascontiguousarray(np.moveaxis(view, 2, 0), dtype=np.float32))[:, None]
    x = resize_slices(intensity_transform(lo, hi)(x), size, "bilinear")[:, 0]
    lab = np.asarray(lview).astype(np.int64)
    lut = _label_lut(card.label_values, case.label, np.bincount(lab.ravel()) > 0)
    y = torch.from_numpy(np.ascontiguousarray(np.moveaxis(lut[lab], 2, 0)))[:, None]
    y = resize_slices(y.float(), size, "nearest")[:, 0].to(torch.uint8)
    fg = np.flatnonzero(y.flatten(1).amax(dim=1).numpy() > 0)
    return PreparedCase(case.name, x.numpy().astype(np.float16), y.numpy(), fg)


def _crop_or_pad(img: np.ndarray, lab: np.ndarray, size: int, rng: np.random.Generator):
    """Random ``size`` x ``size`` window of (C, H, W) / (H, W) arrays, zero-padded where smaller."""
    c, h, w = img.shape
    out_i = np.zeros((c, size, size), dtype=np.float32)
    out_l = np.zeros((size, size), dtype=np.int64)
    y0 = rng.integers(0, h - size + 1) if h > size else 0
    x0 = rng.integers(0, w - size + 1) if w > size else 0
    oy = rng.integers(0, size - h + 1) if h < size else 0
    ox = rng.integers(0, size - w + 1) if w < size else 0
    hh, ww = min(h, size), min(w, size)
    out_i[:, oy : oy + hh, ox : ox + ww] = img[:, y0 : y0 + hh, x0 : x0 + ww]
    out_l[oy : oy + hh, ox : ox + ww] = lab[y0 : y0 + hh, x0 : x0 + ww]
    return out_i, out_l


def sample_batch(cases: list[PreparedCase], cfg: TrainConfig, rng: np.random.Generator):
    """A batch of 2.5D slices, ``foreground_fraction`` of them drawn from slices with foreground."""
    xs, ys = [], []
    for _ in range(cfg.batch_size):
        case = cases[rng.integers(len(cases))]
        depth = case.image.shape[0]
        if case.foreground.size and rng.random() < cfg.foreground_fraction:
            z = int(rng.choice(case.foreground))
        else:
            z = int(rng.integers(depth))
        idx = context_indices(np.array([z]), cfg.context_slices, depth)[0]
        img, lab = _crop_or_pad(case.image[idx].astype(np.float32), case.classes[z], cfg.crop, rng)
        # Intensity jitter, kept small: in CT the absolute value is the cue (liver and spleen
        # differ by ~20 HU = 0.04 of the window), so contrast +-3 %, brightness +-0.01, noise.
        img = img * rng.uniform(0.97, 1.03) + rng.uniform(-0.01, 0.01)
        img = img + rng.normal(0, 0.01, img.shape).astype(np.float32)
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


def evaluate_cases(model, cases: list[tuple[Scan, np.ndarray]], card: ModelCard, device) -> dict[str, float]:
    """Mean 3D Dice per label of full-volume slice-wise predictions (the inference path) on held-out cases."""
    model.eval()
    bundle = Bundle(card, model)
    scores: dict[str, list[float]] = {}
    for image, ref in cases:
        for k, v in dice_per_label(segment(image, bundle, device=device), ref, card.labels).items():
            if not math.isnan(v):
                scores.setdefault(k, []).append(v)
    return {k: float(np.mean(v)) for k, v in scores.items()}


def train(
    dataset_dir: str | Path,
    run_dir: str | Path,
    cfg: TrainConfig,
    *,
    on_epoch: Callable[[int, dict], None] | None = None,
    command: str = "",
) -> Bundle:
    """Train a SegNet on a dataset folder; write ``best/`` and ``last/`` bundles into ``run_dir``."""
    run_dir = Path(run_dir)
    cases, meta = find_cases(dataset_dir)
    labels = read_labels(meta) or {}
    if not labels:
        raise MedsegError(f"{dataset_dir}: dataset.json must declare the labels (name -> value)")
    if len(cases) <= cfg.val_cases:
        raise MedsegError(f"{dataset_dir}: {len(cases)} case(s) is too few for {cfg.val_cases} validation case(s)")
    modality = (cfg.modality or read_modality(meta) or "CT").upper()
    rng = np.random.default_rng(cfg.seed)
    torch.manual_seed(cfg.seed)
    order = rng.permutation(len(cases))
    val = [cases[i] for i in sorted(order[: cfg.val_cases])]
    trn = [cases[i] for i in sorted(order[cfg.val_cases :])]
    device = resolve_device(cfg.device)

    init = load_bundle(cfg.init) if cfg.init else None
    if init is not None and init.card.modality.upper() != modality:
        raise MedsegError(f"{cfg.init}: the model is for {init.card.modality} but the dataset is {modality}")
    src = init.card if init is not None else None  # fine-tuning keeps the source's input contract
    card = ModelCard(
        name=cfg.name,
        labels=labels,
        modality=modality,
        architecture=src.architecture if src else "segnet",
        arch_kwargs=dict(src.arch_kwargs) if src else {"width": cfg.width},
        preprocessing=dict(src.preprocessing) if src else default_preprocessing(modality),
        spacing=list(src.spacing) if src else [float(s) for s in cfg.spacing],
        slice_size=[cfg.crop, cfg.crop],
        context_slices=src.context_slices if src else cfg.context_slices,
        description=str(meta.get("description", "")),
    )
    card.validate()
    prepared = [prepare_case(c, card) for c in trn]
    val_data = load_validation(val, card)
    model = build_model(card)
    kept: list[str] = []
    if init is not None:
        kept = transfer_weights(init, model, card)
    model = model.to(device)
    weight = _class_weights(prepared, len(card.labels), cfg.class_weights)
    weight = weight.to(device) if weight is not None else None
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    total = cfg.epochs * cfg.steps_per_epoch
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=total, pct_start=0.1)

    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.json").write_text(json.dumps(asdict(cfg), indent=2) + "\n")
    history: list[dict] = []
    best = -1.0
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        t0, losses = time.perf_counter(), []
        for _ in range(cfg.steps_per_epoch):
            x, y = sample_batch(prepared, cfg, rng)
            loss = F.cross_entropy(model(x.to(device)), y.to(device), weight=weight)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            losses.append(loss.item())
        seconds = time.perf_counter() - t0
        dice = evaluate_cases(model, val_data, card, device)
        mean_dice = float(np.mean(list(dice.values()))) if dice else 0.0
        row = {
            "epoch": epoch,
            "loss": float(np.mean(losses)),
            "mean_dice": mean_dice,
            "slices_per_s": cfg.steps_per_epoch * cfg.batch_size / seconds,
            **{f"dice_{k}": v for k, v in dice.items()},
        }
        history.append(row)
        card.training = {
            "dataset": Path(dataset_dir).name,
            "train_cases": [c.name for c in trn],
            "val_cases": [c.name for c in val],
            "epoch": epoch,
            "loss": "cross-entropy" + (f" ({cfg.class_weights} class weights)" if weight is not None else ""),
            "optimizer": f"AdamW(lr={cfg.lr}, weight_decay={cfg.weight_decay}), one-cycle schedule",
            "seed": cfg.seed,
            "device": str(device),
            "val_dice": dice,
            "command": command,
            "init": None if init is None else {"name": init.card.name, "path": str(cfg.init), "kept_classes": kept},
            "medseg_version": __version__,
        }
        save_bundle(model, card, run_dir / "last", half=cfg.half_precision_weights)
        if mean_dice > best:
            best = mean_dice
            save_bundle(model, card, run_dir / "best", half=cfg.half_precision_weights)
        _write_history(run_dir / "history.csv", history)
        if on_epoch is not None:
            on_epoch(epoch, row)
    return load_bundle(run_dir / "best", device=device)


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


def _class_weights(cases: list[PreparedCase], num_classes: int, mode: str) -> torch.Tensor | None:
    """Cross-entropy class weights from the training voxels' class frequencies (mean weight 1)."""
    if mode == "none":
        return None
    if mode != "sqrt-inverse":
        raise MedsegError(f"class weights {mode!r}: expected none or sqrt-inverse")
    counts = sum(np.bincount(c.classes.ravel(), minlength=num_classes).astype(np.float64) for c in cases)
    w = 1.0 / np.sqrt(np.maximum(counts, 1.0) / counts.sum())
    return torch.tensor(w / w.mean(), dtype=torch.float32)


def _write_history(path: Path, rows: list[dict]) -> None:
    keys = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)
