"""The ``medseg`` command line: a thin typer app over the library's functions.

Every user error is one line on stderr (``error: <file>: <what is wrong>``) and exit code 1;
set ``MEDSEG_DEBUG=1`` to see tracebacks.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import shlex
import sys
import time
import warnings
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from .errors import MedsegError

app = typer.Typer(
    help="Segment organs and tumours in CT and MRI with a slice-wise SegNet.",
    add_completion=False,
    pretty_exceptions_enable=False,
    no_args_is_help=True,
)
out = Console(soft_wrap=True)
err = Console(stderr=True)


def _friendly(fn):
    """Turn MedsegError (and anything unexpected) into one line on stderr and exit code 1."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            with _medseg_warnings_only():
                return fn(*args, **kwargs)
        except MedsegError as exc:
            err.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False, soft_wrap=True)
        except KeyboardInterrupt:
            err.print("interrupted")
            raise typer.Exit(130)
        except (typer.Exit, typer.Abort):
            raise
        except Exception as exc:  # last resort: still one line, no traceback
            if os.environ.get("MEDSEG_DEBUG"):
                raise
            msg = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            err.print(f"[red]error:[/red] unexpected {type(exc).__name__}: {escape(msg)}", highlight=False, soft_wrap=True)
        raise typer.Exit(1)

    return wrapper


@contextlib.contextmanager
def _medseg_warnings_only():
    """Third-party warnings (torch, numpy, MONAI, ITK) are dropped; medseg's own doubts
    (:class:`MedsegWarning`) are printed as one ``warning:`` line each. ``MEDSEG_DEBUG=1``
    shows everything."""
    from .errors import MedsegWarning

    if os.environ.get("MEDSEG_DEBUG"):
        yield
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        warnings.simplefilter("always", MedsegWarning)
        warnings.showwarning = _show_warning  # ITK's own warnings: switched off where io imports SimpleITK
        yield


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    from .errors import MedsegWarning

    if issubclass(category, MedsegWarning):
        _warn(str(message))


def _warn(message: str) -> None:
    err.print(f"[yellow]warning:[/yellow] {escape(message)}", highlight=False, soft_wrap=True)


def _progress() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err,
        transient=True,
    )


@app.command()
@_friendly
def segment(
    input: Path = typer.Argument(..., help="NIfTI/NRRD/MHA file or a folder holding a DICOM series."),
    output: Path = typer.Option(..., "-o", "--output", help="Mask to write (.nii.gz)."),
    model: Optional[Path] = typer.Option(None, "--model", "-m", help="Model bundle folder (default: the bundled model)."),
    device: str = typer.Option("auto", help="auto, cpu or cuda."),
    series: Optional[str] = typer.Option(None, help="SeriesInstanceUID, when the folder holds several series."),
    modality: Optional[str] = typer.Option(None, help="CT or MR, for files that do not say (NIfTI)."),
    batch_size: int = typer.Option(8, min=1, help="Slices per forward pass."),
    reference: Optional[Path] = typer.Option(None, help="Ground-truth label map: print Dice per label."),
) -> None:
    """Segment one scan and write its label map in the scan's geometry."""
    from .bundle import default_bundle_path, load_bundle
    from .inference import resolve_device
    from .inference import segment as run_segment
    from .io import check_mask_name, load_scan, save_mask
    from .metrics import label_volumes_ml
    from .safety import ensure_writable, refuse_overwriting_inputs

    # everything about the output is checked before any work: never over an input, writable
    check_mask_name(output)
    refuse_overwriting_inputs(output, [("scan", input), ("reference", reference)])
    # a mask beside a bundle's files is harmless; over one of them it is not
    refuse_overwriting_inputs(output, [("model", model if model is not None else default_bundle_path())], into_folders=False)
    ensure_writable(output)
    dev = resolve_device(device)
    scan = load_scan(input, series_uid=series, modality=modality)
    bundle = load_bundle(model, device=dev)
    ref = _load_reference(reference, scan, bundle.card.labels) if reference is not None else None
    t0 = time.perf_counter()
    with _progress() as bar:
        task = bar.add_task("segmenting", total=scan.shape[2])
        labels = run_segment(
            scan, bundle, device=dev, batch_size=batch_size, on_warning=_warn,
            progress=lambda done, total: bar.update(task, completed=done, total=total),
        )
    seconds = time.perf_counter() - t0
    save_mask(labels, scan, output)
    err.print(
        f"{scan.source.name}: {scan.shape[0]}x{scan.shape[1]}x{scan.shape[2]} "
        f"({', '.join(f'{s:.2f}' for s in scan.spacing)} mm, {''.join(scan.axcodes)}) segmented in {seconds:.1f} s "
        f"on {dev.type} -> {output}",
        highlight=False,
    )
    volumes = label_volumes_ml(labels, scan.voxel_volume_ml, bundle.card.labels)
    table = Table(title="Volumes")
    table.add_column("label")
    table.add_column("mL", justify="right")
    for name, ml in volumes.items():
        table.add_row(name, f"{ml:.1f}")
    if not volumes:
        table.add_row("(nothing found)", "")
    out.print(table)
    if ref is not None:
        _print_dice(labels, ref, bundle.card.labels)


