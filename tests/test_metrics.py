import math

import numpy as np

from medseg.metrics import dice_per_label, label_metrics, label_volumes_ml


def test_dice_and_hd95_known_values():
    ref = np.zeros((20, 20, 20), np.uint8)
    pred = np.zeros_like(ref)
    ref[5:15, 5:15, 5:15] = 1
    pred[6:16, 5:15, 5:15] = 1  # shifted by one voxel along x
    ref[0:2, 0:2, 0:2] = 2  # only in the reference
    m = label_metrics(pred, ref, {"background": 0, "a": 1, "b": 2, "c": 3}, spacing=(2.0, 1.0, 1.0), hd95=True)
    assert math.isclose(m["a"]["dice"], 2 * 900 / 2000, rel_tol=1e-6)
    assert math.isclose(m["a"]["hd95"], 2.0)  # one voxel of 2 mm
    assert m["b"]["dice"] == 0.0 and math.isnan(m["b"]["hd95"])
    assert math.isnan(m["c"]["dice"])  # absent from both: left out of means
    assert dice_per_label(pred, ref, {"a": 1})["a"] == m["a"]["dice"]


def test_volumes():
    labels = np.zeros((10, 10, 20), np.uint8)
    labels[:2, :5, :10] = 1  # 100 voxels
    labels[9, 9, 19] = 7
    assert label_volumes_ml(labels, 0.002, {"liver": 1}) == {"liver": 0.2, "7": 0.002}
