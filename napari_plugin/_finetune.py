"""Fine-tuning from the Segment widget, in terms a user can follow (runs in a worker thread, no Qt here).

:func:`fine_tune_job` runs :func:`medseg.training.train` with settings sized for a few corrected
cases on a laptop's CPU (:data:`DEFAULT_EPOCHS` x :data:`DEFAULT_STEPS`) and reports, as it goes,
the epoch, the loss and the time left (:class:`TuneStatus`). Validation after each epoch segments
every validation case in full, which on a CPU can cost as much as the epoch's steps; the time
left counts it (until the first epoch has measured it, estimated by timing the model on one batch
of slices the size of the validation scans').
:func:`after_cancel` says what a cancelled run kept, and :func:`dice_summary` says what a model's
Dice was measured on (the training cases themselves, or cases held out).
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, NamedTuple

# Sized on 2 CPU cores, measured with the bundled model on an idle machine: a step (8 slices of
# 128 x 128) takes about 0.26 s; validating three 512x512x100 scans ~12 s (with no case held
# out every case is validated after every epoch). 4 epochs of 60 steps took about 2 min on three
# such scans, 1 min on the sample; on a machine busy with other work, 2-4 times that.
DEFAULT_EPOCHS = 4
DEFAULT_STEPS = 60  # per epoch
DEFAULT_CROP = 128  # the bundled model's training crop (256 mm at its 2 mm spacing)
HOLD_OUT_FROM = 4  # with this many cases or more, one is held out to measure the Dice on

# Fine-tuning on a few labelled slices (a dataset with an ``ignore`` label): the starting model's
# batch-norm statistics are kept (a few slices' crops are not the scan's statistics) and the rate is
# lower. Measured on shifted phantoms (benchmarks/bench_correction.py, seeds 900-902, CUDA): with the
# full-label settings one corrected slice could wreck the model (mean Dice 0.74 -> 0.24, 0.92 -> 0.42);
# with these, 1 to 8 slices chosen worst-first or evenly spaced never fell more than 0.01 below where
# they started and 2-4 such slices reached 0.897-0.933 (a single random slice still could: -0.03, -0.19).
SPARSE = {"freeze_batchnorm": True, "lr": 1e-4}

# Validating a case costs about this many times the model's forward passes over its slices
# (resampling, reducing to labels, the Dice, saving the bundles; measured on 2 CPU cores).
VALIDATION_OVERHEAD = 1.4


@dataclass
class TuneStatus:
    """Where a fine-tune is; ``str()`` gives the line to show."""

    phase: str  # "preparing", "training", "validating", "epoch done"
    epoch: int = 0
    epochs: int = 0
    step: int = 0  # within the epoch
    steps: int = 0
    loss: float | None = None
    seconds_left: float | None = None
    note: str = ""

    def __str__(self) -> str:
        if self.phase == "preparing":
            return f"fine-tuning: {self.note}"
        parts = [f"epoch {self.epoch}/{self.epochs}"]
        if self.phase == "training":
            parts.append(f"step {self.step}/{self.steps}")
        elif self.phase == "epoch done":
            parts[0] += " done"
        if self.loss is not None:
            parts.append(f"loss {self.loss:.3f}")
        if self.note:
            parts.append(self.note)
        parts.append(format_time_left(self.seconds_left))
        return " · ".join(parts)


def format_time_left(seconds: float | None) -> str:
    if seconds is None:
        return "time left: measuring…"
    seconds = max(0, int(round(seconds)))
    if seconds < 1:
        return "finishing"
    if seconds < 60:
        return f"about {seconds} s left"
    minutes, rest = divmod(seconds, 60)
    return f"about {minutes} min {rest:02d} s left" if minutes < 10 else f"about {round(seconds / 60)} min left"


class FineTuneResult(NamedTuple):
    best: str  # the best bundle's folder: the model for Segment from now on
    dice: dict  # label -> Dice of the best epoch (on what: see ``summary``)
    summary: str  # dice_summary of the best model's card
    seconds: float


class _Clock:
    """Time left: remaining steps x recent mean step time + remaining validations x validation time.

    The step time is the mean of the last :attr:`WINDOW` steps, so the estimate follows a machine
    whose load changes; a validation's time is the last one measured (before that, ``val_guess``)."""

    WINDOW = 20

    def __init__(self, epochs: int, steps: int, val_guess: float | None) -> None:
        self.epochs, self.steps = epochs, steps
        self.val_guess = val_guess  # a validation's seconds, until one is measured
        self.step_times: deque[float] = deque(maxlen=self.WINDOW)
        self.val_time: float | None = None
        self.last: float | None = None  # when the last step (or validation) ended

    def step(self, now: float) -> None:
        if self.last is not None:  # the first step of all also holds the set-up: not counted
            self.step_times.append(now - self.last)
        self.last = now

    def validated(self, now: float) -> None:
        if self.last is not None:
            self.val_time = now - self.last
        self.last = now

    def seconds_left(self, done: int, validations_left: int) -> float | None:
        per_val = self.val_time if self.val_time is not None else self.val_guess
        if not self.step_times or per_val is None:
            return None
        per_step = sum(self.step_times) / len(self.step_times)
        return (self.epochs * self.steps - done) * per_step + validations_left * per_val


