"""Correction efficiency: how much of the full-label Dice gain do k corrected axial slices give?

A simulated user corrects k axial slices of a phantom the bundled model never saw (seeds 900+,
outside its training seeds, ``uncertainty_shift.TRAINING_SEEDS``), shifted from its training
distribution: by default a severely fatty liver (``fatty``: liver -90 HU, tumour -60 from the
portal-venous phantom, near water, which no phase the model learnt has; see
``benchmarks/uncertainty_shift.py``), so there is room to gain. (The first default model, trained
on portal-venous phantoms only, was measured on the ``delayed`` shift.) Then:

- k = 0: the bundled model segments the scan; ``predict_scan(uncertainty=u)`` ranks its slices.
- For each k and strategy the corrected slices take the truth and every other voxel the label
  ``ignore`` (nnU-Net v2's convention: ``"ignore": IGNORE`` in dataset.json, IGNORE = highest
  label + 1); the bundled model is fine-tuned on that one case with the viewer's defaults
  (``medseg_napari._finetune.fine_tune_job``, DEFAULT_EPOCHS x DEFAULT_STEPS, CPU) and the whole
  volume is segmented again. Strategies: ``worst-first`` (the k most uncertain slices: the review
  panel's order), ``worst-first-spread`` (the same, skipping a slice within 2 of one already
  chosen), ``even`` (evenly spaced over the slices that hold a structure in truth or prediction),
  ``random`` (seeded, among all slices; ``--repeats`` draws).
- ``full``: every slice labelled (no ignore voxel): the full-label gain.

Prints whole-volume Dice per structure, the mean, the gain over k = 0, the fraction of the full
gain, and the fine-tune's wall and CPU (``time.process_time``, all threads) minutes; then the
acceptance line (issue 12: worst-first k = 4 gives >= half of the full gain, fine-tune < 5 min on
2 cores). Raw numbers go to ``--json``, the plot (mean Dice vs k) to ``--png``. The defaults take
about 20-30 minutes on 2 CPU cores (13 fine-tunes); ``--quick`` is a smoke test of seconds.

    python benchmarks/bench_correction.py [--seeds 900] [--shape 288 288 64] [--spacing 1.3 1.3 3.5]
        [--shift delayed] [--ks 1 2 4 8] [--strategies worst-first even random] [--repeats 1] [--quick]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from medseg.phantom import LABELS, make_phantom
from uncertainty_shift import TRAINING_SEEDS
from uncertainty_shift import shifted as shifted_phantom  # the shifts of the uncertainty benchmark

DEFAULT_PNG = Path(__file__).resolve().parents[1] / "docs" / "correction_benchmark.png"
STRUCTURES = {name: v for name, v in LABELS.items() if v}
IGNORE = max(LABELS.values()) + 1
STRATEGIES = ("worst-first", "worst-first-spread", "even", "random")
SPREAD = 2  # worst-first-spread skips a slice within this many slices of one already chosen
SHIFTS = ("none", "arterial", "delayed", "fatty", "noise", "fov", "arterial+noise", "delayed+noise", "fatty+noise")
TARGET_FRACTION, TARGET_MINUTES, TARGET_K = 0.5, 5.0, 4
DEVICE = "cpu"  # --device: the targets are for the CPU; a GPU run shows the same Dice trends faster
QUICK = {"shape": (96, 96, 24), "spacing": (4.0, 4.0, 9.0), "epochs": 1, "steps": 3, "settings": {"crop": 64}}


def shifted(ph, shift: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(image int16 HU, labels, affine) of phantom ``ph`` under ``shift`` (uncertainty_shift.shifted, stored as CT)."""
    image, labels, affine = shifted_phantom(ph, shift, rng)
    return np.clip(np.rint(image), -1024, 3071).astype(np.int16), labels, affine


# ------------------------------------------------------------------------------------ slice choice


