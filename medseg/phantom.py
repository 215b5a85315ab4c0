"""Deterministic synthetic abdominal CT volumes ("phantoms") with ground-truth labels.

``make_phantom(seed)`` renders a portal-venous abdominal CT with labelled liver, spleen,
kidneys and a hypodense liver tumour; ``write_nifti`` (through :mod:`medseg.io`),
``write_dicom_series`` (through :mod:`medseg.dicom_export`) and ``make_dataset`` put it on
disk. The anatomy is defined in world millimetres, so it does not depend on the voxel grid,
and every random choice comes from generators seeded with ``seed``: the same seed (and
grid) gives bit-identical arrays.

Arrays are indexed (i, j, k) = (towards patient Left, towards Posterior, towards
Superior), i.e. stored like DICOM ("LPS"); ``Phantom.affine`` maps (i, j, k, 1) to RAS
millimetres (nibabel convention).
"""

from __future__ import annotations

import collections
import os
from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage

from .phantom_domain import (
    FIELDS,
    PHASES,
    Extras,
    Style,
    render_chest,
    render_outside,
    render_pelvis,
    style_extras,
    vessel_mask,
)

if TYPE_CHECKING:
    from .io import Scan

__all__ = [
    "LABELS",
    "Phantom",
    "Style",
    "make_dataset",
    "make_phantom",
    "write_dicom_series",
    "write_nifti",
]

LABELS: dict[str, int] = {
    "background": 0,
    "liver": 1,
    "spleen": 2,
    "kidney_right": 3,
    "kidney_left": 4,
    "liver_tumour": 5,
}

PathLike = str | os.PathLike[str]

HU_MIN, HU_MAX = -1024, 3071  # 12-bit CT range; the image is clipped to it
_FOV_INPLANE_MM = 380.0
_FOV_Z_MM = 220.0  # used when only the shape is given

_LIVER, _SPLEEN, _KID_R, _KID_L, _TUMOUR = (
    LABELS["liver"],
    LABELS["spleen"],
    LABELS["kidney_right"],
    LABELS["kidney_left"],
    LABELS["liver_tumour"],
)


@dataclass(eq=False)
class Phantom:
    """A synthetic CT: ``image`` in HU (int16), ``labels`` (uint8, values of LABELS).

    Both arrays have shape (X, Y, Z) and Fortran memory order (each axial slice
    ``[:, :, k]`` is contiguous); ``affine`` maps voxel indices to RAS mm.
    """

    image: np.ndarray
    labels: np.ndarray
    affine: np.ndarray
    seed: int

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm along the three array axes."""
        sx, sy, sz = (float(np.linalg.norm(self.affine[:3, n])) for n in range(3))
        return (sx, sy, sz)

    def as_scan(self) -> Scan:
        """The image as a :class:`medseg.io.Scan` (CT, HU), for the writers in medseg.io."""
        from .io import Scan

        return Scan(self.image, self.affine, source=Path(f"phantom-seed-{self.seed}"), modality="CT",
                    description=f"medseg phantom seed {self.seed}")


# --------------------------------------------------------------------------- shapes


@dataclass(frozen=True)
class _Waves:
    """A smooth random field: sum over n of ``amp[n] * sin(k[n] . p + phase[n])``.

    ``p`` is a body-frame position in mm; ``amp`` has one column per output channel
    (1 for a texture, 2 or 3 for a displacement field).
    """

    k: np.ndarray  # (n, 3) wave vectors, rad/mm
    phase: np.ndarray  # (n,)
    amp: np.ndarray  # (n, channels)

    @classmethod
    def random(
        cls,
        rng: np.random.Generator,
        n: int,
        wavelength: tuple[float, float],
        amplitude: tuple[float, float],
        channels: int = 1,
    ) -> _Waves:
        direction = rng.normal(size=(n, 3))
        direction /= np.linalg.norm(direction, axis=1, keepdims=True)
        k = direction * (2.0 * np.pi / rng.uniform(*wavelength, size=n))[:, None]
        phase = rng.uniform(0.0, 2.0 * np.pi, size=n)
        size = rng.uniform(*amplitude, size=n)
        if channels == 1:
            amp = size[:, None]
        else:
            vec = rng.normal(size=(n, channels))
            amp = vec / np.linalg.norm(vec, axis=1, keepdims=True) * size[:, None]
        return cls(k, phase, amp)

    @property
    def bound(self) -> float:
        """Upper bound of the field's magnitude."""
        return float(np.linalg.norm(self.amp, axis=1).sum())

    def at(self, points: np.ndarray) -> np.ndarray:
        """The field at scattered body-frame points (n, 3): (n, channels)."""
        return np.sin(points @ self.k.T + self.phase) @ self.amp

    def slab(self, x: np.ndarray, y: np.ndarray, z: float) -> np.ndarray:
        """The field on the grid x (nx,) by y (ny,) at height z: (channels, nx, ny) float32.

        Uses sin(a + b) = sin a cos b + cos a sin b, so the 2D work is one small matrix
        product per channel.
        """
        a = np.multiply.outer(x, self.k[:, 0]) + (z * self.k[:, 2] + self.phase)
        b = np.multiply.outer(y, self.k[:, 1])
        left = np.concatenate([np.sin(a), np.cos(a)], axis=1).astype(np.float32)
        right = np.ascontiguousarray(
            np.concatenate([np.cos(b), np.sin(b)], axis=1).T, dtype=np.float32
        )
        amp2 = np.concatenate([self.amp, self.amp]).astype(np.float32)
        return np.stack([(left * amp2[:, c]) @ right for c in range(amp2.shape[1])])


