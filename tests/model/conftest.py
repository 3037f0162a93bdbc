import pytest
import torch


@pytest.fixture(autouse=True)
def one_intra_op_thread():
    """Run the model tests on one intra-op thread, restored afterwards.

    Their tensors are small (tiny config), so a second thread gains little, while on a shared 2-core
    machine OpenMP threads that spin-wait on a busy neighbour made this folder 5-10× slower
    (measured: 10 s with one thread against 30-90 s with two at load ≈ 7).
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