def choose(strategy: str, k: int, u: np.ndarray, truth: np.ndarray, pred: np.ndarray, seed: int) -> list[int]:
    """The k axial slices (indices along axis 2) a user following ``strategy`` corrects."""
    nz = truth.shape[2]
    k = min(k, nz)
    if strategy == "worst-first":
        return sorted(int(i) for i in np.argsort(-u, kind="stable")[:k])
    if strategy == "worst-first-spread":
        chosen: list[int] = []
        for i in np.argsort(-u, kind="stable"):
            if all(abs(int(i) - j) > SPREAD for j in chosen):
                chosen.append(int(i))
            if len(chosen) == k:
                break
        return sorted(chosen)
    if strategy == "even":
        held = np.flatnonzero(((truth > 0) | (pred > 0)).any(axis=(0, 1)))
        held = held if held.size else np.arange(nz)
        picks = np.floor((np.arange(k) + 0.5) * held.size / k).astype(int)  # the middle of k equal parts
        return sorted({int(held[min(p, held.size - 1)]) for p in picks})
    if strategy == "random":
        return sorted(int(i) for i in np.random.default_rng(seed).choice(nz, size=k, replace=False))
    raise ValueError(f"unknown strategy {strategy!r} (expected one of {', '.join(STRATEGIES)})")


# ------------------------------------------------------------------------------------ one run


def write_case(root: Path, image_file: Path, scan, labels: np.ndarray, sparse: bool) -> Path:
    """An nnU-Net v2 dataset folder of one case: the (shared) image, ``labels``, and dataset.json."""
    from medseg.data import write_dataset_json
    from medseg.io import save_mask

    (root / "imagesTr").mkdir(parents=True)
    try:
        os.link(image_file, root / "imagesTr" / "case_0000.nii.gz")
    except OSError:
        shutil.copy2(image_file, root / "imagesTr" / "case_0000.nii.gz")
    save_mask(labels, scan, root / "labelsTr" / "case.nii.gz")
    names = {**LABELS, "ignore": IGNORE} if sparse else dict(LABELS)
    write_dataset_json(root, {"name": "CorrectionBenchmark", "channel_names": {"0": "CT"}, "labels": names,
                              "numTraining": 1, "file_ending": ".nii.gz"})
    return root


def dice(pred: np.ndarray, truth: np.ndarray) -> tuple[dict[str, float], float]:
    """Whole-volume Dice per structure and their mean (structures absent from both left out)."""
    from medseg.metrics import dice_per_label

    per = dice_per_label(pred, truth, STRUCTURES)
    present = [v for v in per.values() if not math.isnan(v)]
    return per, float(np.mean(present)) if present else math.nan


def fine_tune_and_score(ds: Path, run_dir: Path, scan, truth: np.ndarray, quick: bool) -> dict:
    """Fine-tune the bundled model on ``ds`` with the viewer's defaults, segment ``scan``, score it."""
    from medseg.bundle import default_bundle_path, load_bundle
    from medseg.inference import Predictor
    from medseg_napari._finetune import fine_tune_job

    extra = {k: QUICK[k] for k in ("epochs", "steps", "settings")} if quick else {}
    wall0, cpu0 = time.perf_counter(), time.process_time()
    result = fine_tune_job(ds, run_dir, str(default_bundle_path()), device=DEVICE, **extra)
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    pred = Predictor(load_bundle(result.best), DEVICE).predict_scan(scan, on_warning=lambda m: None)
    per, mean = dice(pred, truth)
    return {"dice": per, "mean_dice": mean, "wall_s": wall, "cpu_s": cpu}


def runs_for(args) -> list[tuple[str, int, int]]:
    """(strategy, k, repeat) of every fine-tune but ``full``."""
    out = []
    for strategy in args.strategies:
        for k in args.ks:
            for rep in range(args.repeats if strategy == "random" else 1):
                out.append((strategy, k, rep))
    return out


