"""Reader: DICOM series folders and NIfTI / NRRD / MHA files, through medseg's own loader."""

from __future__ import annotations

from pathlib import Path

from medseg.dicom import looks_like_dicom
from medseg.io import NIFTI_SUFFIXES, SITK_SUFFIXES, load_scan

from ._layers import image_layer, labels_layer, scan_name

# The scan files our manifest's reader claims (napari.yaml's filename_patterns).
SCAN_PATTERNS = ("*.nii", "*.nii.gz", "*.nrrd", "*.nhdr", "*.mha", "*.mhd", "*.dcm", "*.dicom", "*.dic", "*.ima")


def prefer_medseg_reader() -> list[str]:
    """Make medseg napari's reader for the scan file patterns the user has not given a reader yet.

    napari's built-in reader also claims .nii, .dcm, .mha, .nrrd ..., so without a preference
    napari asks "choose reader" for every scan. A preference the user set is never changed;
    Preferences > Plugins undoes ours. Returns the patterns set now.
    """
    from napari.settings import get_settings

    plugins = get_settings().plugins
    current = dict(plugins.extension2reader)
    added = [p for p in SCAN_PATTERNS if p not in current]
    if added:
        plugins.extension2reader = {**current, **dict.fromkeys(added, "medseg")}
    return added


def _is_dicom_file(path: Path) -> bool:
    return path.suffix.lower() == ".dcm" or looks_like_dicom(path)


def readable(path: Path) -> bool:
    """Quick test (no pixel data read): a scan file, a DICOM file, or a folder holding DICOM files."""
    if path.is_dir():
        for n, child in enumerate(sorted(path.iterdir())):
            if n > 64:
                break
            if child.is_file() and not child.name.startswith(".") and _is_dicom_file(child):
                return True
        return False
    name = path.name.lower()
    if name.endswith(tuple(NIFTI_SUFFIXES) + tuple(SITK_SUFFIXES)):
        return True
    return path.is_file() and looks_like_dicom(path)  # what load_scan reads as one DICOM file


def get_reader(path):
    """npe2 reader contribution: a reader for scans medseg can load, else None (other readers try)."""
    if isinstance(path, (list, tuple)):
        if len(path) != 1:
            return None
        path = path[0]
    p = Path(path)
    if not p.exists() or not readable(p):
        return None
    return read_scan


def read_scan(path) -> list[tuple]:
    """Layer data for one scan: voxels in world position (affine), CT window, source Scan in metadata;
    for a DICOM study folder, also a Labels layer per RTSTRUCT / SEG that references the series.

    Problems (mixed series, irregular slice spacing, corrupt files) raise medseg's one-line
    error, which napari shows as a notification; a label object that cannot be read is a warning.
    """
    if isinstance(path, (list, tuple)):
        path = path[0]
    scan = load_scan(path)
    layers = [image_layer(scan)]
    if scan.series_uid is not None:
        layers += structure_layers(scan)
    return layers


def structure_layers(scan) -> list[tuple]:
    """A Labels layer per RTSTRUCT / SEG in the scan's DICOM folder that references its series."""
    import warnings

    from medseg.dicom_import import labels_of_series
    from medseg.errors import MedsegWarning

    layers = []
    for found in labels_of_series(scan.source, scan.series_uid):
        if found.error is not None:
            warnings.warn(MedsegWarning(found.error), stacklevel=2)
            continue
        for note in found.notes:
            warnings.warn(MedsegWarning(f"{found.obj.path}: {note}"), stacklevel=2)
        name = f"{scan_name(scan)} {found.obj.kind} {found.obj.path.stem}"
        data, kwargs, kind = labels_layer(found.labels, scan, {"background": 0, **found.names}, name)
        kwargs["metadata"]["label_object"] = str(found.obj.path)
        layers.append((data, kwargs, kind))
    return layers
