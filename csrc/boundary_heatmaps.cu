// CUDA C++ version of the fused boundary heatmap kernel (labfast/ops/boundary_heatmaps.py,
// kernels/boundary_heatmaps.py): for every curve c (one face, one boundary) and pixel centre p,
//   d2 = min over segments (a, b) of |p - a - t (b - a)|^2,  t = clamp(<p - a, b - a> / |b - a|^2, 0, 1)
//   out = exp(-d2 / (2 sigma^2)) if d2 < (3 sigma)^2 else 0,   written in fp32, fp16 or bf16.
// Forward only (ground truth needs no gradient). No binary map, no distance field in memory.
//
// One block = one curve x BLOCK pixels; the curve's P samples are staged in shared memory in tiles
// of TILE samples, every thread then walks the tile's segments for its pixel.
//
// Layout of this file:
//   1. torch-free kernel and extern "C" launcher (raw pointers, cudaStream_t). CPU CI compiles this
//      part alone: nvcc -c -DLABFAST_NO_TORCH -gencode=arch=compute_90,code=sm_90 boundary_heatmaps.cu
//   2. the torch binding (#ifndef LABFAST_NO_TORCH), registered as torch.ops.labfast_cuda.boundary_heatmaps.
//      It cannot be compiled on the CPU machines (CPU torch has no CUDA headers to build against).

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <stdint.h>

namespace labfast_boundary {

enum DType : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };

constexpr int kBlock = 256;  // pixels per block
constexpr int kTile = 256;   // curve samples staged in shared memory at a time

template <typename T> __device__ __forceinline__ void store(T* p, float v);
template <> __device__ __forceinline__ void store<float>(float* p, float v) { *p = v; }
template <> __device__ __forceinline__ void store<__half>(__half* p, float v) { *p = __float2half_rn(v); }
template <> __device__ __forceinline__ void store<__nv_bfloat16>(__nv_bfloat16* p, float v) {
  *p = __float2bfloat16_rn(v);
}

template <typename T>
__global__ void boundary_heatmaps_kernel(const float2* __restrict__ curves, T* __restrict__ out,
                                         int num_samples, int height, int width,
                                         float half_inverse_variance, float cut_squared) {
  __shared__ float2 tile[kTile];
  const int64_t curve = blockIdx.x;
  const int pixel = blockIdx.y * kBlock + threadIdx.x;
  const float px = static_cast<float>(pixel % width);
  const float py = static_cast<float>(pixel / width);
  const float2* samples = curves + curve * num_samples;

  float best = INFINITY;
  // Tiles overlap by one sample so that every segment (s, s + 1) lies inside one tile.
  for (int first = 0; first < max(num_samples - 1, 1); first += kTile - 1) {
    const int count = min(kTile, num_samples - first);
    __syncthreads();
    for (int i = threadIdx.x; i < count; i += kBlock) tile[i] = samples[first + i];
    __syncthreads();
    const int segments = max(count - 1, 1);  // a one-sample curve is its point
    for (int s = 0; s < segments; ++s) {
      const float2 a = tile[s];
      const float2 b = tile[min(s + 1, count - 1)];
      const float dx = b.x - a.x, dy = b.y - a.y;
      const float length2 = fmaxf(dx * dx + dy * dy, 1e-12f);
      const float rx = px - a.x, ry = py - a.y;
      const float t = fminf(fmaxf((rx * dx + ry * dy) / length2, 0.0f), 1.0f);
      const float ex = rx - t * dx, ey = ry - t * dy;
      best = fminf(best, ex * ex + ey * ey);
    }
  }
  if (pixel < height * width) {
    const float value = best < cut_squared ? expf(-best * half_inverse_variance) : 0.0f;
    store(out + curve * height * width + pixel, value);
  }
}

}  // namespace labfast_boundary

