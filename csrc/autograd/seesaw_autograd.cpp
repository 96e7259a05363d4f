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
#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/graph_task.h>
#include <torch/csrc/autograd/variable.h>
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
// `logits` (defined) is kept too, as a saved tensor (seen by saved-tensor hooks such as
// save_on_cpu): the double backward of two label sets with Seesaw factors needs it.
void save_grad(AutogradContext* ctx, const Tensor& grad, bool has_obj, const std::string& op, const std::string& backend,
               const Tensor& logits) {
  ctx->set_materialize_grads(false);  // the unused grad output would otherwise get an N×C zero tensor
  ctx->saved_data["has_obj"] = has_obj;
  ctx->saved_data["backend"] = backend;
  ctx->saved_data["op"] = op;
  ctx->saved_data["keeps_logits"] = logits.defined();
  const bool alias = may_reuse(grad);
  ctx->saved_data["alias"] = alias;
  if (alias) {
    ctx->saved_data["grad"] = grad.detach();
    ctx->saved_data["version"] = static_cast<int64_t>(grad._version());
    if (logits.defined()) ctx->save_for_backward({logits});
  } else if (logits.defined()) {
    ctx->save_for_backward({grad, logits});
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

c10::IValue opt(const optional<Tensor>& t) { return t.has_value() ? c10::IValue(*t) : c10::IValue(); }
optional<Tensor> opt_tensor(const c10::IValue& v) { return v.isTensor() ? optional<Tensor>(v.toTensor()) : c10::nullopt; }

// What the double backward needs besides the saved gradient (all of it small): the label sets,
// the per-set weights and the Seesaw parameters; and, for two label sets with Seesaw factors
// (whose adjusted softmaxes differ per set, so that the summed gradient does not give them), a
// reference to the logits.
struct SecondOrder {
  Tensor labels, weights;
  optional<Tensor> obj_weights, counts, logits;
  double p, q, eps;
  optional<int64_t> ignore_index;
};

bool keeps_logits(const Tensor& logits, int64_t sets, const optional<Tensor>& counts, double p, double q) {
  return sets == 2 && ((p > 0 && counts.has_value()) || q > 0) && logits.requires_grad();
}

void save_seesaw_params(AutogradContext* ctx, const optional<Tensor>& counts, double p, double q, double eps,
                        optional<int64_t> ignore_index) {
  ctx->saved_data["counts"] = opt(counts);
  ctx->saved_data["p"] = p;
  ctx->saved_data["q"] = q;
  ctx->saved_data["eps"] = eps;
  ctx->saved_data["ignore_index"] = ignore_index.has_value() ? c10::IValue(*ignore_index) : c10::IValue();
}

void load_seesaw_params(AutogradContext* ctx, SecondOrder* so) {
  so->counts = opt_tensor(ctx->saved_data["counts"]);
  so->p = ctx->saved_data["p"].toDouble();
  so->q = ctx->saved_data["q"].toDouble();
  so->eps = ctx->saved_data["eps"].toDouble();
  const c10::IValue& ig = ctx->saved_data["ignore_index"];
  so->ignore_index = ig.isInt() ? optional<int64_t>(ig.toInt()) : c10::nullopt;
  if (ctx->saved_data["keeps_logits"].toBool()) {
    const variable_list saved = ctx->get_saved_variables();
    so->logits = saved.back();
  }
}

// The saved gradient, checked as a saved tensor is (freed, modified in place).
Tensor saved_grad(AutogradContext* ctx, bool alias) {
  if (!alias) return ctx->get_saved_variables()[0];
  const c10::IValue& saved = ctx->saved_data["grad"];
  TORCH_CHECK(saved.isTensor(),
              "Trying to backward through the graph a second time (the Seesaw gradient saved in the forward "
              "has been freed or reused). Specify retain_graph=True if you need to backward through the graph "
              "a second time.");
  Tensor grad = saved.toTensor();
  const int64_t want = ctx->saved_data["version"].toInt();
  TORCH_CHECK(static_cast<int64_t>(grad._version()) == want,
              "one of the variables needed for gradient computation has been modified by an inplace operation: "
              "the gradient output of lossmix_ext::", ctx->saved_data["op"].toStringRef(), " is at version ",
              grad._version(), "; expected version ", want, " instead.");
  return grad;
}

// The backward when it is itself differentiated (create_graph=True: grad mode is on) or when the
// gradient output of the op receives a gradient (the second backward of such a graph). The
// gradient G = d(loss)/d(logits) is an output of this node, so the result is written in terms of
// G *with its history* (this node's output 2): dx = G · (upstream factors) + H·v, where v is the
// gradient arriving at G and H·v the Hessian-vector product d(G·v)/d(logits), computed in Python
// (lossmix_ext._ops.seesaw_second_order) from G itself (or the logits, for two label sets with
// Seesaw factors) with differentiable ops, so that every further order is right too.
Tensor differentiable_backward(AutogradContext* ctx, const variable_list& grads, const Tensor& grad, bool alias,
                               const SecondOrder& so) {
  Tensor g = grad;
  if (alias) {  // the detached alias: give it back its history, output 2 of the node running now
    auto node = torch::autograd::get_current_node();
    TORCH_CHECK(node != nullptr, "lossmix_ext: the Seesaw double backward runs outside a backward pass");
    g = torch::autograd::make_variable(grad, torch::autograd::Edge(node, 2));
  }
  const bool has_obj = ctx->saved_data["has_obj"].toBool();
  auto defined = [&](size_t i) { return i < grads.size() && grads[i].defined() ? optional<Tensor>(grads[i])
                                                                                  : optional<Tensor>(); };
  return seesaw_second_order(g, defined(0), has_obj ? defined(1) : optional<Tensor>(), defined(2), so.labels,
                             so.weights, so.obj_weights, so.counts, so.p, so.q, so.eps, so.ignore_index, so.logits,
                             has_obj, ctx->saved_data["backend"].toStringRef());
}

template <class Load>
Tensor scale_saved_grad(AutogradContext* ctx, const variable_list& grads, Load&& load_second_order) {
  const bool alias = ctx->saved_data["alias"].toBool();
  const bool has_obj = ctx->saved_data["has_obj"].toBool();
  const std::string backend = ctx->saved_data["backend"].toStringRef();
  Tensor grad = saved_grad(ctx, alias);
  if (at::GradMode::is_enabled() || (grads.size() > 2 && grads[2].defined())) {
    SecondOrder so;
    load_second_order(ctx, grad, &so);
    Tensor out = differentiable_backward(ctx, grads, grad, alias, so);
    if (alias && !torch::autograd::get_current_graph_task_keep_graph()) ctx->saved_data["grad"] = c10::IValue();
    return out;
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
    const bool keep = keeps_logits(logits, labels.dim() == 2 && labels.sym_size(0) == 2 ? 2 : 1, counts, p, q);
    save_grad(ctx, grad, obj_weights.has_value(), "seesaw_fwd", backend, keep ? logits : Tensor());
    ctx->saved_data["labels"] = labels;
    ctx->saved_data["weights"] = weights;
    ctx->saved_data["obj_weights"] = opt(obj_weights);
    save_seesaw_params(ctx, counts, p, q, eps, ignore_index);
    return {loss, obj, grad};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    variable_list out(10);
    out[0] = scale_saved_grad(ctx, grads, [](AutogradContext* c, const Tensor&, SecondOrder* so) {
      so->labels = c->saved_data["labels"].toTensor();
      so->weights = c->saved_data["weights"].toTensor();
      so->obj_weights = opt_tensor(c->saved_data["obj_weights"]);
      load_seesaw_params(c, so);
    });
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
    const bool keep = keeps_logits(logits, labels_b.has_value() ? 2 : 1, counts, p, q);
    save_grad(ctx, grad, objectness, "seesaw_loss", backend, keep ? logits : Tensor());
    // the weights' inputs, to build them again if the backward is differentiated
    ctx->saved_data["labels"] = labels;
    ctx->saved_data["labels_b"] = opt(labels_b);
    ctx->saved_data["lam"] = opt(lam);
    ctx->saved_data["lam_value"] = lam_value;
    ctx->saved_data["label_weights"] = opt(label_weights);
    ctx->saved_data["objectness"] = objectness;
    ctx->saved_data["reduction"] = reduction;
    ctx->saved_data["avg_factor_t"] = opt(avg_factor_t);
    ctx->saved_data["avg_factor"] = avg_factor.has_value() ? c10::IValue(*avg_factor) : c10::IValue();
    ctx->saved_data["loss_weight"] = loss_weight;
    // (no sizes read here: they may be symbolic while tracing; the double backward reads them)
    save_seesaw_params(ctx, counts, p, q, eps, ignore_index);
    return {cls, obj, grad};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    variable_list out(17);
    out[0] = scale_saved_grad(ctx, grads, [](AutogradContext* c, const Tensor& grad, SecondOrder* so) {
      auto& d = c->saved_data;
      load_seesaw_params(c, so);
      const c10::IValue& af = d["avg_factor"];
      const bool objectness = d["objectness"].toBool();
      const LossWeights w = build_loss_weights(
          grad, d["labels"].toTensor(), opt_tensor(d["labels_b"]), opt_tensor(d["lam"]), d["lam_value"].toDouble(),
          opt_tensor(d["label_weights"]), so->ignore_index, objectness, d["reduction"].toStringRef(),
          opt_tensor(d["avg_factor_t"]), af.isDouble() ? optional<double>(af.toDouble()) : c10::nullopt,
          d["loss_weight"].toDouble(), !tracing(d["labels"].toTensor()));
      so->labels = w.labels;
      so->weights = w.weights;
      so->obj_weights = w.obj_weights;
      // as seesaw_loss calls seesaw_fwd: C counts (SeesawLoss keeps C + 1), and with objectness the
      // background label C is the rows without a class loss
      const int64_t C = grad.size(1) - (objectness ? 2 : 0);
      if (so->counts.has_value() && so->counts->dim() == 1 && so->counts->size(0) > C)
        so->counts = so->counts->slice(0, 0, C);
      if (objectness) so->ignore_index = C;
    });
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
