// CUDA C++ versions of LAB's heatmap-feature fusion ops (labfast/ops/fusion.py):
//   input fusion            I (+) (I * up(M_1)) (+) ... (+) (I * up(M_K))  -> (N, C (K+1), H, W)
//   heatmap-feature concat  up(M) (+) F                                    -> (N, K + C, H, W)
//   feature fusion          F (+) (F * T)                                  -> (N, 2C, H, W)
// forward and backward. up() resizes each axis on its own: bilinearly with align_corners=False
// (ATen's rule), or, for an axis that shrinks in an area-mode heatmap-feature concat, as the mean of
// the source pixels floor(o n / m) ... ceil((o + 1) n / m) - 1 (F.adaptive_avg_pool2d's bins; see
// labfast.ops.fusion.resize_heatmaps). Input fusion is always bilinear.
//
// Layout of this file:
//   1. torch-free kernels and extern "C" launchers (raw pointers, cudaStream_t). CPU CI compiles
//      this part alone: nvcc -c -DLABFAST_NO_TORCH -gencode=arch=compute_90,code=sm_90 fusion.cu
//   2. the torch binding (#ifndef LABFAST_NO_TORCH), registered as torch.ops.labfast_cuda.*.
//
// All arithmetic is fp32; tensors are fp32, fp16 or bf16, NCHW-contiguous (the binding makes them
// so), the heatmaps already in the image's dtype (the reference casts them the same way).
// The resize adjoint (backward wrt heatmaps) is a gather: one thread per heatmap pixel sums the
// output-gradient pixels that read it, with the exact forward weights. No atomics, so the result
// is deterministic and needs no zeroed scratch buffer.

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <stdint.h>

namespace labfast_fusion {

enum DType : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };

template <typename T> __device__ __forceinline__ float load(const T* p);
template <> __device__ __forceinline__ float load<float>(const float* p) { return *p; }
template <> __device__ __forceinline__ float load<__half>(const __half* p) { return __half2float(*p); }
template <> __device__ __forceinline__ float load<__nv_bfloat16>(const __nv_bfloat16* p) {
  return __bfloat162float(*p);
}

template <typename T> __device__ __forceinline__ void store(T* p, float v);
template <> __device__ __forceinline__ void store<float>(float* p, float v) { *p = v; }
template <> __device__ __forceinline__ void store<__half>(__half* p, float v) { *p = __float2half_rn(v); }
template <> __device__ __forceinline__ void store<__nv_bfloat16>(__nv_bfloat16* p, float v) {
  *p = __float2bfloat16_rn(v);
}

// How one axis is resized from in_size to out_size; scale = in_size / out_size in fp32.
struct Axis {
  int in_size, out_size;
  float scale;
  bool area;  // area-average (the axis shrinks); else bilinear
};

// The taps of output index dst on one axis.
// Bilinear: value = (1 - lambda1) x[i0] + lambda1 x[i1].
// Area: value = weight * (x[i0] + ... + x[i1 - 1]), weight = 1 / (i1 - i0).
struct Taps {
  int i0, i1;
  float lambda1;  // bilinear: the weight of i1; area: the weight of every tap
  bool area;
};

__device__ __forceinline__ Taps source_taps(int dst, const Axis& axis) {
  Taps t;
  t.area = axis.area;
  if (axis.area) {
    t.i0 = static_cast<int>(static_cast<int64_t>(dst) * axis.in_size / axis.out_size);
    t.i1 = static_cast<int>((static_cast<int64_t>(dst + 1) * axis.in_size + axis.out_size - 1) / axis.out_size);
    t.lambda1 = __frcp_rn(static_cast<float>(t.i1 - t.i0));  // correctly rounded even with fast math
    return t;
  }
  float src = fmaxf((dst + 0.5f) * axis.scale - 0.5f, 0.0f);
  t.i0 = min(static_cast<int>(src), axis.in_size - 1);  // truncation == floor since src >= 0
  t.lambda1 = fminf(fmaxf(src - t.i0, 0.0f), 1.0f);
  t.i1 = t.i0 < axis.in_size - 1 ? t.i0 + 1 : t.i0;
  return t;
}

