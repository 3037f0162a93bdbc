"""What a measurement ran on: the device's name, driver and vendor peak figures (roofline), the
ceilings a prediction divides by, and the software (versions, commit) beside them.

Peaks are the vendor datasheets' *dense* figures (the datasheets print tensor-core throughput
"with sparsity", twice the dense figure; we halve it and say so). Memory bandwidth is the HBM
figure. A CPU's peak is not known here: its rows report no share of peak.

Sources: the NVIDIA datasheets named in ``source``, figures as those sheets print them, copied
from the sheets' published tables: re-check against the current PDF before quoting a share of peak.
- H100 SXM5 / PCIe / NVL: "NVIDIA H100 Tensor Core GPU" datasheet (2023): BF16 1,979 / 1,513 /
  1,671 TFLOPS with sparsity; FP32 67 / 51 / 60 TFLOPS; TF32 989 / 756 / 835 with sparsity;
  HBM 3.35 / 2.0 / 3.9 TB/s.
- H200 SXM / NVL: "NVIDIA H200 Tensor Core GPU" datasheet (2024): BF16 1,979 / 1,671 with
  sparsity; FP32 67 / 60; TF32 989 / 835 with sparsity; HBM3e 4.8 TB/s.
- A100 SXM4 / PCIe: "NVIDIA A100 Tensor Core GPU" datasheet (2021): BF16 312 dense; FP32 19.5;
  TF32 156 dense; HBM2e 80 GB SXM 2,039 GB/s, 80 GB PCIe 1,935 GB/s, 40 GB HBM2 1,555 GB/s.
"""
from __future__ import annotations

import dataclasses
import datetime
import functools
import os
import platform
import subprocess
from pathlib import Path

import numpy as np
import torch


@dataclasses.dataclass(frozen=True)
class Peak:
    """Dense vendor peaks of one GPU model: FLOP/s per dtype and bytes/s of device memory."""

    model: str
    bf16_flops: float
    fp32_flops: float  # CUDA cores, no tensor cores
    tf32_flops: float  # tensor cores, what cuDNN uses for fp32 convolutions when TF32 is allowed
    memory_bandwidth: float  # bytes/s
    source: str


_H100_SHEET = "NVIDIA H100 Tensor Core GPU datasheet (dense = half the 'with sparsity' figure)"
_H200_SHEET = "NVIDIA H200 Tensor Core GPU datasheet (dense = half the 'with sparsity' figure)"
_A100_SHEET = "NVIDIA A100 Tensor Core GPU datasheet (dense figures)"

# (test on the lower-case device name, peak); the first match wins, so the specific names come first.
_KNOWN_GPUS: tuple[tuple[tuple[str, ...], Peak], ...] = (
    (("h100", "nvl"), Peak("H100 NVL", 1671e12 / 2, 60e12, 835e12 / 2, 3.9e12, _H100_SHEET)),
    (("h100", "pcie"), Peak("H100 PCIe", 1513e12 / 2, 51e12, 756e12 / 2, 2.0e12, _H100_SHEET)),
    (("h100",), Peak("H100 SXM5", 1979e12 / 2, 67e12, 989e12 / 2, 3.35e12, _H100_SHEET)),
    (("h200", "nvl"), Peak("H200 NVL", 1671e12 / 2, 60e12, 835e12 / 2, 4.8e12, _H200_SHEET)),
    (("h200",), Peak("H200 SXM", 1979e12 / 2, 67e12, 989e12 / 2, 4.8e12, _H200_SHEET)),
    (("a100", "80gb", "pcie"), Peak("A100 80GB PCIe", 312e12, 19.5e12, 156e12, 1.935e12, _A100_SHEET)),
    (("a100", "80gb"), Peak("A100 80GB SXM4", 312e12, 19.5e12, 156e12, 2.039e12, _A100_SHEET)),
    (("a100",), Peak("A100 40GB", 312e12, 19.5e12, 156e12, 1.555e12, _A100_SHEET)),
)


def known_peak(device_name: str) -> Peak | None:
    """The vendor peak of a GPU from its ``torch.cuda.get_device_name()``, or ``None`` if unknown.

    >>> known_peak("NVIDIA H100 80GB HBM3").model
    'H100 SXM5'
    """
    lowered = device_name.lower()
    if "gh200" in lowered:  # Grace Hopper: other memory figures than the discrete H200
        return None
    for words, peak in _KNOWN_GPUS:
        if all(word in lowered for word in words):
            return peak
    return None


