"""Pure-PyTorch reference implementations: the oracle every backend is tested against.

Each function is a direct transcription of the maths (readability over speed), is
differentiable with ordinary autograd and computes in the input dtype (use float64 inputs
for gradcheck). Nothing here is fused; the C×C-free formulation lives in the kernels.

Seesaw loss (Wang et al., CVPR 2021), as in mmdetection's ``SeesawLoss`` 2.13–3.3: for a
sample of label j every negative class k has its logit raised by ``log(M_jk · C_jk)``

* mitigation   ``M_jk = (N_k / N_j)^p`` if ``N_k < N_j`` else 1 (counts clamped ≥ 1),
* compensation ``C_jk = (σ_k / max(σ_j, eps))^q`` if that ratio > 1 else 1, σ = softmax of
  the *detached* logits,

then softmax cross-entropy is taken. ``p <= 0`` / ``q <= 0`` switch a factor off.
"""
from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

F32_EPS = torch.finfo(torch.float32).eps


# --------------------------------------------------------------------------- reductions
def weight_reduce_loss(loss: Tensor, weight: Optional[Tensor] = None, reduction: str = "mean",
                       avg_factor=None) -> Tensor:
    """mmdetection's ``weight_reduce_loss``: element-wise weight, then reduce.

    ``mean`` with ``avg_factor`` is ``sum / (avg_factor + float32 eps)``.
    """
    if weight is not None:
        loss = loss * weight
    if avg_factor is None:
        if reduction == "mean":
            return loss.mean()
        if reduction == "sum":
            return loss.sum()
        return loss
    if reduction == "mean":
        return loss.sum() / (avg_factor + F32_EPS)
    if reduction != "none":
        raise ValueError('avg_factor can not be used with reduction="sum"')
    return loss


# --------------------------------------------------------------------------- seesaw
def seesaw_logit_adjustment(logits: Tensor, labels: Tensor, counts: Tensor, p: float, q: float,
                            eps: float) -> Tensor:
    """``log(M_jk · C_jk)`` for every row (label j) and class k; 0 in the label's column.

    Built exactly as mmdetection does, as an (N, C) matrix of factors, then its log.
    """
    n_rows, n_cls = logits.shape
    onehot = F.one_hot(labels.long(), n_cls).to(logits.dtype)
    factors = torch.ones_like(logits)
    if p > 0:
        n = counts.to(logits.dtype).clamp(min=1)
        ratio = n[None, :] / n[:, None]  # [j, k] = N_k / N_j  (the C x C matrix)
        below = (ratio < 1.0).to(logits.dtype)
        mitigation = ratio.pow(p) * below + (1 - below)
        factors = factors * mitigation[labels.long(), :]
    if q > 0:
        scores = F.softmax(logits.detach(), dim=1)
        self_scores = scores[torch.arange(n_rows, device=logits.device), labels.long()]
        score_ratio = scores / self_scores[:, None].clamp(min=eps)
        above = (score_ratio > 1.0).to(logits.dtype)
        compensation = score_ratio.pow(q) * above + (1 - above)
        factors = factors * compensation
    return factors.log() * (1 - onehot)


def seesaw_ce(logits: Tensor, labels: Tensor, counts: Tensor, p: float = 0.8, q: float = 2.0,
              eps: float = 1e-2) -> Tensor:
    """Per-row Seesaw cross-entropy over class logits (N, C), labels (N,), counts (C,)."""
    adjusted = logits + seesaw_logit_adjustment(logits, labels, counts, p, q, eps)
    return F.cross_entropy(adjusted, labels.long(), reduction="none")


def seesaw_ce_mixed(logits: Tensor, labels_a: Tensor, labels_b: Tensor, lam: Tensor, counts: Tensor,
                    p: float = 0.8, q: float = 2.0, eps: float = 1e-2) -> Tensor:
    """Per-row LossMix Seesaw: ``λ·seesaw(y_a) + (1−λ)·seesaw(y_b)``."""
    lam = lam.to(logits.dtype)
    return (lam * seesaw_ce(logits, labels_a, counts, p, q, eps)
            + (1 - lam) * seesaw_ce(logits, labels_b, counts, p, q, eps))


def seesaw_loss(logits: Tensor, labels: Tensor, counts: Tensor, p: float = 0.8, q: float = 2.0,
                eps: float = 1e-2, label_weights: Optional[Tensor] = None, reduction: str = "mean",
                avg_factor=None) -> Tensor:
    """mmdetection's ``seesaw_ce_loss``: per-row loss, weighted and reduced."""
    loss = seesaw_ce(logits, labels, counts, p, q, eps)
    w = None if label_weights is None else label_weights.to(loss.dtype)
    return weight_reduce_loss(loss, w, reduction, avg_factor)


