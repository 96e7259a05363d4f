"""The ops written as differentiable compositions of PyTorch ops, for what the fused kernels do not
do themselves: derivatives beyond the first, and function transforms.

* :func:`seesaw_adjustment` — the Seesaw logit adjustment ``log(M_jk · C_jk)`` row by row in
  O(N·C) (each row's mitigation factors gathered from the counts, no C×C matrix), with the
  compensation's softmax of the *detached* logits, as the definition says.
* :func:`seesaw_second_order` — what the backward of ``seesaw_fwd`` / ``seesaw_loss`` returns when
  it is itself differentiated (``create_graph=True``, double backward, Hessian-vector products):
  ``dx = G · factors + H·v``, with G the saved gradient *with its history* and ``H·v`` the
  Hessian-vector product of the loss. Written in differentiable ops on G (or on the logits, for
  two label sets with Seesaw factors), so that every further order is right too.
* :func:`seesaw_fwd_rows` — the forward's loss rows (``seesaw_fwd``'s contract without the
  gradient output) as plain differentiable ops: what the public functions run under
  ``torch.func`` transforms (``grad``, ``vmap``, ``jvp``, ...) and forward-mode AD, where the
  fused ops' autograd nodes cannot go.

The second derivative of a Seesaw row. With the compensation computed from detached scores and
the mitigation from counts, the adjusted logits are ``z' = z + a`` with ``a`` constant, so a
row's loss ``w · CE(z', y)`` has gradient ``w (s − e_y)`` and Hessian ``w (diag(s) − s sᵀ)``,
``s = softmax(z')``. When every label set of a row shares one adjusted softmax (one label set,
or plain cross-entropy) the saved gradient gives it back: ``A = G + Σ_s w_s e_{y_s} = W s`` with
``W = Σ_s w_s``, and ``Σ_s w_s H_s v = A ⊙ v − A (A·v) / W``. The objectness columns share their
softmax across the sets likewise. Two label sets with Seesaw factors have two different adjusted
softmaxes, which their sum does not give back: their op keeps a reference to the logits and
recomputes them here.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor


def _opmath(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def seesaw_adjustment(z: Tensor, labels: Tensor, counts: Optional[Tensor], p: float, q: float, eps: float) -> Tensor:
    """``log(M_jk · C_jk)`` of every row (label ``labels[i]`` = j, in range) and class k, (N, C):
    ``p·min(0, log N_k − log N_j) + q·max(0, log σ_k − max(log σ_j, log eps))``, 0 in the label's
    column; σ = softmax of ``z`` *detached*, N the counts clamped to >= 1. O(N·C), no C×C matrix:
    with ``log σ_k = z_k − lse(z)`` the compensation is ``q·max(0, z_k − t)``,
    ``t = max(z_j, lse(z) + log eps)`` one number per row (no N×C log-softmax). NaN and ±inf
    logits give what the factor-matrix definition gives (a NaN or +inf row is NaN)."""
    j = labels.long()[:, None]
    zd = z.detach()
    adj = None
    if q > 0:
        t = torch.maximum(zd.gather(1, j), torch.logsumexp(zd, 1, keepdim=True) + math.log(eps))
        adj = (zd - t).clamp_min_(0).mul_(q)
    if p > 0 and counts is not None:
        logn = counts.to(z.dtype).clamp(min=1).log()
        mit = (logn[None, :] - logn[j]).clamp_max_(0).mul_(p)
        adj = mit if adj is None else adj.add_(mit)
    return adj if adj is not None else torch.zeros_like(z)


def split_logits(logits: Tensor, obj_weights: Optional[Tensor], counts: Optional[Tensor]):
    """``seesaw_fwd``'s inputs in its maths dtype: (x = logits in float32 / float64, C (class
    columns: C+2 logits when there are objectness weights), z = x's class columns, the counts cut
    to C entries (mmdetection's C+1 buffer keeps background last))."""
    x = logits.to(_opmath(logits.dtype))
    c = x.shape[1] - 2 if obj_weights is not None else x.shape[1]
    if counts is not None and counts.dim() == 1 and counts.shape[0] > c:
        counts = counts[:c]
    return x, c, x[:, :c], counts


def _sets(labels: Tensor, num_classes: int, ignore_index: Optional[int]):
    """Per label set: (rows with a class loss, labels made safe to index with)."""
    lab = labels.long()
    valid = (lab >= 0) & (lab < num_classes)
    if ignore_index is not None:
        valid &= lab != ignore_index
    return valid, torch.where(valid, lab, torch.zeros_like(lab))


def _onehot_sum(n: int, width: int, labels: Tensor, weights: Tensor, like: Tensor) -> Tensor:
    """Σ_s weights[s] · e_{labels[s]}, (n, width) (labels safe, weights 0 where no loss)."""
    out = torch.zeros((n, width), dtype=like.dtype, device=like.device)
    for s in range(labels.shape[0]):
        out = out.scatter_add(1, labels[s][:, None], weights[s][:, None].to(like.dtype))
    return out


def _shared_hvp(a: Tensor, v: Tensor, total: Tensor) -> Tensor:
    """``A ⊙ v − A (A·v) / W`` row by row (0 where W = 0, where A is 0 too)."""
    safe = torch.where(total != 0, total, torch.ones_like(total))
    return a * v - a * ((a * v).sum(1, keepdim=True) / safe[:, None])


def seesaw_second_order(grad: Tensor, grad_loss: Optional[Tensor], grad_obj: Optional[Tensor],
                        grad_grad: Optional[Tensor], labels: Tensor, weights: Tensor, obj_weights: Optional[Tensor],
                        counts: Optional[Tensor], p: float, q: float, eps: float, ignore_index: Optional[int],
                        logits: Optional[Tensor], has_obj: bool) -> Tensor:
    """d(loss)/d(logits) of a Seesaw node, differentiable: ``grad`` (N, CT) is the gradient the
    forward computed *with its history*; ``grad_loss`` / ``grad_obj`` the upstream gradients of
    the loss outputs (0-d or (N,), None for 0); ``grad_grad`` (N, CT) the gradient arriving at
    ``grad`` (None for 0), whose Hessian-vector product is added. ``labels`` (S, N), ``weights`` /
    ``obj_weights`` (S, N), ``counts``, ``p``, ``q``, ``eps``, ``ignore_index`` as the forward had
    them; ``logits`` the forward's input (needed for two label sets with Seesaw factors)."""
    om = _opmath(grad.dtype)
    n, ct = grad.shape
    c = ct - 2 if has_obj else ct
    g = grad.to(om)

    def rows(f: Optional[Tensor]) -> Optional[Tensor]:
        return None if f is None else f.to(om).expand(n)[:, None]

    gl, go = rows(grad_loss), rows(grad_obj)
    cls = g[:, :c] * gl if gl is not None else None
    obj = g[:, c:] * go if has_obj and go is not None else None
    if grad_grad is not None:
        v = grad_grad.to(om)
        hv_cls = _class_hvp(g[:, :c], v[:, :c], labels, weights.to(om), counts, p, q, eps, ignore_index, logits, c)
        cls = hv_cls if cls is None else cls + hv_cls
        if has_obj:
            target = (labels.long() == c).long()
            ow = obj_weights.to(om)
            hv_obj = _shared_hvp(g[:, c:] + _onehot_sum(n, 2, target, ow, g), v[:, c:], ow.sum(0))
            obj = hv_obj if obj is None else obj + hv_obj
    zeros = None
    if cls is None or (has_obj and obj is None):
        zeros = torch.zeros((n, ct), dtype=om, device=grad.device)
    cls = zeros[:, :c] if cls is None else cls
    out = torch.cat([cls, zeros[:, c:] if obj is None else obj], dim=1) if has_obj else cls
    return out.to(grad.dtype)


def _class_hvp(g: Tensor, v: Tensor, labels: Tensor, weights: Tensor, counts: Optional[Tensor], p: float, q: float,
               eps: float, ignore_index: Optional[int], logits: Optional[Tensor], c: int) -> Tensor:
    n = g.shape[0]
    valid, safe = _sets(labels, c, ignore_index)
    w = torch.where(valid, weights, torch.zeros_like(weights))
    seesaw = (p > 0 and counts is not None) or q > 0
    if labels.shape[0] == 1 or not seesaw:  # one adjusted softmax per row: from the saved gradient
        return _shared_hvp(g + _onehot_sum(n, c, safe, w, g), v, w.sum(0))
    if logits is None:
        raise RuntimeError("lossmix_ext: the double backward of a two-label Seesaw loss needs the logits, which "
                           "the forward keeps only when they require grad")
    z = logits.to(g.dtype)[:, :c]
    out = torch.zeros_like(g)
    for s in range(labels.shape[0]):
        zs = torch.where(valid[s][:, None], z, torch.zeros_like(z))  # rows without a loss read nothing
        sp = torch.softmax(zs + seesaw_adjustment(zs, safe[s], counts, p, q, eps), dim=1)
        out = out + w[s][:, None] * (sp * v - sp * (sp * v).sum(1, keepdim=True))
    return out


def seesaw_fwd_rows(logits: Tensor, labels: Tensor, weights: Tensor, obj_weights: Optional[Tensor],
                    counts: Optional[Tensor], p: float, q: float, eps: float, ignore_index: Optional[int]):
    """``seesaw_fwd``'s loss outputs as differentiable PyTorch ops: (loss (N,), obj_loss (N,) or
    (0,), None). Rows without a class loss in a set do not read their class logits (NaN there
    gives no NaN), as in the kernels."""
    x, c, z, counts = split_logits(logits, obj_weights, counts)
    om, n, has_obj = x.dtype, x.shape[0], obj_weights is not None
    valid, safe = _sets(labels, c, ignore_index)
    loss = x.new_zeros((n,))
    for s in range(labels.shape[0]):
        zs = torch.where(valid[s][:, None], z, torch.zeros_like(z))
        logp = torch.log_softmax(zs + seesaw_adjustment(zs, safe[s], counts, p, q, eps), dim=1)
        row = -logp.gather(1, safe[s][:, None]).squeeze(1)
        loss = loss + torch.where(valid[s], weights[s].to(om) * row, torch.zeros_like(row))
    if not has_obj:
        return loss, x.new_zeros((0,)), None
    logo = torch.log_softmax(x[:, c:], dim=1)
    obj = x.new_zeros((n,))
    for s in range(labels.shape[0]):
        target = (labels[s].long() == c).long()
        obj = obj + obj_weights[s].to(om) * -logo.gather(1, target[:, None]).squeeze(1)
    return loss, obj, None
