// Torch glue of the CPU kernels (see ops_cpu.h and kernels.h).
#include "ops_cpu.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <type_traits>
#include <vector>

#include "../lossmix_math.h"
#include "kernels.h"

namespace lmx_cpu {
namespace {

using at::Tensor;

constexpr int64_t kSeesawGrainElems = 32768;  // about this many logits per parallel task at least
constexpr int64_t kMixChunk = 32768;           // elements of one sample per parallel task

at::ScalarType opmath(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

template <class T>
struct Fns;
template <>
struct Fns<float> {
  static auto rows(const KernelTable& t) { return t.seesaw_rows_f32; }
  static auto row(const KernelTable& t) { return t.seesaw_row_f32; }
  static auto scale(const KernelTable& t) { return t.scale_rows_f32; }
};
template <>
struct Fns<double> {
  static auto rows(const KernelTable& t) { return t.seesaw_rows_f64; }
  static auto row(const KernelTable& t) { return t.seesaw_row_f64; }
  static auto scale(const KernelTable& t) { return t.scale_rows_f64; }
};

// T: opmath type, D: storage type of logits / grad. The gradient goes to `grad` (N, CT)
// contiguous, or over the logits themselves when `grad` is undefined (in-place variant).
template <class T, class D>
void run_seesaw(const Tensor& logits, const Tensor& grad, SeesawArgs<T> a) {
  const KernelTable& tab = table();
  const int64_t N = logits.size(0), CT = logits.size(1);
  const int64_t s0 = logits.stride(0), s1 = logits.stride(1);
  const bool inplace = !grad.defined();
  const D* x = logits.const_data_ptr<D>();
  D* g = inplace ? logits.mutable_data_ptr<D>() : grad.mutable_data_ptr<D>();
  const int64_t g0 = inplace ? s0 : CT, g1 = inplace ? s1 : 1;
  const int64_t grain = std::max<int64_t>(1, kSeesawGrainElems / std::max<int64_t>(CT, 1));
  const int64_t scratch_n = seesaw_scratch_elems(a.C);
  if constexpr (std::is_same_v<T, D>) {
    if (!inplace && (s1 == 1 || CT <= 1)) {
      a.logits = x;
      a.ld = s0;
      a.grad = g;
      a.ldg = CT;
      auto fn = Fns<T>::rows(tab);
      at::parallel_for(0, N, grain, [&](int64_t r0, int64_t r1) {
        std::vector<T> scratch(scratch_n);
        fn(a, r0, r1, scratch.data());
      });
      return;
    }
  }
  // One row at a time through opmath buffers: converted (float16 / bfloat16, with the vector
  // conversions of the kernels when the row's columns are adjacent), strided, or in place (the
  // row is copied out first, the gradient written over it).
  constexpr bool kHalf = std::is_same_v<D, c10::Half> || std::is_same_v<D, c10::BFloat16>;
  auto fn = Fns<T>::row(tab);
  at::parallel_for(0, N, grain, [&](int64_t r0, int64_t r1) {
    std::vector<T> scratch(scratch_n + 2 * CT);
    T* zb = scratch.data() + scratch_n;
    T* gb = zb + CT;
    for (int64_t i = r0; i < r1; ++i) {
      const D* xr = x + i * s0;
      D* gr = g + i * g0;
      if constexpr (kHalf && std::is_same_v<T, float>) {
        if (s1 == 1 && g1 == 1) {
          constexpr int hk = std::is_same_v<D, c10::BFloat16> ? kElemBF16 : kElemF16;
          bool active = false;  // a class loss in some label set (else the row reads only its objectness)
          for (int s = 0; s < a.S; ++s)
            active |= lmx::label_active(a.labels[s * a.lab_s + i * a.lab_n], a.C, a.has_ignore, a.ignore_index);
          const int64_t k0 = active ? 0 : a.C;  // a background row: no class columns to convert
          tab.half_to_float(hk, reinterpret_cast<const uint16_t*>(xr) + k0, zb + k0, CT - k0);
          fn(a, i, zb, gb, scratch.data());
          if (!active) std::memset(static_cast<void*>(gr), 0, static_cast<size_t>(a.C) * sizeof(D));  // +0 bits
          tab.float_to_half(hk, gb + k0, reinterpret_cast<uint16_t*>(gr) + k0, CT - k0);
          continue;
        }
      }
      for (int64_t k = 0; k < CT; ++k) zb[k] = static_cast<T>(xr[k * s1]);
      if constexpr (std::is_same_v<T, D>) {
        if (g1 == 1) {
          fn(a, i, zb, gr, scratch.data());
          continue;
        }
      }
      fn(a, i, zb, gb, scratch.data());
      for (int64_t k = 0; k < CT; ++k) gr[k * g1] = static_cast<D>(gb[k]);
    }
  });
}

template <class T>
void seesaw_fwd_typed(const Tensor& logits, const Tensor& grad, const Tensor& lab, const Tensor& w,
                      const c10::optional<Tensor>& ow, const Tensor& counts, const Tensor& loss,
                      const Tensor& obj_loss,
                      int64_t C, bool use_p, bool use_q, double p, double q, double eps,
                      c10::optional<int64_t> ignore_index) {
  SeesawArgs<T> a;
  a.labels = lab.const_data_ptr<int64_t>();
  a.lab_s = lab.stride(0);
  a.lab_n = lab.stride(1);
  a.weights = w.const_data_ptr<T>();
  a.w_s = w.stride(0);
  a.w_n = w.stride(1);
  if (ow.has_value()) {
    a.obj_weights = ow->const_data_ptr<T>();
    a.ow_s = ow->stride(0);
    a.ow_n = ow->stride(1);
    a.obj_loss = obj_loss.mutable_data_ptr<T>();
  }
  // log(max(count, 1)) of the first C counts and the mitigation factors, in host buffers (no
  // temporaries through the dispatcher: at training shapes they would cost more than the kernel)
  std::vector<T> logc_buf, mit_buf;
  if (use_p) {
    logc_buf.resize(C);
    mit_buf.resize(C);
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, counts.scalar_type(), "seesaw_log_counts", [&] {
      const scalar_t* cp = counts.const_data_ptr<scalar_t>();
      const int64_t cs = counts.stride(0);
      for (int64_t k = 0; k < C; ++k)
        logc_buf[k] = std::log(std::max(static_cast<T>(static_cast<double>(cp[k * cs])), T(1)));
    });
  }
  a.log_counts = use_p ? logc_buf.data() : nullptr;
  if (use_p) {
    const T* lc = logc_buf.data();
    T lmax = lc[0], lmin = lc[0];
    for (int64_t k = 1; k < C; ++k) {
      lmax = std::max(lmax, lc[k]);
      lmin = std::min(lmin, lc[k]);
    }
    a.log_count_max = lmax;
    a.log_count_range = lmax - lmin;
    T* ma = mit_buf.data();
    for (int64_t k = 0; k < C; ++k) ma[k] = std::exp(static_cast<T>(p) * (lc[k] - lmax));
    a.mit_a = ma;
  }
  a.loss = loss.mutable_data_ptr<T>();
  a.C = C;
  a.S = static_cast<int>(lab.size(0));
  a.use_p = use_p;
  a.use_q = use_q;
  a.has_ignore = ignore_index.has_value();
  a.ignore_index = ignore_index.value_or(0);
  a.p = static_cast<T>(p);
  a.q = static_cast<T>(q);
  a.log_eps = static_cast<T>(std::log(eps));
  switch (logits.scalar_type()) {
    case at::kFloat: run_seesaw<T, float>(logits, grad, a); break;
    case at::kDouble: run_seesaw<T, double>(logits, grad, a); break;
    case at::kHalf: run_seesaw<T, c10::Half>(logits, grad, a); break;
    case at::kBFloat16: run_seesaw<T, c10::BFloat16>(logits, grad, a); break;
    default: TORCH_CHECK(false, "seesaw_fwd: unsupported logits dtype ", logits.scalar_type());
  }
}

template <class T, class D>
void run_scale(const Tensor& g, const Tensor& o, const Tensor& gl, const c10::optional<Tensor>& go, int64_t C) {
  const int64_t N = g.size(0), CT = g.size(1);
  const int64_t grain = std::max<int64_t>(1, kSeesawGrainElems / std::max<int64_t>(CT, 1));
  const T* glp = gl.const_data_ptr<T>();
  const int64_t gls = gl.stride(0);
  const T* gop = go.has_value() ? go->const_data_ptr<T>() : nullptr;
  const int64_t gos = go.has_value() ? go->stride(0) : 0;
  if constexpr (std::is_same_v<T, D>) {
    ScaleArgs<T> a;
    a.grad = g.const_data_ptr<T>();
    a.ldg = CT;
    a.out = o.mutable_data_ptr<T>();
    a.ldo = CT;
    a.grad_loss = glp;
    a.gl_s = gls;
    a.grad_obj = gop;
    a.go_s = gos;
    a.C = C;
    a.CT = CT;
    auto fn = Fns<T>::scale(table());
    at::parallel_for(0, N, grain, [&](int64_t r0, int64_t r1) { fn(a, r0, r1); });
  } else {  // float16 / bfloat16: the class columns with the kernels' vector conversions
    const D* gp = g.const_data_ptr<D>();
    D* op = o.mutable_data_ptr<D>();
    const int hk = std::is_same_v<D, c10::BFloat16> ? kElemBF16 : kElemF16;
    const KernelTable& tab = table();
    at::parallel_for(0, N, grain, [&](int64_t r0, int64_t r1) {
      for (int64_t i = r0; i < r1; ++i) {
        const T s = glp[i * gls];
        const T so = gop != nullptr ? gop[i * gos] : s;
        const bool inplace = gp == op;
        const int64_t ncls = gop != nullptr ? C : CT;
        if (!(inplace && s == T(1)))  // in place, factor 1: untouched
          tab.scale_half(hk, reinterpret_cast<const uint16_t*>(gp + i * CT), reinterpret_cast<uint16_t*>(op + i * CT),
                         ncls, s);
        if (inplace && so == T(1)) continue;
        for (int64_t k = ncls; k < CT; ++k) op[i * CT + k] = static_cast<D>(static_cast<T>(gp[i * CT + k]) * so);
      }
    });
  }
}

bool is_channels_last_4d(const Tensor& t) {
  return t.dim() == 4 && t.is_contiguous(at::MemoryFormat::ChannelsLast);
}

// Samples as contiguous blocks: contiguous, or 4-D channels_last.
bool sample_blocks(const Tensor& t) { return t.is_contiguous() || is_channels_last_4d(t); }

// Tasks of `elems` elements each per parallel_for grain: at least one chunk's worth of work per
// thread, so that tiny batches run inline instead of paying for waking the thread pool.
int64_t task_grain(int64_t elems) { return std::max<int64_t>(1, kMixChunk / std::max<int64_t>(elems, 1)); }

Tensor per_channel(const c10::optional<Tensor>& v, at::ScalarType om, int64_t channels, const char* name) {
  if (!v.has_value()) return Tensor();
  TORCH_CHECK(v->numel() == channels, name, " must have one value per channel (", channels, "), got ", v->numel());
  return v->reshape({-1}).to(om).contiguous();
}

}  // namespace

// ----------------------------------------------------------------------------- seesaw
namespace {
std::tuple<Tensor, Tensor, Tensor> seesaw_fwd_impl(const Tensor& logits, const Tensor& labels, const Tensor& weights,
                                                   const c10::optional<Tensor>& obj_weights,
                                                   const c10::optional<Tensor>& counts, double p, double q,
                                                   double eps, c10::optional<int64_t> ignore_index, bool inplace) {
  TORCH_CHECK(logits.device().is_cpu(), "seesaw_fwd (cpu backend): logits must be on the CPU");
  TORCH_CHECK(logits.dim() == 2, "seesaw_fwd: logits must be 2-D (N, CT), got ", logits.dim(), "-D");
  const auto dt = logits.scalar_type();
  TORCH_CHECK(dt == at::kFloat || dt == at::kDouble || dt == at::kHalf || dt == at::kBFloat16,
              "seesaw_fwd: logits must be float16/bfloat16/float32/float64, got ", dt);
  const auto om = opmath(dt);
  const int64_t N = logits.size(0), CT = logits.size(1);
  const bool has_obj = obj_weights.has_value();
  const int64_t C = CT - (has_obj ? 2 : 0);
  TORCH_CHECK(C >= 0, "seesaw_fwd: logits need at least 2 columns with objectness, got ", CT);
  TORCH_CHECK(labels.dim() == 2 && labels.size(1) == N && (labels.size(0) == 1 || labels.size(0) == 2),
              "seesaw_fwd: labels must have shape (S, N) with S in {1, 2} and N = ", N, ", got ", labels.sizes());
  const int64_t S = labels.size(0);
  TORCH_CHECK(weights.sizes() == labels.sizes(), "seesaw_fwd: weights must have shape ", labels.sizes(), ", got ",
              weights.sizes());
  if (has_obj)
    TORCH_CHECK(obj_weights->sizes() == labels.sizes(), "seesaw_fwd: obj_weights must have shape ", labels.sizes(),
                ", got ", obj_weights->sizes());
  TORCH_CHECK(std::isfinite(eps) && eps > 0, "seesaw_fwd: eps must be > 0, got ", eps);
  const auto opts = logits.options().dtype(om);
  Tensor loss = at::empty({N}, opts);
  Tensor obj_loss = at::empty({has_obj ? N : 0}, opts);
  Tensor grad = inplace ? Tensor() : at::empty({N, CT}, logits.options());
  if (N == 0) return {loss, obj_loss, inplace ? logits : grad};
  Tensor lab = labels.to(at::kLong).contiguous();
  Tensor w = weights.to(om).contiguous();
  c10::optional<Tensor> ow;
  if (has_obj) ow = obj_weights->to(om).contiguous();
  const bool use_p = p > 0 && counts.has_value() && C > 0;
  const bool use_q = q > 0;
  Tensor cnt;
  if (use_p) {
    TORCH_CHECK(counts->dim() == 1 && counts->size(0) >= C, "seesaw_fwd: counts must have at least ", C,
                " entries, got ", counts->sizes());
    TORCH_CHECK(counts->is_cpu() && counts->is_floating_point(), "seesaw_fwd: counts must be a floating CPU tensor");
    cnt = *counts;
  }
  (void)S;
  if (om == at::kDouble)
    seesaw_fwd_typed<double>(logits, grad, lab, w, ow, cnt, loss, obj_loss, C, use_p, use_q, p, q, eps,
                             ignore_index);
  else
    seesaw_fwd_typed<float>(logits, grad, lab, w, ow, cnt, loss, obj_loss, C, use_p, use_q, p, q, eps,
                            ignore_index);
  return {loss, obj_loss, inplace ? logits : grad};
}
}  // namespace

std::tuple<Tensor, Tensor, Tensor> seesaw_fwd(const Tensor& logits, const Tensor& labels, const Tensor& weights,
                                              const c10::optional<Tensor>& obj_weights,
                                              const c10::optional<Tensor>& counts, double p, double q, double eps,
                                              c10::optional<int64_t> ignore_index) {
  return seesaw_fwd_impl(logits, labels, weights, obj_weights, counts, p, q, eps, ignore_index, false);
}

std::tuple<Tensor, Tensor> seesaw_fwd_inplace(const Tensor& logits, const Tensor& labels, const Tensor& weights,
                                              const c10::optional<Tensor>& obj_weights,
                                              const c10::optional<Tensor>& counts, double p, double q, double eps,
                                              c10::optional<int64_t> ignore_index) {
  TORCH_CHECK(logits.dim() != 2 || logits.size(0) <= 1 || logits.stride(0) != 0,
              "seesaw_fwd_inplace: logits rows must not overlap (stride 0)");
  auto r = seesaw_fwd_impl(logits, labels, weights, obj_weights, counts, p, q, eps, ignore_index, true);
  return {std::get<0>(r), std::get<1>(r)};
}

Tensor seesaw_bwd(const Tensor& grad, const Tensor& grad_loss, const c10::optional<Tensor>& grad_obj, bool inplace) {
  TORCH_CHECK(grad.device().is_cpu(), "seesaw_bwd (cpu backend): grad must be on the CPU");
  TORCH_CHECK(grad.dim() == 2, "seesaw_bwd: grad must be 2-D, got ", grad.dim(), "-D");
  const auto dt = grad.scalar_type();
  TORCH_CHECK(dt == at::kFloat || dt == at::kDouble || dt == at::kHalf || dt == at::kBFloat16,
              "seesaw_bwd: unsupported grad dtype ", dt);
  const auto om = opmath(dt);
  const int64_t N = grad.size(0), CT = grad.size(1);
  const int64_t C = CT - (grad_obj.has_value() ? 2 : 0);
  TORCH_CHECK(C >= 0, "seesaw_bwd: grad needs at least 2 columns with grad_obj");
  TORCH_CHECK(grad_loss.dim() == 1 && grad_loss.size(0) == N, "seesaw_bwd: grad_loss must have shape (", N,
              ",), got ", grad_loss.sizes());
  Tensor gl = grad_loss.to(om);
  c10::optional<Tensor> go;
  if (grad_obj.has_value()) {
    TORCH_CHECK(grad_obj->dim() == 1 && grad_obj->size(0) == N, "seesaw_bwd: grad_obj must have shape (", N,
                ",), got ", grad_obj->sizes());
    go = grad_obj->to(om);
  }
  TORCH_CHECK(!inplace || grad.is_contiguous(), "seesaw_bwd: in place needs a contiguous grad");
  Tensor out = inplace ? grad : at::empty_like(grad);
  if (grad.numel() == 0) return out;
  Tensor g = grad.contiguous();
  Tensor o = out.is_contiguous() ? out : at::empty_like(g, at::MemoryFormat::Contiguous);
  switch (dt) {
    case at::kFloat: run_scale<float, float>(g, o, gl, go, C); break;
    case at::kDouble: run_scale<double, double>(g, o, gl, go, C); break;
    case at::kHalf: run_scale<float, c10::Half>(g, o, gl, go, C); break;
    default: run_scale<float, c10::BFloat16>(g, o, gl, go, C); break;
  }
  if (!o.is_same(out)) out.copy_(o);
  return out;
}

// ----------------------------------------------------------------------------- image mixing
namespace {
// Calls f(k0, k1) for the runs of elements [k0, k1) of one sample, within [e0, e1), that lie in
// the CutMix box (y0, x0, y1, x1) (half-open rows x columns) of a (C, H, W) sample, NCHW
// (e = (c * H + y) * W + x) or channels-last (e = (y * W + x) * C + c).
template <class F>
void box_runs(int64_t e0, int64_t e1, int64_t C, int64_t H, int64_t W, bool cl, const int64_t* box, F&& f) {
  const int64_t y0 = std::max<int64_t>(box[0], 0), x0 = std::max<int64_t>(box[1], 0);
  const int64_t y1 = std::min(box[2], H), x1 = std::min(box[3], W);
  if (y0 >= y1 || x0 >= x1 || e0 >= e1) return;
  if (cl) {
    const int64_t row = W * C;  // one image row, all channels
    for (int64_t y = std::max(y0, e0 / row); y < y1 && y * row < e1; ++y) {
      const int64_t k0 = std::max(e0, (y * W + x0) * C), k1 = std::min(e1, (y * W + x1) * C);
      if (k0 < k1) f(k0, k1);
    }
  } else {
    for (int64_t r = e0 / W; r * W < e1; ++r) {  // r = c * H + y
      const int64_t y = r % H;
      if (y < y0 || y >= y1) continue;
      const int64_t k0 = std::max(e0, r * W + x0), k1 = std::min(e1, r * W + x1);
      if (k0 < k1) f(k0, k1);
    }
  }
}
}  // namespace

namespace {
int elem_kind(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return kElemF32;
    case at::kHalf: return kElemF16;
    case at::kBFloat16: return kElemBF16;
    case at::kByte: return kElemU8;
    default: return -1;
  }
}

// n values of kind `kind` at p (element k0) as float32, into dst.
void load_floats(const KernelTable& tab, int kind, const void* p, int64_t k0, int64_t n, float* dst) {
  switch (kind) {
    case kElemF32: std::memcpy(dst, static_cast<const float*>(p) + k0, n * sizeof(float)); break;
    case kElemU8: {
      const uint8_t* u = static_cast<const uint8_t*>(p) + k0;
      for (int64_t k = 0; k < n; ++k) dst[k] = static_cast<float>(u[k]);
      break;
    }
    default: tab.half_to_float(kind, static_cast<const uint16_t*>(p) + k0, dst, n);
  }
}

void store_floats(const KernelTable& tab, int kind, const float* src, void* p, int64_t k0, int64_t n) {
  if (kind == kElemF32) std::memcpy(static_cast<float*>(p) + k0, src, n * sizeof(float));
  else tab.float_to_half(kind, src, static_cast<uint16_t*>(p) + k0, n);
}
}  // namespace

