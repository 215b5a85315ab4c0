"""Training and fine-tuning: 2D/2.5D slices, cross-entropy (+ Dice), best-by-validation-Dice bundles.

:func:`train`: :func:`start_or_resume` checks the run folder and the settings
(:class:`~medseg.config.TrainConfig`) before anything is read; :func:`load_training_data` prepares
this rank's share of the cases (:mod:`medseg.trainset`); a :class:`Trainer` is built once, then
trains an epoch at a time, and rank 0 validates and writes the run folder after each epoch.

Every batch is drawn from a generator seeded by ``(seed, rank, epoch, step)``, so a run is
reproducible, a resumed run continues exactly where the killed one stopped, and batches can be
prepared ahead in a thread without changing what the model sees.

Run folder: ``best/`` and ``last/`` bundles (atomic), ``checkpoint.pt`` (model, optimizer,
scheduler, grad scaler, epoch, history; read back with ``weights_only=True``), ``history.csv``,
``curves.png`` and ``config.json``. Under ``torchrun`` each rank trains on its own share of the
cases with DistributedDataParallel and only rank 0 validates and writes; a failure on any rank
stops every rank with its message (:mod:`medseg.distributed`).
"""

from __future__ import annotations

import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from . import __version__
from .bundle import Bundle, ModelCard, build_model, load_bundle, save_bundle
from .config import (
    CHECKPOINT,
    TrainConfig,
    amp_dtype,
    check_resume_config,
    load_checkpoint,
    make_loss,
    make_optimizer,
    save_checkpoint,
)
from .data import Case, find_cases, read_labels, read_modality
from .distributed import DistInfo, Ranks, process_group
from .domain import training_data_of
from .errors import MedsegError
from .io import atomic_write_text
from .labels import is_lesion, split_ignore
from .reports import plot_curves, write_history
from .trainset import (
    PreparedCase,
    SliceSampler,
    class_counts,
    class_weights,
    evaluate_cases,
    lesion_classes,
    load_validation,
    prepare_cases,
    split_cases,
    training_intensity_range,
)
from .transforms import default_preprocessing

# ---------------------------------------------------------------------------------------------- set-up


def start_or_resume(run_dir: Path, dataset_dir: Path, cfg: TrainConfig, resume: bool) -> tuple[TrainConfig, dict | None]:
    """The run's settings and, on ``resume``, its checkpoint, all checked before anything is read.

    ``resume`` takes the run's own ``config.json`` (``cfg`` only supplies the device).
    """
    check_run_folder(run_dir, dataset_dir)
    ckpt_path = run_dir / CHECKPOINT
    if not resume:
        check_init_bundle(run_dir, cfg.init)
        if ckpt_path.exists():
            raise MedsegError(f"{run_dir}: already holds a training run; pass --resume to continue it, or pick "
                              f"another folder")
        cfg.validate()
        return cfg, None
    if not ckpt_path.is_file():
        raise MedsegError(f"{run_dir}: no {CHECKPOINT} to resume from")
    device = cfg.device
    cfg = TrainConfig.from_json(run_dir / "config.json")
    cfg.device = device
    cfg.validate()  # the device comes from the caller
    check_init_bundle(run_dir, cfg.init)
    state = load_checkpoint(ckpt_path)
    check_resume_config(cfg, state, run_dir / "config.json")
    return cfg, state


@dataclass
class TrainData:
    """What a run trains and validates on, as one rank holds it."""

    card: ModelCard
    train: list[Case]
    val: list[Case]
    prepared: list[PreparedCase]  # this rank's share of the training cases
    val_data: list  # rank 0: the validation scans with their reference labels
    init: Bundle | None  # the bundle fine-tuned from
    ignore: int | None = None  # the dataset's ignore label value (sparse labels), None without one


