// Torch glue of the CUDA kernels (built only when torch has CUDA): argument handling on the
// host, kernels launched through launch.h on the current stream, no host synchronisation.
// Called from lossmix_ext/backends/cuda.py, which routes unsupported combinations elsewhere.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/ScalarType.h>
#include <c10/util/Optional.h>

#include <string>
#include <tuple>

namespace lmx_cuda {

std::tuple<at::Tensor, at::Tensor, at::Tensor> seesaw_fwd(const at::Tensor& logits, const at::Tensor& labels,
                                                          const at::Tensor& weights,
                                                          const c10::optional<at::Tensor>& obj_weights,
                                                          const c10::optional<at::Tensor>& counts, double p, double q,
                                                          double eps, c10::optional<int64_t> ignore_index);

// The same, the gradient written over `logits` (any non-overlapping strides); returns (loss, obj_loss).
std::tuple<at::Tensor, at::Tensor> seesaw_fwd_inplace(const at::Tensor& logits, const at::Tensor& labels,
                                                      const at::Tensor& weights,
                                                      const c10::optional<at::Tensor>& obj_weights,
                                                      const c10::optional<at::Tensor>& counts, double p, double q,
                                                      double eps, c10::optional<int64_t> ignore_index);

// with `inplace`, written over `grad` (contiguous); rows whose factor is exactly 1 untouched
at::Tensor seesaw_bwd(const at::Tensor& grad, const at::Tensor& grad_loss, const c10::optional<at::Tensor>& grad_obj,
                      bool inplace);

// {uint8, float16, bfloat16, float32} -> {float16, bfloat16, float32}, or float64 -> float64;
// images contiguous or (4-D) channels_last.
at::Tensor mix_images(const at::Tensor& images, const at::Tensor& lam, const at::Tensor& index,
                      const c10::optional<at::Tensor>& boxes, const c10::optional<at::Tensor>& mean,
                      const c10::optional<at::Tensor>& stdv, double scale, at::ScalarType out_dtype);

at::Tensor mix_images_backward(const at::Tensor& grad, const at::Tensor& lam, const at::Tensor& index,
                               const c10::optional<at::Tensor>& boxes, const c10::optional<at::Tensor>& stdv,
                               double scale, at::ScalarType images_dtype);

void mix_images_inplace(at::Tensor& images, const at::Tensor& lam, const at::Tensor& index,
                        const c10::optional<at::Tensor>& boxes);

// A value check's device side: when the one-element CUDA tensor `bad` is true (read on the device, no
// host sync), a kernel prints `message` and fails with a device-side assert.
void assert_flag(const at::Tensor& bad, const std::string& message);

}  // namespace lmx_cuda