Tensor mix_images(const Tensor& images, const Tensor& lam, const Tensor& index, const c10::optional<Tensor>& mean,
                  const c10::optional<Tensor>& stdv, double scale, const c10::optional<Tensor>& boxes,
                  c10::optional<at::ScalarType> out_dtype) {
  TORCH_CHECK(images.device().is_cpu(), "mix_images (cpu backend): images must be on the CPU");
  const auto dt = images.scalar_type();
  const auto out_dt = out_dtype.value_or(dt == at::kByte ? at::kFloat : dt);
  const bool f64 = dt == at::kDouble || out_dt == at::kDouble;
  TORCH_CHECK(f64 ? dt == out_dt : elem_kind(dt) >= 0 && elem_kind(out_dt) >= 0 && out_dt != at::kByte,
              "mix_images (cpu kernel): images of uint8 / float16 / bfloat16 / float32 mix into float16 / bfloat16 / "
              "float32, and float64 into float64; got ", dt, " -> ", out_dt);
  TORCH_CHECK(images.dim() >= 1, "mix_images: images must have a batch dimension");
  TORCH_CHECK(sample_blocks(images), "mix_images (cpu kernel): images must be contiguous or channels_last");
  const auto om = opmath(dt);
  const int64_t B = images.size(0);
  const bool norm = mean.has_value() || stdv.has_value();
  TORCH_CHECK(!norm || images.dim() == 4, "mix_images: mean / std need (B, C, H, W) images");
  TORCH_CHECK(!boxes.has_value() || images.dim() == 4, "mix_images: boxes need (B, C, H, W) images");
  Tensor out = at::empty_like(images, images.options().dtype(out_dt));
  TORCH_CHECK(out.strides() == images.strides(), "mix_images (cpu kernel): unexpected output layout");
  if (images.numel() == 0) return out;
  TORCH_CHECK(lam.numel() == B && index.numel() == B, "mix_images: lam and index must have B = ", B, " entries");
  const int64_t P = images.numel() / B;
  Tensor lam_c = lam.reshape({-1}).to(om).contiguous();
  Tensor idx = index.reshape({-1}).to(at::kLong).contiguous();
  TORCH_CHECK(!boxes.has_value() || boxes->numel() == 4 * B, "mix_images: boxes must have shape (B, 4)");
  Tensor box_c = boxes.has_value() ? boxes->reshape({-1}).to(at::kLong).contiguous() : Tensor();
  const int64_t* bp = boxes.has_value() ? box_c.const_data_ptr<int64_t>() : nullptr;
  const bool cl = images.dim() == 4 && !images.is_contiguous();  // channels_last (sample_blocks)
  const int64_t C4 = images.dim() == 4 ? images.size(1) : 1, H4 = images.dim() == 4 ? images.size(2) : 1;
  const int64_t W4 = images.dim() == 4 ? images.size(3) : P;
  int64_t channels = 1, inner = 1;
  if (norm) {
    channels = images.size(1);
    inner = images.is_contiguous() ? images.size(2) * images.size(3) : 1;
  }
  Tensor mean_c = per_channel(mean, om, channels, "mean");
  Tensor std_c = per_channel(stdv, om, channels, "std");
  const int64_t chunk = norm && inner == 1 ? (kMixChunk + channels - 1) / channels * channels : kMixChunk;
  const int64_t nch = (P + chunk - 1) / chunk;
  const KernelTable& tab = table();
  const int in_kind = elem_kind(dt), out_kind = elem_kind(out_dt);
  auto launch = [&](auto tag, auto fn) {
    using Tm = decltype(tag);  // opmath
    MixArgs<Tm> a;
    a.x = images.const_data_ptr();
    a.out = out.mutable_data_ptr();
    a.B = B;
    a.P = P;
    a.lam = lam_c.const_data_ptr<Tm>();
    a.index = idx.const_data_ptr<int64_t>();
    a.scale = static_cast<Tm>(scale);
    a.mean = mean_c.defined() ? mean_c.const_data_ptr<Tm>() : nullptr;
    a.stdv = std_c.defined() ? std_c.const_data_ptr<Tm>() : nullptr;
    a.channels = channels;
    a.inner = inner;
    at::parallel_for(0, B * nch, task_grain(std::min(P, chunk)), [&](int64_t i0, int64_t i1) {
      std::vector<Tm> run;  // one box run's partner values
      for (int64_t it = i0; it < i1; ++it) {
        const int64_t b = it / nch, e0 = (it % nch) * chunk, e1 = std::min(P, e0 + chunk);
        fn(a, b, e0, e1);
        if (bp == nullptr) continue;
        // CutMix: inside box b the partner's normalised value (the chunk is still in cache)
        int64_t c = a.index[b];
        if (c < 0 || c >= B) c = b;  // out-of-range partner (value checks off), as the mixing
        box_runs(e0, e1, C4, H4, W4, cl, bp + 4 * b, [&](int64_t k0, int64_t k1) {
          // one row of one channel (NCHW), or whole pixels from channel 0 (channels-last)
          run.resize(k1 - k0);
          if constexpr (std::is_same_v<Tm, double>) {
            std::memcpy(run.data(), images.const_data_ptr<double>() + c * P + k0, (k1 - k0) * sizeof(double));
          } else {
            load_floats(tab, in_kind, static_cast<const char*>(a.x) + c * P * images.element_size(), k0, k1 - k0,
                        run.data());
          }
          int64_t ch = cl ? k0 % C4 : (k0 / (H4 * W4)) % C4;
          for (int64_t k = k0; k < k1; ++k) {
            run[k - k0] = lmx::normalise(run[k - k0], a.scale, a.mean ? a.mean[ch] : Tm(0),
                                         a.stdv ? a.stdv[ch] : Tm(1), a.mean != nullptr, a.stdv != nullptr);
            if (cl && ++ch == C4) ch = 0;
          }
          if constexpr (std::is_same_v<Tm, double>) {
            std::memcpy(out.mutable_data_ptr<double>() + b * P + k0, run.data(), (k1 - k0) * sizeof(double));
          } else {
            store_floats(tab, out_kind, run.data(), static_cast<char*>(a.out) + b * P * out.element_size(), k0,
                         k1 - k0);
          }
        });
      }
    });
  };
  if (f64) {
    launch(double(), tab.mix_f64_f64);
  } else {
    auto fn = tab.mix_f32;
    launch(float(), [&](const MixArgs<float>& a, int64_t b, int64_t e0, int64_t e1) { fn(in_kind, out_kind, a, b, e0, e1); });
  }
  return out;
}

