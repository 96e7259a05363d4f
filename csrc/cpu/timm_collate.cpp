// timm's FastCollateMixup pixel arithmetic, read straight from the collated samples and written
// into the batch in one pass per image row: lossmix_ext::timm_collate_mix_ (CPU only; used by
// lossmix_ext/integrations/timm.py).
//
//   out (n, C, H, W) uint8, contiguous (written)    samples: B uint8 (C, H, W), all contiguous or
//   partner (n,) int64 in [0, B)                      all CHW views of HWC arrays (timm's ToNumpy)
//   lam (n,) float32: sample i's own weight          boxes (n, 4) int64 (y0, x0, y1, x1), half-open
//
//   out[i] = x[partner[i]]                                           inside box i (empty: none)
//            x[i]                                                    elsewhere, where lam[i] == 1
//            rint(float(x[i]) * lam[i] + float(x[p]) * (1 - lam[i]))  elsewhere
//
// The last line is timm's arithmetic exactly: two float32 products and their float32 sum, each
// rounded (no fused multiply-add: contraction is switched off below), rounded half to even
// (np.rint / torch.round), then to uint8. HWC samples are mixed in their own memory order one
// image row (W x C values) at a time and de-interleaved into the contiguous NCHW output.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "kernels.h"

#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__)) && \
    !defined(LOSSMIX_NO_AVX2)
#include <immintrin.h>  // before the pragmas below, as kernels_avx2.cpp does
#endif

// No fused multiply-add in this file's functions (timm rounds each product): GCC contracts
// a * b + c by default wherever FMA exists (x86-64 with -mfma, every aarch64).
#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

#define LMX_TIMM_NS base
#define LMX_TIMM_AVX2_INTRINSICS 0
#include "timm_collate_impl.h"
#undef LMX_TIMM_AVX2_INTRINSICS
#undef LMX_TIMM_NS

#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__)) && \
    !defined(LOSSMIX_NO_AVX2)
#define LMX_TIMM_AVX2 1
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx2")
#endif
#define LMX_TIMM_NS avx2
#define LMX_TIMM_AVX2_INTRINSICS 1
#include "timm_collate_impl.h"
#undef LMX_TIMM_AVX2_INTRINSICS
#undef LMX_TIMM_NS
#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif
#endif

