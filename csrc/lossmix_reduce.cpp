// lossmix_ext::lossmix_reduce — λ·loss_a + (1−λ)·loss_b per sample as one lerp (one autograd
// node instead of four), weighted and reduced; λ checked in the op. CompositeImplicitAutograd:
// autograd and torch.compile see the ATen ops it is made of (the λ check becomes an in-graph
// assert there). Contract in lossmix_ext/_ops.py.
#include <ATen/ATen.h>
#include <torch/library.h>

#include "ops.h"

namespace lmx {
namespace {

using at::Tensor;
using c10::optional;

Tensor lossmix_reduce(const Tensor& loss_a, const Tensor& loss_b, const optional<Tensor>& lam, double lam_value,
                      const optional<Tensor>& weights, c10::string_view reduction,
                      const optional<Tensor>& avg_factor_t, optional<double> avg_factor) {
  Tensor loss;
  if (lam.has_value()) {
    check_unit_interval(*lam, "lam");
    std::vector<int64_t> shape(std::max<int64_t>(loss_a.dim(), 1), 1);
    shape[0] = -1;
    const Tensor w = lam->to(loss_a.scalar_type()).view(shape);
    loss = loss_a.scalar_type() == loss_b.scalar_type() ? at::lerp(loss_b, loss_a, w)
                                                          : w * loss_a + (1 - w) * loss_b;
  } else {
    loss = loss_a.scalar_type() == loss_b.scalar_type() ? at::lerp(loss_b, loss_a, lam_value)
                                                          : loss_a * lam_value + loss_b * (1.0 - lam_value);
  }
  if (weights.has_value()) loss = loss * *weights;
  if (reduction == "none") return loss;
  if (reduction == "sum") return loss.sum();
  if (avg_factor_t.has_value()) return loss.sum() / (*avg_factor_t + kF32Eps);
  if (avg_factor.has_value()) return loss.sum() / (*avg_factor + kF32Eps);
  return loss.mean();
}

}  // namespace
}  // namespace lmx

TORCH_LIBRARY_IMPL(lossmix_ext, CompositeImplicitAutograd, m) {
  m.impl("lossmix_reduce", &lmx::lossmix_reduce);
}