def fine_tune_config(dataset, init, epochs: int = DEFAULT_EPOCHS, steps: int = DEFAULT_STEPS, device: str = "auto",
                     **settings):
    """The :class:`~medseg.config.TrainConfig` of a fine-tune from the viewer: a handful of cases
    (fewer than :data:`HOLD_OUT_FROM`) are all trained on and the Dice is measured on them; with
    more, one case is held out. A dataset labelled slice by slice (it declares an ``ignore``
    label) is fine-tuned with :data:`SPARSE` settings. ``settings`` override other TrainConfig
    fields (tests use smaller crops)."""
    from medseg.data import find_cases, read_labels
    from medseg.labels import split_ignore
    from medseg.training import TrainConfig

    cases, meta = find_cases(dataset)
    val_cases = 0 if len(cases) < HOLD_OUT_FROM else 1
    fields = dict(epochs=int(epochs), steps_per_epoch=int(steps), init=None if init is None else str(init),
                  device=device, val_cases=val_cases, crop=DEFAULT_CROP, name="medseg-finetuned", hd95=False)
    if init is not None and split_ignore(read_labels(meta))[1] is not None:
        fields.update(SPARSE)
    return TrainConfig(**{**fields, **settings})


def fine_tune_job(dataset, run_dir, init, epochs=DEFAULT_EPOCHS, steps=DEFAULT_STEPS, device="auto",
                  progress: Callable[[int, int], None] | None = None,
                  report: Callable[[TuneStatus], None] | None = None, settings: dict | None = None) -> FineTuneResult:
    """Fine-tune ``init`` (a bundle folder) on ``dataset`` into ``run_dir``; the best bundle becomes the model.

    ``progress(done, total)`` gets the step count (it may raise to cancel: it is also called after
    each epoch is saved, so a Cancel asked for during validation stops there). ``report(status)``
    gets a :class:`TuneStatus` at the start, after every step, when validation starts and when an
    epoch ends: epoch i/N, the loss so far, the time left. ``settings``: other TrainConfig fields.
    """
    from medseg.training import train

    started = time.monotonic()
    cfg = fine_tune_config(dataset, init, epochs, steps, device, **(settings or {}))
    val_names, guess = _validation_plan(Path(dataset), cfg)
    on_what = _on_what(val_names, cfg.val_cases == 0)
    short = "the training cases" if cfg.val_cases == 0 else on_what
    tell = report or (lambda status: None)
    tell(TuneStatus("preparing", epochs=cfg.epochs, steps=cfg.steps_per_epoch,
                    note=f"reading the cases; after each of the {cfg.epochs} epochs the Dice is measured on {on_what}…"))
    clock = _Clock(cfg.epochs, cfg.steps_per_epoch, guess)

    def on_step(done: int, total: int, row: dict) -> None:
        epoch, step = int(row["epoch"]), (done - 1) % cfg.steps_per_epoch + 1
        clock.step(time.monotonic())
        if progress is not None:
            progress(done, total)
        left = clock.seconds_left(done, cfg.epochs - epoch + 1)
        tell(TuneStatus("training", epoch, cfg.epochs, step, cfg.steps_per_epoch, float(row["loss"]), left))
        if step == cfg.steps_per_epoch:
            tell(TuneStatus("validating", epoch, cfg.epochs, step, cfg.steps_per_epoch, float(row["loss"]), left,
                            note=f"measuring the Dice on {short}…"))

    def on_epoch(epoch: int, row: dict) -> None:
        clock.validated(time.monotonic())
        done = epoch * cfg.steps_per_epoch
        note = f"mean Dice {row['mean_dice']:.2f} on {short}"
        tell(TuneStatus("epoch done", epoch, cfg.epochs, cfg.steps_per_epoch, cfg.steps_per_epoch,
                        float(row["loss"]), clock.seconds_left(done, cfg.epochs - epoch), note))
        if progress is not None:
            progress(done, cfg.epochs * cfg.steps_per_epoch)  # a Cancel asked for meanwhile stops here

    bundle = train(dataset, run_dir, cfg, on_step=on_step, on_epoch=on_epoch, command="napari: medseg Fine-tune")
    return FineTuneResult(str(Path(run_dir) / "best"), dict(bundle.card.training.get("val_dice", {})),
                          dice_summary(bundle.card), time.monotonic() - started)


def _validation_plan(dataset: Path, cfg) -> tuple[list[str], float | None]:
    """The validation cases' names, and a guess of a validation's seconds (None: no guess).

    The guess times the model's forward pass on one batch of slices the size of the validation
    scans' slices at the model's spacing (a second or two, on this machine and its current load),
    then scales it to every validation slice."""
    from medseg.data import find_cases
    from medseg.trainset import split_cases

    cases, meta = find_cases(dataset)
    _, val = split_cases(cases, meta, dataset, cfg)
    names = [c.name for c in val]
    if cfg.init is None:
        return names, None
    try:
        from medseg.inference import Predictor

        predictor = Predictor.from_folder(cfg.init, cfg.device)
        grids = [_model_grid(c.image, min(predictor.card.spacing)) for c in val]
        if not grids or None in grids:
            return names, None
        return names, VALIDATION_OVERHEAD * sum(g[0] for g in grids) * _seconds_a_slice(predictor, grids)
    except Exception:  # noqa: BLE001 - only an estimate: train() reports a bad bundle or device properly
        return names, None


