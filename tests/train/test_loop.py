"""Training runs: the loop learns on real faces, resumes exactly, and runs under torchrun with gloo;
unreadable images are skipped; checkpoints are written mid-epoch; the clock and the budget stop it."""
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import labfast.train.faces
import labfast.train.step
from labfast import checkpoint
from labfast.commands.demo import BUNDLED_DATA
from labfast.evaluation.protocols import predict_faces
from labfast.metrics import nme
from labfast.train import presets, train
from labfast.train.build import build_model
from labfast.train.faces import read_training_faces
from tiny_runs import final_weights, scalars, tiny_config


def test_resume_after_kill_gives_the_weights_of_an_uninterrupted_run(tmp_path):
    uninterrupted = tiny_config()
    train(uninterrupted, tmp_path / "straight")
    # Stop after 3 of the 4 steps (mid-epoch), then resume to the end.
    train(tiny_config("max_steps=3"), tmp_path / "killed")
    assert checkpoint.load(tmp_path / "killed" / "last.pt")["step"] == 3
    summary = train(uninterrupted, tmp_path / "killed", resume=True)
    assert summary["steps"] == 4
    straight, resumed = final_weights(tmp_path / "straight"), final_weights(tmp_path / "killed")
    assert straight.keys() == resumed.keys()
    for name in straight:
        torch.testing.assert_close(resumed[name], straight[name], rtol=0, atol=0, msg=name)


