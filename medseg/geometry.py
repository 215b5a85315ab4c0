"""Orientation, voxel grids and world space: the one place that knows about axis orders.

Conventions. A :class:`~medseg.io.Scan` holds a voxel array indexed ``[i, j, k]`` in the order
its file stores it and a 4x4 affine mapping ``(i, j, k, 1)`` to RAS world millimetres (the
nibabel convention). DICOM and ITK use LPS world coordinates (:data:`LPS_TO_RAS` flips x and y).

- Canonical views (:func:`canonical_view`, :func:`from_canonical`, :func:`canonical_spacing`):
  the same voxels in RAS axis order (a transpose and flips, no resampling), so slices along the
  third axis are axial whatever order the file stores them in.
- Grids (:func:`canonical_grid`, :func:`grid_mismatch`, :func:`array_on_grid_of`): whether two
  scans hold the same voxel centres, whatever order or flips their files store them in.
- Display orientation (:func:`to_display`, :func:`from_display`, :func:`display_affine`,
  :func:`display_shape`), the one DICOM viewers use and napari shows: world axes are ``(z, y, x)``
  in millimetres of the patient's LPS frame, so an axial slice shows anterior at the top and the
  patient's right on the left of the screen (radiological display). The display array is the
  scan's voxels reordered (a transpose and flips, no resampling) to ``(S, P, L)`` axis order; a
  4x4 affine maps its indices to world ``(z, y, x)``. For an axis-aligned scan the affine is
  diagonal (voxel sizes and origin), so anisotropic voxels keep their true proportions and
  slicing is exact. :func:`to_display` and :func:`from_display` are exact inverses, so a mask
  painted in the viewer goes back to the scan's own voxel order and can be written with the
  scan's geometry.

>>> import numpy as np
>>> data, affine = to_display(np.zeros((4, 5, 6), np.int16), np.diag([0.8, 0.8, 3.0, 1.0]))
>>> data.shape, np.diag(affine).tolist()
((6, 5, 4), [3.0, 0.8, 0.8, 1.0])

No torch or MONAI here: this module stays light enough for the napari reader.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import nibabel as nib
import numpy as np

from .errors import MedsegError

if TYPE_CHECKING:
    from .scan import Scan

# LPS (DICOM/ITK) <-> RAS (NIfTI/nibabel) world coordinates: flip x and y.
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])
# Display orientation: the display array's axes are (S, P, L), world axes (z, y, x) LPS mm.
AXES = "LPS"
_REVERSE = np.eye(4)[[2, 1, 0, 3]]  # (x, y, z, 1) <-> (z, y, x, 1)
_RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


# ---------------------------------------------------------------------------------------------- affines


def check_affine(affine: np.ndarray, path: Path, source: str | None = None) -> np.ndarray:
    """``affine`` as float64, or a one-line error when it is non-finite or collapses an axis.

    ``source`` names where the affine came from ("sform", "qform", "pixdim", ...) for the message.
    """
    affine = np.asarray(affine, dtype=np.float64)
    where = f" ({source})" if source else ""
    if not np.all(np.isfinite(affine)):
        raise MedsegError(f"{path}: invalid geometry{where}: non-finite affine")
    with np.errstate(all="ignore"):
        norms = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
        det = abs(float(np.linalg.det(affine[:3, :3])))
        collapsed = not (np.all(norms > 0) and np.isfinite(det) and det > 1e-6 * float(np.prod(norms)))
    if collapsed:
        raise MedsegError(f"{path}: invalid geometry{where}: singular affine (a zero voxel size or collapsed axes)")
    return affine


def sitk_to_ras_affine(image) -> np.ndarray:
    """RAS affine for array ``GetArrayFromImage(image).T`` (axes i, j, k) of a 3D SimpleITK image."""
    direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    spacing = np.asarray(image.GetSpacing(), dtype=np.float64)
    origin = np.asarray(image.GetOrigin(), dtype=np.float64)
    affine = np.eye(4)
    affine[:3, :3] = LPS_TO_RAS @ direction @ np.diag(spacing)
    affine[:3, 3] = LPS_TO_RAS @ origin
    return affine


# ---------------------------------------------------------------------------------------------- canonical views


def _orientation(affine: np.ndarray, axcodes: str) -> tuple[np.ndarray, np.ndarray]:
    """The file's axis orientation (nibabel ``ornt``) and the transform from it to ``axcodes`` order."""
    ornt = nib.orientations.io_orientation(affine)
    return ornt, nib.orientations.ornt_transform(ornt, nib.orientations.axcodes2ornt(tuple(axcodes)))


def canonical_view(array: np.ndarray, affine: np.ndarray, axcodes: str = "RAS"):
    """View ``array`` in ``axcodes`` axis order (transpose and flips; shares memory).

    Returns ``(view, ornt)``; :func:`from_canonical` with the same ``ornt`` restores the file's
    order, and :func:`canonical_spacing` gives the view's voxel sizes.
    """
    ornt, to_canon = _orientation(affine, axcodes)
    return nib.orientations.apply_orientation(array, to_canon), ornt


def from_canonical(array: np.ndarray, ornt: np.ndarray, axcodes: str = "RAS") -> np.ndarray:
    """Undo :func:`canonical_view`: ``array`` in ``axcodes`` order back to the file's order."""
    back = nib.orientations.ornt_transform(nib.orientations.axcodes2ornt(tuple(axcodes)), ornt)
    return nib.orientations.apply_orientation(array, back)


