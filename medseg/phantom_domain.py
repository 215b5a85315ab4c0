"""The clinical domain a phantom is drawn from: contrast phase, noise, slice thickness, arms,
table and the veins inside the liver (the knobs of :func:`medseg.phantom.make_phantom`).

A :class:`Style` names the knobs; the default style is the portal-venous phantom medseg has
always made (same seed, same voxels). :func:`seeded_style` draws a varied style per seed for
training sets, and :func:`style_extras` turns a style into the values a phantom is rendered with.

Attenuation (HU, adult abdomen, 120 kVp) per phase, from published multiphase CT tables:
unenhanced liver 50-65 HU and about 8-10 HU above the spleen, blood 35-50 HU; late arterial
aorta 250-400 HU with a bright renal cortex over a dark medulla (corticomedullary phase) and a
spleen not yet uniform; portal-venous (~70 s) liver 100-120 HU with portal and hepatic veins
brighter than it; delayed (3-5 min) liver and spleen 80-95 HU, a uniform (nephrographic) kidney,
and contrast reaching the renal pelvis in some patients.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

PHASES = ("non-contrast", "arterial", "portal-venous", "delayed")
NOISE_LEVELS: dict[str, tuple[float, float]] = {"low": (5.0, 10.0), "standard": (10.0, 15.0), "high": (18.0, 30.0)}
ARMS = ("raised", "beside")
# Fields of view along z, and how far each extends the abdomen's (mm below, mm above).
FIELDS = {"abdomen": (0.0, 0.0), "chest-abdomen": (0.0, 110.0), "abdomen-pelvis": (190.0, 0.0)}

# Ranges (HU) drawn per case; "medulla_drop" is how far the medulla sits below the cortex.
_PHASE_HU: dict[str, dict[str, tuple[float, float]]] = {
    "non-contrast": {"liver": (50.0, 65.0), "spleen": (40.0, 52.0), "cortex": (28.0, 38.0), "medulla_drop": (0.0, 4.0),
                     "aorta": (35.0, 50.0), "portal": (35.0, 46.0), "hepatic": (35.0, 46.0),
                     "sinus": (5.0, 25.0)},
    "arterial": {"liver": (62.0, 85.0), "spleen": (95.0, 140.0), "cortex": (170.0, 230.0), "medulla_drop": (70.0, 120.0),
                 "aorta": (250.0, 400.0), "portal": (100.0, 160.0), "hepatic": (45.0, 75.0),
                 "sinus": (10.0, 30.0)},
    "portal-venous": {"portal": (150.0, 190.0), "hepatic": (130.0, 170.0)},  # organs: medseg.phantom_anatomy's own draw
    "delayed": {"liver": (78.0, 95.0), "spleen": (78.0, 95.0), "cortex": (130.0, 165.0), "medulla_drop": (-10.0, 10.0),
                "aorta": (100.0, 140.0), "portal": (95.0, 130.0), "hepatic": (95.0, 130.0),
                "sinus": (10.0, 30.0)},
}
_ENHANCING = ("liver", "spleen", "cortex", "aorta", "portal", "hepatic")
# The tumour against the liver (HU, tumour minus liver) per phase, one range drawn with equal odds:
# hypo-attenuating in every phase (metastases, washout), or hyper-enhancing in the arterial phase
# (hepatocellular carcinoma). Never within 20 HU of the liver: an iso-attenuating lesion is not
# visible on CT in that phase, and a phantom that labels one teaches the network to guess. (The
# darker necrotic centre, up to 12 HU, brings a hyper-enhancing tumour's middle to 18 HU at least.)
# The portal-venous tumour is medseg.phantom_anatomy's own draw (36-67 HU below the liver).
_TUMOUR_CONTRAST: dict[str, tuple[tuple[float, float], ...]] = {
    "non-contrast": ((-38.0, -20.0),),
    "arterial": ((-50.0, -20.0), (30.0, 60.0)),
    "delayed": ((-45.0, -20.0),),
}


@dataclass(frozen=True)
class Style:
    """The knobs of a phantom. ``thickness_mm``: reconstructed slice thickness, the image averaged
    over it along z (partial volume); None samples each slice at its centre. ``arms``: raised
    (out of the field of view) or beside the body (the field of view widens to 500 mm). ``field``:
    the abdomen alone, or with the lung bases and heart above it (chest-abdomen, +110 mm), or with
    the pelvis below it (abdomen-pelvis, +190 mm: iliac wings, sacrum, femoral heads, bladder).
    ``inplane_mm``: the in-plane voxel size of a seeded grid (None: drawn, 1.2-1.8 mm).
    ``perirenal_fat``: fat 5-18 mm around each kidney and in its renal sinus, as in most adults
    (the kidneys then stand out of the bowel and muscle whatever the phase). ``bowel_gas``: gas
    pockets in the bowel (-1000 to -850 HU), unlabelled."""

    phase: str = "portal-venous"
    noise: str = "standard"
    thickness_mm: float | None = None
    arms: str = "raised"
    table: bool = False
    liver_vessels: bool = False
    field: str = "abdomen"
    inplane_mm: float | None = None
    perirenal_fat: bool = False
    bowel_gas: bool = False

    def __post_init__(self) -> None:
        if self.phase not in PHASES:
            raise ValueError(f"phase {self.phase!r}: expected one of {', '.join(PHASES)}")
        if self.noise not in NOISE_LEVELS:
            raise ValueError(f"noise {self.noise!r}: expected one of {', '.join(NOISE_LEVELS)}")
        if self.field not in FIELDS:
            raise ValueError(f"field {self.field!r}: expected one of {', '.join(FIELDS)}")
        if self.arms not in ARMS:
            raise ValueError(f"arms {self.arms!r}: expected one of {', '.join(ARMS)}")
        for name in ("thickness_mm", "inplane_mm"):
            t = getattr(self, name)
            if t is not None and not (isinstance(t, (int, float)) and np.isfinite(t) and 0.0 < t <= 10.0):
                raise ValueError(f"{name} {t!r}: expected a number of mm in (0, 10], or None")

    def as_dict(self) -> dict:
        return asdict(self)


def seeded_style(seed: int) -> Style:
    """A varied style for ``seed`` (training and evaluation sets): every phase equally often,
    each noise level, slices 0.5-5 mm thick, arms beside the body in 40 % of cases, a table in
    70 %, veins in every liver. Drawn from its own generator: the anatomy is the seed's as ever."""
    rng = np.random.default_rng([int(seed), 15])
    return Style(
        phase=str(rng.choice(PHASES)),
        noise=str(rng.choice(list(NOISE_LEVELS), p=[0.3, 0.45, 0.25])),
        thickness_mm=round(float(rng.uniform(0.5, 5.0)), 2),
        arms="beside" if rng.random() < 0.4 else "raised",
        table=bool(rng.random() < 0.7),
        liver_vessels=True,
        field=str(rng.choice(list(FIELDS), p=[0.4, 0.25, 0.35])),
        inplane_mm=[None, round(float(rng.uniform(0.8, 1.2)), 3), 3.0][int(rng.choice(3, p=[0.6, 0.25, 0.15]))],
        perirenal_fat=bool(rng.random() < 0.85),
        bowel_gas=bool(rng.random() < 0.8),
    )


