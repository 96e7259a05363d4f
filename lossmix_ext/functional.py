"""Public functional API. Each function checks its arguments, picks the backend, folds λ,
label weights and the reduction divisor into per-row weights, and calls one registered op.

No function here reads tensor data on the host (no ``.item()``, no boolean indexing) except
``SeesawLoss`` with ``reduction="none"``, whose class loss has mmdetection's data-dependent
shape (one entry per positive row).
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch
from torch import Tensor

from . import _backend, _ops
from . import _validation as V
from ._reference import F32_EPS


def _divisor(reduction: str, avg_factor, count):
    """What a 'mean' divides by: ``avg_factor + eps`` when given, else ``count``; 1 otherwise."""
    if reduction != "mean":
        return 1.0
    if avg_factor is not None:
        return avg_factor + F32_EPS
    return count


def _reduce_rows(rows: Tensor, reduction: str) -> Tensor:
    return rows if reduction == "none" else rows.sum()


def _label_weights(label_weights, n: int, device, om) -> Tensor:
    if label_weights is None:
        return torch.ones((n,), dtype=om, device=device)
    V.row_vector(label_weights, "label_weights", n, device)
    return label_weights.to(om)


def _seesaw_common(cls_score, p, q, eps, reduction, avg_factor):
    V.float_tensor(cls_score, "cls_score", ndim=2)
    V.seesaw_params(p, q, eps)
    V.reduction(reduction, avg_factor)


def _seesaw_op(logits, labels, weights, obj_weights, counts, p, q, eps, ignore_index, backend, inplace_grad):
    """Resolve the backend and run ``seesaw_fwd`` — or, with ``inplace_grad`` in eager mode when a
    gradient is needed, its variant that stores the gradient over ``logits``."""
    if inplace_grad and not torch.compiler.is_compiling() and torch.is_grad_enabled() and logits.requires_grad:
        if logits.is_leaf:
            raise ValueError("inplace_grad=True overwrites the scores, so they must come out of an op "
                             "(a leaf tensor that requires grad cannot be overwritten)")
        if not logits.is_contiguous():
            raise ValueError("inplace_grad=True needs contiguous scores")
        name = _backend.resolve("seesaw_fwd_inplace", backend, logits.device)
        return _ops.SeesawInplace.apply(logits, labels, weights, obj_weights, counts, p, q, eps, ignore_index, name)
    name = _backend.resolve("seesaw_fwd", backend, logits.device)
    return _ops.seesaw_fwd(logits, labels, weights, obj_weights, counts, p, q, eps, ignore_index, name)


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


def _seesaw_class_loss(cls_score, label_sets, lam, cum_samples, p, q, eps, label_weights, reduction,
                       avg_factor, backend, inplace_grad):
    _seesaw_common(cls_score, p, q, eps, reduction, avg_factor)
    n, c = cls_score.shape
    dev = cls_score.device
    names = ("labels",) if len(label_sets) == 1 else ("labels_a", "labels_b")
    for lab, name in zip(label_sets, names):
        V.index_tensor(lab, name, n, dev)
    V.counts_vector(cum_samples, "cum_samples", c, dev)
    om = _ops.opmath_dtype(cls_score.dtype)
    lw = _label_weights(label_weights, n, dev, om) / _divisor(reduction, avg_factor, n)
    if lam is None:
        weights = lw[None]
    else:
        lam = V.lam_vector(lam, n, dev).to(om)
        weights = torch.stack([lam * lw, (1 - lam) * lw])
    labels = torch.stack([lab.long() for lab in label_sets])
    rows, _, _ = _seesaw_op(cls_score, labels, weights, None, cum_samples, float(p), float(q), float(eps), None,
                            backend, inplace_grad)
    return _reduce_rows(rows, reduction)


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
    _seesaw_common(cls_score, p, q, eps, reduction, avg_factor)
    n, ct = cls_score.shape
    c = num_classes
    if ct != c + 2:
        raise ValueError(f"cls_score must have num_classes + 2 = {c + 2} columns, got {ct}")
    dev = cls_score.device
    V.index_tensor(labels, "labels", n, dev)
    if cum_samples.dim() != 1 or cum_samples.shape[0] not in (c, c + 1):
        raise ValueError(f"cum_samples must have shape ({c + 1},) or ({c},), got {tuple(cum_samples.shape)}")
    V.counts_vector(cum_samples, "cum_samples", cum_samples.shape[0], dev)
    om = _ops.opmath_dtype(cls_score.dtype)
    lw = _label_weights(label_weights, n, dev, om)
    if labels_b is None:
        if lam is not None:
            raise ValueError("lam is given but labels_b is None; pass both for LossMix, or neither")
        sets = [(labels, None)]
    else:
        if lam is None:
            raise ValueError("labels_b is given but lam is None; pass both for LossMix, or neither")
        V.index_tensor(labels_b, "labels_b", n, dev)
        lam = V.lam_vector(lam, n, dev).to(om)
        sets = [(labels, lam), (labels_b, 1 - lam)]
    cls_w, obj_w = [], []
    obj_div = _divisor(reduction, avg_factor, n)
    lw = lw * loss_weight  # in the per-row weights, so a plain backward scales the gradient by 1 (skipped)
    for lab, lam_s in sets:
        w = lw if lam_s is None else lw * lam_s
        pos = (lab < c).to(om)
        cls_div = _divisor(reduction, avg_factor, pos.sum().clamp(min=1))
        cls_w.append(w * pos / cls_div)
        obj_w.append(w / obj_div)
    labels_all = torch.stack([lab.long() for lab, _ in sets])
    cls_rows, obj_rows, _ = _seesaw_op(cls_score, labels_all, torch.stack(cls_w), torch.stack(obj_w),
                                       cum_samples[:c], float(p), float(q), float(eps), c, backend, inplace_grad)
    loss_obj = _reduce_rows(obj_rows, reduction)
    loss_cls = _reduce_rows(cls_rows, reduction)
    if reduction == "none" and labels_b is None:
        loss_cls = loss_cls[labels < c]  # mmdetection's shape: one entry per positive row (host sync)
    return loss_obj, loss_cls


def mixed_cross_entropy(logits: Tensor, labels_a: Tensor, labels_b: Tensor, lam, *,
                        label_weights: Optional[Tensor] = None, ignore_index: int = -100, reduction: str = "mean",
                        avg_factor=None, backend: Optional[str] = None, inplace_grad: bool = False) -> Tensor:
    """LossMix cross-entropy: per row ``λ·CE(y_a) + (1−λ)·CE(y_b)`` from one read of the logits.

    ``mean`` reduces each label set as ``F.cross_entropy`` would (divide by its number of
    non-ignored rows) and adds them, so a scalar λ equals
    ``λ·F.cross_entropy(x, y_a) + (1−λ)·F.cross_entropy(x, y_b)``. With ``avg_factor``:
    ``sum / (avg_factor + float32 eps)``. ``label_weights`` multiply rows (not the divisor).
    """
    V.float_tensor(logits, "logits", ndim=2)
    V.reduction(reduction, avg_factor)
    if not isinstance(ignore_index, int) or isinstance(ignore_index, bool):
        raise TypeError(f"ignore_index must be an int, got {type(ignore_index).__name__}")
    n, c = logits.shape
    dev = logits.device
    V.index_tensor(labels_a, "labels_a", n, dev)
    V.index_tensor(labels_b, "labels_b", n, dev)
    om = _ops.opmath_dtype(logits.dtype)
    lw = _label_weights(label_weights, n, dev, om)
    lam = V.lam_vector(lam, n, dev).to(om)
    weights = []
    for lab, lam_s in ((labels_a, lam), (labels_b, 1 - lam)):
        valid = (lab != ignore_index).to(om)
        weights.append(lam_s * lw * valid / _divisor(reduction, avg_factor, valid.sum()))
    labels = torch.stack([labels_a.long(), labels_b.long()])
    rows, _, _ = _seesaw_op(logits, labels, torch.stack(weights), None, None, 0.0, 0.0, 1.0, int(ignore_index),
                            backend, inplace_grad)
    return _reduce_rows(rows, reduction)


def mix_images(images: Tensor, lam, index: Tensor, *, boxes: Optional[Tensor] = None,
               mean: Optional[Sequence[float] | Tensor] = None, std: Optional[Sequence[float] | Tensor] = None,
               scale: Optional[float] = None, out_dtype: Optional[torch.dtype] = None,
               backend: Optional[str] = None) -> Tensor:
    """Batched mixup / CutMix of inputs in one pass:
    ``out[b] = λ[b]·v(x[b]) + (1−λ[b])·v(x[index[b]])``, and ``v(x[index[b]])`` inside CutMix box b,
    with ``v(x) = (x·scale − mean[c]) / std[c]`` (identity by default).

    ``images`` (B, ...) floating or uint8 ((B, C, H, W), NCHW or channels_last, when ``boxes``,
    ``mean`` or ``std`` are used); ``lam`` a number, 0-d or (B,) in [0, 1]; ``index`` (B,) int64
    in [0, B), any vector; ``boxes`` (B, 4) int64 (y0, x0, y1, x1), half-open; ``scale`` defaults
    to 1/255 for uint8 images and 1 otherwise; ``out_dtype`` defaults to the images' dtype
    (float32 for uint8). The result is a new tensor in the images' memory format.
    Differentiable w.r.t. floating ``images`` (repeated indices accumulate).
    """
    V.tensor(images, "images")
    if not (images.dtype.is_floating_point or images.dtype == torch.uint8):
        raise TypeError(f"images must be floating point or uint8, got {images.dtype}")
    if images.dim() < 1:
        raise ValueError("images must have a batch dimension")
    b = images.shape[0]
    dev = images.device
    V.index_tensor(index, "index", b, dev)
    om = _ops.opmath_dtype(images.dtype)
    lam = V.lam_vector(lam, b, dev).to(om).contiguous()
    if out_dtype is not None and out_dtype not in V.FLOAT_DTYPES:
        raise TypeError(f"out_dtype must be a floating dtype, got {out_dtype}")
    if scale is None:
        scale = 1.0 / 255.0 if images.dtype == torch.uint8 else 1.0
    per_channel = []
    for name, v in (("mean", mean), ("std", std)):
        if v is not None:
            if images.dim() != 4:
                raise ValueError(f"{name} needs (B, C, H, W) images, got shape {tuple(images.shape)}")
            v = torch.as_tensor(v, dtype=torch.float32, device=dev) if not isinstance(v, Tensor) else v
            V.float_tensor(v, name)
            V.same_device(v, name, dev)
            if v.shape != (images.shape[1],):
                raise ValueError(f"{name} must have one value per channel, shape ({images.shape[1]},), "
                                 f"got {tuple(v.shape)}")
            v = v.to(om).contiguous()
        per_channel.append(v)
    if boxes is not None:
        V.tensor(boxes, "boxes")
        if images.dim() != 4:
            raise ValueError(f"boxes need (B, C, H, W) images, got shape {tuple(images.shape)}")
        if boxes.dtype not in V.INDEX_DTYPES or boxes.shape != (b, 4):
            raise ValueError(f"boxes must be an int64 tensor of shape ({b}, 4), got {boxes.dtype} {tuple(boxes.shape)}")
        V.same_device(boxes, "boxes", dev)
        boxes = boxes.long().contiguous()
    name = _backend.resolve("mix_images", backend, dev)
    return _ops.mix_images(images, lam, index.long().contiguous(), boxes, per_channel[0], per_channel[1],
                           float(scale), out_dtype, name)


def mix_images_(images: Tensor, lam, index: Tensor, *, backend: Optional[str] = None) -> Tensor:
    """In-place mixup for a pairing that is its own inverse (``index[index[b]] == b``: pairing
    ``"flip"``, or ``sample_mix(..., pairing="pairs")``): both members of each pair are mixed
    from one read of each, ``x[b] ← λ[b]·x[b] + (1−λ[b])·x[index[b]]``. Returns ``images``.
    Not differentiable (meant for input batches)."""
    V.float_tensor(images, "images")
    if images.dim() < 1:
        raise ValueError("images must have a batch dimension")
    b = images.shape[0]
    dev = images.device
    V.index_tensor(index, "index", b, dev)
    lam = V.lam_vector(lam, b, dev).to(_ops.opmath_dtype(images.dtype)).contiguous()
    name = _backend.resolve("mix_images_", backend, dev)
    _ops.mix_images_(images, lam, index.long().contiguous(), name)
    return images


def lossmix_reduce(loss_a: Tensor, loss_b: Tensor, lam, *, weights: Optional[Tensor] = None,
                   reduction: str = "mean", avg_factor=None) -> Tensor:
    """Per-sample ``λ·loss_a + (1−λ)·loss_b`` (λ (B,) broadcast over trailing dims), times
    ``weights``, reduced (``mean`` over all elements, or ``sum / (avg_factor + eps)``)."""
    V.float_tensor(loss_a, "loss_a")
    V.float_tensor(loss_b, "loss_b")
    if loss_a.shape != loss_b.shape:
        raise ValueError(f"loss_a and loss_b must have the same shape, got {tuple(loss_a.shape)} and "
                         f"{tuple(loss_b.shape)}")
    if loss_a.dim() == 0:
        raise ValueError("loss_a and loss_b must be per-sample losses with a batch dimension, got 0-d")
    V.same_device(loss_b, "loss_b", loss_a.device)
    V.reduction(reduction, avg_factor)
    lam = V.lam_vector(lam, loss_a.shape[0], loss_a.device)
    lam = lam.to(loss_a.dtype).view(-1, *([1] * (loss_a.dim() - 1)))
    loss = lam * loss_a + (1 - lam) * loss_b
    if weights is not None:
        V.float_tensor(weights, "weights")
        V.same_device(weights, "weights", loss_a.device)
        try:
            torch.broadcast_shapes(weights.shape, loss.shape)
        except RuntimeError:
            raise ValueError(f"weights of shape {tuple(weights.shape)} do not broadcast to the losses' "
                             f"shape {tuple(loss.shape)}") from None
        loss = loss * weights
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    return loss.sum() / _divisor(reduction, avg_factor, loss.numel())


_PAIRINGS = ("random", "flip", "roll", "pairs")


def sample_beta(shape: Sequence[int], alpha: float, *, generator: Optional[torch.Generator] = None,
                device=None, dtype: torch.dtype = torch.float32) -> Tensor:
    """Symmetric Beta(α, α) samples drawn on ``device`` from ``generator``, with no host sync.

    Marsaglia–Tsang gamma sampling, vectorised with a fixed number of proposal rounds (the
    chance that all are rejected is below 1e-20); Gamma(a) for a < 1 via Gamma(a+1)·U^(1/a),
    kept in log space so that tiny α does not underflow to 0/0.
    """
    shape = tuple(shape)
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
    if not (isinstance(alpha, (int, float)) and alpha > 0 and alpha == alpha and alpha != float("inf")):
        raise ValueError(f"alpha must be a finite number > 0, got {alpha!r}")
    if pairing not in _PAIRINGS:
        raise ValueError(f"pairing must be one of {_PAIRINGS}, got {pairing!r}")
    if device is None:
        device = generator.device if generator is not None else torch.device("cpu")
    device = torch.device(device)
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