def load_training_data(dataset_dir: Path, cfg: TrainConfig, info: DistInfo) -> TrainData:
    """Read the dataset, split it, and prepare this rank's share (every pair's grid and label
    values are checked here, before the first step)."""
    cases, meta = find_cases(dataset_dir)
    labels, ignore = split_ignore(read_labels(meta) or {})
    if not labels:
        raise MedsegError(f"{dataset_dir}: dataset.json must declare the labels (name -> value)")
    modality = (cfg.modality or read_modality(meta) or "CT").upper()
    trn, val = split_cases(cases, meta, dataset_dir, cfg)
    if len(trn) < info.world_size:
        raise MedsegError(f"{dataset_dir}: {len(trn)} training case(s) cannot be shared by {info.world_size} processes")
    init = load_bundle(cfg.init) if cfg.init else None
    card = _model_card(cfg, labels, modality, meta, init)
    card.training_data = training_data_of(trn, val, modality, meta, dataset_dir.name)
    prepared = prepare_cases(info.share(trn), card, cfg.cache_workers, ignore)
    val_data = load_validation(val, card) if info.is_main else []
    return TrainData(card, trn, val, prepared, val_data, init, ignore)


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
        context_mm=src.context_mm if src else cfg.context_mm,
        description=str(meta.get("description", "")),
        postprocessing=_postprocessing(cfg.postprocessing, labels, src),
    )
    card.validate()
    return card


def set_postprocessing(source: str | os.PathLike, step: str, output: str | os.PathLike) -> Path:
    """A copy of the bundle in ``source`` whose card records ``step`` (``none`` or ``main-piece``,
    as ``--postprocessing`` writes it), in ``output``; the weights are copied unchanged (nnU-Net
    likewise adds its post-processing to a trained model folder). ``output`` must be new or an
    empty folder, and not the source or inside it."""
    from dataclasses import replace

    from .bundle import _bundle_files, load_state_dict
    from .safety import check_new_folder

    if step not in ("none", "main-piece"):
        raise MedsegError(f"post-processing {step!r}: expected none or main-piece")
    src = Path(source)
    out = check_new_folder(output, [("model bundle", src)])
    bundle = load_bundle(src)
    half = any(t.dtype == torch.float16 for t in load_state_dict(_bundle_files(src)[1]).values())
    card = replace(bundle.card, postprocessing=_postprocessing(step, bundle.card.labels, None))
    return save_bundle(bundle.model, card, out, half=half)


MAIN_PIECE_MARGIN_MM = 20.0  # a piece of an organ label further than this from its largest piece is dropped


def _postprocessing(step: str | None, labels: dict[str, int], src) -> dict:
    """The card's ``postprocessing`` for ``step`` (``TrainConfig.postprocessing``): ``main-piece``
    for every organ label (not lesions, not background); None keeps a fine-tuning source's steps
    for the labels it still has."""
    if step is None:
        if src is None or not src.postprocessing.get("main_piece"):
            return {}
        kept = [n for n in src.postprocessing["main_piece"] if n in labels]
        return {"main_piece": kept, "margin_mm": src.postprocessing.get("margin_mm", MAIN_PIECE_MARGIN_MM)} if kept else {}
    if step == "none":
        return {}
    organs = [n for n, v in labels.items() if v != 0 and not is_lesion(n)]
    return {"main_piece": organs, "margin_mm": MAIN_PIECE_MARGIN_MM} if organs else {}


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


# ---------------------------------------------------------------------------------------------- the run


