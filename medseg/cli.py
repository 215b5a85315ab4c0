"""The ``medseg`` command line: a thin typer app over the library's functions.

Every user error is one line on stderr (``error: <file>: <what is wrong>``) and exit code 1;
set ``MEDSEG_DEBUG=1`` to see tracebacks. What the commands print (tables, progress bars,
warnings, the error line) lives in :mod:`medseg.console`.
"""

from __future__ import annotations

import shlex
import sys
import time
from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape
from rich.progress import TextColumn

from .config import TrainConfig
from .console import (
    err,
    friendly,
    out,
    print_batch_summary,
    print_dice,
    print_evaluation,
    print_volumes,
    progress_bar,
    run_app,
    training_reports,
    warn,
)
from .errors import MedsegError

app = typer.Typer(
    help="Segment organs and tumours in CT and MRI with a slice-wise SegNet.",
    add_completion=False,
    pretty_exceptions_enable=False,
    no_args_is_help=True,
)


@app.command()
@friendly
def segment(
    input: Path = typer.Argument(..., help="NIfTI/NRRD/MHA file or a folder holding a DICOM series."),
    output: Path = typer.Option(..., "-o", "--output", help="Mask to write (.nii.gz; .dcm for the DICOM formats)."),
    model: Optional[Path] = typer.Option(None, "--model", "-m", help="Model bundle folder (default: the bundled model)."),
    device: str = typer.Option("auto", help="auto, cpu or cuda."),
    series: Optional[str] = typer.Option(None, help="SeriesInstanceUID, when the folder holds several series."),
    modality: Optional[str] = typer.Option(None, help="CT or MR, for files that do not say (NIfTI)."),
    batch_size: int = typer.Option(8, min=1, help="Slices per forward pass."),
    reference: Optional[Path] = typer.Option(None, help="Ground-truth label map: print Dice per label."),
    format: str = typer.Option("nifti", "--format", help="nifti, dicom-seg or rtstruct (the DICOM ones need a DICOM series)."),
) -> None:
    """Segment one scan and write its label map in the scan's geometry (NIfTI, DICOM SEG or RTSTRUCT)."""
    from concurrent.futures import ThreadPoolExecutor

    from .dicom_results import check_result_path
    from .io import load_scan
    from .resources import default_bundle_path
    from .safety import ensure_writable, refuse_overwriting_inputs

    # everything about the output is checked before any work: never over an input, writable
    check_result_path(output, format, input)
    refuse_overwriting_inputs(output, [("scan", input), ("reference", reference)])
    # a mask beside a bundle's files is harmless; over one of them it is not
    refuse_overwriting_inputs(output, [("model", model if model is not None else default_bundle_path())], into_folders=False)
    ensure_writable(output)
    # The scan is read in a thread while this one imports torch, loads the model and builds its
    # kernels (decompressing releases the GIL): ~1.5 s of start-up paid once instead of twice.
    with ThreadPoolExecutor(1) as reader:
        pending = reader.submit(load_scan, input, series_uid=series, modality=modality)
        try:
            predictor, bundle = _ready_predictor(model, device, batch_size)
        finally:
            scan = pending.result()  # the scan's own error first: it is the likelier one to fix
    _segment_scan(scan, predictor, bundle, output, format, reference)


def _ready_predictor(model: Optional[Path], device: str, batch_size: int):
    """(Predictor with its kernels built, its bundle) for ``segment``."""
    from .bundle import load_bundle
    from .inference import Predictor, resolve_device

    dev = resolve_device(device)
    bundle = load_bundle(model, device=dev)
    predictor = Predictor(bundle, dev, batch_size=batch_size)
    predictor.warm_up()
    return predictor, bundle


