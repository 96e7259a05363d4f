"""Public functional API. Each function checks its arguments, picks the backend, folds λ,
label weights and the reduction divisor into per-row weights, and calls one registered op.

No function here reads tensor data on the host (no ``.item()``, no boolean indexing) except
``SeesawLoss`` with ``reduction="none"``, whose class loss has mmdetection's data-dependent
shape (one entry per positive row), and the error path of a failed value check (to name the
offending label set). Value checks added here (``std`` zeros) go through the validation mode.
"""
from __future__ import annotations

import math
from numbers import Real
from typing import Optional, Sequence, Tuple

import torch
import torch.autograd.forward_ad as _fwad
from torch import Tensor

from . import _backend, _composite, _ops, _reference
from . import _validation as V


def _avg_factor(avg_factor, device) -> None:
    """``None``, a finite number, or a one-element real tensor (0-d, or (1,) on ``device``)."""
    if avg_factor is None:
        return
    if isinstance(avg_factor, Tensor):
        if avg_factor.dtype == torch.bool or avg_factor.is_complex():
            raise TypeError(f"avg_factor must be a number or a real one-element tensor, got {avg_factor.dtype}")
        if avg_factor.numel() != 1 or avg_factor.dim() > 1:
            raise ValueError(f"avg_factor must be a number or a one-element tensor (0-d or (1,)), got shape "
                             f"{tuple(avg_factor.shape)}")
        if avg_factor.device != device and not (avg_factor.dim() == 0 and avg_factor.device.type == "cpu"):
            raise ValueError(f"avg_factor is on {avg_factor.device} but the scores are on {device}")
        return
    V.real_arg(avg_factor, "avg_factor")


def _flag(x, name: str) -> bool:
    if not isinstance(x, bool):
        raise TypeError(f"{name} must be True or False, got {type(x).__name__} {x!r}")
    return x


def _seesaw_common(cls_score, p, q, eps, reduction, avg_factor):
    V.float_tensor(cls_score, "cls_score", ndim=2)
    if cls_score.shape[1] < 1:
        raise ValueError(f"cls_score must have at least one class column, got shape {tuple(cls_score.shape)}")
    V.seesaw_params(p, q, eps)
    V.reduction(reduction, avg_factor)
    _avg_factor(avg_factor, cls_score.device)


def _naming_labels(call, label_sets, num_classes: int, ignore_index=None):
    """Run ``call()`` (the op), whose value check sees the stacked label sets as one ``labels``.
    When it raises a ValueError, the label sets are read (on the host, on this error path only)
    and the error is raised again naming the offending set (``labels_a`` / ``labels_b``), so
    the success path keeps a single range check. Under ``torch.compile``, and for device-side
    asserts (GPU tensors in "auto" mode), the op's own message is what surfaces."""
    if torch.compiler.is_compiling():
        return call()
    try:
        return call()
    except ValueError as exc:
        msg = V.first_label_set_out_of_range(label_sets, num_classes, ignore_index)
        if msg is None:
            raise
        raise ValueError(msg) from exc


def _transformed() -> bool:
    """Whether a ``torch.func`` transform (``grad``, ``vmap``, ``jvp``, ``jacrev``, ...) or a
    forward-mode AD level (``torch.autograd.forward_ad.dual_level``) is active: the fused ops'
    autograd nodes cannot be transformed, so the functions then compute with the composite
    forms of :mod:`._composite` (plain PyTorch ops, same contracts and value checks)."""
    return torch._C._are_functorch_transforms_active() or _fwad._current_level >= 0


def _uses_inplace(logits: Tensor, inplace_grad: bool) -> bool:
    return (inplace_grad and not torch.compiler.is_compiling() and torch.is_grad_enabled() and logits.requires_grad
            and not _transformed())


def _composite_fwd(logits, labels, weights, obj_weights, counts, p, q, eps, ignore_index, backend):
    return _composite.seesaw_fwd_rows(logits, labels, weights, obj_weights, counts, p, q, eps, ignore_index)


def _seesaw_backend(logits: Tensor, backend: Optional[str], inplace_grad: bool) -> str:
    """Check the ``inplace_grad`` preconditions and resolve the backend of :func:`_loss_op`."""
    if _uses_inplace(logits, inplace_grad):
        if logits.is_leaf:
            raise ValueError("inplace_grad=True overwrites the scores, so they must come out of an op "
                             "(a leaf tensor that requires grad cannot be overwritten)")
        if not logits.is_contiguous():
            raise ValueError("inplace_grad=True needs contiguous scores")
        return _backend.resolve("seesaw_fwd_inplace", backend, logits.device)
    return _backend.resolve("seesaw_fwd", backend, logits.device)