def bench_seed(seed: int, args, work: Path, done: dict, record) -> None:
    """Every run (k = 0, each strategy and k, full) on the shifted phantom ``seed``; ``record(row)`` each.

    ``done``: rows of an earlier, interrupted run (``--resume``) by (seed, strategy, k, repeat), reused
    when they corrected the same slices."""
    from medseg.inference import Predictor
    from medseg.io import Scan, save_image

    ph = make_phantom(seed, shape=tuple(args.shape), spacing=tuple(args.spacing))
    image, truth, affine = shifted(ph, args.shift, np.random.default_rng(seed))
    scan = Scan(image, affine, Path(f"phantom_{seed:04d}_{args.shift}.nii.gz"), modality="CT")
    image_file = save_image(scan, work / f"image_{seed}.nii.gz")
    u = np.zeros(image.shape[2])
    pred = Predictor.from_folder(None, DEVICE).predict_scan(scan, uncertainty=u, on_warning=lambda m: None)
    per, mean = dice(pred, truth)
    record({"seed": seed, "strategy": "none", "k": 0, "repeat": 0, "slices": [], "dice": per, "mean_dice": mean,
            "wall_s": 0.0, "cpu_s": 0.0})
    print(f"seed {seed} ({args.shift}, {'x'.join(map(str, image.shape))}): k=0 mean Dice {mean:.3f}  "
          f"uncertainty max {u.max():.3f}", flush=True)
    plan = [(s, k, r, choose(s, k, u, truth, pred, seed * 1000 + r)) for s, k, r in runs_for(args)]
    plan.append(("full", image.shape[2], 0, list(range(image.shape[2]))))
    for n, (strategy, k, rep, slices) in enumerate(plan):
        sparse, row = strategy != "full", done.get((seed, strategy, k, rep))
        if row is not None and row["slices"] == slices:
            record(row)
            print(f"  [{n + 1}/{len(plan)}] {strategy:18s} k={k:<3d} from the earlier run", flush=True)
            continue
        labels = np.full_like(truth, IGNORE) if sparse else truth.copy()
        labels[:, :, slices] = truth[:, :, slices]
        tag = f"{seed}_{strategy}_{k}_{rep}"
        ds = write_case(work / f"ds_{tag}", image_file, scan, labels, sparse)
        row = fine_tune_and_score(ds, work / f"run_{tag}", scan, truth, args.quick)
        shutil.rmtree(ds, ignore_errors=True)
        shutil.rmtree(work / f"run_{tag}", ignore_errors=True)
        record({"seed": seed, "strategy": strategy, "k": k, "repeat": rep, "slices": slices, **row})
        print(f"  [{n + 1}/{len(plan)}] {strategy:18s} k={k:<3d} slices {slices if sparse else 'all'}: "
              + " ".join(f"{name} {v:.3f}" for name, v in row["dice"].items())
              + f"; mean {row['mean_dice']:.3f}; fine-tune {row['wall_s'] / 60:.2f} min wall, "
              f"{row['cpu_s'] / 60:.2f} min CPU", flush=True)


# ------------------------------------------------------------------------------------ report


def summarise(rows: list[dict]) -> list[dict]:
    """One row per (strategy, k): means over seeds and repeats, gains against each seed's k = 0 and full."""
    base = {r["seed"]: r["mean_dice"] for r in rows if r["strategy"] == "none"}
    full = {r["seed"]: r["mean_dice"] for r in rows if r["strategy"] == "full"}
    full_gain = float(np.mean([full[s] - base[s] for s in full])) if full else math.nan
    groups: dict[tuple[str, int], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["strategy"], r["k"]), []).append(r)
    out = []
    for (strategy, k), rs in groups.items():
        gain = float(np.mean([r["mean_dice"] - base[r["seed"]] for r in rs]))
        out.append({"strategy": strategy, "k": k, "runs": len(rs),
                    "dice": {n: float(np.nanmean([r["dice"][n] for r in rs])) for n in STRUCTURES},
                    "mean_dice": float(np.mean([r["mean_dice"] for r in rs])), "gain": gain,
                    "fraction_of_full": gain / full_gain if full_gain > 0 else math.nan,
                    "wall_min": float(np.mean([r["wall_s"] for r in rs])) / 60,
                    "cpu_min": float(np.mean([r["cpu_s"] for r in rs])) / 60})
    return out


