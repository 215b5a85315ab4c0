"""The phantom's anatomy, drawn from a seed (:mod:`medseg.phantom` renders it): smooth random
fields (``Waves``), warped ellipsoids (``Blob``), and every seeded parameter of a body, its
spine, liver, spleen, kidneys and tissue values (``Anatomy``, ``sample_anatomy``). Positions are
body-frame millimetres (RAS, origin mid-abdomen), independent of any voxel grid.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

LABELS: dict[str, int] = {
    "background": 0,
    "liver": 1,
    "spleen": 2,
    "kidney_right": 3,
    "kidney_left": 4,
    "liver_tumour": 5,
}
HU_MIN, HU_MAX = -1024, 3071  # 12-bit CT range; the image is clipped to it
LIVER, SPLEEN, KID_R, KID_L, TUMOUR = (
    LABELS["liver"],
    LABELS["spleen"],
    LABELS["kidney_right"],
    LABELS["kidney_left"],
    LABELS["liver_tumour"],
)


# --------------------------------------------------------------------------- shapes


@dataclass(frozen=True)
class Waves:
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
    ) -> Waves:
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
class Blob:
    """A warped ellipsoid: p is inside when |A^T (p + warp(p) - centre) / semi| < 1."""

    centre: np.ndarray  # (3,) body-frame mm
    semi: np.ndarray  # (3,) semi-axes, mm
    axes: np.ndarray  # (3, 3) columns are the local axes in the body frame
    warp: Waves  # 3-channel displacement field, mm

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


def rotation(rx: float, ry: float, rz: float) -> np.ndarray:
    """Rz @ Ry @ Rx for angles in degrees."""
    ax, ay, az = np.deg2rad([rx, ry, rz])
    cx, sx, cy, sy, cz, sz = np.cos(ax), np.sin(ax), np.cos(ay), np.sin(ay), np.cos(az), np.sin(az)
    r_x = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    r_y = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    r_z = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return r_z @ r_y @ r_x


def frame(first: np.ndarray, third: np.ndarray) -> np.ndarray:
    """Right-handed orthonormal axes: the third along ``third``, the first near ``first``."""
    e2 = third / np.linalg.norm(third)
    e0 = first - (first @ e2) * e2
    e0 /= np.linalg.norm(e0)
    return np.stack([e0, np.cross(e2, e0), e2], axis=1)


# -------------------------------------------------------------------------- anatomy


@dataclass(frozen=True)
class Anatomy:
    """All seeded anatomical parameters, in body-frame mm.

    Body-frame axes are RAS (+x patient Right, +y Anterior, +z Superior), origin mid-abdomen.
    """

    # body wall
    body_a: float  # left-right semi-axis of the skin
    body_b: float  # antero-posterior semi-axis of the skin
    fat: float  # subcutaneous fat thickness
    wall: float  # abdominal muscle wall thickness
    body_zvar: tuple[float, float, float]  # relative amplitude, wavelength, phase
    body_warp: Waves
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
    liver: tuple[Blob, Blob]  # right lobe, left lobe
    tumour: Blob | None  # placed by place_tumour inside the rendered liver
    spleen: Blob
    kidney_r: Blob
    kidney_l: Blob
    # tissue
    hu: dict[str, float]
    visceral_tex: Waves
    organ_tex: Waves


def jitter(rng: np.random.Generator, scale: float = 0.15, size: int = 3) -> np.ndarray:
    return rng.uniform(1.0 - scale, 1.0 + scale, size=size)


def organ_warp(
    rng: np.random.Generator, amplitude: tuple[float, float], wavelength: tuple[float, float]
) -> Waves:
    return Waves.random(rng, 3, wavelength, amplitude, channels=3)


def _sample_body(rng: np.random.Generator) -> dict:
    """Skin ellipse, fat and muscle wall, their variation along z, and the ribs."""
    u = rng.uniform
    body_a, body_b = u(150.0, 180.0), u(110.0, 135.0)
    fat, wall = u(10.0, 30.0), u(6.0, 12.0)
    body_zvar = (u(0.01, 0.04), u(250.0, 500.0), u(0.0, 2.0 * np.pi))
    body_warp = Waves.random(rng, 4, (150.0, 400.0), (1.0, 4.0), channels=2)
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


def _sample_liver(rng: np.random.Generator, cav_a: float, cav_b: float) -> tuple[Blob, Blob]:
    """A big right lobe (RAS x > 0) against the right wall plus a left lobe crossing the
    midline anteriorly."""
    u = rng.uniform
    right_c = np.array([0.45 * cav_a + u(-10, 10), 0.05 * cav_b + u(-10, 10), u(22, 36)])
    right = Blob(
        right_c,
        np.array([85.0, 75.0, 64.0]) * jitter(rng),
        rotation(u(-5, 5), u(-5, 5), u(-10, 10)),
        organ_warp(rng, (2.0, 5.0), (90.0, 200.0)),
    )
    left = Blob(
        np.array([right_c[0] - u(60, 75), 0.45 * cav_b + u(-5, 5), right_c[2] + u(5, 15)]),
        np.array([55.0, 26.0, 35.0]) * jitter(rng),
        rotation(u(-5, 5), u(-5, 5), u(-15, 15)),
        organ_warp(rng, (2.0, 4.0), (90.0, 200.0)),
    )
    return right, left


def _sample_spleen(rng: np.random.Generator, cav_a: float, cav_b: float) -> Blob:
    """Hugging the postero-lateral left wall (RAS x < 0)."""
    u = rng.uniform
    theta = np.deg2rad(u(-40.0, -20.0))
    wall_pt = np.array([-cav_a * np.cos(theta), cav_b * np.sin(theta)])
    normal = np.array([-np.cos(theta) / cav_a, np.sin(theta) / cav_b])
    normal /= np.linalg.norm(normal)
    s_semi = np.array([24.0, 50.0, 50.0]) * jitter(rng)
    s_xy = wall_pt - normal * 0.85 * s_semi[0] + u(-5, 5, size=2)
    s_axes = rotation(u(-8, 8), u(-8, 8), u(-8, 8)) @ frame(
        np.array([normal[0], normal[1], 0.0]), np.array([0.0, 0.0, 1.0])
    )
    return Blob(
        np.array([s_xy[0], s_xy[1], u(30.0, 45.0)]),
        s_semi,
        s_axes,
        organ_warp(rng, (2.0, 4.0), (80.0, 180.0)),
    )


def _sample_kidney(rng: np.random.Generator, side: float, z: float, vb_y: float) -> Blob:
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
    return Blob(
        centre,
        np.array([30.0, 20.0, 52.0]) * jitter(rng),
        frame(hilum, long_axis),
        organ_warp(rng, (1.0, 2.5), (60.0, 120.0)),
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


def sample_anatomy(rng: np.random.Generator) -> Anatomy:
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
    return Anatomy(
        **body,
        **spine,
        liver=liver,
        tumour=None,
        spleen=spleen,
        kidney_r=kidney_r,
        kidney_l=kidney_l,
        hu=hu,
        visceral_tex=Waves.random(rng, 8, (25.0, 80.0), (0.5, 0.5)),
        organ_tex=Waves.random(rng, 6, (15.0, 50.0), (0.58, 0.58)),
    )
