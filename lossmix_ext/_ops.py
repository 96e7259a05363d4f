r"""The registered ops: contracts, fake (meta) kernels, autograd, and dispatch to backends.

Every op lives in the ``lossmix_ext`` namespace; the loss ops' last argument names the backend
(already resolved by the caller, see :mod:`._backend`). With the extension, ``seesaw_fwd``,
``seesaw_bwd``, ``count_labels_``, ``seesaw_count_``, ``seesaw_loss`` and ``lossmix_reduce``
are registered from C++ (csrc/register.cpp: schemas and CPU / CUDA kernels, which run the
native kernel or come back to :func:`_python_kernel` for the torch / triton backends;
csrc/autograd/: autograd); their fake kernels are registered here. Without it, the same ops
are ``torch.library.custom_op``\ s built below from the same contracts. The image-mixing ops
are Python custom ops in both cases. Value checks (:mod:`._validation`, or their C++ twins)
run in the ops' real kernels, so they also run under ``torch.compile``. Kernels for every
backend implement exactly the contracts written here; :mod:`lossmix_ext.backends.torch` is the
readable default.

``seesaw_fwd`` — fused Seesaw / cross-entropy forward+backward, any number S ∈ {1, 2} of
label sets, optional objectness columns::

    logits      (N, CT) float16/bfloat16/float32/float64, any strides
    labels      (S, N) int64 in [0, C) (or [0, C] with objectness); label == ignore_index
                (None: nothing is ignored), or any label outside [0, C) (the background C,
                or anything when value checks are off) ⇒ no class loss for that set and row
    weights     (S, N) opmath dtype: per-set, per-row weight of the class loss
    obj_weights (S, N) opmath dtype or None. If given, the last 2 columns are objectness
                [fg, bg] logits, C = CT − 2, and the objectness target of set s is
                bg (1) where labels[s] == C else fg (0)
    counts      (C,) float or None: per-class sample counts (unused when p <= 0)
    returns     loss (N,) opmath = Σ_s weights[s]·seesaw_ce(z, labels[s])
                obj_loss (N,) opmath = Σ_s obj_weights[s]·CE(objectness, target_s)  [(0,) if None]
                grad (N, CT) logits dtype, contiguous: d(loss + obj_loss)/dz row by row, i.e.
                Σ_s weights[s]·(softmax(z'_s) − onehot_s) in the class columns and
                Σ_s obj_weights[s]·(softmax(o) − onehot(target_s)) in the objectness columns.

``opmath`` is float64 for float64 logits, float32 otherwise. ``p <= 0`` and ``q <= 0``
turn off mitigation and compensation, which makes the op a plain (mixed) cross-entropy.
The gradient is computed in the forward and saved; the backward only scales it by the
upstream per-row gradients (``seesaw_bwd``), in place when nothing else can see it any more
(see ``_seesaw_backward``). λ, label weights and reduction divisors enter
through ``weights``, so the op's outputs are already weighted and a reduction is a sum.
"""
from __future__ import annotations

import os
from typing import Optional, Tuple

import torch
from torch import Tensor

from . import _backend, _composite, _validation
from ._reference import F32_EPS

NS = "lossmix_ext"


def opmath_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


# The extension, when built, registers seesaw_fwd, seesaw_bwd and count_labels_ in the
# dispatcher from C++ (csrc/register.cpp: schemas and CPU / CUDA kernels; csrc/autograd/: the
# autograd kernel), so that a call is one dispatcher entry with no Python on the way for the
# native backends; their fake kernels are registered below, and calls for the other backends
# come back to `_python_kernel`. Without the extension the same ops (same names, schemas and
# contracts) are Python custom ops built from the functions below. The extension is loaded
# here, once, for the whole package (the cpu / cuda backends take it from here too).
NATIVE_IMPORT_ERROR: Optional[str] = None
if os.environ.get("LOSSMIX_EXT_NO_NATIVE", "0") == "1":  # also at run time: the build without it
    _native = None
    NATIVE_IMPORT_ERROR = "LOSSMIX_EXT_NO_NATIVE=1: lossmix_ext._C is not loaded"
