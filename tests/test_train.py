"""Training: the loop learns on real faces, resumes exactly, and runs under torchrun with gloo;
overrides are parsed by type; unreadable images are skipped; checkpoints are written mid-epoch."""
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import time
import typing
from pathlib import Path

import numpy as np
import pytest
import torch

import labfast.train.loop
from labfast import checkpoint, config_fields
from labfast.train import presets
from labfast.commands.demo import BUNDLED_DATA
from labfast.evaluation.protocols import predict_faces
from labfast.metrics import nme
from labfast.model import LABConfig
from labfast.train.loop import (_checkpoint_due, build_model, read_training_faces, restore_training_state,
                           set_training_mode, train)

REPOSITORY = Path(__file__).resolve().parents[1]


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


def test_a_crash_mid_epoch_resumes_exactly_from_the_periodic_checkpoint(tmp_path, monkeypatch):
    """Without mid-epoch checkpoints a crash loses the epoch: last.pt would still say step 2."""
    train(tiny_config(tmp_path), tmp_path / "straight")
    config = tiny_config(tmp_path, "checkpoint_every_steps=1")
    real_step, calls = labfast.train.loop._train_step, []

    def crash_at_step_4(*args):
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt("killed")
        return real_step(*args)

    monkeypatch.setattr(labfast.train.loop, "_train_step", crash_at_step_4)
    with pytest.raises(KeyboardInterrupt):
        train(config, tmp_path / "crashed")
    saved = checkpoint.load(tmp_path / "crashed" / "last.pt")
    assert (saved["epoch"], saved["batches_done"], saved["step"]) == (1, 1, 3)  # inside epoch 1 of 2 batches
    monkeypatch.setattr(labfast.train.loop, "_train_step", real_step)
    assert train(config, tmp_path / "crashed", resume=True)["steps"] == 4
    straight, resumed = final_weights(tmp_path / "straight"), final_weights(tmp_path / "crashed")
    for name in straight:
        torch.testing.assert_close(resumed[name], straight[name], rtol=0, atol=0, msg=name)


def test_periodic_checkpoint_is_due_by_steps_or_by_minutes(tmp_path):
    by_steps = tiny_config(tmp_path, "checkpoint_every_steps=5", "checkpoint_every_minutes=0")
    assert [_checkpoint_due(by_steps, step, 1e9) for step in (4, 5, 6, 10)] == [False, True, False, True]
    by_time = tiny_config(tmp_path, "checkpoint_every_steps=0", "checkpoint_every_minutes=2")
    assert not _checkpoint_due(by_time, 7, 119.0) and _checkpoint_due(by_time, 7, 120.0)
    off = tiny_config(tmp_path, "checkpoint_every_steps=0", "checkpoint_every_minutes=0")
    assert not _checkpoint_due(off, 10, 1e9)


@pytest.mark.filterwarnings("ignore:for .*copying from a non-meta parameter")
def test_restore_reads_the_checkpoint_on_the_cpu_whatever_the_training_device(tmp_path):
    """``torch.set_rng_state`` takes a CPU byte tensor only: a checkpoint mapped to the training
    device (``map_location=device``) crashed every resume on a GPU. The meta device stands in for
    the GPU: the model and optimiser state must land there, the RNG state must not."""
    train(tiny_config(tmp_path, "max_steps=1"), tmp_path / "run")
    saved = checkpoint.load(tmp_path / "run" / "last.pt")
    device = torch.device("meta")
    model = build_model(tiny_config(tmp_path)).to(device)
    optimizer = torch.optim.Adam([p for n, p in model.named_parameters() if not n.startswith("discriminator.")])
    d_optimizer = torch.optim.Adam(model.discriminator.parameters())
    torch.manual_seed(12345)
    state = restore_training_state(tmp_path / "run" / "last.pt", device, model, optimizer, d_optimizer,
                                   torch.amp.GradScaler("cpu", enabled=False))
    assert state["step"] == 1
    assert torch.equal(torch.get_rng_state(), saved["rng"]["torch"])
    moments = [per_parameter["exp_avg"] for per_parameter in optimizer.state.values()]
    assert moments and all(moment.device == device for moment in moments)


