"""The installable package: a wheel built from this checkout, installed into a fresh virtual
environment that cannot see the checkout, and used from there. The model, the sample case, the
``medseg`` command and the napari plugin (``medseg_napari``) must all come from the wheel."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
from conftest import ROOT

pytestmark = pytest.mark.slow

RESOURCES = "medseg/resources/"
ORGANS = ("liver", "spleen", "kidney_right", "kidney_left")
# what the fresh environment may take from the development one: everything but medseg itself
# (its editable install would lead back into the checkout)
NOT_SHARED = re.compile(r"(medseg|medseg_napari|napari_plugin)([-.].*)?$|__editable__.*")


def _run(args, **kwargs) -> subprocess.CompletedProcess:
    r = subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=300, **kwargs)
    assert r.returncode == 0, f"{' '.join(map(str, args))}\n{r.stdout}\n{r.stderr}"
    return r


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """``pip wheel`` offline (no build isolation), from a copy of the sources setuptools reads:
    nothing is written into the checkout, and no stale build/ folder can slip into the wheel."""
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for name in ("medseg", "napari_plugin"):
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    dist = tmp_path_factory.mktemp("dist")
    _run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "--no-index",
          "-w", dist, src])
    (built,) = dist.glob("medseg-*.whl")
    return built


@pytest.fixture(scope="module")
def venv(wheel, tmp_path_factory) -> Path:
    """A fresh venv with the wheel installed; the heavy dependencies (torch, MONAI, napari, npe2)
    come from the development environment through a folder of links listed in a ``.pth`` file
    (a plain path line: the development environment's own ``.pth`` files, such as medseg's
    editable-install finder, are never run)."""
    root = tmp_path_factory.mktemp("fresh")
    env = root / "env"
    _run([sys.executable, "-m", "venv", "--without-pip", env])
    python = env / "bin" / "python"
    site = Path(_run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip())
    deps = root / "deps"
    deps.mkdir()
    for folder in dict.fromkeys(sysconfig.get_paths()[k] for k in ("purelib", "platlib")):
        for entry in Path(folder).iterdir():
            if not NOT_SHARED.match(entry.name) and not (deps / entry.name).exists():
                (deps / entry.name).symlink_to(entry)
    (site / "medseg_test_deps.pth").write_text(f"{deps}\n")
    _run([sys.executable, "-m", "pip", "--python", python, "install", "--quiet", "--no-deps", "--no-index", wheel])
    return env


@pytest.fixture(scope="module")
def outside(tmp_path_factory) -> dict:
    """Working folder and environment for commands run "elsewhere": no path leads to the checkout."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MEDSEG_MODEL", "PYTHONHOME")}
    return {"cwd": tmp_path_factory.mktemp("elsewhere"), "env": env}


def test_wheel_holds_model_sample_and_plugin(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    print(f"{wheel.name}:", *sorted(names), sep="\n  ")
    expected = {RESOURCES + n for n in ("model/model.json", "model/model.safetensors",
                                        "phantom_ct.nii.gz", "phantom_ct_labels.nii.gz")}
    assert expected | {"medseg_napari/napari.yaml"} <= names
    dicom = sorted(p.name for p in (ROOT / RESOURCES / "phantom_ct_dicom").glob("*.dcm"))
    assert len(dicom) == 48
    assert sorted(n.rsplit("/", 1)[1] for n in names if n.startswith(RESOURCES + "phantom_ct_dicom/")) == dicom
    assert not any(n.startswith("napari_plugin/") for n in names)
    # the package list in pyproject.toml is explicit: every module of the checkout must be in it
    modules = {p.relative_to(ROOT).as_posix() for p in (ROOT / "medseg").rglob("*.py")}
    modules |= {f"medseg_napari/{p.name}" for p in (ROOT / "napari_plugin").glob("*.py")}
    assert modules <= names, sorted(modules - names)
    (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "medseg = medseg_napari:napari.yaml" in text and "medseg = medseg.cli:main" in text


CHECKS = """
import json, sys
import numpy as np
import medseg, medseg_napari, npe2
from medseg.bundle import default_bundle_path
from medseg.resources import SAMPLE_DICOM, SAMPLE_LABELS, sample_path
from medseg_napari._reader import get_reader

manifest = npe2.PluginManifest.from_distribution("medseg")  # as `npe2 validate medseg --imports`
manifest.validate_imports()
pm = npe2.PluginManager()
pm.discover()
found = pm.get_manifest("medseg")
path = str(sample_path(SAMPLE_DICOM))
data, kwargs, kind = get_reader(path)(path)[0]
print(json.dumps({
    "files": [medseg.__file__, medseg_napari.__file__, str(default_bundle_path()), path, str(sample_path(SAMPLE_LABELS))],
    "manifest_commands": sorted(c.python_name for c in found.contributions.commands),
    "readers": sorted(r.plugin_name for r in pm.iter_compatible_readers([path])),
    "kind": kind, "shape": list(np.shape(data)),
    "spacing": np.abs(np.diag(np.asarray(kwargs["affine"]))[:3]).round(4).tolist(),
}))
"""


def test_installed_wheel_works_without_the_checkout(venv, outside):
    python = venv / "bin" / "python"
    r = _run([python, "-c", CHECKS], **outside)
    facts = json.loads(r.stdout.strip().splitlines()[-1])
    for f in facts["files"]:
        assert Path(f).resolve().is_relative_to(venv.resolve()), f  # nothing comes from the checkout
    assert all(name.startswith("medseg_napari.") for name in facts["manifest_commands"])
    assert "medseg" in facts["readers"]
    assert facts["kind"] == "image" and facts["shape"] == [48, 176, 176]  # display order (z, y, x)
    assert facts["spacing"] == [4.5, 2.1, 2.1]

    version = _run([venv / "bin" / "medseg", "--version"], **outside).stdout
    import medseg

    assert version == f"medseg {medseg.__version__}\n"

    dicom, labels = facts["files"][3:]
    seg = _run([venv / "bin" / "medseg", "segment", dicom, "-o", "m.nii.gz", "--reference", labels, "--device", "cpu"],
               **outside)
    assert (outside["cwd"] / "m.nii.gz").is_file()
    scores = seg.stdout.split("Dice against the reference", 1)[1]
    for organ in ORGANS:
        dice = float(re.search(rf"\b{organ}\b\W+([01]\.\d+)", scores).group(1))
        assert dice >= 0.9, (organ, dice, seg.stdout)
