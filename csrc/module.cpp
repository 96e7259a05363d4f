// The Python module lossmix_ext._C. Importing it also registers the lossmix_ext ops in the
// dispatcher (register.cpp, autograd/). The plain functions here are the kernels as the
// backends of lossmix_ext/backends/{cpu,cuda}.py see them (used by the Python kernels and the
// in-place variants), and the hooks _ops.py / _validation.py set. The CUDA functions exist only
// when built with LOSSMIX_WITH_CUDA.
#include <torch/extension.h>
#include <torch/csrc/autograd/graph_task.h>

#include "cpu/ops_cpu.h"
#include "ops.h"
#ifdef LOSSMIX_WITH_CUDA
#include "cuda/ops_cuda.h"
#endif

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "lossmix_ext native kernels (CPU, and CUDA when built with it)";
  m.def("seesaw_fwd_cpu", &lmx_cpu::seesaw_fwd, "seesaw_fwd on CPU tensors", py::arg("logits"), py::arg("labels"),
        py::arg("weights"), py::arg("obj_weights"), py::arg("counts"), py::arg("p"), py::arg("q"), py::arg("eps"),
        py::arg("ignore_index"));
  m.def("seesaw_fwd_inplace_cpu", &lmx_cpu::seesaw_fwd_inplace,
        "seesaw_fwd on CPU tensors, gradient written over the logits; returns (loss, obj_loss)", py::arg("logits"),
        py::arg("labels"), py::arg("weights"), py::arg("obj_weights"), py::arg("counts"), py::arg("p"), py::arg("q"),
        py::arg("eps"), py::arg("ignore_index"));
  m.def("seesaw_bwd_cpu", &lmx_cpu::seesaw_bwd, "seesaw_bwd on CPU tensors (inplace: over grad)", py::arg("grad"),
        py::arg("grad_loss"), py::arg("grad_obj"), py::arg("inplace") = false);
  m.def("mix_images_cpu", &lmx_cpu::mix_images, "mix_images on CPU tensors", py::arg("images"),
        py::arg("lam"), py::arg("index"), py::arg("mean"), py::arg("std"), py::arg("scale"),
        py::arg("boxes") = py::none(), py::arg("out_dtype") = py::none());
  m.def("mix_images_backward_cpu", &lmx_cpu::mix_images_backward, "mix_images_backward (no boxes) on CPU tensors",
        py::arg("grad"), py::arg("lam"), py::arg("index"), py::arg("std"), py::arg("scale"));
  m.def("mix_images_inplace_cpu", &lmx_cpu::mix_images_inplace, "mix_images_ on CPU tensors", py::arg("images"),
        py::arg("lam"), py::arg("index"), py::arg("boxes") = py::none());
  // For the Seesaw backward, which may reuse the gradient saved in the forward as its result:
  // true when the running backward keeps the graph (retain_graph / create_graph), or when no
  // backward is running.
  m.def("graph_task_keeps_graph", []() { return torch::autograd::get_current_graph_task_keep_graph(); },
        "whether the backward pass running on this thread keeps the graph (True outside a backward)");
  m.def("storage_is_exclusive", [](const at::Tensor& t) { return t.has_storage() && t.storage().use_count() == 1; },
        "whether no other tensor (view, alias) shares t's storage");
#ifdef LOSSMIX_WITH_CUDA
  m.def("device_assert", &lmx_cuda::assert_flag,
        "value check on a CUDA device: when the one-element tensor `bad` is true, a kernel prints `message` and "
        "fails with a device-side assert (no host sync)", py::arg("bad"), py::arg("message"));