@dataclass(frozen=True)
class Extras:
    """What a style adds to a phantom, drawn once: HU overrides, arms, table and vessel segments."""

    hu: dict[str, float]
    arms: tuple[tuple[float, ...], ...] = ()  # per arm: centre x, centre y, semi x, semi y, fat, bone r, cortex, marrow HU, bone HU
    table: tuple[float, ...] | None = None  # y of the top at x = 0, radius of curvature, half width, shell, core, shell HU, core HU
    vessels: tuple[tuple[np.ndarray, np.ndarray, float, str], ...] = field(default_factory=tuple)  # (p0, p1, radius, kind)
    chest: tuple[float, ...] | None = None  # dome z, dome radius, heart x, y, semi x, semi y, lung HU, blood HU
    pelvis: tuple[float, ...] | None = None  # crest z, spine y, front y, bladder HU, bone HU, marrow HU, femur x
    perirenal: tuple[float, float, float] | None = None  # fat thickness (mm), fat HU, how much bowel texture stays (0..1)
    gas: tuple[float, float] | None = None  # threshold (field SDs) above which the bowel holds gas, gas HU
    gas_field: Any = None  # the smooth random field (medseg.phantom_anatomy.Waves) that places the gas


def style_hu(hu: dict[str, float], style: Style, rng: np.random.Generator) -> dict[str, float]:
    """``hu`` (the portal-venous values a phantom draws) in the style's phase and noise level; each
    organ's enhancement over its unenhanced value is scaled by its own factor (0.8-1.2) per case."""
    out = dict(hu)
    table = _PHASE_HU[style.phase]
    base = {k: float(np.mean(v)) for k, v in _PHASE_HU["non-contrast"].items()}
    for key, (lo, hi) in table.items():
        value = float(rng.uniform(lo, hi))
        if style.phase not in ("non-contrast", "portal-venous") and key in _ENHANCING:
            value = base[key] + (value - base[key]) * float(rng.uniform(0.8, 1.2))
        out[key] = value
    if style.phase in _TUMOUR_CONTRAST:
        ranges = _TUMOUR_CONTRAST[style.phase]
        lo, hi = ranges[int(rng.integers(len(ranges)))]
        out["tumour"] = out["liver"] + float(rng.uniform(lo, hi))
    if "medulla_drop" in out:
        out["medulla"] = out["cortex"] - out.pop("medulla_drop")
    if style.phase == "delayed" and rng.random() < 0.4:  # contrast excreted into the renal pelvis
        out["sinus"] = float(rng.uniform(250.0, 600.0))
    if style.noise != "standard":
        out["noise"] = float(rng.uniform(*NOISE_LEVELS[style.noise]))
        out["tex"] = float(hu["tex"] * rng.uniform(0.7, 1.6))
    return out


