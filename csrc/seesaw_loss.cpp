// lossmix_ext::seesaw_loss — the whole loss of the public Seesaw / mixed cross-entropy functions
// in one dispatcher call (CompositeImplicitAutograd): value checks with the caller's argument
// names, the per-row weights (λ, label weights, loss weight, reduction divisors), one
// seesaw_fwd (which carries the autograd) and the reduction. Contract in lossmix_ext/_ops.py.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include <sstream>

#include "ops.h"

namespace lmx {
namespace {

using at::Tensor;
using c10::optional;

using FwdSig = std::tuple<Tensor, Tensor, Tensor>(const Tensor&, const Tensor&, const Tensor&,
                                                   const optional<Tensor>&, const optional<Tensor>&, double, double,
                                                   double, optional<int64_t>, c10::string_view);

constexpr double kF32Eps = 1.1920928955078125e-07;  // torch.finfo(torch.float32).eps, mmdetection's avg_factor eps

// Real tensors (checks can read them); fake / functional / meta tensors while tracing are not.
bool readable(const Tensor& t) {
  static const c10::DispatchKeySet tracing({c10::DispatchKey::Python, c10::DispatchKey::PythonTLSSnapshot,
                                            c10::DispatchKey::Functionalize,
                                            c10::DispatchKey::FuncTorchBatched,
                                            c10::DispatchKey::FuncTorchGradWrapper});
  return !t.key_set().has_any(tracing) && !t.is_meta() && t.has_storage();  // functionality keys only
}

void check_background_labels(const Tensor& labels, const char* name, int64_t C) {
  // same message as lossmix_ext._validation._labels_range_msg(..., background=True)
  std::ostringstream s;
  s << name << " must lie in [0, " << C << "] (num_classes=" << C << " is the background label)";
  check_labels_msg(labels, C + 1, c10::nullopt, s.str());
}

Tensor count_float(const Tensor& mask, at::ScalarType om) { return mask.sum(at::kLong).to(om); }

std::tuple<Tensor, Tensor> seesaw_loss(const Tensor& logits, const Tensor& labels, const optional<Tensor>& labels_b,
                                       const optional<Tensor>& lam, double lam_value,
                                       const optional<Tensor>& label_weights, const optional<Tensor>& counts,
                                       double p, double q, double eps, optional<int64_t> ignore_index,
                                       bool objectness, c10::string_view reduction,
                                       const optional<Tensor>& avg_factor_t, optional<double> avg_factor,
                                       double loss_weight, c10::string_view backend) {
  static auto fwd = c10::Dispatcher::singleton().findSchemaOrThrow("lossmix_ext::seesaw_fwd", "").typed<FwdSig>();
  TORCH_CHECK_VALUE(logits.dim() == 2, "seesaw_loss: logits must be 2-D, got ", logits.sizes());
  const int64_t n = logits.size(0);
  const int64_t C = logits.size(1) - (objectness ? 2 : 0);
  const bool pair = labels_b.has_value();
  const at::ScalarType om = logits.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const auto opts = logits.options().dtype(om);

  // Value checks, with the caller's names, before anything else (a failed check changes nothing).
  const bool check = readable(labels) && (!pair || readable(*labels_b));
  if (check) {
    const char* na = objectness || !pair ? "labels" : "labels_a";
    if (objectness) {
      check_background_labels(labels, na, C);
      if (pair) check_background_labels(*labels_b, "labels_b", C);
    } else {
      check_labels(labels, na, C, ignore_index);
      if (pair) check_labels(*labels_b, "labels_b", C, ignore_index);
    }
    if (counts.has_value() && p > 0 && readable(*counts)) check_finite(*counts, "cum_samples");
  }

  // Per-row base weight: label weights × loss weight.
  Tensor base;
  if (label_weights.has_value()) base = label_weights->to(om);
  if (loss_weight != 1.0) base = base.defined() ? base * loss_weight : at::full({n}, loss_weight, opts);

  const bool mean = reduction == "mean";
  const bool has_avg = avg_factor_t.has_value() || avg_factor.has_value();
  Tensor avg_div;  // the avg_factor divisor as a tensor (when avg_factor is one)
  double avg_div_value = 1.0;
  if (mean && has_avg) {
    if (avg_factor_t.has_value()) avg_div = avg_factor_t->to(opts.device()).to(om).reshape({}) + kF32Eps;
    else avg_div_value = *avg_factor + kF32Eps;
  }

  // Class weight of one label set: base · λ_s / divisor_s.
  auto set_weight = [&](const Tensor& lab, const Tensor& lam_s, double lam_s_value) -> Tensor {
    Tensor w = base;
    if (lam_s.defined()) w = w.defined() ? w * lam_s : lam_s;
    double scale = lam_s.defined() ? 1.0 : lam_s_value;
    Tensor div;
    if (mean) {
      if (has_avg) {
        if (avg_div.defined()) div = avg_div;
        else scale /= avg_div_value;
      } else if (objectness) {
        div = count_float(lab < C, om).clamp_min(1);
      } else if (ignore_index.has_value()) {
        div = count_float(lab != *ignore_index, om);
      } else {
        scale /= static_cast<double>(n);
      }
    }
    if (!w.defined()) w = div.defined() ? at::full({n}, scale, opts) / div : at::full({n}, scale, opts);
    else {
      if (scale != 1.0) w = w * scale;
      if (div.defined()) w = w / div;
    }
    return w;
  };
  // Objectness weight of one label set: base · λ_s / (n or avg_factor).
  auto obj_weight = [&](const Tensor& lam_s, double lam_s_value) -> Tensor {
    Tensor w = base;
    if (lam_s.defined()) w = w.defined() ? w * lam_s : lam_s;
    double scale = lam_s.defined() ? 1.0 : lam_s_value;
    if (mean) {
      if (has_avg && !avg_div.defined()) scale /= avg_div_value;
      else if (!has_avg) scale /= static_cast<double>(n);
    }
    if (!w.defined()) w = at::full({n}, scale, opts);
    else if (scale != 1.0) w = w * scale;
    if (mean && avg_div.defined()) w = w / avg_div;
    return w;
  };

  Tensor lam_a, lam_b;
  double lam_a_value = 1.0, lam_b_value = 1.0;
  if (pair) {
    if (lam.has_value()) {
      lam_a = lam->to(om);
      lam_b = 1 - lam_a;
    } else {
      lam_a_value = lam_value;
      lam_b_value = 1.0 - lam_value;
    }
  }
  Tensor lab_a = labels.to(at::kLong);
  Tensor weights, all_labels;
  optional<Tensor> obj_weights;
  if (pair) {
    Tensor lab_b = labels_b->to(at::kLong);
    all_labels = at::stack({lab_a, lab_b});
    weights = at::stack({set_weight(lab_a, lam_a, lam_a_value), set_weight(lab_b, lam_b, lam_b_value)});
    if (objectness) obj_weights = at::stack({obj_weight(lam_a, lam_a_value), obj_weight(lam_b, lam_b_value)});
  } else {
    all_labels = lab_a.unsqueeze(0);
    weights = set_weight(lab_a, Tensor(), 1.0).unsqueeze(0);
    if (objectness) obj_weights = obj_weight(Tensor(), 1.0).unsqueeze(0);
  }
  optional<Tensor> counts_c = counts;  // seesaw_fwd takes C counts (SeesawLoss keeps C + 1)
  if (counts.has_value() && counts->dim() == 1 && counts->size(0) > C) counts_c = counts->slice(0, 0, C);
  Tensor cls_rows, obj_rows;
  {
    ChecksDone done(check);
    std::tie(cls_rows, obj_rows, std::ignore) = fwd.call(logits, all_labels, weights, obj_weights, counts_c, p, q, eps,
                                                         objectness ? optional<int64_t>(C) : ignore_index, backend);
  }
  if (reduction == "none") return {cls_rows, obj_rows};
  return {cls_rows.sum(), objectness ? obj_rows.sum() : obj_rows};
}

}  // namespace
}  // namespace lmx

TORCH_LIBRARY_IMPL(lossmix_ext, CompositeImplicitAutograd, m) {
  m.impl("seesaw_loss", &lmx::seesaw_loss);
}