# ----------------------------------------------------------------------------- typed overrides


def _architecture(model: torch.nn.Module) -> dict:
    """What a switch can change: every module's type and every parameter's shape, by name."""
    return {**{name: type(module).__name__ for name, module in model.named_modules()},
            **{name: tuple(value.shape) for name, value in model.state_dict().items()}}


def _switches() -> list[tuple[str, str, object]]:
    """Each bool / tuple field of LABConfig: (field, command-line text, the value it must give),
    the text spelt as a user might (False / no / off, "[a, b]")."""
    default, cases, falses = LABConfig(), [], iter(["False", "no", "off", "0"] * 4)
    for name, annotation in config_fields.field_types(LABConfig).items():
        value = getattr(default, name)
        if annotation is bool:
            cases.append((name, next(falses) if value else "yes", not value))
        elif typing.get_origin(annotation) is tuple:
            cases.append((name, "[" + ", ".join(map(str, value[:-1])) + "]", value[:-1]))
    return cases


@pytest.mark.parametrize("name, text, value", _switches())
def test_each_ablation_switch_changes_the_trained_model_and_is_saved_typed(tmp_path, name, text, value):
    config = tiny_config(tmp_path, "input_size=64", "max_steps=1", f"model.{name}={text}")
    train(config, tmp_path / "run")
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["model_overrides"][name] == (list(value) if isinstance(value, tuple) else value)
    assert presets.from_dict(saved) == config
    assert getattr(checkpoint.load_model(tmp_path / "run" / "last.pt")[1]["config"], name) == value
    plain = tiny_config(tmp_path, "input_size=64")
    assert _architecture(build_model(config)) != _architecture(build_model(plain))


@pytest.mark.parametrize("text, value", [
    ("false", False), ("False", False), ("no", False), ("0", False), ("off", False),
    ("true", True), ("YES", True), ("1", True), ("on", True)])
def test_bool_overrides_accept_the_usual_spellings(text, value):
    config = presets.override(presets.get("300w"), [f"model.message_passing={text}", f"compile={text}"])
    assert config.model_overrides["message_passing"] is value and config.compile is value


@pytest.mark.parametrize("assignment, field, value", [
    ("model.fusion_stages=1,2", "fusion_stages", (1, 2)),
    ("model.fusion_stages=[1, 2]", "fusion_stages", (1, 2)),
    ("model.fusion_stages=(3)", "fusion_stages", (3,)),
    ("model.fusion_stages=", "fusion_stages", ()),
    ("model.stacks=2", "stacks", 2),
    ("model.adversarial_weight=0", "adversarial_weight", 0.0),
    ("model.normalization=per_image", "normalization", "per_image"),
])
def test_model_overrides_are_parsed_by_the_field_type(assignment, field, value):
    parsed = presets.override(presets.get("300w"), [assignment]).model_overrides[field]
    assert parsed == value and type(parsed) is type(value)


@pytest.mark.parametrize("assignment, message", [
    ("model.message_passing=maybe", "model.message_passing takes a boolean"),
    ("model.num_stacks=2", r"unknown field 'model.num_stacks'; known: model.name, model.input_size, model.stacks"),
    ("augment.rotation=20", r"unknown field 'augment.rotation'; known: augment\.[a-z_]+, .*augment.rotation_deg"),
    ("epochs=2.5", "epochs takes an integer"),
    ("model.fusion_stages=1,x", r"model.fusion_stages\[1\] takes an integer"),
    ("augment.zoom_range=0.9", r"augment.zoom_range takes 2 values"),
    ("lr=nan", "lr takes a finite number"),
    ("epochs", "not of the form key=value"),
])
def test_bad_overrides_are_refused_naming_the_field(assignment, message):
    with pytest.raises(ValueError, match=message):
        presets.override(presets.get("300w"), [assignment])