def style_extras(style: Style, hu: dict[str, float], body: tuple[float, float], liver, seed: int,
                 anchors: dict[str, float]) -> Extras:
    """The drawn extras of ``style`` for a phantom with skin semi-axes ``body`` (mm) and liver
    lobes ``liver`` (medseg.phantom_anatomy's Blobs), from a generator of its own seeded by ``seed``.
    ``anchors``: the liver dome's z, the kidneys' lowest z, the vertebral body's y (body frame, mm)."""
    rng = np.random.default_rng([int(seed), 16])
    hu = style_hu(hu, style, rng)
    arms = _draw_arms(rng, body) if style.arms == "beside" else ()
    table = _draw_table(rng, body[1]) if style.table else None
    vessels = _draw_vessels(rng, liver) if style.liver_vessels else ()
    u = rng.uniform
    chest = pelvis = None
    if style.field == "chest-abdomen":
        chest = (anchors["dome"] + u(-5.0, 5.0), u(90.0, 140.0), u(-45.0, -25.0), u(10.0, 35.0), u(50.0, 65.0),
                 u(40.0, 50.0), u(-880.0, -820.0), hu["aorta"])
    if style.field == "abdomen-pelvis":
        excreted = style.phase == "delayed" and rng.random() < 0.5
        pelvis = (anchors["kidney_low"] - u(15.0, 35.0), anchors["vb_y"], body[1] * u(0.75, 0.85),
                  u(300.0, 700.0) if excreted else u(0.0, 15.0), u(650.0, 900.0), u(150.0, 280.0), u(85.0, 100.0))
    perirenal = gas = None
    if style.perirenal_fat:
        perirenal = (u(5.0, 18.0), u(-105.0, -80.0), u(0.1, 0.35))
        if hu["sinus"] < 100.0:  # sinus fat around the renal pelvis (not contrast excreted into it)
            hu["sinus"] = u(-90.0, -30.0)
    if style.bowel_gas:
        gas = (u(0.9, 1.8), u(-1000.0, -850.0))
    return Extras(hu=hu, arms=arms, table=table, vessels=vessels, chest=chest, pelvis=pelvis, perirenal=perirenal, gas=gas)