else:
    try:
        from . import _C as _native
    except ImportError as exc:  # not built (LOSSMIX_EXT_NO_NATIVE=1 at install, no compiler, ...)
        _native = None
        NATIVE_IMPORT_ERROR = (f"lossmix_ext._C was not built: {exc} (reinstall with a C++ compiler: "
                               "pip install --no-build-isolation -e .)")

#: whether the ops below are the C++-registered ones (else Python custom ops)
NATIVE_REGISTRATION = _native is not None


# --------------------------------------------------------------------------- seesaw_fwd
def _seesaw_fwd_impl(logits: Tensor, labels: Tensor, weights: Tensor, obj_weights: Optional[Tensor],
                     counts: Optional[Tensor], p: float, q: float, eps: float, ignore_index: Optional[int],
                     backend: str) -> Tuple[Tensor, Tensor, Tensor]:
    _check_seesaw_values(logits, labels, obj_weights, counts, p, ignore_index)
    return _backend.kernel("seesaw_fwd", backend)(logits, labels, weights, obj_weights, counts, p, q, eps,
                                                  ignore_index)


def _check_seesaw_values(logits, labels, obj_weights, counts, p, ignore_index) -> None:
    num_classes = logits.shape[1] - (2 if obj_weights is not None else 0)
    _validation.labels_in_range(labels, "labels", num_classes if obj_weights is None else num_classes + 1,
                                ignore_index)
    if counts is not None and p > 0:
        _validation.finite(counts, "cum_samples")


def _seesaw_fwd_fake(logits, labels, weights, obj_weights, counts, p, q, eps, ignore_index, backend):
    n = logits.shape[0]
    om = opmath_dtype(logits.dtype)
    loss = logits.new_empty((n,), dtype=om)
    obj = logits.new_empty((n if obj_weights is not None else 0,), dtype=om)
    return loss, obj, torch.empty_like(logits, memory_format=torch.contiguous_format)


def _seesaw_bwd_impl(grad: Tensor, grad_loss: Tensor, grad_obj: Optional[Tensor], backend: str) -> Tensor:
    """``grad`` scaled row by row: class columns by ``grad_loss``, the last 2 by ``grad_obj`` if given."""
    return _backend.kernel("seesaw_bwd", backend)(grad, grad_loss, grad_obj)


def _seesaw_bwd_fake(grad, grad_loss, grad_obj, backend):
    return torch.empty_like(grad)


# --------------------------------------------------------------------------- count_labels_
def _count_labels_impl(counts: Tensor, labels: Tensor) -> None:
    """``counts[l] += 1`` for every label l (any shape), on device, without a host sync.

    Labels are checked against ``len(counts)`` *before* the buffer is touched.
    """
    flat = labels.reshape(-1)
    _validation.labels_in_range(flat, "labels", counts.shape[0])
    _add_histogram(counts, flat)


def _count_labels_fake(counts, labels):
    return None


def _seesaw_count_impl(cum_samples: Tensor, labels: Tensor, labels_b: Optional[Tensor], check_finite: bool) -> None:
    """SeesawLoss's count update: every check first — ``labels`` (and ``labels_b``) in [0, C] with
    C = len(cum_samples) − 1 the background label, ``cum_samples`` finite if ``check_finite`` —
    then the histogram of both label sets is added to ``cum_samples``."""
    c = cum_samples.shape[0] - 1
    sets = [(labels, "labels")] + ([(labels_b, "labels_b")] if labels_b is not None else [])
    for lab, name in sets:
        _validation.labels_in_range(lab, name, c, background=True)
    if check_finite:
        _validation.finite(cum_samples, "cum_samples")
    for lab, _ in sets:
        _add_histogram(cum_samples, lab.reshape(-1))


