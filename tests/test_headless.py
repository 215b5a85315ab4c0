"""The core library works without Qt or napari (the plugin is a thin optional layer)."""

import subprocess
import sys

import pytest


@pytest.mark.slow
def test_core_imports_with_qt_and_napari_blocked():
    code = (
        "import sys\n"
        "for m in ('napari', 'PyQt5', 'PyQt6', 'PySide2', 'PySide6', 'qtpy', 'magicgui', 'vispy'):\n"
        "    sys.modules[m] = None\n"
        "import medseg, medseg.io, medseg.inference, medseg.training, medseg.data, medseg.display\n"
        "import medseg.evaluation, medseg.metrics, medseg.bundle, medseg.cli\n"
        "from medseg.cli import app\n"
        "assert 'napari' not in [k for k, v in sys.modules.items() if v is not None]\n"
        "print('ok')\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr
