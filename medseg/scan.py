"""A scan in memory, and what the readers (:mod:`medseg.nifti`, :mod:`medseg.dicom`,
SimpleITK files here) share: native voxel arrays, SimpleITK without its console noise, and the
one-line reason of a library's exception.

A :class:`Scan` is a voxel array indexed ``[i, j, k]`` in the order the file stores it, and the
4x4 affine that maps ``(i, j, k, 1)`` to RAS world millimetres (the nibabel convention).
:func:`medseg.io.load_scan` is the way in; this module imports no reader, so the readers can
import it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np

from .errors import MedsegError
from .geometry import check_affine, sitk_to_ras_affine


@dataclass
class Scan:
    """A 3D scan and its geometry.

    ``array[i, j, k]`` is the voxel whose centre lies at ``affine @ (i, j, k, 1)`` in RAS mm.
    ``header`` is the source NIfTI header when there is one, so masks keep its qform/sform codes.
    """

    array: np.ndarray
    affine: np.ndarray
    source: Path
    modality: str | None = None
    series_uid: str | None = None
    description: str = ""
    header: nib.Nifti1Header | None = field(default=None, repr=False)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(n) for n in self.array.shape)  # type: ignore[return-value]

    @property
    def spacing(self) -> np.ndarray:
        """Voxel size in mm along array axes 0, 1, 2."""
        return np.sqrt((self.affine[:3, :3] ** 2).sum(axis=0))

    @property
    def origin(self) -> np.ndarray:
        """RAS position (mm) of the centre of voxel (0, 0, 0)."""
        return self.affine[:3, 3].copy()

    @property
    def direction(self) -> np.ndarray:
        """3x3 RAS direction cosines; column n is the world direction of array axis n."""
        return self.affine[:3, :3] / self.spacing

    @property
    def voxel_volume_ml(self) -> float:
        return float(abs(np.linalg.det(self.affine[:3, :3]))) / 1000.0

    @property
    def axcodes(self) -> tuple[str, str, str]:
        return nib.aff2axcodes(self.affine)


def native_array(arr: np.ndarray, path: Path) -> np.ndarray:
    if arr.dtype.kind == "b":
        return arr.astype(np.uint8)
    if arr.dtype.kind not in "iuf":
        raise MedsegError(f"{path}: unsupported voxel type {arr.dtype} (expected integer or real values)")
    if not arr.dtype.isnative:
        arr = arr.astype(arr.dtype.newbyteorder("="))
    return arr


def sitk_module():
    """SimpleITK, with ITK's warning output (printed straight onto stderr) switched off."""
    import SimpleITK as sitk

    sitk.ProcessObject_SetGlobalWarningDisplay(False)
    return sitk


def sitk_array(image, path: Path) -> np.ndarray:
    sitk = sitk_module()

    if image.GetNumberOfComponentsPerPixel() != 1:
        raise MedsegError(
            f"{path}: {image.GetNumberOfComponentsPerPixel()} components per voxel (colour or vector image); "
            "expected a scalar volume"
        )
    if image.GetDimension() != 3:
        raise MedsegError(f"{path}: expected a 3D volume, got a {image.GetDimension()}D image of size {image.GetSize()}")
    # SimpleITK arrays are (k, j, i); transpose to (i, j, k) without copying.
    return native_array(sitk.GetArrayFromImage(image).transpose(2, 1, 0), path)


def load_sitk_file(path: Path) -> Scan:
    """An NRRD/MHA/MHD file (SimpleITK), its LPS geometry turned into a RAS affine."""
    sitk = sitk_module()

    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise MedsegError(f"{path}: cannot read image ({reason(exc)})") from None
    if image.GetDimension() == 4 and image.GetSize()[3] == 1:
        image = image[:, :, :, 0]
    return Scan(array=sitk_array(image, path), affine=check_affine(sitk_to_ras_affine(image), path), source=path)


# Noise in ITK/SimpleITK exception texts: wrapper, C++ source locations, class and object address.
_ITK_NOISE = re.compile(
    r"Exception thrown in SimpleITK \w+:|\S+\.(?:cxx|cpp|cc|hxx|txx|h):\d+:?|"
    r"(?:ITK|itk::|sitk::)\s*ERROR:\s*(?:\w+\(0x[0-9A-Fa-f]+\):)?"
)


def reason(exc: BaseException) -> str:
    """The meaningful part of an exception message, on one line (ITK's are several lines long and
    name C++ source files); quoted paths are shortened to their file name."""
    text = _ITK_NOISE.sub(" ", str(exc))
    text = re.sub(r'"(?:[^"]*/)([^"/]+)"', r'"\1"', text)
    lines = [" ".join(ln.split()) for ln in text.splitlines() if ln.strip(" :")]
    for ln in lines:
        if "description:" in ln.lower():
            return ln.split(":", 1)[1].strip()[:200]
    return lines[0].strip(" :")[:200] if lines else type(exc).__name__


__all__ = ["Scan", "load_sitk_file", "native_array", "reason", "sitk_array", "sitk_module"]
