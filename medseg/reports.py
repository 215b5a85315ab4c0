"""Result files: CSV and JSON tables, preview PNGs and training curves, all written atomically.

One place decides how a missing number is written: NaN becomes an empty CSV cell and NaN or
infinity becomes ``null`` in JSON (JSON has no NaN). Every file is written to a temporary file
beside it and renamed (:func:`~medseg.io.atomic_write`), so a reader never sees half a report
and a failure leaves the previous file, if any, as it was.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .io import atomic_write, atomic_write_text


def csv_cell(value: Any, digits: int | None = None, nan: str | None = "") -> Any:
    """A CSV cell: a NaN float becomes ``nan`` (an empty cell; ``None`` keeps Python's ``nan``),
    other floats are rounded to ``digits`` decimals when given."""
    if isinstance(value, float):
        if math.isnan(value) and nan is not None:
            return nan
        return value if digits is None else round(value, digits)
    return value


def jsonable(value: Any) -> Any:
    """``value`` with NaN/inf floats replaced by None (JSON null), recursively."""
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def columns_of(rows: Iterable[dict]) -> list[str]:
    """Every key of ``rows``, in the order each first appears."""
    return list(dict.fromkeys(k for r in rows for k in r))


def csv_text(
    rows: Sequence[dict], columns: Sequence[str] | None = None, *, digits: int | None = None,
    nan: str | None = "", lineterminator: str = "\n",
) -> str:
    """``rows`` as CSV text: a header of ``columns`` (default: every key, in first-seen order),
    then one line per row (a key a row lacks is an empty cell); cells through :func:`csv_cell`."""
    keys = list(columns) if columns is not None else columns_of(rows)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=keys, lineterminator=lineterminator, extrasaction="ignore")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: csv_cell(v, digits, nan) for k, v in r.items()})
    return buf.getvalue()


def write_csv(path: str | os.PathLike, rows: Sequence[dict], columns: Sequence[str] | None = None, **kw) -> Path:
    """:func:`csv_text` of ``rows`` written atomically to ``path``."""
    return atomic_write_text(path, csv_text(rows, columns, **kw))


def write_json(path: str | os.PathLike, data: Any) -> Path:
    """``data`` as indented JSON (NaN/inf -> null, see :func:`jsonable`) written atomically to ``path``."""
    return atomic_write_text(path, json.dumps(jsonable(data), indent=2, allow_nan=False) + "\n")


# ---------------------------------------------------------------------------------------------- training


def write_history(path: str | os.PathLike, rows: list[dict]) -> Path:
    """Training history CSV: one row per epoch, every key as a column (NaN written as ``nan``)."""
    return write_csv(path, rows, nan=None, lineterminator="\r\n")


def plot_curves(path: str | os.PathLike, rows: list[dict]) -> Path:
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
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"), suffix=".png")


# ---------------------------------------------------------------------------------------------- previews


def _preview_slices(lab: np.ndarray, n_axial: int) -> tuple[list[int], int]:
    """Axial slices to show (spread over where the mask is, else over the volume) and the coronal one."""
    area = np.array([np.count_nonzero(lab[k]) for k in range(lab.shape[0])])
    if not area.any():
        picks = [int(round(q * (lab.shape[0] - 1))) for q in np.linspace(0.25, 0.75, n_axial)]
        return picks, lab.shape[1] // 2
    ks = np.flatnonzero(area)
    picks = [int(ks[int(round(q * (len(ks) - 1)))]) for q in np.linspace(0.2, 0.8, n_axial)]
    return picks, int(np.argmax([np.count_nonzero(lab[:, j]) for j in range(lab.shape[1])]))


def write_preview(scan, labels: np.ndarray, path: Path, names: dict[str, int], n_axial: int = 3) -> Path:
    """PNG: the mask over ``n_axial`` axial slices (where it is largest) and one coronal reformat."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colors import ListedColormap
    from matplotlib.figure import Figure

    from .display import default_contrast, label_colours
    from .geometry import display_affine, to_display

    # display order (S, P, L): an axial slice shows anterior up and the patient's right on the
    # left (radiological convention), a coronal one superior up
    data, _ = to_display(scan.array, scan.affine)
    lab, _ = to_display(labels, scan.affine)
    sz, sy, sx = np.abs(np.diag(display_affine(scan.affine, scan.shape))[:3])
    lo, hi = default_contrast(scan.array, scan.modality)
    picks, j = _preview_slices(lab, n_axial)
    vmax = max(max(names.values(), default=1), 1)
    table = label_colours(names)
    colours = ListedColormap([table.get(v, (0.5, 0.5, 0.5, 1.0)) for v in range(vmax + 1)])
    fig = Figure(figsize=(4 * (n_axial + 1), 4.4), dpi=80)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, n_axial + 1)
    overlay = {"cmap": colours, "vmin": 0, "vmax": vmax, "alpha": 0.5, "interpolation": "nearest"}
    for ax, k in zip(axes[:n_axial], picks):
        ax.imshow(data[k], cmap="gray", vmin=lo, vmax=hi, aspect=sy / sx)
        ax.imshow(np.ma.masked_equal(lab[k], 0), aspect=sy / sx, **overlay)
        ax.set_title(f"axial {k}", fontsize=9)
    ax = axes[n_axial]
    ax.imshow(data[:, j], cmap="gray", vmin=lo, vmax=hi, origin="lower", aspect=sz / sx)
    ax.imshow(np.ma.masked_equal(lab[:, j], 0), origin="lower", aspect=sz / sx, **overlay)
    ax.set_title(f"coronal {j}", fontsize=9)
    for ax in axes:
        ax.set_axis_off()
    fig.suptitle(Path(str(scan.source)).name, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"), suffix=".png")


__all__ = [
    "csv_cell", "csv_text", "columns_of", "jsonable", "plot_curves", "write_csv", "write_history",
    "write_json", "write_preview",
]