@dataclass(frozen=True)
class _Blob:
    """A warped ellipsoid: p is inside when |A^T (p + warp(p) - centre) / semi| < 1."""

    centre: np.ndarray  # (3,) body-frame mm
    semi: np.ndarray  # (3,) semi-axes, mm
    axes: np.ndarray  # (3, 3) columns are the local axes in the body frame
    warp: _Waves  # 3-channel displacement field, mm

    def half_extent(self) -> np.ndarray:
        """Axis-aligned half size (mm) of a box around the centre that holds the blob."""
        ellipsoid = np.sqrt(((self.axes * self.semi[None, :]) ** 2).sum(axis=1))
        return ellipsoid + self.warp.bound + 1.0

    def local(
        self, x: np.ndarray, y: np.ndarray, z: float
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Normalised local coordinates (unit sphere = surface) on the grid x by y at z."""
        d = self.warp.slab(x, y, z)
        vx = (x - self.centre[0]).astype(np.float32)[:, None] + d[0]
        vy = (y - self.centre[1]).astype(np.float32)[None, :] + d[1]
        vz = np.float32(z - self.centre[2]) + d[2]
        out = []
        for m in range(3):
            r = self.axes[:, m] / self.semi[m]
            out.append(np.float32(r[0]) * vx + np.float32(r[1]) * vy + np.float32(r[2]) * vz)
        return out[0], out[1], out[2]


def _rotation(rx: float, ry: float, rz: float) -> np.ndarray:
    """Rz @ Ry @ Rx for angles in degrees."""
    ax, ay, az = np.deg2rad([rx, ry, rz])
    cx, sx, cy, sy, cz, sz = np.cos(ax), np.sin(ax), np.cos(ay), np.sin(ay), np.cos(az), np.sin(az)
    r_x = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    r_y = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    r_z = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return r_z @ r_y @ r_x


def _frame(first: np.ndarray, third: np.ndarray) -> np.ndarray:
    """Right-handed orthonormal axes: the third along ``third``, the first near ``first``."""
    e2 = third / np.linalg.norm(third)
    e0 = first - (first @ e2) * e2
    e0 /= np.linalg.norm(e0)
    return np.stack([e0, np.cross(e2, e0), e2], axis=1)


# -------------------------------------------------------------------------- anatomy


@dataclass(frozen=True)
class _Anatomy:
    """All seeded anatomical parameters, in body-frame mm.

    Body-frame axes are RAS (+x patient Right, +y Anterior, +z Superior), origin mid-abdomen.
    """

    # body wall
    body_a: float  # left-right semi-axis of the skin
    body_b: float  # antero-posterior semi-axis of the skin
    fat: float  # subcutaneous fat thickness
    wall: float  # abdominal muscle wall thickness
    body_zvar: tuple[float, float, float]  # relative amplitude, wavelength, phase
    body_warp: _Waves
    ribs: tuple[float, float, float]  # lowest z, pitch, phase
    # spine and vessels
    spine_sway: tuple[float, float, float]  # amplitude, wavelength, phase
    vb: tuple[float, float, float]  # centre y, semi-axis x, semi-axis y
    canal: tuple[float, float]  # centre y, radius
    levels: tuple[float, float, float]  # vertebra pitch, disc height, phase
    paraspinal: tuple[float, float, float, float]  # centre |x|, centre y, semi x, semi y
    psoas: tuple[float, float, float, float]  # centre |x|, centre y, semi x, semi y
    aorta: tuple[float, float, float]  # centre x (from spine; < 0: patient left), centre y, radius
    y_fat_inner: float  # posterior end of the subcutaneous fat at the midline
    # organs
    liver: tuple[_Blob, _Blob]  # right lobe, left lobe
    tumour: _Blob | None  # placed by _place_tumour inside the rendered liver
    spleen: _Blob
    kidney_r: _Blob
    kidney_l: _Blob
    # tissue
    hu: dict[str, float]
    visceral_tex: _Waves
    organ_tex: _Waves


def _jitter(rng: np.random.Generator, scale: float = 0.15, size: int = 3) -> np.ndarray:
    return rng.uniform(1.0 - scale, 1.0 + scale, size=size)


def _organ_warp(
    rng: np.random.Generator, amplitude: tuple[float, float], wavelength: tuple[float, float]
) -> _Waves:
    return _Waves.random(rng, 3, wavelength, amplitude, channels=3)


def _sample_body(rng: np.random.Generator) -> dict:
    """Skin ellipse, fat and muscle wall, their variation along z, and the ribs."""
    u = rng.uniform
    body_a, body_b = u(150.0, 180.0), u(110.0, 135.0)
    fat, wall = u(10.0, 30.0), u(6.0, 12.0)
    body_zvar = (u(0.01, 0.04), u(250.0, 500.0), u(0.0, 2.0 * np.pi))
    body_warp = _Waves.random(rng, 4, (150.0, 400.0), (1.0, 4.0), channels=2)
    ribs = (u(-30.0, -10.0), u(26.0, 32.0), u(0.0, 30.0))
    return dict(body_a=body_a, body_b=body_b, fat=fat, wall=wall, body_zvar=body_zvar, body_warp=body_warp,
                ribs=ribs)


def _sample_spine(rng: np.random.Generator, body_b: float, fat: float) -> dict:
    """Posterior structures, front to back from the inner edge of the back's fat."""
    u = rng.uniform
    y_fat_inner = -(body_b - fat)
    canal_r = u(8.0, 10.0)
    canal_y = y_fat_inner + u(48.0, 56.0)
    vb_rx, vb_ry = u(17.0, 21.0), u(14.0, 17.0)
    vb_y = canal_y + canal_r + 3.0 + vb_ry
    spine_sway = (u(0.0, 4.0), u(300.0, 600.0), u(0.0, 2.0 * np.pi))
    levels = (u(33.0, 38.0), u(7.0, 10.0), u(0.0, 38.0))
    paraspinal = (u(32.0, 37.0), y_fat_inner + 28.0, u(21.0, 25.0), u(25.0, 29.0))
    psoas = (vb_rx + u(12.0, 16.0), vb_y - 2.0, u(14.0, 18.0), u(13.0, 17.0))
    aorta_r = u(9.0, 12.0)
    aorta = (-vb_rx * u(0.4, 0.7), vb_y + vb_ry + aorta_r + u(1.0, 4.0), aorta_r)
    return dict(y_fat_inner=y_fat_inner, canal=(canal_y, canal_r), vb=(vb_y, vb_rx, vb_ry), spine_sway=spine_sway,
                levels=levels, paraspinal=paraspinal, psoas=psoas, aorta=aorta)


def _sample_liver(rng: np.random.Generator, cav_a: float, cav_b: float) -> tuple[_Blob, _Blob]:
    """A big right lobe (RAS x > 0) against the right wall plus a left lobe crossing the
    midline anteriorly."""
    u = rng.uniform
    right_c = np.array([0.45 * cav_a + u(-10, 10), 0.05 * cav_b + u(-10, 10), u(22, 36)])
    right = _Blob(
        right_c,
        np.array([85.0, 75.0, 64.0]) * _jitter(rng),
        _rotation(u(-5, 5), u(-5, 5), u(-10, 10)),
        _organ_warp(rng, (2.0, 5.0), (90.0, 200.0)),
    )
    left = _Blob(
        np.array([right_c[0] - u(60, 75), 0.45 * cav_b + u(-5, 5), right_c[2] + u(5, 15)]),
        np.array([55.0, 26.0, 35.0]) * _jitter(rng),
        _rotation(u(-5, 5), u(-5, 5), u(-15, 15)),
        _organ_warp(rng, (2.0, 4.0), (90.0, 200.0)),
    )
    return right, left


def _sample_spleen(rng: np.random.Generator, cav_a: float, cav_b: float) -> _Blob:
    """Hugging the postero-lateral left wall (RAS x < 0)."""
    u = rng.uniform
    theta = np.deg2rad(u(-40.0, -20.0))
    wall_pt = np.array([-cav_a * np.cos(theta), cav_b * np.sin(theta)])
    normal = np.array([-np.cos(theta) / cav_a, np.sin(theta) / cav_b])
    normal /= np.linalg.norm(normal)
    s_semi = np.array([24.0, 50.0, 50.0]) * _jitter(rng)
    s_xy = wall_pt - normal * 0.85 * s_semi[0] + u(-5, 5, size=2)
    s_axes = _rotation(u(-8, 8), u(-8, 8), u(-8, 8)) @ _frame(
        np.array([normal[0], normal[1], 0.0]), np.array([0.0, 0.0, 1.0])
    )
    return _Blob(
        np.array([s_xy[0], s_xy[1], u(30.0, 45.0)]),
        s_semi,
        s_axes,
        _organ_warp(rng, (2.0, 4.0), (80.0, 180.0)),
    )


def _sample_kidney(rng: np.random.Generator, side: float, z: float, vb_y: float) -> _Blob:
    """Local axis 0 points to the hilum (antero-medial), axis 2 along the long axis (upper
    pole medial and posterior). ``side``: +1 right (RAS x > 0), -1 left."""
    u = rng.uniform
    medial = -side
    hilum_angle = np.deg2rad(u(20.0, 40.0))
    hilum = np.array([medial * np.cos(hilum_angle), np.sin(hilum_angle), 0.0])
    tilt_m, tilt_p = np.tan(np.deg2rad(u(5.0, 15.0))), np.tan(np.deg2rad(u(5.0, 15.0)))
    long_axis = np.array([medial * tilt_m, -tilt_p, 1.0])
    centre = np.array([side * u(66.0, 78.0), vb_y - u(5.0, 15.0), z])
    centre[:2] += u(-5, 5, size=2)
    return _Blob(
        centre,
        np.array([30.0, 20.0, 52.0]) * _jitter(rng),
        _frame(hilum, long_axis),
        _organ_warp(rng, (1.0, 2.5), (60.0, 120.0)),
    )


def _sample_hu(rng: np.random.Generator) -> dict[str, float]:
    """Tissue values (HU), texture and noise amplitudes, blur width (mm)."""
    u = rng.uniform
    cortex = u(165.0, 190.0)
    return {
        "fat": u(-110.0, -90.0),
        "muscle": u(40.0, 60.0),
        "visceral": u(-35.0, -15.0),
        "liver": u(98.0, 112.0),
        "spleen": u(114.0, 126.0),
        "cortex": cortex,
        "medulla": cortex - u(15.0, 30.0),
        "sinus": u(15.0, 35.0),
        "tumour": u(45.0, 62.0),
        "necrosis": u(0.0, 12.0),
        "aorta": u(155.0, 195.0),
        "cortical": u(620.0, 700.0),
        "cancellous": u(380.0, 450.0),
        "disc": u(70.0, 100.0),
        "canal": u(10.0, 30.0),
        "rib": u(450.0, 600.0),
        "tex": u(3.0, 6.0),
        "blur_mm": u(0.5, 1.0),
        "noise": u(10.0, 15.0),
    }


def _sample_anatomy(rng: np.random.Generator) -> _Anatomy:
    """Every anatomical parameter, drawn from ``rng`` in one fixed order."""
    body = _sample_body(rng)
    cav_a, cav_b = body["body_a"] - body["fat"] - body["wall"], body["body_b"] - body["fat"] - body["wall"]
    spine = _sample_spine(rng, body["body_b"], body["fat"])
    liver = _sample_liver(rng, cav_a, cav_b)
    spleen = _sample_spleen(rng, cav_a, cav_b)
    # The right kidney sits lower.
    z_left = rng.uniform(-15.0, 5.0)
    kidney_l = _sample_kidney(rng, -1.0, z_left, spine["vb"][0])
    kidney_r = _sample_kidney(rng, +1.0, z_left - rng.uniform(10.0, 25.0), spine["vb"][0])
    hu = _sample_hu(rng)
    return _Anatomy(
        **body,
        **spine,
        liver=liver,
        tumour=None,
        spleen=spleen,
        kidney_r=kidney_r,
        kidney_l=kidney_l,
        hu=hu,
        visceral_tex=_Waves.random(rng, 8, (25.0, 80.0), (0.5, 0.5)),
        organ_tex=_Waves.random(rng, 6, (15.0, 50.0), (0.58, 0.58)),
    )


def _visceral_hu(an: _Anatomy, tex: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Fat/bowel mixture (about -80..+30 HU) from a unit texture; fattier behind the
    front of the spine (retroperitoneum)."""
    retro = -35.0 / (1.0 + np.exp((np.asarray(y, np.float64) - (an.vb[0] + 5.0)) / 6.0))
    mix = np.float32(55.0) * np.tanh(np.float32(1.3) * tex)
    return np.float32(an.hu["visceral"]) + mix + retro.astype(np.float32)


def _ellipse(
    x: np.ndarray, y: np.ndarray, cx: float, cy: float, rx: float, ry: float
) -> np.ndarray:
    """Inside an axis-aligned ellipse, on the grid x (nx,) by y (ny,)."""
    return (((x - cx) / rx) ** 2)[:, None] + (((y - cy) / ry) ** 2)[None, :] < 1.0


class _Window:
    """The voxel index ranges of an axis-aligned box (body-frame mm lo..hi) on the grid."""

    def __init__(self, lo: np.ndarray, hi: np.ndarray, axes: tuple[np.ndarray, ...]) -> None:
        self.ranges = [
            _index_range(0.5 * (lo[n] + hi[n]), 0.5 * (hi[n] - lo[n]), c)
            for n, c in enumerate(axes)
        ]

    @classmethod
    def around(cls, blobs: Iterable[_Blob], axes: tuple[np.ndarray, ...]) -> _Window:
        blobs = list(blobs)
        lo = np.min([b.centre - b.half_extent() for b in blobs], axis=0)
        hi = np.max([b.centre + b.half_extent() for b in blobs], axis=0)
        return cls(lo, hi, axes)

    def covers(self, k: int) -> bool:
        r = self.ranges
        return r[0] is not None and r[1] is not None and r[2] is not None and r[2][0] <= k < r[2][1]

    def box(self) -> tuple[slice, slice]:
        (i0, i1), (j0, j1) = self.ranges[0], self.ranges[1]  # type: ignore[misc]
        return slice(i0, i1), slice(j0, j1)


def _index_range(centre: float, half: float, coords: np.ndarray) -> tuple[int, int] | None:
    idx = np.flatnonzero(np.abs(coords - centre) <= half)
    return None if idx.size == 0 else (int(idx[0]), int(idx[-1]) + 1)


def _render_slice(
    an: _Anatomy,
    xs: np.ndarray,
    ys: np.ndarray,
    z: float,
    k: int,
    windows: dict[str, _Window],
    extras: Extras | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Noise-free HU (float32) and labels (uint8) of one axial slice, shape (nx, ny)."""
    hu, muscle_out, cavity = _render_body(an, xs, ys, z)
    if extras is not None:
        render_outside(extras, xs, ys, hu, an.hu["muscle"], an.hu["fat"])
    blocked, sx0 = _render_spine(an, xs, ys, z, hu, muscle_out)
    canvas = _Canvas(xs, ys, z, k, hu, np.zeros((xs.size, ys.size), dtype=np.uint8), cavity & ~blocked)
    if extras is not None:
        render_pelvis(extras, xs, ys, z, hu, canvas.free)
    _render_organs(an, canvas, windows, sx0)
    if extras is not None:
        render_chest(extras, xs, ys, z, hu, canvas.free)
    if extras is not None and extras.vessels:
        for kind in ("portal", "hepatic"):  # veins inside the liver: liver in the labels, as in LiTS and TotalSegmentator
            m = vessel_mask(extras, kind, xs, ys, z) & (canvas.lab == _LIVER)
            hu[m] = an.hu[kind]
    return hu, canvas.lab


def _anchors(an: _Anatomy) -> dict[str, float]:
    """Where a style's chest and pelvis attach: the liver dome's z, the kidneys' lowest z, the spine's y."""
    def top(b: _Blob) -> float:
        return float(b.centre[2] + b.half_extent()[2] - b.warp.bound - 1.0)

    def bottom(b: _Blob) -> float:
        return float(b.centre[2] - b.half_extent()[2] + b.warp.bound + 1.0)

    return {"dome": max(top(b) for b in an.liver), "kidney_low": min(bottom(an.kidney_r), bottom(an.kidney_l)),
            "vb_y": float(an.vb[0])}


def _thickness_offsets(thickness: float | None) -> np.ndarray:
    """z offsets (mm) of the sub-slices averaged into one slice ``thickness`` mm thick (an odd
    number, the centre one included, at most ~1.5 mm apart); [0] for point sampling."""
    if thickness is None:
        return np.zeros(1)
    n = 2 * int(thickness / 3.0 + 0.5) + 1
    return (np.arange(n) - (n - 1) / 2.0) * (thickness / n)


@dataclass
class _Canvas:
    """An axial slice being rendered: its body-frame grid ``xs`` by ``ys`` at height ``z`` (slice
    ``k``), its HU and labels so far, and ``free``, where organs may still go."""

    xs: np.ndarray
    ys: np.ndarray
    z: float
    k: int
    hu: np.ndarray
    lab: np.ndarray
    free: np.ndarray


def _render_body(an: _Anatomy, xs: np.ndarray, ys: np.ndarray, z: float) -> tuple[np.ndarray, ...]:
    """Air, skin, subcutaneous fat, muscle wall with ribs, visceral fat and bowel: the slice's
    HU (float32) and the masks inside the muscle wall's outer edge and of the cavity."""
    h = an.hu
    hu = np.full((xs.size, ys.size), -1000.0, dtype=np.float32)

    # Body wall: skin, subcutaneous fat, muscle, cavity (nested warped ellipses).
    amp, lam, ph = an.body_zvar
    scale = 1.0 + amp * np.sin(2.0 * np.pi * z / lam + ph)
    d = an.body_warp.slab(xs, ys, z)
    xw = xs.astype(np.float32)[:, None] + d[0]
    yw = ys.astype(np.float32)[None, :] + d[1]
    x2, y2 = xw * xw, yw * yw

    def inside(a: float, b: float) -> np.ndarray:
        return x2 * np.float32(1.0 / a**2) + y2 * np.float32(1.0 / b**2) < 1.0

    a, b = an.body_a * scale, an.body_b * scale
    body = inside(a, b)
    muscle_out = inside(a - an.fat, b - an.fat)
    cavity = inside(a - an.fat - an.wall, b - an.fat - an.wall)
    hu[body] = h["fat"]
    hu[muscle_out] = h["muscle"]

    # Ribs: oblique bands through the muscle wall, above the costal margin.
    z_low, pitch, rib_phase = an.ribs
    if z > z_low:
        ring = np.nonzero(muscle_out & ~cavity)
        theta = np.arctan2(yw[ring] / np.float32(b), xw[ring] / np.float32(a))
        deg = np.rad2deg(theta)
        keep = (np.abs(deg - 90.0) > 40.0) & (np.abs(deg + 90.0) > 25.0)
        band = np.mod(z + rib_phase + 55.0 * np.abs(theta), pitch) < 9.0
        sel = keep & band
        hu[ring[0][sel], ring[1][sel]] = h["rib"]

    # Visceral fat and bowel.
    visceral = _visceral_hu(an, an.visceral_tex.slab(xs, ys, z)[0], ys[None, :])
    np.copyto(hu, visceral, where=cavity)
    return hu, muscle_out, cavity


def _render_spine(
    an: _Anatomy, xs: np.ndarray, ys: np.ndarray, z: float, hu: np.ndarray, muscle_out: np.ndarray
) -> tuple[np.ndarray, float]:
    """Spine, paraspinal and psoas muscles, aorta (into ``hu``): unlabelled context that organs
    avoid. Returns where they are and the spine's sideways sway (mm) at ``z``."""
    h = an.hu
    s_amp, s_lam, s_ph = an.spine_sway
    sx0 = s_amp * np.sin(2.0 * np.pi * z / s_lam + s_ph)
    px, py, prx, pry = an.paraspinal
    blocked = np.zeros((xs.size, ys.size), dtype=bool)
    for side in (-1.0, 1.0):
        para = _ellipse(xs, ys, sx0 + side * px, py, prx, pry) & muscle_out
        hu[para] = h["muscle"]
        blocked |= para
    psoas_scale = float(np.clip((60.0 - z) / 140.0, 0.0, 1.0))
    if psoas_scale > 0.05:
        qx, qy, qrx, qry = an.psoas
        for side in (-1.0, 1.0):
            ps = _ellipse(xs, ys, sx0 + side * qx, qy, qrx * psoas_scale, qry * psoas_scale)
            hu[ps] = h["muscle"]
            blocked |= ps
    vb_y, vb_rx, vb_ry = an.vb
    level_pitch, disc_h, level_ph = an.levels
    t = (z - level_ph) % level_pitch
    vb = _ellipse(xs, ys, sx0, vb_y, vb_rx, vb_ry)
    if t < disc_h:
        hu[vb] = h["disc"]
    else:
        hu[vb] = h["cortical"]
        hu[_ellipse(xs, ys, sx0, vb_y, vb_rx - 3.0, vb_ry - 3.0)] = h["cancellous"]
    blocked |= vb
    canal_y, canal_r = an.canal
    canal = _ellipse(xs, ys, sx0, canal_y, canal_r, canal_r)
    arch = _ellipse(xs, ys, sx0, canal_y, canal_r + 6.0, canal_r + 6.0)
    if disc_h + 3.0 < t < level_pitch - 3.0:
        dx = np.abs(xs - sx0)[:, None]
        spinous = (dx < 3.5) & ((ys > an.y_fat_inner + 6.0) & (ys < canal_y))[None, :]
        arch |= spinous
        if abs(t - 0.5 * (disc_h + level_pitch)) < 5.0:
            arch |= (dx < vb_rx + 22.0) & (np.abs(ys - canal_y - 2.0) < 4.0)[None, :]
        hu[arch] = h["cortical"]
        blocked |= arch
    hu[canal] = h["canal"]
    blocked |= canal | arch
    ax, ay, ar = an.aorta
    aorta = _ellipse(xs, ys, sx0 + ax, ay, ar, ar)
    hu[aorta] = h["aorta"]
    blocked |= aorta
    return blocked, sx0


def _render_organs(an: _Anatomy, canvas: _Canvas, windows: dict[str, _Window], sx0: float) -> None:
    """Organs onto ``canvas``, highest priority first, each only where it is ``free`` (and
    nothing is yet). The liver and spleen stay out of the retroperitoneum in front of the spine."""
    h = an.hu
    xs, ys, z, k, hu, lab, free = canvas.xs, canvas.ys, canvas.z, canvas.k, canvas.hu, canvas.lab, canvas.free
    vb_y, vb_rx, _ = an.vb
    _, ay, ar = an.aorta
    prevertebral = _ellipse(xs, ys, sx0, vb_y, vb_rx + 22.0, ay + ar + 4.0 - vb_y)
    organ_tex = an.organ_tex.slab(xs, ys, z)[0] * np.float32(h["tex"])
    _render_kidneys(an, canvas, windows, organ_tex)

    free &= ~prevertebral
    win = windows["spleen"]
    if win.covers(k):
        bx, by = win.box()
        u0, u1, u2 = an.spleen.local(xs[bx], ys[by], z)
        m = (u0 * u0 + u1 * u1 + u2 * u2 < 1.0) & free[bx, by]
        hu[bx, by][m] = h["spleen"] + organ_tex[bx, by][m]
        lab[bx, by][m] = _SPLEEN
        free[bx, by][m] = False

    win = windows["liver"]
    if win.covers(k):
        bx, by = win.box()
        right, left = an.liver
        u0, u1, u2 = right.local(xs[bx], ys[by], z)
        m = u0 * u0 + u1 * u1 + u2 * u2 < 1.0
        v0, v1, v2 = left.local(xs[bx], ys[by], z)
        m |= v0 * v0 + v1 * v1 + v2 * v2 < 1.0
        m &= free[bx, by]
        hu[bx, by][m] = h["liver"] + organ_tex[bx, by][m]
        lab[bx, by][m] = _LIVER

    win = windows.get("tumour")
    if an.tumour is not None and win is not None and win.covers(k):
        bx, by = win.box()
        u0, u1, u2 = an.tumour.local(xs[bx], ys[by], z)
        f = u0 * u0 + u1 * u1 + u2 * u2
        m = (f < 1.0) & (lab[bx, by] == _LIVER)
        core = np.float32(h["necrosis"]) * (1.0 - f[m])  # a slightly darker centre
        hu[bx, by][m] = h["tumour"] - core + organ_tex[bx, by][m]
        lab[bx, by][m] = _TUMOUR


def _render_kidneys(an: _Anatomy, canvas: _Canvas, windows: dict[str, _Window], organ_tex: np.ndarray) -> None:
    """Both kidneys (cortex brighter than medulla, a renal sinus at the hilum); marks them not ``free``."""
    h = an.hu
    xs, ys, z, k, hu, lab, free = canvas.xs, canvas.ys, canvas.z, canvas.k, canvas.hu, canvas.lab, canvas.free
    for name, value in (("kidney_r", _KID_R), ("kidney_l", _KID_L)):
        win = windows[name]
        if not win.covers(k):
            continue
        bx, by = win.box()
        blob: _Blob = getattr(an, name)
        u0, u1, u2 = blob.local(xs[bx], ys[by], z)
        f = u0 * u0 + u1 * u1 + u2 * u2
        m = (f < 1.0) & free[bx, by]
        sinus = m & (((u0 - 1.0) / 0.65) ** 2 + (u1 / 0.45) ** 2 + (u2 / 0.4) ** 2 < 1.0)
        kid = m & ~sinus
        w = np.clip((f - 0.3) / 0.35, 0.0, 1.0)
        kid_hu = h["medulla"] + (h["cortex"] - h["medulla"]) * w + organ_tex[bx, by]
        hu_b, lab_b, free_b = hu[bx, by], lab[bx, by], free[bx, by]
        hu_b[kid] = kid_hu[kid]
        hu_b[sinus] = h["sinus"] + organ_tex[bx, by][sinus]
        lab_b[kid] = value
        free_b[m] = False


# ------------------------------------------------------------------------- geometry


def _check_triple(name: str, value: object, kind: type) -> tuple:
    try:
        items = tuple(value)  # type: ignore[call-overload]
    except TypeError:
        raise ValueError(f"{name} must be a sequence of three numbers, got {value!r}") from None
    if len(items) != 3:
        raise ValueError(f"{name} must have three entries, got {value!r}")
    out = tuple(kind(v) for v in items)
    if not all(np.isfinite(v) and v > 0 for v in out) or (kind is int and out != items):
        raise ValueError(f"{name} must hold three positive {kind.__name__}s, got {value!r}")
    return out


def _grid(
    rng: np.random.Generator,
    shape: tuple[int, int, int] | None,
    spacing: tuple[float, float, float] | None,
    fov: float = _FOV_INPLANE_MM,
    extend: tuple[float, float] = (0.0, 0.0),
    inplane_mm: float | None = None,
) -> tuple[tuple[int, int, int], tuple[float, float, float], np.ndarray, np.ndarray]:
    """Shape, spacing, RAS origin of voxel (0,0,0) and RAS position of the anatomy."""
    # Always draw everything, in one order, so the world placement does not depend on
    # which of shape/spacing the caller fixed.
    inplane = round(float(rng.uniform(1.2, 1.8)), 3)
    thick = round(float(rng.uniform(2.5, 5.0)), 2)
    fov_z = float(rng.uniform(200.0, 240.0))
    centre = rng.uniform([-30.0, -30.0, -30.0], [30.0, 30.0, 30.0])
    jitter = rng.uniform([-5.0, -8.0, -8.0], [5.0, 8.0, 8.0])

    def inplane_size(s: float) -> int:
        return max(2, 2 * int(round(fov / s / 2.0)))

    if spacing is None and shape is None:
        inplane = inplane_mm if inplane_mm is not None else inplane
        spacing = (inplane, inplane, thick)
    if shape is None:
        assert spacing is not None
        fov_z += extend[0] + extend[1]  # a longer field of view: more slices, the anatomy where it was
        centre[2] += 0.5 * (extend[1] - extend[0])
        jitter[2] -= 0.5 * (extend[1] - extend[0])
        nz = max(1, int(round(fov_z / spacing[2])))
        shape = (inplane_size(spacing[0]), inplane_size(spacing[1]), nz)
    if spacing is None:
        spacing = (
            round(fov / shape[0], 6),
            round(fov / shape[1], 6),
            round(_FOV_Z_MM / shape[2], 6),
        )
    sx, sy, sz = spacing
    nx, ny, nz = shape
    origin = np.round(
        [
            centre[0] + 0.5 * (nx - 1) * sx,
            centre[1] + 0.5 * (ny - 1) * sy,
            centre[2] - 0.5 * (nz - 1) * sz,
        ],
        3,
    )
    # The anatomy sits a little below the middle of the volume (the liver dome is high).
    anatomy = centre + jitter + np.array([0.0, 0.0, -5.0])
    return shape, spacing, origin, anatomy


def make_phantom(
    seed: int,
    shape: tuple[int, int, int] | None = None,
    spacing: tuple[float, float, float] | None = None,
    style: Style | None = None,
) -> Phantom:
    """Render the phantom for ``seed``.

    ``style`` (:class:`~medseg.phantom_domain.Style`) sets the contrast phase, noise level, slice
    thickness, in-plane spacing, arms, table, liver veins and field of view along z; the default is
    the portal-venous phantom. A style never moves the seed's anatomy in world mm; it changes a
    seeded grid only by its in-plane spacing, a 500 mm field of view for arms beside the body, and
    the slices a chest or pelvis adds.

    With neither ``shape`` nor ``spacing`` the grid is seeded: in-plane spacing in
    [1.2, 1.8] mm, slice spacing in [2.5, 5.0] mm, field of view ~380 mm in-plane and
    200-240 mm along z. Given only ``spacing``, the shape covers that field of view;
    given only ``shape``, the spacing makes it 380 x 380 x 220 mm. The anatomy (in world
    mm) is the same for a seed whatever the grid.
    """
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    seed = int(seed)
    if shape is not None:
        shape = _check_triple("shape", shape, int)  # type: ignore[assignment]
    if spacing is not None:
        spacing = _check_triple("spacing", spacing, float)  # type: ignore[assignment]
    style = style if style is not None else Style()
    geo_ss, anat_ss, noise_ss = np.random.SeedSequence(seed).spawn(3)
    fov = 500.0 if style.arms == "beside" else _FOV_INPLANE_MM
    shape, spacing, origin, anatomy_pos = _grid(np.random.default_rng(geo_ss), shape, spacing, fov, FIELDS[style.field], style.inplane_mm)
    anat_rng = np.random.default_rng(anat_ss)
    an = _place_tumour(_sample_anatomy(anat_rng), anat_rng)
    extras = None
    if style != Style():
        extras = style_extras(style, an.hu, (an.body_a, an.body_b), an.liver, seed, _anchors(an))
        an = replace(an, hu=extras.hu)
    noise_rng = np.random.default_rng(noise_ss)

    nx, ny, nz = shape
    sx, sy, sz = spacing
    affine = np.array(
        [
            [-sx, 0.0, 0.0, origin[0]],
            [0.0, -sy, 0.0, origin[1]],
            [0.0, 0.0, sz, origin[2]],
            [0.0, 0.0, 0.0, 1.0],
        ]
    )
    # Body-frame coordinates (RAS mm relative to the anatomy) of the voxel centres.
    xs = origin[0] - sx * np.arange(nx) - anatomy_pos[0]
    ys = origin[1] - sy * np.arange(ny) - anatomy_pos[1]
    zs = origin[2] + sz * np.arange(nz) - anatomy_pos[2]

    axes = (xs, ys, zs)
    windows = _windows(an, axes)

    # Pass 1: noise-free HU and labels, one axial slice at a time.
    image = np.empty(shape, dtype=np.int16, order="F")
    labels = np.empty(shape, dtype=np.uint8, order="F")
    offsets = _thickness_offsets(style.thickness_mm)
    for k in range(nz):
        hu, lab = _render_slice(an, xs, ys, float(zs[k]), k, windows, extras)
        if offsets.size > 1:  # partial volume: the image averages the slab, the labels are its centre
            hu = sum(_render_slice(an, xs, ys, float(zs[k] + o), k, windows, extras)[0] for o in offsets if o != 0.0) + hu
            hu /= np.float32(offsets.size)
        image[:, :, k] = np.clip(np.rint(hu), HU_MIN, HU_MAX)
        labels[:, :, k] = lab

    _drop_islands(an, labels, image, axes, windows)
    _enclose_tumour(an, labels, image, windows)

    _scanner_blur_and_noise(an, image, (sx, sy), noise_rng)
    return Phantom(image=image, labels=labels, affine=affine, seed=seed)


def _scanner_blur_and_noise(
    an: _Anatomy, image: np.ndarray, spacing: tuple[float, float], rng: np.random.Generator
) -> None:
    """Pass 2, in place: the scanner's point-spread (in-plane blur) and noise, slice by slice."""
    nx, ny, nz = image.shape
    blur = (an.hu["blur_mm"] / spacing[0], an.hu["blur_mm"] / spacing[1])
    noise_sd = np.float32(an.hu["noise"])
    for k in range(nz):
        sl = image[:, :, k].astype(np.float32)
        sl = ndimage.gaussian_filter(sl, blur, mode="nearest", truncate=3.0)
        sl += rng.standard_normal((nx, ny), dtype=np.float32) * noise_sd
        image[:, :, k] = np.clip(np.rint(sl), HU_MIN, HU_MAX)


def _windows(an: _Anatomy, axes: tuple[np.ndarray, ...]) -> dict[str, _Window]:
    windows = {
        "kidney_r": _Window.around([an.kidney_r], axes),
        "kidney_l": _Window.around([an.kidney_l], axes),
        "spleen": _Window.around([an.spleen], axes),
        "liver": _Window.around(an.liver, axes),
    }
    if an.tumour is not None:
        windows["tumour"] = _Window.around([an.tumour], axes)
    return windows


def _place_tumour(an: _Anatomy, rng: np.random.Generator) -> _Anatomy:
    """Add a 15-40 mm tumour whose centre is drawn among points deep inside the liver.

    The liver is rendered on a 3 mm grid fixed in the body frame, so the choice does not
    depend on the phantom's voxel grid.
    """
    semi = rng.uniform(9.0, 17.5) * rng.uniform(0.85, 1.15, size=3)
    axes = _rotation(*rng.uniform(-180.0, 180.0, size=3))
    warp = _Waves.random(rng, 3, (20.0, 50.0), (0.5, 1.5), channels=3)
    pick = rng.random()

    step = 3.0
    lo = np.min([b.centre - b.half_extent() for b in an.liver], axis=0)
    hi = np.max([b.centre + b.half_extent() for b in an.liver], axis=0)
    grid = tuple(np.arange(np.floor(lo[n] / step) * step, hi[n] + step, step) for n in range(3))
    windows = _windows(an, grid)
    liver = np.zeros([g.size for g in grid], dtype=bool)
    for k, z in enumerate(grid[2]):
        liver[:, :, k] = _render_slice(an, grid[0], grid[1], float(z), k, windows)[1] == _LIVER
    depth = ndimage.distance_transform_edt(np.pad(liver, 1), sampling=step)[1:-1, 1:-1, 1:-1]
    need = semi.max() + warp.bound + step + 2.0
    candidates = np.flatnonzero(depth >= need)
    if candidates.size == 0:  # a very small liver: shrink the tumour to fit
        best = float(depth.max())
        candidates = np.flatnonzero(depth == best)
        semi *= max(best - warp.bound - step - 2.0, 5.0) / semi.max()
    i, j, k = np.unravel_index(candidates[int(pick * candidates.size)], liver.shape)
    centre = np.array([grid[0][i], grid[1][j], grid[2][k]])
    return replace(an, tumour=_Blob(centre, semi, axes, warp))


def _drop_islands(
    an: _Anatomy,
    labels: np.ndarray,
    image: np.ndarray,
    axes: tuple[np.ndarray, ...],
    windows: dict[str, _Window],
) -> None:
    """Keep each organ's largest 6-connected component; the rest becomes fat/bowel."""
    groups = (
        ("liver", (_LIVER, _TUMOUR)),
        ("spleen", (_SPLEEN,)),
        ("kidney_r", (_KID_R,)),
        ("kidney_l", (_KID_L,)),
    )
    for name, values in groups:
        ranges = windows[name].ranges
        if any(r is None for r in ranges):
            continue
        box = tuple(slice(r[0], r[1]) for r in ranges)  # type: ignore[index]
        region = labels[box]
        comp, n = ndimage.label(np.isin(region, values))
        if n < 2:
            continue
        sizes = np.bincount(comp.ravel())
        sizes[0] = 0
        drop = (comp != 0) & (comp != sizes.argmax())
        idx = np.nonzero(drop)
        pts = np.stack([axes[d][idx[d] + box[d].start] for d in range(3)], axis=1)
        hu = _visceral_hu(an, an.visceral_tex.at(pts)[:, 0].astype(np.float32), pts[:, 1])
        region[drop] = 0
        image[box][drop] = np.clip(np.rint(hu), HU_MIN, HU_MAX)


def _enclose_tumour(
    an: _Anatomy, labels: np.ndarray, image: np.ndarray, windows: dict[str, _Window]
) -> None:
    """Relabel as liver any tumour voxel without liver/tumour all around (26 neighbours)."""
    win = windows.get("tumour")
    if win is None or any(r is None for r in win.ranges):
        return
    box = tuple(slice(max(r[0] - 1, 0), r[1] + 1) for r in win.ranges)  # type: ignore[index]
    region = labels[box]
    liverish = (region == _LIVER) | (region == _TUMOUR)
    core = ndimage.binary_erosion(liverish, structure=np.ones((3, 3, 3), bool), border_value=0)
    loose = (region == _TUMOUR) & ~core
    if loose.any():
        region[loose] = _LIVER
        image[box][loose] = int(round(an.hu["liver"]))


# ------------------------------------------------------------------------------ I/O


def write_nifti(phantom: Phantom, image_path: PathLike, label_path: PathLike | None = None) -> None:
    """Write the image (int16 HU) and optionally the labels (uint8) as NIfTI-1, atomically.

    Written by :func:`medseg.io.save_image` and :func:`medseg.io.save_mask`: both files get
    sform and qform (code 1, scanner) equal to ``phantom.affine``, units mm.
    """
    from .io import save_image, save_mask

    scan = phantom.as_scan()
    save_image(scan, image_path)
    if label_path is not None:
        save_mask(phantom.labels, scan, label_path)


def write_dicom_series(
    phantom: Phantom,
    folder: PathLike,
    *,
    series_description: str = "medseg phantom CT",
    patient_id: str = "PHANTOM",
    series_uid: str | None = None,
) -> list[Path]:
    """Write one CT Image Storage file per axial slice; return the paths in slice order.

    :func:`medseg.dicom_export.write_dicom_series` with the phantom's tags: stored values are
    HU + 1024 (unsigned, 12 bits stored; RescaleIntercept -1024). UIDs are derived from the
    seed and grid, so rewriting a phantom gives the same UIDs. Files are named by
    SOPInstanceUID, so their names do not sort in slice order.
    """
    from .dicom_export import write_dicom_series as write_series

    tags = {
        "ImageType": ["ORIGINAL", "PRIMARY", "AXIAL"],
        "Manufacturer": "medseg phantom",
        "StudyDescription": "medseg synthetic abdomen",
        "PatientName": f"Phantom^Seed{phantom.seed}",
        "BodyPartExamined": "ABDOMEN",
        "KVP": "120",
    }
    return write_series(
        phantom.as_scan(),
        folder,
        series_description=series_description,
        patient_id=patient_id,
        series_uid=series_uid,
        uid_key=str(phantom.seed),
        tags=tags,
        when=datetime(2024, 1, 1, 12, 0, 0),
    )


def make_dataset(
    out_dir: PathLike,
    seeds: Iterable[int],
    *,
    shape: tuple[int, int, int] | None = None,
    spacing: tuple[float, float, float] | None = None,
    overwrite: bool = False,
    varied: bool = False,
    phase: str | None = None,
) -> Path:
    """Write phantoms for ``seeds`` as an nnU-Net v2 style raw dataset; return ``out_dir``.

    ``varied``: each seed gets its own :func:`~medseg.phantom_domain.seeded_style` (phase, noise,
    slice thickness, arms, table, liver veins); ``phase`` fixes the contrast phase (of every
    style). dataset.json records each case's style under ``phantom_styles``.

    Layout: imagesTr/phantom_{seed:04d}_0000.nii.gz, labelsTr/phantom_{seed:04d}.nii.gz
    and dataset.json. A folder that already holds a dataset (a dataset.json, or files in
    imagesTr/ or labelsTr/) is refused unless ``overwrite``; then the phantoms' files and
    dataset.json are written over (other files are left as they are). ``seeds`` must be a
    non-empty list of distinct non-negative integers.
    """
    from .data import write_dataset_json

    seeds = _check_seeds(seeds)
    styles = {seed: _dataset_style(seed, varied, phase) for seed in seeds}
    out = Path(out_dir)
    _prepare_dataset_folder(out, overwrite)
    for seed in seeds:
        ph = make_phantom(seed, shape=shape, spacing=spacing, style=styles[seed])
        write_nifti(
            ph,
            out / "imagesTr" / f"phantom_{seed:04d}_0000.nii.gz",
            out / "labelsTr" / f"phantom_{seed:04d}.nii.gz",
        )
    phases = ", ".join(p for p in PHASES if p in {st.phase for st in styles.values()})
    meta = {
        "name": "MedsegPhantom",
        "description": f"Synthetic {phases} abdominal CT phantoms from medseg.phantom.make_phantom; "
        "each case is named after its seed.",
        "body_region": "abdomen",
        "phase": phases,
        "phantom_styles": {f"phantom_{seed:04d}": styles[seed].as_dict() for seed in seeds},
        "channel_names": {"0": "CT"},
        "labels": dict(LABELS),
        "numTraining": len(seeds),
        "file_ending": ".nii.gz",
    }
    write_dataset_json(out, meta)
    return out


def _dataset_style(seed: int, varied: bool, phase: str | None) -> Style:
    """The style of a dataset's case (a one-line error for an unknown phase)."""
    from .errors import MedsegError
    from .phantom_domain import seeded_style

    style = seeded_style(seed) if varied else Style()
    try:
        return replace(style, phase=phase) if phase is not None else style
    except ValueError as exc:
        raise MedsegError(f"--phase: {exc}") from None


def _check_seeds(seeds: Iterable[int]) -> list[int]:
    """``seeds`` as a non-empty list of distinct non-negative integers; a one-line error otherwise."""
    from .errors import MedsegError

    try:
        raw = list(seeds)
    except TypeError:
        raise MedsegError(f"seeds {seeds!r}: expected a list of non-negative integers") from None
    bad = [s for s in raw if isinstance(s, bool) or not isinstance(s, (int, np.integer))]
    if bad:
        raise MedsegError(f"seeds: {bad[0]!r} is not an integer (expected non-negative integers such as 100-123)")
    out = [int(s) for s in raw]
    if not out:
        raise MedsegError("seeds: no seeds given (expected at least one, e.g. 100-123)")
    negative = [s for s in out if s < 0]
    if negative:
        raise MedsegError(f"seeds: {negative[0]} is negative; seeds must be 0 or more")
    dups = sorted(s for s, n in collections.Counter(out).items() if n > 1)
    if dups:
        raise MedsegError(f"seeds: seed {dups[0]} is given twice (each seed is one case: none may come more than once)")
    return out


def _prepare_dataset_folder(out: Path, overwrite: bool) -> None:
    """Create ``out/imagesTr`` and ``out/labelsTr``; refuse a file, an unwritable folder, or (unless
    ``overwrite``) a folder that already holds a dataset."""
    from .errors import MedsegError
    from .safety import ensure_writable

    if out.exists() and not out.is_dir():
        raise MedsegError(f"{out}: is a file, expected a dataset folder")
    if not overwrite:
        held = [p for p in (out / "dataset.json",) if p.exists()]
        held += [d for d in (out / "imagesTr", out / "labelsTr") if d.is_dir() and any(d.iterdir())]
        if held:
            raise MedsegError(f"{out}: already holds a dataset ({held[0].name}); choose an empty folder, "
                              f"or overwrite it (--overwrite)")
    ensure_writable(out, folder=True)
    for sub in ("imagesTr", "labelsTr"):
        if (out / sub).exists() and not (out / sub).is_dir():
            raise MedsegError(f"{out / sub}: is a file, expected a folder")
    (out / "imagesTr").mkdir(parents=True, exist_ok=True)
    (out / "labelsTr").mkdir(parents=True, exist_ok=True)