def test_override_leaves_the_preset_untouched():
    preset = presets.get("300w")
    presets.override(preset, ["model.stacks=2", "epochs=3", "augment.shift=0"])
    assert preset == presets.get("300w") and preset.model_overrides == {}


def test_the_documented_override_examples_apply():
    texts = [(REPOSITORY / "README.md").read_text(), Path(labfast.train.loop.__file__).read_text(),
             Path(presets.__file__).read_text()]
    examples = sorted({match for text in texts for match in re.findall(r"\b(?:model|augment)\.\w+=[^\s`\])]+", text)})
    assert {"augment.rotation_deg=20", "model.stacks=2"} <= set(examples), examples
    config = presets.override(presets.get("300w"), examples)
    build_model(presets.override(config, ["model=tiny"]))  # the LABConfig they make is valid


def test_train_config_checks_field_types():
    with pytest.raises(TypeError, match="TrainConfig.epochs must be int, got '3'"):
        presets.TrainConfig(epochs="3")
    with pytest.raises(TypeError, match="model.message_passing must be bool, got 'False'"):
        presets.TrainConfig(model_overrides={"message_passing": "False"})
    with pytest.raises(ValueError, match="unknown field 'model.stackz'"):
        presets.TrainConfig(model_overrides={"stackz": 2})
    with pytest.raises(TypeError, match="AugmentConfig.zoom_range must be"):
        presets.TrainConfig(augment=presets.AugmentConfig(zoom_range="0.9,1.1"))


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
    config = tiny_config(tmp_path, f"data_root={root}", "num_workers=1", "max_bad_fraction=0.2", "log_every=1")
    with caplog.at_level(logging.WARNING, logger="labfast.train.loop"):
        summary = train(config, tmp_path / "run")
    assert summary["steps"] == 4  # the batch that held it trained on its 3 readable faces
    named = [record for record in caplog.records if corrupt.name in record.getMessage()]
    assert len(named) == 2  # once per epoch
    assert scalars(tmp_path / "run", "unreadable_images") == [1.0, 1.0]


def test_more_unreadable_images_than_max_bad_fraction_end_the_run_clearly(tmp_path):
    root, corrupt = _faces_with_a_corrupt_image(tmp_path)
    config = tiny_config(tmp_path, f"data_root={root}", "max_bad_fraction=0.1")  # 1 of 8 > 0.8
    with pytest.raises(RuntimeError, match=rf"1 of the 8 training images could not be read.*{corrupt.name}"):
        train(config, tmp_path / "run")


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


def test_train_step_rejects_a_non_finite_landmark_naming_the_sample(tmp_path):
    # The step's ground truth (labfast.ops.boundary_heatmaps) names the sample and the landmark,
    # before any optimiser step; it used to surface only as "training loss is nan".
    from labfast.train.loop import _train_step

    config = tiny_config(tmp_path)
    model = build_model(config)
    optimizer = torch.optim.Adam(model.parameters())
    d_optimizer = torch.optim.Adam(model.discriminator.parameters())
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    landmarks = torch.rand(2, 68, 2, generator=torch.Generator().manual_seed(0)) * 160 + 48
    landmarks[1, 30, 0] = float("nan")
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    with pytest.raises(ValueError, match=r"sample 1 \(batch index\), landmark 30"):
        _train_step(config, model, model.discriminator, optimizer, d_optimizer, scaler, torch.rand(2, 3, 256, 256),
                    landmarks, model.scheme, model.boundary_scheme, torch.device("cpu"))
    assert all(torch.equal(p, before[name]) for name, p in model.named_parameters())


# ----------------------------------------------------------------------------- time budget (labfast.train.schedule)


def test_time_budget_fits_whole_epochs_into_the_time_left():
    from labfast.train.schedule import PLANNED_SHARE, fitted_epochs

    # 100 s left at 10 s an epoch: floor(100 * 0.95 / 10) = 9 more after the 2 done
    assert PLANNED_SHARE == 0.95 and fitted_epochs(2, 100.0, 10.0, preset_epochs=60) == 11
    assert fitted_epochs(2, 100.0, 10.0, preset_epochs=5) == 5  # never past the preset's schedule
    assert fitted_epochs(2, -3.0, 10.0, preset_epochs=60) == 2  # over time already: stop now