def _add_histogram(counts: Tensor, labels: Tensor) -> None:
    """``counts[l] += 1`` for every label of the (checked) 1-D ``labels``; with the value checks
    off, a label outside [0, len(counts)) is skipped rather than written out of bounds."""
    lab = labels.long()
    if _validation.get_validation() != "off":
        counts.index_add_(0, lab, torch.ones_like(lab, dtype=counts.dtype))
        return
    ok = (lab >= 0) & (lab < counts.shape[0])
    counts.index_add_(0, torch.where(ok, lab, torch.zeros_like(lab)), ok.to(counts.dtype))


def _seesaw_count_fake(cum_samples, labels, labels_b, check_finite):
    return None


def _python_kernel(op: str, backend: str, *args):
    """What the C++-registered ops call for a backend (or arguments) without a native kernel, and
    for the double backward of their autograd nodes (every backend)."""
    if op == "seesaw_second_order":
        return _composite.seesaw_second_order(*args)
    if op == "seesaw_fwd":
        if _native.checks_done():  # called by seesaw_loss, which checked the values already
            return _backend.kernel("seesaw_fwd", backend)(*args)
        return _seesaw_fwd_impl(*args, backend)
    return _backend.kernel(op, backend)(*args)


# The backward's result is the saved gradient scaled row by row. When nothing else can see the
# saved buffer any more, the backward scales it in place (rows scaled by exactly 1 — the usual
# `loss.backward()` of a sum — are not even touched) and returns it, instead of writing a new
# N×C tensor. That is safe only if (1) the graph is not kept (no retain_graph/create_graph: the
# buffer would be needed again), (2) no other tensor shares its storage (the op's `grad`
# output, or a view of it, still held by the caller), (3) in eager mode on plain tensors. (1)
# and (2) are read through the extension; without it the backward always writes a new tensor.
# In eager mode the forward therefore keeps a detached alias of the gradient on `ctx` (checked
# against in-place modification with its version counter, as saved tensors are) rather than a
# saved tensor, whose unpacking would add references of its own. Under saved-tensor hooks
# (`torch.autograd.graph.save_on_cpu`, checkpointing, memory probes) it is an ordinary saved
# tensor, so the hooks see it, and the backward writes a new tensor. With the extension this
# logic runs in C++ (csrc/autograd/seesaw_autograd.cpp); here it serves `SeesawInplace` and
# builds without the extension.
def _keeps_graph() -> bool:
    return _native is None or _native.graph_task_keeps_graph()


def _saved_tensors_hooks_active() -> bool:
    top = getattr(torch._C._autograd, "_top_saved_tensors_default_hooks", None)
    return top is None or top(False) is not None  # unknown ⇒ assume active


def _may_reuse(grad: Tensor) -> bool:
    return (_native is not None and type(grad) is torch.Tensor and grad.is_contiguous()
            and not torch.compiler.is_compiling() and not torch._C._functorch.is_functorch_wrapped_tensor(grad)
            and not _saved_tensors_hooks_active())


def _seesaw_setup(ctx, inputs, output, inplace: bool = False):
    ctx.set_materialize_grads(False)  # the unused grad output would otherwise get an N×C zero tensor
    logits, labels, weights, obj_weights, counts, p, q, eps, ignore_index, backend = inputs
    ctx.has_obj = obj_weights is not None
    ctx.backend = backend
    ctx.inplace = inplace
    # for the double backward (small tensors; the logits only where the gradient cannot give back
    # the adjusted softmaxes: two label sets with Seesaw factors): see _composite
    ctx.second_order = (labels, weights, obj_weights, counts, p, q, eps, ignore_index)
    seesaw = (p > 0 and counts is not None) or q > 0
    ctx.keeps_logits = labels.shape[0] == 2 and seesaw and logits.requires_grad and not inplace
    keep = (logits,) if ctx.keeps_logits else ()  # saved tensors (saved-tensor hooks see them)
    grad = output[2]
    ctx.alias = not inplace and _may_reuse(grad)
    if ctx.alias:
        ctx.grad = grad.detach()
        ctx.grad_version = grad._version
        ctx.save_for_backward(*keep)
    else:
        ctx.save_for_backward(grad, *keep)


