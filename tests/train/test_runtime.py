"""The processes of a run agree: when one has passed the deadline or had a stop signal, all stop."""
import time

import torch.distributed as dist
import torch.multiprocessing as mp

from labfast.train.runtime import Runtime, any_process


def _worker(rank: int, port: int, results) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        # process 1's clock has passed its deadline, process 0's has an hour to go;
        # only process 0 has had a stop signal; neither has the third flag
        deadline = time.monotonic() + (3600.0 if rank == 0 else -1.0)
        results[rank] = any_process([time.monotonic() > deadline, rank == 0, False], Runtime(rank=rank, world_size=2))
    finally:
        dist.destroy_process_group()


def test_every_process_acts_on_a_flag_that_any_one_process_raised():
    """Each process reads its own clock and receives its own signals: one stopping while another goes
    on to its next step would leave the other waiting in the gradient all-reduce forever."""
    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_worker, args=(29535, results), nprocs=2, join=True)
        assert dict(results) == {0: [True, True, False], 1: [True, True, False]}


def test_a_single_process_keeps_its_own_flags():
    assert any_process([True, False], Runtime()) == [True, False]