def seesaw_loss(cls_score: Tensor, labels: Tensor, cum_samples: Tensor, *, p: float = 0.8, q: float = 2.0,
                eps: float = 1e-2, label_weights: Optional[Tensor] = None, reduction: str = "mean",
                avg_factor=None, backend: Optional[str] = None, inplace_grad: bool = False) -> Tensor:
    """Seesaw cross-entropy over class logits ``cls_score`` (N, C) with ``labels`` (N,) in [0, C)
    and per-class sample counts ``cum_samples`` (C,) — mmdetection's ``seesaw_ce_loss``.

    ``mean`` is the mean over the N rows (``sum / (avg_factor + eps)`` with ``avg_factor``).
    Differentiable w.r.t. ``cls_score``; the fused gradient is ``softmax(z') − onehot``.

    ``inplace_grad=True`` (eager mode; ignored under ``torch.compile``) stores the gradient over
    ``cls_score``'s buffer instead of a new tensor, saving 1× the logits between forward and
    backward. ``cls_score`` must be contiguous and not a leaf; its values are destroyed, and an
    upstream op that saved it for backward raises an error at backward rather than silently
    computing with overwritten values.
    """
    return _seesaw_class_loss(cls_score, (labels,), None, cum_samples, p, q, eps, label_weights, reduction,
                              avg_factor, backend, inplace_grad)


def seesaw_loss_mixed(cls_score: Tensor, labels_a: Tensor, labels_b: Tensor, lam, cum_samples: Tensor, *,
                      p: float = 0.8, q: float = 2.0, eps: float = 1e-2, label_weights: Optional[Tensor] = None,
                      reduction: str = "mean", avg_factor=None, backend: Optional[str] = None,
                      inplace_grad: bool = False) -> Tensor:
    """LossMix Seesaw: per row ``λ·seesaw(y_a) + (1−λ)·seesaw(y_b)``, weighted and reduced as
    :func:`seesaw_loss`, from a single read of the logits. ``lam`` is a number, a 0-d tensor or (N,)."""
    return _seesaw_class_loss(cls_score, (labels_a, labels_b), lam, cum_samples, p, q, eps, label_weights,
                              reduction, avg_factor, backend, inplace_grad)


def _lossmix_pair_args(labels_b: Optional[Tensor], lam, n: int, dev: torch.device):
    """The LossMix arguments of a module's forward: ``labels_b`` and ``lam`` both given (checked:
    (n,) labels on ``dev``, λ as :func:`_lam_args`) or neither. Returns ``_lam_args``' result,
    ``(None, 1.0)`` without LossMix."""
    if labels_b is None:
        if lam is not None:
            raise ValueError("lam is given but labels_b is None; pass both for LossMix, or neither")
        return None, 1.0
    if lam is None:
        raise ValueError("labels_b is given but lam is None; pass both for LossMix, or neither")
    V.index_tensor(labels_b, "labels_b", n, dev)
    return _lam_args(lam, n, dev)


def count_labels(cum_samples: Tensor, labels: Tensor, labels_b: Optional[Tensor] = None) -> Tensor:
    """Add the per-class histogram of ``labels`` (and of ``labels_b``, LossMix's second label
    set: a mixed image shows both) to ``cum_samples`` in place and return it — the count update
    the C-logit :func:`seesaw_loss` needs before each loss, as mmdetection's module does it.

    ``cum_samples`` (C,) floating; ``labels`` / ``labels_b`` (N,) int64 in [0, C) on its device.
    On the device, without a host sync; both label sets are checked before the buffer changes.
    """
    V.float_tensor(cum_samples, "cum_samples", ndim=1)
    if cum_samples.requires_grad and cum_samples.is_leaf and torch.is_grad_enabled():
        raise ValueError("cum_samples is a leaf tensor that requires grad, which cannot be changed in place (as "
                         "PyTorch's in-place ops refuse); keep the counts in a buffer without requires_grad")
    dev = cum_samples.device
    V.tensor(labels, "labels")
    if labels.dim() != 1:
        raise ValueError(f"labels must have shape (N,), got {tuple(labels.shape)}")
    V.index_tensor(labels, "labels", labels.shape[0], dev)
    if labels_b is not None:
        V.index_tensor(labels_b, "labels_b", labels.shape[0], dev)
        V.labels_in_range(labels_b, "labels_b", cum_samples.shape[0])
    _ops.count_labels_(cum_samples, labels)  # checks labels before it adds
    if labels_b is not None:
        _ops.count_labels_(cum_samples, labels_b)
    return cum_samples


