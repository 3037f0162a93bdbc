"""Training: the loop learns on real faces, resumes exactly, and runs under torchrun with gloo."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from labfast import checkpoint, presets
from labfast.demo import BUNDLED_DATA
from labfast.evaluate import predict_faces
from labfast.metrics import nme
from labfast.train import build_model, read_training_faces, set_training_mode, train


def tiny_config(tmp_path: Path, *assignments: str) -> presets.TrainConfig:
    """The tiny model on the first 8 bundled real faces, no augmentation, no workers."""
    return presets.override(presets.get("300w"), [
        f"data_root={BUNDLED_DATA}", "train_subset=common", "model=tiny", "val_fraction=0",
        "train_limit=8", "batch_size=4", "epochs=2", "lr_milestones=", "num_workers=0",
        "augment.rotation_deg=0", "augment.zoom_range=1,1", "augment.shift=0", "augment.flip_probability=0",
        "augment.brightness=0", "augment.contrast=0", "augment.saturation=0", "augment.blur_probability=0",
        "augment.occlusion_probability=0", *assignments,
    ])


def scalars(run: Path, name: str) -> list[float]:
    rows = [line.split(",") for line in (run / "metrics.csv").read_text().splitlines()[1:]]
    return [float(value) for _, _, row_name, value in rows if row_name == name]


def final_weights(run: Path) -> dict[str, torch.Tensor]:
    return checkpoint.load(run / "last.pt")["model"]


def test_resume_after_kill_gives_the_weights_of_an_uninterrupted_run(tmp_path):
    uninterrupted = tiny_config(tmp_path)
    train(uninterrupted, tmp_path / "straight")
    # Stop after 3 of the 4 steps (mid-epoch), then resume to the end.
    train(tiny_config(tmp_path, "max_steps=3"), tmp_path / "killed")
    assert checkpoint.load(tmp_path / "killed" / "last.pt")["step"] == 3
    summary = train(uninterrupted, tmp_path / "killed", resume=True)
    assert summary["steps"] == 4
    straight, resumed = final_weights(tmp_path / "straight"), final_weights(tmp_path / "killed")
    assert straight.keys() == resumed.keys()
    for name in straight:
        torch.testing.assert_close(resumed[name], straight[name], rtol=0, atol=0, msg=name)


def test_run_folder_holds_config_metrics_and_checkpoints(tmp_path):
    config = tiny_config(tmp_path, "val_fraction=0.2", "train_limit=10", "log_every=1")
    train(config, tmp_path / "run")
    run = tmp_path / "run"
    assert presets.from_dict(json.loads((run / "config.json").read_text())) == config
    assert len(scalars(run, "loss")) == 4 and len(scalars(run, "images_per_second")) == 4
    assert len(scalars(run, "val_nme")) == 2  # once per epoch, on the 2 held-out faces
    assert (run / "best.pt").is_file() and (run / "last.pt").is_file()
    model, info = checkpoint.load_model(run / "best.pt")
    assert info["scheme"] == "300w"


def test_resume_refuses_a_truncated_checkpoint(tmp_path):
    train(tiny_config(tmp_path, "max_steps=1"), tmp_path / "run")
    last = tmp_path / "run" / "last.pt"
    last.write_bytes(last.read_bytes()[:1000])
    with pytest.raises(checkpoint.CheckpointError, match="truncated"):
        train(tiny_config(tmp_path), tmp_path / "run", resume=True)


@pytest.mark.slow
def test_training_on_real_faces_lowers_loss_and_nme(tmp_path, shared_data):
    """The small loop learns: on 16 real 300-W training faces, loss and NME fall far below the untrained model's."""
    config = presets.override(tiny_config(tmp_path), [
        f"data_root={shared_data / '300w'}", "train_subset=train", "train_limit=16", "batch_size=8",
        "input_size=128", "epochs=40", "lr=2e-3", "log_every=2",
    ])
    faces, _ = read_training_faces(config)
    torch.manual_seed(config.seed)
    untrained = build_model(config).eval()
    truth = np.stack([face.landmarks for face in faces])
    before = nme(predict_faces(untrained, faces, torch.device("cpu"), progress=False), truth, "300w").mean()
    train(config, tmp_path / "run")
    losses = scalars(tmp_path / "run", "loss")
    model, _ = checkpoint.load_model(tmp_path / "run" / "last.pt")
    after = nme(predict_faces(model, faces, torch.device("cpu"), progress=False), truth, "300w").mean()
    assert np.mean(losses[-3:]) < 0.5 * np.mean(losses[:3])
    assert after < 0.5 * before, (before, after)


@pytest.mark.slow
def test_torchrun_two_cpu_processes_with_gloo(tmp_path):
    out = tmp_path / "ddp"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", "29533",
               "-m", "labfast", "train", "--config", "300w", "--data-root", str(BUNDLED_DATA), "--out", str(out),
               "--train-subset", "common", "--model", "tiny", "--val-fraction", "0", "--train-limit", "8",
               "--batch-size", "2", "--epochs", "1", "--num-workers", "0"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    state = checkpoint.load(out / "last.pt")
    # 8 faces over 2 processes with batch 2: 2 steps per process per epoch.
    assert state["step"] == 2 and state["epoch"] == 1