Tensor mix_images_backward(const Tensor& grad, const Tensor& lam, const Tensor& index,
                           const c10::optional<Tensor>& stdv, double scale) {
  TORCH_CHECK(grad.device().is_cpu(), "mix_images_backward (cpu backend): grad must be on the CPU");
  const auto dt = grad.scalar_type();
  TORCH_CHECK(dt == at::kFloat || dt == at::kDouble || dt == at::kHalf || dt == at::kBFloat16,
              "mix_images_backward (cpu kernel): grad must be float16 / bfloat16 / float32 / float64, got ", dt);
  const auto om = opmath(dt);
  TORCH_CHECK(grad.dim() >= 1, "mix_images_backward: grad must have a batch dimension");
  TORCH_CHECK(!stdv.has_value() || grad.dim() == 4, "mix_images_backward: std needs (B, C, H, W) gradients");
  const int64_t B = grad.size(0);
  Tensor out = at::empty_like(grad);
  if (grad.numel() == 0) return out;
  TORCH_CHECK(lam.numel() == B && index.numel() == B, "mix_images_backward: lam and index must have B = ", B,
              " entries");
  Tensor g = sample_blocks(grad) ? grad : grad.contiguous();
  Tensor o = out.strides() == g.strides() ? out : at::empty_like(g);
  const int64_t P = g.numel() / B;
  int64_t channels = 1, inner = 1;
  if (stdv.has_value()) {
    channels = g.size(1);
    inner = g.is_contiguous() ? g.size(2) * g.size(3) : 1;
  }
  Tensor std_c = per_channel(stdv, om, channels, "std");
  Tensor lam_c = lam.reshape({-1}).to(om).contiguous();
  Tensor idx = index.reshape({-1}).to(at::kLong).contiguous();
  // sources of each target, in increasing order (index_add_'s accumulation order)
  std::vector<int64_t> offsets(B + 1, 0), sources;
  const int64_t* ip = idx.const_data_ptr<int64_t>();
  for (int64_t b = 0; b < B; ++b)
    if (ip[b] >= 0 && ip[b] < B) ++offsets[ip[b] + 1];
  for (int64_t t = 0; t < B; ++t) offsets[t + 1] += offsets[t];
  sources.resize(offsets[B]);
  {
    std::vector<int64_t> fill(offsets.begin(), offsets.end() - 1);
    for (int64_t b = 0; b < B; ++b)
      if (ip[b] >= 0 && ip[b] < B) sources[fill[ip[b]]++] = b;
  }
  const int64_t chunk = stdv.has_value() && inner == 1 ? (kMixChunk + channels - 1) / channels * channels : kMixChunk;
  const int64_t nch = (P + chunk - 1) / chunk;
  auto launch = [&](auto tag, auto fn) {
    using Tm = decltype(tag);  // opmath
    MixBwdArgs<Tm> a;
    a.grad = g.const_data_ptr();
    a.dx = o.mutable_data_ptr();
    a.B = B;
    a.P = P;
    a.lam = lam_c.const_data_ptr<Tm>();
    a.offsets = offsets.data();
    a.sources = sources.data();
    a.scale = static_cast<Tm>(scale);
    a.stdv = std_c.defined() ? std_c.const_data_ptr<Tm>() : nullptr;
    a.channels = channels;
    a.inner = inner;
    at::parallel_for(0, B * nch, task_grain(std::min(P, chunk)), [&](int64_t i0, int64_t i1) {
      for (int64_t it = i0; it < i1; ++it) {
        const int64_t t = it / nch, e0 = (it % nch) * chunk;
        fn(a, t, e0, std::min(P, e0 + chunk));
      }
    });
  };
  const KernelTable& tab = table();
  if (dt == at::kDouble) {
    launch(double(), tab.mix_bwd_f64);
  } else {
    const int kind = elem_kind(dt);
    auto fn = tab.mix_bwd_f32;
    launch(float(), [&](const MixBwdArgs<float>& a, int64_t t, int64_t e0, int64_t e1) { fn(kind, a, t, e0, e1); });
  }
  if (!o.is_same(out)) out.copy_(o);
  return out;
}