def test_time_budget_keeps_milestones_at_their_fractions_of_the_schedule():
    from labfast.train.schedule import scaled_milestones

    assert scaled_milestones((40, 55), preset_epochs=60, epochs=30, epochs_done=2) == (20, 28)  # 27.5 rounds to 28
    assert scaled_milestones((40, 55), preset_epochs=60, epochs=3, epochs_done=2) == (2, 3)  # 2 and 2.75


def test_time_budget_sizes_the_schedule_from_the_second_epochs_wall_time():
    from labfast.train.schedule import TimeBudget

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


def test_resume_goes_on_with_the_model_configuration_of_last_pt(tmp_path):
    # A run started before fusion_resize / discriminator_distance existed saved a config without
    # them; rebuilt from today's preset it would switch to area resize and the boundary Dist.
    train(tiny_config(tmp_path, "max_steps=1"), tmp_path / "old")
    state = checkpoint.load(tmp_path / "old" / "last.pt")
    for field in ("fusion_resize", "discriminator_distance"):
        del state["config"][field]
    checkpoint.save(tmp_path / "old" / "last.pt", state)
    train(tiny_config(tmp_path, "max_steps=2"), tmp_path / "old", resume=True)
    resumed = checkpoint.load(tmp_path / "old" / "last.pt")
    assert resumed["step"] == 2
    assert resumed["config"]["fusion_resize"] == "bilinear"
    assert resumed["config"]["discriminator_distance"] == "landmark"


def test_an_unreadable_validation_image_is_left_out_named_and_the_run_goes_on(tmp_path, caplog):
    # validation runs outside the training loader's skipping: before, it ended the run at epoch end
    root = tmp_path / "data"
    shutil.copytree(BUNDLED_DATA, root)
    _, held_out = read_training_faces(tiny_config(tmp_path, "train_limit=10", "val_fraction=0.2"))
    corrupt = root / Path(held_out[0].image_path).relative_to(BUNDLED_DATA)
    corrupt.write_bytes(b"\xff\xd8 not really a jpeg")
    config = tiny_config(tmp_path, f"data_root={root}", "train_limit=10", "val_fraction=0.2", "epochs=1")
    with caplog.at_level(logging.WARNING, logger="labfast.train.loop"):
        train(config, tmp_path / "run")
    assert any("validation" in r.getMessage() and corrupt.name in r.getMessage() for r in caplog.records)
    assert len(scalars(tmp_path / "run", "val_nme")) == 1


def _deadline_worker(rank: int, port: int, results) -> None:
    import torch.distributed as dist

    from labfast.train.loop import Runtime, _past_deadline

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        # process 1's clock has passed its deadline, process 0's has an hour to go
        deadline = time.monotonic() + (3600.0 if rank == 0 else -1.0)
        results[rank] = _past_deadline(deadline, Runtime(rank=rank, world_size=2))
    finally:
        dist.destroy_process_group()


def test_every_process_stops_at_the_deadline_when_any_one_has_passed_it():
    """Each process reads its own clock: one stopping while another goes on to its next step would
    leave the other waiting in the gradient all-reduce forever."""
    import torch.multiprocessing as mp

    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_deadline_worker, args=(29535, results), nprocs=2, join=True)
        assert dict(results) == {0: True, 1: True}


def test_fp32_channels_last_cpu_training_of_the_tiny_model_is_refused_before_it_corrupts_memory(tmp_path):
    """torch 2.13's oneDNN corrupts the heap in the fp32 channels_last backward of the tiny model's
    4 -> 8 1x1 stride-2 projection (the process aborted with "free(): invalid next size")."""
    with pytest.raises(ValueError, match=r"regressor\..*1x1 stride-2 convolution of 4 input channels.*channels_last"):
        train(tiny_config(tmp_path, "channels_last=true", "max_steps=1"), tmp_path / "run")
