// The dispatcher side of lossmix_ext: the op schemas (TORCH_LIBRARY in register.cpp), their
// CPU / CUDA kernels (native when the call names the native backend, else the Python kernel
// of lossmix_ext/_ops.py), the value checks of the native path and the autograd kernel
// (autograd/seesaw_autograd.cpp). module.cpp exposes the setters below to Python.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Optional.h>

#include <string>
#include <tuple>

namespace lmx {

// torch.finfo(torch.float32).eps: what mmdetection adds to avg_factor before dividing by it.
constexpr double kF32Eps = 1.1920928955078125e-07;

// ------------------------------------------------------------------ validation mode
// Mirrors lossmix_ext._validation (set from Python on import and by set_validation).
enum class Validate : int { Auto = 0, Sync = 1, Off = 2 };
void set_validation_mode(int mode);
Validate validation_mode();

// Value checks with the semantics of lossmix_ext._validation: CPU tensors (and any device in
// "sync") raise ValueError(msg); other devices in "auto" get a device-side assert; "off" skips.
// Every label of `labels` (any shape, integral) in [0, hi) or == ignore_index.
void check_labels(const at::Tensor& labels, const char* name, int64_t hi, c10::optional<int64_t> ignore_index);
void check_finite(const at::Tensor& x, const char* name);
// Whether `t` is a tracing tensor (fake / functional / functorch-wrapped / meta), whose data
// cannot be read (and whose sizes may be symbolic).
bool tracing(const at::Tensor& t);
// Every element of `x` in [0, 1] (NaN fails): "<name> must lie in [0, 1] (found a value outside, or
// nan)". While tracing (fake / functional tensors) an in-graph assert.
void check_unit_interval(const at::Tensor& x, const char* name);
// Every label in [0, C], C being the background label (SeesawLoss's labels).
void check_background_labels(const at::Tensor& labels, const char* name, int64_t C);
// check_labels with the message given.
void check_labels_msg(const at::Tensor& labels, int64_t hi, c10::optional<int64_t> ignore_index,
                      const std::string& msg);

// Set while a composite op that has already checked its values calls seesaw_fwd (same thread):
// the kernel then skips its own, identical checks (one pass over the labels per call).
struct ChecksDone {
  explicit ChecksDone(bool done);
  ~ChecksDone();
  ChecksDone(const ChecksDone&) = delete;
  ChecksDone& operator=(const ChecksDone&) = delete;
  static bool active();

 private:
  bool prev_;
};

// ------------------------------------------------------------------ Python kernels
// The kernels of the non-native backends (torch, triton) and the argument combinations the
// native kernels leave to them are Python functions: `_ops._python_kernel(op, backend, *args)`.
// Set once from Python; called with the GIL.
void set_python_kernel(void* callable /* PyObject*, a new reference is kept */);

// seesaw_loss builds its per-row weights with one loop for CPU tensors and with ATen ops on other
// devices; tests set this to run the ATen path on CPU too.
void set_generic_weights(bool on);

// ------------------------------------------------------------------ seesaw_loss's weights
// The stacked label sets (S, N) int64 and the per-set, per-row class and objectness weights (S, N)
// in opmath that seesaw_loss passes to seesaw_fwd (λ, label weights, loss weight and the
// reduction's divisors folded in); seesaw_loss.cpp. Its double backward builds them again.
struct LossWeights {
  at::Tensor labels;
  at::Tensor weights;
  c10::optional<at::Tensor> obj_weights;
};
LossWeights build_loss_weights(const at::Tensor& logits, const at::Tensor& labels,
                               const c10::optional<at::Tensor>& labels_b, const c10::optional<at::Tensor>& lam,
                               double lam_value, const c10::optional<at::Tensor>& label_weights,
                               c10::optional<int64_t> ignore_index, bool objectness, c10::string_view reduction,
                               const c10::optional<at::Tensor>& avg_factor_t, c10::optional<double> avg_factor,
                               double loss_weight, bool values_readable);

// ------------------------------------------------------------------ the double backward
// d(loss)/d(logits) of a seesaw_fwd / seesaw_loss node whose backward is differentiated: `grad` is
// the saved gradient with its history (the node's output 2), `grad_loss` / `grad_obj` the
// upstream gradients of the losses and `grad_grad` the gradient arriving at `grad` (for the
// Hessian-vector product). The Python function lossmix_ext._ops.seesaw_second_order (one
// implementation for every backend and for the builds without this extension).
at::Tensor seesaw_second_order(const at::Tensor& grad, const c10::optional<at::Tensor>& grad_loss,
                               const c10::optional<at::Tensor>& grad_obj, const c10::optional<at::Tensor>& grad_grad,
                               const at::Tensor& labels, const at::Tensor& weights,
                               const c10::optional<at::Tensor>& obj_weights, const c10::optional<at::Tensor>& counts,
                               double p, double q, double eps, c10::optional<int64_t> ignore_index,
                               const c10::optional<at::Tensor>& logits, bool has_obj, const std::string& backend);

// ------------------------------------------------------------------ kernels used by autograd
// seesaw_bwd with the result written over `grad` (rows scaled by exactly 1 untouched).
at::Tensor seesaw_bwd_inplace(const at::Tensor& grad, const at::Tensor& grad_loss,
                              const c10::optional<at::Tensor>& grad_obj, const std::string& backend);

}  // namespace lmx