__device__ __forceinline__ int tap_count(const Taps& t) { return t.area ? t.i1 - t.i0 : 2; }
__device__ __forceinline__ int tap_source(const Taps& t, int tap) {
  return t.area ? t.i0 + tap : (tap == 0 ? t.i0 : t.i1);
}
__device__ __forceinline__ float tap_weight_of(const Taps& t, int tap) {
  return t.area ? t.lambda1 : (tap == 0 ? 1.0f - t.lambda1 : t.lambda1);
}

// Weight with which the output whose taps are t reads source index i.
__device__ __forceinline__ float tap_weight(const Taps& t, int i) {
  if (t.area) return t.i0 <= i && i < t.i1 ? t.lambda1 : 0.0f;
  return (t.i0 == i ? 1.0f - t.lambda1 : 0.0f) + (t.i1 == i ? t.lambda1 : 0.0f);
}

// Inclusive range of output indices that can read source index i (a superset: outputs outside
// it have weight zero). Bilinear: output o reads floor(src(o)) and the index after it, src(o) =
// (o + 0.5) scale - 0.5, so it reads i only if i - 1 <= src(o) < i + 1; one index of slack on
// each side absorbs rounding. Area (exact, integers): bin o holds i when
// floor(i m / n) <= o <= ceil((i + 1) m / n) - 1.
__device__ __forceinline__ void readers(int i, const Axis& axis, int* first, int* last) {
  if (axis.area) {
    *first = static_cast<int>(static_cast<int64_t>(i) * axis.out_size / axis.in_size);
    *last = min(static_cast<int>((static_cast<int64_t>(i + 1) * axis.out_size + axis.in_size - 1) / axis.in_size) - 1,
                axis.out_size - 1);
    return;
  }
  *first = max(static_cast<int>((i - 0.5f) / axis.scale - 0.5f) - 1, 0);
  *last = i == axis.in_size - 1 ? axis.out_size - 1
                                : min(static_cast<int>((i + 1.5f) / axis.scale - 0.5f) + 1, axis.out_size - 1);
}

// sum_y w_y (sum_x w_x plane[y, x]); for bilinear the same association as ATen's upsample_bilinear2d.
template <typename T>
__device__ __forceinline__ float resample(const T* plane, int w, const Taps& ty, const Taps& tx) {
  float value = 0.0f;
  for (int a = 0; a < tap_count(ty); ++a) {
    const T* row = plane + static_cast<int64_t>(tap_source(ty, a)) * w;
    float row_value = 0.0f;
    for (int b = 0; b < tap_count(tx); ++b) row_value += tap_weight_of(tx, b) * load(row + tap_source(tx, b));
    value += tap_weight_of(ty, a) * row_value;
  }
  return value;
}

// Axis of a resize from in_size to out_size; area only when asked and the axis shrinks.
inline Axis make_axis(int in_size, int out_size, bool area) {
  return Axis{in_size, out_size, static_cast<float>(in_size) / out_size, area && in_size > out_size};
}

// One thread per (n, output pixel).
template <typename T>
__global__ void input_fusion_forward_kernel(const T* __restrict__ image, const T* __restrict__ heatmaps,
                                            T* __restrict__ out, int64_t N, int C, int K, int H, int W,
                                            int h, int w, Axis axis_y, Axis axis_x) {
  const int64_t HW = static_cast<int64_t>(H) * W;
  for (int64_t index = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; index < N * HW;
       index += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t n = index / HW, pixel = index % HW;
    const Taps ty = source_taps(static_cast<int>(pixel / W), axis_y);
    const Taps tx = source_taps(static_cast<int>(pixel % W), axis_x);
    const T* image_n = image + n * C * HW + pixel;
    T* out_n = out + n * C * (K + 1) * HW + pixel;
    for (int c = 0; c < C; ++c) out_n[c * HW] = image_n[c * HW];
    for (int k = 0; k < K; ++k) {
      const float m = resample(heatmaps + (n * K + k) * h * w, w, ty, tx);
      for (int c = 0; c < C; ++c) store(out_n + (C + k * C + c) * HW, load(image_n + c * HW) * m);
    }
  }
}

