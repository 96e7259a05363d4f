// The lossmix_ext ops in the dispatcher: schemas, CPU / CUDA kernels and the value checks of
// the native path. The contracts are written out in lossmix_ext/_ops.py; the fake (meta)
// kernels are registered there too (torch.library.register_fake), the autograd kernel of
// seesaw_fwd is autograd/seesaw_autograd.cpp.
//
// Each op takes the backend name as its last argument (resolved in Python before the call).
// The device kernel runs the native kernel when that name is the native backend of the
// device ("cpu" on CPU, "cuda" on CUDA) and the arguments have a native kernel; every other
// case goes to the Python kernel `_ops._python_kernel(op, backend, *args)` (torch / triton
// backends), which runs the same value checks in Python.
#include <torch/extension.h>

#include <ATen/ATen.h>
#include <torch/csrc/autograd/VariableTypeUtils.h>
#include <torch/library.h>

#include <atomic>
#include <cmath>
#include <sstream>

#include "cpu/ops_cpu.h"
#include "ops.h"
#ifdef LOSSMIX_WITH_CUDA
#include "cuda/ops_cuda.h"
#endif

namespace lmx {
namespace {

using at::Tensor;
using c10::optional;

std::atomic<int> g_mode{0};
thread_local bool t_checks_done = false;
PyObject* g_python_kernel = nullptr;  // kept alive for the life of the process

// ------------------------------------------------------------------ Python kernels
template <class R, class... Args>
R call_python(const char* op, c10::string_view backend, const Args&... args) {
  pybind11::gil_scoped_acquire gil;
  TORCH_CHECK(g_python_kernel != nullptr, "lossmix_ext::", op, ": the Python kernels are not registered (import "
              "lossmix_ext first)");
  auto fn = pybind11::reinterpret_borrow<pybind11::object>(g_python_kernel);
  pybind11::object out = fn(op, std::string(backend), args...);
  return out.template cast<R>();
}

// ------------------------------------------------------------------ value checks
std::string labels_msg(const char* name, int64_t hi, optional<int64_t> ignore_index) {
  std::ostringstream s;
  s << name << " must lie in [0, " << hi - 1 << "]";
  if (ignore_index.has_value()) s << " or equal to ignore_index=" << *ignore_index;
  return s.str();
}

// A 0-d bool tensor `bad` on a non-CPU device: raise ("sync") or assert on device ("auto"; with
// the CUDA kernels built, an assert that prints `msg`: at::_assert_async drops it on CUDA).
void device_check(const Tensor& bad, const std::string& msg) {
  if (validation_mode() == Validate::Sync) {
    TORCH_CHECK_VALUE(!bad.item<bool>(), msg);
    return;
  }
#ifdef LOSSMIX_WITH_CUDA
  if (bad.is_cuda() && !tracing(bad)) {
    lmx_cuda::assert_flag(bad, msg);
    return;
  }
#endif
  at::_assert_async(at::logical_not(bad), msg);
}

template <class I>
bool any_label_outside(const Tensor& lab, int64_t hi, optional<int64_t> ignore_index) {
  const I* p = lab.const_data_ptr<I>();
  const int64_t n = lab.numel();
  const bool has_ig = ignore_index.has_value();
  const int64_t ig = ignore_index.value_or(0);
  bool bad = false;
  for (int64_t i = 0; i < n; ++i) {
    const int64_t v = static_cast<int64_t>(p[i]);
    bad |= (v < 0 || v >= hi) && !(has_ig && v == ig);
  }
  return bad;
}

bool native(c10::string_view backend, const char* name) { return backend == name; }

// ------------------------------------------------------------------ seesaw_fwd
void check_seesaw_values(const Tensor& logits, const Tensor& labels, const optional<Tensor>& obj_weights,
                         const optional<Tensor>& counts, double p, optional<int64_t> ignore_index) {
  if (ChecksDone::active()) return;
  const int64_t C = logits.size(1) - (obj_weights.has_value() ? 2 : 0);
  check_labels(labels, "labels", obj_weights.has_value() ? C + 1 : C, ignore_index);
  if (counts.has_value() && p > 0) check_finite(*counts, "cum_samples");
}

bool native_seesaw(const Tensor& labels) { return labels.dim() == 2 && (labels.size(0) == 1 || labels.size(0) == 2); }

using Fwd = std::tuple<Tensor, Tensor, Tensor>;

Fwd seesaw_fwd_cpu(const Tensor& logits, const Tensor& labels, const Tensor& weights,
                   const optional<Tensor>& obj_weights, const optional<Tensor>& counts, double p, double q, double eps,
                   optional<int64_t> ignore_index, c10::string_view backend) {
  if (native(backend, "cpu") && native_seesaw(labels)) {
    check_seesaw_values(logits, labels, obj_weights, counts, p, ignore_index);
    return lmx_cpu::seesaw_fwd(logits, labels, weights, obj_weights, counts, p, q, eps, ignore_index);
  }
  return call_python<Fwd>("seesaw_fwd", backend, logits, labels, weights, obj_weights, counts, p, q, eps,
                          ignore_index);
}

Fwd seesaw_fwd_cuda(const Tensor& logits, const Tensor& labels, const Tensor& weights,
                    const optional<Tensor>& obj_weights, const optional<Tensor>& counts, double p, double q,
                    double eps, optional<int64_t> ignore_index, c10::string_view backend) {
#ifdef LOSSMIX_WITH_CUDA
  if (native(backend, "cuda") && native_seesaw(labels)) {
    check_seesaw_values(logits, labels, obj_weights, counts, p, ignore_index);
    return lmx_cuda::seesaw_fwd(logits, labels, weights, obj_weights, counts, p, q, eps, ignore_index);
  }
#endif
  return call_python<Fwd>("seesaw_fwd", backend, logits, labels, weights, obj_weights, counts, p, q, eps,
                          ignore_index);
}

// ------------------------------------------------------------------ seesaw_bwd
Tensor seesaw_bwd_cpu(const Tensor& grad, const Tensor& grad_loss, const optional<Tensor>& grad_obj,
                      c10::string_view backend) {
  if (native(backend, "cpu")) return lmx_cpu::seesaw_bwd(grad, grad_loss, grad_obj, false);
  return call_python<Tensor>("seesaw_bwd", backend, grad, grad_loss, grad_obj);
}

Tensor seesaw_bwd_cuda(const Tensor& grad, const Tensor& grad_loss, const optional<Tensor>& grad_obj,
                       c10::string_view backend) {
#ifdef LOSSMIX_WITH_CUDA
  if (native(backend, "cuda")) return lmx_cuda::seesaw_bwd(grad, grad_loss, grad_obj, false);
#endif
  return call_python<Tensor>("seesaw_bwd", backend, grad, grad_loss, grad_obj);
}

// ------------------------------------------------------------------ count_labels_
// counts[l] += 1 for every label l in [0, n); a label outside (value checks off) is skipped.
template <class T>
void count_cpu(T* c, int64_t n, const Tensor& lab) {
  AT_DISPATCH_INTEGRAL_TYPES(lab.scalar_type(), "count_labels_", [&] {
    const scalar_t* l = lab.const_data_ptr<scalar_t>();
    for (int64_t i = 0, m = lab.numel(); i < m; ++i) {
      const int64_t v = static_cast<int64_t>(l[i]);
      if (v >= 0 && v < n) c[v] += T(1);
    }
  });
}

// counts[l] += 1 for every label l of `labels`, checked against len(counts) before (unless the
// checks are off: then a label outside [0, len(counts)) is skipped, never written out of bounds).
void add_histogram(Tensor& counts, const Tensor& labels) {
  const Tensor flat = labels.reshape({-1});
  const int64_t n = counts.size(0);
  if (counts.is_cpu() && counts.is_contiguous() &&
      (counts.scalar_type() == at::kFloat || counts.scalar_type() == at::kDouble)) {
    const Tensor lab = flat.contiguous();
    if (counts.scalar_type() == at::kFloat) count_cpu(counts.mutable_data_ptr<float>(), n, lab);
    else count_cpu(counts.mutable_data_ptr<double>(), n, lab);
    return;
  }
  const Tensor lab = flat.to(at::kLong);
  if (validation_mode() != Validate::Off) {  // every label was checked to index the buffer
    counts.index_add_(0, lab, at::ones({flat.numel()}, counts.options()));
    return;
  }
  const Tensor ok = at::logical_and(lab >= 0, lab < n);
  counts.index_add_(0, at::where(ok, lab, at::zeros_like(lab)), ok.to(counts.scalar_type()));
}

void count_labels_kernel(Tensor& counts, const Tensor& labels) {
  TORCH_CHECK_VALUE(counts.dim() == 1, "count_labels_: counts must be 1-D, got shape ", counts.sizes());
  TORCH_CHECK_VALUE(labels.device() == counts.device(), "count_labels_: labels are on ", labels.device(),
                    " but counts are on ", counts.device());
  if (labels.numel() == 0) return;
  check_labels(labels, "labels", counts.size(0), c10::nullopt);
  add_histogram(counts, labels);
}

// seesaw_count_: SeesawLoss's count update. Every check first (labels and labels_b in [0, C] with
// C = len(cum_samples) − 1 the background label; cum_samples finite when check_finite), then
// the histogram of both label sets is added.
void seesaw_count_kernel(Tensor& cum_samples, const Tensor& labels, const optional<Tensor>& labels_b,
                         bool check_finite_counts) {
  TORCH_CHECK_VALUE(cum_samples.dim() == 1 && cum_samples.size(0) >= 1,
                    "seesaw_count_: cum_samples must be 1-D, got shape ", cum_samples.sizes());
  const int64_t C = cum_samples.size(0) - 1;
  check_background_labels(labels, "labels", C);
  if (labels_b.has_value()) check_background_labels(*labels_b, "labels_b", C);
  if (check_finite_counts) check_finite(cum_samples, "cum_samples");
  if (labels.numel() > 0) add_histogram(cum_samples, labels);
  if (labels_b.has_value() && labels_b->numel() > 0) add_histogram(cum_samples, *labels_b);
}

// Mutating op: bump the version counter of `counts` (as autograd does for in-place ops).
void seesaw_count_autograd(Tensor& cum_samples, const Tensor& labels, const optional<Tensor>& labels_b,
                           bool check_finite_counts) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("lossmix_ext::seesaw_count_", "")
                       .typed<void(Tensor&, const Tensor&, const optional<Tensor>&, bool)>();
  {
    at::AutoDispatchBelowADInplaceOrView guard;
    op.call(cum_samples, labels, labels_b, check_finite_counts);
  }
  torch::autograd::increment_version(cum_samples);
}

void count_labels_autograd(Tensor& counts, const Tensor& labels) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("lossmix_ext::count_labels_", "")
                       .typed<void(Tensor&, const Tensor&)>();
  {
    at::AutoDispatchBelowADInplaceOrView guard;
    op.call(counts, labels);
  }
  torch::autograd::increment_version(counts);
}

}  // namespace