class Trainer:
    """One run on one rank: model, loss, optimiser, schedule and sampler built once (from the
    checkpoint's state when resuming), then trained an epoch at a time."""

    def __init__(self, cfg: TrainConfig, data: TrainData, ranks: Ranks, run_dir: Path, state: dict | None,
                 counts: torch.Tensor | None = None) -> None:
        """``counts``: the training voxels of each class over every rank (for class weights)."""
        self.cfg, self.card, self.ranks, self.run_dir = cfg, data.card, ranks, run_dir
        self.device, self.val_data, self.ignore = ranks.device, data.val_data, data.ignore
        torch.manual_seed(cfg.seed)
        self.model = build_model(self.card)
        self.kept = transfer_weights(data.init, self.model, self.card) if data.init is not None else []
        if cfg.freeze_encoder:
            for p in self.model.encoder.parameters():
                p.requires_grad_(False)
        self.model = self.model.to(self.device)
        if cfg.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.weight = class_weights(counts, cfg.class_weights)
        self.loss_fn = make_loss(cfg, None if self.weight is None else self.weight.to(self.device))
        self.total = cfg.epochs * cfg.steps_per_epoch
        self.opt, self.sched = make_optimizer(cfg, [p for p in self.model.parameters() if p.requires_grad], self.total)
        self.amp = amp_dtype(cfg, self.device)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp == torch.float16)
        self.history: list[dict] = []
        self.best, self.start_epoch = -1.0, 1
        if state is not None:
            self._restore(state)
        self.net = self.model  # DistributedDataParallel once distribute() ran
        self.sampler = SliceSampler(data.prepared, cfg, self.card.context_slices, ranks.info.rank, self.card.context_mm,
                                    lesion_classes(self.card))
        self.done = (self.start_epoch - 1) * cfg.steps_per_epoch
        self.prefetch = ThreadPoolExecutor(1, thread_name_prefix="medseg-prefetch") if self.device.type == "cuda" else None

    def _restore(self, state: dict) -> None:
        try:
            self.model.load_state_dict(state["model"])
            self.opt.load_state_dict(state["optimizer"])
            self.sched.load_state_dict(state["scheduler"])
            if state.get("scaler"):
                self.scaler.load_state_dict(state["scaler"])
            self.history, self.best = list(state["history"]), float(state["best"])
            self.start_epoch = int(state["epoch"]) + 1
        except (RuntimeError, ValueError, KeyError, TypeError, IndexError) as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            raise MedsegError(f"{self.run_dir / 'config.json'}: does not fit {CHECKPOINT} ({first}); a run resumes "
                              f"with the settings it was started with") from None
        if "torch_rng" in state:
            torch.set_rng_state(state["torch_rng"])

    def distribute(self) -> None:
        """Wrap the model in DistributedDataParallel (a collective: every rank, outside :meth:`Ranks.run`)."""
        if self.ranks.dist is not None:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.net = torch.nn.parallel.DistributedDataParallel(self.model, device_ids=ids)

    def close(self) -> None:
        if self.prefetch:  # a batch being drawn is finished, not left running while an error unwinds
            self.prefetch.shutdown(wait=True, cancel_futures=True)

    def _batches(self, epoch: int):
        """The epoch's batches in order; on CUDA the next one is drawn in a thread meanwhile."""
        steps = self.cfg.steps_per_epoch
        if self.prefetch is None:
            for step in range(steps):
                yield self.sampler.batch(epoch, step)
            return
        pending = self.prefetch.submit(self.sampler.batch, epoch, 0)
        for step in range(steps):
            batch = pending.result()
            if step + 1 < steps:
                pending = self.prefetch.submit(self.sampler.batch, epoch, step + 1)
            yield batch

    def train_epoch(self, epoch: int, on_step: Callable[[int, int, dict], None] | None = None) -> tuple[float, float]:
        """One epoch on every rank: (the loss averaged over steps and ranks, seconds).

        Drawing a batch and the epoch's loss are agreed between the ranks before the collectives
        that follow them (DDP's gradient reduction, the mean loss), so a rank that fails there
        stops every rank with its message instead of leaving them waiting."""
        cfg, ranks = self.cfg, self.ranks
        self.net.train()
        if cfg.freeze_encoder:
            self.model.encoder.eval()  # frozen batch-norm statistics too
        if cfg.freeze_batchnorm:  # the starting model's statistics, not those of a few slices' crops
            for module in self.model.modules():
                if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                    module.eval()
        t0, losses = time.perf_counter(), []
        batches = self._batches(epoch)
        for step in range(cfg.steps_per_epoch):
            x, y = ranks.run(lambda: next(batches))
            losses.append(train_step(self.net, x, y, self.loss_fn, self.opt, self.sched, self.scaler, self.device,
                                     self.amp, cfg.channels_last))
            self.done += 1
            if on_step is not None and ranks.is_main:
                rate = (step + 1) * cfg.batch_size * ranks.info.world_size / max(time.perf_counter() - t0, 1e-9)
                on_step(self.done, self.total, {"epoch": epoch, "loss": float(np.mean(losses)), "slices_per_s": rate})
        seconds = time.perf_counter() - t0
        ranks.run(lambda: _check_loss(float(np.mean(losses)), self.run_dir, epoch))
        return ranks.mean(float(np.mean(losses))), seconds

    def validate(self, epoch: int, loss: float, seconds: float) -> dict:
        """Rank 0: score the model on the validation cases; the epoch's history row."""
        cfg = self.cfg
        metrics = evaluate_cases(self.model, self.val_data, self.card, self.device, hd95=cfg.hd95, ignore=self.ignore)
        dice = {k: v["dice"] for k, v in metrics.items() if "dice" in v}
        hd95 = {k: v["hd95"] for k, v in metrics.items() if "hd95" in v}
        row = {
            "epoch": epoch,
            "loss": loss,
            "mean_dice": float(np.mean(list(dice.values()))) if dice else 0.0,
            "lr": float(self.opt.param_groups[0]["lr"]),
            "seconds": seconds,
            "slices_per_s": cfg.steps_per_epoch * cfg.batch_size * self.ranks.info.world_size / seconds,
            **{f"dice_{k}": v for k, v in dice.items()},
            **{f"hd95_{k}": v for k, v in hd95.items()},
        }
        self.history.append(row)
        self.card.training = {**self.card.training, "epoch": epoch, "val_dice": dice, "val_hd95_mm": hd95}
        return row

    def save(self, epoch: int, row: dict) -> None:
        """Rank 0: the last and (when it improved) best bundles, history, curves, then the checkpoint."""
        half = self.cfg.half_precision_weights
        save_bundle(self.model, self.card, self.run_dir / "last", half=half)
        if row["mean_dice"] > self.best:
            self.best = row["mean_dice"]
            save_bundle(self.model, self.card, self.run_dir / "best", half=half)
        write_history(self.run_dir / "history.csv", self.history)
        plot_curves(self.run_dir / "curves.png", self.history)
        save_checkpoint(self.run_dir / CHECKPOINT, {
            "format": 1,
            "epoch": epoch,
            "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "optimizer": self.opt.state_dict(),
            "scheduler": self.sched.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else {},
            "history": self.history,
            "best": self.best,
            "torch_rng": torch.get_rng_state(),
            "config": json.loads(json.dumps(asdict(self.cfg))),
        })