// dL/dI_c = g_c + sum_k g_{C + k C + c} up(M_k); one thread per (n, output pixel).
template <typename T>
__global__ void input_fusion_backward_image_kernel(const T* __restrict__ grad, const T* __restrict__ heatmaps,
                                                   T* __restrict__ grad_image, int64_t N, int C, int K,
                                                   int H, int W, int h, int w, Axis axis_y,
                                                   Axis axis_x) {
  const int64_t HW = static_cast<int64_t>(H) * W;
  for (int64_t index = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; index < N * HW;
       index += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t n = index / HW, pixel = index % HW;
    const Taps ty = source_taps(static_cast<int>(pixel / W), axis_y);
    const Taps tx = source_taps(static_cast<int>(pixel % W), axis_x);
    const T* grad_n = grad + n * C * (K + 1) * HW + pixel;
    for (int c = 0; c < C; ++c) {
      float total = load(grad_n + c * HW);
      for (int k = 0; k < K; ++k)
        total += load(grad_n + (C + k * C + c) * HW) * resample(heatmaps + (n * K + k) * h * w, w, ty, tx);
      store(grad_image + (n * C + c) * HW + pixel, total);
    }
  }
}

// dL/dM_k = up^T(G_k); one thread per (n, k, heatmap pixel). grad is (N, grad_channels, H, W).
// kWithImage (input fusion): G_k = sum_c grad_{C + k C + c} I_c, image (N, C, H, W);
// otherwise (heatmap-feature concat): G_k = grad_k.
template <typename T, bool kWithImage>
__global__ void resize_adjoint_kernel(const T* __restrict__ grad, const T* __restrict__ image,
                                      T* __restrict__ grad_heatmaps, int64_t N, int C, int K,
                                      int grad_channels, int H, int W, int h, int w, Axis axis_y,
                                      Axis axis_x) {
  const int64_t HW = static_cast<int64_t>(H) * W;
  const int64_t hw = static_cast<int64_t>(h) * w;
  for (int64_t index = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; index < N * K * hw;
       index += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t nk = index / hw, n = nk / K;
    const int k = static_cast<int>(nk % K);
    const int i = static_cast<int>(index % hw / w), j = static_cast<int>(index % w);
    int oy_first, oy_last, ox_first, ox_last;
    readers(i, axis_y, &oy_first, &oy_last);
    readers(j, axis_x, &ox_first, &ox_last);
    const T* grad_k = grad + (n * grad_channels + (kWithImage ? C + static_cast<int64_t>(k) * C : k)) * HW;
    const T* image_n = kWithImage ? image + n * C * HW : image;  // image is null otherwise
    float total = 0.0f;
    for (int oy = oy_first; oy <= oy_last; ++oy) {
      const float wy = tap_weight(source_taps(oy, axis_y), i);
      if (wy == 0.0f) continue;
      for (int ox = ox_first; ox <= ox_last; ++ox) {
        const float wx = tap_weight(source_taps(ox, axis_x), j);
        if (wx == 0.0f) continue;
        const int64_t pixel = static_cast<int64_t>(oy) * W + ox;
        float g = 0.0f;
        if (kWithImage) {
          for (int c = 0; c < C; ++c) g += load(grad_k + c * HW + pixel) * load(image_n + c * HW + pixel);
        } else {
          g = load(grad_k + pixel);
        }
        total += wy * wx * g;
      }
    }
    store(grad_heatmaps + index, total);
  }
}

// up(M) (+) F -> (N, K + C, H, W); one thread per output element.
template <typename T>
__global__ void heatmap_feature_concat_forward_kernel(const T* __restrict__ heatmaps, const T* __restrict__ features,
                                                      T* __restrict__ out, int64_t N, int K, int C, int H, int W,
                                                      int h, int w, Axis axis_y, Axis axis_x) {
  const int64_t HW = static_cast<int64_t>(H) * W;
  for (int64_t index = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; index < N * (K + C) * HW;
       index += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t n = index / ((K + C) * HW), pixel = index % HW;
    const int channel = static_cast<int>(index / HW % (K + C));
    if (channel < K) {
      const Taps ty = source_taps(static_cast<int>(pixel / W), axis_y);
      const Taps tx = source_taps(static_cast<int>(pixel % W), axis_x);
      store(out + index, resample(heatmaps + (n * K + channel) * h * w, w, ty, tx));
    } else {
      out[index] = features[(n * C + channel - K) * HW + pixel];
    }
  }
}

