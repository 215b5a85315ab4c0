"""What the ``medseg`` command prints: one ``error:`` line per failure (never a traceback),
medseg's own warnings as ``warning:`` lines (third-party warnings dropped), progress bars on
stderr, result tables on stdout. ``MEDSEG_DEBUG=1`` shows tracebacks and every warning.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import sys
import warnings
from pathlib import Path

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

from .errors import MedsegError, MedsegWarning

out = Console(soft_wrap=True)
err = Console(stderr=True)


def friendly(fn):
    """Turn MedsegError (and anything unexpected) into one line on stderr and exit code 1."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            with medseg_warnings_only():
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
def medseg_warnings_only():
    """Third-party warnings (torch, numpy, MONAI, ITK) are dropped; medseg's own doubts
    (:class:`MedsegWarning`) are printed as one ``warning:`` line each. ``MEDSEG_DEBUG=1``
    shows everything."""
    if os.environ.get("MEDSEG_DEBUG"):
        yield
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        warnings.simplefilter("always", MedsegWarning)
        warnings.showwarning = _show_warning  # ITK's own warnings: switched off where io imports SimpleITK
        yield


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    if issubclass(category, MedsegWarning):
        warn(str(message))


def warn(message: str) -> None:
    err.print(f"[yellow]warning:[/yellow] {escape(message)}", highlight=False, soft_wrap=True)


def progress_bar(*columns, disable: bool = False) -> Progress:
    """A progress bar on stderr (``columns`` after the count); ``disable``: none (ranks other than 0)."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        *columns,
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err,
        transient=True,
        disable=disable,
    )


def print_volumes(volumes: dict[str, float]) -> None:
    """The mL of every structure found (stdout)."""
    table = Table(title="Volumes")
    table.add_column("label")
    table.add_column("mL", justify="right")
    for name, ml in volumes.items():
        table.add_row(name, f"{ml:.1f}")
    if not volumes:
        table.add_row("(nothing found)", "")
    out.print(table)


def print_dice(labels, ref, names: dict[str, int]) -> None:
    from .metrics import dice_per_label

    dice = dice_per_label(labels, ref, names)
    table = Table(title="Dice against the reference")
    table.add_column("label")
    table.add_column("Dice", justify="right")
    for name, value in dice.items():
        table.add_row(name, "absent in both" if math.isnan(value) else f"{value:.3f}")
    out.print(table)


def print_batch_summary(rows: list[dict], seconds: float, output_dir: Path) -> None:
    """The done / skipped / failed table, then one line per failed or skipped case."""
    from .batch import STATUS_DONE, STATUS_FAILED, STATUS_SKIPPED

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


def training_reports(bar: Progress):
    """``train``'s callbacks: the progress bar after each step, one line after each epoch."""
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

    return on_step, on_epoch


def print_evaluation(result, hd95: bool) -> None:
    """The per-label summary table of an evaluation, then its failures (stderr)."""

    def fmt(value: float, digits: int) -> str:
        return "-" if math.isnan(value) else f"{value:.{digits}f}"

    table = Table(title=f"Evaluation of {len(result.cases)} case(s)")
    table.add_column("label")
    for column in ("n", "mean Dice", "std", "mean HD95 mm"):
        table.add_column(column, justify="right")
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


def run_app(app: typer.Typer) -> None:
    """Run the typer ``app``. Usage errors (a bad option value, a missing argument) are one
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
