"""Rendering a phantom's anatomy (:mod:`medseg.phantom_anatomy`) onto a voxel grid, one axial
slice at a time: body wall, spine, organs and a style's extras (:mod:`medseg.phantom_domain`),
then the clean-up of labels (islands, a tumour at the liver's edge) and the scanner's blur and
noise. :func:`medseg.phantom.make_phantom` drives it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace

import numpy as np
from scipy import ndimage

from .phantom_anatomy import (
    HU_MAX,
    HU_MIN,
    KID_L,
    KID_R,
    LIVER,
    SPLEEN,
    TUMOUR,
    Anatomy,
    Blob,
    Waves,
    rotation,
)
from .phantom_domain import (
    Extras,
    render_bowel_gas,
    render_chest,
    render_outside,
    render_pelvis,
    render_perirenal,
    vessel_mask,
)


def _visceral_hu(an: Anatomy, tex: np.ndarray, y: np.ndarray) -> np.ndarray:
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


class Window:
    """The voxel index ranges of an axis-aligned box (body-frame mm lo..hi) on the grid."""

    def __init__(self, lo: np.ndarray, hi: np.ndarray, axes: tuple[np.ndarray, ...]) -> None:
        self.ranges = [
            _index_range(0.5 * (lo[n] + hi[n]), 0.5 * (hi[n] - lo[n]), c)
            for n, c in enumerate(axes)
        ]

    @classmethod
    def around(cls, blobs: Iterable[Blob], axes: tuple[np.ndarray, ...]) -> Window:
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


def render_slice(
    an: Anatomy,
    xs: np.ndarray,
    ys: np.ndarray,
    z: float,
    k: int,
    windows: dict[str, Window],
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
        loose = canvas.free & (canvas.lab == 0)  # the fat and bowel between the organs
        render_bowel_gas(extras, xs, ys, z, hu, loose)
        render_perirenal(extras, (an.kidney_r, an.kidney_l), xs, ys, z, hu, loose)
        render_chest(extras, xs, ys, z, hu, canvas.free)
    if extras is not None and extras.vessels:
        for kind in ("portal", "hepatic"):  # veins inside the liver: liver in the labels, as in LiTS and TotalSegmentator
            m = vessel_mask(extras, kind, xs, ys, z) & (canvas.lab == LIVER)
            hu[m] = an.hu[kind]
    return hu, canvas.lab


def anchors(an: Anatomy) -> dict[str, float]:
    """Where a style's chest and pelvis attach: the liver dome's z, the kidneys' lowest z, the spine's y."""
    def top(b: Blob) -> float:
        return float(b.centre[2] + b.half_extent()[2] - b.warp.bound - 1.0)

    def bottom(b: Blob) -> float:
        return float(b.centre[2] - b.half_extent()[2] + b.warp.bound + 1.0)

    return {"dome": max(top(b) for b in an.liver), "kidney_low": min(bottom(an.kidney_r), bottom(an.kidney_l)),
            "vb_y": float(an.vb[0])}


def thickness_offsets(thickness: float | None) -> np.ndarray:
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


def _render_body(an: Anatomy, xs: np.ndarray, ys: np.ndarray, z: float) -> tuple[np.ndarray, ...]:
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
    an: Anatomy, xs: np.ndarray, ys: np.ndarray, z: float, hu: np.ndarray, muscle_out: np.ndarray
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


def _render_organs(an: Anatomy, canvas: _Canvas, windows: dict[str, Window], sx0: float) -> None:
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
        lab[bx, by][m] = SPLEEN
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
        lab[bx, by][m] = LIVER
        free[bx, by][m] = False  # the lung bases and heart (a style's chest) go around the liver's dome

    win = windows.get("tumour")
    if an.tumour is not None and win is not None and win.covers(k):
        bx, by = win.box()
        u0, u1, u2 = an.tumour.local(xs[bx], ys[by], z)
        f = u0 * u0 + u1 * u1 + u2 * u2
        m = (f < 1.0) & (lab[bx, by] == LIVER)
        core = np.float32(h["necrosis"]) * (1.0 - f[m])  # a slightly darker centre
        hu[bx, by][m] = h["tumour"] - core + organ_tex[bx, by][m]
        lab[bx, by][m] = TUMOUR


def _render_kidneys(an: Anatomy, canvas: _Canvas, windows: dict[str, Window], organ_tex: np.ndarray) -> None:
    """Both kidneys (cortex brighter than medulla, a renal sinus at the hilum); marks them not ``free``."""
    h = an.hu
    xs, ys, z, k, hu, lab, free = canvas.xs, canvas.ys, canvas.z, canvas.k, canvas.hu, canvas.lab, canvas.free
    for name, value in (("kidney_r", KID_R), ("kidney_l", KID_L)):
        win = windows[name]
        if not win.covers(k):
            continue
        bx, by = win.box()
        blob: Blob = getattr(an, name)
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


def scanner_blur_and_noise(
    an: Anatomy, image: np.ndarray, spacing: tuple[float, float], rng: np.random.Generator
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


def organ_windows(an: Anatomy, axes: tuple[np.ndarray, ...]) -> dict[str, Window]:
    windows = {
        "kidney_r": Window.around([an.kidney_r], axes),
        "kidney_l": Window.around([an.kidney_l], axes),
        "spleen": Window.around([an.spleen], axes),
        "liver": Window.around(an.liver, axes),
    }
    if an.tumour is not None:
        windows["tumour"] = Window.around([an.tumour], axes)
    return windows


def place_tumour(an: Anatomy, rng: np.random.Generator) -> Anatomy:
    """Add a 15-40 mm tumour whose centre is drawn among points deep inside the liver.

    The liver is rendered on a 3 mm grid fixed in the body frame, so the choice does not
    depend on the phantom's voxel grid.
    """
    semi = rng.uniform(9.0, 17.5) * rng.uniform(0.85, 1.15, size=3)
    axes = rotation(*rng.uniform(-180.0, 180.0, size=3))
    warp = Waves.random(rng, 3, (20.0, 50.0), (0.5, 1.5), channels=3)
    pick = rng.random()

    step = 3.0
    lo = np.min([b.centre - b.half_extent() for b in an.liver], axis=0)
    hi = np.max([b.centre + b.half_extent() for b in an.liver], axis=0)
    grid = tuple(np.arange(np.floor(lo[n] / step) * step, hi[n] + step, step) for n in range(3))
    windows = organ_windows(an, grid)
    liver = np.zeros([g.size for g in grid], dtype=bool)
    for k, z in enumerate(grid[2]):
        liver[:, :, k] = render_slice(an, grid[0], grid[1], float(z), k, windows)[1] == LIVER
    depth = ndimage.distance_transform_edt(np.pad(liver, 1), sampling=step)[1:-1, 1:-1, 1:-1]
    need = semi.max() + warp.bound + step + 2.0
    candidates = np.flatnonzero(depth >= need)
    if candidates.size == 0:  # a very small liver: shrink the tumour to fit
        best = float(depth.max())
        candidates = np.flatnonzero(depth == best)
        semi *= max(best - warp.bound - step - 2.0, 5.0) / semi.max()
    i, j, k = np.unravel_index(candidates[int(pick * candidates.size)], liver.shape)
    centre = np.array([grid[0][i], grid[1][j], grid[2][k]])
    return replace(an, tumour=Blob(centre, semi, axes, warp))


def drop_islands(
    an: Anatomy,
    labels: np.ndarray,
    image: np.ndarray,
    axes: tuple[np.ndarray, ...],
    windows: dict[str, Window],
) -> None:
    """Keep each organ's largest 6-connected component; the rest becomes fat/bowel."""
    groups = (
        ("liver", (LIVER, TUMOUR)),
        ("spleen", (SPLEEN,)),
        ("kidney_r", (KID_R,)),
        ("kidney_l", (KID_L,)),
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


def enclose_tumour(
    an: Anatomy, labels: np.ndarray, image: np.ndarray, windows: dict[str, Window]
) -> None:
    """Relabel as liver any tumour voxel without liver/tumour all around (26 neighbours)."""
    win = windows.get("tumour")
    if win is None or any(r is None for r in win.ranges):
        return
    box = tuple(slice(max(r[0] - 1, 0), r[1] + 1) for r in win.ranges)  # type: ignore[index]
    region = labels[box]
    liverish = (region == LIVER) | (region == TUMOUR)
    core = ndimage.binary_erosion(liverish, structure=np.ones((3, 3, 3), bool), border_value=0)
    loose = (region == TUMOUR) & ~core
    if loose.any():
        region[loose] = LIVER
        image[box][loose] = int(round(an.hu["liver"]))