def _saved_grad(ctx) -> Tensor:
    if not ctx.alias:
        return ctx.saved_tensors[0]
    grad = ctx.grad
    if grad is None:
        raise RuntimeError("Trying to backward through the graph a second time (the Seesaw gradient saved in the "
                           "forward has been freed or reused). Specify retain_graph=True if you need to backward "
                           "through the graph a second time.")
    if grad._version != ctx.grad_version:
        raise RuntimeError("one of the variables needed for gradient computation has been modified by an inplace "
                           f"operation: the gradient output of lossmix_ext::seesaw_fwd is at version {grad._version}; "
                           f"expected version {ctx.grad_version} instead.")
    return grad


def _seesaw_backward(ctx, grad_loss, grad_obj, grad_grad):
    if torch.is_grad_enabled() or grad_grad is not None:  # differentiated (create_graph=True): see _composite
        if ctx.inplace:
            raise RuntimeError("lossmix_ext: inplace_grad=True overwrites the scores with their gradient, so its "
                               "backward cannot be differentiated (double backward, create_graph=True); use "
                               "inplace_grad=False for higher-order gradients")
        labels, weights, obj_weights, counts, p, q, eps, ignore_index = ctx.second_order
        logits = ctx.saved_tensors[-1] if ctx.keeps_logits else None
        return (_composite.seesaw_second_order(_saved_grad(ctx), grad_loss, grad_obj if ctx.has_obj else None,
                                               grad_grad, labels, weights, obj_weights, counts, p, q, eps,
                                               ignore_index, logits, ctx.has_obj),) + (None,) * 9
    grad = _saved_grad(ctx)
    om = opmath_dtype(grad.dtype)
    n = grad.shape[0]
    if grad_loss is None:
        grad_loss = grad.new_zeros((n,), dtype=om)
    if ctx.has_obj and grad_obj is None:
        grad_obj = grad.new_zeros((n,), dtype=om)
    grad_obj = grad_obj if ctx.has_obj else None
    if ctx.alias and not _keeps_graph():
        ctx.grad = None  # released, as saved tensors are
        if not torch.is_grad_enabled() and _native.storage_is_exclusive(grad):
            g = _backend.kernel("seesaw_bwd_inplace", ctx.backend)(grad, grad_loss, grad_obj)
            return g, None, None, None, None, None, None, None, None, None
    g = seesaw_bwd(grad, grad_loss, grad_obj, ctx.backend)
    return g, None, None, None, None, None, None, None, None, None




# --------------------------------------------------------------------------- seesaw_loss
# seesaw_loss — the whole loss of seesaw_loss / seesaw_loss_mixed / mixed_cross_entropy and of
# SeesawLoss (after its count update) in one call: checks the label values (naming `labels`,
# or `labels_a` / `labels_b` for two sets; with objectness `labels` / `labels_b` against
# [0, C], C the background) and finite `counts` (p > 0), builds the per-row weights, runs one
# seesaw_fwd and reduces::
#
#     logits (N, CT), labels (N,) integer, labels_b (N,) or None
#     lam (N,) opmath or None, lam_value: λ of set a (set b gets 1 − λ) when lam is None; unused
#         without labels_b
#     label_weights (N,) or None; loss_weight multiplies every row (SeesawLoss)
#     objectness: the last 2 columns are [fg, bg] logits, C = CT − 2, and label C is background
#         (no class loss); else C = CT and rows whose label is ignore_index have no class loss
#     reduction "none" | "sum" | "mean". Per label set s, "mean" divides its class loss by
#         avg_factor + float32 eps when given, else by the number of its rows with a class loss
#         (clamped to >= 1 with objectness); the objectness loss by avg_factor + eps, else N.
#     avg_factor_tensor (0-d or (1,)) or avg_factor (float), at most one
#     returns (class loss, objectness loss, grad): the losses are scalars, or per-row (N,) with
#         "none" (the objectness loss is (0,) without objectness); grad (N, CT) is
#         d(Σ class loss + Σ objectness loss)/d logits, as seesaw_fwd's.
# With the extension this is a C++ composite (csrc/seesaw_loss.cpp); otherwise the Python below,
# which also serves `inplace_grad` (through `fwd=SeesawInplace.apply`).