void set_validation_mode(int mode) {
  TORCH_CHECK(mode >= 0 && mode <= 2, "validation mode must be 0 (auto), 1 (sync) or 2 (off)");
  g_mode.store(mode);
}

Validate validation_mode() { return static_cast<Validate>(g_mode.load(std::memory_order_relaxed)); }

void set_python_kernel(void* callable) {
  PyObject* obj = static_cast<PyObject*>(callable);
  Py_XINCREF(obj);
  g_python_kernel = obj;
}

ChecksDone::ChecksDone(bool done) : prev_(t_checks_done) { t_checks_done = prev_ || done; }
ChecksDone::~ChecksDone() { t_checks_done = prev_; }
bool ChecksDone::active() { return t_checks_done; }

void check_labels(const Tensor& labels, const char* name, int64_t hi, optional<int64_t> ignore_index) {
  if (validation_mode() == Validate::Off || labels.numel() == 0) return;
  check_labels_msg(labels, hi, ignore_index, labels_msg(name, hi, ignore_index));
}

void check_background_labels(const Tensor& labels, const char* name, int64_t C) {
  // same message as lossmix_ext._validation._labels_range_msg(..., background=True)
  std::ostringstream s;
  s << name << " must lie in [0, " << C << "] (num_classes=" << C << " is the background label)";
  check_labels_msg(labels, C + 1, c10::nullopt, s.str());
}

