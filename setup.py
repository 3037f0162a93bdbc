"""Build script: pure Python by default; the CUDA extension in csrc/ only when asked.

``LABFAST_BUILD_CUDA=1 pip install --no-build-isolation --no-deps -e .`` builds
``labfast._cuda`` from ``csrc/*.cu`` (needs nvcc and a CUDA build of torch). The switch is
explicit rather than "nvcc found" because a CPU torch cannot build CUDA code at all.
The top-level ``kernels/`` folder ships as the subpackage ``labfast.kernels`` through the link
``labfast/kernels -> ../kernels`` (a top-level package named ``kernels`` would clash with an
unrelated PyPI project); through the link, import-linter sees the kernels as part of ``labfast``.

CUDA_HOME: torch guesses the toolkit from where ``nvcc`` lies on the PATH. Where that ``nvcc`` is
a wrapper script (``/usr/local/bin/nvcc`` running ``exec /usr/local/cuda-13.0/bin/nvcc "$@"``)
the guess is ``/usr/local``, which holds no ``lib64/libcudart``, and the link fails with
``cannot find -lcudart``. So, unless ``CUDA_HOME`` (or ``CUDA_PATH``) is set, this script asks
nvcc itself where it runs from (``nvcc --dryrun`` prints ``_HERE_=<toolkit>/bin``) and sets
``CUDA_HOME`` to that toolkit before torch's build helpers read it.

Kept importable (``setup()`` runs only as ``__main__``, which is how pip and ``python setup.py``
run it) so that tests can check ``cuda_home_from_nvcc`` without building anything.
"""
import glob
import os
import shutil
import subprocess


def cuda_home_from_nvcc(nvcc: str) -> str | None:
    """The toolkit folder the ``nvcc`` at this path really runs from, wrappers seen through.

    ``nvcc --dryrun`` lists the steps it would run, among them ``#$ _HERE_=<toolkit>/bin`` (the
    folder of the real nvcc binary), without compiling anything. ``None`` if nvcc says no such thing.
    """
    try:
        listing = subprocess.run([nvcc, "--dryrun", "-c", "-x", "cu", os.devnull, "-o", os.devnull],
                                 capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    for line in (listing.stdout + listing.stderr).splitlines():
        key, sep, value = line.removeprefix("#$ ").partition("=")
        if sep and key.strip() == "_HERE_" and value.strip():
            return os.path.dirname(os.path.realpath(value.strip()))
    return None


def resolve_cuda_home(environ=os.environ) -> str:
    """``CUDA_HOME`` / ``CUDA_PATH`` as given, else the toolkit of the ``nvcc`` on the PATH; a clear
    error naming what to set where neither works."""
    given = environ.get("CUDA_HOME") or environ.get("CUDA_PATH")
    if given:
        return given
    nvcc = shutil.which("nvcc", path=environ.get("PATH"))
    if nvcc is None:
        raise SystemExit("LABFAST_BUILD_CUDA=1: no nvcc on the PATH and CUDA_HOME is not set; "
                         "set CUDA_HOME to the CUDA toolkit (the folder holding bin/nvcc and lib64/)")
    home = cuda_home_from_nvcc(nvcc)
    if home is None or not os.path.isfile(os.path.join(home, "bin", "nvcc")):
        raise SystemExit(f"LABFAST_BUILD_CUDA=1: could not tell the CUDA toolkit of {nvcc} from `nvcc --dryrun`; "
                         "set CUDA_HOME to the toolkit (the folder holding bin/nvcc and lib64/)")
    return home


def cuda_extension():
    """``(ext_modules, cmdclass)`` of ``labfast._cuda``."""
    os.environ["CUDA_HOME"] = resolve_cuda_home()
    print(f"labfast: building labfast._cuda with CUDA_HOME={os.environ['CUDA_HOME']}")
    # imported only now: torch.utils.cpp_extension reads CUDA_HOME when it is first imported
    from torch.utils.cpp_extension import BuildExtension, CUDAExtension

    sources = sorted(glob.glob("csrc/*.cpp") + glob.glob("csrc/*.cu"))
    extension = CUDAExtension(
        name="labfast._cuda",
        sources=sources,
        extra_compile_args={"cxx": ["-O3"], "nvcc": ["-O3", "--use_fast_math"]},
    )
    return [extension], {"build_ext": BuildExtension}


if __name__ == "__main__":
    from setuptools import setup

    ext_modules, cmdclass = cuda_extension() if os.environ.get("LABFAST_BUILD_CUDA") == "1" else ([], {})
    setup(
        packages=[
            "labfast",
            "labfast.data",
            "labfast.model",
            "labfast.ops",
            "labfast.kernels",
            "labfast.inference",
            "labfast.evaluation",
            "labfast.train",
            "labfast.perf",
            "labfast.perf.sections",
            "labfast.commands",
            "labfast.tools",
        ],
        package_data={"labfast": ["weights/*", "detectors/*"]},
        ext_modules=ext_modules,
        cmdclass=cmdclass,
    )
