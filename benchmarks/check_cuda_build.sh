#!/usr/bin/env bash
# Does the CUDA extension (csrc/) build and link, bindings included, against a CUDA build of torch?
# Outside CI (a CUDA torch is 5.5 GB and the build takes minutes); run it whenever csrc/ changes.
#
#   benchmarks/check_cuda_build.sh [VENV]        (or LABFAST_CUDA_VENV=VENV; default .venv-cuda in the checkout)
#
# VENV is a virtual environment holding a CUDA build of torch that matches the nvcc on the PATH
# (CUDA 13.0 here), kept apart from the CPU-only development environment. Made once with
#   python3 -m venv VENV && VENV/bin/pip install torch==2.14.1 numpy ninja setuptools
# (torch==2.14.1 resolves to its CUDA 13.0 build on this project's machines).
#
# What it does: copies setup.py, pyproject.toml, csrc/, labfast/ and kernels/ to a temporary folder,
# runs `setup.py build_ext --inplace` there with LABFAST_BUILD_CUDA=1 and CUDA_HOME *unset* (so
# setup.py's own toolkit lookup through nvcc is what gets tested), loads the built labfast._cuda
# beside that torch (no GPU needed: loading resolves every symbol), and checks that every op
# csrc/*.cu declares (m.def) is registered under torch.ops.labfast_cuda with a CUDA kernel.
# Exit status 0 only when all of that holds. Nothing is installed into VENV or into this checkout.
#
# Settings: TORCH_CUDA_ARCH_LIST (default 9.0, the H100/H200), MAX_JOBS (default 1: about 7 minutes
# on a busy 2-core machine), KEEP=1 keeps the temporary folder.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${1:-${LABFAST_CUDA_VENV:-$root/.venv-cuda}}"
python="$venv/bin/python"

if ! "$python" -c "import torch, sys; sys.exit(0 if torch.version.cuda else 1)" 2>/dev/null; then
  echo "check_cuda_build: $python has no CUDA build of torch (see the header of $0 to make one)" >&2
  exit 2
fi
command -v nvcc >/dev/null || { echo "check_cuda_build: no nvcc on the PATH" >&2; exit 2; }

work="$(mktemp -d -t labfast-cuda-build.XXXXXX)"
[[ "${KEEP:-0}" == 1 ]] || trap 'rm -rf "$work"' EXIT
cp -r "$root/setup.py" "$root/pyproject.toml" "$root/csrc" "$root/labfast" "$root/kernels" "$work/"
find "$work" -name '*.so' -delete  # never test a stale build

echo "check_cuda_build: torch $("$python" -c 'import torch; print(torch.__version__, "CUDA", torch.version.cuda)'),"\
     "$(nvcc --version | tail -1), in $work"
start=$SECONDS
(
  cd "$work"
  env -u CUDA_HOME -u CUDA_PATH LABFAST_BUILD_CUDA=1 TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}" \
    MAX_JOBS="${MAX_JOBS:-1}" "$python" setup.py -q build_ext --inplace
)
echo "check_cuda_build: built in $((SECONDS - start)) s"

declared="$(grep -ho 'm\.def("[a-z_]*' "$root"/csrc/*.cu | sed 's/m\.def("//' | sort)"
"$python" - "$work" $declared <<'EOF'
import glob
import importlib.util
import sys

import torch

work, declared = sys.argv[1], sys.argv[2:]
[library] = glob.glob(f"{work}/labfast/_cuda*.so")
spec = importlib.util.spec_from_file_location("labfast._cuda", library)
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)  # dlopen with every symbol resolved: a link error shows here
registered = sorted(name.split("::", 1)[1] for name in torch._C._dispatch_get_all_op_names()
                    if name.startswith("labfast_cuda::"))
print(f"loaded {library}")
for name in registered:
    has_cuda = torch._C._dispatch_has_kernel_for_dispatch_key(f"labfast_cuda::{name}", "CUDA")
    print(f"  torch.ops.labfast_cuda.{name}: {'CUDA kernel' if has_cuda else 'NO CUDA KERNEL'}")
missing = sorted(set(declared) - set(registered))
without_kernel = [name for name in registered
                  if not torch._C._dispatch_has_kernel_for_dispatch_key(f"labfast_cuda::{name}", "CUDA")]
if missing or without_kernel or not declared:
    print(f"check_cuda_build: FAILED; declared in csrc but not registered: {missing or 'none'}; "
          f"without a CUDA kernel: {without_kernel or 'none'}; declared: {len(declared)}", file=sys.stderr)
    sys.exit(1)
print(f"check_cuda_build: ok, {len(registered)} ops registered with CUDA kernels")
EOF
