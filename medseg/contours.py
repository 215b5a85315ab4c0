"""Planar contours (DICOM RTSTRUCT) onto a scan's voxel grid and back: slice matching, even-odd filling, tracing.

Contour points are patient coordinates (LPS millimetres, as DICOM stores them). Each contour is
mapped through the scan's own affine (whatever its axis order, flips or acquisition plane) and
belongs to the slice whose position it lies on along the slice axis, within ``tolerance`` of a
slice (a fraction of the slice spacing): never to an index computed from an averaged spacing. A
contour between slices, or not in a slice plane (a gantry-tilted or oblique series), is an error
naming the structure and the position.

Filling follows the RTSTRUCT traps the converters' issue trackers list: contours of one structure
on one slice combine by the even-odd rule (a contour inside another is a hole), and a voxel whose
centre lies on a contour belongs to the structure (contours written from masks pass through the
centres of the boundary voxels).

>>> import numpy as np
>>> square = np.array([[-2.0, -2.0, 0.0], [-2.0, -5.0, 0.0], [-5.0, -5.0, 0.0], [-5.0, -2.0, 0.0]])  # LPS mm
>>> int(rasterise([square], np.eye(4), (8, 8, 1)).sum())  # voxel centres 2..5 x 2..5, the boundary included
16
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from .errors import MedsegError, need_extra

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])
EPS = 1e-4  # in voxels: a centre this close to a contour lies on it


def to_voxels(points_lps: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """(N, 3) LPS millimetres -> (N, 3) fractional voxel indices of a scan with RAS ``affine``."""
    ras = np.asarray(points_lps, dtype=float).reshape(-1, 3) @ LPS_TO_RAS.T
    inverse = np.linalg.inv(np.asarray(affine, dtype=float))
    return ras @ inverse[:3, :3].T + inverse[:3, 3]


def rasterise(
    contours: Iterable[np.ndarray],
    affine: np.ndarray,
    shape: tuple[int, int, int],
    *,
    axis: int | None = None,
    tolerance: float = 0.25,
    name: str = "structure",
) -> np.ndarray:
    """A boolean mask on the grid (``affine``: RAS, ``shape``) of the structure whose planar contours
    (each an (N, 3) array of LPS mm) are given; holes by the even-odd rule, boundary centres inside.

    ``axis``: the slice axis (default: the voxel axis along which the first contour is flat, as
    RTSTRUCT contours lie in the series' image planes); ``tolerance``: how far, in slices, a
    contour may lie from a slice centre. A contour off every slice, outside the grid or not in a
    slice plane is a :class:`MedsegError` naming ``name`` and the position.
    """
    interiors: dict[int, np.ndarray] = {}
    boundary = np.zeros(shape, dtype=bool)
    for points in contours:
        vox = to_voxels(points, affine)
        if len(vox) < 3:
            continue  # a point or a line encloses nothing (its voxels are not the structure's)
        if axis is None:
            axis = int(np.argmin(np.ptp(vox, axis=0)))
        inplane = [a for a in range(3) if a != axis]
        k = _slice_of(vox, axis, shape, tolerance, name, points)
        plane = (shape[inplane[0]], shape[inplane[1]])
        rows, cols = vox[:, inplane[0]], vox[:, inplane[1]]
        inside = interiors.setdefault(k, np.zeros(plane, dtype=bool))
        inside ^= _strict_interior(rows, cols, plane)
        _mark_boundary(rows, cols, plane, _plane(boundary, axis, k))
    mask = boundary
    for k, inside in interiors.items():
        _plane(mask, axis, k)[...] |= inside
    return mask


def contours_of(mask: np.ndarray, affine: np.ndarray, axis: int = 2) -> list[tuple[int, np.ndarray]]:
    """The planar contours of a mask, slice by slice along ``axis``: ``(slice, (N, 3) LPS mm)`` pairs.

    Each slice's outlines (and the outlines of its holes) are traced at the 0.5 level of the
    binary image (``skimage.measure.find_contours``), so they pass half-way between the voxels
    inside and outside: :func:`rasterise` gives the mask back, holes included (even-odd rule).
    """
    find_contours = need_extra("skimage.measure", "tracing contours (RTSTRUCT)").find_contours
    mask = np.asarray(mask, dtype=bool)
    inplane = [a for a in range(3) if a != axis]
    affine = np.asarray(affine, dtype=float)
    out: list[tuple[int, np.ndarray]] = []
    for k in np.flatnonzero(np.moveaxis(mask, axis, 0).any(axis=(1, 2))):
        plane = np.pad(_plane(mask, axis, int(k)), 1).astype(np.float32)  # a closed outline at the edges too
        for line in find_contours(plane, 0.5):
            if len(line) > 1 and np.allclose(line[0], line[-1]):
                line = line[:-1]
            line = _corners(line)
            vox = np.zeros((len(line), 3))
            vox[:, axis] = k
            vox[:, inplane[0]], vox[:, inplane[1]] = line[:, 0] - 1, line[:, 1] - 1
            ras = vox @ affine[:3, :3].T + affine[:3, 3]
            out.append((int(k), ras @ LPS_TO_RAS.T))
    return out


def _corners(line: np.ndarray) -> np.ndarray:
    """A closed polyline without the vertices that lie on a straight run (the same outline, far fewer points)."""
    if len(line) < 4:
        return line
    before, after = line - np.roll(line, 1, axis=0), np.roll(line, -1, axis=0) - line
    turn = np.abs(before[:, 0] * after[:, 1] - before[:, 1] * after[:, 0]) > 1e-9
    return line[turn] if turn.sum() >= 3 else line


def _plane(volume: np.ndarray, axis: int, k: int) -> np.ndarray:
    return np.moveaxis(volume, axis, 0)[k]


def _slice_of(vox: np.ndarray, axis: int, shape, tolerance: float, name: str, points) -> int:
    """The slice a contour lies on; an error naming the structure and its position otherwise."""
    along = vox[:, axis]
    where = np.round(np.asarray(points, dtype=float).reshape(-1, 3).mean(axis=0), 2).tolist()
    if float(along.max() - along.min()) > 2 * tolerance:
        raise MedsegError(f"{name}: a contour at {where} mm (LPS) is not in one slice plane of the series "
                          f"(it spans {along.max() - along.min():.2f} slices: a gantry-tilted or oblique series?)")
    k = int(np.round(along.mean()))
    if abs(float(along.mean()) - k) > tolerance or not 0 <= k < shape[axis]:
        raise MedsegError(f"{name}: a contour at {where} mm (LPS) matches no slice of the series "
                          f"(it lies at slice position {along.mean():.2f}; slices 0..{shape[axis] - 1})")
    return k


def _expand(lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For ranges ``lo[e]..hi[e]`` (inclusive integers; empty when hi < lo): (range index, value) of every member."""
    counts = np.maximum(hi - lo + 1, 0)
    which = np.repeat(np.arange(len(lo)), counts)
    starts = np.cumsum(counts) - counts
    return which, lo[which] + (np.arange(int(counts.sum())) - starts[which])


def _strict_interior(rows: np.ndarray, cols: np.ndarray, plane: tuple[int, int]) -> np.ndarray:
    """Voxel centres strictly inside one closed polygon (even-odd), by scanlines through the centre rows.

    Every edge gives its crossings with the centre rows it spans (half-open rule: a vertex on a row
    is counted once), so each row has an even number of crossings; sorted, they pair up into runs."""
    out = np.zeros(plane, dtype=bool)
    r0, r1 = rows, np.concatenate([rows[1:], rows[:1]])
    c0, c1 = cols, np.concatenate([cols[1:], cols[:1]])
    lo = np.ceil(np.minimum(r0, r1)).astype(np.int64)  # rows r with min <= r < max: (r0 <= r) != (r1 <= r)
    hi = np.ceil(np.maximum(r0, r1)).astype(np.int64) - 1
    edge, r = _expand(lo, hi)
    if not len(r):
        return out
    t = (r - r0[edge]) / (r1[edge] - r0[edge])
    x = c0[edge] + t * (c1[edge] - c0[edge])
    order = np.lexsort((x, r))
    r, x = r[order], x[order]
    a, b, row = x[0::2], x[1::2], r[0::2]
    first = np.maximum(np.ceil(a + EPS), 0).astype(np.int64)
    last = np.minimum(np.floor(b - EPS), plane[1] - 1).astype(np.int64)
    keep = (first <= last) & (row >= 0) & (row < plane[0])
    run, col = _expand(first[keep], last[keep])
    out[row[keep][run], col] = True
    return out


def _mark_boundary(rows: np.ndarray, cols: np.ndarray, plane: tuple[int, int], out: np.ndarray) -> None:
    """Set the voxel centres that lie on the polygon's edges."""
    r0, r1 = rows, np.concatenate([rows[1:], rows[:1]])
    c0, c1 = cols, np.concatenate([cols[1:], cols[:1]])
    flat = np.abs(r1 - r0) < EPS
    # edges along a row: every centre between the ends, when the row is a centre row
    rr = np.round(r0[flat])
    on = np.abs(r0[flat] - rr) < EPS
    lo = np.ceil(np.minimum(c0, c1)[flat][on] - EPS).astype(np.int64)
    hi = np.floor(np.maximum(c0, c1)[flat][on] + EPS).astype(np.int64)
    which, cc = _expand(lo, hi)
    _set(out, rr[on][which].astype(np.int64), cc, plane)
    # other edges: the centre rows they span, where the edge passes through a centre
    s = ~flat
    lo = np.ceil(np.minimum(r0, r1)[s] - EPS).astype(np.int64)
    hi = np.floor(np.maximum(r0, r1)[s] + EPS).astype(np.int64)
    which, r = _expand(lo, hi)
    c = c0[s][which] + (r - r0[s][which]) * (c1[s] - c0[s])[which] / (r1[s] - r0[s])[which]
    cc = np.round(c)
    hit = np.abs(c - cc) < EPS
    _set(out, r[hit], cc[hit].astype(np.int64), plane)


def _set(out: np.ndarray, r: np.ndarray, c: np.ndarray, plane: tuple[int, int]) -> None:
    ok = (r >= 0) & (r < plane[0]) & (c >= 0) & (c < plane[1])
    out[r[ok], c[ok]] = True


__all__ = ["contours_of", "rasterise", "to_voxels"]
