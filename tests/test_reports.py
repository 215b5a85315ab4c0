"""medseg.reports: CSV/JSON tables (NaN handling, column order, atomic writes), previews, curves."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest

from medseg.errors import MedsegError
from medseg.io import Scan
from medseg.reports import (
    csv_text,
    jsonable,
    plot_curves,
    write_csv,
    write_history,
    write_json,
    write_preview,
)

PNG = b"\x89PNG\r\n\x1a\n"


def test_csv_nan_is_an_empty_cell_and_columns_keep_first_seen_order(tmp_path):
    rows = [{"case": "a", "dice": math.nan, "ml": 1.23456789}, {"case": "b", "extra": 3, "dice": 0.5}]
    path = write_csv(tmp_path / "t.csv", rows)
    lines = path.read_text().splitlines()
    assert lines[0] == "case,dice,ml,extra"
    back = list(csv.DictReader(open(path)))
    assert back[0] == {"case": "a", "dice": "", "ml": "1.23456789", "extra": ""}
    assert back[1] == {"case": "b", "dice": "0.5", "ml": "", "extra": "3"}


def test_csv_given_columns_and_rounding():
    text = csv_text([{"b": 1.0 / 3, "a": math.nan, "ignored": 1}], ["a", "b"], digits=3)
    assert text == "a,b\n,0.333\n"
    # nan=None keeps Python's spelling (training history)
    assert csv_text([{"x": math.nan}], nan=None) == "x\nnan\n"


def test_json_nan_and_inf_round_trip_as_null(tmp_path):
    data = {"a": math.nan, "b": [1.5, math.inf, {"c": -math.inf}], "d": (1, "x"), "e": None}
    path = write_json(tmp_path / "t.json", data)
    text = path.read_text()
    assert text.endswith("\n") and "NaN" not in text and "Infinity" not in text
    assert json.loads(text) == {"a": None, "b": [1.5, None, {"c": None}], "d": [1, "x"], "e": None}
    assert jsonable(2.0) == 2.0 and jsonable(math.nan) is None


def test_failed_write_leaves_the_old_file_and_no_partial(tmp_path):
    path = write_json(tmp_path / "t.json", {"old": 1})
    with pytest.raises(TypeError):  # not serialisable: fails before anything is written
        write_json(path, {"new": object()})
    with pytest.raises(MedsegError, match="t.csv"):  # the folder is gone: a one-line error naming the file
        write_csv(tmp_path / "missing" / "t.csv", [{"a": 1}])
    (tmp_path / "d.csv").mkdir()  # written in full to a temporary file, then the rename fails
    with pytest.raises(MedsegError, match="d.csv: cannot write"):
        write_csv(tmp_path / "d.csv", [{"a": 1}])
    assert json.loads(path.read_text()) == {"old": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.csv", "t.json"]  # no temporary file left


def test_history_and_curves(tmp_path):
    rows = [{"epoch": e, "loss": 1.0 / e, "mean_dice": 0.2 * e, "dice_liver": 0.2 * e, "lr": 0.01} for e in (1, 2, 3)]
    rows[0]["dice_liver"] = math.nan
    hist = write_history(tmp_path / "history.csv", rows)
    assert hist.read_bytes().startswith(b"epoch,loss,mean_dice,dice_liver,lr\r\n")
    back = list(csv.DictReader(open(hist)))
    assert [int(r["epoch"]) for r in back] == [1, 2, 3] and back[0]["dice_liver"] == "nan"
    png = plot_curves(tmp_path / "curves.png", rows)
    assert png.read_bytes()[:8] == PNG
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_preview_shows_the_mask(tmp_path):
    rng = np.random.default_rng(0)
    image = rng.normal(40, 10, (24, 20, 10)).astype(np.float32)
    labels = np.zeros(image.shape, np.uint8)
    labels[8:16, 6:14, 3:7] = 1
    scan = Scan(array=image, affine=np.diag([2.0, 2.0, 4.0, 1.0]), source=tmp_path / "case.nii.gz", modality="CT")
    path = write_preview(scan, labels, tmp_path / "sub" / "case.png", {"background": 0, "liver": 1})
    import matplotlib.image as mpimg

    picture = mpimg.imread(str(path))
    assert picture.shape[1] > picture.shape[0] > 100  # four panels side by side
    # the overlay colours some pixels: not every pixel is grey
    rgb = picture[..., :3]
    assert np.any(np.abs(rgb[..., 0] - rgb[..., 1]) > 0.1)
