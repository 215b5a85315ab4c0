"""`make eval`: the README's quality table is rebuilt from an evaluation report, not typed in."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest

from medseg.errors import MedsegError
from medseg.evaluation import Evaluation

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("eval_table", ROOT / "docs" / "eval_table.py")
eval_table = importlib.util.module_from_spec(spec)
spec.loader.exec_module(eval_table)


def _report() -> dict:
    rows = [
        {"case": "a", "label": "liver", "value": 1, "dice": 0.9, "hd95": 2.0, "pred_ml": 1.0, "ref_ml": 1.0},
        {"case": "b", "label": "liver", "value": 1, "dice": 0.8, "hd95": 4.0, "pred_ml": 1.0, "ref_ml": 1.0},
        {"case": "a", "label": "liver_tumour", "value": 5, "dice": math.nan, "hd95": math.nan, "pred_ml": 0, "ref_ml": 0},
        {"case": "b", "label": "liver_tumour", "value": 5, "dice": 0.5, "hd95": math.nan, "pred_ml": 1.0, "ref_ml": 2.0},
    ]
    ev = Evaluation(rows=rows, labels={"background": 0, "liver": 1, "liver_tumour": 5})
    return _as_json(ev.to_dict())


def _as_json(value):
    """NaN -> None, as in evaluation.json."""
    if isinstance(value, dict):
        return {k: _as_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_as_json(v) for v in value]
    return None if isinstance(value, float) and not math.isfinite(value) else value


def test_table_has_mean_lowest_and_hd95_per_label():
    text = eval_table.table(_report())
    lines = text.splitlines()
    assert lines[0] == "| | liver | liver tumour |"
    assert lines[2] == "| mean Dice | 0.850 | 0.500 |"
    assert lines[3] == "| lowest Dice | 0.800 | 0.500 |"
    assert lines[4] == "| mean HD95 (mm) | 3.0 | n/a |"
    assert "2 cases, mean Dice over labels 0.675." in text


def test_readme_is_updated_between_the_markers_only(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("before\n<!-- eval-table -->\nold table\n<!-- /eval-table -->\nafter\n")
    eval_table.update_readme(readme, "new table\n")
    assert readme.read_text() == "before\n<!-- eval-table -->\nnew table\n<!-- /eval-table -->\nafter\n"
    readme.write_text("no markers\n")
    with pytest.raises(MedsegError, match="markers"):
        eval_table.update_readme(readme, "x\n")
    assert readme.read_text() == "no markers\n"


def test_the_readme_has_the_markers():
    body = (ROOT / "README.md").read_text()
    assert body.count(eval_table.START) == 1 and body.count(eval_table.END) == 1