#endif
  m.def("set_validation_mode", &lmx::set_validation_mode,
        "value-check mode of the native kernels: 0 auto, 1 sync, 2 off (set by lossmix_ext._validation)");
  m.def("set_python_kernel", [](py::object fn) { lmx::set_python_kernel(fn.ptr()); },
        "the Python function the registered ops call for non-native backends: fn(op, backend, *args)");
  // The eager path of lossmix_ext.functional: lossmix_ext::seesaw_loss through the dispatcher
  // (autograd included), with pybind11's argument conversion instead of the schema-driven
  // parsing of torch.ops (a few microseconds per call at training shapes).
  m.def("seesaw_loss_call",
        [](const at::Tensor& logits, const at::Tensor& labels, const c10::optional<at::Tensor>& labels_b,
           const c10::optional<at::Tensor>& lam, double lam_value, const c10::optional<at::Tensor>& label_weights,
           const c10::optional<at::Tensor>& counts, double p, double q, double eps,
           c10::optional<int64_t> ignore_index, bool objectness, const std::string& reduction,
           const c10::optional<at::Tensor>& avg_factor_t, c10::optional<double> avg_factor, double loss_weight,
           const std::string& backend) {
          static auto op = c10::Dispatcher::singleton()
                               .findSchemaOrThrow("lossmix_ext::seesaw_loss", "")
                               .typed<std::tuple<at::Tensor, at::Tensor, at::Tensor>(
                                   const at::Tensor&, const at::Tensor&, const c10::optional<at::Tensor>&,
                                   const c10::optional<at::Tensor>&, double, const c10::optional<at::Tensor>&,
                                   const c10::optional<at::Tensor>&, double, double, double,
                                   c10::optional<int64_t>, bool, c10::string_view,
                                   const c10::optional<at::Tensor>&, c10::optional<double>, double,
                                   c10::string_view)>();
          pybind11::gil_scoped_release no_gil;
          return op.call(logits, labels, labels_b, lam, lam_value, label_weights, counts, p, q, eps, ignore_index,
                         objectness, reduction, avg_factor_t, avg_factor, loss_weight, backend);
        },
        "lossmix_ext::seesaw_loss (eager calls from lossmix_ext.functional)");
  m.def("seesaw_count_call",
        [](at::Tensor& cum_samples, const at::Tensor& labels, const c10::optional<at::Tensor>& labels_b,
           bool check_finite) {
          static auto op = c10::Dispatcher::singleton()
                               .findSchemaOrThrow("lossmix_ext::seesaw_count_", "")
                               .typed<void(at::Tensor&, const at::Tensor&, const c10::optional<at::Tensor>&, bool)>();
          pybind11::gil_scoped_release no_gil;
          op.call(cum_samples, labels, labels_b, check_finite);
        },
        "lossmix_ext::seesaw_count_ (eager calls from SeesawLoss)");
  m.def("set_generic_weights", &lmx::set_generic_weights,
        "tests: build seesaw_loss's weights with the device-generic ATen path on CPU too");
  m.def("checks_done", &lmx::ChecksDone::active,
        "whether the running seesaw_fwd was called by a composite op that has checked its values already");
  m.def("cpu_isa", &lmx_cpu::isa, "instruction set of the CPU kernels in use ('avx2' or 'baseline')");
  m.def("set_cpu_isa", &lmx_cpu::set_isa_name,
        "use the 'avx2' or 'baseline' CPU kernels ('auto': the best supported); False if unavailable");
  m.def("cpu_isas", &lmx_cpu::isas, "comma-separated instruction sets compiled in and supported by this CPU");
#ifdef LOSSMIX_WITH_CUDA
  m.attr("with_cuda") = true;
  m.def("seesaw_fwd_cuda", &lmx_cuda::seesaw_fwd, "seesaw_fwd on CUDA tensors", py::arg("logits"), py::arg("labels"),
        py::arg("weights"), py::arg("obj_weights"), py::arg("counts"), py::arg("p"), py::arg("q"), py::arg("eps"),
        py::arg("ignore_index"));
  m.def("seesaw_fwd_inplace_cuda", &lmx_cuda::seesaw_fwd_inplace,
        "seesaw_fwd on CUDA tensors, gradient written over the logits; returns (loss, obj_loss)", py::arg("logits"),
        py::arg("labels"), py::arg("weights"), py::arg("obj_weights"), py::arg("counts"), py::arg("p"), py::arg("q"),
        py::arg("eps"), py::arg("ignore_index"));
  m.def("seesaw_bwd_cuda", &lmx_cuda::seesaw_bwd, "seesaw_bwd on CUDA tensors (inplace: over grad)", py::arg("grad"),
        py::arg("grad_loss"), py::arg("grad_obj"), py::arg("inplace") = false);
  m.def("mix_images_cuda", &lmx_cuda::mix_images, "mix_images on CUDA tensors", py::arg("images"), py::arg("lam"),
        py::arg("index"), py::arg("boxes"), py::arg("mean"), py::arg("std"), py::arg("scale"), py::arg("out_dtype"));
  m.def("mix_images_backward_cuda", &lmx_cuda::mix_images_backward, "mix_images_backward on CUDA tensors",
        py::arg("grad"), py::arg("lam"), py::arg("index"), py::arg("boxes"), py::arg("std"), py::arg("scale"),
        py::arg("images_dtype"));
  m.def("mix_images_inplace_cuda", &lmx_cuda::mix_images_inplace, "mix_images_ on CUDA tensors", py::arg("images"),
        py::arg("lam"), py::arg("index"), py::arg("boxes") = py::none());
#else
  m.attr("with_cuda") = false;
#endif
}