void mix_images_inplace(at::Tensor& images, const Tensor& lam, const Tensor& index,
                        const c10::optional<Tensor>& boxes) {
  TORCH_CHECK(images.device().is_cpu(), "mix_images_ (cpu backend): images must be on the CPU");
  const auto dt = images.scalar_type();
  TORCH_CHECK(dt == at::kFloat || dt == at::kDouble || dt == at::kHalf || dt == at::kBFloat16,
              "mix_images_ (cpu kernel): images must be float16 / bfloat16 / float32 / float64, got ", dt);
  TORCH_CHECK(images.dim() >= 1, "mix_images_: images must have a batch dimension");
  TORCH_CHECK(sample_blocks(images), "mix_images_ (cpu kernel): images must be contiguous or channels_last");
  TORCH_CHECK(!boxes.has_value() || images.dim() == 4, "mix_images_: boxes need (B, C, H, W) images");
  if (images.numel() == 0) return;
  const int64_t B = images.size(0), P = images.numel() / B;
  TORCH_CHECK(lam.numel() == B && index.numel() == B, "mix_images_: lam and index must have B = ", B, " entries");
  TORCH_CHECK(!boxes.has_value() || boxes->numel() == 4 * B, "mix_images_: boxes must have shape (B, 4)");
  Tensor lam_c = lam.reshape({-1}).to(opmath(dt)).contiguous();
  Tensor idx = index.reshape({-1}).to(at::kLong).contiguous();
  Tensor box_c = boxes.has_value() ? boxes->reshape({-1}).to(at::kLong).contiguous() : Tensor();
  const int64_t* ip = idx.const_data_ptr<int64_t>();
  const int64_t* bp = boxes.has_value() ? box_c.const_data_ptr<int64_t>() : nullptr;
  std::vector<std::pair<int64_t, int64_t>> pairs;
  for (int64_t b = 0; b < B; ++b) {
    const int64_t c = ip[b];
    if (c > b && c < B && ip[c] == b) pairs.emplace_back(b, c);  // fixed points stay as they are
  }
  if (pairs.empty()) return;
  const bool cl = images.dim() == 4 && !images.is_contiguous();  // channels_last (sample_blocks)
  const int64_t C = images.dim() == 4 ? images.size(1) : 1, H = images.dim() == 4 ? images.size(2) : 1;
  const int64_t W = images.dim() == 4 ? images.size(3) : P;
  const int64_t npairs = static_cast<int64_t>(pairs.size());
  const int64_t nch = (P + kMixChunk - 1) / kMixChunk;
  // Ts: storage type (uint16_t for float16 / bfloat16), Tm: opmath
  auto launch = [&](auto storage_tag, auto tag, auto fn) {
    using Ts = decltype(storage_tag);
    using Tm = decltype(tag);
    Ts* x = static_cast<Ts*>(images.mutable_data_ptr());
    const Tm* lp = lam_c.const_data_ptr<Tm>();
    at::parallel_for(0, npairs * nch, task_grain(2 * std::min(P, kMixChunk)), [&](int64_t i0, int64_t i1) {
      std::vector<Ts> old_b, old_c;  // the chunk's values before mixing, for the boxes
      for (int64_t it = i0; it < i1; ++it) {
        const auto& pr = pairs[it / nch];
        const int64_t e0 = (it % nch) * kMixChunk, e1 = std::min(P, e0 + kMixChunk);
        Ts* xb = x + pr.first * P;
        Ts* xc = x + pr.second * P;
        if (bp == nullptr) {
          fn(xb, xc, lp[pr.first], lp[pr.second], e0, e1);
          continue;
        }
        // CutMix: box b takes the partner's old values, box c likewise; the rest is mixed
        old_b.assign(xb + e0, xb + e1);
        old_c.assign(xc + e0, xc + e1);
        fn(xb, xc, lp[pr.first], lp[pr.second], e0, e1);
        box_runs(e0, e1, C, H, W, cl, bp + 4 * pr.first, [&](int64_t k0, int64_t k1) {
          std::copy(old_c.begin() + (k0 - e0), old_c.begin() + (k1 - e0), xb + k0);
        });
        box_runs(e0, e1, C, H, W, cl, bp + 4 * pr.second, [&](int64_t k0, int64_t k1) {
          std::copy(old_b.begin() + (k0 - e0), old_b.begin() + (k1 - e0), xc + k0);
        });
      }
    });
  };
  const KernelTable& tab = table();
  if (dt == at::kFloat) {
    launch(float(), float(), tab.mix_pair_f32);
  } else if (dt == at::kDouble) {
    launch(double(), double(), tab.mix_pair_f64);
  } else {
    const int kind = elem_kind(dt);
    auto fn = tab.mix_pair_half;
    launch(uint16_t(), float(), [&](uint16_t* xb, uint16_t* xc, float lb, float lc, int64_t e0, int64_t e1) {
      fn(kind, xb, xc, lb, lc, e0, e1);
    });
  }
}

std::string isa() { return table().isa; }
bool set_isa_name(const std::string& name) { return set_isa(name.c_str()); }
std::string isas() { return available_isas(); }

}  // namespace lmx_cpu