def _seesaw_class_loss(cls_score, label_sets, lam, cum_samples, p, q, eps, label_weights, reduction,
                       avg_factor, backend, inplace_grad):
    _seesaw_common(cls_score, p, q, eps, reduction, avg_factor)
    _flag(inplace_grad, "inplace_grad")
    n, c = cls_score.shape
    dev = cls_score.device
    names = ("labels",) if len(label_sets) == 1 else ("labels_a", "labels_b")
    for lab, name in zip(label_sets, names):
        V.index_tensor(lab, name, n, dev)
    V.counts_vector(cum_samples, "cum_samples", c, dev)
    if label_weights is not None:
        V.row_vector(label_weights, "label_weights", n, dev)
    lam_t, lam_value = _lam_args(lam, n, dev) if len(label_sets) == 2 else (None, 1.0)
    op_backend = _seesaw_backend(cls_score, backend, inplace_grad)
    rows, _ = _loss_op(cls_score, label_sets[0], label_sets[1] if len(label_sets) == 2 else None, lam_t, lam_value,
                       label_weights,
                       cum_samples, float(p), float(q), float(eps), None, False, reduction, avg_factor, 1.0,
                       op_backend, inplace_grad)
    return rows


def _lam_args(lam, n: int, device, check_values: bool = True):
    """``lam`` as the op's ``(lam, lam_value)``: a checked Python number stays a number; a tensor's
    values are checked here unless ``check_values=False`` (an op that checks them itself)."""
    if isinstance(lam, Real) and not isinstance(lam, bool):
        if not 0.0 <= float(lam) <= 1.0:
            raise ValueError(f"lam must lie in [0, 1], got {lam}")
        return None, float(lam)
    return V.lam_vector(lam, n, device, check_values=check_values), 1.0


def _avg_factor_args(avg_factor):
    """``avg_factor`` (checked) as the ops' ``(avg_factor_tensor, avg_factor)`` pair."""
    if isinstance(avg_factor, Tensor):
        return avg_factor, None
    return None, (float(avg_factor) if avg_factor is not None else None)


def _loss_op(logits, labels, labels_b, lam_t, lam_value, label_weights, counts, p, q, eps, ignore_index, objectness, reduction,
             avg_factor, loss_weight, op_backend, inplace_grad):
    """Run :func:`lossmix_ext._ops.seesaw_loss` (arguments checked, backend resolved); with
    ``inplace_grad`` in eager mode when a gradient is needed, its Python form over
    ``SeesawInplace``."""
    af_t, af = _avg_factor_args(avg_factor)
    if _uses_inplace(logits, inplace_grad):
        out = _ops.seesaw_loss_py(logits, labels, labels_b, lam_t, lam_value, label_weights, counts, p, q, eps,
                                  ignore_index, objectness, reduction, af_t, af, loss_weight, op_backend,
                                  fwd=_ops.SeesawInplace.apply)
    elif _transformed():
        out = _ops.seesaw_loss_py(logits, labels, labels_b, lam_t, lam_value, label_weights, counts, p, q, eps,
                                  ignore_index, objectness, reduction, af_t, af, loss_weight, op_backend,
                                  fwd=_composite_fwd)
    else:
        # pybind11 entry for plain eager tensors; torch.ops (which honours __torch_function__ of
        # tensor subclasses and is what torch.compile traces) otherwise
        plain = type(logits) is torch.Tensor and not torch.compiler.is_compiling()
        op = _ops.seesaw_loss_eager if plain else _ops.seesaw_loss
        out = op(logits, labels, labels_b, lam_t, lam_value, label_weights, counts, p, q, eps, ignore_index,
                 objectness, reduction, af_t, af, loss_weight, op_backend)
    return out[0], out[1]  # the gradient output is not kept (the backward may reuse its buffer)


def seesaw_module_loss(cls_score: Tensor, labels: Tensor, cum_samples: Tensor, num_classes: int, *,
                       p: float = 0.8, q: float = 2.0, eps: float = 1e-2, label_weights: Optional[Tensor] = None,
                       reduction: str = "mean", avg_factor=None, loss_weight: float = 1.0,
                       labels_b: Optional[Tensor] = None, lam=None, backend: Optional[str] = None,
                       inplace_grad: bool = False) -> Tuple[Tensor, Tensor]:
    """mmdetection ``SeesawLoss`` loss (after the count update) in one fused op:
    ``(loss_objectness, loss_classes)`` from ``cls_score`` (N, C+2) and labels in [0, C]
    (C = background). With ``labels_b`` and ``lam``: each label set's loss weighted by λ and
    1−λ per row and reduced as the single-set loss would be (class ``mean`` over that set's
    positives), then added.
    """
    return _seesaw_module_prepare(cls_score, labels, cum_samples, num_classes, p, q, eps, label_weights, reduction,
                                  avg_factor, loss_weight, labels_b, lam, backend, inplace_grad)()