def _load_reference(path: Path, scan, labels: dict[str, int]):
    """The reference label map on the scan's grid, with the same check as ``evaluate``."""
    from .evaluation import checked_label_map
    from .io import load_scan
    from .transforms import array_on_grid_of

    ref = load_scan(path)
    return checked_label_map(array_on_grid_of(scan, ref), ref.source, labels)


def _print_dice(labels, ref, names: dict[str, int]) -> None:
    from .metrics import dice_per_label

    dice = dice_per_label(labels, ref, names)
    table = Table(title="Dice against the reference")
    table.add_column("label")
    table.add_column("Dice", justify="right")
    for name, value in dice.items():
        table.add_row(name, "absent in both" if math.isnan(value) else f"{value:.3f}")
    out.print(table)


@app.command()
@_friendly
def batch(
    input_dir: Path = typer.Argument(..., help="Folder of scans: NIfTI files and/or DICOM series sub-folders."),
    output_dir: Path = typer.Argument(..., help="Folder for the masks (same relative names), summary.csv/json."),
    model: Optional[Path] = typer.Option(None, "--model", "-m", help="Model bundle folder (default: the bundled model)."),
    pattern: str = typer.Option("*.nii.gz,*.nii", help="File name patterns (comma-separated) of the scans."),
    recursive: bool = typer.Option(False, "--recursive", "-r", help="Look in sub-folders too."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Redo cases whose mask already exists."),
    preview: bool = typer.Option(False, "--preview", help="Also write a PNG per case: mask over axial slices + coronal."),
    device: str = typer.Option("auto", help="auto, cpu or cuda."),
    modality: Optional[str] = typer.Option(None, help="CT or MR, for files that do not say (NIfTI)."),
    batch_size: int = typer.Option(8, min=1, help="Slices per forward pass."),
) -> None:
    """Segment every scan of a folder; resumable (existing masks are kept), failures isolated and listed."""
    from .batch import (
        STATUS_DONE,
        STATUS_FAILED,
        STATUS_SKIPPED,
        check_outputs,
        find_scans,
        merge_summaries,
        run_batch,
        shard,
        write_summary,
    )
    from .bundle import load_bundle
    from .inference import resolve_device
    from .safety import ensure_writable
    from .training import dist_info

    ensure_writable(output_dir, folder=True)
    info = dist_info()
    dist = None
    if info.world_size > 1:
        import torch.distributed as dist

        dist.init_process_group("gloo")
    cases = find_scans(input_dir, output_dir, pattern=pattern, recursive=recursive, preview=preview)
    if not cases:
        raise MedsegError(f"{input_dir}: no scans found (patterns {pattern}; DICOM series folders)")
    check_outputs(cases, output_dir)  # writable, never over an input: before the model is even loaded
    dev = resolve_device(device)
    if dev.type == "cuda" and info.world_size > 1:
        import torch

        dev = torch.device("cuda", info.local_rank % max(torch.cuda.device_count(), 1))
    bundle = load_bundle(model, device=dev)
    mine = shard(cases, info.rank, info.world_size)
    t0 = time.perf_counter()
    bar = Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        TimeRemainingColumn(), console=err, transient=True, disable=not info.is_main,
    )
    with bar:
        overall = bar.add_task("cases", total=len(mine))
        slices = bar.add_task("slices", total=None, visible=False)

        def start(case, n, total):
            bar.update(slices, description=case.name[-40:], completed=0, total=None, visible=True)

        def step(done, total):
            bar.update(slices, completed=done, total=total)

        def done(row):
            bar.advance(overall)

        result = run_batch(mine, bundle, device=dev, overwrite=overwrite, modality=modality, batch_size=batch_size,
                           on_case_start=start, on_slices=step, on_case_done=done, on_warning=_warn)
    seconds = time.perf_counter() - t0
    if dist is not None:
        write_summary(result.rows, output_dir, name=f"summary.rank{info.rank}")
        dist.barrier()
        rows = merge_summaries(output_dir, info.world_size) if info.is_main else []
        import torch

        failed = torch.tensor([result.failed])
        dist.all_reduce(failed)
        dist.barrier()
        dist.destroy_process_group()
        any_failed = int(failed.item()) > 0
    else:
        write_summary(result.rows, output_dir)
        rows = result.rows
        any_failed = result.failed > 0
    if info.is_main:
        table = Table(title=f"medseg batch: {len(rows)} case(s) in {seconds:.1f} s")
        for col in ("done", "skipped", "failed"):
            table.add_column(col, justify="right")
        table.add_row(*(str(sum(1 for r in rows if r["status"] == s)) for s in (STATUS_DONE, STATUS_SKIPPED, STATUS_FAILED)))
        out.print(table)
        for r in rows:
            if r["status"] == STATUS_FAILED:
                err.print(f"[red]failed:[/red] {escape(str(r['error']))}", highlight=False, soft_wrap=True)
            elif r["status"] == STATUS_SKIPPED and r.get("error"):
                err.print(f"[yellow]skipped:[/yellow] {escape(str(r['error']))}", highlight=False, soft_wrap=True)
        err.print(f"summary: {output_dir / 'summary.csv'}", highlight=False)
    if any_failed:
        raise typer.Exit(1)