def _seconds_a_slice(predictor, grids) -> float:
    """Seconds of the model's forward pass a slice, timed on a batch of the largest slices."""
    import torch

    height, width = max(g[1] for g in grids), max(g[2] for g in grids)
    batch = max(1, min(int(getattr(predictor, "batch_size", 8)), sum(g[0] for g in grids)))
    x = torch.randn(batch, predictor.card.in_channels, height, width, device=predictor.device)
    x = x.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        predictor.model(x[:1])  # the first call sets the kernels up
        if predictor.device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        predictor.model(x)
        if predictor.device.type == "cuda":
            torch.cuda.synchronize()
    return (time.perf_counter() - start) / batch


def _model_grid(image: Path, spacing: float) -> tuple[int, int, int] | None:
    """(axial slices, rows, columns) of a NIfTI image resampled in-plane to ``spacing`` mm, from its header."""
    import nibabel as nib
    import numpy as np

    from medseg.geometry import canonical_grid

    if not image.name.lower().endswith((".nii", ".nii.gz")):
        return None
    img = nib.load(str(image))
    shape, affine = canonical_grid(np.asarray(img.affine, float), tuple(img.shape[:3]))
    sizes = np.sqrt((affine[:3, :3] ** 2).sum(0))
    return int(shape[2]), max(1, round(shape[1] * sizes[1] / spacing)), max(1, round(shape[0] * sizes[0] / spacing))


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _on_what(val_names: list[str], on_training: bool) -> str:
    if on_training:
        return f"the {_plural(len(val_names), 'training case')} (no case held out)"
    if len(val_names) == 1:
        return f"the held-out case {val_names[0]}"
    return f"the {len(val_names)} held-out cases {', '.join(val_names)}"


def _on_training(training: dict) -> bool:
    val, trn = set(training.get("val_cases") or []), set(training.get("train_cases") or [])
    return training.get("validation") == "training cases" or bool(val and val <= trn)


def _what_of(training: dict) -> str:
    """What a card's ``training`` record says the Dice was measured on."""
    return _on_what(list(training.get("val_cases") or []), _on_training(training))


def dice_summary(card) -> str:
    """What a fine-tuned model's Dice is and what it was measured on, in one line.

    ``card``: a :class:`~medseg.bundle.ModelCard` (or a bundle, or the card's ``training`` dict).
    "Dice on the 2 training cases (no case held out): liver 0.95, ..." says the model was scored
    on the cases it learnt from (a check that it fits them, not a score on new scans); "Dice on
    the held-out case X: ..." on a case it never saw.
    """
    card = getattr(card, "card", card)
    training = card if isinstance(card, dict) else (getattr(card, "training", None) or {})
    dice = training.get("val_dice") or {}
    if not dice:
        return "no Dice recorded for this model"
    where, on_training = _what_of(training), _on_training(training)
    scores = ", ".join(f"{name} {float(v):.2f}" for name, v in dice.items())
    epoch = f", epoch {training['epoch']}" if training.get("epoch") else ""
    caveat = " (the cases it learnt from: a check of fit, not of new scans)" if on_training else ""
    return f"Dice on {where}{epoch}: {scores}{caveat}"


def after_cancel(run_dir) -> str:
    """What a cancelled (or failed) fine-tune left in ``run_dir``, and how to use it, in one line."""
    from medseg.bundle import ModelCard
    from medseg.errors import MedsegError
    from medseg.schema import read_json_object

    run_dir = Path(run_dir)
    best = run_dir / "best"
    if not (best / "model.json").is_file():
        return (f"nothing was kept: cancelled before the first epoch ended (no model in {run_dir}); "
                f"the model for Segment is unchanged")
    try:
        card = ModelCard.from_dict(read_json_object(best / "model.json", "model card"), best / "model.json")
    except MedsegError as exc:
        return f"a model was written to {best}, but it cannot be used: {exc}"
    epochs = ""
    try:
        epochs = f" of {int(read_json_object(run_dir / 'config.json', 'run config')['epochs'])}"
    except Exception:  # noqa: BLE001 - the total is a nicety
        pass
    epoch = card.training.get("epoch", "?")
    dice = card.training.get("val_dice") or {}
    mean = f", mean Dice {sum(dice.values()) / len(dice):.2f} on {_what_of(card.training)}" if dice else ""
    resume = (f"; `medseg train DATASET -o {run_dir} --resume` would finish the run"
              if (run_dir / "checkpoint.pt").is_file() else "")
    return (f"kept the best model so far (epoch {epoch}{epochs}{mean}) in {best}; "
            f"use it by choosing that folder as the model{resume}")