def _module_arg_types(num_classes, cum_samples, loss_weight) -> None:
    """The scalar / type checks that :func:`_seesaw_module_prepare` needs before it reads shapes."""
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    V.tensor(cum_samples, "cum_samples")
    V.real_arg(loss_weight, "loss_weight")


def _seesaw_module_prepare(cls_score, labels, cum_samples, num_classes, p, q, eps, label_weights, reduction,
                           avg_factor, loss_weight, labels_b, lam, backend, inplace_grad):
    """The argument checks of :func:`seesaw_module_loss` that read no tensor data, and the
    backend, then a closure that runs the op (whose value checks run before it computes).
    ``SeesawLoss`` counts in between with ``seesaw_count_``, which checks the label values and
    the counts before it changes the buffer, so nothing that can fail runs after the buffer
    changed. The op reads ``cum_samples`` when the closure runs."""
    _module_arg_types(num_classes, cum_samples, loss_weight)
    _seesaw_common(cls_score, p, q, eps, reduction, avg_factor)
    n, ct = cls_score.shape
    c = num_classes
    if ct != c + 2:
        V.assert_arg(False, f"cls_score must have num_classes + 2 = {c + 2} columns, got {ct}")
    dev = cls_score.device
    V.index_tensor(labels, "labels", n, dev)
    if cum_samples.dim() != 1 or cum_samples.shape[0] not in (c, c + 1):
        raise ValueError(f"cum_samples must have shape ({c + 1},) or ({c},), got {tuple(cum_samples.shape)}")
    V.counts_vector(cum_samples, "cum_samples", cum_samples.shape[0], dev)
    if label_weights is not None:
        V.row_vector(label_weights, "label_weights", n, dev)
    lam_t, lam_value = _lossmix_pair_args(labels_b, lam, n, dev)
    _flag(inplace_grad, "inplace_grad")
    op_backend = _seesaw_backend(cls_score, backend, inplace_grad)
    p, q, eps = float(p), float(q), float(eps)

    def run() -> Tuple[Tensor, Tensor]:
        loss_cls, loss_obj = _loss_op(cls_score, labels, labels_b, lam_t, lam_value, label_weights, cum_samples, p, q, eps, None,
                                      True, reduction, avg_factor, loss_weight, op_backend, inplace_grad)
        if reduction == "none" and labels_b is None:
            # mmdetection's shape: one entry per positive row (a host sync), and with no positive
            # row a 0-d zero (its `cls_score_classes[pos_inds].sum()`)
            loss_cls = loss_cls[labels < c]
            if loss_cls.numel() == 0:
                loss_cls = loss_cls.sum()
        return loss_obj, loss_cls

    return run


def mixed_cross_entropy(logits: Tensor, labels_a: Tensor, labels_b: Tensor, lam, *,
                        label_weights: Optional[Tensor] = None, ignore_index: int = -100, reduction: str = "mean",
                        avg_factor=None, backend: Optional[str] = None, inplace_grad: bool = False) -> Tensor:
    """LossMix cross-entropy: per row ``λ·CE(y_a) + (1−λ)·CE(y_b)`` from one read of the logits.

    ``mean`` reduces each label set as ``F.cross_entropy`` would (divide by its number of
    non-ignored rows) and adds them, so a scalar λ equals
    ``λ·F.cross_entropy(x, y_a) + (1−λ)·F.cross_entropy(x, y_b)``. With ``avg_factor``:
    ``sum / (avg_factor + float32 eps)``. ``label_weights`` multiply rows (not the divisor).
    """
    return _mixed_cross_entropy(logits, labels_a, labels_b, lam, label_weights, ignore_index, reduction, avg_factor,
                                backend, inplace_grad)