def compute_peak(peak: Peak, dtype: str) -> tuple[float, str]:
    """The FLOP/s that bounds a model run in ``dtype`` ("fp32" or "bf16"), and which peak it is.

    fp32: PyTorch lets cuDNN use TF32 tensor cores for fp32 convolutions by default
    (``torch.backends.cudnn.allow_tf32``), and LAB's FLOPs are almost all convolutions, so the
    TF32 peak is the honest ceiling then; with TF32 off it is the FP32 CUDA-core peak.
    """
    if dtype == "bf16":
        return peak.bf16_flops, "bf16 tensor"
    if dtype != "fp32":
        raise ValueError(f"dtype {dtype!r} is not one of fp32, bf16")
    if torch.backends.cudnn.allow_tf32:
        return peak.tf32_flops, "tf32 tensor (cudnn.allow_tf32)"
    return peak.fp32_flops, "fp32"


@functools.cache
def _nvidia_driver() -> str:
    try:
        result = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                capture_output=True, text=True, timeout=20, check=True)
    except (OSError, subprocess.SubprocessError) as error:
        return f"unknown (nvidia-smi: {error})"
    return result.stdout.strip().splitlines()[0] if result.stdout.strip() else "unknown"


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as stream:
            for line in stream:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe(device: torch.device) -> dict:
    """Name, driver and peaks of ``device`` as plain data (what the benchmark JSON stores)."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        properties = torch.cuda.get_device_properties(device)
        peak = known_peak(name)
        return {
            "type": "cuda",
            "name": name,
            "driver": _nvidia_driver(),
            "cuda_runtime": torch.version.cuda,
            "compute_capability": f"{properties.major}.{properties.minor}",
            "memory_bytes": properties.total_memory,
            "peak": dataclasses.asdict(peak) if peak else None,
            "peak_note": None if peak else f"no vendor peak recorded for {name!r} in labfast.perf.devices",
        }
    if device.type == "cpu":
        return {
            "type": "cpu",
            "name": _cpu_name(),
            "driver": "n/a (CPU)",
            "cores": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "peak": None,
            "peak_note": "peak FLOP/s and bandwidth of this CPU are not known: no share of peak is reported",
        }
    raise ValueError(f"device {device} is neither cpu nor cuda")


@dataclasses.dataclass(frozen=True)
class Ceiling:
    """The peaks a predicted roofline divides by: one device, datasheet or measured."""

    name: str
    bf16_flops: float
    fp32_flops: float  # CUDA cores
    bandwidth: float  # bytes/s
    source: str

    def flops(self, dtype: str) -> float:
        """The tensor-core peak a model in ``dtype`` can reach (TF32 for fp32, as cuDNN uses it)."""
        return self.bf16_flops if dtype == "bf16" else self.tf32_flops

    @property
    def tf32_flops(self) -> float:
        return self.bf16_flops / 2  # TF32 tensor cores run at half the bf16 rate on Hopper


_MEASURED = (
    "measured on the project's GPU machines (../shared/STACK.md): a large bf16 matmul reaches about "
    "800 TFLOP/s and a device-to-device copy about {copy} TB/s; the FP32 CUDA-core figure is the datasheet's"
)


def ceilings() -> list[Ceiling]:
    """The ceilings ``labfast bench --predict`` reports: H100 SXM5 and H200 SXM, datasheet and measured.

    The measured bf16 figure (about 800 TFLOP/s, 81 % of the dense datasheet peak) was taken on an
    H100; the H200 has the same GH100 compute die and clocks, so the same figure is used for it,
    with its own measured copy bandwidth (about 4.3 TB/s against the H100's 3.0).
    """
    h100 = known_peak("H100 SXM5")
    h200 = known_peak("H200 SXM")
    return [
        Ceiling("H100 datasheet", h100.bf16_flops, h100.fp32_flops, h100.memory_bandwidth, h100.source),
        Ceiling("H100 measured", 800e12, h100.fp32_flops, 3.0e12, _MEASURED.format(copy="3.0")),
        Ceiling("H200 measured", 800e12, h200.fp32_flops, 4.3e12, _MEASURED.format(copy="4.3")),
    ]


def versions() -> dict:
    """The versions of what a measurement ran on (Python, torch, Triton, CUDA, cuDNN, NumPy, OpenCV)."""
    import cv2

    try:
        import triton

        triton_version = triton.__version__
    except Exception as error:  # noqa: BLE001 - absent or broken: say which
        triton_version = f"unavailable ({error})"
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "triton": triton_version,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "numpy": np.__version__,
        "opencv": cv2.__version__,
    }


def git_commit() -> dict:
    """The commit of this checkout and whether tracked files differ from it."""
    root = Path(__file__).resolve().parents[2]
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip() != ""
    except (OSError, subprocess.SubprocessError):
        return {"commit": "unknown (not a git checkout)", "dirty": None}
    return {"commit": commit, "dirty": dirty}


def environment(device: torch.device | str) -> dict:
    """Where and with what a measurement was taken: device name, versions and date
    (``extra_info`` of the pytest-benchmark rows in ``benchmarks/``)."""
    return {"device": describe(torch.device(device))["name"], **versions(),
            "date": datetime.date.today().isoformat()}
