"""Fine-tuning from the viewer (napari_plugin/_finetune.py): progress a user can follow, what a
Cancel keeps, and what the Dice was measured on. Real (tiny) runs on phantoms; no Qt needed."""

from __future__ import annotations

import re

import pytest

from medseg.bundle import default_bundle_path
from medseg.phantom import make_dataset
from medseg_napari._finetune import (
    DEFAULT_EPOCHS,
    DEFAULT_STEPS,
    TuneStatus,
    _Clock,
    after_cancel,
    dice_summary,
    fine_tune_config,
    fine_tune_job,
    format_time_left,
)
from medseg_napari._jobs import Cancelled

SHAPE, SPACING = (48, 48, 8), (3.0, 3.0, 10.0)  # 72 x 72 pixels a slice at the model's 2 mm
SMALL = {"batch_size": 2, "crop": 64}  # the defaults' crops are for real scans


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("ft") / "ds", [1, 2], shape=SHAPE, spacing=SPACING)


def _run(dataset, run_dir, epochs=2, steps=3, stop_at=None):
    """The job with its reports and progress collected; ``stop_at``: cancel at that step count."""
    reports: list[TuneStatus] = []
    seen: list[tuple[int, int]] = []

    def progress(done, total):
        if stop_at is not None and done >= stop_at:
            raise Cancelled()
        seen.append((done, total))

    result = fine_tune_job(str(dataset), str(run_dir), str(default_bundle_path()), epochs, steps, "cpu",
                           progress=progress, report=reports.append, settings=SMALL)
    return result, reports, seen


@pytest.mark.slow
def test_reports_say_epoch_loss_and_time_left_and_the_dice_says_training_cases(dataset, tmp_path):
    result, reports, seen = _run(dataset, tmp_path / "run")
    texts = [str(r) for r in reports]
    assert texts[0] == ("fine-tuning: reading the cases; after each of the 2 epochs the Dice is measured on the "
                        "2 training cases (no case held out)…")
    steps = [r for r in reports if r.phase == "training"]
    assert [(r.epoch, r.step) for r in steps] == [(e, s) for e in (1, 2) for s in (1, 2, 3)]
    assert all(re.search(r"^epoch [12]/2 · step [123]/3 · loss \d+\.\d{3} · ", t) for t in map(str, steps))
    assert steps[0].seconds_left is None and "time left: measuring" in str(steps[0])  # one step: no rate yet
    # from the second step on, a time left that counts the validations still to come
    assert all(r.seconds_left is not None and r.seconds_left > 0 for r in steps[1:])
    assert all(re.search(r" · (about \d+ (s|min \d\d s) left|finishing)$", str(r)) for r in steps[1:])
    validating = [str(r) for r in reports if r.phase == "validating"]
    assert len(validating) == 2 and "measuring the Dice on the training cases…" in validating[0]
    done = [r for r in reports if r.phase == "epoch done"]
    assert [r.epoch for r in done] == [1, 2] and str(done[-1]).endswith("finishing")
    assert re.search(r"^epoch 1/2 done · loss \d\.\d{3} · mean Dice \d\.\d\d on the training cases · ", str(done[0]))
    assert seen[-1] == (6, 6)
    assert result.best == str(tmp_path / "run" / "best") and (tmp_path / "run" / "best" / "model.json").is_file()
    assert set(result.dice) >= {"liver", "kidney_right", "kidney_left"}  # in both cases' labels (no spleen in this field)
    assert re.match(r"Dice on the 2 training cases \(no case held out\), epoch [12]: liver \d\.\d\d, ", result.summary)
    assert result.summary.endswith("(the cases it learnt from: a check of fit, not of new scans)")
    assert after_cancel(tmp_path / "run").startswith("kept the best model so far (epoch ")


@pytest.mark.slow
def test_cancel_after_the_first_epoch_keeps_its_model_and_says_where(dataset, tmp_path):
    run = tmp_path / "run"
    with pytest.raises(Cancelled):  # raised by progress() at the first step of epoch 2
        _run(dataset, run, epochs=3, steps=2, stop_at=3)
    message = after_cancel(run)
    assert re.match(r"kept the best model so far \(epoch 1 of 3, mean Dice \d\.\d\d on the 2 training cases "
                    r"\(no case held out\)\) in ", message)
    assert f"in {run / 'best'}; use it by choosing that folder as the model" in message
    assert "--resume" in message and (run / "checkpoint.pt").is_file()