def _mixed_cross_entropy(logits, labels_a, labels_b, lam, label_weights, ignore_index, reduction, avg_factor,
                         backend, inplace_grad, names: Tuple[str, str] = ("labels_a", "labels_b")) -> Tensor:
    """:func:`mixed_cross_entropy`, naming the label sets ``names`` in its errors."""
    V.float_tensor(logits, "logits", ndim=2)
    if logits.shape[1] < 1:
        raise ValueError(f"logits must have at least one class column, got shape {tuple(logits.shape)}")
    V.reduction(reduction, avg_factor)
    _avg_factor(avg_factor, logits.device)
    _flag(inplace_grad, "inplace_grad")
    if not isinstance(ignore_index, int) or isinstance(ignore_index, bool):
        raise TypeError(f"ignore_index must be an int, got {type(ignore_index).__name__}")
    if not -2 ** 63 <= ignore_index < 2 ** 63:
        raise ValueError(f"ignore_index must fit in int64 (labels are int64), got {ignore_index}")
    n, c = logits.shape
    dev = logits.device
    V.index_tensor(labels_a, names[0], n, dev)
    V.index_tensor(labels_b, names[1], n, dev)
    if label_weights is not None:
        V.row_vector(label_weights, "label_weights", n, dev)
    lam_t, lam_value = _lam_args(lam, n, dev)
    op_backend = _seesaw_backend(logits, backend, inplace_grad)

    def call():
        return _loss_op(logits, labels_a, labels_b, lam_t, lam_value, label_weights, None, 0.0, 0.0, 1.0,
                        int(ignore_index), False, reduction, avg_factor, 1.0, op_backend, inplace_grad)[0]

    if names == ("labels_a", "labels_b"):  # the op's own names
        return call()
    return _naming_labels(call, list(zip(names, (labels_a, labels_b))), c, ignore_index)


def _image_batch(images, name: str = "images", *, floating_only: bool = False) -> Tensor:
    """``images``: a batch (B, ...) of B >= 1 samples, each one element or more dims: images
    (B, C, H, W), video (B, C, T, H, W), feature vectors (B, D), ... The callers ask for
    (B, C, H, W) where they need it (CutMix boxes, per-channel normalisation)."""
    V.tensor(images, name)
    if floating_only:
        V.float_tensor(images, name)
    elif not (images.dtype.is_floating_point or images.dtype == torch.uint8):
        raise TypeError(f"{name} must be floating point or uint8, got {images.dtype}")
    if images.dim() < 1 or images.shape[0] < 1:
        raise ValueError(f"{name} must be a batch (B, ...) with B >= 1 samples along dim 0 (images (B, C, H, W), "
                         f"video (B, C, T, H, W), features (B, D), ...), got shape {tuple(images.shape)}")
    return images


def _inplace_images(images, name: str = "images") -> Tensor:
    """What :func:`mix_images_` needs of the batch it overwrites (metadata only)."""
    _image_batch(images, name, floating_only=True)
    if torch.is_grad_enabled() and images.requires_grad:
        raise ValueError(f"{name} requires grad, but mix_images_ overwrites it and is not differentiable: use "
                         "mix_images (out of place), or mix under torch.no_grad()")
    has_overlap = getattr(torch, "_debug_has_internal_overlap", None)
    if has_overlap is not None and not torch.compiler.is_compiling() and has_overlap(images) == 1:
        raise ValueError(f"{name} has elements that share memory (an expanded view, strides "
                         f"{tuple(images.stride())}): mix_images_ cannot write it in place; pass {name}.clone()")
    return images


def _per_channel_values(v, name: str, channels: Optional[int] = None) -> list:
    """``mean`` / ``std`` given as a Python sequence: finite numbers (``std`` without zeros), as
    floats, checked on the host; ``channels`` of them when given."""
    want = f"{channels} numbers" if channels is not None else "numbers"
    if isinstance(v, (str, bytes)) or not hasattr(v, "__len__") or not hasattr(v, "__iter__"):
        raise TypeError(f"{name} must be a sequence of {want} (one per channel) or a 1-D tensor, got "
                        f"{type(v).__name__} {v!r}")
    vals = list(v)
    if any(not isinstance(x, Real) or isinstance(x, bool) for x in vals):
        raise TypeError(f"{name} must be a sequence of {want} (one per channel), got {v!r}")
    if channels is not None and len(vals) != channels:
        raise ValueError(f"{name} must have one value per channel, shape ({channels},), got {len(vals)} values")
    if not all(math.isfinite(float(x)) for x in vals):
        raise ValueError(f"{name} must be finite, got {v!r}")
    if name == "std" and any(float(x) == 0.0 for x in vals):
        raise ValueError(f"std must not contain 0 (it divides), got {v!r}")
    return [float(x) for x in vals]


