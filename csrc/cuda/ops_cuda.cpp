// Torch glue of the CUDA kernels (see ops_cuda.h and launch.h).
#include "ops_cuda.h"

#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime_api.h>

#include <cmath>

#include "launch.h"

namespace lmx_cuda {
namespace {

using at::Tensor;

int dtype_code(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return LMX_F32;
    case at::kHalf: return LMX_F16;
    case at::kBFloat16: return LMX_BF16;
    case at::kDouble: return LMX_F64;
    case at::kByte: return LMX_U8;
    default: TORCH_CHECK(false, "lossmix_ext CUDA kernels: unsupported dtype ", t);
  }
  return -1;
}

at::ScalarType opmath(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

// Launch a kernel through its C launcher (`start` returns the launch's cudaError_t). An error
// already pending before the launch belongs to an earlier operation: it is reported as such, not
// as this kernel's launch failure (which the launcher's cudaGetLastError would otherwise make it).
template <class Start>
void launch(const char* what, Start&& start) {
  const cudaError_t prior = cudaGetLastError();
  TORCH_CHECK(prior == cudaSuccess, "a CUDA error of an earlier operation was pending when lossmix_ext was about to "
              "launch ", what, ": ", cudaGetErrorString(prior), " (not this kernel's; CUDA_LAUNCH_BLOCKING=1 shows "
              "which operation raised it)");
  const int err = start();
  TORCH_CHECK(err == 0, "lossmix_ext CUDA kernel ", what, " failed to launch: ",
              cudaGetErrorString(static_cast<cudaError_t>(err)));
}

void* current_stream() { return static_cast<void*>(c10::cuda::getCurrentCUDAStream().stream()); }

bool sample_blocks(const Tensor& t) {
  return t.is_contiguous() || (t.dim() == 4 && t.is_contiguous(at::MemoryFormat::ChannelsLast));
}

// C, H, W and channels_last flag of a batch whose samples are contiguous blocks.
void layout(const Tensor& t, int64_t* C, int64_t* H, int64_t* W, int* cl) {
  if (t.dim() == 4) {
    *C = t.size(1);
    *H = t.size(2);
    *W = t.size(3);
    *cl = t.is_contiguous() ? 0 : 1;
  } else {
    *C = 1;
    *H = 1;
    *W = t.size(0) > 0 ? t.numel() / t.size(0) : 0;
    *cl = 0;
  }
}

Tensor per_channel(const c10::optional<Tensor>& v, at::ScalarType om, int64_t channels, const char* name) {
  if (!v.has_value()) return Tensor();
  TORCH_CHECK(v->numel() == channels, name, " must have one value per channel (", channels, "), got ", v->numel());
  return v->reshape({-1}).to(om).contiguous();
}

const void* ptr_or_null(const Tensor& t) { return t.defined() ? t.const_data_ptr() : nullptr; }

// Every tensor argument on the device of the main one: the kernels read them with raw pointers
// (a CPU or other-GPU pointer would be an illegal access, not an error message).
void same_device(const Tensor& t, const Tensor& main, const char* op, const char* name) {
  TORCH_CHECK_VALUE(t.device() == main.device(), op, ": ", name, " is on ", t.device(), " but must be on ",
                    main.device());
}
void same_device(const c10::optional<Tensor>& t, const Tensor& main, const char* op, const char* name) {
  if (t.has_value()) same_device(*t, main, op, name);
}

}  // namespace

namespace {
std::tuple<Tensor, Tensor, Tensor> seesaw_fwd_impl(const Tensor& logits, const Tensor& labels, const Tensor& weights,
                                                   const c10::optional<Tensor>& obj_weights,
                                                   const c10::optional<Tensor>& counts, double p, double q,
                                                   double eps, c10::optional<int64_t> ignore_index, bool inplace) {
  TORCH_CHECK(logits.is_cuda(), "seesaw_fwd (cuda backend): logits must be a CUDA tensor");
  TORCH_CHECK(logits.dim() == 2, "seesaw_fwd: logits must be 2-D (N, CT), got ", logits.dim(), "-D");
  same_device(labels, logits, "seesaw_fwd", "labels");
  same_device(weights, logits, "seesaw_fwd", "weights");
  same_device(obj_weights, logits, "seesaw_fwd", "obj_weights");
  same_device(counts, logits, "seesaw_fwd", "counts");
  const c10::cuda::CUDAGuard guard(logits.device());
  const auto dt = logits.scalar_type();
  const auto om = opmath(dt);
  const int64_t N = logits.size(0), CT = logits.size(1);
  const bool has_obj = obj_weights.has_value();
  const int64_t C = CT - (has_obj ? 2 : 0);
  TORCH_CHECK(C >= 0, "seesaw_fwd: logits need at least 2 columns with objectness, got ", CT);
  TORCH_CHECK(labels.dim() == 2 && labels.size(1) == N && (labels.size(0) == 1 || labels.size(0) == 2),
              "seesaw_fwd: labels must have shape (S, N) with S in {1, 2} and N = ", N, ", got ", labels.sizes());
  TORCH_CHECK(weights.sizes() == labels.sizes(), "seesaw_fwd: weights must have shape ", labels.sizes());
  if (has_obj)
    TORCH_CHECK(obj_weights->sizes() == labels.sizes(), "seesaw_fwd: obj_weights must have shape ", labels.sizes());
  TORCH_CHECK(std::isfinite(eps) && eps > 0, "seesaw_fwd: eps must be > 0, got ", eps);
  const auto opts = logits.options().dtype(om);
  Tensor loss = at::empty({N}, opts);
  Tensor obj_loss = at::empty({has_obj ? N : 0}, opts);
  Tensor grad = inplace ? logits : at::empty({N, CT}, logits.options());
  if (N == 0) return {loss, obj_loss, grad};
  Tensor lab = labels.to(at::kLong).contiguous();
  Tensor w = weights.to(om).contiguous();
  Tensor ow = has_obj ? obj_weights->to(om).contiguous() : Tensor();
  const bool use_p = p > 0 && counts.has_value() && C > 0;
  Tensor logc;
  if (use_p) {
    TORCH_CHECK(counts->dim() == 1 && counts->size(0) >= C, "seesaw_fwd: counts must have at least ", C, " entries");
    logc = counts->slice(0, 0, C).to(om).clamp_min(1).log().contiguous();
  }
  lmx_seesaw_fwd_args a{};
  a.logits = logits.const_data_ptr();
  a.ld = logits.stride(0);
  a.cs = logits.stride(1);
  a.grad = grad.mutable_data_ptr();
  a.gld = grad.stride(0);
  a.gcs = grad.stride(1);
  a.labels = lab.const_data_ptr<int64_t>();
  a.lab_s = lab.stride(0);
  a.lab_n = lab.stride(1);
  a.weights = w.const_data_ptr();
  a.w_s = w.stride(0);
  a.w_n = w.stride(1);
  a.obj_weights = has_obj ? ow.const_data_ptr() : nullptr;
  a.ow_s = has_obj ? ow.stride(0) : 0;
  a.ow_n = has_obj ? ow.stride(1) : 0;
  a.log_counts = ptr_or_null(logc);
  a.loss = loss.mutable_data_ptr();
  a.obj_loss = has_obj ? obj_loss.mutable_data_ptr() : nullptr;
  a.N = N;
  a.C = C;
  a.CT = CT;
  a.S = static_cast<int>(lab.size(0));
  a.dtype = dtype_code(dt);
  a.use_p = use_p ? 1 : 0;
  a.use_q = q > 0 ? 1 : 0;
  a.has_ignore = ignore_index.has_value() ? 1 : 0;
  a.ignore_index = ignore_index.value_or(0);
  a.p = p;
  a.q = q;
  a.log_eps = std::log(eps);
  launch("seesaw_fwd", [&] { return lmx_cuda_seesaw_fwd(&a, current_stream()); });
  return {loss, obj_loss, grad};
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
  // Each row is read and overwritten by the group of threads that owns it; rows must not overlap.
  TORCH_CHECK(logits.dim() != 2 || logits.size(0) <= 1 || logits.stride(0) != 0,
              "seesaw_fwd_inplace: logits rows must not overlap (stride 0)");
  auto r = seesaw_fwd_impl(logits, labels, weights, obj_weights, counts, p, q, eps, ignore_index, true);
  return {std::get<0>(r), std::get<1>(r)};
}

Tensor seesaw_bwd(const Tensor& grad, const Tensor& grad_loss, const c10::optional<Tensor>& grad_obj, bool inplace) {
  TORCH_CHECK(grad.is_cuda(), "seesaw_bwd (cuda backend): grad must be a CUDA tensor");
  TORCH_CHECK(grad.dim() == 2, "seesaw_bwd: grad must be 2-D, got ", grad.dim(), "-D");
  same_device(grad_loss, grad, "seesaw_bwd", "grad_loss");
  same_device(grad_obj, grad, "seesaw_bwd", "grad_obj");
  const c10::cuda::CUDAGuard guard(grad.device());
  const auto om = opmath(grad.scalar_type());
  const int64_t N = grad.size(0), CT = grad.size(1);
  const int64_t C = CT - (grad_obj.has_value() ? 2 : 0);
  TORCH_CHECK(grad_loss.dim() == 1 && grad_loss.size(0) == N, "seesaw_bwd: grad_loss must have shape (", N, ",)");
  Tensor gl = grad_loss.to(om);
  Tensor go = grad_obj.has_value() ? grad_obj->to(om) : Tensor();
  if (go.defined()) TORCH_CHECK(go.dim() == 1 && go.size(0) == N, "seesaw_bwd: grad_obj must have shape (", N, ",)");
  TORCH_CHECK(!inplace || grad.is_contiguous(), "seesaw_bwd: in place needs a contiguous grad");
  Tensor out = inplace ? grad : at::empty_like(grad);
  if (grad.numel() == 0) return out;
  Tensor g = grad.contiguous();
  Tensor o = out.is_contiguous() ? out : at::empty_like(g, at::MemoryFormat::Contiguous);
  lmx_seesaw_bwd_args a{};
  a.grad = g.const_data_ptr();
  a.out = o.mutable_data_ptr();
  a.grad_loss = gl.const_data_ptr();
  a.gl_s = gl.stride(0);
  a.grad_obj = ptr_or_null(go);
  a.go_s = go.defined() ? go.stride(0) : 0;
  a.N = N;
  a.C = C;
  a.CT = CT;
  a.dtype = dtype_code(grad.scalar_type());
  launch("seesaw_bwd", [&] { return lmx_cuda_seesaw_bwd(&a, current_stream()); });
  if (!o.is_same(out)) out.copy_(o);
  return out;
}

Tensor mix_images(const Tensor& images, const Tensor& lam, const Tensor& index, const c10::optional<Tensor>& boxes,
                  const c10::optional<Tensor>& mean, const c10::optional<Tensor>& stdv, double scale,
                  at::ScalarType out_dtype) {
  TORCH_CHECK(images.is_cuda(), "mix_images (cuda backend): images must be a CUDA tensor");
  TORCH_CHECK(images.dim() >= 1, "mix_images: images must have a batch dimension");
  same_device(lam, images, "mix_images", "lam");
  same_device(index, images, "mix_images", "index");
  same_device(boxes, images, "mix_images", "boxes");
  same_device(mean, images, "mix_images", "mean");
  same_device(stdv, images, "mix_images", "std");
  TORCH_CHECK(sample_blocks(images), "mix_images (cuda kernel): images must be contiguous or channels_last");
  TORCH_CHECK(!(boxes.has_value() || mean.has_value() || stdv.has_value()) || images.dim() == 4,
              "mix_images: boxes / mean / std need (B, C, H, W) images");
  const c10::cuda::CUDAGuard guard(images.device());
  const auto om = opmath(images.scalar_type());
  Tensor out = at::empty_like(images, images.options().dtype(out_dtype));
  TORCH_CHECK(out.strides() == images.strides(), "mix_images (cuda kernel): unexpected output layout");
  if (images.numel() == 0) return out;
  const int64_t B = images.size(0);
  Tensor lam_c = lam.reshape({-1}).to(om).contiguous();
  Tensor idx = index.reshape({-1}).to(at::kLong).contiguous();
  TORCH_CHECK(lam_c.numel() == B && idx.numel() == B, "mix_images: lam and index must have B = ", B, " entries");
  Tensor box = boxes.has_value() ? boxes->to(at::kLong).contiguous() : Tensor();
  lmx_mix_args a{};
  layout(images, &a.C, &a.H, &a.W, &a.channels_last);
  Tensor mean_c = per_channel(mean, om, a.C, "mean");
  Tensor std_c = per_channel(stdv, om, a.C, "std");
  a.x = images.const_data_ptr();
  a.out = out.mutable_data_ptr();
  a.in_dtype = dtype_code(images.scalar_type());
  a.out_dtype = dtype_code(out_dtype);
  a.B = B;
  a.P = images.numel() / B;
  a.lam = lam_c.const_data_ptr();
  a.index = idx.const_data_ptr<int64_t>();
  a.boxes = box.defined() ? box.const_data_ptr<int64_t>() : nullptr;
  a.mean = ptr_or_null(mean_c);
  a.stdv = ptr_or_null(std_c);
  a.scale = scale;
  launch("mix_images", [&] { return lmx_cuda_mix(&a, current_stream()); });
  return out;
}

Tensor mix_images_backward(const Tensor& grad, const Tensor& lam, const Tensor& index,
                           const c10::optional<Tensor>& boxes, const c10::optional<Tensor>& stdv, double scale,
                           at::ScalarType images_dtype) {
  TORCH_CHECK(grad.is_cuda(), "mix_images_backward (cuda backend): grad must be a CUDA tensor");
  TORCH_CHECK(grad.dim() >= 1, "mix_images_backward: grad must have a batch dimension");
  same_device(lam, grad, "mix_images_backward", "lam");
  same_device(index, grad, "mix_images_backward", "index");
  same_device(boxes, grad, "mix_images_backward", "boxes");
  same_device(stdv, grad, "mix_images_backward", "std");
  TORCH_CHECK(!(boxes.has_value() || stdv.has_value()) || grad.dim() == 4,
              "mix_images_backward: boxes / std need (B, C, H, W) gradients");
  const c10::cuda::CUDAGuard guard(grad.device());
  const auto om = opmath(images_dtype);
  Tensor out = at::empty_like(grad, grad.options().dtype(images_dtype));
  if (grad.numel() == 0) return out;
  const int64_t B = grad.size(0);
  Tensor g = sample_blocks(grad) ? grad : grad.contiguous();
  Tensor o = out.strides() == g.strides() ? out : at::empty_like(g, g.options().dtype(images_dtype));
  Tensor lam_c = lam.reshape({-1}).to(om).contiguous();
  Tensor idx = index.reshape({-1}).to(at::kLong);
  TORCH_CHECK(lam_c.numel() == B && idx.numel() == B, "mix_images_backward: lam and index must have B = ", B,
              " entries");
  // Sources of each target sample, in increasing order, built on the device (no sync):
  // out-of-range indices (value checks off) go to an extra bucket B that is never read.
  Tensor tgt = at::where((idx >= 0) & (idx < B), idx, at::full_like(idx, B));
  Tensor sources = std::get<1>(at::sort(tgt, /*stable=*/true, /*dim=*/0, /*descending=*/false)).contiguous();
  Tensor counts = at::zeros({B + 1}, idx.options()).index_add_(0, tgt, at::ones_like(tgt));
  Tensor offsets = at::cat({at::zeros({1}, idx.options()), counts.slice(0, 0, B).cumsum(0)}).contiguous();
  Tensor box = boxes.has_value() ? boxes->to(at::kLong).contiguous() : Tensor();
  lmx_mix_bwd_args a{};
  layout(g, &a.C, &a.H, &a.W, &a.channels_last);
  Tensor std_c = per_channel(stdv, om, a.C, "std");
  a.grad = g.const_data_ptr();
  a.dx = o.mutable_data_ptr();
  a.grad_dtype = dtype_code(g.scalar_type());
  a.dx_dtype = dtype_code(images_dtype);
  a.B = B;
  a.P = g.numel() / B;
  a.lam = lam_c.const_data_ptr();
  a.offsets = offsets.const_data_ptr<int64_t>();
  a.sources = sources.const_data_ptr<int64_t>();
  a.boxes = box.defined() ? box.const_data_ptr<int64_t>() : nullptr;
  a.stdv = ptr_or_null(std_c);
  a.scale = scale;
  launch("mix_images_backward", [&] { return lmx_cuda_mix_backward(&a, current_stream()); });
  if (!o.is_same(out)) out.copy_(o);
  return out;
}

void mix_images_inplace(Tensor& images, const Tensor& lam, const Tensor& index, const c10::optional<Tensor>& boxes) {
  TORCH_CHECK(images.is_cuda(), "mix_images_ (cuda backend): images must be a CUDA tensor");
  TORCH_CHECK(images.dim() >= 1, "mix_images_: images must have a batch dimension");
  same_device(lam, images, "mix_images_", "lam");
  same_device(index, images, "mix_images_", "index");
  same_device(boxes, images, "mix_images_", "boxes");
  TORCH_CHECK(sample_blocks(images), "mix_images_ (cuda kernel): images must be contiguous or channels_last");
  TORCH_CHECK(!boxes.has_value() || images.dim() == 4, "mix_images_: boxes need (B, C, H, W) images");
  const c10::cuda::CUDAGuard guard(images.device());
  if (images.numel() == 0) return;
  const int64_t B = images.size(0);
  Tensor lam_c = lam.reshape({-1}).to(opmath(images.scalar_type())).contiguous();
  Tensor idx = index.reshape({-1}).to(at::kLong).contiguous();
  TORCH_CHECK(lam_c.numel() == B && idx.numel() == B, "mix_images_: lam and index must have B = ", B, " entries");
  TORCH_CHECK(!boxes.has_value() || boxes->numel() == 4 * B, "mix_images_: boxes must have shape (B, 4)");
  Tensor box = boxes.has_value() ? boxes->to(at::kLong).contiguous() : Tensor();
  lmx_mix_pairs_args a{};
  layout(images, &a.C, &a.H, &a.W, &a.channels_last);
  a.x = images.mutable_data_ptr();
  a.dtype = dtype_code(images.scalar_type());
  a.B = B;
  a.P = images.numel() / B;
  a.lam = lam_c.const_data_ptr();
  a.index = idx.const_data_ptr<int64_t>();
  a.boxes = box.defined() ? box.const_data_ptr<int64_t>() : nullptr;
  launch("mix_images_", [&] { return lmx_cuda_mix_pairs(&a, current_stream()); });
}

void assert_flag(const Tensor& bad, const std::string& message) {
  TORCH_CHECK(bad.is_cuda() && bad.numel() == 1, "assert_flag: bad must be a one-element CUDA tensor");
  const c10::cuda::CUDAGuard guard(bad.device());
  const Tensor flag = bad.to(at::kBool).reshape({}).contiguous();
  launch("value check", [&] { return lmx_cuda_assert_flag(flag.const_data_ptr<bool>(), message.c_str(), current_stream()); });
}

}  // namespace lmx_cuda
