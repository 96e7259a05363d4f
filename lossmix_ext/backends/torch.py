"""The ``torch`` backend: the ops' contracts written with plain PyTorch ops.

Works on every device and dtype (float64 included): the default wherever no fused backend is
available (mps, xpu, ROCm without Triton, a failed native build). Computed in opmath (float32,
or float64 for float64 inputs), in O(N·C) memory and time: each row's Seesaw factors are
gathered from the (C,) log-counts and the row's log-sum-exp (:func:`lossmix_ext._composite.seesaw_adjustment`),
never a C×C matrix as the reference builds, so C = 70000 classes need tens of MB, not tens of GB.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .. import _composite, _reference
from .._backend import register_kernel
from .._ops import opmath_dtype

DEVICE_TYPES = ("cpu", "cuda", "meta", "mps", "xpu")


def unavailable_reason(device_type: str) -> Optional[str]:
    return None


def _ce_rows_and_grad(z: Tensor, labels: Tensor):
    """Row CE loss and its gradient softmax(z) − onehot, for labels known to be in range
    ((N, 1) int64).

    Through ``log_softmax``, as ``F.cross_entropy``: a NaN or +inf logit makes its whole row
    NaN (``logsumexp`` would instead give +inf and a partly finite gradient)."""
    logp = torch.log_softmax(z, dim=1)
    loss = -logp.gather(1, labels).squeeze(1)
    grad = logp.exp_()
    grad.scatter_add_(1, labels, torch.full_like(labels, -1, dtype=z.dtype))
    return loss, grad


@register_kernel("seesaw_fwd", "torch")
def seesaw_fwd(logits, labels, weights, obj_weights, counts, p, q, eps, ignore_index):
    x, c, z, counts = _composite.split_logits(logits, obj_weights, counts)
    om, n, has_obj = x.dtype, x.shape[0], obj_weights is not None
    loss = x.new_zeros((n,))
    obj_loss = x.new_zeros((n if has_obj else 0,))
    grad = torch.empty_like(x, memory_format=torch.contiguous_format)
    valid, safe_all = _composite._sets(labels, c, ignore_index)
    for s in range(labels.shape[0]):
        active, safe = valid[s], safe_all[s][:, None]
        zmod = _composite.seesaw_adjustment(z, safe[:, 0], counts, p, q, eps).add_(z)
        rows, g = _ce_rows_and_grad(zmod, safe)
        w = torch.where(active, weights[s].to(om), torch.zeros_like(rows))
        # A row without a class loss in this set does not read its class logits: 0 loss and 0
        # gradient even when they are NaN (as mmdetection, which indexes the positive rows).
        loss += torch.where(active, w * rows, torch.zeros_like(rows))
        g.mul_(w[:, None]).masked_fill_(~active[:, None], 0)
        if s == 0:
            grad[:, :c].copy_(g)
        else:
            grad[:, :c].add_(g)
        if has_obj:
            target = (labels[s].long() == c).long()[:, None]
            orows, og = _ce_rows_and_grad(x[:, c:], target)
            ow = obj_weights[s].to(om)
            obj_loss += ow * orows
            og.mul_(ow[:, None])
            if s == 0:
                grad[:, c:].copy_(og)
            else:
                grad[:, c:].add_(og)
    return loss, obj_loss, grad.to(logits.dtype)


@register_kernel("seesaw_fwd_inplace", "torch")
def seesaw_fwd_inplace(logits, labels, weights, obj_weights, counts, p, q, eps, ignore_index):
    """Same results as ``seesaw_fwd``, the gradient copied over ``logits`` (no memory saved here:
    this is the semantics, for testing and for devices without a fused backend)."""
    loss, obj_loss, grad = seesaw_fwd(logits, labels, weights, obj_weights, counts, p, q, eps, ignore_index)
    logits.copy_(grad)
    return loss, obj_loss, logits


@register_kernel("seesaw_bwd", "torch")
def seesaw_bwd(grad, grad_loss, grad_obj):
    om = opmath_dtype(grad.dtype)
    scale = grad_loss.to(om)[:, None].expand(grad.shape)
    if grad_obj is not None:
        c = grad.shape[1] - 2
        scale = torch.cat([scale[:, :c], grad_obj.to(om)[:, None].expand(-1, 2)], dim=1)
    return (grad.to(om) * scale).to(grad.dtype)


@register_kernel("seesaw_bwd_inplace", "torch")
def seesaw_bwd_inplace(grad, grad_loss, grad_obj):
    """``seesaw_bwd`` written over ``grad``; returns ``grad``."""
    om = opmath_dtype(grad.dtype)
    if grad.dtype != om:
        return grad.copy_(seesaw_bwd(grad, grad_loss, grad_obj))
    if grad_obj is None:
        return grad.mul_(grad_loss.to(om)[:, None])
    c = grad.shape[1] - 2
    grad[:, :c].mul_(grad_loss.to(om)[:, None])
    grad[:, c:].mul_(grad_obj.to(om)[:, None])
    return grad


@register_kernel("mix_images", "torch")
def mix_images(images, lam, index, boxes, mean, std, scale, out_dtype):
    out = torch.empty_like(images, dtype=out_dtype)
    out.copy_(_reference.mix_images(images, lam, index, boxes, mean, std, scale, out_dtype))
    return out


@register_kernel("mix_images_backward", "torch")
def mix_images_backward(grad, lam, index, boxes, std, scale, images_dtype):
    om = opmath_dtype(images_dtype)
    g = grad.to(om) * scale
    if std is not None:
        g = g / std.to(om).view((1, -1) + (1,) * (grad.dim() - 2))
    a = lam.to(om).view((-1,) + (1,) * (grad.dim() - 1)).expand_as(g)
    if boxes is not None:
        inside = _reference.cutmix_mask(boxes, grad.shape[-2], grad.shape[-1]).unsqueeze(1)
        a = torch.where(inside, torch.zeros_like(a), a)
    dx = a * g
    dx.index_add_(0, index.long(), (1 - a) * g)
    out = torch.empty_like(grad, dtype=images_dtype)
    out.copy_(dx)
    return out


@register_kernel("mix_images_", "torch")
def mix_images_inplace(images, lam, index, boxes=None):
    mixed = _reference.mix_images(images, lam, index, boxes)
    images.copy_(mixed)