// One thread per element of F (N, C, H, W); chw = C H W.
template <typename T>
__global__ void feature_fusion_forward_kernel(const T* __restrict__ features, const T* __restrict__ gate,
                                              T* __restrict__ out, int64_t total, int64_t chw) {
  for (int64_t index = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; index < total;
       index += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    T* out_index = out + index / chw * chw + index;  // sample n starts at 2 n C H W
    const float f = load(features + index);
    out_index[0] = features[index];
    store(out_index + chw, f * load(gate + index));
  }
}

// dL/dF = g[:, :C] + g[:, C:] T, dL/dT = g[:, C:] F.
template <typename T>
__global__ void feature_fusion_backward_kernel(const T* __restrict__ grad, const T* __restrict__ features,
                                               const T* __restrict__ gate, T* __restrict__ grad_features,
                                               T* __restrict__ grad_gate, int64_t total, int64_t chw) {
  for (int64_t index = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; index < total;
       index += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const T* grad_index = grad + index / chw * chw + index;
    const float grad_product = load(grad_index + chw);
    store(grad_features + index, load(grad_index) + grad_product * load(gate + index));
    store(grad_gate + index, grad_product * load(features + index));
  }
}

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = 65535L * 32;  // grid-stride loops cover the rest

inline unsigned blocks_for(int64_t work) {
  const int64_t blocks = (work + kThreads - 1) / kThreads;
  return static_cast<unsigned>(blocks < 1 ? 1 : (blocks < kMaxBlocks ? blocks : kMaxBlocks));
}

template <typename Launch>
cudaError_t dispatch(int dtype, Launch launch) {
  switch (dtype) {
    case kFloat32: launch(float{}); break;
    case kFloat16: launch(__half{}); break;
    case kBFloat16: launch(__nv_bfloat16{}); break;
    default: return cudaErrorInvalidValue;
  }
  return cudaGetLastError();
}

}  // namespace labfast_fusion

// ---- extern "C" launchers: dtype is 0 fp32, 1 fp16, 2 bf16; area (heatmap-feature concat only):
//      area-average the axes that shrink, else bilinear ----

extern "C" cudaError_t labfast_input_fusion_forward(int dtype, const void* image, const void* heatmaps,
                                                   void* out, int64_t N, int C, int K, int H, int W,
                                                   int h, int w, cudaStream_t stream) {
  using namespace labfast_fusion;
  return dispatch(dtype, [&](auto zero) {
    using T = decltype(zero);
    input_fusion_forward_kernel<T><<<blocks_for(N * H * W), kThreads, 0, stream>>>(
        static_cast<const T*>(image), static_cast<const T*>(heatmaps), static_cast<T*>(out), N, C, K,
        H, W, h, w, make_axis(h, H, false), make_axis(w, W, false));
  });
}

extern "C" cudaError_t labfast_input_fusion_backward_image(int dtype, const void* grad, const void* heatmaps,
                                                          void* grad_image, int64_t N, int C, int K,
                                                          int H, int W, int h, int w, cudaStream_t stream) {
  using namespace labfast_fusion;
  return dispatch(dtype, [&](auto zero) {
    using T = decltype(zero);
    input_fusion_backward_image_kernel<T><<<blocks_for(N * H * W), kThreads, 0, stream>>>(
        static_cast<const T*>(grad), static_cast<const T*>(heatmaps), static_cast<T*>(grad_image), N, C,
        K, H, W, h, w, make_axis(h, H, false), make_axis(w, W, false));
  });
}