def print_table(summary: list[dict]) -> None:
    names = list(STRUCTURES)
    short = {"kidney_right": "kid_R", "kidney_left": "kid_L", "liver_tumour": "tumour"}
    head = (f"{'strategy':18s} {'k':>3s} " + " ".join(f"{short.get(n, n):>7s}" for n in names)
            + f" {'mean':>6s} {'gain':>7s} {'of full':>8s} {'wall min':>8s} {'CPU min':>8s}")
    print("\n" + head)
    print("-" * len(head))
    for r in summary:
        k = "all" if r["strategy"] == "full" else str(r["k"])
        frac = "" if r["strategy"] == "none" or math.isnan(r["fraction_of_full"]) else f"{r['fraction_of_full']:.0%}"
        minutes = ("", "") if r["strategy"] == "none" else (f"{r['wall_min']:.2f}", f"{r['cpu_min']:.2f}")
        print(f"{r['strategy']:18s} {k:>3s} " + " ".join(f"{r['dice'][n]:7.3f}" for n in names)
              + f" {r['mean_dice']:6.3f} {r['gain']:+7.3f} {frac:>8s} {minutes[0]:>8s} {minutes[1]:>8s}")


def acceptance(summary: list[dict]) -> bool | None:
    """Print issue 12's acceptance line for worst-first k = 4 (and worst-first-spread); True when it passes."""
    verdict = None
    for strategy in ("worst-first", "worst-first-spread"):
        row = next((r for r in summary if r["strategy"] == strategy and r["k"] == TARGET_K), None)
        if row is None:
            continue
        ok = row["fraction_of_full"] >= TARGET_FRACTION and row["wall_min"] < TARGET_MINUTES
        verdict = ok if strategy == "worst-first" else verdict
        print(f"\nacceptance ({strategy}, k={TARGET_K}): gain {row['gain']:+.3f} / full gain = "
              f"{row['fraction_of_full']:.2f} (target >= {TARGET_FRACTION}); fine-tune {row['wall_min']:.2f} min wall "
              f"on {os.cpu_count()} cores (target < {TARGET_MINUTES:g}), {row['cpu_min']:.2f} CPU min: "
              f"{'PASS' if ok else 'FAIL'}")
    return verdict


def plot(summary: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from medseg.io import atomic_write

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=110)
    levels = {r["strategy"]: r["mean_dice"] for r in summary if r["strategy"] in ("none", "full")}
    for strategy in STRATEGIES:
        pts = sorted((r["k"], r["mean_dice"]) for r in summary if r["strategy"] == strategy)
        if pts:
            ax.plot(*zip(*pts), marker="o", label=strategy)
    if "none" in levels:
        ax.axhline(levels["none"], color="grey", ls="--", label="k = 0 (bundled model)")
    if "full" in levels:
        ax.axhline(levels["full"], color="black", ls=":", label="every slice labelled")
    ks = sorted({r["k"] for r in summary if r["strategy"] in STRATEGIES})
    if ks:
        ax.set_xscale("log", base=2)
        ax.set_xticks(ks, [str(k) for k in ks])
    ax.set_xlabel("corrected axial slices k")
    ax.set_ylabel("whole-volume mean Dice")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"), suffix=".png")
    plt.close(fig)


