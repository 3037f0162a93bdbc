"""The schedule: step decay, planned steps, a schedule sized to a wall-clock budget, early stopping."""
import pytest

from labfast.train import presets
from labfast.train.schedule import (PLANNED_SHARE, TimeBudget, early_stop_due, fitted_epochs, learning_rate,
                                    planned_steps, scaled_milestones)


def test_time_budget_fits_whole_epochs_into_the_time_left():
    # 100 s left at 10 s an epoch: floor(100 * 0.95 / 10) = 9 more after the 2 done
    assert PLANNED_SHARE == 0.95 and fitted_epochs(2, 100.0, 10.0, preset_epochs=60) == 11
    assert fitted_epochs(2, 100.0, 10.0, preset_epochs=5) == 5  # never past the preset's schedule
    assert fitted_epochs(2, -3.0, 10.0, preset_epochs=60) == 2  # over time already: stop now


def test_time_budget_keeps_milestones_at_their_fractions_of_the_schedule():
    assert scaled_milestones((40, 55), preset_epochs=60, epochs=30, epochs_done=2) == (20, 28)  # 27.5 rounds to 28
    assert scaled_milestones((40, 55), preset_epochs=60, epochs=3, epochs_done=2) == (2, 3)  # 2 and 2.75


def test_time_budget_sizes_the_schedule_from_the_second_epochs_wall_time():
    config = presets.get("300w")  # 60 epochs, milestones (40, 55)
    config.time_budget_minutes = 2.0
    budget = TimeBudget(config, now=0.0)
    assert budget.deadline == 120.0
    assert budget.epoch_finished(config, 0, images=1911, now=14.0) is None  # warm-up epoch: no measurement
    sized = budget.epoch_finished(config, 1, images=1911, now=20.0)
    # 6 s an epoch, 100 s left: 2 done + floor(95 / 6) = 15 more -> 17 epochs; 40/60 and 55/60 of 17
    assert sized.epochs == 17 and sized.lr_milestones == (11, 16)
    assert budget.epoch_finished(sized, 2, images=1911, now=26.0) is None  # decided once


def test_a_resumed_time_budget_has_only_the_rest_of_the_budget_and_keeps_its_sizing():
    config = presets.get("300w")
    config.time_budget_minutes = 2.0
    budget = TimeBudget(config, now=100.0, used_seconds=30.0, decided=True)
    assert budget.deadline == 190.0 and budget.used_seconds(now=110.0) == 40.0
    budget.epoch_finished(config, 5, images=1911, now=105.0)
    assert budget.epoch_finished(config, 6, images=1911, now=110.0) is None  # sized before the stop: never again


def test_learning_rate_is_divided_by_ten_at_each_milestone_reached():
    config = presets.override(presets.get("300w"), ["lr_milestones=40,55"])
    assert [learning_rate(config, epoch, 1.0) for epoch in (0, 39, 40, 54, 55)] == [1.0, 1.0, 0.1, 0.1, 0.1 ** 2]


def test_planned_steps_are_the_schedules_unless_max_steps_caps_them():
    config = presets.override(presets.get("300w"), ["epochs=3"])
    assert planned_steps(config, 10) == 30
    assert planned_steps(presets.override(config, ["max_steps=7"]), 10) == 7
    assert planned_steps(presets.override(config, ["max_steps=70"]), 10) == 30


@pytest.mark.parametrize("epochs_done, best_epoch, milestones, fraction, stop", [
    (20, 17, (), 0.1, True),      # 2 stale epochs >= 2.0
    (20, 18, (), 0.1, False),     # 1 stale epoch < 2.0
    (5, 3, (), 0.1, True),        # at least one stale epoch: max(1, 0.5)
    (5, 4, (), 0.1, False),       # the last epoch was the best
    (20, 10, (30,), 0.1, False),  # before the first milestone: never
    (40, 33, (30,), 0.1, True),   # after it: 6 stale >= 4
    (40, 0, (), 0.0, False),      # off
])
def test_early_stop_rule(epochs_done, best_epoch, milestones, fraction, stop):
    config = presets.override(presets.get("300w_cpu"), [f"early_stop_fraction={fraction}",
                                                        "lr_milestones=" + ",".join(map(str, milestones))])
    assert early_stop_due(config, epochs_done, best_epoch) is stop