def seesaw_loss_py(logits, labels, labels_b, lam, lam_value, label_weights, counts, p, q, eps, ignore_index,
                   objectness, reduction, avg_factor_tensor, avg_factor, loss_weight, backend, fwd=None):
    n, ct = logits.shape
    c = ct - 2 if objectness else ct
    pair = labels_b is not None
    sets = [(labels, "labels" if objectness or not pair else "labels_a")] + ([(labels_b, "labels_b")] if pair else [])
    for lab, name in sets:
        if objectness:
            _validation.labels_in_range(lab, name, c, background=True)
        else:
            _validation.labels_in_range(lab, name, c, ignore_index)
    if counts is not None and p > 0:
        _validation.finite(counts, "cum_samples")
    om = opmath_dtype(logits.dtype)
    base = torch.ones((n,), dtype=om, device=logits.device) if label_weights is None else label_weights.to(om)
    base = base * loss_weight
    mean = reduction == "mean"
    avg = None
    if mean and avg_factor_tensor is not None and avg_factor_tensor.device.type == "cpu" and logits.device.type != "cpu":
        avg = float(avg_factor_tensor) + F32_EPS  # a host value: no copy to the device
    elif mean and avg_factor_tensor is not None:
        avg = avg_factor_tensor.to(logits.device).to(om).reshape(()) + F32_EPS
    elif mean and avg_factor is not None:
        avg = avg_factor + F32_EPS
    if pair:
        lam_a = lam.to(om) if lam is not None else lam_value
        lams = (lam_a, 1 - lam_a)
    else:
        lams = (1.0,)
    cls_w, obj_w = [], []
    for (lab, _), lam_s in zip(sets, lams):
        w = base * lam_s
        if not mean:
            div = 1.0
        elif avg is not None:
            div = avg
        elif objectness:
            div = (lab < c).sum().to(om).clamp(min=1)
        elif ignore_index is not None:
            div = (lab != ignore_index).sum().to(om)
        else:
            div = n
        cls_w.append(w / div)
        obj_w.append(w / (avg if avg is not None else n) if mean else w)
    all_labels = torch.stack([lab.long() for lab, _ in sets])
    if counts is not None and counts.dim() == 1 and counts.shape[0] > c:
        counts = counts[:c]  # seesaw_fwd takes C counts (SeesawLoss keeps C + 1)
    fwd = fwd or seesaw_fwd
    cls_rows, obj_rows, grad = fwd(logits, all_labels, torch.stack(cls_w), torch.stack(obj_w) if objectness else None,
                                counts, p, q, eps, c if objectness else ignore_index, backend)
    if reduction == "none":
        return cls_rows, obj_rows, grad
    return cls_rows.sum(), obj_rows.sum() if objectness else obj_rows, grad


def _seesaw_loss_fake(logits, labels, labels_b, lam, lam_value, label_weights, counts, p, q, eps, ignore_index,
                      objectness, reduction, avg_factor_tensor, avg_factor, loss_weight, backend):
    n = logits.shape[0]
    om = opmath_dtype(logits.dtype)
    shape = (n,) if reduction == "none" else ()
    cls = logits.new_empty(shape, dtype=om)
    obj = logits.new_empty(shape if objectness else (0,), dtype=om)
    return cls, obj, torch.empty_like(logits, memory_format=torch.contiguous_format)



