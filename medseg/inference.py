"""Scan -> label map, slice by slice. No file I/O here.

Layers, as in nnU-Net v2's predictor: a :class:`Predictor` is built once from a
:class:`~medseg.bundle.Bundle` and a device, then segments scans and files;
:func:`segment` is the one-call convenience; :func:`predict_volume` takes a canonical
(RAS-ordered) array and any callable mapping a batch of slices (B, C, H, W) to logits (B, K, H, W).

Memory stays bounded: slices are preprocessed, resampled, predicted, resampled back and
reduced to class indices one batch at a time, so float logits are never held for the whole
volume.
"""

from __future__ import annotations

import copy
import math
import os
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Callable

import nibabel as nib
import numpy as np
import torch
from torch.nn.utils.fusion import fuse_conv_bn_eval

from .bundle import Bundle
from .errors import MedsegError
from .geometry import AXES, canonical_spacing, canonical_view, from_canonical
from .io import Scan
from .slices import (
    context_indices,
    intensity_range,
    read_slices_at,
    resize_slices,
    target_size,
)

Progress = Callable[[int, int], None]


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """``None``/``"auto"``: CUDA when available, else CPU; ``cpu``, ``cuda`` or ``cuda:N``.

    Anything else, or CUDA on a machine without it, is a one-line error.
    """
    if device is None or str(device).strip().lower() == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    text = str(device).strip().lower()
    try:
        dev = torch.device(text)
    except (RuntimeError, ValueError, TypeError):
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda") or (dev.type == "cpu" and dev.index not in (None, 0)):
        raise MedsegError(f"--device {device}: not a device; expected auto, cpu, cuda or cuda:N")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise MedsegError(f"--device {device}: no CUDA device is available on this machine (use cpu or auto)")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise MedsegError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return dev


# What the per-slice uncertainty means (see :func:`slice_uncertainty`), for reports and the viewer.
UNCERTAINTY_SCALE = "share of the voxels near predicted structures whose class is uncertain (0..1)"
UNCERTAIN_SLICE = 0.08  # review slices above this (shifted phantoms, bundled model: 48 % of the bad slices found, 58 % of those flagged bad)
UNCERTAIN_ENTROPY = 0.3  # a voxel is uncertain when its normalised entropy exceeds this
NEAR_FOREGROUND = 0.9  # "near a structure": p(background) below this, ...
NEAR_MM = 4.0  # ... or within this many millimetres of such a voxel


def slice_uncertainty(
    logits: torch.Tensor,
    spacing: tuple[float, float],
    *,
    entropy_level: float = UNCERTAIN_ENTROPY,
    near_foreground: float = NEAR_FOREGROUND,
    near_mm: float = NEAR_MM,
) -> torch.Tensor:
    """Per-slice uncertainty (B,) of logits (B, K, H, W) whose pixels are ``spacing`` mm apart.

    The share of the voxels (every other row and column) near predicted structures
    (p(background) < ``near_foreground``, dilated by ``near_mm``) whose normalised entropy
    (0 = certain, 1 = uniform over the K classes; an even split between two of 6 classes is 0.39)
    exceeds ``entropy_level``; 0 for a slice with nothing near a structure. Class 0 is the
    background. Unlike the mean entropy over the whole slice, confident background does not
    dilute it. Levels were chosen with ``benchmarks/uncertainty_shift.py``.
    """
    # every other pixel: a share needs no full resolution, and this keeps the cost a few % of the model's
    logp = torch.log_softmax(logits[:, :, ::2, ::2].float(), dim=1)
    ent = -(logp.exp() * logp).sum(dim=1) / math.log(max(logits.shape[1], 2))
    near = (logp[:, 0] < math.log(near_foreground)).float()[:, None]
    ry, rx = (max(0, int(round(near_mm / (2.0 * float(s))))) for s in spacing)
    if ry or rx:
        near = torch.nn.functional.max_pool2d(near, (2 * ry + 1, 2 * rx + 1), stride=1, padding=(ry, rx))
    near = near[:, 0] > 0
    uncertain = (near & (ent > entropy_level)).flatten(1).sum(dim=1).float()
    return uncertain / near.flatten(1).sum(dim=1).clamp_min(1).float()


