"""The processes of a run: one, or the process group ``torchrun`` describes, and what they must agree on.

Every question one process answers alone but all must act on together (is the batch empty, has
the clock run out) is all-reduced here: a process that skipped a step or stopped while another
went on would leave the other waiting in DistributedDataParallel's gradient all-reduce forever.
"""
from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel


@dataclasses.dataclass
class Runtime:
    rank: int = 0
    world_size: int = 1
    device: torch.device = dataclasses.field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_runtime() -> Runtime:
    """Single process, or the process group ``torchrun`` describes in the environment."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size > 1:
        use_cuda = torch.cuda.is_available()
        dist.init_process_group("nccl" if use_cuda else "gloo")
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        device = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
        if use_cuda:
            torch.cuda.set_device(device)
        return Runtime(dist.get_rank(), dist.get_world_size(), device)
    return Runtime(device=torch.device("cuda" if torch.cuda.is_available() else "cpu"))


def close_runtime(runtime: Runtime) -> None:
    if runtime.distributed:
        dist.destroy_process_group()


def barrier(runtime: Runtime) -> None:
    if runtime.distributed:
        dist.barrier()


def distribute(model: torch.nn.Module, runtime: Runtime) -> tuple[torch.nn.Module, torch.nn.Module | None]:
    """``(forward model, discriminator)``, each wrapped in DistributedDataParallel in a multi-process run.

    The discriminator has its own optimiser step, so the model's wrapper leaves its parameters
    out; a frozen estimator (cross-data-set training) leaves parameters without gradients.
    """
    discriminator = model.discriminator
    if not runtime.distributed:
        return model, discriminator
    DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(
        model, [name for name, _ in model.named_parameters() if name.startswith("discriminator.")]
    )
    frozen = not any(p.requires_grad for p in model.estimator.parameters())
    forward_model = DistributedDataParallel(model, find_unused_parameters=frozen)
    return forward_model, None if discriminator is None else DistributedDataParallel(discriminator)


def count_unreadable(batch: dict[str, Any], runtime: Runtime) -> tuple[int, bool]:
    """``(unreadable items in this step, whether some process has no readable item)``, over all processes.

    Every process must agree on both: the bad-data limit ends all of them together, and a step
    is skipped by all of them together.
    """
    unreadable, empty = len(batch["unreadable"]), "image" not in batch
    if not runtime.distributed:
        return unreadable, empty
    counts = torch.tensor([unreadable, int(empty)], device=runtime.device)
    dist.all_reduce(counts)
    return int(counts[0]), bool(counts[1])


def main_says(flag: bool, runtime: Runtime) -> bool:
    """The main process's ``flag`` on every process (only the main process validates)."""
    if not runtime.distributed:
        return flag
    value = torch.tensor([int(flag and runtime.is_main)], device=runtime.device)
    dist.all_reduce(value)
    return bool(value)


def any_process(flags: Sequence[bool], runtime: Runtime) -> list[bool]:
    """Each of ``flags``, true on every process where it is true on any one: one all-reduce for
    all of them, since the training loop asks after every step. A process that stopped while another
    went on to its next step would leave that one waiting in the gradient all-reduce forever."""
    if not runtime.distributed:
        return list(flags)
    values = torch.tensor([int(flag) for flag in flags], device=runtime.device)
    dist.all_reduce(values, op=dist.ReduceOp.MAX)
    return [bool(value) for value in values.tolist()]