def _segment_scan(scan, predictor, bundle, output: Path, format: str, reference: Optional[Path]) -> None:
    """``segment`` once the scan and the model are ready: predict, save, report."""
    from . import __version__
    from .dicom_results import save_result
    from .metrics import label_volumes_ml

    dev = predictor.device
    ref = _load_reference(reference, scan, bundle.card.labels) if reference is not None else None
    t0 = time.perf_counter()
    with progress_bar() as bar:
        task = bar.add_task("segmenting", total=scan.shape[2])
        labels = predictor.predict_scan(
            scan, on_warning=warn, progress=lambda done, total: bar.update(task, completed=done, total=total)
        )
    seconds = time.perf_counter() - t0
    save_result(labels, scan, output, format, bundle.card.labels, model_name=bundle.card.name,
                version=f"medseg {__version__}")
    err.print(
        f"{scan.source.name}: {scan.shape[0]}x{scan.shape[1]}x{scan.shape[2]} "
        f"({', '.join(f'{s:.2f}' for s in scan.spacing)} mm, {''.join(scan.axcodes)}) segmented in {seconds:.1f} s "
        f"on {dev.type} -> {output}",
        highlight=False,
    )
    print_volumes(label_volumes_ml(labels, scan.voxel_volume_ml, bundle.card.labels))
    if ref is not None:
        print_dice(labels, ref, bundle.card.labels)


def _load_reference(path: Path, scan, labels: dict[str, int]):
    """The reference label map on the scan's grid, with the same check as ``evaluate``."""
    from .evaluation import checked_label_map
    from .io import load_scan
    from .geometry import array_on_grid_of

    ref = load_scan(path)
    return checked_label_map(array_on_grid_of(scan, ref), ref.source, labels)


@app.command()
@friendly
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
    format: str = typer.Option("nifti", "--format", help="nifti, dicom-seg or rtstruct (.dcm per DICOM series)."),
) -> None:
    """Segment every scan of a folder; resumable (existing masks are kept), failures isolated and listed."""
    from .batch import segment_folder
    from .distributed import dist_info

    main_rank = dist_info().is_main  # under torchrun, rank 0 alone shows progress and the summary
    t0 = time.perf_counter()
    with progress_bar(disable=not main_rank) as bar:
        overall = bar.add_task("cases", total=None)
        slices = bar.add_task("slices", total=None, visible=False)
        rows, any_failed = segment_folder(
            input_dir, output_dir, model=model, device=device, pattern=pattern, recursive=recursive, preview=preview,
            overwrite=overwrite, modality=modality, batch_size=batch_size, on_warning=warn, fmt=format,
            on_cases=lambda n: bar.update(overall, total=n),
            on_case_start=lambda case, n, total: bar.update(slices, description=case.name[-40:], completed=0,
                                                            total=None, visible=True),
            on_slices=lambda done, total: bar.update(slices, completed=done, total=total),
            on_case_done=lambda row: bar.advance(overall),
        )
    if main_rank:
        print_batch_summary(rows, time.perf_counter() - t0, output_dir)
    if any_failed:
        raise typer.Exit(1)


@app.command()
@friendly
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
@friendly
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
    for case, (labelled, total) in idx.labelled.items():
        out.print(f"  {case}: {labelled} of {total} axial slices labelled (the rest is ignore={idx.ignore})",
                  highlight=False)
    if idx.problems:
        err.print(f"{summary}: {len(idx.problems)} problem(s)", highlight=False, soft_wrap=True)
        raise typer.Exit(1)
    out.print(f"{summary}: OK", highlight=False)


