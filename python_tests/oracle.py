"""Independent oracles, written from the formulas; they share no code with lossmix_ext.

* NumPy, explicit loops (:func:`seesaw_row`, :func:`seesaw_module`): the paper's formulas,
  for the reference and the public API on small inputs.
* :func:`seesaw_fwd_contract`: the ``seesaw_fwd`` op contract row by row in float64 torch
  (an (N, C) factor matrix, no C×C), for the kernels of every backend.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

try:
    import numpy as np
except ModuleNotFoundError:  # a bare GPU machine: the NumPy oracles skip their tests (_numpy)
    np = None


def _numpy():
    """numpy for the NumPy oracles; without it the calling test is skipped, saying why
    (:func:`seesaw_fwd_contract` needs torch only, so its tests still run)."""
    if np is None:
        import pytest
        pytest.skip("the NumPy oracle needs numpy")
    return np


def _softmax(v):
    e = np.exp(v - v.max())
    return e / e.sum()


def seesaw_row(z, j, counts, p, q, eps):
    _numpy()
    """Loss and gradient (w.r.t. z, σ detached) of one row with label j."""
    z = np.asarray(z, dtype=np.float64)
    n = np.maximum(np.asarray(counts, dtype=np.float64), 1.0)
    sig = _softmax(z)
    zmod = z.copy()
    for k in range(len(z)):
        if k == j:
            continue
        factor = 1.0
        if p > 0 and n[k] < n[j]:
            factor *= (n[k] / n[j]) ** p
        if q > 0:
            ratio = sig[k] / max(sig[j], eps)
            if ratio > 1:
                factor *= ratio ** q
        zmod[k] += math.log(factor)
    m = zmod.max()
    lse = m + math.log(np.exp(zmod - m).sum())
    grad = _softmax(zmod)
    grad[j] -= 1.0
    return lse - z[j], grad


def ce_row(z, j):
    _numpy()
    return seesaw_row(z, j, np.ones(len(z)), 0.0, 0.0, 1.0)


def seesaw_rows(logits, labels, counts, p, q, eps):
    _numpy()
    out = [seesaw_row(z, int(j), counts, p, q, eps) for z, j in zip(np.asarray(logits, np.float64), labels)]
    return np.array([o[0] for o in out]), np.stack([o[1] for o in out]) if out else np.zeros((0, len(counts)))


def seesaw_module(cls_score, labels, cum_before, num_classes, p, q, eps, label_weights=None, reduction="mean",
                  avg_factor=None, loss_weight=1.0):
    """mmdetection SeesawLoss.forward: counts updated first, then (objectness, classes) losses."""
    _numpy()
    C = num_classes
    x = np.asarray(cls_score, dtype=np.float64)
    labels = np.asarray(labels)
    counts = np.asarray(cum_before, dtype=np.float64).copy()
    for lab in labels:
        counts[lab] += 1
    w = np.ones(len(labels)) if label_weights is None else np.asarray(label_weights, dtype=np.float64)
    f32_eps = float(np.finfo(np.float32).eps)

    def reduce(v, ww):
        v = v * ww
        if avg_factor is not None:
            return v.sum() / (avg_factor + f32_eps) if reduction == "mean" else v
        return {"mean": v.mean() if len(v) else 0.0, "sum": v.sum(), "none": v}[reduction]

    pos = labels < C
    cls_rows = np.array([seesaw_row(x[i, :C], labels[i], counts[:C], p, q, eps)[0] for i in np.where(pos)[0]])
    cls = loss_weight * reduce(cls_rows, w[pos]) if pos.any() else 0.0
    obj_rows = np.array([ce_row(x[i, C:], int(labels[i] == C))[0] for i in range(len(labels))])
    obj = loss_weight * reduce(obj_rows, w)
    return obj, cls, counts


def seesaw_fwd_contract(logits, labels, weights, obj_weights, counts, p, q, eps, ignore_index):
    """The op's contract transcribed row by row in float64 (an (N, C) factor matrix, no C×C)."""
    x = logits.double()
    n, ct = x.shape
    has_obj = obj_weights is not None
    c = ct - 2 if has_obj else ct
    z = x[:, :c]
    sig = torch.softmax(z, 1)
    nk = (counts.double() if counts is not None else torch.ones(c, dtype=torch.float64, device=x.device)).clamp(min=1)
    loss = torch.zeros(n, dtype=torch.float64, device=x.device)
    obj = torch.zeros(n if has_obj else 0, dtype=torch.float64, device=x.device)
    grad = torch.zeros_like(x)
    for s in range(labels.shape[0]):
        lab = labels[s].long()
        act = (lab >= 0) & (lab < c)
        if ignore_index is not None:
            act &= lab != ignore_index
        j = torch.where(act, lab, 0)
        factor = torch.ones_like(z)
        if p > 0:
            r = nk[None, :] / nk[j][:, None]
            factor = factor * torch.where(r < 1, r ** p, torch.ones_like(r))
        if q > 0:
            r = sig / sig.gather(1, j[:, None]).clamp(min=eps)
            factor = factor * torch.where(r > 1, r ** q, torch.ones_like(r))
        factor.scatter_(1, j[:, None], 1.0)
        zz = z + factor.log()
        w = torch.where(act, weights[s].double(), torch.zeros_like(loss))
        loss += w * (torch.logsumexp(zz, 1) - z.gather(1, j[:, None])[:, 0])
        grad[:, :c] += w[:, None] * (torch.softmax(zz, 1) - F.one_hot(j, c))
        if has_obj:
            o, t = x[:, c:], (lab == c).long()
            ow = obj_weights[s].double()
            obj += ow * (torch.logsumexp(o, 1) - o.gather(1, t[:, None])[:, 0])
            grad[:, c:] += ow[:, None] * (torch.softmax(o, 1) - F.one_hot(t, 2))
    return loss, obj, grad