def seesaw_loss_mixed(logits: Tensor, labels_a: Tensor, labels_b: Tensor, lam: Tensor, counts: Tensor,
                      p: float = 0.8, q: float = 2.0, eps: float = 1e-2,
                      label_weights: Optional[Tensor] = None, reduction: str = "mean",
                      avg_factor=None) -> Tensor:
    loss = seesaw_ce_mixed(logits, labels_a, labels_b, lam, counts, p, q, eps)
    w = None if label_weights is None else label_weights.to(loss.dtype)
    return weight_reduce_loss(loss, w, reduction, avg_factor)


def update_counts(cum_samples: Tensor, labels: Tensor) -> Tensor:
    """mmdetection's count update: ``cum_samples[u] += (labels == u).sum()`` for each label u."""
    for u in labels.unique():
        cum_samples[u] += (labels == u).sum()
    return cum_samples


def seesaw_module_loss(cls_score: Tensor, labels: Tensor, cum_samples: Tensor, num_classes: int,
                       p: float = 0.8, q: float = 2.0, eps: float = 1e-2,
                       label_weights: Optional[Tensor] = None, reduction: str = "mean",
                       avg_factor=None, loss_weight: float = 1.0) -> Tuple[Tensor, Tensor]:
    """mmdetection ``SeesawLoss.forward`` after the count update: ``(loss_objectness, loss_classes)``.

    ``cls_score`` is (N, C+2): C class logits, then [foreground, background] objectness.
    ``cum_samples`` has C+1 entries (background last) and must already include this batch.
    """
    C = num_classes
    pos = labels < C
    obj_labels = (labels == C).long()
    if label_weights is None:
        label_weights = torch.ones(labels.shape, dtype=torch.float32, device=labels.device)
    label_weights = label_weights.float()
    classes, objectness = cls_score[..., :-2], cls_score[..., -2:]
    if pos.sum() > 0:
        loss_classes = loss_weight * seesaw_loss(
            classes[pos], labels[pos], cum_samples[:C], p, q, eps,
            label_weights[pos], reduction, avg_factor)
    else:
        loss_classes = classes[pos].sum()
    obj = F.cross_entropy(objectness, obj_labels, reduction="none")
    loss_objectness = loss_weight * weight_reduce_loss(obj, label_weights.to(obj.dtype), reduction, avg_factor)
    return loss_objectness, loss_classes


def seesaw_module_loss_mixed(cls_score: Tensor, labels_a: Tensor, labels_b: Tensor, lam: Tensor,
                             cum_samples: Tensor, num_classes: int, p: float = 0.8, q: float = 2.0,
                             eps: float = 1e-2, label_weights: Optional[Tensor] = None,
                             reduction: str = "mean", avg_factor=None,
                             loss_weight: float = 1.0) -> Tuple[Tensor, Tensor]:
    """LossMix SeesawLoss: each label set's loss as in :func:`seesaw_module_loss`, with the
    per-sample weights λ and 1−λ folded into ``label_weights``, then added.

    For ``reduction="none"`` the per-set vectors are padded to all N rows (zeros for rows
    whose label is background in the class loss) before being added.
    """
    if label_weights is None:
        label_weights = torch.ones(labels_a.shape, dtype=torch.float32, device=labels_a.device)
    lam = lam.to(torch.float32)
    outs = []
    for labels, w in ((labels_a, lam), (labels_b, 1 - lam)):
        obj, cls = seesaw_module_loss(cls_score, labels, cum_samples, num_classes, p, q, eps,
                                      label_weights.float() * w, reduction, avg_factor, loss_weight)
        if reduction == "none":
            full = cls_score.new_zeros(labels.shape, dtype=cls.dtype)
            full = full.masked_scatter(labels < num_classes, cls)
            cls = full
        outs.append((obj, cls))
    return outs[0][0] + outs[1][0], outs[0][1] + outs[1][1]


def seesaw_activation(cls_score: Tensor) -> Tensor:
    """mmdetection ``SeesawLoss.get_activation``: (N, C+1) = class softmax × P(fg), then P(bg)."""
    classes = F.softmax(cls_score[..., :-2], dim=-1)
    objectness = F.softmax(cls_score[..., -2:], dim=-1)
    return torch.cat([classes * objectness[..., [0]], objectness[..., [1]]], dim=-1)


def accuracy(pred: Tensor, target: Tensor) -> Tensor:
    """mmdetection ``accuracy(pred, target, topk=1)`` in percent; 0-d zero for an empty batch."""
    if pred.size(0) == 0:
        return pred.new_tensor(0.0)
    correct = (pred.topk(1, dim=1).indices[:, 0] == target).float().sum(0, keepdim=True)
    return correct * (100.0 / pred.size(0))


