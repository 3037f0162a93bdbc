// Python module for the CUDA extension labfast._cuda. The ops themselves are registered by each
// csrc/*.cu file with TORCH_LIBRARY_FRAGMENT(labfast_cuda, m) and called as torch.ops.labfast_cuda.*;
// importing this module is what loads them.
#include <torch/extension.h>

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "labfast CUDA kernels (registered under torch.ops.labfast_cuda)";
}