extern "C" cudaError_t labfast_input_fusion_backward_heatmaps(int dtype, const void* grad, const void* image,
                                                             void* grad_heatmaps, int64_t N, int C, int K,
                                                             int H, int W, int h, int w,
                                                             cudaStream_t stream) {
  using namespace labfast_fusion;
  return dispatch(dtype, [&](auto zero) {
    using T = decltype(zero);
    resize_adjoint_kernel<T, true><<<blocks_for(N * K * h * w), kThreads, 0, stream>>>(
        static_cast<const T*>(grad), static_cast<const T*>(image), static_cast<T*>(grad_heatmaps), N, C,
        K, C * (K + 1), H, W, h, w, make_axis(h, H, false), make_axis(w, W, false));
  });
}

extern "C" cudaError_t labfast_heatmap_feature_concat_forward(int dtype, const void* heatmaps,
                                                             const void* features, void* out, int64_t N, int K,
                                                             int C, int H, int W, int h, int w, int area,
                                                             cudaStream_t stream) {
  using namespace labfast_fusion;
  return dispatch(dtype, [&](auto zero) {
    using T = decltype(zero);
    heatmap_feature_concat_forward_kernel<T><<<blocks_for(N * (K + C) * H * W), kThreads, 0, stream>>>(
        static_cast<const T*>(heatmaps), static_cast<const T*>(features), static_cast<T*>(out), N, K, C, H,
        W, h, w, make_axis(h, H, area != 0), make_axis(w, W, area != 0));
  });
}

// grad is (N, K + C, H, W); writes dL/dheatmaps (N, K, h, w). dL/dfeatures is grad[:, K:].
extern "C" cudaError_t labfast_heatmap_feature_concat_backward_heatmaps(int dtype, const void* grad,
                                                                       void* grad_heatmaps, int64_t N, int K,
                                                                       int C, int H, int W, int h, int w,
                                                                       int area, cudaStream_t stream) {
  using namespace labfast_fusion;
  return dispatch(dtype, [&](auto zero) {
    using T = decltype(zero);
    resize_adjoint_kernel<T, false><<<blocks_for(N * K * h * w), kThreads, 0, stream>>>(
        static_cast<const T*>(grad), nullptr, static_cast<T*>(grad_heatmaps), N, C, K, K + C, H, W, h, w,
        make_axis(h, H, area != 0), make_axis(w, W, area != 0));
  });
}

extern "C" cudaError_t labfast_feature_fusion_forward(int dtype, const void* features, const void* gate,
                                                     void* out, int64_t N, int64_t chw, cudaStream_t stream) {
  using namespace labfast_fusion;
  return dispatch(dtype, [&](auto zero) {
    using T = decltype(zero);
    feature_fusion_forward_kernel<T><<<blocks_for(N * chw), kThreads, 0, stream>>>(
        static_cast<const T*>(features), static_cast<const T*>(gate), static_cast<T*>(out), N * chw, chw);
  });
}

extern "C" cudaError_t labfast_feature_fusion_backward(int dtype, const void* grad, const void* features,
                                                      const void* gate, void* grad_features, void* grad_gate,
                                                      int64_t N, int64_t chw, cudaStream_t stream) {
  using namespace labfast_fusion;
  return dispatch(dtype, [&](auto zero) {
    using T = decltype(zero);
    feature_fusion_backward_kernel<T><<<blocks_for(N * chw), kThreads, 0, stream>>>(
        static_cast<const T*>(grad), static_cast<const T*>(features), static_cast<const T*>(gate),
        static_cast<T*>(grad_features), static_cast<T*>(grad_gate), N * chw, chw);
  });
}

#ifndef LABFAST_NO_TORCH
// ---- torch binding: torch.ops.labfast_cuda.{input_fusion_*, feature_fusion_*} ----
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <tuple>