// curves: (num_curves, num_samples, 2) float32; out: (num_curves, height, width) of dtype_code.
extern "C" cudaError_t labfast_boundary_heatmaps_launch(const float* curves, void* out, int dtype_code,
                                                        int64_t num_curves, int num_samples, int height,
                                                        int width, float sigma, cudaStream_t stream) {
  using namespace labfast_boundary;
  if (num_curves == 0 || height == 0 || width == 0) return cudaSuccess;
  const int64_t tiles = (static_cast<int64_t>(height) * width + kBlock - 1) / kBlock;
  if (num_samples < 1 || sigma <= 0.0f || tiles > 65535 || num_curves > 0x7fffffff) return cudaErrorInvalidValue;
  const dim3 grid(static_cast<unsigned>(num_curves), static_cast<unsigned>(tiles));
  const float half_inverse_variance = 0.5f / (sigma * sigma);
  const float cut_squared = 9.0f * sigma * sigma;
  const float2* c = reinterpret_cast<const float2*>(curves);
  switch (dtype_code) {
    case kFloat32:
      boundary_heatmaps_kernel<float><<<grid, kBlock, 0, stream>>>(
          c, static_cast<float*>(out), num_samples, height, width, half_inverse_variance, cut_squared);
      break;
    case kFloat16:
      boundary_heatmaps_kernel<__half><<<grid, kBlock, 0, stream>>>(
          c, static_cast<__half*>(out), num_samples, height, width, half_inverse_variance, cut_squared);
      break;
    case kBFloat16:
      boundary_heatmaps_kernel<__nv_bfloat16><<<grid, kBlock, 0, stream>>>(
          c, static_cast<__nv_bfloat16*>(out), num_samples, height, width, half_inverse_variance, cut_squared);
      break;
    default:
      return cudaErrorInvalidValue;
  }
  return cudaGetLastError();
}

#ifndef LABFAST_NO_TORCH
// ---- torch binding: torch.ops.labfast_cuda.boundary_heatmaps ----
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

namespace {

at::Tensor boundary_heatmaps(const at::Tensor& curves, int64_t height, int64_t width, double sigma,
                             at::ScalarType dtype) {
  TORCH_CHECK(curves.is_cuda(), "boundary_heatmaps: curves must be a CUDA tensor, got ", curves.device());
  TORCH_CHECK(curves.dim() == 4 && curves.size(3) == 2 && curves.size(2) >= 1,
              "boundary_heatmaps: curves must be (N, K, P, 2) with P >= 1, got ", curves.sizes());
  TORCH_CHECK(curves.scalar_type() == at::kFloat, "boundary_heatmaps: curves must be float32, got ",
              curves.scalar_type());
  TORCH_CHECK(height >= 1 && width >= 1, "boundary_heatmaps: height and width must be positive, got ",
              height, " x ", width);
  TORCH_CHECK(sigma > 0, "boundary_heatmaps: sigma must be positive, got ", sigma);
  int code;
  switch (dtype) {
    case at::kFloat: code = labfast_boundary::kFloat32; break;
    case at::kHalf: code = labfast_boundary::kFloat16; break;
    case at::kBFloat16: code = labfast_boundary::kBFloat16; break;
    default: TORCH_CHECK(false, "boundary_heatmaps: dtype must be float32, float16 or bfloat16, got ", dtype);
  }
  const int64_t num_curves = curves.size(0) * curves.size(1);
  TORCH_CHECK(height * width <= 65535LL * 256, "boundary_heatmaps: ", height, " x ", width, " pixels is too large");
  const c10::cuda::CUDAGuard guard(curves.device());
  const at::Tensor packed = curves.contiguous();
  at::Tensor out = at::empty({curves.size(0), curves.size(1), height, width}, packed.options().dtype(dtype));
  const cudaError_t status = labfast_boundary_heatmaps_launch(
      packed.data_ptr<float>(), out.data_ptr(), code, num_curves, static_cast<int>(curves.size(2)),
      static_cast<int>(height), static_cast<int>(width), static_cast<float>(sigma),
      c10::cuda::getCurrentCUDAStream());
  TORCH_CHECK(status == cudaSuccess, "boundary_heatmaps: kernel launch failed: ", cudaGetErrorString(status));
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(labfast_cuda, m) {
  m.def("boundary_heatmaps(Tensor curves, int height, int width, float sigma, ScalarType dtype) -> Tensor");
}

TORCH_LIBRARY_IMPL(labfast_cuda, CUDA, m) { m.impl("boundary_heatmaps", &boundary_heatmaps); }
#endif  // LABFAST_NO_TORCH