@app.command("import-dicom")
@friendly
def import_dicom(
    src: Path = typer.Argument(..., help="Folder tree of DICOM studies: CT/MR series with their RTSTRUCT and/or SEG."),
    dataset_dir: Path = typer.Argument(..., help="New (or empty) dataset folder: imagesTr/, labelsTr/, dataset.json."),
    roi_map: Path = typer.Option(..., "--roi-map", help='JSON, label -> ROI names in label order: {"liver": ["liver", "liver_total"]}.'),
    prefer: str = typer.Option("seg", "--prefer", help="seg or rtstruct: which label object a series with both uses."),
    regularize: bool = typer.Option(False, "--regularize", help="Resample irregularly spaced series onto a regular grid (else they fail)."),
) -> None:
    """Turn DICOM studies with RTSTRUCT / SEG annotations into a dataset `train` reads, with a report of every series."""
    from .dicom_import import REPORT, import_dicom as run_import, read_roi_map

    mapping = read_roi_map(roi_map)
    with progress_bar() as bar:
        task = bar.add_task("series", total=None)
        result = run_import(src, dataset_dir, mapping, prefer=prefer, regularize=regularize,
                            progress=lambda what: bar.update(task, advance=1, description=what[-40:]))
    for row in result.rows:
        where = row.get("label_object") if not row.get("patient_id") and row.get("label_object") else f"series {row['series_uid']}"
        if row["status"] == "imported":
            line = f"imported: {row['case']} ({row['used']}{'; ' + row['notes'] if row.get('notes') else ''})"
        elif row.get("folder") and str(row.get("notes", "")).startswith(row["folder"]):
            line = f"{row['status']}: {row['notes']}"  # the message names the series' folder already
        else:
            line = f"{row['status']}: {where}: {row.get('notes', '')}"
        (err if row["status"] == "failed" else out).print(escape(line), highlight=False, soft_wrap=True)
    counts = ", ".join(f"{result.count(s)} {s}" for s in ("imported", "skipped", "unlabelled", "failed"))
    out.print(f"{dataset_dir}: {counts}; report {dataset_dir / REPORT}", highlight=False, soft_wrap=True)
    if result.count("failed"):
        raise typer.Exit(1)


_TRAIN = TrainConfig()  # the one source of the train options' defaults