def _check_loss(loss: float, run_dir: Path, epoch: int) -> None:
    if not np.isfinite(loss):
        raise MedsegError(f"{run_dir}: the loss became {loss} in epoch {epoch}; try a lower --lr")


def _training_notes(cfg: TrainConfig, data: TrainData, trainer: Trainer, dataset_dir: Path, command: str) -> dict:
    """How the model was trained, recorded in its card (``training``)."""
    trn, val, init = data.train, data.val, data.init
    return {
        "dataset": dataset_dir.name,
        "train_cases": [c.name for c in trn],
        "val_cases": [c.name for c in val],
        "validation": "held-out cases" if {c.name for c in val}.isdisjoint(c.name for c in trn) else "training cases",
        "loss": cfg.loss + (f" ({cfg.class_weights} class weights)" if trainer.weight is not None else ""),
        "optimizer": f"{cfg.optimizer}(lr={cfg.learning_rate}, weight_decay={cfg.weight_decay}), {cfg.schedule} schedule",
        "augmentation": _augmentation_note(cfg, trainer.card),
        "sampling": f"{cfg.foreground_fraction:g} of the patches on foreground, by {cfg.foreground_sampling}",
        "seed": cfg.seed,
        "device": str(trainer.device),
        "amp": str(trainer.amp).replace("torch.", "") if trainer.amp else "off",
        "world_size": trainer.ranks.info.world_size,
        "command": command,
        "init": None if init is None else {"name": init.card.name, "path": str(cfg.init), "kept_classes": trainer.kept},
        "frozen_encoder": cfg.freeze_encoder,
        "frozen_batchnorm": cfg.freeze_batchnorm,
        "sparse_labels": _sparse_notes(data),
        "medseg_version": __version__,
    }