# --------------------------------------------------------------------------- lossmix_reduce
# lossmix_reduce — LossMix's per-sample interpolation of two losses, weighted and reduced::
#
#     loss_a, loss_b (B, ...) floating, same shape; lam (B,) floating in [0, 1] (broadcast over the
#         trailing dims) or None, then the number lam_value; weights broadcastable to the losses
#     rows = lerp(loss_b, loss_a, λ) = λ·loss_a + (1−λ)·loss_b  (one op and one autograd node;
#         the formula itself when the two losses' dtypes differ), times weights
#     returns rows ("none"), their sum ("sum"), their mean, or sum / (avg_factor + float32 eps)
# λ is checked (in [0, 1], not NaN) by the op, following the validation mode; under
# torch.compile the check is an in-graph assert. With the extension this is a C++ composite
# (csrc/lossmix_reduce.cpp); otherwise the Python below.
def lossmix_reduce_py(loss_a, loss_b, lam, lam_value, weights, reduction, avg_factor_tensor, avg_factor):
    if lam is not None:
        _validation.in_unit_interval(lam, "lam")
        w = lam.to(loss_a.dtype).view(-1, *([1] * (loss_a.dim() - 1)))
    else:
        w = lam_value
    if loss_a.dtype == loss_b.dtype:
        loss = torch.lerp(loss_b, loss_a, w)
    else:
        loss = w * loss_a + (1 - w) * loss_b
    if weights is not None:
        loss = loss * weights
    if reduction == "none":
        return loss
    if reduction == "sum" or (avg_factor_tensor is None and avg_factor is None):
        return loss.sum() if reduction == "sum" else loss.mean()
    div = (avg_factor_tensor if avg_factor_tensor is not None else avg_factor) + F32_EPS
    return loss.sum() / div

if NATIVE_REGISTRATION:
    seesaw_fwd = torch.ops.lossmix_ext.seesaw_fwd.default
    seesaw_bwd = torch.ops.lossmix_ext.seesaw_bwd.default
    count_labels_ = torch.ops.lossmix_ext.count_labels_.default
    seesaw_loss = torch.ops.lossmix_ext.seesaw_loss.default
    # the same op from eager code: into the dispatcher through pybind11 (a few µs less per call
    # than torch.ops' schema-driven argument parsing); torch.compile traces `seesaw_loss`
    seesaw_loss_eager = _native.seesaw_loss_call
    seesaw_count_eager = _native.seesaw_count_call
    seesaw_count_ = torch.ops.lossmix_ext.seesaw_count_.default
    lossmix_reduce = torch.ops.lossmix_ext.lossmix_reduce.default
    torch.library.register_fake(f"{NS}::seesaw_loss")(_seesaw_loss_fake)
    torch.library.register_fake(f"{NS}::seesaw_count_")(_seesaw_count_fake)
    torch.library.register_fake(f"{NS}::seesaw_fwd")(_seesaw_fwd_fake)
    torch.library.register_fake(f"{NS}::seesaw_bwd")(_seesaw_bwd_fake)
    torch.library.register_fake(f"{NS}::count_labels_")(_count_labels_fake)
    _native.set_python_kernel(_python_kernel)
    _validation._set_native_mode_setter(_native.set_validation_mode)
    if getattr(_native, "with_cuda", False):
        _validation._set_device_assert(_native.device_assert)
else:
    seesaw_fwd = torch.library.custom_op(f"{NS}::seesaw_fwd", _seesaw_fwd_impl, mutates_args=())
    seesaw_fwd.register_fake(_seesaw_fwd_fake)
    torch.library.register_autograd(f"{NS}::seesaw_fwd", _seesaw_backward, setup_context=_seesaw_setup)
    seesaw_bwd = torch.library.custom_op(f"{NS}::seesaw_bwd", _seesaw_bwd_impl, mutates_args=())
    seesaw_bwd.register_fake(_seesaw_bwd_fake)
    count_labels_ = torch.library.custom_op(f"{NS}::count_labels_", _count_labels_impl, mutates_args=("counts",))
    count_labels_.register_fake(_count_labels_fake)
    seesaw_loss = seesaw_loss_eager = seesaw_loss_py
    lossmix_reduce = lossmix_reduce_py
    seesaw_count_ = torch.library.custom_op(f"{NS}::seesaw_count_", _seesaw_count_impl, mutates_args=("cum_samples",))
    seesaw_count_.register_fake(_seesaw_count_fake)
    seesaw_count_eager = seesaw_count_