# ------------------------------------------------------------------------------------ main


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[900])
    ap.add_argument("--shape", type=int, nargs=3, default=None, help="default 288 288 64 (--quick: 96 96 24)")
    ap.add_argument("--spacing", type=float, nargs=3, default=None, help="default 1.3 1.3 3.5 mm (--quick: 4 4 9)")
    ap.add_argument("--shift", choices=SHIFTS, default="fatty")
    ap.add_argument("--ks", type=int, nargs="*", default=None, help="default 1 2 4 8 (--quick: 2); none: k=0 and full")
    ap.add_argument("--strategies", nargs="*", choices=STRATEGIES, default=["worst-first", "even", "random"])
    ap.add_argument("--repeats", type=int, default=1, help="random draws per k")
    ap.add_argument("--device", default="cpu", help="cpu (the targets' device) or cuda")
    ap.add_argument("--quick", action="store_true", help="smoke test: tiny phantom, 1 epoch of 3 steps, crop 64")
    ap.add_argument("--json", type=Path, default=Path(tempfile.gettempdir()) / "bench_correction.json")
    ap.add_argument("--resume", action="store_true",
                    help="reuse the runs an interrupted benchmark with the same settings saved in --json")
    ap.add_argument("--png", type=Path, default=None,
                    help="default docs/correction_benchmark.png (--quick: in the temporary folder)")
    args = ap.parse_args(argv)
    if any(s in TRAINING_SEEDS for s in args.seeds):
        ap.error(f"seeds {TRAINING_SEEDS.start}..{TRAINING_SEEDS.stop - 1} are the bundled model's training and validation cases")
    if args.ks is None:
        args.ks = [2] if args.quick else [1, 2, 4, 8]
    if any(k < 1 for k in args.ks) or args.repeats < 1:
        ap.error("--ks must be 1 or more, --repeats at least 1")
    args.shape = args.shape or (QUICK["shape"] if args.quick else (288, 288, 64))
    args.spacing = args.spacing or (QUICK["spacing"] if args.quick else (1.3, 1.3, 3.5))
    if args.png is None:
        args.png = Path(tempfile.gettempdir()) / "bench_correction_quick.png" if args.quick else DEFAULT_PNG
    return args


def earlier_runs(path: Path, settings: dict) -> dict:
    """The runs an earlier benchmark with the same ``settings`` saved in ``path``, by (seed, strategy, k, repeat)."""
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if saved.get("settings") != settings:
        print(f"--resume: {path} holds a run with other settings; starting afresh", flush=True)
        return {}
    runs = [r for r in saved.get("runs", []) if r["strategy"] != "none"]
    return {(r["seed"], r["strategy"], r["k"], r["repeat"]): r for r in runs}


def main(argv: list[str] | None = None) -> int:
    from medseg.io import atomic_write_text

    global DEVICE
    args = parse(argv)
    DEVICE = args.device
    started = time.perf_counter()
    settings = {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(args).items()
                if k not in ("json", "png", "resume")}
    done = earlier_runs(args.json, settings) if args.resume else {}
    rows: list[dict] = []

    def record(row: dict) -> None:  # every finished run is saved at once: --resume picks up from there
        rows.append(row)
        atomic_write_text(args.json, json.dumps({"settings": settings, "complete": False, "runs": rows}, indent=1))

    with tempfile.TemporaryDirectory(prefix="medseg-bench-correction-") as tmp:
        for seed in args.seeds:
            bench_seed(seed, args, Path(tmp), done, record)
    summary = summarise(rows)
    print_table(summary)
    passed = acceptance(summary)
    minutes = (time.perf_counter() - started) / 60
    load = os.getloadavg()
    atomic_write_text(args.json, json.dumps({"settings": settings, "complete": True, "ignore": IGNORE,
                                             "total_minutes": minutes,
                                             "load_average_1_5_15": list(load),
                                             "passed": passed, "summary": summary, "runs": rows}, indent=1) + "\n")
    seeds = f"seed{'s' if len(args.seeds) > 1 else ''} {', '.join(map(str, args.seeds))}"
    title = (f"{seeds}, {args.shift} shift, {'x'.join(map(str, args.shape))}{' (quick)' if args.quick else ''}: "
             f"fine-tune on k corrected slices")
    plot(summary, args.png, title)
    print(f"\ntotal {minutes:.1f} min on {os.cpu_count()} cores (load average over the last 15 min "
          f"{load[2]:.1f}: above {os.cpu_count()} the machine was shared and the minutes are inflated); "
          f"raw numbers {args.json}; plot {args.png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
