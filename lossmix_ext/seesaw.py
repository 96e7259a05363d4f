"""``SeesawLoss``: a drop-in for mmdetection's ``SeesawLoss`` (2.13–3.3) backed by the fused op."""
from __future__ import annotations

from typing import Dict, Optional, Union

import torch
from torch import Tensor, nn

from . import _ops, _reference
from . import _validation as V
from .functional import _seesaw_module_prepare


class Float32Counts(nn.Module):
    """A module whose ``cum_samples`` buffer stays float32 through conversions to a half type
    (``.half()``, ``.bfloat16()``, ``.to(torch.float16)``, mixed-precision wrappers): a float16
    count stops growing at 2048 (bfloat16 at 256). Devices still move; ``.double()`` still gives
    float64 (exact as well)."""

    def _apply(self, fn, recurse=True):
        counts = self.cum_samples
        out = super()._apply(fn, recurse)
        moved = self.cum_samples
        if moved.dtype in (torch.float16, torch.bfloat16):
            self.cum_samples = counts.to(device=moved.device, dtype=torch.float32)
        return out


class SeesawLoss(Float32Counts):
    """Seesaw loss for long-tailed instance segmentation / detection (Wang et al., CVPR 2021).

    Same constructor, buffer, flags and methods as mmdetection's class. ``cls_score`` has
    ``num_classes + 2`` columns: C class logits then [foreground, background] objectness.
    ``labels`` lie in [0, C], C meaning background. Before each loss, ``cum_samples`` (C+1
    float32 entries, background last) counts the batch's labels, on device, also under
    ``no_grad`` and in eval mode.

    LossMix: ``forward(..., labels_b=..., lam=...)`` counts *both* label sets (every mixed
    image shows the instances of both) and returns, for each part,
    ``loss(labels, weights λ) + loss(labels_b, weights 1−λ)``, each set reduced as the
    single-set loss would be (class ``mean`` over that set's positives).

    ``backend`` picks the kernel backend (default: automatic); ``inplace_grad=True`` stores the
    gradient over ``cls_score`` (see :func:`lossmix_ext.seesaw_loss`).
    """

    def __init__(self, use_sigmoid: bool = False, p: float = 0.8, q: float = 2.0, num_classes: int = 1203,
                 eps: float = 1e-2, reduction: str = "mean", loss_weight: float = 1.0, return_dict: bool = True,
                 backend: Optional[str] = None, inplace_grad: bool = False, sync_counts: bool = False) -> None:
        super().__init__()
        V.assert_arg(not use_sigmoid, "SeesawLoss is a softmax loss: use_sigmoid must be False")
        if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive int (the number of classes, background excluded), "
                             f"got {num_classes!r}")
        V.seesaw_params(p, q, eps)
        V.reduction(reduction)
        if not isinstance(sync_counts, bool):
            raise TypeError(f"sync_counts must be a bool, got {type(sync_counts).__name__}")
        self.use_sigmoid = False
        self.p, self.q, self.eps = p, q, eps
        self.num_classes = num_classes
        self.reduction = reduction
        self.loss_weight = loss_weight
        self.return_dict = return_dict
        self.backend = backend
        self.inplace_grad = inplace_grad
        self.sync_counts = sync_counts
        self.register_buffer("cum_samples", torch.zeros(num_classes + 1, dtype=torch.float))
        self.custom_cls_channels = True
        self.custom_activation = True
        self.custom_accuracy = True

    def extra_repr(self) -> str:
        return (f"num_classes={self.num_classes}, p={self.p}, q={self.q}, eps={self.eps}, "
                f"reduction={self.reduction!r}, loss_weight={self.loss_weight}, return_dict={self.return_dict}")

    def get_cls_channels(self, num_classes: int) -> int:
        V.assert_arg(num_classes == self.num_classes,
                     f"num_classes {num_classes} differs from the loss's num_classes={self.num_classes}")
        return num_classes + 2

    def _check_scores(self, cls_score: Tensor) -> None:
        V.float_tensor(cls_score, "cls_score")
        if cls_score.dim() < 1:
            raise ValueError("cls_score must have a class dimension, got a 0-d tensor")
        if cls_score.shape[-1] != self.num_classes + 2:  # the message is built only when it is raised
            V.assert_arg(False, f"cls_score must have num_classes + 2 = {self.num_classes + 2} columns (classes, "
                                f"then [foreground, background] objectness), got {cls_score.shape[-1]}")

    def get_activation(self, cls_score: Tensor) -> Tensor:
        """(N, C+1) scores: class softmax × P(foreground), then P(background)."""
        self._check_scores(cls_score)
        return _reference.seesaw_activation(cls_score)

    def get_accuracy(self, cls_score: Tensor, labels: Tensor) -> Dict[str, Tensor]:
        """``{'acc_objectness', 'acc_classes'}`` top-1 accuracy in percent (classes on positives only)."""
        self._check_scores(cls_score)
        if cls_score.dim() != 2:
            raise ValueError(f"cls_score must be 2-D (N, num_classes + 2), got shape {tuple(cls_score.shape)}")
        V.index_tensor(labels, "labels", cls_score.shape[0], cls_score.device)
        return _reference.seesaw_accuracy(cls_score, labels, self.num_classes)

    def forward(self, cls_score: Tensor, labels: Tensor, label_weights: Optional[Tensor] = None,
                avg_factor=None, reduction_override: Optional[str] = None, labels_b: Optional[Tensor] = None,
                lam=None) -> Union[Tensor, Dict[str, Tensor]]:
        if reduction_override not in (None, "none", "mean", "sum"):
            V.assert_arg(False, f"reduction_override must be None, 'none', 'mean' or 'sum', got {reduction_override!r}")
        reduction = reduction_override if reduction_override else self.reduction
        self._check_scores(cls_score)
        counts = self.cum_samples  # (a buffer: one nn.Module attribute lookup, not three)
        if counts.device != cls_score.device:
            raise ValueError(f"the loss's cum_samples buffer is on {counts.device} but cls_score is on "
                             f"{cls_score.device}; move the module with .to(device)")
        # Every check that can fail runs before the buffer is touched: the argument checks and the
        # backend here, the label range and finite counts in `_count` before it adds; `run` then
        # only computes.
        run = _seesaw_module_prepare(
            cls_score, labels, counts, self.num_classes, self.p, self.q, self.eps, label_weights,
            reduction, avg_factor, self.loss_weight, labels_b, lam, self.backend, self.inplace_grad)
        self._count(labels, labels_b, counts)  # not differentiable: no graph is built, no need for no_grad
        loss_obj, loss_cls = run()
        if self.return_dict:
            return {"loss_cls_objectness": loss_obj, "loss_cls_classes": loss_cls}
        return loss_cls + loss_obj

    def _count(self, labels: Tensor, labels_b: Optional[Tensor] = None, counts: Optional[Tensor] = None) -> None:
        """Check the label values (and, with p > 0, that the counts are finite), then add the
        batch's label histogram (both sets) to ``cum_samples``; with ``sync_counts`` and an
        initialised default process group, the histogram summed over all ranks (one all-reduce
        of C+1 floats on the device, no host sync). Nothing changes when a check fails."""
        if counts is None:
            counts = self.cum_samples
        if self.sync_counts and _dist_ready():
            if self.p > 0:
                V.finite(counts, "cum_samples")
            hist = torch.zeros_like(counts)
            _ops.seesaw_count_(hist, labels, labels_b, False)
            torch.distributed.all_reduce(hist)
            counts.add_(hist)
        else:
            plain = type(counts) is torch.Tensor and type(labels) is torch.Tensor and not torch.compiler.is_compiling()
            count = _ops.seesaw_count_eager if plain else _ops.seesaw_count_
            count(counts, labels, labels_b, self.p > 0)


def _dist_ready() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()