@app.command()
@friendly
def train(
    dataset: Path = typer.Argument(..., help="Dataset folder: imagesTr/, labelsTr/, dataset.json (MSD or nnU-Net)."),
    output: Path = typer.Option(..., "-o", "--output", help="Run folder: best/, last/, checkpoint.pt, history.csv, curves.png."),
    init: Optional[Path] = typer.Option(
        _TRAIN.init, help="Bundle to fine-tune from: its width, spacing and context are kept; labels matched by name."
    ),
    epochs: int = typer.Option(_TRAIN.epochs, min=1),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in OUTPUT from its checkpoint (its own settings)."),
    device: str = typer.Option(_TRAIN.device, help="auto, cpu or cuda."),
    steps_per_epoch: int = typer.Option(_TRAIN.steps_per_epoch, min=1),
    batch_size: int = typer.Option(_TRAIN.batch_size, min=1),
    lr: Optional[float] = typer.Option(_TRAIN.lr, help="Peak learning rate (default 2e-3, or 5e-4 with --init)."),
    optimizer: str = typer.Option(_TRAIN.optimizer, help="adamw or sgd (momentum 0.99, Nesterov)."),
    schedule: str = typer.Option(_TRAIN.schedule, help="onecycle, cosine, poly or constant."),
    loss: str = typer.Option(_TRAIN.loss, help="ce (cross-entropy) or ce+dice."),
    class_weights: str = typer.Option(_TRAIN.class_weights, help="none, or sqrt-inverse (weight classes by 1/sqrt(frequency))."),
    freeze_encoder: bool = typer.Option(_TRAIN.freeze_encoder, "--freeze-encoder", help="Fine-tune the decoder and head only."),
    freeze_batchnorm: bool = typer.Option(_TRAIN.freeze_batchnorm, "--freeze-batchnorm",
                                          help="Keep the --init model's batch-norm statistics (fine-tuning on a few slices)."),
    width: int = typer.Option(_TRAIN.width, min=1, help="SegNet base width (64 = the paper's)."),
    context_slices: int = typer.Option(_TRAIN.context_slices, "--context", min=0, help="Neighbouring slices on each side as extra channels."),
    context_mm: float = typer.Option(_TRAIN.context_mm or 0.0, "--context-mm", min=0.0, max=50.0,
                                     help="How far apart (mm) the context slices are, whatever the slice spacing; 0: the next slice."),
    spacing: float = typer.Option(_TRAIN.spacing[0], help="In-plane training spacing (mm)."),
    crop: int = typer.Option(_TRAIN.crop, min=32, help="Training patch size (pixels)."),
    foreground_fraction: float = typer.Option(_TRAIN.foreground_fraction, min=0.0, max=1.0, help="Share of training slices drawn from slices with foreground."),
    foreground_sampling: str = typer.Option(_TRAIN.foreground_sampling,
                                            help="class: each foreground class as often, the patch around it; slice: any foreground slice."),
    augment: bool = typer.Option(_TRAIN.augment, "--augment/--no-augment", help="Rotations, scalings, intensity jitter."),
    flip_prob: float = typer.Option(_TRAIN.flip_prob, min=0.0, max=1.0, help="Flip probability per in-plane axis (left/right is anatomy: off)."),
    val_cases: int = typer.Option(_TRAIN.val_cases, min=0, help="Held-out cases (seeded split) unless the dataset names a split; 0 = validate on training cases."),
    hd95: bool = typer.Option(_TRAIN.hd95, "--hd95/--no-hd95", help="HD95 in validation (slower)."),
    val_every: int = typer.Option(_TRAIN.val_every, min=1, help="Validate (and keep the best) every N epochs, and after the last."),
    lesion_contrast: float = typer.Option(
        _TRAIN.lesion_contrast, min=0.0, max=1.0,
        help="Redraw each lesion label's contrast to its surroundings, hypo or hyper, up to this fraction of the "
             "intensity scale (CT window 500 HU: 0.16 = 80 HU); 0: off."),
    postprocessing: Optional[str] = typer.Option(
        _TRAIN.postprocessing,
        help="What inference does after the network, recorded in the model card: none, or main-piece (each organ "
             "label keeps only the pieces near its largest). Default: none; a fine-tuned model keeps its source's."),
    amp: str = typer.Option(_TRAIN.amp, help="auto (CUDA: bf16, else fp16 + grad scaler), off, bf16 or fp16."),
    seed: int = typer.Option(_TRAIN.seed),
    name: str = typer.Option(_TRAIN.name, help="Model name recorded in the model card."),
) -> None:
    """Train or fine-tune a SegNet; the best epoch (validation Dice) lands in OUTPUT/best."""
    from .distributed import dist_info
    from .training import train as run_train

    cfg = TrainConfig(
        epochs=epochs, steps_per_epoch=steps_per_epoch, batch_size=batch_size, lr=lr, optimizer=optimizer,
        schedule=schedule, loss=loss, class_weights=class_weights, width=width, context_slices=context_slices,
        context_mm=context_mm or None,
        spacing=(spacing, spacing), crop=crop, foreground_fraction=foreground_fraction,
        foreground_sampling=foreground_sampling, augment=augment,
        flip_prob=flip_prob, val_cases=val_cases, hd95=hd95, val_every=val_every, lesion_contrast=lesion_contrast,
        postprocessing=postprocessing, amp=amp, seed=seed, device=device, name=name,
        init=str(init) if init else None, freeze_encoder=freeze_encoder, freeze_batchnorm=freeze_batchnorm,
    )
    command = "medseg " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    main_rank = dist_info().is_main  # under torchrun, rank 0 alone shows progress and results
    with progress_bar(TextColumn("{task.fields[rate]}"), disable=not main_rank) as bar:
        on_step, on_epoch = training_reports(bar)
        bundle = run_train(dataset, output, cfg, resume=resume, on_epoch=on_epoch, on_step=on_step, command=command)
    if main_rank:
        dice = bundle.card.training.get("val_dice", {})
        mean = sum(dice.values()) / len(dice) if dice else float("nan")
        err.print(f"best model: epoch {bundle.card.training.get('epoch')}, val mean Dice {mean:.3f}, in {output / 'best'}")


