"""Training settings: :class:`TrainConfig`, its one check, and what the settings build.

The command line (``medseg train``: each option's default is read from :class:`TrainConfig`), the
napari widget and a run's ``config.json`` (read back by ``--resume``) all build a
:class:`TrainConfig`; :meth:`TrainConfig.validate` checks its types, ranges and choices and names
the first bad field in one line. From the settings come the loss (:func:`make_loss`), the
optimiser and its per-step schedule (:func:`make_optimizer`) and the autocast dtype
(:func:`amp_dtype`); :func:`check_resume_config` refuses a ``config.json`` edited to no longer fit
its run's checkpoint.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np

from .errors import MedsegError

if TYPE_CHECKING:  # torch is imported where it is used: `medseg --help` reads TrainConfig's defaults
    import torch


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
    context_mm: float | None = 3.0  # context neighbours ~3 mm away whatever the slice spacing; None: the next slice
    spacing: tuple[float, float] = (2.0, 2.0)
    crop: int = 160
    foreground_fraction: float = 0.7
    foreground_sampling: str = "class"  # class: a foreground class drawn evenly, the patch around one of its pixels | slice
    augment: bool = True
    rotate_deg: float = 10.0
    scale: float = 0.1
    flip_prob: float = 0.0
    intensity_jitter: float = 0.03
    # lesion contrast augmentation (0: off): a lesion label's contrast to the tissue around it is
    # redrawn, hypo or hyper, from lesion_contrast_min..lesion_contrast (fractions of the intensity
    # scale; on the CT window of 500 HU, 0.16 is 80 HU; a minimum above the maximum is taken as it)
    lesion_contrast: float = 0.0
    lesion_contrast_min: float = 0.03
    # what inference does to the label map (the model card's postprocessing): none | main-piece
    # (each organ, not lesion, label keeps only the pieces near its largest); None: none from
    # scratch, the source model's when fine-tuning
    postprocessing: str | None = None
    val_cases: int = 2  # 0: validate on the training cases (an overfitting check, not a score)
    hd95: bool = True
    val_every: int = 1  # validate (and keep the best) every N epochs, and after the last
    seed: int = 0
    device: str = "auto"
    amp: str = "auto"  # auto (CUDA: bf16 where supported, else fp16 + grad scaler; CPU: off) | off | bf16 | fp16
    channels_last: bool = True
    name: str = "medseg-segnet"
    modality: str | None = None
    init: str | None = None  # bundle to start from (fine-tuning)
    freeze_encoder: bool = False
    freeze_batchnorm: bool = False  # keep the starting model's batch-norm statistics (few-slice fine-tuning)
    cache_workers: int = 0
    half_precision_weights: bool = True

    @property
    def lesion_contrast_range(self) -> tuple[float, float]:
        """(lowest, highest) redrawn lesion contrast; a minimum above the maximum is taken as it."""
        return min(self.lesion_contrast_min, self.lesion_contrast), self.lesion_contrast

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
        data.setdefault("foreground_sampling", "slice")  # the sampling of runs written before the field
        data.setdefault("context_mm", None)  # a run started before context_mm took the next slice: resume it so
        cfg = validate_as(cls, data, path)
        cfg.spacing = tuple(cfg.spacing)  # type: ignore[assignment]
        cfg.validate(path)
        return cfg


# what each TrainConfig field holds (checked by _config_problem, and before pydantic's lax coercion)
_FIELD_KINDS = {
    "epochs": "int", "steps_per_epoch": "int", "batch_size": "int", "lr": "float?", "optimizer": "str",
    "schedule": "str", "weight_decay": "float", "loss": "str", "class_weights": "str", "width": "int",
    "context_slices": "int", "context_mm": "float?", "spacing": "pair", "crop": "int", "foreground_fraction": "float",
    "foreground_sampling": "str", "augment": "bool",
    "rotate_deg": "float", "scale": "float", "flip_prob": "float", "intensity_jitter": "float", "val_cases": "int",
    "lesion_contrast": "float", "lesion_contrast_min": "float", "postprocessing": "str?",
    "hd95": "bool", "val_every": "int", "seed": "int", "device": "str", "amp": "str", "channels_last": "bool", "name": "str",
    "modality": "str?", "init": "str?", "freeze_encoder": "bool", "freeze_batchnorm": "bool", "cache_workers": "int",
    "half_precision_weights": "bool",
}

_CHOICES = {
    "optimizer": ("adamw", "sgd"),
    "schedule": ("onecycle", "cosine", "poly", "constant"),
    "loss": ("ce", "ce+dice"),
    "class_weights": ("none", "sqrt-inverse"),
    "foreground_sampling": ("class", "slice"),
    "postprocessing": ("none", "main-piece"),  # or None
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
    "context_mm": (0.1, 50, "a distance in 0.1..50 mm"),
    "val_cases": (0, None, "an integer >= 0"),
    "val_every": (1, None, "an integer >= 1"),
    "seed": (0, 2**63 - 1, "an integer >= 0"),
    "cache_workers": (0, 256, "an integer 0..256"),
    "weight_decay": (0, None, "a finite number >= 0"),
    "foreground_fraction": (0, 1, "a number in 0..1"),
    "flip_prob": (0, 1, "a number in 0..1"),
    "rotate_deg": (0, 180, "a number of degrees in 0..180"),
    "scale": (0, 0.9, "a number in 0..0.9"),
    "intensity_jitter": (0, 1, "a number in 0..1"),
    "lesion_contrast": (0, 1, "a number in 0..1"),
    "lesion_contrast_min": (0, 1, "a number in 0..1"),
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
        if value is None:
            continue
        if (low is not None and value < low) or (high is not None and value > high):
            return key, value, what
    if cfg.lr is not None and not cfg.lr > 0:
        return "lr", cfg.lr, "a finite number > 0"
    for key, allowed in _CHOICES.items():
        if getattr(cfg, key) is not None and getattr(cfg, key) not in allowed:
            return key, getattr(cfg, key), f"one of {', '.join(allowed)}"
    if not cfg.name.strip():
        return "name", cfg.name, "a non-empty model name"
    if cfg.modality is not None and cfg.modality.upper() not in ("CT", "MR"):
        return "modality", cfg.modality, "CT or MR (or null: from dataset.json)"
    if cfg.device != "auto":
        try:
            import torch

            dev = torch.device(cfg.device)
        except (RuntimeError, ValueError):
            dev = None
        if dev is None or dev.type not in ("cpu", "cuda", "mps"):
            return "device", cfg.device, "auto, cpu, cuda or cuda:N"
    if cfg.init is not None and not cfg.init.strip():
        return "init", cfg.init, "a bundle folder (or null)"
    return None


# ---------------------------------------------------------------------------------------------- what the settings build


def make_loss(cfg: TrainConfig, weight: torch.Tensor | None) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Cross-entropy (optionally class-weighted), or cross-entropy + soft Dice (MONAI ``DiceLoss``).

    Targets equal to :data:`~medseg.transforms.IGNORE_INDEX` (a dataset's ``ignore`` label) count
    in neither term: the loss and its gradients are those of the same loss computed over the
    labelled voxels alone (both terms are sums over voxels, so masking them out is exact), and a
    batch with no labelled voxel gives a loss of 0 with zero gradients.
    """
    import torch
    import torch.nn.functional as F

    from .transforms import IGNORE_INDEX

    def ce(logits, y):
        return F.cross_entropy(logits.float(), y, weight=weight, ignore_index=IGNORE_INDEX)

    if cfg.loss == "ce":
        dice = None
    else:
        from monai.losses import DiceLoss

        dice = DiceLoss(include_background=False, to_onehot_y=False, softmax=False, batch=True)

    def loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        labelled = y != IGNORE_INDEX
        if not bool(labelled.any()):
            return logits.float().sum() * 0.0
        value = ce(logits, y)
        if dice is not None:
            keep = labelled[:, None].float()
            probs = torch.softmax(logits.float(), dim=1) * keep
            onehot = F.one_hot(torch.where(labelled, y, 0), logits.shape[1]).movedim(-1, 1).float() * keep
            value = value + dice(probs, onehot)
        return value

    return loss


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
    import torch

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
    import torch

    if cfg.amp == "off":
        return None
    if device.type == "cuda":
        if cfg.amp == "fp16" or (cfg.amp == "auto" and not torch.cuda.is_bf16_supported()):
            return torch.float16
        return torch.bfloat16
    return torch.bfloat16 if cfg.amp == "bf16" else None


# ---------------------------------------------------------------------------------------------- resuming

CHECKPOINT = "checkpoint.pt"

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


def save_checkpoint(path: Path, state: dict) -> None:
    """``checkpoint.pt``, atomically (read back by :func:`load_checkpoint`)."""
    import torch

    from .io import atomic_write

    atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_checkpoint(path: Path) -> dict:
    """A run's checkpoint, read with ``weights_only=True`` (no pickled code runs); one line if unreadable."""
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable checkpoint is one message
        raise MedsegError(f"{path}: unreadable checkpoint ({str(exc).splitlines()[0][:200]})") from None
    if not isinstance(state, dict) or state.get("format") != 1:
        raise MedsegError(f"{path}: not a medseg training checkpoint")
    return state
