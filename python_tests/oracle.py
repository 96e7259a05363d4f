"""An independent NumPy oracle, written from the paper's formulas with explicit loops.

It shares no code with lossmix_ext: the reference and every backend are checked against it
on small inputs, in float64.
"""
from __future__ import annotations

import math

import numpy as np


def _softmax(v):
    e = np.exp(v - v.max())
    return e / e.sum()


def seesaw_row(z, j, counts, p, q, eps):
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
    return seesaw_row(z, j, np.ones(len(z)), 0.0, 0.0, 1.0)


def seesaw_rows(logits, labels, counts, p, q, eps):
    out = [seesaw_row(z, int(j), counts, p, q, eps) for z, j in zip(np.asarray(logits, np.float64), labels)]
    return np.array([o[0] for o in out]), np.stack([o[1] for o in out]) if out else np.zeros((0, len(counts)))


def seesaw_module(cls_score, labels, cum_before, num_classes, p, q, eps, label_weights=None, reduction="mean",
                  avg_factor=None, loss_weight=1.0):
    """mmdetection SeesawLoss.forward: counts updated first, then (objectness, classes) losses."""
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