def canonical_spacing(affine: np.ndarray, ornt: np.ndarray) -> np.ndarray:
    """Voxel sizes (mm) along the canonical axes of :func:`canonical_view`."""
    spacing = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    out = np.empty(3)
    out[ornt[:, 0].astype(int)] = spacing  # file axis i becomes canonical axis ornt[i, 0] for RAS
    return out


# ---------------------------------------------------------------------------------------------- grids


def canonical_grid(affine: np.ndarray, shape: tuple[int, ...], axcodes: str = "RAS") -> tuple[tuple[int, ...], np.ndarray]:
    """Shape and affine of the same voxel grid viewed in ``axcodes`` axis order (no resampling)."""
    _, to_canon = _orientation(affine, axcodes)
    new_shape = tuple(int(shape[int(i)]) for i in np.argsort(to_canon[:, 0]))
    return new_shape, affine @ nib.orientations.inv_ornt_aff(to_canon, shape)


def grid_mismatch(a: Scan, b: Scan, tol: float | None = None) -> str | None:
    """Why ``b``'s voxel centres differ from ``a``'s, or None when both grids hold the same centres.

    Axis order and flips may differ (an image stored LPS with its mask stored LAS is fine); a
    shifted, cropped, resampled or rotated grid is not. ``tol`` (mm) defaults to 1 % of the
    smallest voxel size.
    """
    sa, aa = canonical_grid(a.affine, a.shape)
    sb, ab = canonical_grid(b.affine, b.shape)
    if sa != sb:
        return f"grid size {b.shape} does not match {a.shape} (in RAS order {sb} vs {sa})"
    if tol is None:
        tol = 0.01 * float(min(a.spacing.min(), b.spacing.min())) + 1e-4
    corners = np.array([[i, j, k, 1] for i in (0, sa[0] - 1) for j in (0, sa[1] - 1) for k in (0, sa[2] - 1)], float)
    gap = float(np.abs(corners @ aa.T - corners @ ab.T)[:, :3].max())
    if gap <= tol:
        return None
    spa, spb = np.sqrt((aa[:3, :3] ** 2).sum(0)), np.sqrt((ab[:3, :3] ** 2).sum(0))
    if not np.allclose(spa, spb, atol=tol):
        return f"voxel size {np.round(spb, 4).tolist()} mm does not match {np.round(spa, 4).tolist()} mm"
    shift = ab[:3, 3] - aa[:3, 3]
    if np.allclose(aa[:3, :3], ab[:3, :3], atol=1e-4):
        return f"grid is shifted by {np.round(shift, 3).tolist()} mm"
    return f"grid orientation differs (voxel centres up to {gap:.3f} mm apart)"


def array_on_grid_of(reference: Scan, other: Scan) -> np.ndarray:
    """``other``'s voxels in ``reference``'s axis order, for two scans on the same voxel grid.

    Both are :class:`~medseg.io.Scan`; their files may store the grid in different axis orders
    or flips. Raises :class:`~medseg.errors.MedsegError` naming ``other`` when the grids differ.
    """
    why = grid_mismatch(reference, other)
    if why is not None:
        raise MedsegError(f"{other.source}: {why} of {reference.source.name}")
    view, _ = canonical_view(other.array, other.affine)
    _, ref_ornt = canonical_view(reference.array[:1, :1, :1], reference.affine)
    return np.ascontiguousarray(from_canonical(view, ref_ornt))


# ---------------------------------------------------------------------------------------------- display orientation


def display_affine(ras_affine: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """The 4x4 map from display-array indices ``(S, P, L)`` to world ``(z, y, x)`` LPS mm."""
    _, view_affine = canonical_grid(ras_affine, shape[:3], AXES)
    return _REVERSE @ _RAS_TO_LPS @ view_affine @ _REVERSE


def to_display(array: np.ndarray, ras_affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(data, affine)`` for a viewer layer: voxels in ``(S, P, L)`` order (a view, no copy)."""
    view, _ = canonical_view(array, ras_affine, AXES)
    return view.transpose(2, 1, 0), display_affine(ras_affine, array.shape)


def from_display(data: np.ndarray, ras_affine: np.ndarray) -> np.ndarray:
    """Undo :func:`to_display`: a display-order array back in the scan's own voxel order."""
    ornt = nib.orientations.io_orientation(ras_affine)
    return np.ascontiguousarray(from_canonical(np.asarray(data).transpose(2, 1, 0), ornt, AXES))


def display_shape(shape: tuple[int, ...], ras_affine: np.ndarray) -> tuple[int, int, int]:
    """The display array's shape for a scan of ``shape`` (to check a Labels layer against its image)."""
    view, _ = canonical_grid(ras_affine, shape[:3], AXES)
    return view[2], view[1], view[0]


__all__ = [
    "AXES",
    "LPS_TO_RAS",
    "array_on_grid_of",
    "canonical_grid",
    "canonical_spacing",
    "canonical_view",
    "check_affine",
    "display_affine",
    "display_shape",
    "from_canonical",
    "from_display",
    "grid_mismatch",
    "sitk_to_ras_affine",
    "to_display",
]
