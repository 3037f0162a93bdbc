import os
from pathlib import Path

import pytest

import torch  # imports no triton, so TRITON_INTERPRET can still be chosen below

# Without a CUDA device, Triton kernels run on CPU tensors through the interpreter (it must be set
# before triton is imported). With one, they compile and run on the GPU: `pytest -m gpu` tests the
# real kernels. The interpreter parity tests (CPU tensors) then need `TRITON_INTERPRET=1 pytest`.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(autouse=True)
def one_intra_op_thread():
    """Every test on one intra-op thread, restored afterwards.

    The tests' tensors are small, so a second thread gains little, while on a busy 2-core machine
    OpenMP threads that spin-wait on a neighbour made model tests 5-10x slower (10 s with one
    thread against 30-90 s with two, measured at a load of about 7).
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A randomly initialised tiny 300-W LAB saved as a real checkpoint."""
    from labfast import checkpoint
    from labfast.model import LAB, config_by_name

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("checkpoint") / "tiny.pt"
    checkpoint.save(path, checkpoint.model_payload(LAB("300w", config_by_name("tiny"))))
    return path


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` beside the checkout (real annotated faces); skips where it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data folder {SHARED_DATA} is absent (a user's clone has no ../shared)")
    return SHARED_DATA


@pytest.fixture
def eager_runtime(monkeypatch):
    """``FaceAligner`` on eager PyTorch: skips the ONNX export and check that ``runtime="auto"`` runs
    on every construction (about 20 s on a busy 2-core machine), for tests of what surrounds the model."""
    from labfast.inference import aligner, runtime

    monkeypatch.setattr(aligner, "inference_runtime",
                        lambda model, device, _runtime, threads: runtime.inference_runtime(model, device, "torch", threads))
