// lossmix_ext::seesaw_loss — the whole loss of the public Seesaw / mixed cross-entropy functions
// in one dispatcher call: value checks with the caller's argument names, the per-row weights
// (λ, label weights, loss weight, reduction divisors), one seesaw_fwd and the reduction.
// Registered for every backend (CompositeExplicitAutograd); its autograd kernel, one node for
// the whole loss, is in autograd/seesaw_autograd.cpp. Contract in lossmix_ext/_ops.py.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include <atomic>
#include <sstream>

#include "ops.h"

namespace lmx {
namespace {

using at::Tensor;
using c10::optional;

using FwdSig = std::tuple<Tensor, Tensor, Tensor>(const Tensor&, const Tensor&, const Tensor&,
                                                   const optional<Tensor>&, const optional<Tensor>&, double, double,
                                                   double, optional<int64_t>, c10::string_view);

std::atomic<bool> g_generic_weights{false};  // tests: the device-generic (ATen) weights on CPU too

// Real tensors (checks can read them); fake / functional / meta tensors while tracing are not.
bool readable(const Tensor& t) { return !tracing(t); }

Tensor count_float(const Tensor& mask, at::ScalarType om) { return mask.sum(at::kLong).to(om); }

// Sum of a 1-D float / double CPU tensor into a new 0-d tensor, in a loop (at::sum is a few µs of
// dispatch and TensorIterator set-up on the host for the few rows of a training batch).
Tensor sum_rows(const Tensor& rows) {
  if (!rows.is_cpu() || rows.dim() != 1 || tracing(rows) ||
      (rows.scalar_type() != at::kFloat && rows.scalar_type() != at::kDouble) || rows.size(0) > 4096)
    return rows.sum();
  Tensor out = at::empty({}, rows.options());
  const int64_t n = rows.size(0), st = rows.stride(0);
  if (rows.scalar_type() == at::kFloat) {
    const float* p = rows.const_data_ptr<float>();
    double acc = 0;  // wider accumulator than at::sum's float pairwise sum: as accurate or more
    for (int64_t i = 0; i < n; ++i) acc += p[i * st];
    *out.mutable_data_ptr<float>() = static_cast<float>(acc);
  } else {
    const double* p = rows.const_data_ptr<double>();
    double acc = 0;
    for (int64_t i = 0; i < n; ++i) acc += p[i * st];
    *out.mutable_data_ptr<double>() = acc;
  }
  return out;
}

std::tuple<Tensor, Tensor, Tensor> reduce(const Tensor& cls_rows, const Tensor& obj_rows, const Tensor& grad,
                                          c10::string_view reduction, bool objectness) {
  if (reduction == "none") return {cls_rows, obj_rows, grad};
  return {sum_rows(cls_rows), objectness ? sum_rows(obj_rows) : obj_rows, grad};
}

// The per-row weights of CPU tensors, written in one loop (the ATen path of seesaw_loss costs a
// few microseconds of host time per small op). Same formulas: per set s, class weight
// base·λ_s/div_s, objectness weight base·λ_s/div_obj.
struct CpuWeightArgs {
  const int64_t* lab[2];
  int S;
  int64_t n, C;
  const void* lw;      // (n,) opmath or null
  const void* lam;     // (n,) opmath or null (then lam_value)
  double lam_value, loss_weight;
  bool mean, objectness, has_avg;
  double avg;          // avg_factor + eps
  optional<int64_t> ignore_index;
};

template <class T>
void cpu_weights(const CpuWeightArgs& a, T* w, T* ow) {
  const T* lw = static_cast<const T*>(a.lw);
  const T* lam = static_cast<const T*>(a.lam);
  for (int s = 0; s < a.S; ++s) {
    const int64_t* lab = a.lab[s];
    double div = 1.0, obj_div = 1.0;
    if (a.mean) {
      if (a.has_avg) {
        div = obj_div = a.avg;
      } else {
        obj_div = static_cast<double>(a.n);
        if (a.objectness || a.ignore_index.has_value()) {
          int64_t cnt = 0;
          for (int64_t i = 0; i < a.n; ++i)
            cnt += a.objectness ? (lab[i] < a.C) : (lab[i] != *a.ignore_index);
          div = a.objectness ? static_cast<double>(std::max<int64_t>(cnt, 1)) : static_cast<double>(cnt);
        } else {
          div = static_cast<double>(a.n);
        }
      }
    }
    const T inv = static_cast<T>(1.0 / div), inv_obj = static_cast<T>(1.0 / obj_div);
    for (int64_t i = 0; i < a.n; ++i) {
      T b = lw != nullptr ? lw[i] : T(1);
      b *= static_cast<T>(a.loss_weight);
      T l = lam != nullptr ? lam[i] : static_cast<T>(a.lam_value);
      if (s == 1) l = T(1) - l;
      if (a.S == 1) l = T(1);
      const T base = b * l;
      w[s * a.n + i] = div == 0.0 ? base / static_cast<T>(div) : base * inv;
      if (ow != nullptr) ow[s * a.n + i] = base * inv_obj;
    }
  }
}

}  // namespace

// The per-row weights of seesaw_loss (see CpuWeightArgs and the contract in _ops.py): the stacked
// label sets (S, N) int64, the class weights (S, N) and, with objectness, the objectness weights
// (S, N), in opmath. `values_readable`: the labels are real tensors (not traced) and were checked.
LossWeights build_loss_weights(const Tensor& logits, const Tensor& labels, const optional<Tensor>& labels_b,
                               const optional<Tensor>& lam, double lam_value, const optional<Tensor>& label_weights,
                               optional<int64_t> ignore_index, bool objectness, c10::string_view reduction,
                               const optional<Tensor>& avg_factor_t, optional<double> avg_factor, double loss_weight,
                               bool values_readable) {
  const int64_t n = logits.size(0);
  const int64_t C = logits.size(1) - (objectness ? 2 : 0);
  const bool pair = labels_b.has_value();
  const at::ScalarType om = logits.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const auto opts = logits.options().dtype(om);
  const bool mean = reduction == "mean";
  const bool has_avg = avg_factor_t.has_value() || avg_factor.has_value();

  if (logits.is_cpu() && values_readable && n > 0 && !g_generic_weights.load(std::memory_order_relaxed) &&
      (!label_weights.has_value() || readable(*label_weights)) && (!lam.has_value() || readable(*lam)) &&
      (!avg_factor_t.has_value() || readable(*avg_factor_t))) {
    const int S = pair ? 2 : 1;
    Tensor all_labels = pair ? at::stack({labels.to(at::kLong), labels_b->to(at::kLong)})
                             : labels.to(at::kLong).reshape({1, n}).contiguous();
    all_labels = all_labels.contiguous();
    CpuWeightArgs a;
    a.lab[0] = all_labels.const_data_ptr<int64_t>();
    a.lab[1] = pair ? a.lab[0] + n : nullptr;
    a.S = S;
    a.n = n;
    a.C = C;
    Tensor lw = label_weights.has_value() ? label_weights->to(om).contiguous() : Tensor();
    Tensor lm = pair && lam.has_value() ? lam->to(om).contiguous() : Tensor();
    a.lw = lw.defined() ? lw.const_data_ptr() : nullptr;
    a.lam = lm.defined() ? lm.const_data_ptr() : nullptr;
    a.lam_value = lam_value;
    a.loss_weight = loss_weight;
    a.mean = mean;
    a.objectness = objectness;
    a.has_avg = has_avg;
    a.avg = has_avg ? (avg_factor_t.has_value() ? avg_factor_t->item<double>() : *avg_factor) + kF32Eps : 1.0;
    a.ignore_index = ignore_index;
    Tensor weights = at::empty({S, n}, opts);
    optional<Tensor> obj_weights;
    if (objectness) obj_weights = at::empty({S, n}, opts);
    if (om == at::kDouble)
      cpu_weights<double>(a, weights.mutable_data_ptr<double>(),
                          objectness ? obj_weights->mutable_data_ptr<double>() : nullptr);
    else
      cpu_weights<float>(a, weights.mutable_data_ptr<float>(),
                         objectness ? obj_weights->mutable_data_ptr<float>() : nullptr);
    return {all_labels, weights, obj_weights};
  }

  // Per-row base weight: label weights × loss weight.
  Tensor base;
  if (label_weights.has_value()) base = label_weights->to(om);
  if (loss_weight != 1.0) base = base.defined() ? base * loss_weight : at::full({n}, loss_weight, opts);

  Tensor avg_div;  // the avg_factor divisor as a tensor (when avg_factor is one)
  double avg_div_value = 1.0;
  if (mean && has_avg) {
    if (avg_factor_t.has_value() && avg_factor_t->is_cpu() && !logits.is_cpu() && readable(*avg_factor_t))
      avg_div_value = avg_factor_t->item<double>() + kF32Eps;  // a host value: no copy to the device
    else if (avg_factor_t.has_value())
      avg_div = avg_factor_t->to(opts.device()).to(om).reshape({}) + kF32Eps;
    else
      avg_div_value = *avg_factor + kF32Eps;
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
  return {all_labels, weights, obj_weights};
}

namespace {

std::tuple<Tensor, Tensor, Tensor> seesaw_loss(const Tensor& logits, const Tensor& labels, const optional<Tensor>& labels_b,
                                       const optional<Tensor>& lam, double lam_value,
                                       const optional<Tensor>& label_weights, const optional<Tensor>& counts,
                                       double p, double q, double eps, optional<int64_t> ignore_index,
                                       bool objectness, c10::string_view reduction,
                                       const optional<Tensor>& avg_factor_t, optional<double> avg_factor,
                                       double loss_weight, c10::string_view backend) {
  static auto fwd = c10::Dispatcher::singleton().findSchemaOrThrow("lossmix_ext::seesaw_fwd", "").typed<FwdSig>();
  TORCH_CHECK_VALUE(logits.dim() == 2, "seesaw_loss: logits must be 2-D, got ", logits.sizes());
  const int64_t C = logits.size(1) - (objectness ? 2 : 0);
  const bool pair = labels_b.has_value();

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

  optional<Tensor> counts_c = counts;  // seesaw_fwd takes C counts (SeesawLoss keeps C + 1)
  if (counts.has_value() && counts->dim() == 1 && counts->size(0) > C) counts_c = counts->slice(0, 0, C);
  const optional<int64_t> fwd_ignore = objectness ? optional<int64_t>(C) : ignore_index;
  const LossWeights w = build_loss_weights(logits, labels, labels_b, lam, lam_value, label_weights, ignore_index,
                                           objectness, reduction, avg_factor_t, avg_factor, loss_weight, check);
  Tensor cls_rows, obj_rows, grad;
  {
    ChecksDone done(check);
    std::tie(cls_rows, obj_rows, grad) =
        fwd.call(logits, w.labels, w.weights, w.obj_weights, counts_c, p, q, eps, fwd_ignore, backend);
  }
  return reduce(cls_rows, obj_rows, grad, reduction, objectness);
}

}  // namespace

void set_generic_weights(bool on) { g_generic_weights.store(on); }

}  // namespace lmx

TORCH_LIBRARY_IMPL(lossmix_ext, CompositeExplicitAutograd, m) {
  m.impl("seesaw_loss", &lmx::seesaw_loss);
}
