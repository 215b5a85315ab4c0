"""Run every class of hostile input through the `medseg` command and print a Markdown table:
input class, command, what medseg printed (its error/warning lines), exit code.

    python docs/bad_inputs.py > docs/bad_inputs.md

Everything is generated in a temporary folder (small phantoms, pydicom, nibabel); nothing
outside it is written. It takes a few minutes on 2 CPU cores (each row is a new process).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom

from medseg.bundle import default_bundle_path
from medseg.phantom import make_dataset, make_phantom, write_dicom_series, write_nifti


def _series(root: Path, name: str) -> tuple[Path, list[Path]]:
    folder = root / name
    files = write_dicom_series(make_phantom(7, shape=(40, 36, 10)), folder)
    return folder, files


def _edit(path: Path, **fields) -> None:
    ds = pydicom.dcmread(str(path))
    for key, value in fields.items():
        if value is None:
            delattr(ds, key)
        else:
            setattr(ds, key, value)
    ds.save_as(str(path))


def _nifti(root: Path, name: str, data: np.ndarray, affine=None, **header) -> Path:
    img = nib.Nifti1Image(data, np.diag([2.0, 2.0, 4.0, 1.0]) if affine is None else affine)
    for key, value in header.items():
        img.header[key] = value
    path = root / name
    nib.save(img, str(path))
    return path


def _dicom_objects(root: Path, clean: Path, out: Path) -> list[tuple[str, list[str]]]:
    """RTSTRUCT / SEG in and out: DICOM formats on a NIfTI, broken ROI maps, contours on no slice,
    another frame of reference, ROI names that match nothing."""
    from medseg.dicom_grid import read_grid
    from medseg.rtstruct import write_rtstruct

    rows = [("--format dicom-seg on a NIfTI", ["segment", clean, "-o", out / "m.dcm", "--format", "dicom-seg"])]
    studies = root / "studies"
    files = write_dicom_series(make_phantom(8, shape=(40, 36, 10)), studies / "P1" / "CT")
    grid = read_grid(studies / "P1" / "CT")
    labels = np.zeros(grid.shape, np.uint8)
    labels[10:20, 10:20, 3:7] = 1
    write_rtstruct(labels, {1: "Liver"}, grid, studies / "P1" / "rt.dcm")
    roi_map = root / "roi_map.json"
    roi_map.write_text(json.dumps({"liver": ["liver"]}))
    (root / "bad_map.json").write_text('{"liver": "liver", "spleen": ["Liver"]}')
    rows.append(("import-dicom: one ROI name under two labels",
                 ["import-dicom", studies, root / "ds_bad_map", "--roi-map", root / "bad_map.json"]))
    (root / "other_map.json").write_text(json.dumps({"heart": ["heart"]}))
    rows.append(("import-dicom: no ROI matches the map",
                 ["import-dicom", studies, root / "ds_none", "--roi-map", root / "other_map.json"]))
    off = root / "off_slice"
    shutil.copytree(studies, off)
    ds = pydicom.dcmread(str(off / "P1" / "rt.dcm"))
    contour = ds.ROIContourSequence[0].ContourSequence[0]
    pts = np.asarray(contour.ContourData, float).reshape(-1, 3)
    pts[:, 2] += 0.5 * grid.gap(0)
    contour.ContourData = [f"{v:.3f}" for v in pts.ravel()]
    ds.save_as(str(off / "P1" / "rt.dcm"))
    rows.append(("RTSTRUCT: a contour between two slices", ["import-dicom", off, root / "ds_off", "--roi-map", roi_map]))
    other = root / "other_frame"
    shutil.copytree(studies, other)
    ds = pydicom.dcmread(str(other / "P1" / "rt.dcm"))
    ds.ReferencedFrameOfReferenceSequence[0].FrameOfReferenceUID = "1.2.3.4"
    ds.save_as(str(other / "P1" / "rt.dcm"))
    rows.append(("RTSTRUCT: another frame of reference", ["import-dicom", other, root / "ds_for", "--roi-map", roi_map]))
    assert files
    return rows


def build(root: Path) -> list[tuple[str, list[str]]]:
    """(input class, medseg arguments) rows; fixtures are written under ``root``."""
    rows: list[tuple[str, list[str]]] = []
    out = root / "out"
    ph = make_phantom(7, shape=(40, 36, 10))
    clean = root / "clean.nii.gz"
    write_nifti(ph, clean, root / "clean_labels.nii.gz")
    labels = root / "clean_labels.nii.gz"

    # DICOM geometry
    for name, edit in [
        ("IPP holds NaN", {"ImagePositionPatient": ["nan", "0", "12"]}),
        ("IPP missing", {"ImagePositionPatient": None}),
        ("IOP not orthogonal", {"ImageOrientationPatient": ["1", "0", "0", "0.5", "0.866", "0"]}),
        ("IOP zero vector", {"ImageOrientationPatient": ["0", "0", "0", "0", "1", "0"]}),
        ("PixelSpacing 0", {"PixelSpacing": ["0", "0.8"]}),
        ("PixelSpacing missing", {"PixelSpacing": None}),
    ]:
        folder, files = _series(root, name.replace(" ", "_"))
        _edit(files[4], **edit)
        rows.append((f"DICOM: one slice's {name}", ["segment", folder, "-o", out / "m.nii.gz"]))
    folder, files = _series(root, "truncated")
    data = files[3].read_bytes()
    files[3].write_bytes(data[: len(data) // 2])
    rows.append(("DICOM: one slice truncated", ["segment", folder, "-o", out / "m.nii.gz"]))
    folder, files = _series(root, "random")
    files[3].write_bytes(np.random.default_rng(0).bytes(5000))
    rows.append(("DICOM: one slice is random bytes", ["segment", folder, "-o", out / "m.nii.gz"]))
    folder, files = _series(root, "with_rt")
    shutil.copy(pydicom.data.get_testdata_file("rtstruct.dcm"), folder / "rtstruct.dcm")
    rows.append(("DICOM: an RTSTRUCT beside the series (skipped)", ["info", folder]))

    # NIfTI headers and voxel values
    rows.append(("NIfTI: scl_slope NaN", ["segment", _nifti(root, "slope_nan.nii.gz", ph.image.astype(np.int16),
                                                            scl_slope=np.nan, scl_inter=0), "-o", out / "m.nii.gz"]))
    rows.append(("NIfTI: scl_slope 1e38", ["segment", _nifti(root, "slope_big.nii.gz", ph.image.astype(np.int16),
                                                             scl_slope=1e38, scl_inter=0), "-o", out / "m.nii.gz"]))
    rows.append(("scan: all NaN", ["segment", _nifti(root, "nan.nii.gz", np.full(ph.image.shape, np.nan, np.float32)),
                                   "-o", out / "m.nii.gz"]))
    rows.append(("scan: constant", ["segment", _nifti(root, "constant.nii.gz", np.full(ph.image.shape, 40, np.int16)),
                                    "-o", out / "m.nii.gz"]))
    with np.errstate(over="ignore"):
        huge = ph.image.astype(np.float32) * np.float32(1e30)
    rows.append(("scan: values x 1e30", ["segment", _nifti(root, "huge.nii.gz", huge), "-o", out / "m.nii.gz"]))
    part = ph.image.astype(np.float32)
    part[:, :, 3] = np.nan
    rows.append(("scan: one slice NaN", ["segment", _nifti(root, "part_nan.nii.gz", part), "-o", out / "p.nii.gz"]))
    rows.append(("scan: CT without rescale intercept",
                 ["segment", _nifti(root, "raw.nii.gz", (ph.image + 1024).astype(np.int16)), "-o", out / "r.nii.gz"]))
    rows.append(("info on a partly-NaN scan", ["info", root / "part_nan.nii.gz"]))

    # model bundles
    for name, change in [("CT window inverted", {"preprocessing": {"kind": "ct_window", "window": [300, -200]}}),
                         ("spacing 0", {"spacing": [0, 2]}), ("label value a string", {"labels": {"background": 0,
                                                                                                     "liver": "one"}})]:
        bundle = root / f"bundle_{name.replace(' ', '_')}"
        shutil.copytree(default_bundle_path(), bundle)
        card = json.loads((bundle / "model.json").read_text())
        card.update(change)
        (bundle / "model.json").write_text(json.dumps(card))
        rows.append((f"model.json: {name}", ["segment", clean, "-o", out / "m.nii.gz", "--model", bundle]))
    bundle = root / "bundle_nan"
    shutil.copytree(default_bundle_path(), bundle)
    from safetensors.torch import load_file, save_file

    state = load_file(str(bundle / "model.safetensors"))
    key = sorted(state)[0]
    state[key] = state[key].float() * float("nan")
    save_file(state, str(bundle / "model.safetensors"))
    rows.append(("model weights hold NaN", ["segment", clean, "-o", out / "m.nii.gz", "--model", bundle]))

    # references
    rows.append(("--reference is a float map", ["segment", clean, "-o", out / "m.nii.gz", "--reference",
                                                _nifti(root, "float_ref.nii.gz", ph.labels.astype(np.float32) + 0.5,
                                                       affine=nib.load(str(labels)).affine)]))
    rows.append(("--reference is the CT itself", ["segment", clean, "-o", out / "m.nii.gz", "--reference", clean]))

    # outputs
    rows.append(("-o is the --reference", ["segment", clean, "-o", labels, "--reference", labels]))
    rows.append(("-o inside the DICOM input", ["segment", root / "with_rt", "-o", root / "with_rt" / "m.nii.gz"]))
    rows.append(("-o in /proc", ["segment", clean, "-o", "/proc/medseg/m.nii.gz"]))
    ds = make_dataset(root / "ds", [1, 2, 3], shape=(32, 32, 6))
    rows.append(("phantom into an existing dataset", ["phantom", ds, "--seeds", "4"]))
    rows.append(("phantom --seeds 5-1", ["phantom", root / "new_ds", "--seeds", "5-1"]))

    rows += _dicom_objects(root, clean, out)

    # batch
    tree = root / "batch_in"
    (tree / "a").mkdir(parents=True)
    shutil.copy(clean, tree / "a" / "x.nii.gz")
    shutil.copy(clean, tree / "a" / "x.nii")
    os.symlink(tree, tree / "a" / "loop")
    os.symlink(root / "nowhere.nii.gz", tree / "dangling.nii.gz")
    rows.append(("batch: symlink loop, dangling link, x.nii + x.nii.gz",
                 ["batch", tree, root / "batch_out", "--recursive"]))
    rows.append(("batch into /proc", ["batch", tree, "/proc/medseg"]))

    # options and JSON files
    rows.append(("--device tpu9", ["segment", clean, "-o", out / "m.nii.gz", "--device", "tpu9"]))
    bad_ds = root / "bad_ds"
    shutil.copytree(ds, bad_ds)
    meta = json.loads((bad_ds / "dataset.json").read_text())
    meta["labels"]["liver"] = "x"
    (bad_ds / "dataset.json").write_text(json.dumps(meta))
    rows.append(("dataset.json label value 'x'", ["check-dataset", bad_ds]))
    dup_ds = root / "dup_ds"
    shutil.copytree(ds, dup_ds)
    meta = json.loads((dup_ds / "dataset.json").read_text())
    meta["labels"]["spleen"] = meta["labels"]["liver"]
    (dup_ds / "dataset.json").write_text(json.dumps(meta))
    rows.append(("dataset.json duplicate label values", ["check-dataset", dup_ds]))
    miss_ds = root / "miss_ds"
    shutil.copytree(ds, miss_ds)
    (miss_ds / "labelsTr" / "phantom_0002.nii.gz").unlink()
    rows.append(("dataset: a label file missing", ["check-dataset", miss_ds]))
    (root / "afile").write_text("x")
    small = ["--epochs", "1", "--steps-per-epoch", "1", "--width", "4", "--crop", "32", "--val-cases", "1", "--no-hd95"]
    rows.append(("train -o is a file", ["train", ds, "-o", root / "afile", *small]))
    float_ds = root / "float_ds"
    shutil.copytree(ds, float_ds)
    lab = nib.load(str(float_ds / "labelsTr" / "phantom_0001.nii.gz"))
    nib.save(nib.Nifti1Image(np.asarray(lab.dataobj).astype(np.float32) * 1.5, lab.affine),
             str(float_ds / "labelsTr" / "phantom_0001.nii.gz"))
    rows.append(("train with float labels", ["train", float_ds, "-o", root / "run_float", *small]))
    rows.append(("train --epochs 2 --steps-per-epoch 5 (works)",
                 ["train", ds, "-o", root / "run_2x5", "--epochs", "2", "--steps-per-epoch", "5", "--width", "4",
                  "--crop", "32", "--val-cases", "1", "--no-hd95"]))
    run = root / "run_2x5"
    return rows + [("resume with config.json epochs 'many'", ["train", ds, "-o", run, "--resume"])]


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        rows = build(root)
        print("| input class | command | medseg printed | exit |")
        print("| --- | --- | --- | --- |")
        for name, args in rows:
            if name.startswith("resume with config.json"):
                cfg = json.loads((root / "run_2x5" / "config.json").read_text())
                cfg["epochs"] = "many"
                (root / "run_2x5" / "config.json").write_text(json.dumps(cfg))
            r = subprocess.run([sys.executable, "-m", "medseg.cli", *map(str, args)], capture_output=True, text=True,
                               timeout=600, env={**os.environ, "COLUMNS": "400"})
            said = [ln.strip() for ln in r.stderr.splitlines()
                    if ln.startswith(("error:", "warning:", "failed:", "skipped:", "problem:"))]
            if not said and "Traceback" in r.stderr:
                said = ["TRACEBACK"]
            shown = " / ".join(said).replace(str(root) + "/", "").replace("|", "\\|") or "(nothing; exit as shown)"
            command = "medseg " + " ".join(str(a).replace(str(root) + "/", "") for a in args[:2])
            print(f"| {name} | `{command}` | {shown} | {r.returncode} |", flush=True)


if __name__ == "__main__":
    main()
