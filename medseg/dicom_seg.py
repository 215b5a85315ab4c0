"""DICOM Segmentation objects in and out (highdicom), on a series' own slice grid.

:func:`write_seg` writes a label map as a BINARY SEG with one segment per label: SNOMED CT codes
for the organs it knows (:data:`ORGAN_CODES`; names with tumour, lesion or metastasis are
neoplasms) and a generic "Tissue" code otherwise, medseg's version and the model's name as the
algorithm identification, frames referencing the source slices and copying their patient and study.

:func:`read_seg` maps every frame back to the slice whose position it lies on, along the slice
normal (by its own PlanePositionSequence; by the referenced source instance when a frame has no
position), thresholds FRACTIONAL segments at 0.5 and keeps empty segments (as empty masks).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from .dicom_files import quiet_pydicom
from .dicom_grid import SliceGrid
from .errors import MedsegError, need_extra
from .io import atomic_write
from .labels import is_lesion
from .rtstruct import Structures
from .scan import reason

# normalised label name -> (SNOMED CT code, meaning); the category is Organ.
ORGAN_CODES = {
    "liver": ("10200004", "Liver"), "spleen": ("78961009", "Spleen"), "kidney": ("64033007", "Kidney"),
    "kidneyright": ("9846003", "Right kidney"), "rightkidney": ("9846003", "Right kidney"),
    "kidneyleft": ("18639004", "Left kidney"), "leftkidney": ("18639004", "Left kidney"),
    "pancreas": ("15776009", "Pancreas"), "lung": ("39607008", "Lung"), "heart": ("80891009", "Heart"),
    "bladder": ("89837001", "Urinary bladder"), "urinarybladder": ("89837001", "Urinary bladder"),
    "stomach": ("69695003", "Stomach"), "prostate": ("41216001", "Prostate"), "brain": ("12738006", "Brain"),
    "aorta": ("15825003", "Aorta"), "gallbladder": ("28231008", "Gallbladder"),
    "esophagus": ("32849002", "Esophagus"), "oesophagus": ("32849002", "Esophagus"),
    "duodenum": ("38848004", "Duodenum"), "colon": ("71854001", "Colon"),
}
NEOPLASM = ("108369006", "Neoplasm")
CATEGORIES = {"organ": ("91772007", "Organ"), "abnormal": ("49755003", "Morphologically Abnormal Structure"),
              "tissue": ("85756007", "Tissue")}


def property_codes(name: str) -> tuple[tuple[str, str], tuple[str, str]]:
    """(category, type) SNOMED CT (code, meaning) pairs for a label name."""
    key = re.sub(r"[^a-z]", "", name.lower())
    if key in ORGAN_CODES:
        return CATEGORIES["organ"], ORGAN_CODES[key]
    if is_lesion(name):
        return CATEGORIES["abnormal"], NEOPLASM
    return CATEGORIES["tissue"], CATEGORIES["tissue"]


def write_seg(
    labels: np.ndarray,
    names: dict[int, str],
    grid: SliceGrid,
    path: str | os.PathLike,
    *,
    algorithm: str = "medseg",
    version: str = "0",
    description: str = "",
) -> Path:
    """Write one segment per label value of ``names`` (value -> name) as a DICOM SEG at ``path``, atomically."""
    hd = need_extra("highdicom", "writing DICOM SEG")
    from pydicom.sr.codedict import Code
    from pydicom.uid import generate_uid

    grid.check_shape(labels, str(path))
    algo = hd.AlgorithmIdentificationSequence(name=algorithm[:64], version=version[:64],
                                              family=hd.sr.CodedConcept("123109", "DCM", "Artificial Intelligence"))
    values = sorted(names)
    segments = []
    for number, value in enumerate(values, start=1):
        category, kind = property_codes(names[value])
        segments.append(hd.seg.SegmentDescription(
            segment_number=number, segment_label=names[value][:64],
            segmented_property_category=Code(category[0], "SCT", category[1]),
            segmented_property_type=Code(kind[0], "SCT", kind[1]),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC, algorithm_identification=algo,
        ))
    numbered = np.zeros(labels.shape, dtype=np.uint16)
    for number, value in enumerate(values, start=1):
        numbered[labels == value] = number
    try:
        with quiet_pydicom():  # highdicom warns of person names such as "Anonymous"
            seg = hd.seg.Segmentation(
                source_images=grid.headers, pixel_array=np.ascontiguousarray(numbered.transpose(2, 1, 0)),
                segmentation_type=hd.seg.SegmentationTypeValues.BINARY, segment_descriptions=segments,
                series_instance_uid=generate_uid(), series_number=9002, sop_instance_uid=generate_uid(),
                instance_number=1, manufacturer="medseg", manufacturer_model_name=algorithm[:64],
                software_versions=version, device_serial_number="0",
                series_description=(description or f"{algorithm} segmentation")[:64], omit_empty_frames=True,
            )
    except (ValueError, TypeError, AttributeError, KeyError) as exc:
        raise MedsegError(f"{path}: cannot build the DICOM SEG from series {grid.series_uid} ({reason(exc)})") from None
    return atomic_write(path, lambda tmp: seg.save_as(tmp), suffix=".dcm")


def read_seg(path: str | os.PathLike, grid: SliceGrid) -> Structures:
    """Every segment of the DICOM SEG at ``path`` as a boolean mask on ``grid`` (``[column, row, slice]``)."""
    hd = need_extra("highdicom", "reading DICOM SEG")
    path = Path(path)
    with quiet_pydicom():
        try:
            seg = hd.seg.segread(path)
        except Exception as exc:
            raise MedsegError(f"{path}: not a readable DICOM SEG ({reason(exc)})") from None
        pixels = np.asarray(seg.pixel_array)
    pixels = pixels.reshape(-1, *pixels.shape[-2:])
    if pixels.shape[1:] != (grid.rows, grid.columns):
        raise MedsegError(f"{path}: frames of {pixels.shape[1]}x{pixels.shape[2]} pixels do not match "
                          f"series {grid.series_uid} ({grid.rows}x{grid.columns})")
    if str(seg.SegmentationType).upper() == "FRACTIONAL":
        pixels = pixels >= 0.5 * float(seg.get("MaximumFractionalValue", 255))
    _check_plane(path, seg, grid)
    names = {int(s.SegmentNumber): str(s.get("SegmentLabel", "") or f"segment {s.SegmentNumber}").strip()
             for s in seg.SegmentSequence}
    out = Structures({name: np.zeros(grid.shape, dtype=bool) for name in names.values()})
    uids = {uid: k for k, uid in enumerate(grid.uids())}
    shared = seg.SharedFunctionalGroupsSequence[0] if "SharedFunctionalGroupsSequence" in seg else {}
    for i, frame in enumerate(seg.PerFrameFunctionalGroupsSequence):
        ident = _item(frame, shared, "SegmentIdentificationSequence")
        if ident is None:
            raise MedsegError(f"{path}: frame {i + 1} has no SegmentIdentificationSequence (which segment is it?)")
        number = int(ident.ReferencedSegmentNumber)
        k = _frame_slice(path, i, frame, shared, grid, uids)
        out.masks[names.get(number, f"segment {number}")][:, :, k] |= pixels[i].astype(bool).T
    for name, mask in out.masks.items():
        if not mask.any():
            out.notes.append(f"{name}: empty segment")
    return out


def _check_plane(path: Path, seg, grid: SliceGrid) -> None:
    """The frames must lie in the series' slice planes, on its pixel grid."""
    shared = seg.SharedFunctionalGroupsSequence[0] if "SharedFunctionalGroupsSequence" in seg else None
    frames = seg.PerFrameFunctionalGroupsSequence
    def pick(seq: str, attr: str):
        for group in (shared, frames[0] if len(frames) else None):
            if group is not None and seq in group:
                return np.asarray(getattr(group[seq][0], attr), dtype=float)
        return None
    own, theirs = str(grid.headers[0].get("FrameOfReferenceUID", "")), str(seg.get("FrameOfReferenceUID", ""))
    if own and theirs and own != theirs:
        raise MedsegError(f"{path}: FrameOfReferenceUID {theirs} is not the frame of reference of series "
                          f"{grid.series_uid} ({own}): its frames are not in this scan's space")
    iop, spacing = pick("PlaneOrientationSequence", "ImageOrientationPatient"), pick("PixelMeasuresSequence", "PixelSpacing")
    if iop is not None and not np.allclose(iop, grid.orientation, atol=1e-3):
        raise MedsegError(f"{path}: ImageOrientationPatient {iop.tolist()} of the SEG frames is not the orientation "
                          f"of series {grid.series_uid} ({grid.orientation.tolist()})")
    if spacing is not None and not np.allclose(spacing, grid.pixel_spacing, rtol=1e-3):
        raise MedsegError(f"{path}: PixelSpacing {spacing.tolist()} of the SEG frames is not that of series "
                          f"{grid.series_uid} ({grid.pixel_spacing.tolist()})")