namespace {

int dtype_code(const at::Tensor& t, const char* op, const char* name) {
  switch (t.scalar_type()) {
    case at::kFloat: return labfast_fusion::kFloat32;
    case at::kHalf: return labfast_fusion::kFloat16;
    case at::kBFloat16: return labfast_fusion::kBFloat16;
    default: TORCH_CHECK(false, op, ": ", name, " has dtype ", t.scalar_type(), "; expected float32, float16 or bfloat16");
  }
  return -1;
}

void check(const at::Tensor& t, const at::Tensor& like, const char* op, const char* name) {
  TORCH_CHECK(t.is_cuda(), op, ": ", name, " is on ", t.device(), "; expected a CUDA tensor");
  TORCH_CHECK(t.dim() == 4, op, ": ", name, " has shape ", t.sizes(), "; expected 4 dimensions (N, C, H, W)");
  TORCH_CHECK(t.device() == like.device(), op, ": ", name, " is on ", t.device(), " but the first input on ", like.device());
  TORCH_CHECK(t.scalar_type() == like.scalar_type(), op, ": ", name, " has dtype ", t.scalar_type(),
              " but the first input ", like.scalar_type(), " (cast before calling)");
  TORCH_CHECK(t.size(0) == like.size(0), op, ": ", name, " has batch ", t.size(0), " but the first input ", like.size(0));
}

void check_launch(cudaError_t error, const char* op) {
  TORCH_CHECK(error == cudaSuccess, op, ": CUDA launch failed: ", cudaGetErrorString(error));
}

at::Tensor input_fusion_forward(const at::Tensor& image_in, const at::Tensor& heatmaps_in) {
  const char* op = "labfast_cuda::input_fusion_forward";
  check(image_in, image_in, op, "image");
  check(heatmaps_in, image_in, op, "heatmaps");
  const c10::cuda::CUDAGuard guard(image_in.device());
  const at::Tensor image = image_in.contiguous(), heatmaps = heatmaps_in.contiguous();
  const int64_t N = image.size(0), C = image.size(1), H = image.size(2), W = image.size(3);
  const int64_t K = heatmaps.size(1), h = heatmaps.size(2), w = heatmaps.size(3);
  at::Tensor out = at::empty({N, C * (K + 1), H, W}, image.options());
  if (out.numel() == 0) return out;
  check_launch(labfast_input_fusion_forward(dtype_code(image, op, "image"), image.data_ptr(), heatmaps.data_ptr(),
                                            out.data_ptr(), N, C, K, H, W, h, w,
                                            c10::cuda::getCurrentCUDAStream().stream()),
               op);
  return out;
}

// grad (N, C (K+1), H, W); returns dL/dimage (N, C, H, W).
at::Tensor input_fusion_backward_image(const at::Tensor& grad_in, const at::Tensor& image,
                                       const at::Tensor& heatmaps_in) {
  const char* op = "labfast_cuda::input_fusion_backward_image";
  check(image, image, op, "image");
  check(grad_in, image, op, "grad");
  check(heatmaps_in, image, op, "heatmaps");
  const int64_t N = image.size(0), C = image.size(1), H = image.size(2), W = image.size(3);
  const int64_t K = heatmaps_in.size(1), h = heatmaps_in.size(2), w = heatmaps_in.size(3);
  TORCH_CHECK(grad_in.size(1) == C * (K + 1) && grad_in.size(2) == H && grad_in.size(3) == W, op,
              ": grad has shape ", grad_in.sizes(), "; expected (N, C (K+1), H, W) for image ", image.sizes(),
              " and heatmaps ", heatmaps_in.sizes());
  const c10::cuda::CUDAGuard guard(image.device());
  const at::Tensor grad = grad_in.contiguous(), heatmaps = heatmaps_in.contiguous();
  at::Tensor grad_image = at::empty({N, C, H, W}, image.options());
  if (grad_image.numel() == 0) return grad_image;
  check_launch(labfast_input_fusion_backward_image(dtype_code(image, op, "image"), grad.data_ptr(),
                                                   heatmaps.data_ptr(), grad_image.data_ptr(), N, C, K, H,
                                                   W, h, w, c10::cuda::getCurrentCUDAStream().stream()),
               op);
  return grad_image;
}

// grad (N, C (K+1), H, W); returns dL/dheatmaps (N, K, h, w).
at::Tensor input_fusion_backward_heatmaps(const at::Tensor& grad_in, const at::Tensor& image_in,
                                          const at::Tensor& heatmaps) {
  const char* op = "labfast_cuda::input_fusion_backward_heatmaps";
  check(image_in, image_in, op, "image");
  check(grad_in, image_in, op, "grad");
  check(heatmaps, image_in, op, "heatmaps");
  const int64_t N = image_in.size(0), C = image_in.size(1), H = image_in.size(2), W = image_in.size(3);
  const int64_t K = heatmaps.size(1), h = heatmaps.size(2), w = heatmaps.size(3);
  TORCH_CHECK(grad_in.size(1) == C * (K + 1) && grad_in.size(2) == H && grad_in.size(3) == W, op,
              ": grad has shape ", grad_in.sizes(), "; expected (N, C (K+1), H, W) for image ",
              image_in.sizes(), " and heatmaps ", heatmaps.sizes());
  const c10::cuda::CUDAGuard guard(image_in.device());
  const at::Tensor grad = grad_in.contiguous(), image = image_in.contiguous();
  at::Tensor grad_heatmaps = at::empty({N, K, h, w}, heatmaps.options());
  if (grad_heatmaps.numel() == 0) return grad_heatmaps;
  check_launch(labfast_input_fusion_backward_heatmaps(dtype_code(image, op, "image"), grad.data_ptr(),
                                                      image.data_ptr(), grad_heatmaps.data_ptr(), N, C, K, H,
                                                      W, h, w, c10::cuda::getCurrentCUDAStream().stream()),
               op);
  return grad_heatmaps;
}

at::Tensor heatmap_feature_concat_forward(const at::Tensor& heatmaps_in, const at::Tensor& features_in, bool area) {
  const char* op = "labfast_cuda::heatmap_feature_concat_forward";
  check(features_in, features_in, op, "features");
  check(heatmaps_in, features_in, op, "heatmaps");
  const c10::cuda::CUDAGuard guard(features_in.device());
  const at::Tensor heatmaps = heatmaps_in.contiguous(), features = features_in.contiguous();
  const int64_t N = features.size(0), C = features.size(1), H = features.size(2), W = features.size(3);
  const int64_t K = heatmaps.size(1), h = heatmaps.size(2), w = heatmaps.size(3);
  at::Tensor out = at::empty({N, K + C, H, W}, features.options());
  if (out.numel() == 0) return out;
  check_launch(labfast_heatmap_feature_concat_forward(dtype_code(features, op, "features"), heatmaps.data_ptr(),
                                                      features.data_ptr(), out.data_ptr(), N, K, C, H, W, h, w, area,
                                                      c10::cuda::getCurrentCUDAStream().stream()),
               op);
  return out;
}

// grad (N, K + C, H, W); returns dL/dheatmaps (N, K, h, w) (dL/dfeatures is grad[:, K:]).
at::Tensor heatmap_feature_concat_backward_heatmaps(const at::Tensor& grad_in, const at::Tensor& heatmaps, bool area) {
  const char* op = "labfast_cuda::heatmap_feature_concat_backward_heatmaps";
  check(heatmaps, heatmaps, op, "heatmaps");
  check(grad_in, heatmaps, op, "grad");
  const int64_t N = heatmaps.size(0), K = heatmaps.size(1), h = heatmaps.size(2), w = heatmaps.size(3);
  TORCH_CHECK(grad_in.size(1) > K, op, ": grad has shape ", grad_in.sizes(), "; expected (N, K + C, H, W) for heatmaps ",
              heatmaps.sizes());
  const c10::cuda::CUDAGuard guard(heatmaps.device());
  const at::Tensor grad = grad_in.contiguous();
  const int64_t C = grad.size(1) - K, H = grad.size(2), W = grad.size(3);
  at::Tensor grad_heatmaps = at::empty({N, K, h, w}, heatmaps.options());
  if (grad_heatmaps.numel() == 0) return grad_heatmaps;
  check_launch(labfast_heatmap_feature_concat_backward_heatmaps(dtype_code(grad, op, "grad"), grad.data_ptr(),
                                                                grad_heatmaps.data_ptr(), N, K, C, H, W, h, w, area,
                                                                c10::cuda::getCurrentCUDAStream().stream()),
               op);
  return grad_heatmaps;
}

at::Tensor feature_fusion_forward(const at::Tensor& features_in, const at::Tensor& gate_in) {
  const char* op = "labfast_cuda::feature_fusion_forward";
  check(features_in, features_in, op, "features");
  check(gate_in, features_in, op, "gate");
  TORCH_CHECK(gate_in.sizes() == features_in.sizes(), op, ": gate has shape ", gate_in.sizes(),
              " but features ", features_in.sizes());
  const c10::cuda::CUDAGuard guard(features_in.device());
  const at::Tensor features = features_in.contiguous(), gate = gate_in.contiguous();
  const int64_t N = features.size(0), chw = features.numel() / (N > 0 ? N : 1);
  at::Tensor out = at::empty({N, 2 * features.size(1), features.size(2), features.size(3)}, features.options());
  if (out.numel() == 0) return out;
  check_launch(labfast_feature_fusion_forward(dtype_code(features, op, "features"), features.data_ptr(),
                                              gate.data_ptr(), out.data_ptr(), N, chw,
                                              c10::cuda::getCurrentCUDAStream().stream()),
               op);
  return out;
}

// grad (N, 2C, H, W); returns (dL/dfeatures, dL/dgate).
std::tuple<at::Tensor, at::Tensor> feature_fusion_backward(const at::Tensor& grad_in, const at::Tensor& features_in,
                                                           const at::Tensor& gate_in) {
  const char* op = "labfast_cuda::feature_fusion_backward";
  check(features_in, features_in, op, "features");
  check(gate_in, features_in, op, "gate");
  check(grad_in, features_in, op, "grad");
  TORCH_CHECK(gate_in.sizes() == features_in.sizes(), op, ": gate has shape ", gate_in.sizes(),
              " but features ", features_in.sizes());
  TORCH_CHECK(grad_in.size(1) == 2 * features_in.size(1) && grad_in.size(2) == features_in.size(2) &&
                  grad_in.size(3) == features_in.size(3),
              op, ": grad has shape ", grad_in.sizes(), "; expected (N, 2C, H, W) for features ",
              features_in.sizes());
  const c10::cuda::CUDAGuard guard(features_in.device());
  const at::Tensor grad = grad_in.contiguous(), features = features_in.contiguous(), gate = gate_in.contiguous();
  const int64_t N = features.size(0), chw = features.numel() / (N > 0 ? N : 1);
  at::Tensor grad_features = at::empty(features.sizes(), features.options());
  at::Tensor grad_gate = at::empty(features.sizes(), features.options());
  if (features.numel() == 0) return {grad_features, grad_gate};
  check_launch(labfast_feature_fusion_backward(dtype_code(features, op, "features"), grad.data_ptr(),
                                               features.data_ptr(), gate.data_ptr(), grad_features.data_ptr(),
                                               grad_gate.data_ptr(), N, chw,
                                               c10::cuda::getCurrentCUDAStream().stream()),
               op);
  return {grad_features, grad_gate};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(labfast_cuda, m) {
  m.def("input_fusion_forward(Tensor image, Tensor heatmaps) -> Tensor");
  m.def("input_fusion_backward_image(Tensor grad, Tensor image, Tensor heatmaps) -> Tensor");
  m.def("input_fusion_backward_heatmaps(Tensor grad, Tensor image, Tensor heatmaps) -> Tensor");
  m.def("heatmap_feature_concat_forward(Tensor heatmaps, Tensor features, bool area) -> Tensor");
  m.def("heatmap_feature_concat_backward_heatmaps(Tensor grad, Tensor heatmaps, bool area) -> Tensor");
  m.def("feature_fusion_forward(Tensor features, Tensor gate) -> Tensor");
  m.def("feature_fusion_backward(Tensor grad, Tensor features, Tensor gate) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(labfast_cuda, CUDA, m) {
  m.impl("input_fusion_forward", &input_fusion_forward);
  m.impl("input_fusion_backward_image", &input_fusion_backward_image);
  m.impl("input_fusion_backward_heatmaps", &input_fusion_backward_heatmaps);
  m.impl("heatmap_feature_concat_forward", &heatmap_feature_concat_forward);
  m.impl("heatmap_feature_concat_backward_heatmaps", &heatmap_feature_concat_backward_heatmaps);
  m.impl("feature_fusion_forward", &feature_fusion_forward);
  m.impl("feature_fusion_backward", &feature_fusion_backward);
}
#endif  // LABFAST_NO_TORCH