def _draw_arms(rng: np.random.Generator, body: tuple[float, float]) -> tuple[tuple[float, ...], ...]:
    u = rng.uniform
    arms = []
    for side in (-1.0, 1.0):
        rx, ry = u(38.0, 50.0), u(42.0, 55.0)
        cx = side * (body[0] + u(3.0, 25.0) + rx)
        arms.append((cx, u(-25.0, 25.0), rx, ry, u(5.0, 12.0), u(9.0, 14.0), u(3.0, 5.0), u(-60.0, 60.0), u(900.0, 1300.0)))
    return tuple(arms)


def _draw_table(rng: np.random.Generator, body_b: float) -> tuple[float, ...]:
    u = rng.uniform
    return (-body_b - u(1.0, 8.0), u(400.0, 900.0), u(200.0, 240.0), u(1.5, 3.0), u(20.0, 40.0), u(200.0, 500.0),
            u(-900.0, -700.0))


def _draw_vessels(rng: np.random.Generator, liver) -> tuple:
    """Portal vein branches from the hilum and hepatic veins from a confluence at the dome, inside
    the right lobe (body frame: +x right, +y anterior, +z superior)."""
    right = liver[0]
    c = np.asarray(right.centre, float)
    ext = np.asarray(right.half_extent(), float) - right.warp.bound - 1.0
    hilum = c + ext * np.array([-0.45, 0.05, -0.25])
    dome = c + ext * np.array([-0.3, -0.3, 0.6])
    out: list = []
    for _ in range(int(rng.integers(4, 7))):  # portal branches: towards the periphery, mostly lateral
        d = rng.normal(size=3) * np.array([0.6, 0.6, 0.5]) + np.array([0.5, 0.0, 0.1])
        _branch(rng, out, hilum, ext * d / max(np.linalg.norm(d), 1e-6) * rng.uniform(0.5, 0.8), rng.uniform(3.5, 6.5), "portal")
    for _ in range(3):  # right, middle and left hepatic veins fanning out downwards
        d = np.array([rng.uniform(-0.2, 0.9), rng.uniform(-0.1, 0.8), -rng.uniform(0.4, 0.9)])
        _branch(rng, out, dome, ext * d / np.linalg.norm(d) * rng.uniform(0.5, 0.85), rng.uniform(3.5, 6.5), "hepatic")
    return tuple(out)


def _branch(rng: np.random.Generator, out: list, start: np.ndarray, reach: np.ndarray, radius: float, kind: str) -> None:
    """A vein from ``start`` along ``reach`` (mm) and two thinner side branches from its middle third on."""
    out.append((start, start + reach, float(radius), kind))
    length = float(np.linalg.norm(reach))
    for _ in range(2):
        at = start + reach * rng.uniform(0.35, 0.75)
        side = rng.normal(size=3)
        side -= (side @ reach) / (length * length) * reach  # across the parent
        side *= length * rng.uniform(0.25, 0.45) / max(np.linalg.norm(side), 1e-6)
        out.append((at, at + side + reach * 0.2, float(radius * rng.uniform(0.45, 0.65)), kind))


