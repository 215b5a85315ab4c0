"""Benchmark training throughput (slices/s) with the bundled model's settings.

Trains one epoch of ``--steps`` steps (after ``--warmup`` untimed ones) on a few phantoms,
for each precision setting this machine has (CPU: fp32; CUDA: fp32 and automatic mixed
precision), and prints one table of slices/s and the ratio to the first row, all measured in
this run. Validation time is not counted.

    python benchmarks/bench_train.py [--steps 30] [--batch-size 8] [--crop 128] [--width 16]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from medseg.bundle import build_model
from medseg.data import find_cases, read_labels
from medseg.phantom import make_dataset
from medseg.training import (
    SliceSampler,
    TrainConfig,
    _model_card,
    amp_dtype,
    make_loss,
    make_optimizer,
    prepare_cases,
    train_step,
)


def throughput(cases, card, cfg: TrainConfig, device: torch.device, steps: int, warmup: int) -> float:
    torch.manual_seed(0)
    model = build_model(card).to(device).to(memory_format=torch.channels_last).train()
    opt, sched = make_optimizer(cfg, model.parameters(), steps + warmup)
    loss_fn = make_loss(cfg, None)
    dtype = amp_dtype(cfg, device)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    sampler = SliceSampler(cases, cfg, card.context_slices, context_mm=card.context_mm)
    t0 = 0.0
    for step in range(steps + warmup):
        if step == warmup:
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
        train_step(model, *sampler.batch(1, step), loss_fn, opt, sched, scaler, device, dtype)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps * cfg.batch_size / (time.perf_counter() - t0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--crop", type=int, default=128)
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--loss", default="ce+dice")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        root = make_dataset(Path(tmp) / "ds", [900, 901, 902])
        cases, meta = find_cases(root)
        base = TrainConfig(batch_size=args.batch_size, crop=args.crop, width=args.width, loss=args.loss)
        card = _model_card(base, read_labels(meta), "CT", meta, None)
        prepared = prepare_cases(cases, card)
    devices = [torch.device("cpu")]
    if torch.cuda.is_available():
        devices = [torch.device("cuda")]
    rows = []
    for device in devices:
        for amp in (["off", "auto"] if device.type == "cuda" else ["off"]):
            cfg = TrainConfig(**{**base.__dict__, "amp": amp})
            dtype = amp_dtype(cfg, device)
            rate = throughput(prepared, card, cfg, device, args.steps, args.warmup)
            rows.append((str(device), str(dtype).replace("torch.", "") if dtype else "fp32", rate))
    table = Table(title=f"training throughput: SegNet width {args.width}, batch {args.batch_size}, "
                        f"{args.crop}x{args.crop} crops, {args.loss}, {torch.get_num_threads()} CPU threads")
    for col in ("device", "precision", "slices/s", "ratio to first row"):
        table.add_column(col, justify="right")
    for device, precision, rate in rows:
        table.add_row(device, precision, f"{rate:.1f}", f"{rate / rows[0][2]:.2f}")
    Console().print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