def test_bf16_autocast_and_channels_last_train(tmp_path):
    summary = train(tiny_config(tmp_path, "amp=bf16", "channels_last=true", "max_steps=2"), tmp_path / "run")
    assert summary["steps"] == 2
    weights = final_weights(tmp_path / "run")
    assert all(torch.isfinite(value).all() for value in weights.values() if value.is_floating_point())


def test_cross_data_set_regressor_trains_on_a_frozen_estimator_of_other_boundaries(tmp_path):
    """LAB Sec. 4.3: 300-W boundaries (estimator from a 300-W run) under the 29 COFW landmarks."""
    train(tiny_config(tmp_path, "max_steps=1"), tmp_path / "w300")
    config = presets.override(presets.get("cofw_300w_boundaries"), [
        "model=tiny", f"estimator_checkpoint={tmp_path / 'w300' / 'last.pt'}"])
    model = build_model(config)
    assert model.boundary_scheme.name == "300w" and model.scheme.num_points == 29
    source = final_weights(tmp_path / "w300")
    for name, value in model.estimator.state_dict().items():
        torch.testing.assert_close(value, source["estimator." + name])
    assert not any(p.requires_grad for p in model.estimator.parameters())
    set_training_mode(model)
    assert model.regressor.training and not model.estimator.training
    without_source = presets.override(presets.get("cofw_300w_boundaries"), ["model=tiny"])
    with pytest.raises(ValueError, match="estimator_checkpoint"):
        build_model(without_source)


# ----------------------------------------------------------------------------- time budget (labfast.schedule)


def test_time_budget_fits_whole_epochs_into_the_time_left():
    from labfast.schedule import PLANNED_SHARE, fitted_epochs

    # 100 s left at 10 s an epoch: floor(100 * 0.95 / 10) = 9 more after the 2 done
    assert PLANNED_SHARE == 0.95 and fitted_epochs(2, 100.0, 10.0, preset_epochs=60) == 11
    assert fitted_epochs(2, 100.0, 10.0, preset_epochs=5) == 5  # never past the preset's schedule
    assert fitted_epochs(2, -3.0, 10.0, preset_epochs=60) == 2  # over time already: stop now


def test_time_budget_keeps_milestones_at_their_fractions_of_the_schedule():
    from labfast.schedule import scaled_milestones

    assert scaled_milestones((40, 55), preset_epochs=60, epochs=30, epochs_done=2) == (20, 28)  # 27.5 rounds to 28
    assert scaled_milestones((40, 55), preset_epochs=60, epochs=3, epochs_done=2) == (2, 3)  # 2 and 2.75


def test_time_budget_sizes_the_schedule_from_the_second_epochs_wall_time():
    from labfast.schedule import TimeBudget

    config = presets.get("300w")  # 60 epochs, milestones (40, 55)
    config.time_budget_minutes = 2.0
    budget = TimeBudget(config, now=0.0)
    assert budget.deadline == 120.0
    assert budget.epoch_finished(config, 0, images=1911, now=14.0) is None  # warm-up epoch: no measurement
    sized = budget.epoch_finished(config, 1, images=1911, now=20.0)
    # 6 s an epoch, 100 s left: 2 done + floor(95 / 6) = 15 more -> 17 epochs; 40/60 and 55/60 of 17
    assert sized.epochs == 17 and sized.lr_milestones == (11, 16)
    assert budget.epoch_finished(sized, 2, images=1911, now=26.0) is None  # decided once


def test_time_budget_run_trains_the_sized_schedule_and_records_it(tmp_path):
    """A 1000-epoch tiny schedule under a budget: sized down after two epochs, the saved config says
    so, and every sized epoch ran (the run stopped at the schedule's end, not at the clock)."""
    config = tiny_config(tmp_path, "epochs=1000", "lr_milestones=600,900", "time_budget_minutes=0.2",
                         "val_fraction=0.2", "train_limit=10", "batch_size=8")
    run = tmp_path / "run"
    summary = train(config, run)
    saved = presets.from_dict(json.loads((run / "config.json").read_text()))
    assert 2 <= saved.epochs < 1000
    assert saved.lr_milestones == (max(2, round(0.6 * saved.epochs)), max(2, round(0.9 * saved.epochs)))
    assert summary["steps"] <= saved.epochs  # one step an epoch (8 of 8 faces)
    assert (run / "best.pt").is_file()


def test_a_run_stopped_by_the_clock_mid_epoch_still_validates_and_keeps_a_best_checkpoint(tmp_path):
    # 0.0001 min: the deadline passes during the first step, in the middle of a 2-step epoch
    config = tiny_config(tmp_path, "time_limit_minutes=0.0001", "val_fraction=0.2", "train_limit=10")
    summary = train(config, tmp_path / "run")
    assert summary["steps"] == 1 and len(scalars(tmp_path / "run", "val_nme")) == 1
    assert checkpoint.load(tmp_path / "run" / "best.pt")["step"] == 1
