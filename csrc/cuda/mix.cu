// CUDA kernels of mix_images / mix_images_backward / mix_images_ (plain CUDA, launched through
// launch.h). Grids are (element blocks, samples); every element is read and written once per
// sample, coalesced; the per-pixel CutMix test and the channel of an element come from its
// index in the sample (NCHW or channels_last), split with 32-bit multiply-high dividers built on
// the host (fast_div.h) -- no 64-bit `/` or `%` per element below 2^31 elements per sample. The backward reads the inverse of the index
// (sources of each sample, built on the device by the glue) so that repeated indices add up
// deterministically, in increasing order of the source sample, without atomics.
#include "common.cuh"
#include "fast_div.h"

namespace {

using namespace lmx_cuda_dev;

constexpr int kThreads = 256;
constexpr int kPerThread = 4;
constexpr unsigned kMaxGridY = 65535;

// Where element e of a sample (an index in [0, C*H*W)) lies: its channel, and whether it is in a
// CutMix box (rows [y0, y1) x columns [x0, x1)). Narrow: samples of < 2^31 elements, 32-bit
// multiply-high division by the host-built dividers; wide: 64-bit division (no practical image
// is that large, but the kernels stay exact for it).
struct Pixel {
  int64_t y, x;
  // in box (y0, x0, y1, x1): rows [y0, y1) x columns [x0, x1)
  __device__ __forceinline__ bool in(const int64_t* box) const {
    return y >= box[0] && y < box[2] && x >= box[1] && x < box[3];
  }
};

struct NarrowLayout {
  lmx_fast::FastDiv C, H, W, HW;
  bool cl;
  static NarrowLayout make(const int64_t C_, const int64_t H_, const int64_t W_, const bool cl_) {
    NarrowLayout l;
    l.C = lmx_fast::FastDiv(static_cast<uint32_t>(C_));
    l.H = lmx_fast::FastDiv(static_cast<uint32_t>(H_));
    l.W = lmx_fast::FastDiv(static_cast<uint32_t>(W_));
    l.HW = lmx_fast::FastDiv(static_cast<uint32_t>(H_ * W_));
    l.cl = cl_;
    return l;
  }
  __device__ __forceinline__ int64_t channel(int64_t e64) const {
    const uint32_t e = static_cast<uint32_t>(e64);
    return cl ? C.mod(e, C.div(e)) : HW.div(e);
  }
  __device__ __forceinline__ Pixel pixel(int64_t e64) const {
    const uint32_t e = static_cast<uint32_t>(e64);
    if (cl) {  // e = (y * W + x) * C + ch
      const uint32_t q = C.div(e), y = W.div(q);
      return Pixel{y, W.mod(q, y)};
    }
    const uint32_t q = W.div(e);  // e = (ch * H + y) * W + x
    return Pixel{H.mod(q, H.div(q)), W.mod(e, q)};
  }
};

struct WideLayout {
  int64_t C, H, W;
  bool cl;
  static WideLayout make(const int64_t C_, const int64_t H_, const int64_t W_, const bool cl_) {
    return WideLayout{C_, H_, W_, cl_};
  }
  __device__ __forceinline__ int64_t channel(int64_t e) const { return cl ? e % C : e / (H * W); }
  __device__ __forceinline__ Pixel pixel(int64_t e) const {
    return cl ? Pixel{e / (C * W), (e / C) % W} : Pixel{(e / W) % H, e % W};
  }
};

// Samples below this many elements take the narrow layout.
constexpr int64_t kNarrowMax = int64_t(1) << 31;

template <typename Tin, typename Tout, typename Layout>
__global__ void __launch_bounds__(kThreads) mix_kernel(const lmx_mix_args a, const Layout lay) {
  using A = typename Opmath<Tout>::type;
  const A scale = static_cast<A>(a.scale);
  const A* lam = static_cast<const A*>(a.lam);
  const A* mean = static_cast<const A*>(a.mean);
  const A* stdv = static_cast<const A*>(a.stdv);
  for (int64_t b = blockIdx.y; b < a.B; b += gridDim.y) {
    int64_t c = a.index[b];
    if (c < 0 || c >= a.B) c = b;  // out-of-range partner (value checks off): no out-of-bounds read
    const Tin* xa = static_cast<const Tin*>(a.x) + b * a.P;
    const Tin* xb = static_cast<const Tin*>(a.x) + c * a.P;
    Tout* o = static_cast<Tout*>(a.out) + b * a.P;
    const A l = lam[b], oml = A(1) - l;
    const bool has_box = a.boxes != nullptr;
    const int64_t y0 = has_box ? a.boxes[4 * b] : 0, x0 = has_box ? a.boxes[4 * b + 1] : 0;
    const int64_t y1 = has_box ? a.boxes[4 * b + 2] : 0, x1 = has_box ? a.boxes[4 * b + 3] : 0;
    const int64_t base = static_cast<int64_t>(blockIdx.x) * kThreads * kPerThread + threadIdx.x;
#pragma unroll
    for (int j = 0; j < kPerThread; ++j) {
      const int64_t e = base + j * kThreads;
      if (e >= a.P) break;
      A m = A(0), s = A(1);
      if (mean != nullptr || stdv != nullptr) {
        const int64_t ch = lay.channel(e);
        if (mean != nullptr) m = mean[ch];
        if (stdv != nullptr) s = stdv[ch];
      }
      const A va = lmx::normalise(static_cast<A>(to_op(xa[e])), scale, m, s, mean != nullptr, stdv != nullptr);
      const A vb = lmx::normalise(static_cast<A>(to_op(xb[e])), scale, m, s, mean != nullptr, stdv != nullptr);
      const Pixel px = has_box ? lay.pixel(e) : Pixel{0, 0};
      const A r = (has_box && px.y >= y0 && px.y < y1 && px.x >= x0 && px.x < x1) ? vb : lmx::mix_value(va, vb, l, oml);
      o[e] = from_op<Tout>(r);
    }
  }
}

template <typename Tg, typename Tdx, typename Layout>
__global__ void __launch_bounds__(kThreads) mix_bwd_kernel(const lmx_mix_bwd_args a, const Layout lay) {
  using A = typename Opmath<Tdx>::type;
  const A scale = static_cast<A>(a.scale);
  const A* lam = static_cast<const A*>(a.lam);
  const A* stdv = static_cast<const A*>(a.stdv);
  const Tg* g = static_cast<const Tg*>(a.grad);
  for (int64_t t = blockIdx.y; t < a.B; t += gridDim.y) {
    Tdx* dx = static_cast<Tdx*>(a.dx) + t * a.P;
    const int64_t j0 = a.offsets[t], j1 = a.offsets[t + 1];
    const int64_t base = static_cast<int64_t>(blockIdx.x) * kThreads * kPerThread + threadIdx.x;
#pragma unroll
    for (int j = 0; j < kPerThread; ++j) {
      const int64_t e = base + j * kThreads;
      if (e >= a.P) break;
      const Pixel px = a.boxes != nullptr ? lay.pixel(e) : Pixel{0, 0};  // once, for every box below
      auto weight = [&](int64_t b) {  // a_b: lam outside box b, 0 inside
        return (a.boxes != nullptr && px.in(a.boxes + 4 * b)) ? A(0) : lam[b];
      };
      auto gv = [&](int64_t b) { return static_cast<A>(to_op(g[b * a.P + e])); };
      A acc = weight(t) * gv(t);
      for (int64_t k = j0; k < j1; ++k) {
        const int64_t b = a.sources[k];
        acc += (A(1) - weight(b)) * gv(b);
      }
      // the normalisation's chain rule once per element: (sum * scale) / std
      const A s = stdv != nullptr ? stdv[lay.channel(e)] : A(1);
      acc = lmx::normalise(acc, scale, A(0), s, false, stdv != nullptr);
      dx[e] = from_op<Tdx>(acc);
    }
  }
}

template <typename T, typename Layout>
__global__ void __launch_bounds__(kThreads) mix_pairs_kernel(const lmx_mix_pairs_args a, const Layout lay) {
  using A = typename Opmath<T>::type;
  const A* lam = static_cast<const A*>(a.lam);
  for (int64_t b = blockIdx.y; b < a.B; b += gridDim.y) {
    const int64_t c = a.index[b];
    if (!(c > b && c < a.B && a.index[c] == b)) continue;  // each pair once; fixed points stay
    T* xb = static_cast<T*>(a.x) + b * a.P;
    T* xc = static_cast<T*>(a.x) + c * a.P;
    const A lb = lam[b], lc = lam[c], omb = A(1) - lb, omc = A(1) - lc;
    const bool has_box = a.boxes != nullptr;
    // box corners once per pair (no per-element loads of them)
    const int64_t* bb = has_box ? a.boxes + 4 * b : nullptr;
    const int64_t* bc = has_box ? a.boxes + 4 * c : nullptr;
    const int64_t by0 = has_box ? bb[0] : 0, bx0 = has_box ? bb[1] : 0, by1 = has_box ? bb[2] : 0,
                  bx1 = has_box ? bb[3] : 0;
    const int64_t cy0 = has_box ? bc[0] : 0, cx0 = has_box ? bc[1] : 0, cy1 = has_box ? bc[2] : 0,
                  cx1 = has_box ? bc[3] : 0;
    const int64_t base = static_cast<int64_t>(blockIdx.x) * kThreads * kPerThread + threadIdx.x;
#pragma unroll
    for (int j = 0; j < kPerThread; ++j) {
      const int64_t e = base + j * kThreads;
      if (e >= a.P) break;
      const A u = to_op(xb[e]), v = to_op(xc[e]);
      A rb = lmx::mix_value(u, v, lb, omb), rc = lmx::mix_value(v, u, lc, omc);
      if (has_box) {
        const Pixel px = lay.pixel(e);
        if (px.y >= by0 && px.y < by1 && px.x >= bx0 && px.x < bx1) rb = v;
        if (px.y >= cy0 && px.y < cy1 && px.x >= cx0 && px.x < cx1) rc = u;
      }
      xb[e] = from_op<T>(rb);
      xc[e] = from_op<T>(rc);
    }
  }
}

dim3 mix_grid(int64_t B, int64_t P) {
  const int64_t bx = ceil_div(P, static_cast<int64_t>(kThreads) * kPerThread);
  return dim3(static_cast<unsigned>(bx), static_cast<unsigned>(B < kMaxGridY ? B : kMaxGridY));
}

template <typename Tin, typename Tout>
cudaError_t launch_mix(const lmx_mix_args& a, cudaStream_t st) {
  const dim3 grid = mix_grid(a.B, a.P);
  const bool cl = a.channels_last != 0;
  if (a.P < kNarrowMax)
    mix_kernel<Tin, Tout><<<grid, kThreads, 0, st>>>(a, NarrowLayout::make(a.C, a.H, a.W, cl));
  else
    mix_kernel<Tin, Tout><<<grid, kThreads, 0, st>>>(a, WideLayout::make(a.C, a.H, a.W, cl));
  return cudaGetLastError();
}

template <typename Tin>
cudaError_t launch_mix_in(const lmx_mix_args& a, cudaStream_t st) {
  switch (a.out_dtype) {
    case LMX_F32: return launch_mix<Tin, float>(a, st);
    case LMX_F16: return launch_mix<Tin, __half>(a, st);
    case LMX_BF16: return launch_mix<Tin, __nv_bfloat16>(a, st);
    default: return cudaErrorInvalidValue;
  }
}

template <typename Tg, typename Tdx>
cudaError_t launch_bwd(const lmx_mix_bwd_args& a, cudaStream_t st) {
  const dim3 grid = mix_grid(a.B, a.P);
  const bool cl = a.channels_last != 0;
  if (a.P < kNarrowMax)
    mix_bwd_kernel<Tg, Tdx><<<grid, kThreads, 0, st>>>(a, NarrowLayout::make(a.C, a.H, a.W, cl));
  else
    mix_bwd_kernel<Tg, Tdx><<<grid, kThreads, 0, st>>>(a, WideLayout::make(a.C, a.H, a.W, cl));
  return cudaGetLastError();
}

template <typename Tg>
cudaError_t launch_bwd_g(const lmx_mix_bwd_args& a, cudaStream_t st) {
  switch (a.dx_dtype) {
    case LMX_F32: return launch_bwd<Tg, float>(a, st);
    case LMX_F16: return launch_bwd<Tg, __half>(a, st);
    case LMX_BF16: return launch_bwd<Tg, __nv_bfloat16>(a, st);
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace

extern "C" int lmx_cuda_mix(const lmx_mix_args* a, void* stream) {
  if (a->B == 0 || a->P == 0) return 0;
  const cudaStream_t st = static_cast<cudaStream_t>(stream);
  if (a->in_dtype == LMX_F64 || a->out_dtype == LMX_F64) {
    if (a->in_dtype != LMX_F64 || a->out_dtype != LMX_F64) return static_cast<int>(cudaErrorInvalidValue);
    return static_cast<int>(launch_mix<double, double>(*a, st));
  }
  switch (a->in_dtype) {
    case LMX_U8: return static_cast<int>(launch_mix_in<uint8_t>(*a, st));
    case LMX_F32: return static_cast<int>(launch_mix_in<float>(*a, st));
    case LMX_F16: return static_cast<int>(launch_mix_in<__half>(*a, st));
    case LMX_BF16: return static_cast<int>(launch_mix_in<__nv_bfloat16>(*a, st));
    default: return static_cast<int>(cudaErrorInvalidValue);
  }
}

extern "C" int lmx_cuda_mix_backward(const lmx_mix_bwd_args* a, void* stream) {
  if (a->B == 0 || a->P == 0) return 0;
  const cudaStream_t st = static_cast<cudaStream_t>(stream);
  if (a->grad_dtype == LMX_F64 || a->dx_dtype == LMX_F64) {
    if (a->grad_dtype != LMX_F64 || a->dx_dtype != LMX_F64) return static_cast<int>(cudaErrorInvalidValue);
    return static_cast<int>(launch_bwd<double, double>(*a, st));
  }
  switch (a->grad_dtype) {
    case LMX_F32: return static_cast<int>(launch_bwd_g<float>(*a, st));
    case LMX_F16: return static_cast<int>(launch_bwd_g<__half>(*a, st));
    case LMX_BF16: return static_cast<int>(launch_bwd_g<__nv_bfloat16>(*a, st));
    default: return static_cast<int>(cudaErrorInvalidValue);
  }
}

namespace {

template <typename T>
cudaError_t launch_pairs(const lmx_mix_pairs_args& a, cudaStream_t st) {
  const dim3 grid = mix_grid(a.B, a.P);
  const bool cl = a.channels_last != 0;
  if (a.P < kNarrowMax)
    mix_pairs_kernel<T><<<grid, kThreads, 0, st>>>(a, NarrowLayout::make(a.C, a.H, a.W, cl));
  else
    mix_pairs_kernel<T><<<grid, kThreads, 0, st>>>(a, WideLayout::make(a.C, a.H, a.W, cl));
  return cudaGetLastError();
}

}  // namespace

extern "C" int lmx_cuda_mix_pairs(const lmx_mix_pairs_args* a, void* stream) {
  if (a->B == 0 || a->P == 0) return 0;
  const cudaStream_t st = static_cast<cudaStream_t>(stream);
  switch (a->dtype) {
    case LMX_F32: return static_cast<int>(launch_pairs<float>(*a, st));
    case LMX_F16: return static_cast<int>(launch_pairs<__half>(*a, st));
    case LMX_BF16: return static_cast<int>(launch_pairs<__nv_bfloat16>(*a, st));
    case LMX_F64: return static_cast<int>(launch_pairs<double>(*a, st));
    default: return static_cast<int>(cudaErrorInvalidValue);
  }
}
