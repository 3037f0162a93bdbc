"""The run's state on disk: when a mid-epoch ``last.pt`` is due, and a restore that lands where it must."""
import pytest
import torch

from labfast import checkpoint
from labfast.train import train
from labfast.train.build import build_model
from labfast.train.runtime import Runtime
from labfast.train.state import checkpoint_due, restore_training_state
from labfast.train.step import build_trainer
from tiny_runs import tiny_config


def test_periodic_checkpoint_is_due_by_steps_or_by_minutes():
    by_steps = tiny_config("checkpoint_every_steps=5", "checkpoint_every_minutes=0")
    assert [checkpoint_due(by_steps, step, 1e9) for step in (4, 5, 6, 10)] == [False, True, False, True]
    by_time = tiny_config("checkpoint_every_steps=0", "checkpoint_every_minutes=2")
    assert not checkpoint_due(by_time, 7, 119.0) and checkpoint_due(by_time, 7, 120.0)
    off = tiny_config("checkpoint_every_steps=0", "checkpoint_every_minutes=0")
    assert not checkpoint_due(off, 10, 1e9)


@pytest.mark.filterwarnings("ignore:for .*copying from a non-meta parameter")
def test_restore_reads_the_checkpoint_on_the_cpu_whatever_the_training_device(tmp_path):
    """``torch.set_rng_state`` takes a CPU byte tensor only: a checkpoint mapped to the training
    device (``map_location=device``) crashed every resume on a GPU. The meta device stands in for
    the GPU: the model and optimiser state must land there, the RNG state must not."""
    train(tiny_config("max_steps=1"), tmp_path / "run")
    saved = checkpoint.load(tmp_path / "run" / "last.pt")
    device = torch.device("meta")
    config = tiny_config()
    trainer = build_trainer(build_model(config).to(device), config, Runtime(device=device))
    torch.manual_seed(12345)
    position = restore_training_state(tmp_path / "run" / "last.pt", trainer)
    assert position.step == 1
    assert torch.equal(torch.get_rng_state(), saved["rng"]["torch"])
    moments = [per_parameter["exp_avg"] for per_parameter in trainer.optimizer.state.values()]
    assert moments and all(moment.device == device for moment in moments)