def seesaw_accuracy(cls_score: Tensor, labels: Tensor, num_classes: int) -> Dict[str, Tensor]:
    pos = labels < num_classes
    obj_labels = (labels == num_classes).long()
    return {
        "acc_objectness": accuracy(cls_score[..., -2:], obj_labels),
        "acc_classes": accuracy(cls_score[..., :-2][pos], labels[pos]),
    }


# --------------------------------------------------------------------------- cross-entropy
def mixed_cross_entropy(logits: Tensor, labels_a: Tensor, labels_b: Tensor, lam: Tensor,
                        label_weights: Optional[Tensor] = None, ignore_index: int = -100,
                        reduction: str = "mean", avg_factor=None) -> Tensor:
    """LossMix cross-entropy, ``λ·CE(y_a) + (1−λ)·CE(y_b)`` per row.

    Each label set is reduced as a single-label loss would be and the two are added:
    ``mean`` divides set s's weighted sum by its count of non-ignored rows (as
    ``F.cross_entropy`` does), so a scalar λ gives exactly
    ``λ·F.cross_entropy(x, y_a) + (1−λ)·F.cross_entropy(x, y_b)``. With ``avg_factor`` both
    sets divide by ``avg_factor + float32 eps``; ``none`` returns the (N,) rows.
    """
    lam = lam.to(logits.dtype)
    w = torch.ones_like(lam) if label_weights is None else label_weights.to(logits.dtype)
    total = None
    for labels, lw in ((labels_a, lam), (labels_b, 1 - lam)):
        valid = labels != ignore_index
        # An ignored row's logits are not read (0 gradient even when they are NaN; plain
        # F.cross_entropy(ignore_index=...) gives such a row a NaN gradient).
        ce = F.cross_entropy(torch.where(valid[:, None], logits, 0), torch.where(valid, labels, 0).long(),
                             reduction="none")
        rows = torch.where(valid, ce * lw * w, torch.zeros_like(ce))
        if reduction == "none":
            part = rows
        elif reduction == "sum":
            part = rows.sum()
        elif avg_factor is not None:
            part = rows.sum() / (avg_factor + F32_EPS)
        else:
            part = rows.sum() / valid.sum()
        total = part if total is None else total + part
    return total


# --------------------------------------------------------------------------- LossMix
def cutmix_mask(boxes: Tensor, height: int, width: int) -> Tensor:
    """(B, H, W) bool: True inside each sample's half-open box (y0, x0, y1, x1)."""
    ys = torch.arange(height, device=boxes.device).view(1, -1, 1)
    xs = torch.arange(width, device=boxes.device).view(1, 1, -1)
    y0, x0, y1, x1 = (boxes[:, i].view(-1, 1, 1) for i in range(4))
    return (ys >= y0) & (ys < y1) & (xs >= x0) & (xs < x1)


def mix_images(images: Tensor, lam: Tensor, index: Tensor, boxes: Optional[Tensor] = None,
               mean: Optional[Tensor] = None, std: Optional[Tensor] = None, scale: float = 1.0,
               out_dtype: Optional[torch.dtype] = None) -> Tensor:
    """Mixup / CutMix of a batch: with ``v(x) = (x·scale − mean[c]) / std[c]``,
    ``out[b] = λ[b]·v(x[b]) + (1−λ[b])·v(x[index[b]])``, except inside CutMix box b where
    ``out[b] = v(x[index[b]])``. Maths in float32 (float64 for float64 images)."""
    if out_dtype is None:
        out_dtype = images.dtype if images.dtype.is_floating_point else torch.float32
    opmath = torch.float64 if images.dtype == torch.float64 else torch.float32
    x = images.to(opmath) * scale
    if mean is not None or std is not None:
        chan = (1, -1) + (1,) * (images.dim() - 2)
        if mean is not None:
            x = x - mean.to(opmath).view(chan)
        if std is not None:
            x = x / std.to(opmath).view(chan)
    partner = x[index.long()]
    lam = lam.to(opmath).view(-1, *([1] * (images.dim() - 1)))
    out = lam * x + (1 - lam) * partner
    if boxes is not None:
        inside = cutmix_mask(boxes, images.shape[-2], images.shape[-1]).unsqueeze(1)
        out = torch.where(inside, partner, out)
    return out.to(out_dtype)


def lossmix_reduce(loss_a: Tensor, loss_b: Tensor, lam: Tensor, weights: Optional[Tensor] = None,
                   reduction: str = "mean", avg_factor=None) -> Tensor:
    """Per-sample ``λ·loss_a + (1−λ)·loss_b`` (λ broadcast over trailing dims), weighted, reduced."""
    lam = lam.to(loss_a.dtype).view(-1, *([1] * (loss_a.dim() - 1)))
    loss = lam * loss_a + (1 - lam) * loss_b
    return weight_reduce_loss(loss, weights, reduction, avg_factor)