def _scale(raw: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """``raw`` clipped to [low, high] and scaled to [0, 1]: :func:`~medseg.transforms.intensity_transform`'s
    values (the same float operations), without MONAI's per-call overhead."""
    return ((raw - low) / (high - low if high > low else 1.0)).clamp_(0.0, 1.0)


def _model_input(
    volume: np.ndarray, start: int, stop: int, intensity: tuple[float, float], size_in: tuple[int, int], context: int,
    device: torch.device, step: int = 1,
) -> torch.Tensor:
    """Model input (stop - start, 2k+1, H', W') for slices ``start:stop`` of ``volume`` (X, Y, Z).

    Each slice and its neighbours (every ``step``-th slice) is read, scaled and resampled once, then
    stacked into 2k+1 channels per slice (neighbours clamped at the volume's ends). Only the slices
    used are read: one live slice of a 0.5 mm scan reads 3 slices, not the 13 between its neighbours.
    """
    idx = context_indices(np.arange(start, stop), context, volume.shape[2], step)
    needed = np.unique(idx)
    # Where X runs fastest in memory (NIfTI's order), slices are read and resized as (Y, X), and only
    # the small result is transposed: copying 512 x 512 slices across the grain costs ~2x more.
    yx = abs(volume.strides[0]) < abs(volume.strides[1])
    raw = read_slices_at(volume.transpose(1, 0, 2) if yx else volume, needed).to(device)
    x = _scale(raw, *intensity)
    if volume.dtype.kind == "f":  # NaN/inf voxels take the background value (0 after scaling)
        x = torch.where(torch.isfinite(raw), x, torch.zeros((), dtype=x.dtype, device=x.device))
    x = resize_slices(x[:, None], tuple(size_in[::-1]) if yx else size_in, "bilinear")[:, 0]
    if yx:
        x = x.transpose(1, 2)
    channels = torch.from_numpy(np.searchsorted(needed, idx)).to(device)
    return x[channels].contiguous(memory_format=torch.channels_last)


def _taps(n_in: int, n_out: int, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Source pixels (i0, i1) and weight of i1 for each of ``n_out`` outputs of a bilinear resize from
    ``n_in`` (align_corners=False, as torch's ``interpolate``: half-pixel centres, clamped at 0)."""
    src = ((torch.arange(n_out, device=device, dtype=torch.float32) + 0.5) * (n_in / n_out) - 0.5).clamp_(min=0.0)
    i0 = src.floor().long().clamp_(max=n_in - 1)
    i1 = (i0 + 1).clamp_(max=n_in - 1)
    return i0, i1, src - i0


def resized_argmax(logits: torch.Tensor, size: tuple[int, int], lut: torch.Tensor | None = None) -> torch.Tensor:
    """``argmax`` over classes of the logits (B, K, h, w) bilinearly resized to ``size``, without resizing
    every class: where the 2 x 2 source pixels around an output pixel share one argmax, every class's
    interpolated logit is the same convex combination of theirs, so that argmax stays; only the
    output pixels of the other cells (near boundaries) are interpolated, all classes at once.
    ``lut[c]`` (optional) is returned for class ``c``; uint8 when every value fits, else int64."""
    b, k, h, w = logits.shape
    last = logits.movedim(1, -1).contiguous()  # (B, h, w, K): argmax over a contiguous axis is ~4x faster
    if lut is None:
        lut = torch.arange(k, device=logits.device)
    small = int(lut.max()) < 256 and k <= 256
    lut = lut.to(torch.uint8 if small else torch.int64)
    if (h, w) == tuple(size):
        return lut[last.argmax(dim=-1)]
    y0, y1, wy = _taps(h, size[0], logits.device)
    x0, x1, wx = _taps(w, size[1], logits.device)
    low = last.argmax(dim=-1)
    below = torch.cat([low[:, 1:], low[:, -1:]], dim=1)  # the neighbour each cell interpolates with
    agree = (low == torch.cat([low[:, :, 1:], low[:, :, -1:]], dim=2)) & (low == below)
    agree &= low == torch.cat([below[:, :, 1:], below[:, :, -1:]], dim=2)
    if float(agree.float().mean()) < 0.75:  # speckled logits (a scan far from the training data): resize all
        return lut[resize_slices(logits, size, "bilinear").movedim(1, -1).contiguous().argmax(dim=-1)]
    out = _cells(lut[low], y0, x0)
    n, yy, xx = _nonzero(_cells(~agree, y0, x0))
    if len(n):
        vy, vx = wy[yy, None], wx[xx, None]
        top = last[n, y0[yy], x0[xx]] * (1 - vx) + last[n, y0[yy], x1[xx]] * vx
        bottom = last[n, y1[yy], x0[xx]] * (1 - vx) + last[n, y1[yy], x1[xx]] * vx
        out[n, yy, xx] = lut[(top * (1 - vy) + bottom * vy).argmax(dim=1)]
    return out


def _cells(values: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """``values[:, rows][:, :, cols]``: each output pixel takes its cell's value (numpy's ``take``
    on the CPU is ~4x faster than two ``index_select``; unlike fancy indexing, its result is C-ordered)."""
    if values.device.type == "cpu":
        return torch.from_numpy(values.numpy().take(rows.numpy(), axis=1).take(cols.numpy(), axis=2))
    return values.index_select(1, rows).index_select(2, cols)


def _nonzero(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Indices of the true entries of a 3-D mask (``nonzero(as_tuple=True)``); on the CPU numpy's
    ``flatnonzero`` and a division, ~4x faster than torch's ``nonzero`` on sparse masks."""
    if mask.device.type != "cpu":
        return mask.nonzero(as_tuple=True)
    flat = torch.from_numpy(np.flatnonzero(mask.numpy()))
    plane = mask.shape[1] * mask.shape[2]
    return flat // plane, (flat % plane) // mask.shape[2], flat % mask.shape[2]


def _classes(logits: torch.Tensor, size: tuple[int, int], lut: torch.Tensor | None) -> torch.Tensor:
    """Logits (B, K, H', W') resampled to ``size`` and reduced to label values (B, X, Y)."""
    return resized_argmax(logits, size, lut)


def predict_volume(
    volume: np.ndarray,
    spacing: tuple[float, float],
    predictor: Callable[[torch.Tensor], torch.Tensor],
    *,
    intensity: tuple[float, float],
    target_spacing: tuple[float, float],
    context: int = 0,
    context_step: int = 1,
    label_values: list[int] | None = None,
    batch_size: int = 8,
    device: torch.device | str = "cpu",
    progress: Progress | None = None,
    uncertainty: np.ndarray | None = None,
) -> np.ndarray:
    """Label map (same shape as ``volume``) predicted slice by slice along the third axis.

    ``volume`` is (X, Y, Z) with in-plane voxel sizes ``spacing``; each batch of slices (with
    ``context`` neighbours on each side, ``context_step`` slices apart, as channels) is scaled from ``intensity`` to [0, 1],
    resampled to ``target_spacing``, passed to ``predictor``, and its logits resampled back
    before the argmax. ``label_values[c]`` is written for class ``c`` (default: ``c``).
    ``uncertainty``, when given (length = number of slices), receives each slice's
    :func:`slice_uncertainty` (:data:`UNCERTAINTY_SCALE`), for worst-first review.
    """
    device = torch.device(device)
    x_size, y_size, depth = volume.shape
    size_in = target_size((x_size, y_size), spacing, target_spacing)
    lut = None if label_values is None else torch.as_tensor(label_values, device=device)
    out_dtype = np.uint8 if (label_values is None or max(label_values) < 256) else np.uint16
    # (Z, Y, X) in memory: contiguous writes per batch, and the (X, Y, Z) result is Fortran-ordered,
    # NIfTI's own order, so writing the mask is a plain copy (a C-ordered map is transposed: ~0.5 s at 512^2 x 300)
    out = np.zeros((depth, y_size, x_size), dtype=out_dtype)
    autocast = torch.autocast("cuda", dtype=torch.float16) if device.type == "cuda" else nullcontext()
    with torch.inference_mode(), autocast:
        for start in range(0, depth, batch_size):
            stop = min(start + batch_size, depth)
            x = _model_input(volume, start, stop, intensity, size_in, context, device, context_step)
            logits = predictor(x).float()
            if uncertainty is not None:
                uncertainty[start:stop] = slice_uncertainty(logits, target_spacing).cpu().numpy()
            out[start:stop] = _classes(logits, (x_size, y_size), lut).cpu().numpy().transpose(0, 2, 1)
            if progress is not None:
                progress(stop, depth)
    return out.transpose(2, 1, 0)


def _conv_bn_pairs(model: torch.nn.Module) -> list[tuple[torch.nn.Sequential, int]]:
    """Every (Sequential, i) whose items i, i + 1 are a Conv2d followed by a BatchNorm2d."""
    return [
        (seq, i)
        for seq in model.modules()
        if isinstance(seq, torch.nn.Sequential)
        for i in range(len(seq) - 1)
        if isinstance(seq[i], torch.nn.Conv2d) and isinstance(seq[i + 1], torch.nn.BatchNorm2d)
    ]


def _fold_batch_norms(model: torch.nn.Module) -> torch.nn.Module:
    """Fold each eval-mode Conv2d + BatchNorm2d pair of ``model`` into one convolution, in place."""
    for seq, i in _conv_bn_pairs(model):
        seq[i] = fuse_conv_bn_eval(seq[i], seq[i + 1])
        seq[i + 1] = torch.nn.Identity()
    return model


def inference_model(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` with every Conv2d + BatchNorm2d pair folded into one convolution (a copy).

    Eval-mode batch norm is an affine map, so folding it changes nothing but the cost (about
    10 % of SegNet's CPU time). Models without such pairs, or in training mode, are returned as they are.
    """
    if model.training or not _conv_bn_pairs(model):
        return model
    return _fold_batch_norms(copy.deepcopy(model))


@dataclass(eq=False)
class LiveScan:
    """What :meth:`Predictor.predict_slice` needs of a scan, computed once (:meth:`Predictor.prepare_live`).

    ``view`` is the scan's voxels in the model's axis order (a view, no copy), ``intensity`` the
    range mapped to [0, 1] (for MR the percentiles of the whole volume, as the full run uses),
    ``to_display`` the nibabel orientation transform from the model's axes to display (LPS) axes.
    """

    scan: Scan
    view: np.ndarray
    spacing: tuple[float, float]
    intensity: tuple[float, float]
    size_in: tuple[int, int]
    to_display: np.ndarray
    context_step: int = 1

    @property
    def depth(self) -> int:
        return int(self.view.shape[2])

    def model_slice(self, k: int) -> int:
        """The model-order slice that is display axial slice ``k`` (inferior to superior)."""
        if not 0 <= int(k) < self.depth:
            raise MedsegError(f"{self.scan.source}: axial slice {k} is outside 0..{self.depth - 1}")
        return int(k) if self.to_display[2, 1] > 0 else self.depth - 1 - int(k)

    def display_slice(self, labels: np.ndarray) -> np.ndarray:
        """A model-order slice (X, Y) in display order (P, L)."""
        return np.ascontiguousarray(nib.orientations.apply_orientation(labels[:, :, None], self.to_display)[:, :, 0].T)


class Predictor:
    """A model made ready once, then used for many scans (nnU-Net v2's predictor, in small).

    Built from a :class:`~medseg.bundle.Bundle` and a device: a copy of the model is put in
    eval mode, its Conv2d + BatchNorm2d pairs folded, moved to the device in channels-last
    layout. The caller's bundle is never changed. Then :meth:`predict_scan` (a loaded scan)
    and :meth:`predict_file` (a path) give label maps on the scan's own grid, after the card's
    ``postprocessing`` (:mod:`medseg.postprocess`; ``postprocess=False`` leaves it out). The live
    preview (:meth:`predict_slice`) shows one slice as the network gives it, before that step.
    """

    def __init__(self, bundle: Bundle, device: str | torch.device | None = None, *, batch_size: int = 8,
                 postprocess: bool = True) -> None:
        if int(batch_size) < 1:
            raise MedsegError(f"batch size {batch_size}: must be at least 1")
        self.card = bundle.card
        self.postprocess = bool(postprocess)  # the card's postprocessing (medseg.postprocess) after the network
        self.device = resolve_device(device)
        self.batch_size = int(batch_size)
        # A copy: folding, moving and eval() never touch the caller's model (it may be training).
        model = _fold_batch_norms(copy.deepcopy(bundle.model).eval())
        # channels-last convolutions are ~10 % faster on CPU (oneDNN) and on GPU tensor cores
        self.model = model.to(self.device).to(memory_format=torch.channels_last)
        self._live_cache: dict[int, LiveScan] = {}

    @classmethod
    def from_folder(
        cls, path: str | os.PathLike | None = None, device: str | torch.device | None = None, *, batch_size: int = 8
    ) -> "Predictor":
        """A predictor for the bundle in ``path`` (default: the packaged model or ``$MEDSEG_MODEL``)."""
        from .bundle import load_bundle

        return cls(load_bundle(path), device, batch_size=batch_size)

    def warm_up(self) -> None:
        """One forward pass on a tiny input. The first call builds the backend's kernels (oneDNN on
        the CPU: ~0.6 s on 2 cores, nearly whatever the input's shape; cuDNN's set-up on a GPU), so a
        caller can pay that while another thread reads the scan."""
        x = torch.zeros(1, self.card.in_channels, 64, 64, device=self.device)
        with torch.inference_mode():
            self.model(x.contiguous(memory_format=torch.channels_last))
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def check_scan(self, scan: Scan, on_warning: Callable[[str], None] | None = None) -> None:
        """Refuse a scan of the wrong modality or with unusable intensities; report doubts."""
        import warnings

        from .errors import MedsegWarning
        from .intensity import check_scan_intensities

        card = self.card
        if scan.modality and scan.modality.upper() != card.modality.upper():
            raise MedsegError(
                f"{scan.source}: the model '{card.name}' is for {card.modality} but the scan is {scan.modality}"
            )
        for message in check_scan_intensities(scan, card):
            if on_warning is not None:
                on_warning(message)
            else:
                warnings.warn(message, MedsegWarning, stacklevel=3)

    def predict_scan(
        self,
        scan: Scan,
        *,
        progress: Progress | None = None,
        uncertainty: np.ndarray | None = None,
        on_warning: Callable[[str], None] | None = None,
    ) -> np.ndarray:
        """Label map for ``scan`` on the scan's own grid (same shape and axis order as ``scan.array``).

        ``uncertainty`` (optional, one value per axial slice, inferior to superior) receives each
        slice's :func:`slice_uncertainty` (:data:`UNCERTAINTY_SCALE`; review slices above
        :data:`UNCERTAIN_SLICE` first).

        Scans that cannot be segmented (wrong modality, no finite voxel, no contrast, values
        outside any CT/MR range) raise :class:`MedsegError`; doubts (intensities outside the
        model's training range, NaN voxels) go to ``on_warning`` one line each, or to
        :mod:`warnings` as :class:`~medseg.errors.MedsegWarning` when no callback is given.
        """
        self.check_scan(scan, on_warning)
        card = self.card
        view, ornt = canonical_view(scan.array, scan.affine, card.orientation)
        spacing = canonical_spacing(scan.affine, ornt)
        labels = predict_volume(
            view,
            (float(spacing[0]), float(spacing[1])),
            self.model,
            intensity=intensity_range(view, card.preprocessing),
            target_spacing=tuple(card.spacing),
            context=card.context_slices,
            context_step=card.context_step(float(spacing[2])),
            label_values=card.label_values,
            batch_size=self.batch_size,
            device=self.device,
            progress=progress,
            uncertainty=uncertainty,
        )
        if self.postprocess and card.postprocessing:
            from .postprocess import apply_postprocessing

            apply_postprocessing(labels, tuple(float(s) for s in spacing), card.postprocessing, card.labels)
        return np.asfortranarray(from_canonical(labels, ornt, card.orientation))  # NIfTI's order: see predict_volume

    def prepare_live(self, scan: Scan, on_warning: Callable[[str], None] | None = None) -> LiveScan:
        """Check ``scan`` once and keep what :meth:`predict_slice` needs of it (no copy of the voxels)."""
        self.check_scan(scan, on_warning)
        card = self.card
        view, ornt = canonical_view(scan.array, scan.affine, card.orientation)
        spacing = canonical_spacing(scan.affine, ornt)
        spacing2 = (float(spacing[0]), float(spacing[1]))
        to_display = nib.orientations.ornt_transform(
            nib.orientations.axcodes2ornt(tuple(card.orientation)), nib.orientations.axcodes2ornt(tuple(AXES))
        )
        if int(to_display[2, 0]) != 2:
            raise MedsegError(f"model '{card.name}': orientation {card.orientation} does not slice axially")
        return LiveScan(
            scan=scan,
            view=view,
            spacing=spacing2,
            intensity=intensity_range(view, card.preprocessing),
            size_in=target_size(view.shape[:2], spacing2, tuple(card.spacing)),
            to_display=to_display,
            context_step=card.context_step(float(spacing[2])),
        )

    def _live(self, scan: Scan, cache: LiveScan | None) -> LiveScan:
        if cache is not None:
            return cache
        hit = self._live_cache.get(id(scan))
        if hit is None or hit.scan is not scan:
            hit = self.prepare_live(scan)
            if len(self._live_cache) >= 4:
                self._live_cache.pop(next(iter(self._live_cache)))
            self._live_cache[id(scan)] = hit
        return hit

    def predict_slice_with_uncertainty(
        self, scan: Scan, k: int, *, cache: LiveScan | None = None
    ) -> tuple[np.ndarray, float]:
        """:meth:`predict_slice` and that slice's :func:`slice_uncertainty` (as ``predict_scan`` gives it)."""
        return self._predict_one(scan, k, cache, score=True)

    def _predict_one(self, scan: Scan, k: int, cache: LiveScan | None, score: bool) -> tuple[np.ndarray, float | None]:
        live = self._live(scan, cache)
        card = self.card
        z = live.model_slice(k)
        lut = torch.as_tensor(card.label_values, device=self.device)
        autocast = torch.autocast("cuda", dtype=torch.float16) if self.device.type == "cuda" else nullcontext()
        with torch.inference_mode(), autocast:
            x = _model_input(live.view, z, z + 1, live.intensity, live.size_in,
                             card.context_slices, self.device, live.context_step)
            logits = self.model(x).float()
            uncertainty = float(slice_uncertainty(logits, tuple(card.spacing))[0]) if score else None
            classes = _classes(logits, live.view.shape[:2], lut)[0].cpu().numpy()
        out_dtype = np.uint8 if max(card.label_values) < 256 else np.uint16
        return live.display_slice(classes.astype(out_dtype, copy=False)), uncertainty

    def predict_slice(self, scan: Scan, k: int, *, cache: LiveScan | None = None) -> np.ndarray:
        """Labels (P, L) of display axial slice ``k``, for a live preview as the user scrolls.

        Equal to ``to_display(Predictor(bundle, postprocess=False).predict_scan(scan), scan.affine)[0][k]``
        (the network's labels; the card's postprocessing needs the whole volume): the same neighbour
        slices, intensity range and resampling, one slice at a time. ``cache`` is
        :meth:`prepare_live`'s result; without it the predictor keeps one for the last few scans
        (by identity), so the MR percentile range is computed once per scan.
        """
        return self._predict_one(scan, k, cache, score=False)[0]  # the live preview needs no score

    def predict_file(
        self,
        path: str | os.PathLike,
        *,
        series_uid: str | None = None,
        modality: str | None = None,
        **kwargs,
    ) -> tuple[Scan, np.ndarray]:
        """Load ``path`` (NIfTI, NRRD, MHA/MHD, a DICOM file or folder) and segment it."""
        from .io import load_scan

        scan = load_scan(path, series_uid=series_uid, modality=modality)
        return scan, self.predict_scan(scan, **kwargs)


def segment(
    scan: Scan,
    bundle: Bundle,
    *,
    device: str | torch.device | None = None,
    batch_size: int = 8,
    progress: Progress | None = None,
    uncertainty: np.ndarray | None = None,
    on_warning: Callable[[str], None] | None = None,
) -> np.ndarray:
    """One scan, one bundle: ``Predictor(bundle, device).predict_scan(scan, ...)``.

    For several scans build one :class:`Predictor` and reuse it (the model is prepared once).
    """
    predictor = Predictor(bundle, device, batch_size=batch_size)
    return predictor.predict_scan(scan, progress=progress, uncertainty=uncertainty, on_warning=on_warning)