def render_outside(ex: Extras, xs: np.ndarray, ys: np.ndarray, hu: np.ndarray, muscle: float, fat: float) -> None:
    """Arms and table onto one axial slice's HU (body-frame grid ``xs`` by ``ys``), only where it is air."""
    air = hu <= -999.0
    for cx, cy, rx, ry, fat_mm, bone_r, cortex, marrow, bone in ex.arms:
        dx, dy = (xs - cx)[:, None], (ys - cy)[None, :]
        skin = (dx / rx) ** 2 + (dy / ry) ** 2 < 1.0
        inner = (dx / (rx - fat_mm)) ** 2 + (dy / (ry - fat_mm)) ** 2 < 1.0
        r2 = dx * dx + dy * dy
        value = np.where(inner, muscle, fat)
        value = np.where(r2 < bone_r**2, bone, value)
        value = np.where(r2 < (bone_r - cortex) ** 2, marrow, value)
        np.copyto(hu, value.astype(np.float32), where=skin & air)
    if ex.table is not None:
        top, radius, half_w, shell, core, shell_hu, core_hu = ex.table
        surface = top + xs**2 / (2.0 * radius)  # a shallow cradle
        depth = surface[:, None] - ys[None, :]  # mm below the top surface
        inside = (np.abs(xs) < half_w)[:, None] & (depth >= 0.0) & (depth < 2 * shell + core)
        value = np.where((depth < shell) | (depth >= shell + core), shell_hu, core_hu).astype(np.float32)
        np.copyto(hu, value, where=inside & air)


def vessel_mask(ex: Extras, kind: str, xs: np.ndarray, ys: np.ndarray, z: float) -> np.ndarray:
    """Where the ``kind`` ("portal" or "hepatic") veins cross the slice at ``z`` (distance to a segment < its radius)."""
    mask = np.zeros((xs.size, ys.size), dtype=bool)
    for p0, p1, r, k in ex.vessels:
        if k != kind or z < min(p0[2], p1[2]) - r or z > max(p0[2], p1[2]) + r:
            continue
        i = np.flatnonzero(np.abs(xs - 0.5 * (p0[0] + p1[0])) <= 0.5 * abs(p1[0] - p0[0]) + r)
        j = np.flatnonzero(np.abs(ys - 0.5 * (p0[1] + p1[1])) <= 0.5 * abs(p1[1] - p0[1]) + r)
        if i.size == 0 or j.size == 0:
            continue
        seg = p1 - p0
        px, py = (xs[i] - p0[0])[:, None], (ys[j] - p0[1])[None, :]
        pz = z - p0[2]
        t = np.clip((px * seg[0] + py * seg[1] + pz * seg[2]) / float(seg @ seg), 0.0, 1.0)
        d2 = (px - t * seg[0]) ** 2 + (py - t * seg[1]) ** 2 + (pz - t * seg[2]) ** 2
        mask[i[0] : i[-1] + 1, j[0] : j[-1] + 1] |= d2 < r * r
    return mask


def _inside(xs: np.ndarray, ys: np.ndarray, cx: float, cy: float, a: float, b: float, angle: float = 0.0) -> np.ndarray:
    """Inside an ellipse (semi-axes a, b) turned by ``angle`` radians, on the grid xs by ys."""
    dx, dy = (xs - cx)[:, None], (ys - cy)[None, :]
    c, s = np.cos(angle), np.sin(angle)
    return ((c * dx + s * dy) / a) ** 2 + ((-s * dx + c * dy) / b) ** 2 < 1.0


def render_bowel_gas(ex: Extras, xs: np.ndarray, ys: np.ndarray, z: float, hu: np.ndarray, free: np.ndarray) -> None:
    """Gas where the smooth field ``ex.gas_field`` is above its threshold, only where ``free``
    (the fat and bowel left between the organs)."""
    if ex.gas is None or ex.gas_field is None:
        return
    threshold, gas_hu = ex.gas
    field = ex.gas_field.slab(xs, ys, z)[0]
    sd = float(np.sqrt(0.5 * (np.asarray(ex.gas_field.amp) ** 2).sum()))
    hu[(field > threshold * sd) & free] = gas_hu