@app.command("set-postprocessing")
@friendly
def set_postprocessing_cmd(
    bundle: Path = typer.Argument(..., help="Model bundle folder (model.json + weights)."),
    step: str = typer.Argument(..., help="none, or main-piece (each organ label keeps only the pieces near its largest)."),
    output: Path = typer.Option(..., "-o", "--output", help="New folder for the copy (the source is never changed)."),
) -> None:
    """Copy a model bundle with the post-processing its card records (the weights unchanged)."""
    from .training import set_postprocessing

    out = set_postprocessing(bundle, step, output)
    err.print(f"wrote {out} (post-processing: {step})")


@app.command("average-models")
@friendly
def average_models(
    bundles: list[Path] = typer.Argument(..., help="Two or more model bundle folders of one lineage (one fine-tuned from another)."),
    output: Path = typer.Option(..., "-o", "--output", help="New folder for the averaged bundle (the sources are never changed)."),
    weights: Optional[str] = typer.Option(None, help="One weight per bundle, e.g. 0.5,0.5 (normalised to sum 1); default: equal."),
) -> None:
    """Average the weights of model bundles into one bundle (a model soup: one model's cost)."""
    from .averaging import average_bundles

    try:
        parsed = [float(w) for w in weights.split(",")] if weights else None
    except ValueError:
        raise MedsegError(f"--weights {weights!r}: expected numbers separated by commas, like 0.5,0.5") from None
    command = "medseg " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    out_dir = average_bundles(bundles, output, parsed, command=command)
    err.print(f"wrote {escape(str(out_dir))} (the mean of {len(bundles)} bundles)")


@app.command()
@friendly
def phantom(
    output: Path = typer.Argument(..., help="Dataset folder to write (imagesTr/, labelsTr/, dataset.json)."),
    seeds: str = typer.Option("100-123", help="Seeds: a range '100-123' or a list '1,2,5'."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a dataset already in OUTPUT."),
    add: bool = typer.Option(False, "--add", help="Add the seeds' cases to the phantom dataset already in OUTPUT "
                             "(to mix styles in one dataset)."),
    varied: bool = typer.Option(False, "--varied", help="Each seed its own contrast phase, noise, slice thickness, arms, table."),
    phase: Optional[str] = typer.Option(None, help="non-contrast, arterial, portal-venous or delayed (default: portal-venous; "
                                        "with --varied, each seed's own)."),
    workers: int = typer.Option(0, min=0, max=64, help="Processes rendering cases at once; 0: one per CPU core, at "
                                "most 8 (the files are the same whatever the number)."),
) -> None:
    """Generate a training set of synthetic abdominal CT phantoms with ground-truth labels."""
    from .phantom import make_dataset

    chosen = _parse_seeds(seeds)
    # checks the seeds, the phase and the folder before writing
    make_dataset(output, chosen, overwrite=overwrite, varied=varied, phase=phase, add=add, workers=workers)
    err.print(f"{'added' if add else 'wrote'} {len(chosen)} phantom cases to {output}")


@app.command("sample-data")
@friendly
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
@friendly
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
    with progress_bar() as bar:
        task = bar.add_task("evaluating", total=None)

        def on_case(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        if folders:
            result = evaluate_folders(pred_dir, ref_dir, hd95=hd95, progress=on_case)
        else:
            result = evaluate_model(model, dataset, device=device, hd95=hd95, progress=on_case)
    csv_path, json_path = result.write(out_dir)
    print_evaluation(result, hd95)
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


def _print_version(value: bool) -> None:
    if value:
        from . import __version__  # the one version source (pyproject.toml reads it too)

        out.print(f"medseg {__version__}", highlight=False, markup=False)
        raise typer.Exit()


@app.callback()
def _options(
    version: bool = typer.Option(
        False, "--version", callback=_print_version, is_eager=True, help="Print medseg's version and exit."
    ),
) -> None:
    pass



def main() -> None:
    """The ``medseg`` entry point (usage errors are one ``error:`` line, exit code 2)."""
    run_app(app)


if __name__ == "__main__":
    main()