def _augmentation_note(cfg: TrainConfig, card) -> str:
    """The model card's ``training.augmentation``: what the augmentation drew."""
    if not cfg.augment:
        return "none"
    note = f"rotate +-{cfg.rotate_deg} deg, scale +-{cfg.scale}, flip p={cfg.flip_prob}, intensity +-{cfg.intensity_jitter}"
    lesions = [card.class_names[c] for c in lesion_classes(card)]
    if cfg.lesion_contrast > 0 and lesions:
        low, high = cfg.lesion_contrast_range
        note += (f", lesion contrast +-{low:g}..{high:g} of the intensity scale"
                 f" (hypo or hyper, p=0.5) on {', '.join(lesions)}")
    return note


def _sparse_notes(data: TrainData) -> dict | None:
    """With an ``ignore`` label: its value and the axial slices labelled in each training case (this rank's)."""
    if data.ignore is None:
        return None
    return {"ignore": data.ignore,
            "labelled_slices": {c.name: f"{c.slices().size}/{c.image.shape[0]}" for c in data.prepared}}


def _begin_run_folder(run_dir: Path, cfg: TrainConfig, resumed: bool) -> None:
    """Rank 0: the run folder, and the settings a later ``--resume`` reads (``config.json``)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    if not resumed:
        atomic_write_text(run_dir / "config.json", json.dumps(asdict(cfg), indent=2) + "\n")


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
    first step: the run folder, the dataset layout, every pair's grid and label values, the
    validation split. Under ``torchrun`` a failure on any rank stops all of them with its message.
    """
    run_dir, dataset_dir = Path(run_dir), Path(dataset_dir)
    cfg, state = start_or_resume(run_dir, dataset_dir, cfg, resume)
    with process_group(cfg.device) as ranks:
        data = ranks.run(lambda: load_training_data(dataset_dir, cfg, ranks.info))
        ranges = [r for part in ranks.gather([c.intensity_range for c in data.prepared]) for r in part]
        data.card.intensity_range = training_intensity_range(ranges)  # of every rank's cases
        counts = ranks.sum(class_counts(data.prepared, len(data.card.labels))) if cfg.class_weights != "none" else None
        trainer = ranks.run(lambda: Trainer(cfg, data, ranks, run_dir, state, counts))
        try:
            trainer.distribute()
            data.card.training = _training_notes(cfg, data, trainer, dataset_dir, command)
            ranks.run(lambda: _begin_run_folder(run_dir, cfg, state is not None), main_only=True)
            for epoch in range(trainer.start_epoch, cfg.epochs + 1):
                loss, seconds = trainer.train_epoch(epoch, on_step)
                if epoch % cfg.val_every == 0 or epoch == cfg.epochs:  # the same decision on every rank
                    ranks.run(lambda: _finish_epoch(trainer, epoch, loss, seconds, on_epoch), main_only=True)
        finally:
            trainer.close()
        if ranks.info.world_size > 1:
            print(f"rank {ranks.info.rank}/{ranks.info.world_size} finished epoch {cfg.epochs}", file=sys.stderr,
                  flush=True)
    if not (run_dir / "best").exists():
        raise MedsegError(f"{run_dir}: no best model written")
    return load_bundle(run_dir / "best", device=ranks.device)


def _finish_epoch(trainer: Trainer, epoch: int, loss: float, seconds: float, on_epoch) -> None:
    """Rank 0 after each epoch: validate, write the run folder, report."""
    row = trainer.validate(epoch, loss, seconds)
    trainer.save(epoch, row)
    if on_epoch is not None:
        on_epoch(epoch, row)


# ---------------------------------------------------------------------------------------------- checks and checkpoints


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
