// Autograd kernel of lossmix_ext::seesaw_fwd (the C++ twin of _seesaw_setup / _seesaw_backward
// in lossmix_ext/_ops.py, which serve builds without this extension).
//
// The forward computes the gradient; the backward scales it row by row by the upstream
// gradients of the loss outputs. When nothing else can see the saved gradient any more, the
// backward scales it in place and returns it instead of writing a new N×C tensor: (1) the graph
// is not kept (no retain_graph / create_graph), (2) no other tensor shares its storage (the
// op's `grad` output, or a view of it, still held by the caller), (3) eager mode on plain
// tensors (no tensor subclass, fake / functional tensor, functorch transform) and no
// saved-tensor hooks (which must see what is saved). In that case the forward keeps a
// detached alias of the gradient (checked against in-place modification with its version
// counter); otherwise the gradient is an ordinary saved tensor and the backward writes a new one.
#include <ATen/SavedTensorHooks.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/csrc/autograd/graph_task.h>
#include <torch/library.h>

#include "ops.h"

namespace lmx {
namespace {

using at::Tensor;
using c10::optional;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

using FwdSig = std::tuple<Tensor, Tensor, Tensor>(const Tensor&, const Tensor&, const Tensor&,
                                                   const optional<Tensor>&, const optional<Tensor>&, double, double,
                                                   double, optional<int64_t>, c10::string_view);
using BwdSig = Tensor(const Tensor&, const Tensor&, const optional<Tensor>&, c10::string_view);

const c10::TypedOperatorHandle<FwdSig>& fwd_op() {
  static auto op = c10::Dispatcher::singleton().findSchemaOrThrow("lossmix_ext::seesaw_fwd", "").typed<FwdSig>();
  return op;
}

const c10::TypedOperatorHandle<BwdSig>& bwd_op() {
  static auto op = c10::Dispatcher::singleton().findSchemaOrThrow("lossmix_ext::seesaw_bwd", "").typed<BwdSig>();
  return op;
}

using LossSig = std::tuple<Tensor, Tensor, Tensor>(const Tensor&, const Tensor&, const optional<Tensor>&,
                                                    const optional<Tensor>&, double, const optional<Tensor>&,
                                                    const optional<Tensor>&, double, double, double,
                                                    optional<int64_t>, bool, c10::string_view,
                                                    const optional<Tensor>&, optional<double>, double,
                                                    c10::string_view);

const c10::TypedOperatorHandle<LossSig>& loss_op() {
  static auto op = c10::Dispatcher::singleton().findSchemaOrThrow("lossmix_ext::seesaw_loss", "").typed<LossSig>();
  return op;
}

// Keys present in the thread's dispatch state while a functorch transform runs.
const c10::DispatchKeySet kFunctorchModes({c10::DispatchKey::FuncTorchDynamicLayerFrontMode,
                                           c10::DispatchKey::FuncTorchDynamicLayerBackMode});

bool may_reuse(const Tensor& grad) {
  if (!grad.is_contiguous() || tracing(grad)) return false;  // subclass, fake / functional, functorch, meta
  if (c10::impl::tls_local_dispatch_key_set().included_.has_any(kFunctorchModes)) return false;
  return !at::SavedTensorDefaultHooks::get_hooks(false).has_value();
}

// The saved gradient of a forward (seesaw_fwd, seesaw_loss) and the backward that scales it.
void save_grad(AutogradContext* ctx, const Tensor& grad, bool has_obj, const std::string& op, const std::string& backend) {
  ctx->set_materialize_grads(false);  // the unused grad output would otherwise get an N×C zero tensor
  ctx->saved_data["has_obj"] = has_obj;
  ctx->saved_data["backend"] = backend;
  ctx->saved_data["op"] = op;
  const bool alias = may_reuse(grad);
  ctx->saved_data["alias"] = alias;
  if (alias) {
    ctx->saved_data["grad"] = grad.detach();
    ctx->saved_data["version"] = static_cast<int64_t>(grad._version());
  } else {
    ctx->save_for_backward({grad});
  }
}

// Upstream gradient of a loss output as per-row factors: undefined -> zeros, 0-d (a reduced
// loss) -> expanded over the rows (a view: no copy).
Tensor row_factors(const Tensor& g, const c10::SymInt& n, const at::TensorOptions& opts) {
  if (!g.defined()) return at::zeros_symint({n}, opts);
  return g.dim() == 0 ? g.expand_symint({n}) : g;
}

Tensor scale_saved_grad(AutogradContext* ctx, const variable_list& grads) {
  const bool alias = ctx->saved_data["alias"].toBool();
  const bool has_obj = ctx->saved_data["has_obj"].toBool();
  const std::string backend = ctx->saved_data["backend"].toStringRef();
  Tensor grad;
  if (alias) {
    const c10::IValue& saved = ctx->saved_data["grad"];
    TORCH_CHECK(saved.isTensor(),
                "Trying to backward through the graph a second time (the Seesaw gradient saved in the forward "
                "has been freed or reused). Specify retain_graph=True if you need to backward through the graph "
                "a second time.");
    grad = saved.toTensor();
    const int64_t want = ctx->saved_data["version"].toInt();
    TORCH_CHECK(static_cast<int64_t>(grad._version()) == want,
                "one of the variables needed for gradient computation has been modified by an inplace operation: "
                "the gradient output of lossmix_ext::", ctx->saved_data["op"].toStringRef(), " is at version ",
                grad._version(), "; expected version ", want, " instead.");
  } else {
    grad = ctx->get_saved_variables()[0];
  }
  const auto om = grad.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const c10::SymInt n = grad.sym_size(0);  // symbolic while tracing with dynamic shapes
  const auto opts = grad.options().dtype(om);
  Tensor gl = row_factors(grads[0], n, opts);
  optional<Tensor> go;
  if (has_obj) go = row_factors(grads[1], n, opts);
  if (alias && !torch::autograd::get_current_graph_task_keep_graph()) {
    ctx->saved_data["grad"] = c10::IValue();  // released, as saved tensors are
    if (!at::GradMode::is_enabled() && grad.has_storage() && grad.storage().use_count() == 1)
      return seesaw_bwd_inplace(grad, gl, go, backend);
  }
  return bwd_op().call(grad, gl, go, backend);
}

class SeesawFwd : public torch::autograd::Function<SeesawFwd> {
 public:
  static variable_list forward(AutogradContext* ctx, const Tensor& logits, const Tensor& labels,
                               const Tensor& weights, const optional<Tensor>& obj_weights,
                               const optional<Tensor>& counts, double p, double q, double eps,
                               optional<int64_t> ignore_index, const std::string& backend) {
    Tensor loss, obj, grad;
    {
      at::AutoDispatchBelowADInplaceOrView guard;
      std::tie(loss, obj, grad) =
          fwd_op().call(logits, labels, weights, obj_weights, counts, p, q, eps, ignore_index, backend);
    }
    save_grad(ctx, grad, obj_weights.has_value(), "seesaw_fwd", backend);
    return {loss, obj, grad};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    variable_list out(10);
    out[0] = scale_saved_grad(ctx, grads);
    return out;
  }
};

// seesaw_loss: one node for the whole loss (the fused gradient already carries the weights and
// the reduction's divisors; the backward scales it by the upstream gradients).
class SeesawLoss : public torch::autograd::Function<SeesawLoss> {
 public:
  static variable_list forward(AutogradContext* ctx, const Tensor& logits, const Tensor& labels,
                               const optional<Tensor>& labels_b, const optional<Tensor>& lam, double lam_value,
                               const optional<Tensor>& label_weights, const optional<Tensor>& counts, double p,
                               double q, double eps, optional<int64_t> ignore_index, bool objectness,
                               const std::string& reduction, const optional<Tensor>& avg_factor_t,
                               optional<double> avg_factor, double loss_weight, const std::string& backend) {
    Tensor cls, obj, grad;
    {
      at::AutoDispatchBelowADInplaceOrView guard;
      std::tie(cls, obj, grad) =
          loss_op().call(logits, labels, labels_b, lam, lam_value, label_weights, counts, p, q, eps, ignore_index,
                         objectness, reduction, avg_factor_t, avg_factor, loss_weight, backend);
    }
    save_grad(ctx, grad, objectness, "seesaw_loss", backend);
    return {cls, obj, grad};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    variable_list out(17);
    out[0] = scale_saved_grad(ctx, grads);
    return out;
  }
};

std::tuple<Tensor, Tensor, Tensor> seesaw_fwd_autograd(const Tensor& logits, const Tensor& labels,
                                                       const Tensor& weights, const optional<Tensor>& obj_weights,
                                                       const optional<Tensor>& counts, double p, double q, double eps,
                                                       optional<int64_t> ignore_index, c10::string_view backend) {
  auto out = SeesawFwd::apply(logits, labels, weights, obj_weights, counts, p, q, eps, ignore_index,
                              std::string(backend));
  return {out[0], out[1], out[2]};
}

std::tuple<Tensor, Tensor, Tensor> seesaw_loss_autograd(
    const Tensor& logits, const Tensor& labels, const optional<Tensor>& labels_b, const optional<Tensor>& lam,
    double lam_value, const optional<Tensor>& label_weights, const optional<Tensor>& counts, double p, double q,
    double eps, optional<int64_t> ignore_index, bool objectness, c10::string_view reduction,
    const optional<Tensor>& avg_factor_t, optional<double> avg_factor, double loss_weight,
    c10::string_view backend) {
  auto out = SeesawLoss::apply(logits, labels, labels_b, lam, lam_value, label_weights, counts, p, q, eps,
                               ignore_index, objectness, std::string(reduction), avg_factor_t, avg_factor,
                               loss_weight, std::string(backend));
  return {out[0], out[1], out[2]};
}

}  // namespace
}  // namespace lmx

TORCH_LIBRARY_IMPL(lossmix_ext, Autograd, m) {
  m.impl("seesaw_fwd", &lmx::seesaw_fwd_autograd);
  m.impl("seesaw_loss", &lmx::seesaw_loss_autograd);
}