class SeesawInplace(torch.autograd.Function):
    """``seesaw_fwd`` storing its gradient over the logits buffer (eager mode only).

    Saves the 1× logits that the out-of-place op keeps alive between forward and backward.
    The logits are marked dirty, so autograd bumps their version counter: an upstream op that
    saved them for its own backward raises "modified by an inplace operation" at backward
    instead of silently using the overwritten values. Backends provide ``seesaw_fwd_inplace``.
    """

    @staticmethod
    def forward(ctx, logits, labels, weights, obj_weights, counts, p, q, eps, ignore_index, backend):
        _check_seesaw_values(logits, labels, obj_weights, counts, p, ignore_index)
        loss, obj_loss, grad = _backend.kernel("seesaw_fwd_inplace", backend)(
            logits, labels, weights, obj_weights, counts, p, q, eps, ignore_index)
        ctx.mark_dirty(logits)
        _seesaw_setup(ctx, (logits, labels, weights, obj_weights, counts, p, q, eps, ignore_index, backend),
                      (loss, obj_loss, grad), inplace=True)
        return loss, obj_loss, grad

    @staticmethod
    def backward(ctx, grad_loss, grad_obj, grad_grad):
        return _seesaw_backward(ctx, grad_loss, grad_obj, grad_grad)


# --------------------------------------------------------------------------- mix_images
# mix_images — batched input mixing (mixup and CutMix in one op)::
#
#     images   (B, ...) float16/bfloat16/float32/float64 or uint8; (B, C, H, W) — NCHW or
#              channels_last — when boxes, mean or std are given
#     lam      (B,) float32 (float64 for float64 images), in [0, 1]
#     index    (B,) int64 in [0, B): the partner of each sample (any vector, repeats allowed)
#     boxes    (B, 4) int64 (y0, x0, y1, x1) or None: per-sample half-open CutMix box,
#              0 <= y0 <= y1 <= H, 0 <= x0 <= x1 <= W; pixels inside take the partner's value
#     mean/std (C,) float32 or None (0 / 1): per-channel normalisation
#     scale    multiplies the raw values first (1/255 for uint8 images)
#     out_dtype  None ⇒ images' dtype if floating, else float32
#     returns  out, same shape and memory format as images, dtype out_dtype:
#              v(x) = (x·scale − mean[c]) / std[c];   (maths in opmath)
#              out[b] = v(x[index[b]])                              inside box b
#                       λ[b]·v(x[b]) + (1−λ[b])·v(x[index[b]])     elsewhere
#
# mix_images_backward — the gradient w.r.t. floating images: with k[c] = scale / std[c],
#     dx[b]        += k·a_b·g[b]          (a_b = λ[b] outside box b, 0 inside)
#     dx[index[b]] += k·(1 − a_b)·g[b]    (repeated indices accumulate)
@torch.library.custom_op(f"{NS}::mix_images", mutates_args=())
def mix_images(images: Tensor, lam: Tensor, index: Tensor, boxes: Optional[Tensor], mean: Optional[Tensor],
               std: Optional[Tensor], scale: float, out_dtype: Optional[torch.dtype], backend: str) -> Tensor:
    _validation.in_unit_interval(lam, "lam")
    _validation.labels_in_range(index, "index", images.shape[0])
    if boxes is not None:
        _validation.boxes_in_image(boxes, "boxes", images.shape[-2], images.shape[-1])
    return _backend.kernel("mix_images", backend)(images, lam, index, boxes, mean, std, scale,
                                                  mix_out_dtype(images.dtype, out_dtype))


def mix_out_dtype(images_dtype: torch.dtype, out_dtype: Optional[torch.dtype]) -> torch.dtype:
    if out_dtype is not None:
        return out_dtype
    return images_dtype if images_dtype.is_floating_point else torch.float32


@mix_images.register_fake
def _mix_images_fake(images, lam, index, boxes, mean, std, scale, out_dtype, backend):
    return torch.empty_like(images, dtype=mix_out_dtype(images.dtype, out_dtype))