@app.command()
@_friendly
def info(
    input: Path = typer.Argument(..., help="Scan file or DICOM folder."),
    series: Optional[str] = typer.Option(None, help="SeriesInstanceUID, when the folder holds several series."),
) -> None:
    """Print a scan's geometry (shape, spacing, orientation, affine) and value range."""
    from .intensity import intensity_summary
    from .io import load_scan

    scan = load_scan(input, series_uid=series)
    out.print(f"source:    {scan.source}")
    out.print(f"modality:  {scan.modality or 'unknown'}" + (f"  series {scan.series_uid}" if scan.series_uid else ""))
    out.print(f"shape:     {scan.shape}  dtype {scan.array.dtype}")
    out.print(f"spacing:   {tuple(round(float(s), 4) for s in scan.spacing)} mm  orientation {''.join(scan.axcodes)}")
    out.print(f"values:    {intensity_summary(scan.array, scan.modality).describe()}")
    out.print("affine (RAS):")
    for row in scan.affine:
        out.print("  " + "  ".join(f"{v:10.4f}" for v in row))


@app.command("check-dataset")
@_friendly
def check_dataset(
    dataset: Path = typer.Argument(..., help="Dataset folder: imagesTr/, labelsTr/, dataset.json."),
) -> None:
    """Check a dataset before training; list every problem with its file names."""
    from .data import check_dataset as run_check

    idx = run_check(dataset)
    for problem in idx.problems:
        err.print(f"[red]problem:[/red] {escape(problem)}", highlight=False, soft_wrap=True)
    labels = ", ".join(f"{v}={k}" for k, v in sorted(idx.labels.items(), key=lambda kv: kv[1]))
    summary = f"{dataset}: {len(idx.cases)} case(s), modality {idx.modality or 'unknown'}, labels {labels or 'none'}"
    if idx.problems:
        err.print(f"{summary}: {len(idx.problems)} problem(s)", highlight=False, soft_wrap=True)
        raise typer.Exit(1)
    out.print(f"{summary}: OK", highlight=False)