namespace lmx_timm {
namespace {

using at::Tensor;

using RowFn = void (*)(const uint8_t*, const uint8_t*, uint8_t*, int64_t, int64_t, int64_t, float, float);
using DeinterleaveFn = void (*)(const uint8_t*, uint8_t*, int64_t, int64_t, int64_t);

// Each sample (C, H, W): contiguous (CHW memory) or the CHW view of an HWC array (strides
// (1, W * C, C)); all alike.
bool hwc_view(const Tensor& s) {
  return s.stride(0) == 1 && s.stride(2) == s.size(0) && s.stride(1) == s.size(0) * s.size(2);
}

void timm_collate_mix(const Tensor& out, at::TensorList samples, const Tensor& partner, const Tensor& lam,
                      const Tensor& boxes) {
  TORCH_CHECK(out.device().is_cpu() && out.scalar_type() == at::kByte && out.dim() == 4 && out.is_contiguous(),
              "timm_collate_mix_: out must be a contiguous uint8 (n, C, H, W) CPU tensor");
  const int64_t B = static_cast<int64_t>(samples.size()), n = out.size(0);
  const int64_t C = out.size(1), H = out.size(2), W = out.size(3);
  TORCH_CHECK(n <= B, "timm_collate_mix_: more output rows than samples");
  TORCH_CHECK(B > 0, "timm_collate_mix_: no samples");
  const bool cl = !samples[0].is_contiguous();
  std::vector<const uint8_t*> src(static_cast<size_t>(B));
  for (int64_t j = 0; j < B; ++j) {
    const Tensor& s = samples[j];
    TORCH_CHECK(s.device().is_cpu() && s.scalar_type() == at::kByte && s.dim() == 3 && s.size(0) == C &&
                    s.size(1) == H && s.size(2) == W,
                "timm_collate_mix_: every sample must be a uint8 (C, H, W) CPU tensor shaped as out's rows");
    TORCH_CHECK(cl ? hwc_view(s) : s.is_contiguous(),
                "timm_collate_mix_: the samples must all be contiguous or all CHW views of HWC arrays");
    src[j] = s.const_data_ptr<uint8_t>();
  }
  TORCH_CHECK(partner.scalar_type() == at::kLong && partner.dim() == 1 && partner.size(0) == n &&
                  partner.is_contiguous(),
              "timm_collate_mix_: partner must be a contiguous int64 (n,) tensor");
  TORCH_CHECK(lam.scalar_type() == at::kFloat && lam.dim() == 1 && lam.size(0) == n && lam.is_contiguous(),
              "timm_collate_mix_: lam must be a contiguous float32 (n,) tensor");
  TORCH_CHECK(boxes.scalar_type() == at::kLong && boxes.dim() == 2 && boxes.size(0) == n && boxes.size(1) == 4 &&
                  boxes.is_contiguous(),
              "timm_collate_mix_: boxes must be a contiguous int64 (n, 4) tensor");
  const int64_t* pp = partner.const_data_ptr<int64_t>();
  for (int64_t i = 0; i < n; ++i) TORCH_CHECK(pp[i] >= 0 && pp[i] < B, "timm_collate_mix_: partner out of range");
  if (out.numel() == 0) return;
  uint8_t* op = out.mutable_data_ptr<uint8_t>();
  const float* lp = lam.const_data_ptr<float>();
  const int64_t* bp = boxes.const_data_ptr<int64_t>();
  const int64_t P = C * H * W, HW = H * W;
  // a task: one image row of one sample (all channels for HWC samples, one channel otherwise)
  const int64_t row_len = cl ? W * C : W;
  const int64_t rows_per_sample = cl ? H : C * H;
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(row_len, 1));
  RowFn row_values = base::row_values;
  DeinterleaveFn deinterleave = base::deinterleave;
#ifdef LMX_TIMM_AVX2
  if (std::strcmp(lmx_cpu::table().isa, "avx2") == 0) {  // the ISA of the other CPU kernels
    row_values = avx2::row_values;
    deinterleave = avx2::deinterleave;
  }
#endif
  at::parallel_for(0, n * rows_per_sample, grain, [&](int64_t r0, int64_t r1) {
    std::vector<uint8_t> buf(cl ? static_cast<size_t>(row_len) : 0);
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t i = r / rows_per_sample, q = r % rows_per_sample;
      const int64_t y = cl ? q : q % H;
      const int64_t* box = bp + 4 * i;
      const int64_t y0 = std::max<int64_t>(box[0], 0), x0 = std::max<int64_t>(box[1], 0);
      const int64_t y1 = std::min(box[2], H), x1 = std::min(box[3], W);
      const bool in_box = y >= y0 && y < y1 && x0 < x1;
      const float l = lp[i], oml = 1.0f - l;
      const uint8_t* a = src[i] + q * row_len;
      const uint8_t* b = src[pp[i]] + q * row_len;
      if (!cl) {  // row (c, y) of W values, written in place in the output
        row_values(a, b, op + i * P + q * W, W, in_box ? x0 : 0, in_box ? x1 : 0, l, oml);
        continue;
      }
      row_values(a, b, buf.data(), row_len, in_box ? x0 * C : 0, in_box ? x1 * C : 0, l, oml);
      deinterleave(buf.data(), op + i * P + y * W, C, W, HW);
    }
  });
}

}  // namespace
}  // namespace lmx_timm

TORCH_LIBRARY_FRAGMENT(lossmix_ext, m) {
  m.def("timm_collate_mix_(Tensor(a!) out, Tensor[] samples, Tensor partner, Tensor lam, Tensor boxes) -> ()");
}

TORCH_LIBRARY_IMPL(lossmix_ext, CPU, m) { m.impl("timm_collate_mix_", &lmx_timm::timm_collate_mix); }
