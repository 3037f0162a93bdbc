"""labfast bench's defaults: torch.compile only when asked for on a CPU (its warm-up takes minutes there)."""
import argparse

import torch

from labfast import bench


def settings(device: str, backend=None):
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    args = parser.parse_args([] if backend is None else ["--backend", backend])
    return bench.settings_from_args(args, torch.device(device))


def test_cpu_default_leaves_compile_out_and_the_gpu_default_keeps_it():
    assert settings("cpu").groups == ("reference",)
    assert settings("cuda").groups == ("reference", "compile", "fast")  # settings only: no GPU is touched


def test_compile_on_the_cpu_is_an_opt_in():
    assert settings("cpu", "reference,compile").groups == ("reference", "compile")