void check_labels_msg(const Tensor& labels, int64_t hi, optional<int64_t> ignore_index, const std::string& msg) {
  if (validation_mode() == Validate::Off || labels.numel() == 0) return;
  TORCH_CHECK_TYPE(at::isIntegralType(labels.scalar_type(), false), "labels must be an integer tensor, got ",
                   labels.scalar_type());
  if (labels.is_cpu()) {
    const Tensor lab = labels.contiguous();
    bool bad = false;
    AT_DISPATCH_INTEGRAL_TYPES(lab.scalar_type(), "check_labels",
                               [&] { bad = any_label_outside<scalar_t>(lab, hi, ignore_index); });
    TORCH_CHECK_VALUE(!bad, msg);
    return;
  }
  Tensor bad = at::logical_or(labels < 0, labels >= hi);
  if (ignore_index.has_value()) bad = at::logical_and(bad, labels != *ignore_index);
  device_check(bad.any(), msg);
}

bool tracing(const Tensor& t) {
  static const c10::DispatchKeySet keys({c10::DispatchKey::Python, c10::DispatchKey::PythonTLSSnapshot,
                                         c10::DispatchKey::Functionalize, c10::DispatchKey::FuncTorchBatched,
                                         c10::DispatchKey::FuncTorchGradWrapper});
  return t.key_set().has_any(keys) || t.is_meta() || !t.has_storage();  // functionality keys only
}

