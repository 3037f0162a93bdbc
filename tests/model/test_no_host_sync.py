"""The model's forward never waits on the device: no host read of a tensor's value (``.item()``,
``bool(tensor)``, data-dependent shapes), so it can run inside a CUDA graph and compile without a
graph break. Checked on the meta device, where any such read fails or shows as an operator."""
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from labfast.model import LAB, config_by_name

HOST_READS = {"aten._local_scalar_dense.default", "aten.nonzero.default", "aten.masked_select.default",
              "aten.is_nonzero.default", "aten.equal.default", "aten.unique_consecutive.default",
              "aten._unique2.default"}


class HostReads(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.seen: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if str(func) in HOST_READS:
            self.seen.append(str(func))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("config", ["tiny", "paper"])
def test_forward_reads_nothing_back_from_the_device(config, training, monkeypatch):
    monkeypatch.setenv("LABFAST_BACKEND", "reference")
    with torch.device("meta"):
        model = LAB("300w", config_by_name(config)).train(training)
        images = torch.zeros(2, 3, model.config.input_size, model.config.input_size)
    with HostReads() as reads:
        output = model(images)
    assert reads.seen == []
    assert output.landmarks.shape == (2, 68, 2)  # shapes follow from the input's alone
    assert [h.shape for h in output.heatmaps] == [(2, 13, 64, 64)] * model.config.stacks
