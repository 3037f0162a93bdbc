"""Build script: pure Python by default; the CUDA extension in csrc/ only when asked.

``LABFAST_BUILD_CUDA=1 pip install --no-build-isolation --no-deps -e .`` builds
``labfast._cuda`` from ``csrc/*.cu`` (needs nvcc and a CUDA build of torch). The switch is
explicit rather than "nvcc found" because a CPU torch cannot build CUDA code at all.
The top-level ``kernels/`` folder ships as the subpackage ``labfast.kernels`` (a top-level
package named ``kernels`` would clash with an unrelated PyPI project).
"""
import glob
import os

from setuptools import setup

ext_modules = []
cmdclass = {}
if os.environ.get("LABFAST_BUILD_CUDA") == "1":
    from torch.utils.cpp_extension import BuildExtension, CUDAExtension

    sources = sorted(glob.glob("csrc/*.cpp") + glob.glob("csrc/*.cu"))
    ext_modules.append(
        CUDAExtension(
            name="labfast._cuda",
            sources=sources,
            extra_compile_args={"cxx": ["-O3"], "nvcc": ["-O3", "--use_fast_math"]},
        )
    )
    cmdclass["build_ext"] = BuildExtension

setup(
    packages=[
        "labfast",
        "labfast.data",
        "labfast.model",
        "labfast.ops",
        "labfast.kernels",
    ],
    package_dir={"labfast.kernels": "kernels"},
    package_data={"labfast": ["weights/*", "detectors/*"]},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