def _per_channel(v, name: str, channels: int, device, om) -> Optional[Tensor]:
    """``mean`` / ``std``: a sequence of C numbers (checked on the host) or a (C,) floating tensor on
    the images' device (``std``'s zeros: a value check, following the validation mode)."""
    if v is None:
        return None
    if isinstance(v, Tensor):
        V.float_tensor(v, name)
        V.same_device(v, name, device)
        if v.shape != (channels,):
            raise ValueError(f"{name} must have one value per channel, shape ({channels},), got {tuple(v.shape)}")
        if name == "std":
            V.nonzero(v, name)
        return v.to(om).contiguous()
    vals = _per_channel_values(v, name, channels)
    # float32 values (as documented for the op), computed with in opmath
    return torch.tensor(vals, dtype=torch.float32, device=device).to(om)


def _scale(scale, images_dtype) -> float:
    if scale is None:
        return 1.0 / 255.0 if images_dtype == torch.uint8 else 1.0
    return V.real_arg(scale, "scale")


def _out_dtype(out_dtype) -> None:
    if out_dtype is not None and (not isinstance(out_dtype, torch.dtype) or out_dtype not in V.FLOAT_DTYPES):
        raise TypeError(f"out_dtype must be a floating torch.dtype or None, got {out_dtype!r}")


def _boxes_arg(boxes: Optional[Tensor], images: Tensor) -> Optional[Tensor]:
    """CutMix ``boxes``: None, or (B, 4) integer (y0, x0, y1, x1) on the images' device, for
    (B, C, H, W) images; returned int64 and contiguous."""
    if boxes is None:
        return None
    if images.dim() != 4:
        raise ValueError(f"boxes needs (B, C, H, W) images, got shape {tuple(images.shape)}")
    V.tensor(boxes, "boxes")
    b = images.shape[0]
    if boxes.dtype not in V.INDEX_DTYPES or boxes.shape != (b, 4):
        raise ValueError(f"boxes must be an int64 tensor of shape ({b}, 4), got {boxes.dtype} {tuple(boxes.shape)}")
    V.same_device(boxes, "boxes", images.device)
    return boxes.long().contiguous()


def mix_images(images: Tensor, lam, index: Tensor, *, boxes: Optional[Tensor] = None,
               mean: Optional[Sequence[float] | Tensor] = None, std: Optional[Sequence[float] | Tensor] = None,
               scale: Optional[float] = None, out_dtype: Optional[torch.dtype] = None,
               backend: Optional[str] = None) -> Tensor:
    """Batched mixup / CutMix of inputs in one pass:
    ``out[b] = λ[b]·v(x[b]) + (1−λ[b])·v(x[index[b]])``, and ``v(x[index[b]])`` inside CutMix box b,
    with ``v(x) = (x·scale − mean[c]) / std[c]`` (identity by default).

    ``images`` (B, C, H, W) floating or uint8, NCHW or channels_last — or, without ``boxes``,
    ``mean`` and ``std``, any batch (B, ...) of B >= 1 samples along dim 0: video
    (B, C, T, H, W), feature vectors (B, D), ... (dim 0 is always the batch: a single (C, H, W)
    image is mixed as C samples); ``lam`` a number, 0-d or (B,) in [0, 1]; ``index`` (B,) int64
    in [0, B), any vector; ``boxes`` (B, 4) int64 (y0, x0, y1, x1), half-open; ``mean`` /
    ``std`` C numbers or (C,) tensors on the images' device, ``std`` without zeros; ``scale`` a
    number, by default 1/255 for uint8 images and 1 otherwise; ``out_dtype`` defaults to the images' dtype (float32 for uint8). The result
    is a new tensor in the images' memory format.
    Differentiable w.r.t. floating ``images`` (repeated indices accumulate).
    """
    _image_batch(images)
    b = images.shape[0]
    dev = images.device
    V.index_tensor(index, "index", b, dev)
    om = _ops.opmath_dtype(images.dtype)
    lam = V.lam_vector(lam, b, dev).to(om).contiguous()
    _out_dtype(out_dtype)
    scale = _scale(scale, images.dtype)
    for name, v in (("mean", mean), ("std", std), ("boxes", boxes)):
        if v is not None and images.dim() != 4:
            raise ValueError(f"{name} needs (B, C, H, W) images, got shape {tuple(images.shape)}")
    channels = images.shape[1] if images.dim() == 4 else 0  # mean / std only for (B, C, H, W)
    per_channel = [_per_channel(v, name, channels, dev, om) for name, v in (("mean", mean), ("std", std))]
    boxes = _boxes_arg(boxes, images)
    name = _backend.resolve("mix_images", backend, dev)
    if _transformed():  # the op's value checks, then its maths as plain differentiable ops
        V.in_unit_interval(lam, "lam")
        V.labels_in_range(index, "index", b)
        if boxes is not None:
            V.boxes_in_image(boxes, "boxes", images.shape[-2], images.shape[-1])
        return _reference.mix_images(images, lam, index.long(), boxes, per_channel[0], per_channel[1], scale,
                                     _ops.mix_out_dtype(images.dtype, out_dtype))
    return _ops.mix_images(images, lam, index.long().contiguous(), boxes, per_channel[0], per_channel[1],
                           scale, out_dtype, name)


