"""Label maps: the one check that an array is a label map of the declared labels, and its dtype.

Every place that takes a label map from outside (``evaluate``, ``segment --reference``,
``check-dataset``, ``train``, adding a case to a dataset, the napari writer) goes through
:func:`check_label_map`: whole, non-negative values, all of them declared. Each problem is a
one-line :class:`~medseg.errors.MedsegError` naming the file (or layer) it came from.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

import numpy as np

from .errors import MedsegError

MAX_LABEL = 65535
_SHOWN = 8  # undeclared values named in a message
IGNORE = "ignore"  # nnU-Net v2's name for voxels that are not labelled (sparse annotation)


_LESION_WORDS = re.compile(r"tumou?r|lesion|metasta|neoplas|cancer|carcinoma|nodule")


def is_lesion(name: str) -> bool:
    """Whether a label name is a lesion (tumour, tumor, lesion, metastasis, neoplasm, cancer,
    carcinoma, nodule; any case): DICOM SEG codes it as a neoplasm, training may redraw its contrast."""
    return bool(_LESION_WORDS.search(str(name).lower()))


def is_ignore(name: str) -> bool:
    """Whether a label name is nnU-Net v2's ``ignore`` label (any case)."""
    return str(name).strip().lower() == IGNORE


def split_ignore(labels: Mapping[str, int]) -> tuple[dict[str, int], int | None]:
    """(the structures, the ``ignore`` value or None) of a name -> value label table.

    Voxels with the ignore value are not labelled: they count in no loss, no metric and no check
    (nnU-Net v2's convention for sparse annotation, where ``ignore`` must be the highest value).
    """
    structures = {k: int(v) for k, v in labels.items() if not is_ignore(k)}
    ignored = [int(v) for k, v in labels.items() if is_ignore(k)]
    return structures, (ignored[0] if ignored else None)


def label_dtype(labels: np.ndarray) -> np.dtype:
    """uint8 when every label fits, uint16 above 255 labels."""
    top = int(labels.max()) if labels.size else 0
    if labels.size and int(labels.min()) < 0:
        raise MedsegError("label map has negative values")
    if top <= 255:
        return np.dtype(np.uint8)
    if top <= MAX_LABEL:
        return np.dtype(np.uint16)
    raise MedsegError(f"label map has values up to {top}; at most {MAX_LABEL} labels are supported")


def as_label_map(array: np.ndarray, source) -> np.ndarray:
    """A label map's voxels as non-negative integers (floats holding whole numbers are converted);
    a one-line error naming ``source`` otherwise."""
    arr = np.asarray(array)
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)) or not np.all(np.mod(arr, 1) == 0):
            raise MedsegError(f"{source}: label values are not whole numbers (not a label map?)")
        arr = arr.astype(np.int64)
    if arr.size and int(arr.min()) < 0:
        raise MedsegError(f"{source}: negative label values (not a label map?)")
    return arr


def present_values(arr: np.ndarray) -> list[int]:
    """The distinct values of a non-negative integer array, ascending."""
    if arr.size == 0:
        return []
    if int(arr.max()) < 1 << 20:
        flat = arr.ravel()
        return np.flatnonzero(np.bincount(flat.astype(np.int64) if flat.dtype == np.uint64 else flat)).tolist()
    return np.unique(arr).tolist()  # huge values (not a label map at all): sorting is cheaper than a histogram


def _declared_text(labels: Mapping[str, int] | Iterable[int]) -> str:
    if isinstance(labels, Mapping):
        return ", ".join(f"{v}={k}" for k, v in sorted(labels.items(), key=lambda kv: kv[1]))
    return ", ".join(str(v) for v in sorted(set(int(v) for v in labels)))


def check_label_map(
    array: np.ndarray,
    source,
    labels: Mapping[str, int] | Iterable[int] | None = None,
    *,
    declared_in: str = "among the labels",
    hint: str = "",
) -> np.ndarray:
    """``array`` as a label map (:func:`as_label_map`) whose values are all declared in ``labels``
    (name -> value, or the values; 0 is always allowed; ``None``: not checked).

    An undeclared value is a one-line error naming ``source`` and the values, e.g.
    ``case.nii.gz: label values [7] are not declared in dataset.json (0=background, 1=liver)``;
    ``declared_in`` says where the labels come from and ``hint`` is appended after a semicolon.
    """
    arr = as_label_map(array, source)
    if labels is None or arr.size == 0:
        return arr
    values = labels.values() if isinstance(labels, Mapping) else labels
    known = {int(v) for v in values} | {0}
    unknown = sorted(set(present_values(arr)) - known)
    if unknown:
        shown = ", ".join(str(v) for v in unknown[:_SHOWN])
        if len(unknown) > _SHOWN:
            shown += f", ... ({len(unknown)} values)"
        tail = f"; {hint}" if hint else ""
        raise MedsegError(f"{source}: label values [{shown}] are not {declared_in} ({_declared_text(labels)}){tail}")
    return arr


__all__ = ["IGNORE", "MAX_LABEL", "as_label_map", "check_label_map", "is_ignore", "label_dtype", "present_values",
           "split_ignore"]
