"""Case names: a scan or label file's name without its image suffix (and nnU-Net's channel suffix).

The one rule every part of medseg pairs files by (datasets, batch outputs, evaluation, napari
layer names): ``liver_3.nii.gz``, ``liver_3.nrrd`` and the DICOM folder ``liver_3`` are all case
``liver_3``; nnU-Net names the first (only) channel of an image ``case_0000.nii.gz``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Container

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".dcm")  # longest first
CHANNEL_SUFFIX = "_0000"  # nnU-Net's first channel
_CHANNEL = re.compile(r"_\d{4}$")  # any nnU-Net channel suffix


def split_suffix(name: str) -> tuple[str, str]:
    """``("case", ".nii.gz")`` for ``case.nii.gz`` (suffix matched case-insensitively, kept as
    written); ``(name, "")`` for a name without an image suffix."""
    lower = name.lower()
    for suffix in IMAGE_SUFFIXES:
        if lower.endswith(suffix):
            return name[: -len(suffix)], name[-len(suffix):]
    return name, ""


def strip_channel(name: str) -> str:
    """``name`` without an nnU-Net channel suffix ``_NNNN`` (unchanged when it has none)."""
    return _CHANNEL.sub("", name)


def case_name(path: str | os.PathLike, *, channel: bool = False, known: Container[str] | None = None) -> str:
    """The case name of a file or folder: its name without the image suffix.

    ``channel=True`` also strips nnU-Net's channel suffix. Without ``known`` (the case names
    already known) only ``_0000`` is taken for one; with it, any ``_NNNN`` whose remainder is a
    known case, unless the name itself is a case (``case_0001.nii.gz`` in an MSD-style folder
    is case ``case_0001``).
    """
    name = split_suffix(os.path.basename(os.fspath(path)))[0]
    if not channel:
        return name
    if known is None:
        return name[: -len(CHANNEL_SUFFIX)] if name.endswith(CHANNEL_SUFFIX) and len(name) > len(CHANNEL_SUFFIX) else name
    stripped = strip_channel(name)
    return name if name in known or stripped not in known else stripped


__all__ = ["CHANNEL_SUFFIX", "IMAGE_SUFFIXES", "case_name", "split_suffix", "strip_channel"]