void check_unit_interval(const Tensor& x, const char* name) {
  if (validation_mode() == Validate::Off) return;
  const std::string msg = std::string(name) + " must lie in [0, 1] (found a value outside, or nan)";
  if (tracing(x)) {  // (symbolic sizes possible: no numel())
    at::_assert_async(at::logical_and(x >= 0, x <= 1).all(), msg);
    return;
  }
  if (x.numel() == 0) return;
  if (x.is_cpu()) {
    const Tensor c = x.contiguous();
    bool bad = false;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, c.scalar_type(), "check_unit_interval", [&] {
      const scalar_t* p = c.const_data_ptr<scalar_t>();
      for (int64_t i = 0, n = c.numel(); i < n; ++i) {
        const double v = static_cast<double>(p[i]);
        bad |= !(v >= 0.0 && v <= 1.0);
      }
    });
    TORCH_CHECK_VALUE(!bad, msg);
    return;
  }
  device_check(at::logical_not(at::logical_and(x >= 0, x <= 1).all()), msg);
}

void check_finite(const Tensor& x, const char* name) {
  if (validation_mode() == Validate::Off || x.numel() == 0) return;
  const std::string msg = std::string(name) + " must be finite (found inf or nan)";
  if (x.is_cpu()) {
    const Tensor c = x.contiguous();
    bool bad = false;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, c.scalar_type(), "check_finite", [&] {
      const scalar_t* p = c.const_data_ptr<scalar_t>();
      for (int64_t i = 0, n = c.numel(); i < n; ++i) bad |= !std::isfinite(static_cast<double>(p[i]));
    });
    TORCH_CHECK_VALUE(!bad, msg);
    return;
  }
  device_check(at::logical_not(at::isfinite(x).all()), msg);
}

