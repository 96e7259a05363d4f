// Torch glue of the CPU kernels: argument handling, dtype conversion and at::parallel_for
// over rows / samples. Called from Python (lossmix_ext/backends/cpu.py), which decides which
// argument combinations go native; these functions check what they rely on.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Optional.h>

#include <string>
#include <tuple>

namespace lmx_cpu {

// seesaw_fwd contract (lossmix_ext/_ops.py): logits (N, CT) float16/bfloat16/float32/float64, any
// strides; labels (S, N), S in {1, 2}; weights / obj_weights (S, N).
std::tuple<at::Tensor, at::Tensor, at::Tensor> seesaw_fwd(const at::Tensor& logits, const at::Tensor& labels,
                                                          const at::Tensor& weights,
                                                          const c10::optional<at::Tensor>& obj_weights,
                                                          const c10::optional<at::Tensor>& counts, double p, double q,
                                                          double eps, c10::optional<int64_t> ignore_index);

// The same, the gradient written over `logits` (any strides); returns (loss, obj_loss).
std::tuple<at::Tensor, at::Tensor> seesaw_fwd_inplace(const at::Tensor& logits, const at::Tensor& labels,
                                                      const at::Tensor& weights,
                                                      const c10::optional<at::Tensor>& obj_weights,
                                                      const c10::optional<at::Tensor>& counts, double p, double q,
                                                      double eps, c10::optional<int64_t> ignore_index);

// seesaw_bwd; with `inplace` the result is written over `grad` (contiguous), rows whose factor is
// exactly 1 untouched, and `grad` is returned.
at::Tensor seesaw_bwd(const at::Tensor& grad, const at::Tensor& grad_loss, const c10::optional<at::Tensor>& grad_obj,
                      bool inplace);

// mix_images (CutMix boxes optional): images of uint8 / float16 / bfloat16 / float32 into float16 /
// bfloat16 / float32 (`out_dtype`; by default the images' dtype, float32 for uint8), maths in
// float32; float64 into float64. Images contiguous or (4-D) channels_last; mean / std / boxes
// need 4-D images.
at::Tensor mix_images(const at::Tensor& images, const at::Tensor& lam, const at::Tensor& index,
                      const c10::optional<at::Tensor>& mean, const c10::optional<at::Tensor>& stdv, double scale,
                      const c10::optional<at::Tensor>& boxes = c10::nullopt,
                      c10::optional<at::ScalarType> out_dtype = c10::nullopt);

// mix_images_backward without boxes, float16 / bfloat16 / float32 / float64 gradient and images.
at::Tensor mix_images_backward(const at::Tensor& grad, const at::Tensor& lam, const at::Tensor& index,
                               const c10::optional<at::Tensor>& stdv, double scale);

// mix_images_ (in place, involutive pairing), float16 / bfloat16 / float32 / float64 images with each sample a
// contiguous block (contiguous or channels_last).
void mix_images_inplace(at::Tensor& images, const at::Tensor& lam, const at::Tensor& index,
                        const c10::optional<at::Tensor>& boxes);

std::string isa();
bool set_isa_name(const std::string& name);
std::string isas();

}  // namespace lmx_cpu