@torch.library.custom_op(f"{NS}::mix_images_backward", mutates_args=())
def mix_images_backward(grad: Tensor, lam: Tensor, index: Tensor, boxes: Optional[Tensor], std: Optional[Tensor],
                        scale: float, images_dtype: torch.dtype, backend: str) -> Tensor:
    return _backend.kernel("mix_images_backward", backend)(grad, lam, index, boxes, std, scale, images_dtype)


@mix_images_backward.register_fake
def _mix_images_backward_fake(grad, lam, index, boxes, std, scale, images_dtype, backend):
    return torch.empty_like(grad, dtype=images_dtype)


def _mix_setup(ctx, inputs, output):
    images, lam, index, boxes, mean, std, scale, out_dtype, backend = inputs
    ctx.backend, ctx.scale, ctx.images_dtype = backend, scale, images.dtype
    ctx.save_for_backward(lam, index, boxes, std)


def _mix_backward(ctx, grad):
    lam, index, boxes, std = ctx.saved_tensors
    if not ctx.images_dtype.is_floating_point:
        return (None,) * 9
    g = mix_images_backward(grad, lam, index, boxes, std, ctx.scale, ctx.images_dtype, ctx.backend)
    return (g,) + (None,) * 8


torch.library.register_autograd(f"{NS}::mix_images", _mix_backward, setup_context=_mix_setup)


# mix_images_backward is linear in its gradient input: its own derivative (the double backward of
# mix_images) maps u to k·(a_b·u[b] + (1 − a_b)·u[index[b]]), i.e. mix_images of u with the same
# λ, index, boxes, scale and std and no mean — itself differentiable, so every order is right.
def _mix_backward_setup(ctx, inputs, output):
    grad, lam, index, boxes, std, scale, images_dtype, backend = inputs
    ctx.backend, ctx.scale, ctx.grad_dtype = backend, scale, grad.dtype
    ctx.save_for_backward(lam, index, boxes, std)


def _mix_backward_backward(ctx, grad_dx):
    lam, index, boxes, std = ctx.saved_tensors
    g = mix_images(grad_dx, lam, index, boxes, None, std, ctx.scale, ctx.grad_dtype, ctx.backend)
    return (g,) + (None,) * 7


torch.library.register_autograd(f"{NS}::mix_images_backward", _mix_backward_backward,
                                setup_context=_mix_backward_setup)


# --------------------------------------------------------------------------- mix_images_ (in place, pairs)
# mix_images_ — in-place mixup / CutMix for an involutive pairing (index[index[b]] == b: flip,
# or a random matching of disjoint pairs; fixed points b == index[b] stay as they are). Each
# pair (b, c) is mixed from one read of x[b] and x[c]:
#     x[b] ← λ[b]·x[b] + (1−λ[b])·x[c],   x[c] ← λ[c]·x[c] + (1−λ[c])·x[b]   (old values, opmath)
# and inside CutMix box b (boxes given), x[b] ← x[c] (old value); likewise box c.
#     images (B, ...) floating, mutated ((B, C, H, W) with boxes); lam (B,) opmath; index (B,)
#     int64; boxes (B, 4) int64 (y0, x0, y1, x1) half-open, or None. Not differentiable.
@torch.library.custom_op(f"{NS}::mix_images_", mutates_args=("images",))
def mix_images_(images: Tensor, lam: Tensor, index: Tensor, boxes: Optional[Tensor], backend: str) -> None:
    _validation.in_unit_interval(lam, "lam")
    _validation.labels_in_range(index, "index", images.shape[0])
    _validation.involutive(index, "index")
    if boxes is not None:
        _validation.boxes_in_image(boxes, "boxes", images.shape[-2], images.shape[-1])
    _backend.kernel("mix_images_", backend)(images, lam, index, boxes)


@mix_images_.register_fake
def _mix_images_inplace_fake(images, lam, index, boxes, backend):
    return None
