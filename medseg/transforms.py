"""Preprocessing shared by training and inference.

- Orientation: scans are viewed in RAS axis order (:func:`medseg.geometry.canonical_view`, a
  transpose and flips, no resampling), so slices along the third axis are axial whatever order
  the file stores them in.
- Intensity (per modality, MONAI ``ScaleIntensityRange``): CT clips a Hounsfield window and
  scales it to [0, 1]; MR scales the volume's own robust range (percentiles) to [0, 1].
- In-plane resampling of batches of slices to the model's spacing and back (MONAI ``Resize``'s
  arithmetic, in :mod:`medseg.slices` with the rest of what inference needs, so it imports no MONAI).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from monai.transforms import MapTransform, RandomizableTransform, ScaleIntensityRange

from .geometry import canonical_spacing, canonical_view, grid_mismatch
from .slices import (  # noqa: F401 - re-exported: the inference side lives there, without MONAI
    CT_DEFAULT,
    MR_DEFAULT,
    context_indices,
    context_step,
    default_preprocessing,
    intensity_range,
    read_slices,
    resize_slices,
    target_size,
)


def intensity_transform(low: float, high: float) -> ScaleIntensityRange:
    """Clip [low, high] and scale it to [0, 1]."""
    return ScaleIntensityRange(a_min=low, a_max=high, b_min=0.0, b_max=1.0, clip=True)


# ---------------------------------------------------------------------------------------------- training pipeline
# MONAI dictionary transforms: the deterministic part (load, orient, scale, resample) is cached
# once per case by ``CacheDataset``; the random part augments each 2D training slice.


class LoadCased(MapTransform):
    """MONAI dictionary transform: read an image/label pair into a common (RAS) orientation.

    Input ``{"image": path, "label": path, "name": str}``; output adds the canonical views
    ``image`` and ``label`` (X, Y, Z), the in-plane ``spacing`` and the slice spacing ``slice_mm``. The label must lie on the
    image's voxel grid in world space (any axis order or flips); otherwise a one-line error
    names the label file.
    """

    def __init__(self, modality: str | None = None, axcodes: str = "RAS") -> None:
        super().__init__(("image", "label"))
        self.modality = modality
        self.axcodes = axcodes

    def __call__(self, data: dict) -> dict:
        from .errors import MedsegError
        from .io import load_scan

        d = dict(data)
        image = load_scan(d["image"], modality=self.modality)
        label = load_scan(d["label"])
        why = grid_mismatch(image, label)
        if why is not None:
            raise MedsegError(f"{d['label']}: {why} of its image {image.source.name}")
        view, ornt = canonical_view(image.array, image.affine, self.axcodes)
        lview, _ = canonical_view(label.array, label.affine, self.axcodes)
        d["image_path"], d["label_path"] = image.source, label.source
        d["image"], d["label"] = view, lview
        spacing = canonical_spacing(image.affine, ornt)
        d["spacing"] = tuple(float(s) for s in spacing[:2])
        d["slice_mm"] = float(spacing[2])
        return d


IGNORE_INDEX = 255  # the class index of voxels that are not labelled (a dataset's ``ignore`` label)


class ToModelSpaced(MapTransform):
    """MONAI dictionary transform: the model's input space, slices first.

    ``image`` is scaled per modality (the inference preset) and resampled in-plane to the
    model's spacing (bilinear), ``label`` values become class indices (``label_values[c]`` ->
    ``c``, the dataset's ``ignore`` value -> :data:`IGNORE_INDEX`) resampled with nearest
    neighbour. Output arrays are (Z, X', Y'): float16 image, uint8 classes; ``labelled``, the
    indices of slices holding any labelled voxel, and ``foreground``, those holding foreground.
    ``intensity_range`` is the image's raw 1-99 % range, which training records in the card.
    """

    def __init__(self, preprocessing: dict[str, Any], spacing, label_values: list[int], ignore: int | None = None) -> None:
        super().__init__(("image", "label"))
        self.preprocessing = preprocessing
        self.spacing = tuple(float(s) for s in spacing)
        self.label_values = list(label_values)
        self.ignore = ignore
        if len(self.label_values) >= IGNORE_INDEX:
            raise ValueError(f"at most {IGNORE_INDEX - 1} classes can be trained, got {len(self.label_values)}")

    def _classes(self, label: np.ndarray, source) -> np.ndarray:
        from .labels import check_label_map

        declared = self.label_values + ([self.ignore] if self.ignore is not None else [])
        lab = check_label_map(label, source, declared, declared_in="declared in the dataset's labels")
        lut = np.zeros(max(int(lab.max(initial=0)), max(declared)) + 1, dtype=np.uint8)
        for c, v in enumerate(self.label_values):
            lut[v] = c
        if self.ignore is not None:
            lut[self.ignore] = IGNORE_INDEX
        return lut[lab]

    def __call__(self, data: dict) -> dict:
        d = dict(data)
        view = d["image"]
        classes = self._classes(d["label"], d["label_path"])
        size = target_size(view.shape[:2], d["spacing"], self.spacing)
        from .intensity import intensity_summary, refuse_empty

        stats = intensity_summary(view, "CT" if self.preprocessing.get("kind") == "ct_window" else None)
        refuse_empty(stats, d["image_path"], "nothing to learn from")
        d["intensity_range"] = (stats.low, stats.high)  # raw 1-99 %, recorded in the model card
        lo, hi = intensity_range(view, self.preprocessing)
        x = torch.from_numpy(np.ascontiguousarray(np.moveaxis(view, 2, 0), dtype=np.float32))[:, None]
        finite = torch.isfinite(x) if stats.nonfinite else None
        x = intensity_transform(lo, hi)(x)
        x = x.as_tensor() if hasattr(x, "as_tensor") else x
        if finite is not None:  # NaN/inf: the background value
            x = torch.where(finite, x, torch.zeros((), dtype=x.dtype))
        x = resize_slices(x, size, "bilinear")[:, 0]
        y = torch.from_numpy(np.ascontiguousarray(np.moveaxis(classes, 2, 0)))[:, None]
        y = resize_slices(y.float(), size, "nearest")[:, 0].to(torch.uint8)
        d["image"] = x.numpy().astype(np.float16)
        d["label"] = y.numpy()
        flat = y.flatten(1)
        d["labelled"] = np.flatnonzero((flat != IGNORE_INDEX).any(dim=1).numpy())
        d["foreground"] = np.flatnonzero(((flat > 0) & (flat != IGNORE_INDEX)).any(dim=1).numpy())
        return d


def training_augmentation(
    rotate_deg: float = 10.0, scale: float = 0.1, flip_prob: float = 0.0, intensity: float = 0.03, prob: float = 0.7,
    lesion_classes: tuple[int, ...] = (), lesion_contrast: tuple[float, float] = (0.0, 0.0), lesion_prob: float = 0.5,
):
    """Random 2D augmentation of ``{"image": (C, H, W), "label": (1, H, W)}`` (MONAI dict transforms).

    Small rotations (+-``rotate_deg``) and scalings (+-``scale``) with bilinear / nearest
    interpolation; flips with ``flip_prob`` per in-plane axis (off by default: left/right is
    anatomy in CT and MR, as TotalSegmentator found when it turned mirroring off); intensity
    jitter kept small (contrast +-``intensity``, shift +-``intensity``/3, noise), because in CT
    the absolute value is the cue: liver and spleen differ by ~20 HU, 0.04 of the window.
    A lesion is the exception: with ``lesion_classes`` and a ``lesion_contrast`` range,
    :class:`RandLesionContrastd` redraws a lesion's contrast to the tissue around it (hypo or
    hyper) with probability ``lesion_prob``, before the jitter.
    """
    import math

    from monai.transforms import (
        Compose,
        RandAffined,
        RandFlipd,
        RandScaleIntensityd,
        RandShiftIntensityd,
    )

    keys = ["image", "label"]
    steps = []
    if flip_prob > 0:
        steps += [RandFlipd(keys, prob=flip_prob, spatial_axis=0), RandFlipd(keys, prob=flip_prob, spatial_axis=1)]
    if rotate_deg > 0 or scale > 0:
        steps.append(
            RandAffined(
                keys,
                prob=prob,
                rotate_range=(math.radians(rotate_deg),),
                scale_range=(scale, scale),
                mode=("bilinear", "nearest"),
                padding_mode="zeros",
            )
        )
    if lesion_classes and lesion_contrast[1] > 0:
        steps.append(RandLesionContrastd(lesion_classes, lesion_contrast, prob=lesion_prob))
    if intensity > 0:
        steps += [
            RandScaleIntensityd("image", factors=intensity, prob=prob),
            RandShiftIntensityd("image", offsets=intensity / 3, prob=prob),
            RandNoised("image", prob=prob, std=intensity / 3),
        ]
    return Compose(steps)


class RandNoised(MapTransform, RandomizableTransform):
    """Zero-mean Gaussian noise, its standard deviation drawn from [0, ``std``), added to ``keys``
    with probability ``prob`` (MONAI's ``RandGaussianNoised``, sample_std=True). The noise is drawn
    in float32 by torch from a seed the transform's own random state gives, so it stays
    reproducible under ``set_random_state``; MONAI's float64 draw was a fifth of a training batch's cost."""

    def __init__(self, keys, prob: float = 0.1, std: float = 0.1) -> None:
        MapTransform.__init__(self, keys)
        RandomizableTransform.__init__(self, prob)
        self.std = float(std)

    def __call__(self, data: dict) -> dict:
        self.randomize(None)
        if not self._do_transform:
            return dict(data)
        sigma = self.R.uniform(0, self.std)
        gen = torch.Generator().manual_seed(int(self.R.randint(2**31 - 1)))
        out = dict(data)
        for key in self.key_iterator(out):
            img = torch.as_tensor(out[key])
            noise = torch.randn(img.shape, generator=gen, dtype=torch.float32) * sigma
            out[key] = img + noise.to(device=img.device, dtype=img.dtype)
        return out


class RandLesionContrastd(MapTransform, RandomizableTransform):
    """Label-aware intensity augmentation: a lesion's contrast to the tissue around it, redrawn.

    For a 2D patch ``{"image": (C, H, W), "label": (1, H, W)}`` holding pixels of
    ``classes`` (class indices of lesion labels), with probability ``prob``: the lesion's mean on
    the centre channel and the mean of the labelled tissue in a ring ``ring`` pixels wide around
    it (the organ it sits in; any ring pixel where none is labelled) are measured, and the
    lesion is shifted on every channel so that its contrast becomes ``+-U(low, high)`` (hypo or
    hyper, each as likely), its edge softened over a pixel, the result kept inside the intensity
    scale ([0, 1], or the patch's own range where wider). The lesion's texture is kept. A liver tumour is hypo-attenuating in one
    phase and hyper-enhancing in another (HCC in the arterial phase); the shape and the place,
    not the sign of the contrast, make it a lesion.
    """

    def __init__(self, classes, contrast: tuple[float, float], prob: float = 0.5, ring: int = 3) -> None:
        MapTransform.__init__(self, ["image", "label"])
        RandomizableTransform.__init__(self, prob)
        self.classes = tuple(int(c) for c in classes)
        self.low, self.high = float(contrast[0]), float(contrast[1])
        self.ring = int(ring)

    def __call__(self, data: dict) -> dict:
        self.randomize(None)
        target = self.R.uniform(self.low, self.high) * (1.0 if self.R.random() < 0.5 else -1.0)
        if not self._do_transform:
            return dict(data)
        img = torch.as_tensor(data["image"])
        label = torch.as_tensor(data["label"])[0]
        lesion = torch.zeros(label.shape, dtype=torch.bool)
        for c in self.classes:
            lesion |= label == c
        if not bool(lesion.any()):
            return dict(data)
        grown = torch.nn.functional.max_pool2d(lesion[None, None].float(), 2 * self.ring + 1, 1, self.ring)[0, 0] > 0
        ring = grown & ~lesion
        tissue = ring & (label > 0) & (label != IGNORE_INDEX)
        around = tissue if bool(tissue.any()) else ring
        if not bool(around.any()):
            return dict(data)
        centre = img[img.shape[0] // 2].float()
        shift = target - float(centre[lesion].mean() - centre[around].mean())
        soft = torch.nn.functional.avg_pool2d(lesion[None, None].float(), 3, 1, 1, count_include_pad=False)[0, 0]
        lo, hi = min(float(img.min()), 0.0), max(float(img.max()), 1.0)  # the [0, 1] scale, or wider
        out = dict(data)
        out["image"] = (img.float() + shift * soft).clamp(lo, hi).to(img.dtype)
        return out