Tensor seesaw_second_order(const Tensor& grad, const optional<Tensor>& grad_loss, const optional<Tensor>& grad_obj,
                           const optional<Tensor>& grad_grad, const Tensor& labels, const Tensor& weights,
                           const optional<Tensor>& obj_weights, const optional<Tensor>& counts, double p, double q,
                           double eps, optional<int64_t> ignore_index, const optional<Tensor>& logits, bool has_obj,
                           const std::string& backend) {
  return call_python<Tensor>("seesaw_second_order", backend, grad, grad_loss, grad_obj, grad_grad, labels, weights,
                             obj_weights, counts, p, q, eps, ignore_index, logits, has_obj);
}

Tensor seesaw_bwd_inplace(const Tensor& grad, const Tensor& grad_loss, const optional<Tensor>& grad_obj,
                          const std::string& backend) {
  if (grad.is_cpu() && backend == "cpu") return lmx_cpu::seesaw_bwd(grad, grad_loss, grad_obj, true);
#ifdef LOSSMIX_WITH_CUDA
  if (grad.is_cuda() && backend == "cuda") return lmx_cuda::seesaw_bwd(grad, grad_loss, grad_obj, true);
#endif
  return call_python<Tensor>("seesaw_bwd_inplace", backend, grad, grad_loss, grad_obj);
}

}  // namespace lmx

// ------------------------------------------------------------------ schemas
TORCH_LIBRARY(lossmix_ext, m) {
  m.def("seesaw_fwd(Tensor logits, Tensor labels, Tensor weights, Tensor? obj_weights, Tensor? counts, float p, "
        "float q, float eps, int? ignore_index, str backend) -> (Tensor, Tensor, Tensor)");
  m.def("seesaw_bwd(Tensor grad, Tensor grad_loss, Tensor? grad_obj, str backend) -> Tensor");
  m.def("count_labels_(Tensor(a!) counts, Tensor labels) -> ()");
  m.def("seesaw_count_(Tensor(a!) cum_samples, Tensor labels, Tensor? labels_b, bool check_finite) -> ()");
  m.def("lossmix_reduce(Tensor loss_a, Tensor loss_b, Tensor? lam, float lam_value, Tensor? weights, str reduction, "
        "Tensor? avg_factor_tensor, float? avg_factor) -> Tensor");
  m.def("seesaw_loss(Tensor logits, Tensor labels, Tensor? labels_b, Tensor? lam, float lam_value, "
        "Tensor? label_weights, Tensor? counts, float p, float q, float eps, int? ignore_index, bool objectness, "
        "str reduction, Tensor? avg_factor_tensor, float? avg_factor, float loss_weight, str backend) "
        "-> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(lossmix_ext, CPU, m) {
  m.impl("seesaw_fwd", &lmx::seesaw_fwd_cpu);
  m.impl("seesaw_bwd", &lmx::seesaw_bwd_cpu);
  m.impl("count_labels_", &lmx::count_labels_kernel);
  m.impl("seesaw_count_", &lmx::seesaw_count_kernel);
}

// Always registered: without the CUDA kernels the Triton / torch backends still serve CUDA tensors.
TORCH_LIBRARY_IMPL(lossmix_ext, CUDA, m) {
  m.impl("seesaw_fwd", &lmx::seesaw_fwd_cuda);
  m.impl("seesaw_bwd", &lmx::seesaw_bwd_cuda);
  m.impl("count_labels_", &lmx::count_labels_kernel);
  m.impl("seesaw_count_", &lmx::seesaw_count_kernel);
}

TORCH_LIBRARY_IMPL(lossmix_ext, Autograd, m) {
  m.impl("count_labels_", &lmx::count_labels_autograd);
  m.impl("seesaw_count_", &lmx::seesaw_count_autograd);
}