@pytest.mark.slow
def test_cancel_during_validation_stops_once_the_epoch_is_saved(dataset, tmp_path):
    cancel, reports = [], []

    def report(status):
        reports.append(status)
        if status.phase == "validating":
            cancel.append(True)  # the user presses Cancel while epoch 1 is being validated

    def progress(done, total):
        if cancel:
            raise Cancelled()

    with pytest.raises(Cancelled):
        fine_tune_job(str(dataset), str(tmp_path / "run"), str(default_bundle_path()), 2, 2, "cpu",
                      progress=progress, report=report, settings=SMALL)
    assert [r.phase for r in reports][-2:] == ["validating", "epoch done"]  # no step of epoch 2 ran
    assert after_cancel(tmp_path / "run").startswith("kept the best model so far (epoch 1 of 2, mean Dice")


@pytest.mark.slow
def test_cancel_before_the_first_epoch_ends_keeps_nothing_and_says_so(dataset, tmp_path):
    run = tmp_path / "run"
    with pytest.raises(Cancelled):
        _run(dataset, run, epochs=2, steps=3, stop_at=2)
    assert not (run / "best").exists()
    assert after_cancel(run).startswith("nothing was kept: cancelled before the first epoch ended")
    assert after_cancel(tmp_path / "never_started").startswith("nothing was kept")


def test_dice_summary_names_what_the_dice_was_measured_on():
    dice = {"liver": 0.953, "spleen": 0.9}
    on_training = {"train_cases": ["a", "b"], "val_cases": ["a", "b"], "validation": "training cases",
                   "val_dice": dice, "epoch": 3}
    held_out = {"train_cases": ["a", "b", "c"], "val_cases": ["d"], "validation": "held-out cases",
                "val_dice": dice, "epoch": 2}
    assert dice_summary(on_training) == ("Dice on the 2 training cases (no case held out), epoch 3: liver 0.95, "
                                         "spleen 0.90 (the cases it learnt from: a check of fit, not of new scans)")
    assert dice_summary(held_out) == "Dice on the held-out case d, epoch 2: liver 0.95, spleen 0.90"
    assert "2 held-out cases d, e" in dice_summary({**held_out, "val_cases": ["d", "e"]})
    assert dice_summary({}) == "no Dice recorded for this model"


def test_a_few_cases_are_all_trained_on_more_hold_one_out(tmp_path):
    few = make_dataset(tmp_path / "few", [1, 2, 3], shape=(16, 16, 4), spacing=(9.0, 9.0, 20.0))
    more = make_dataset(tmp_path / "more", [1, 2, 3, 4], shape=(16, 16, 4), spacing=(9.0, 9.0, 20.0))
    cfg = fine_tune_config(few, default_bundle_path())
    assert (cfg.val_cases, cfg.epochs, cfg.steps_per_epoch) == (0, DEFAULT_EPOCHS, DEFAULT_STEPS)
    assert fine_tune_config(more, default_bundle_path()).val_cases == 1


def test_time_left_counts_steps_and_the_validations_still_to_come():
    clock = _Clock(epochs=2, steps=4, val_guess=10.0)
    clock.step(100.0)  # the first step (holds the set-up): no rate yet
    assert clock.seconds_left(1, 2) is None
    clock.step(101.0)
    clock.step(102.0)  # 1 s a step; a validation guessed at 10 s
    assert clock.seconds_left(3, 2) == pytest.approx(5 * 1.0 + 2 * 10.0)
    clock.step(103.0)
    clock.validated(107.0)  # measured: 4 s
    assert clock.seconds_left(4, 1) == pytest.approx(4 * 1.0 + 4.0)
    for k in range(_Clock.WINDOW):  # the machine got busy: 3 s a step; the estimate follows
        clock.step(110.0 + 3 * k)
    assert clock.seconds_left(4, 1) == pytest.approx(4 * 3.0 + 4.0)
    assert _Clock(2, 4, None).seconds_left(0, 2) is None


def test_time_left_reads_in_seconds_and_minutes():
    assert [format_time_left(s) for s in (None, 0.2, 42, 130, 1500)] == [
        "time left: measuring…", "finishing", "about 42 s left", "about 2 min 10 s left", "about 25 min left"]


def test_after_cancel_says_when_the_kept_model_cannot_be_used(tmp_path):
    (tmp_path / "run" / "best").mkdir(parents=True)
    (tmp_path / "run" / "best" / "model.json").write_text("{}")
    message = after_cancel(tmp_path / "run")
    assert message.startswith(f"a model was written to {tmp_path / 'run' / 'best'}, but it cannot be used: ")
    assert "\n" not in message