def render_perirenal(ex: Extras, kidneys, xs: np.ndarray, ys: np.ndarray, z: float, hu: np.ndarray,
                     free: np.ndarray) -> None:
    """Fat in a shell ``ex.perirenal[0]`` mm thick (across the kidney's thinnest axis) around each
    kidney (medseg.phantom_anatomy's Blobs), only where ``free``: some of the bowel texture stays."""
    if ex.perirenal is None:
        return
    thick, fat, keep = ex.perirenal
    for blob in kidneys:
        grow = 1.0 + thick / float(np.min(blob.semi))
        half = blob.half_extent() * grow
        if abs(z - blob.centre[2]) > half[2]:
            continue
        bx = np.flatnonzero(np.abs(xs - blob.centre[0]) <= half[0])
        by = np.flatnonzero(np.abs(ys - blob.centre[1]) <= half[1])
        if bx.size == 0 or by.size == 0:
            continue
        box = (slice(bx[0], bx[-1] + 1), slice(by[0], by[-1] + 1))
        u0, u1, u2 = blob.local(xs[box[0]], ys[box[1]], z)
        shell = (u0 * u0 + u1 * u1 + u2 * u2 < grow * grow) & free[box]
        hu[box][shell] = np.float32(fat) + np.float32(keep) * (hu[box][shell] - np.float32(fat))


def render_chest(ex: Extras, xs: np.ndarray, ys: np.ndarray, z: float, hu: np.ndarray, free: np.ndarray) -> None:
    """Lung bases above the diaphragm (a dome, lowest at the sides and back) and the heart over the
    liver's left lobe, only where ``free``; they are then not free."""
    if ex.chest is None:
        return
    dome, radius, hx, hy, ha, hb, lung_hu, blood = ex.chest
    if z > dome - 12.0:
        heart = _inside(xs, ys, hx, hy, ha, hb) & free & (z < dome + 120.0)
        hu[heart] = blood
        free &= ~heart
    surface = dome - (xs[:, None] ** 2 + (ys[None, :] + 40.0) ** 2) / (2.0 * radius)
    lung = free & (z > surface)
    hu[lung] = lung_hu
    free &= ~lung


def render_pelvis(ex: Extras, xs: np.ndarray, ys: np.ndarray, z: float, hu: np.ndarray, free: np.ndarray) -> None:
    """Iliac wings, sacrum, femoral heads and the bladder below the iliac crest (unlabelled)."""
    if ex.pelvis is None:
        return
    crest, vb_y, front, bladder_hu, bone, marrow, femur_x = ex.pelvis
    t = crest - z  # mm below the crest
    if t < 0.0:
        return
    parts: list[tuple[np.ndarray, np.ndarray]] = []
    if t < 120.0:
        for side in (-1.0, 1.0):  # the wings: plates turned outwards, moving in and forwards lower down
            cx, cy = side * (100.0 - 0.3 * t), vb_y - 5.0 + 0.25 * t
            a = 45.0 - 0.15 * t
            parts.append((_inside(xs, ys, cx, cy, a, 9.0, side * 0.6), _inside(xs, ys, cx, cy, a - 3.0, 6.0, side * 0.6)))
    if 15.0 < t < 140.0:
        w = 42.0 - 0.15 * t
        parts.append((_inside(xs, ys, 0.0, vb_y - 8.0, w, 20.0), _inside(xs, ys, 0.0, vb_y - 8.0, w - 3.0, 17.0)))
    if 125.0 < t < 180.0:
        r = 24.0 * np.sqrt(max(0.0, 1.0 - ((t - 152.0) / 28.0) ** 2))
        for side in (-1.0, 1.0):
            parts.append((_inside(xs, ys, side * femur_x, vb_y + 45.0, r, r), _inside(xs, ys, side * femur_x, vb_y + 45.0, r - 3.0, r - 3.0)))
    for outer, inner in parts:
        hu[outer & free] = bone
        hu[inner & free] = marrow
    if 100.0 < t < 190.0:
        k = np.sin(np.pi * (t - 100.0) / 90.0)
        bladder = _inside(xs, ys, 0.0, front - 45.0, 50.0 * k + 1.0, 38.0 * k + 1.0) & free
        hu[bladder] = bladder_hu
    for outer, _ in parts:
        free &= ~outer
