"""Training presets: overrides parsed by the field's type, refused naming the field, saved typed."""
import json
import re
import typing
from pathlib import Path

import pytest
import torch

import labfast.train.loop
from labfast import checkpoint, config_fields
from labfast.model import LABConfig
from labfast.train import presets, train
from labfast.train.build import build_model
from tiny_runs import REPOSITORY, tiny_config


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
    config = tiny_config("input_size=64", "max_steps=1", f"model.{name}={text}")
    train(config, tmp_path / "run")
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["model_overrides"][name] == (list(value) if isinstance(value, tuple) else value)
    assert presets.from_dict(saved) == config
    assert getattr(checkpoint.load_model(tmp_path / "run" / "last.pt")[1]["config"], name) == value
    plain = tiny_config("input_size=64")
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


def test_the_wild_cpu_preset_is_300w_cpu_with_the_chosen_levers():
    wild, cpu = presets.get("300w_cpu_wild"), presets.get("300w_cpu")
    assert (wild.model, wild.input_size, wild.batch_size, wild.lr) == (cpu.model, cpu.input_size, cpu.batch_size, cpu.lr)
    assert wild.model_overrides == {} and (wild.pose_balance_bins, wild.pose_balance_cap) == (5, 4.0)
    assert (wild.time_budget_minutes, wild.early_stop_fraction) == (480.0, 0.1)
    speed = ("threads", "compile_step", "dense_message_passing", "fused_adam", "inductor_threads")
    assert [getattr(wild, name) for name in speed] == [getattr(cpu, name) for name in speed]
    # the milestones at the fractions of 300w_cpu's 30-epoch schedule
    assert [m / wild.epochs for m in wild.lr_milestones] == [m / cpu.epochs for m in cpu.lr_milestones]
    # the shipped preset keeps today's behaviour
    assert (cpu.pose_balance_bins, cpu.early_stop_fraction, cpu.model_overrides) == (0, 0.0, {})
