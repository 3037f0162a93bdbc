"""The processes of a run agree: when one has passed the deadline, all stop."""
import time

import torch.distributed as dist
import torch.multiprocessing as mp

from labfast.train.runtime import Runtime, past_deadline


def _deadline_worker(rank: int, port: int, results) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        # process 1's clock has passed its deadline, process 0's has an hour to go
        deadline = time.monotonic() + (3600.0 if rank == 0 else -1.0)
        results[rank] = past_deadline(deadline, Runtime(rank=rank, world_size=2))
    finally:
        dist.destroy_process_group()


def test_every_process_stops_at_the_deadline_when_any_one_has_passed_it():
    """Each process reads its own clock: one stopping while another goes on to its next step would
    leave the other waiting in the gradient all-reduce forever."""
    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_deadline_worker, args=(29535, results), nprocs=2, join=True)
        assert dict(results) == {0: True, 1: True}
