"""`medseg train` hardening: LR schedules for every step count, clean exits, config.json and -o checks."""

import json
import math
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import hash_tree as hashes
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from medseg.errors import MedsegError
from medseg.phantom import make_dataset
from medseg.config import TrainConfig, make_optimizer, onecycle_pct_start
from medseg.training import train

SCHEDULES = ["onecycle", "cosine", "poly", "constant"]
SHAPE, SPACING = (32, 32, 8), (10.0, 10.0, 20.0)


def tiny_cfg(**kw) -> TrainConfig:
    base = dict(epochs=1, steps_per_epoch=1, batch_size=2, width=4, crop=32, spacing=(10.0, 10.0), val_cases=1,
                device="cpu", hd95=False, lr=0.01, cache_workers=1)
    return TrainConfig(**{**base, **kw})



@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("ds") / "ds", [1, 2, 3], shape=SHAPE, spacing=SPACING)


@pytest.fixture(scope="module")
def finished_run(dataset, tmp_path_factory):
    """A real one-epoch run (config.json, checkpoint.pt, best/, last/) to resume or fine-tune from."""
    run = tmp_path_factory.mktemp("runs") / "run"
    train(dataset, run, tiny_cfg())
    return run


def _cli(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "medseg.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout)


def _one_line_error(r, expect: str) -> None:
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 1, (r.returncode, r.stderr[-2000:])
    assert len(lines) == 1 and lines[0].startswith("error: ") and expect in lines[0], r.stderr
    assert "Traceback" not in r.stderr and "terminate called" not in r.stderr


# ---------------------------------------------------------------------------------------------- 1. schedules


def _run_schedule(schedule: str, optimizer: str, total: int) -> list[float]:
    cfg = TrainConfig(schedule=schedule, optimizer=optimizer, lr=1e-3)
    params = [torch.nn.Parameter(torch.zeros(3))]
    opt, sched = make_optimizer(cfg, params, total)
    lrs = [opt.param_groups[0]["lr"]]
    for _ in range(total):
        opt.step()
        sched.step()
        lrs.append(opt.param_groups[0]["lr"])
    return lrs


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_every_schedule_steps_through_every_short_run(schedule):
    for optimizer in ("adamw", "sgd"):
        for total in range(1, 61):
            lrs = _run_schedule(schedule, optimizer, total)
            assert all(math.isfinite(v) and v >= 0 for v in lrs), (schedule, optimizer, total, lrs)


def test_onecycle_warm_up_has_room_and_stays_ten_percent_for_long_runs():
    for total in range(2, 2000):
        pct = onecycle_pct_start(total)
        warm_end = pct * total - 1  # OneCycleLR's phase boundaries: 0 .. warm_end .. total - 1
        assert 0 < warm_end < total - 1, total
    assert onecycle_pct_start(100) == pytest.approx(0.1) and onecycle_pct_start(1200) == pytest.approx(0.1)
    lrs = _run_schedule("onecycle", "adamw", 10)  # epochs 2 x steps 5: warms up, then anneals
    peak = int(np.argmax(lrs))
    assert 0 < peak < 10 and lrs[peak] == pytest.approx(1e-3) and lrs[-1] < lrs[0]


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(epochs=st.integers(1, 12), steps=st.integers(1, 12), schedule=st.sampled_from(SCHEDULES))
def test_schedule_property_for_epoch_step_pairs(epochs, steps, schedule):
    lrs = _run_schedule(schedule, "adamw", epochs * steps)
    assert all(math.isfinite(v) and v >= 0 for v in lrs)


@pytest.mark.parametrize("epochs,steps", [(2, 5), (1, 10)])
@pytest.mark.slow
def test_short_onecycle_runs_train(dataset, tmp_path, epochs, steps):
    before = hashes(dataset)
    bundle = train(dataset, tmp_path / "run", tiny_cfg(epochs=epochs, steps_per_epoch=steps))
    assert bundle.card.training["epoch"] in range(1, epochs + 1)
    rows = (tmp_path / "run" / "history.csv").read_text().strip().splitlines()
    assert len(rows) == 1 + epochs
    assert hashes(dataset) == before
    # the card records the training images' raw range (phantom CT: air to bone, in HU)
    lo, hi = bundle.card.intensity_range
    assert -1100 < lo < -900 and 100 < hi < 1500


# ---------------------------------------------------------------------------------------------- 2. clean exits


def _bad_label_dataset(root: Path, kind: str) -> Path:
    ds = make_dataset(root, [1, 2, 3, 4, 5, 6], shape=SHAPE, spacing=SPACING)
    lab = ds / "labelsTr" / "phantom_0003.nii.gz"
    img = nib.load(str(lab))
    data = np.asanyarray(img.dataobj).astype(np.float32 if kind == "float" else np.int16)
    if kind == "float":
        data[data == 1] = 1.5
    else:
        data[0, 0, 0] = -1
    nib.save(nib.Nifti1Image(data, img.affine), str(lab))
    return ds


@pytest.mark.parametrize("kind,expect", [("float", "not whole numbers"), ("negative", "negative label values")])
@pytest.mark.slow
def test_bad_labels_exit_cleanly(tmp_path, kind, expect):
    """Regression: the error was printed, then the process aborted (exit 134, 'terminate called ...')
    because MONAI's cache threads were still reading the other cases at interpreter exit."""
    ds = _bad_label_dataset(tmp_path / "ds", kind)
    before = hashes(ds)
    r = _cli("train", ds, "-o", tmp_path / "run", "--epochs", "1", "--steps-per-epoch", "1", "--width", "4",
             "--crop", "32", "--val-cases", "0", "--device", "cpu", "--no-hd95")
    _one_line_error(r, expect)
    assert "phantom_0003.nii.gz" in r.stderr
    assert not (tmp_path / "run" / "checkpoint.pt").exists()
    # in-process, with several cache threads: none is left running after the error
    for workers in (0, 3):
        with pytest.raises(MedsegError, match=expect):
            train(ds, tmp_path / "run2", tiny_cfg(val_cases=0, cache_workers=workers))
        assert not [t for t in threading.enumerate() if t.name.startswith("medseg-cache")]
    assert hashes(ds) == before


# ---------------------------------------------------------------------------------------------- 3. config.json

BAD_FIELDS = [
    ("epochs", 0), ("epochs", -3), ("epochs", 1.5), ("epochs", "5"), ("epochs", True), ("epochs", None),
    ("steps_per_epoch", 0), ("batch_size", 0), ("batch_size", "eight"), ("crop", 0), ("width", 0), ("width", -4),
    ("context_slices", -1), ("context_slices", 17), ("lr", 0), ("lr", -0.001), ("lr", "fast"), ("lr", 1e999),
    ("spacing", [0, 2]), ("spacing", [2]), ("spacing", [2, -1]), ("spacing", "2"), ("spacing", [2, 2, 2]),
    ("spacing", [2, 1e999]), ("foreground_fraction", 1.5), ("foreground_fraction", -0.1), ("flip_prob", 2),
    ("val_cases", -1), ("optimizer", "adam"), ("schedule", "step"), ("loss", "focal"), ("amp", "fp8"),
    ("class_weights", "inverse"), ("augment", "yes"), ("hd95", 1), ("channels_last", None), ("seed", -1),
    ("weight_decay", -1), ("rotate_deg", 500), ("scale", 1.5), ("intensity_jitter", -1), ("name", ""),
    ("name", 5), ("modality", "PET"), ("cache_workers", -1), ("init", 5), ("freeze_encoder", "no"),
]


def _edited_run(finished_run: Path, tmp_path: Path, **changes) -> Path:
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    cfg = json.loads((run / "config.json").read_text())
    cfg.update(changes)
    (run / "config.json").write_text(json.dumps(cfg).replace("Infinity", "1e999"))  # 1e999: read as inf
    return run


@pytest.mark.parametrize("key,value", BAD_FIELDS, ids=[f"{k}={v!r}" for k, v in BAD_FIELDS])
def test_bad_config_json_field_is_named_on_resume(dataset, finished_run, tmp_path, key, value):
    run = _edited_run(finished_run, tmp_path, **{key: value})
    before = hashes(dataset, run)
    with pytest.raises(MedsegError) as info:
        train(dataset, run, TrainConfig(device="cpu"), resume=True)
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith(f"{run / 'config.json'}: field '{key}"), msg
    assert hashes(dataset, run) == before


@pytest.mark.parametrize("text,expect", [
    ("[1, 2]", "run config is not a JSON object"),
    ("{\"epochs\": ", "unreadable run config"),
    ("{\"epochs\": NaN}", "unreadable run config"),
    (None, "no such run config"),
])
def test_unreadable_config_json(dataset, finished_run, tmp_path, text, expect):
    run = _edited_run(finished_run, tmp_path)
    if text is None:
        (run / "config.json").unlink()
    else:
        (run / "config.json").write_text(text)
    with pytest.raises(MedsegError, match=expect) as info:
        train(dataset, run, TrainConfig(device="cpu"), resume=True)
    assert str(info.value).startswith(str(run / "config.json"))


@pytest.mark.slow
def test_edited_config_json_resumes_and_cli_names_the_field(dataset, finished_run, tmp_path):
    run = _edited_run(finished_run, tmp_path, hd95=True, cache_workers=2)  # edits that change no result
    train(dataset, run, TrainConfig(device="cpu"), resume=True)
    assert len((run / "history.csv").read_text().strip().splitlines()) == 2
    for key, value in (("epochs", 2), ("width", 8), ("schedule", "cosine"), ("lr", 0.02)):
        changed = _edited_run(finished_run, tmp_path / key, **{key: value})  # valid, but not this run's settings
        with pytest.raises(MedsegError, match=rf"config.json: field '{key}': .* differs from .* in checkpoint.pt"):
            train(dataset, changed, TrainConfig(device="cpu"), resume=True)
    bad = _edited_run(finished_run, tmp_path / "b", steps_per_epoch=0)
    _one_line_error(_cli("train", dataset, "-o", bad, "--resume", "--device", "cpu"),
                    f"{bad / 'config.json'}: field 'steps_per_epoch'")


@pytest.mark.parametrize("key,value", BAD_FIELDS + [("device", "tpu"), ("device", 3), ("spacing", (math.nan, 1.0)),
                                                    ("lr", math.inf), ("lr", math.nan)])
def test_bad_settings_from_code_are_named(key, value):
    """The CLI and the napari widget build a TrainConfig directly: the same checks, by field name."""
    cfg = TrainConfig(**{key: value})
    with pytest.raises(MedsegError) as info:
        cfg.validate()
    assert str(info.value).startswith(f"{key} "), str(info.value)
    assert "\n" not in str(info.value)


def test_default_and_cli_like_configs_are_valid():
    TrainConfig().validate()
    tiny_cfg(schedule="poly", optimizer="sgd", amp="bf16", modality="mr", init="x", lr=None).validate()
    TrainConfig(spacing=[1, 2], seed=np.int64(3), rotate_deg=0, scale=0, flip_prob=1).validate()


# ---------------------------------------------------------------------------------------------- 4. -o checks


def _no_reading(monkeypatch):
    import medseg.training as training

    def fail(*a, **k):
        raise AssertionError("the dataset was read before the output was checked")

    monkeypatch.setattr(training, "find_cases", fail)
    monkeypatch.setattr(training, "load_bundle", fail)


@pytest.mark.parametrize("case", ["file", "dataset", "inside-dataset", "init-best", "init-last", "init-is-run",
                                  "proc", "dataset-in-run-best"])
def test_output_location_is_refused_before_reading(dataset, finished_run, tmp_path, monkeypatch, case):
    cfg, resume = tiny_cfg(), False
    run = tmp_path / "run"
    ds = dataset
    if case == "file":
        run.write_text("not a folder")
        expect = f"{run}: is a file, expected a run folder"
    elif case == "dataset":
        run, expect = dataset, "refusing to write over the dataset"
    elif case == "inside-dataset":
        run, expect = dataset / "imagesTr" / "run", "refusing to write into the dataset folder"
    elif case in ("init-best", "init-last"):
        run = tmp_path / "copy"
        shutil.copytree(finished_run, run)
        (run / "checkpoint.pt").unlink()  # a finished run's folder reused as the output of a fine-tune
        cfg = tiny_cfg(init=str(run / case[5:]))
        expect = f"its {case[5:]}/ bundle would replace the --init bundle"
    elif case == "init-is-run":
        cfg, run = tiny_cfg(init=str(finished_run / "best")), finished_run / "best"
        expect = "refusing to write over the --init bundle"
    elif case == "proc":
        if not Path("/proc/self").is_dir():
            pytest.skip("no /proc")
        run, expect = Path("/proc/run"), "/proc/run: cannot write here"
    else:
        run = tmp_path / "run"
        ds = run / "best"
        shutil.copytree(dataset, ds)
        expect = "lies in its best/ folder"
    watched = [dataset, finished_run] + ([run] if run.exists() and not str(run).startswith("/proc") else [])
    before = hashes(*watched)
    existed = run.exists()
    _no_reading(monkeypatch)
    with pytest.raises(MedsegError) as info:
        train(ds, run, cfg, resume=resume)
    assert expect in str(info.value) and "\n" not in str(info.value), str(info.value)
    assert hashes(*watched) == before
    assert run.exists() == existed


@pytest.mark.slow
def test_output_checks_through_the_cli(dataset, finished_run, tmp_path):
    afile = tmp_path / "RUN"
    afile.write_text("x")
    before = hashes(dataset, finished_run, afile)
    _one_line_error(_cli("train", dataset, "-o", afile, "--device", "cpu"), f"{afile}: is a file, expected a run folder")
    _one_line_error(_cli("train", dataset, "-o", dataset / "labelsTr", "--device", "cpu"),
                    "refusing to write into the dataset folder")
    _one_line_error(_cli("train", dataset, "-o", finished_run, "--init", finished_run / "best", "--device", "cpu"),
                    "would replace the --init bundle")
    assert hashes(dataset, finished_run, afile) == before


def test_old_checkpoint_without_config_is_checked_by_its_schedule(dataset, tmp_path):
    run = tmp_path / "run"
    train(dataset, run, tiny_cfg(schedule="poly", steps_per_epoch=2))
    state = torch.load(run / "checkpoint.pt", map_location="cpu", weights_only=True)
    state.pop("config")  # as written before checkpoints recorded their config
    torch.save(state, run / "checkpoint.pt")
    cfg = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**cfg, "epochs": 3}))
    with pytest.raises(MedsegError, match=r"config.json: field 'epochs': 3 x 2 steps do not fit the 2-step schedule"):
        train(dataset, run, TrainConfig(device="cpu"), resume=True)
    (run / "config.json").write_text(json.dumps({**cfg, "width": 8}))  # caught when the weights are loaded
    with pytest.raises(MedsegError, match=r"config.json: does not fit checkpoint.pt \(.*\); a run resumes"):
        train(dataset, run, TrainConfig(device="cpu"), resume=True)