@pytest.mark.parametrize("number", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_signal_ends_the_step_writes_last_pt_and_resume_continues_exactly(tmp_path, monkeypatch, number):
    """The signal arrives during step 2 of 4, with no periodic checkpoint: last.pt must hold step 2
    (not nothing), validation must not run, and the resumed run must end with the uninterrupted run's
    weights. A data loader worker must neither die of the signal nor stop the main process."""
    config = tiny_config("num_workers=1", "checkpoint_every_minutes=0")
    train(config, tmp_path / "straight")
    real_step, calls = labfast.train.step.train_step, []

    def step_with_a_signal(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            os.kill(os.getpid(), number)  # the handler only sets a flag: the step goes on
        return real_step(*args, **kwargs)

    monkeypatch.setattr(labfast.train.step, "train_step", step_with_a_signal)
    before = signal.getsignal(number)  # SIG_IGN for SIGINT where pytest runs as a background job
    summary = train(config, tmp_path / "stopped")
    assert summary["stopped_by"] == signal.Signals(number).name and summary["steps"] == 2
    assert checkpoint.load(tmp_path / "stopped" / "last.pt")["step"] == 2
    assert signal.getsignal(number) == before  # the handler restored
    monkeypatch.setattr(labfast.train.step, "train_step", real_step)
    assert train(config, tmp_path / "stopped", resume=True)["steps"] == 4
    straight, resumed = final_weights(tmp_path / "straight"), final_weights(tmp_path / "stopped")
    for name in straight:
        torch.testing.assert_close(resumed[name], straight[name], rtol=0, atol=0, msg=name)


def test_a_crash_mid_epoch_resumes_exactly_from_the_periodic_checkpoint(tmp_path, monkeypatch):
    """Without mid-epoch checkpoints a crash loses the epoch: last.pt would still say step 2."""
    train(tiny_config(), tmp_path / "straight")
    config = tiny_config("checkpoint_every_steps=1")
    real_step, calls = labfast.train.step.train_step, []

    def crash_at_step_4(*args):
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt("killed")
        return real_step(*args)

    monkeypatch.setattr(labfast.train.step, "train_step", crash_at_step_4)
    with pytest.raises(KeyboardInterrupt):
        train(config, tmp_path / "crashed")
    saved = checkpoint.load(tmp_path / "crashed" / "last.pt")
    assert (saved["epoch"], saved["batches_done"], saved["step"]) == (1, 1, 3)  # inside epoch 1 of 2 batches
    monkeypatch.setattr(labfast.train.step, "train_step", real_step)
    assert train(config, tmp_path / "crashed", resume=True)["steps"] == 4
    straight, resumed = final_weights(tmp_path / "straight"), final_weights(tmp_path / "crashed")
    for name in straight:
        torch.testing.assert_close(resumed[name], straight[name], rtol=0, atol=0, msg=name)


# ----------------------------------------------------------------------------- unreadable images


def _faces_with_a_corrupt_image(tmp_path: Path) -> tuple[Path, Path]:
    """A copy of the bundled faces whose first training image (first in file order) is corrupt."""
    root = tmp_path / "data"
    shutil.copytree(BUNDLED_DATA, root)
    corrupt = sorted((root / "lfpw" / "testset").glob("*.jpg"))[0]
    corrupt.write_bytes(b"\xff\xd8 not really a jpeg")
    return root, corrupt


def test_an_unreadable_image_is_skipped_named_and_counted_with_workers(tmp_path, caplog):
    root, corrupt = _faces_with_a_corrupt_image(tmp_path)
    config = tiny_config(f"data_root={root}", "num_workers=1", "max_bad_fraction=0.2", "log_every=1")
    with caplog.at_level(logging.WARNING, logger="labfast.train.loop"):
        summary = train(config, tmp_path / "run")
    assert summary["steps"] == 4  # the batch that held it trained on its 3 readable faces
    named = [record for record in caplog.records if corrupt.name in record.getMessage()]
    assert len(named) == 2  # once per epoch
    assert scalars(tmp_path / "run", "unreadable_images") == [1.0, 1.0]


def test_more_unreadable_images_than_max_bad_fraction_end_the_run_clearly(tmp_path):
    root, corrupt = _faces_with_a_corrupt_image(tmp_path)
    config = tiny_config(f"data_root={root}", "max_bad_fraction=0.1")  # 1 of 8 > 0.8
    with pytest.raises(RuntimeError, match=rf"1 of the 8 training images could not be read.*{corrupt.name}"):
        train(config, tmp_path / "run")


def test_run_folder_holds_config_metrics_and_checkpoints(tmp_path):
    config = tiny_config("val_fraction=0.2", "train_limit=10", "log_every=1")
    train(config, tmp_path / "run")
    run = tmp_path / "run"
    assert presets.from_dict(json.loads((run / "config.json").read_text())) == config
    assert len(scalars(run, "loss")) == 4 and len(scalars(run, "images_per_second")) == 4
    assert len(scalars(run, "val_nme")) == 2  # once per epoch, on the 2 held-out faces
    assert (run / "best.pt").is_file() and (run / "last.pt").is_file()
    assert (run / "learning_curve.png").read_bytes().startswith(b"\x89PNG")
    model, info = checkpoint.load_model(run / "best.pt")
    assert info["scheme"] == "300w"


def test_resume_refuses_a_truncated_checkpoint(tmp_path):
    train(tiny_config("max_steps=1"), tmp_path / "run")
    last = tmp_path / "run" / "last.pt"
    last.write_bytes(last.read_bytes()[:1000])
    with pytest.raises(checkpoint.CheckpointError, match="truncated"):
        train(tiny_config(), tmp_path / "run", resume=True)


@pytest.mark.slow
def test_training_on_real_faces_lowers_loss_and_nme(tmp_path, shared_data):
    """The small loop learns: on 16 real 300-W training faces, loss and NME fall far below the untrained model's."""
    config = presets.override(tiny_config(), [
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


@pytest.mark.slow
def test_torchrun_skips_a_step_together_when_one_process_has_no_readable_image(tmp_path):
    """Batch 1 per process: the process that draws the corrupt image has nothing to train on.
    Both must skip that step (one waiting in the gradient all-reduce for the other would hang)."""
    root, corrupt = _faces_with_a_corrupt_image(tmp_path)
    out = tmp_path / "ddp"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", "29534",
               "-m", "labfast", "train", "--config", "300w", "--data-root", str(root), "--out", str(out),
               "--train-subset", "common", "--model", "tiny", "--val-fraction", "0", "--train-limit", "8",
               "--batch-size", "1", "--epochs", "1", "--num-workers", "0", "--max-bad-fraction", "0.2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stderr.count(corrupt.name) == 1  # named once, by the process that drew it
    state = checkpoint.load(out / "last.pt")
    # 8 faces over 2 processes with batch 1: 4 batches per process, one skipped by both
    assert (state["epoch"], state["step"]) == (1, 3)
    assert scalars(out, "unreadable_images") == [1.0]


def test_bf16_autocast_and_channels_last_train(tmp_path):
    summary = train(tiny_config("amp=bf16", "channels_last=true", "max_steps=2"), tmp_path / "run")
    assert summary["steps"] == 2
    weights = final_weights(tmp_path / "run")
    assert all(torch.isfinite(value).all() for value in weights.values() if value.is_floating_point())


def test_time_budget_run_trains_the_sized_schedule_and_records_it(tmp_path):
    """A 1000-epoch tiny schedule under a budget: sized down after two epochs, the saved config says
    so, and every sized epoch ran (the run stopped at the schedule's end, not at the clock)."""
    config = tiny_config("epochs=1000", "lr_milestones=600,900", "time_budget_minutes=0.2",
                         "val_fraction=0.2", "train_limit=10", "batch_size=8")
    run = tmp_path / "run"
    summary = train(config, run)
    saved = presets.from_dict(json.loads((run / "config.json").read_text()))
    assert 2 <= saved.epochs < 1000
    assert saved.lr_milestones == (max(2, round(0.6 * saved.epochs)), max(2, round(0.9 * saved.epochs)))
    assert summary["steps"] <= saved.epochs  # one step an epoch (8 of 8 faces)
    assert (run / "best.pt").is_file()


def test_a_resumed_time_budget_run_goes_on_with_its_sized_schedule_not_the_presets(tmp_path):
    """``--resume`` with the preset's 1000 epochs given again: last.pt's sized schedule and budget
    used win, so a run that had finished its sized schedule trains no further step."""
    config = tiny_config("epochs=1000", "lr_milestones=600,900", "time_budget_minutes=0.2",
                         "val_fraction=0.2", "train_limit=10", "batch_size=8")
    run = tmp_path / "run"
    first = train(config, run)
    sized = presets.from_dict(json.loads((run / "config.json").read_text()))
    last = checkpoint.load(run / "last.pt")
    assert (last["fitted_epochs"], tuple(last["fitted_milestones"])) == (sized.epochs, sized.lr_milestones)
    assert last["budget_seconds_used"] > 0
    assert train(config, run, resume=True)["steps"] == first["steps"]


def test_a_run_stopped_by_the_clock_mid_epoch_still_validates_and_keeps_a_best_checkpoint(tmp_path):
    # 0.0001 min: the deadline passes during the first step, in the middle of a 2-step epoch
    config = tiny_config("time_limit_minutes=0.0001", "val_fraction=0.2", "train_limit=10")
    summary = train(config, tmp_path / "run")
    assert summary["steps"] == 1 and len(scalars(tmp_path / "run", "val_nme")) == 1
    assert checkpoint.load(tmp_path / "run" / "best.pt")["step"] == 1


def test_resume_goes_on_with_the_model_configuration_of_last_pt(tmp_path):
    # A run started before fusion_resize / discriminator_distance existed saved a config without
    # them; rebuilt from today's preset it would switch to area resize and the boundary Dist.
    train(tiny_config("max_steps=1"), tmp_path / "old")
    state = checkpoint.load(tmp_path / "old" / "last.pt")
    for field in ("fusion_resize", "discriminator_distance"):
        del state["config"][field]
    checkpoint.save(tmp_path / "old" / "last.pt", state)
    train(tiny_config("max_steps=2"), tmp_path / "old", resume=True)
    resumed = checkpoint.load(tmp_path / "old" / "last.pt")
    assert resumed["step"] == 2
    assert resumed["config"]["fusion_resize"] == "bilinear"
    assert resumed["config"]["discriminator_distance"] == "landmark"


def test_an_unreadable_validation_image_is_left_out_named_and_the_run_goes_on(tmp_path, caplog):
    # validation runs outside the training loader's skipping: before, it ended the run at epoch end
    root = tmp_path / "data"
    shutil.copytree(BUNDLED_DATA, root)
    _, held_out = read_training_faces(tiny_config("train_limit=10", "val_fraction=0.2"))
    corrupt = root / Path(held_out[0].image_path).relative_to(BUNDLED_DATA)
    corrupt.write_bytes(b"\xff\xd8 not really a jpeg")
    config = tiny_config(f"data_root={root}", "train_limit=10", "val_fraction=0.2", "epochs=1")
    with caplog.at_level(logging.WARNING, logger="labfast.train.faces"):
        train(config, tmp_path / "run")
    assert any("validation" in r.getMessage() and corrupt.name in r.getMessage() for r in caplog.records)
    assert len(scalars(tmp_path / "run", "val_nme")) == 1


def test_fp32_channels_last_cpu_training_of_the_tiny_model_is_refused_before_it_corrupts_memory(tmp_path):
    """torch 2.13's oneDNN corrupts the heap in the fp32 channels_last backward of the tiny model's
    4 -> 8 1x1 stride-2 projection (the process aborted with "free(): invalid next size")."""
    with pytest.raises(ValueError, match=r"regressor\..*1x1 stride-2 convolution of 4 input channels.*channels_last"):
        train(tiny_config("channels_last=true", "max_steps=1"), tmp_path / "run")


def test_training_stops_early_when_validation_stops_improving(tmp_path, monkeypatch):
    nmes = iter([0.5, 0.4, 0.45, 0.46, 0.3, 0.2])
    monkeypatch.setattr(labfast.train.faces, "validation_nme", lambda *args: next(nmes))
    config = tiny_config("val_fraction=0.2", "train_limit=10", "epochs=6", "early_stop_fraction=0.5")
    summary = train(config, tmp_path / "run")
    # best at epoch 1 (0.4); after epoch 3, 2 stale epochs >= 0.5 * 4 epochs: stop, epoch 4 next
    assert summary["best_val_nme"] == pytest.approx(0.4)
    assert checkpoint.load(tmp_path / "run" / "last.pt")["epoch"] == 4
    assert checkpoint.load(tmp_path / "run" / "last.pt")["best_epoch"] == 1