def _item(frame, shared, sequence: str):
    """A functional group's item, from the frame's own groups or else the shared ones."""
    for group in (frame, shared):
        if sequence in group and len(group[sequence].value):
            return group[sequence].value[0]
    return None


def _frame_slice(path: Path, i: int, frame, shared, grid: SliceGrid, uids: dict[str, int]) -> int:
    """The slice of frame ``i``: by its position along the normal, else by its referenced source image."""
    plane = _item(frame, shared, "PlanePositionSequence")
    if plane is not None:
        position = np.asarray(plane.ImagePositionPatient, dtype=float)
        k = grid.slice_at(position)
        if k is None:
            raise MedsegError(f"{path}: frame {i + 1} at {np.round(position, 2).tolist()} mm (LPS) lies on no slice "
                              f"of series {grid.series_uid}")
        offset = position - grid.positions[k]
        if np.abs(offset - (offset @ grid.normal) * grid.normal).max() > 0.01 * grid.pixel_spacing.min():
            raise MedsegError(f"{path}: frame {i + 1} at {np.round(position, 2).tolist()} mm (LPS) is shifted in-plane "
                              f"from slice {k} of series {grid.series_uid} (cropped SEG frames are not supported)")
        return k
    derivations = frame.get("DerivationImageSequence", []) or shared.get("DerivationImageSequence", [])
    for derivation in derivations:
        for source in derivation.get("SourceImageSequence", []):
            if str(source.ReferencedSOPInstanceUID) in uids:
                return uids[str(source.ReferencedSOPInstanceUID)]
    raise MedsegError(f"{path}: frame {i + 1} has no PlanePositionSequence and references no image of "
                      f"series {grid.series_uid}")


__all__ = ["ORGAN_CODES", "property_codes", "read_seg", "write_seg"]