@app.command()
@_friendly
def train(
    dataset: Path = typer.Argument(..., help="Dataset folder: imagesTr/, labelsTr/, dataset.json (MSD or nnU-Net)."),
    output: Path = typer.Option(..., "-o", "--output", help="Run folder: best/, last/, checkpoint.pt, history.csv, curves.png."),
    init: Optional[Path] = typer.Option(
        None, help="Bundle to fine-tune from: its width, spacing and context are kept; labels matched by name."
    ),
    epochs: int = typer.Option(30, min=1),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in OUTPUT from its checkpoint (its own settings)."),
    device: str = typer.Option("auto", help="auto, cpu or cuda."),
    steps_per_epoch: int = typer.Option(40, min=1),
    batch_size: int = typer.Option(8, min=1),
    lr: Optional[float] = typer.Option(None, help="Peak learning rate (default 2e-3, or 5e-4 with --init)."),
    optimizer: str = typer.Option("adamw", help="adamw or sgd (momentum 0.99, Nesterov)."),
    schedule: str = typer.Option("onecycle", help="onecycle, cosine, poly or constant."),
    loss: str = typer.Option("ce", help="ce (cross-entropy) or ce+dice."),
    class_weights: str = typer.Option("none", help="none, or sqrt-inverse (weight classes by 1/sqrt(frequency))."),
    freeze_encoder: bool = typer.Option(False, "--freeze-encoder", help="Fine-tune the decoder and head only."),
    width: int = typer.Option(16, min=1, help="SegNet base width (64 = the paper's)."),
    context: int = typer.Option(1, min=0, help="Neighbouring slices on each side as extra channels."),
    spacing: float = typer.Option(2.0, help="In-plane training spacing (mm)."),
    crop: int = typer.Option(160, min=32, help="Training patch size (pixels)."),
    foreground_fraction: float = typer.Option(0.7, min=0.0, max=1.0, help="Share of training slices drawn from slices with foreground."),
    augment: bool = typer.Option(True, "--augment/--no-augment", help="Rotations, scalings, intensity jitter."),
    flip_prob: float = typer.Option(0.0, min=0.0, max=1.0, help="Flip probability per in-plane axis (left/right is anatomy: off)."),
    val_cases: int = typer.Option(2, min=0, help="Held-out cases (seeded split) unless the dataset names a split; 0 = validate on training cases."),
    hd95: bool = typer.Option(True, "--hd95/--no-hd95", help="HD95 in validation (slower)."),
    amp: str = typer.Option("auto", help="auto (CUDA: bf16, else fp16 + grad scaler), off, bf16 or fp16."),
    seed: int = typer.Option(0),
    name: str = typer.Option("medseg-segnet", help="Model name recorded in the model card."),
) -> None:
    """Train or fine-tune a SegNet; the best epoch (validation Dice) lands in OUTPUT/best."""
    from .training import TrainConfig, dist_info
    from .training import train as run_train

    cfg = TrainConfig(
        epochs=epochs, steps_per_epoch=steps_per_epoch, batch_size=batch_size, lr=lr, optimizer=optimizer,
        schedule=schedule, loss=loss, class_weights=class_weights, width=width, context_slices=context,
        spacing=(spacing, spacing), crop=crop, foreground_fraction=foreground_fraction, augment=augment, flip_prob=flip_prob, val_cases=val_cases, hd95=hd95,
        amp=amp, seed=seed, device=device, name=name, init=str(init) if init else None, freeze_encoder=freeze_encoder,
    )
    command = "medseg " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    main_rank = dist_info().is_main
    bar = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err,
        transient=True,
        disable=not main_rank,
    )
    with bar:
        task = bar.add_task("training", total=None, rate="")

        def on_step(done: int, total: int, row: dict) -> None:
            bar.update(task, completed=done, total=total, description=f"epoch {row['epoch']} loss {row['loss']:.4f}",
                       rate=f"{row['slices_per_s']:.1f} slices/s")

        def on_epoch(epoch: int, row: dict) -> None:
            dice = " ".join(f"{k[5:]}={v:.3f}" for k, v in row.items() if k.startswith("dice_"))
            bar.console.print(
                f"epoch {epoch:3d}  loss {row['loss']:.4f}  val mean Dice {row['mean_dice']:.3f}  "
                f"({row['slices_per_s']:.1f} slices/s)  {dice}",
                highlight=False,
            )

        bundle = run_train(dataset, output, cfg, resume=resume, on_epoch=on_epoch, on_step=on_step, command=command)
    if main_rank:
        dice = bundle.card.training.get("val_dice", {})
        mean = sum(dice.values()) / len(dice) if dice else float("nan")
        err.print(f"best model: epoch {bundle.card.training.get('epoch')}, val mean Dice {mean:.3f}, in {output / 'best'}")