def mix_images_(images: Tensor, lam, index: Tensor, *, boxes: Optional[Tensor] = None,
                backend: Optional[str] = None) -> Tensor:
    """In-place mixup / CutMix for a pairing that is its own inverse (``index[index[b]] == b``:
    pairing ``"flip"``, or ``sample_mix(..., pairing="pairs")``): both members of each pair are
    mixed from one read of each, ``x[b] ← λ[b]·x[b] + (1−λ[b])·x[index[b]]``, and inside CutMix
    box b (``boxes`` (B, 4) int64 (y0, x0, y1, x1), half-open, for (B, C, H, W) images)
    ``x[b] ← x[index[b]]`` — the values :func:`mix_images` would give, without the new tensor.
    Returns ``images`` (floating, any (B, ...) batch as for :func:`mix_images`, (B, C, H, W) with
    ``boxes``; not an expanded view whose elements share memory). Not differentiable (meant for
    input batches): ``images`` must not require grad while grad mode is on. Every check runs
    before ``images`` is written."""
    _inplace_images(images)
    b = images.shape[0]
    dev = images.device
    V.index_tensor(index, "index", b, dev)
    lam = V.lam_vector(lam, b, dev).to(_ops.opmath_dtype(images.dtype)).contiguous()
    boxes = _boxes_arg(boxes, images)
    name = _backend.resolve("mix_images_", backend, dev)
    _ops.mix_images_(images, lam, index.long().contiguous(), boxes, name)
    return images


def lossmix_reduce(loss_a: Tensor, loss_b: Tensor, lam, *, weights: Optional[Tensor] = None,
                   reduction: str = "mean", avg_factor=None) -> Tensor:
    """Per-sample ``λ·loss_a + (1−λ)·loss_b`` (λ (B,) broadcast over trailing dims), times
    ``weights`` (broadcastable to the losses' shape), reduced (``mean`` over all elements, or
    ``sum / (avg_factor + eps)``)."""
    V.float_tensor(loss_a, "loss_a")
    V.float_tensor(loss_b, "loss_b")
    if loss_a.shape != loss_b.shape:
        raise ValueError(f"loss_a and loss_b must have the same shape, got {tuple(loss_a.shape)} and "
                         f"{tuple(loss_b.shape)}")
    if loss_a.dim() == 0:
        raise ValueError("loss_a and loss_b must be per-sample losses with a batch dimension, got 0-d")
    V.same_device(loss_b, "loss_b", loss_a.device)
    V.reduction(reduction, avg_factor)
    _avg_factor(avg_factor, loss_a.device)
    if weights is not None:
        V.float_tensor(weights, "weights")
        V.same_device(weights, "weights", loss_a.device)
        try:
            ok = torch.broadcast_shapes(weights.shape, loss_a.shape) == loss_a.shape
        except RuntimeError:
            ok = False
        if not ok:
            raise ValueError(f"weights of shape {tuple(weights.shape)} do not broadcast to the losses' "
                             f"shape {tuple(loss_a.shape)}")
    lam_t, lam_value = _lam_args(lam, loss_a.shape[0], loss_a.device, check_values=False)  # the op checks λ
    af_t, af = _avg_factor_args(avg_factor)
    # under torch.func transforms the same maths in Python ops, which have batching rules
    op = _ops.lossmix_reduce_py if _transformed() else _ops.lossmix_reduce
    return op(loss_a, loss_b, lam_t, lam_value, weights, reduction, af_t, af)


_PAIRINGS = ("random", "flip", "roll", "pairs")


def _beta_alpha(alpha) -> None:
    if not isinstance(alpha, Real) or isinstance(alpha, bool) or not (math.isfinite(float(alpha)) and alpha > 0):
        raise ValueError(f"alpha must be a finite number > 0, got {alpha!r}")


def sample_beta(shape: Sequence[int], alpha: float, *, generator: Optional[torch.Generator] = None,
                device=None, dtype: torch.dtype = torch.float32) -> Tensor:
    """Symmetric Beta(α, α) samples drawn on ``device`` from ``generator``, with no host sync.

    Marsaglia–Tsang gamma sampling, vectorised with a fixed number of proposal rounds (the
    chance that all are rejected is below 1e-20); Gamma(a) for a < 1 via Gamma(a+1)·U^(1/a),
    kept in log space so that tiny α does not underflow to 0/0.
    """
    if isinstance(shape, (str, bytes)) or not hasattr(shape, "__iter__"):
        raise TypeError(f"shape must be a sequence of ints, got {type(shape).__name__} {shape!r}")
    shape = tuple(shape)
    if any(not isinstance(s, int) or isinstance(s, bool) or s < 0 for s in shape):
        raise ValueError(f"shape must be a sequence of non-negative ints, got {shape!r}")
    _beta_alpha(alpha)
    V.generator_arg(generator)
    device = V.device_arg(device)
    if device is None and generator is not None:
        device = generator.device
    if generator is not None and device is not None and generator.device.type != device.type:
        raise ValueError(f"generator is on {generator.device} but device is {device}")
    if not isinstance(dtype, torch.dtype) or dtype not in V.FLOAT_DTYPES:
        raise TypeError(f"dtype must be a floating torch.dtype, got {dtype!r}")
    n = 1
    for s in shape:
        n *= s
    a = float(alpha)
    boost = a < 1.0
    d = (a + 1.0 if boost else a) - 1.0 / 3.0
    c = 1.0 / (9.0 * d) ** 0.5
    rounds = 16

    def log_gamma_draw():
        x = torch.randn((rounds, n), generator=generator, device=device, dtype=torch.float64)
        u = torch.rand((rounds, n), generator=generator, device=device, dtype=torch.float64)
        v = (1 + c * x) ** 3
        ok = (v > 0) & (torch.log(u) < 0.5 * x * x + d - d * v + d * torch.log(v.clamp(min=1e-300)))
        first = torch.argmax(ok.to(torch.int8), dim=0, keepdim=True)
        logv = torch.log(v.clamp(min=1e-300)).gather(0, first).squeeze(0)
        logg = torch.where(ok.any(0), logv, torch.zeros_like(logv)) + torch.log(torch.tensor(d, dtype=torch.float64))
        if boost:
            u2 = torch.rand((n,), generator=generator, device=device, dtype=torch.float64)
            logg = logg + torch.log(u2.clamp(min=1e-300)) / a
        return logg

    g1, g2 = log_gamma_draw(), log_gamma_draw()
    return torch.sigmoid(g1 - g2).to(dtype).reshape(shape)


def sample_mix(batch_size: int, alpha: float = 1.0, *, per_sample: bool = True, pairing: str = "random",
               generator: Optional[torch.Generator] = None, device=None) -> Tuple[Tensor, Tensor]:
    """Draw a mixing plan: ``(lam, index)``, λ (B,) float32 ~ Beta(α, α) on ``device`` (one value
    broadcast to all samples when ``per_sample=False``) and ``index`` (B,) int64 partners:

    * ``"random"``: a random permutation, * ``"flip"``: b ↔ B−1−b (timm's batch mode),
    * ``"roll"``: b → b−1 (torchvision's ``batch.roll(1, 0)``),
    * ``"pairs"``: a random matching of disjoint pairs (involutive, usable with :func:`mix_images_`;
      with an odd B one sample is paired with itself).

    Odd batch sizes are fine. No host sync: everything is drawn on ``device``.
    """
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    _beta_alpha(alpha)
    if not isinstance(pairing, str) or pairing not in _PAIRINGS:
        raise ValueError(f"pairing must be one of {_PAIRINGS}, got {pairing!r}")
    V.generator_arg(generator)
    device = V.device_arg(device)
    if device is None:
        device = generator.device if generator is not None else torch.device("cpu")
    if generator is not None and generator.device.type != device.type:
        raise ValueError(f"generator is on {generator.device} but device is {device}")
    lam = sample_beta((batch_size if per_sample else 1,), alpha, generator=generator, device=device)
    if not per_sample:
        lam = lam.expand(batch_size).contiguous()
    if pairing == "random":
        index = torch.randperm(batch_size, generator=generator, device=device)
    elif pairing == "flip":
        index = torch.arange(batch_size - 1, -1, -1, device=device)
    elif pairing == "roll":
        index = torch.roll(torch.arange(batch_size, device=device), 1)
    else:
        perm = torch.randperm(batch_size, generator=generator, device=device)
        partner = perm.clone()
        m = batch_size - batch_size % 2
        partner[0:m:2], partner[1:m:2] = perm[1:m:2], perm[0:m:2]
        index = torch.empty_like(perm)
        index[perm] = partner
    return lam, index