@app.command()
@_friendly
def phantom(
    output: Path = typer.Argument(..., help="Dataset folder to write (imagesTr/, labelsTr/, dataset.json)."),
    seeds: str = typer.Option("100-123", help="Seeds: a range '100-123' or a list '1,2,5'."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a dataset already in OUTPUT."),
) -> None:
    """Generate a training set of synthetic abdominal CT phantoms with ground-truth labels."""
    from .phantom import make_dataset

    chosen = _parse_seeds(seeds)
    make_dataset(output, chosen, overwrite=overwrite)  # checks the seeds and the folder before writing
    err.print(f"wrote {len(chosen)} phantom cases to {output}")


@app.command("sample-data")
@_friendly
def sample_data(
    output: Path = typer.Argument(Path("sample_data"), help="Folder for the sample case."),
    seed: int = typer.Option(7, help="Phantom seed (not one of the training seeds)."),
) -> None:
    """Regenerate the bundled sample case: phantom CT as NIfTI and as a DICOM series, plus its labels."""
    from .sample import write_sample

    paths = write_sample(output, seed=seed)
    for p in paths:
        err.print(f"wrote {p}")


@app.command()
@_friendly
def evaluate(
    pred_dir: Path | None = typer.Argument(None, help="Folder of predicted label maps (.nii.gz, .nrrd, ...)."),
    ref_dir: Path | None = typer.Argument(
        None, help="Folder of reference label maps, paired by case name (or a dataset folder with labelsTr/)."
    ),
    model: Path | None = typer.Option(None, "--model", "-m", help="Model bundle: segment --dataset and score it."),
    dataset: Path | None = typer.Option(None, "--dataset", help="Dataset folder (imagesTr/, labelsTr/) for --model."),
    output: Path | None = typer.Option(
        None, "-o", "--output", help="Folder for evaluation.csv/json (default: PRED_DIR; required with --model)."
    ),
    hd95: bool = typer.Option(True, "--hd95/--no-hd95", help="Compute the 95th-percentile Hausdorff distance (mm)."),
    device: str = typer.Option("auto", help="auto, cpu or cuda (with --model)."),
) -> None:
    """Score label maps against references: Dice and HD95 per case and label, summary per label.

    Either two folders (predictions, references; files paired by case name) or a model bundle
    and a dataset (every case segmented, then scored). Writes evaluation.csv and
    evaluation.json; exits 1 when any case could not be scored.
    """
    folders = pred_dir is not None or ref_dir is not None
    if folders and (model is not None or dataset is not None):
        raise MedsegError("give either PRED_DIR REF_DIR or --model BUNDLE --dataset DIR, not both")
    if folders:
        if pred_dir is None or ref_dir is None:
            raise MedsegError("give both PRED_DIR and REF_DIR (predicted and reference label-map folders)")
    elif model is None or dataset is None:
        raise MedsegError("give PRED_DIR REF_DIR, or --model BUNDLE --dataset DIR")
    elif output is None:
        raise MedsegError("--model: give -o/--output, the folder for evaluation.csv and evaluation.json")
    from .evaluation import CSV_NAME, evaluate_folders, evaluate_model

    from .safety import ensure_writable

    out_dir = output if output is not None else pred_dir
    ensure_writable(out_dir / CSV_NAME)
    with _progress() as bar:
        task = bar.add_task("evaluating", total=None)

        def on_case(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        if folders:
            result = evaluate_folders(pred_dir, ref_dir, hd95=hd95, progress=on_case)
        else:
            result = evaluate_model(model, dataset, device=device, hd95=hd95, progress=on_case)
    csv_path, json_path = result.write(out_dir)

    def fmt(value: float, digits: int) -> str:
        return "-" if math.isnan(value) else f"{value:.{digits}f}"

    table = Table(title=f"Evaluation of {len(result.cases)} case(s)")
    table.add_column("label")
    table.add_column("n", justify="right")
    table.add_column("mean Dice", justify="right")
    table.add_column("std", justify="right")
    table.add_column("mean HD95 mm", justify="right")
    for name, s in result.summary().items():
        hd = fmt(s["mean_hd95"], 2) if hd95 else "-"
        if hd95 and 0 < s["n_hd95"] < s["n"]:
            hd += f" ({s['n_hd95']} of {s['n']})"
        table.add_row(name, str(s["n"]), fmt(s["mean_dice"], 3), fmt(s["std_dice"], 3), hd)
    table.add_row("mean of labels", "", fmt(result.mean_dice(), 3), "", "")
    out.print(table)
    for failure in result.failures:
        text = escape(f"{failure['case']}: {failure['error']}")
        err.print(f"[red]failed:[/red] {text}", highlight=False, soft_wrap=True)
    err.print(
        f"{len(result.cases)} case(s) scored, {len(result.failures)} failed; wrote {csv_path} and {json_path}",
        highlight=False,
        soft_wrap=True,
    )
    if result.failures:
        raise typer.Exit(1)


MAX_SEEDS = 10_000


def _parse_seeds(text: str) -> list[int]:
    """Seeds from ``'100-123'`` (inclusive) or ``'1,2,5'``, at most MAX_SEEDS (``make_dataset``
    checks that they are given, distinct and non-negative)."""
    import re

    usage = f"--seeds {text!r}: expected a range like 100-123 or a list like 1,2,5"
    text = text.strip()
    span = re.fullmatch(r"(\d+)\s*-\s*(\d+)", text)
    if span:
        lo, hi = int(span[1]), int(span[2])
        if lo > hi:
            raise MedsegError(f"--seeds {text!r}: the range runs backwards ({lo} > {hi}); write {hi}-{lo}")
        if hi - lo + 1 > MAX_SEEDS:
            raise MedsegError(f"--seeds {text!r}: {hi - lo + 1} seeds; at most {MAX_SEEDS} at a time")
        seeds = list(range(lo, hi + 1))
    else:
        try:
            seeds = [int(s) for s in text.split(",") if s.strip()]
        except ValueError:
            raise MedsegError(usage) from None
    if len(seeds) > MAX_SEEDS:
        raise MedsegError(f"--seeds {text!r}: {len(seeds)} seeds; at most {MAX_SEEDS} at a time")
    return seeds


def main() -> None:
    """The ``medseg`` entry point. Usage errors (a bad option value, a missing argument) are one
    ``error:`` line on stderr with exit code 2, like every other error; no boxed panel."""
    try:  # typer >= 0.20 runs on its own vendored copy of click
        from typer._click.exceptions import ClickException, NoArgsIsHelpError, UsageError
    except ImportError:  # pragma: no cover - older typer
        from click.exceptions import ClickException, NoArgsIsHelpError, UsageError

    try:
        code = app(standalone_mode=False)
    except NoArgsIsHelpError as exc:
        out.print(exc.format_message(), highlight=False, markup=False)
        code = 0
    except UsageError as exc:
        command = exc.ctx.command_path if exc.ctx is not None else "medseg"
        message = " ".join(exc.format_message().split())  # one line
        err.print(f"[red]error:[/red] {escape(message)} (see '{command} --help')", highlight=False, soft_wrap=True)
        code = exc.exit_code
    except ClickException as exc:
        err.print(f"[red]error:[/red] {escape(' '.join(exc.format_message().split()))}", highlight=False,
                  soft_wrap=True)
        code = exc.exit_code
    except KeyboardInterrupt:
        err.print("interrupted")
        code = 130
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
