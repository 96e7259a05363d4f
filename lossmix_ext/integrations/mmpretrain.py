"""mmpretrain 1.x plug-in: mmpretrain's classification ``SeesawLoss`` backed by the fused op.

:class:`SeesawLoss` has the contract of ``mmpretrain.models.losses.SeesawLoss`` (1.2): the same
constructor (``use_sigmoid``, ``p``, ``q``, ``num_classes``, ``eps``, ``reduction``,
``loss_weight``), ``forward(cls_score, labels, weight=None, avg_factor=None,
reduction_override=None)``, a ``cum_samples`` buffer of C float32 counts (no background entry,
same state-dict key and shape), C class logits (no objectness columns), counts added before the
loss, ``mean`` over the N rows or ``sum / avg_factor`` (no eps, unlike mmdetection), times
``loss_weight``. It adds the LossMix form ``forward(..., labels_b=..., lam=...)`` — also read
from the soft targets of mmpretrain's Mixup / CutMix batch augments when ``labels`` are those
scores, so that a config with ``train_cfg=dict(augments=[dict(type="Mixup", ...),
dict(type="CutMix", ...)])`` and ``loss=dict(type="SeesawLoss", ...)`` trains LossMix + Seesaw as
it is — and the library's ``backend``, ``inplace_grad`` and ``sync_counts`` options.

It works without mmpretrain. When mmpretrain is importable, importing this module registers the
class in ``mmpretrain.registry.MODELS`` under ``"SeesawLoss"`` (replacing mmpretrain's own
class, so existing configs use it unchanged) and ``"FusedSeesawLoss"``; in a config::

    custom_imports = dict(imports=["lossmix_ext.integrations.mmpretrain"], allow_failed_imports=False)

:func:`register` does the same explicitly and raises :class:`ImportError` without mmpretrain.
"""
from __future__ import annotations

import importlib
import importlib.util
import warnings
from typing import Optional, Tuple

import torch
from torch import Tensor

from .. import _ops
from .. import _validation as V
from ..functional import _avg_factor, _lossmix_pair_args, _seesaw_backend, seesaw_loss, seesaw_loss_mixed
from ._registry import register_names
from ..seesaw import Float32Counts

__all__ = ["SeesawLoss", "mixed_score_labels", "register", "mmpretrain_models_status", "NAMES", "REGISTERED"]

#: The names under which :func:`register` puts :class:`SeesawLoss` in ``mmpretrain.registry.MODELS``.
NAMES: Tuple[str, ...] = ("SeesawLoss", "FusedSeesawLoss")

_INSTALL = 'pip install "mmpretrain>=1.0,<2" "mmengine>=0.8.3,<1" "mmcv>=2.0.0,<2.4.0"'

_models_status: Optional[str] = None


class SeesawLoss(Float32Counts):
    """Seesaw loss for long-tailed classification (Wang et al., CVPR 2021), mmpretrain's contract.

    ``cls_score`` (N, C) class logits, ``labels`` (N,) class indices in [0, C) (int64 or
    int32), ``weight`` (N,) per-sample weights. Before each loss the batch's labels are added to
    ``cum_samples`` (C float32 counts), on device, also under ``no_grad`` and in eval mode.
    ``reduction``: ``"mean"`` (weighted sum / N, or weighted sum / ``avg_factor`` when given),
    ``"sum"`` (``avg_factor`` is then an error) or ``"none"`` ((N,) weighted rows; ``avg_factor``
    ignored); the result is multiplied by ``loss_weight``.

    LossMix: ``forward(cls_score, labels, labels_b=labels[index], lam=lam)`` (λ a number, 0-d or
    (N,) in [0, 1]) counts both label sets and returns ``λ``-weighted loss on ``labels`` plus
    ``(1 − λ)``-weighted loss on ``labels_b``, each reduced as above.

    Mixed scores: ``labels`` may also be the (N, C) soft targets of mmpretrain's Mixup / CutMix
    batch augments (the ``gt_score`` that ``ClsHead`` passes when a config has
    ``train_cfg=dict(augments=...)``). Each row mixes at most two classes, which give
    ``labels``, ``labels_b`` and λ (:func:`mixed_score_labels`): the LossMix form above, with
    both classes of every row counted (a one-class row — an unmixed batch, or a partner of the
    same class — counts its class twice, so that every sample adds two counts). Other soft
    targets raise a ``ValueError`` naming ``labels``.

    Differences from mmpretrain's class, all deliberate: soft targets are read as above
    (mmpretrain fails its label-shape assertion on any); ``weight`` must be
    (N,) (any dtype, as mmpretrain's ``weight.float()``); a failed call leaves ``cum_samples``
    unchanged (mmpretrain counts before it checks the reduction); a batch of N = 0 gives 0 with
    ``mean`` (mmpretrain: NaN); ``cum_samples`` stays float32 through ``.half()`` /
    ``.bfloat16()`` (a float16 count stops growing at 2048); ``sync_counts=True`` sums each
    batch's histogram over the ranks of the default process group before adding it
    (mmpretrain keeps per-rank counts, the default here too).
    """

    def __init__(self, use_sigmoid: bool = False, p: float = 0.8, q: float = 2.0, num_classes: int = 1000,
                 eps: float = 1e-2, reduction: str = "mean", loss_weight: float = 1.0, *,
                 backend: Optional[str] = None, inplace_grad: bool = False, sync_counts: bool = False) -> None:
        super().__init__()
        V.assert_arg(not use_sigmoid, "`use_sigmoid` is not supported")
        if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
        V.seesaw_params(p, q, eps)
        V.reduction(reduction)
        V.real_arg(loss_weight, "loss_weight")
        for name, flag in (("inplace_grad", inplace_grad), ("sync_counts", sync_counts)):
            if not isinstance(flag, bool):
                raise TypeError(f"{name} must be True or False, got {type(flag).__name__}")
        self.use_sigmoid = False
        self.p, self.q, self.eps = p, q, eps
        self.num_classes = num_classes
        self.reduction = reduction
        self.loss_weight = loss_weight
        self.backend = backend
        self.inplace_grad = inplace_grad
        self.sync_counts = sync_counts
        self.register_buffer("cum_samples", torch.zeros(num_classes, dtype=torch.float))

    def extra_repr(self) -> str:
        return (f"num_classes={self.num_classes}, p={self.p}, q={self.q}, eps={self.eps}, "
                f"reduction={self.reduction!r}, loss_weight={self.loss_weight}")

    def forward(self, cls_score: Tensor, labels: Tensor, weight: Optional[Tensor] = None, avg_factor=None,
                reduction_override: Optional[str] = None, labels_b: Optional[Tensor] = None, lam=None) -> Tensor:
        if reduction_override not in (None, "none", "mean", "sum"):
            V.assert_arg(False, f'The `reduction_override` should be one of (None, "none", "mean", "sum"), '
                                f'but got {reduction_override!r}')
        reduction = reduction_override if reduction_override else self.reduction
        V.float_tensor(cls_score, "cls_score", ndim=2)
        n, c = cls_score.shape
        dev = cls_score.device
        V.tensor(labels, "labels")
        if labels.is_floating_point():  # gt_score of mmpretrain's Mixup / CutMix: its LossMix form
            if labels_b is not None or lam is not None:
                raise ValueError("labels are scores (N, C) here, which give labels_b and lam themselves: "
                                 "pass class indices with labels_b and lam, or the scores alone")
            labels, labels_b, lam = mixed_score_labels(labels, n, c, dev)
        if labels.numel() != n:
            V.assert_arg(False, f"Expected `labels` shape [{n}], but got {list(labels.shape)}")
        if c != self.num_classes:
            V.assert_arg(False, f"The channel number of output ({c}) does not match the `num_classes` of "
                                f"seesaw loss ({self.num_classes}).")
        V.index_tensor(labels, "labels", n, dev)
        counts = self.cum_samples
        if counts.device != dev:
            raise ValueError(f"the loss's cum_samples buffer is on {counts.device} but cls_score is on {dev}; "
                             f"move the module with .to(device)")
        if weight is not None:
            V.tensor(weight, "weight")
            weight = weight.float()  # as mmpretrain (any dtype; float32 rows)
            V.row_vector(weight, "weight", n, dev)
        V.reduction(reduction, avg_factor if reduction != "none" else None)
        if reduction == "none":
            avg_factor = None  # ignored, as mmpretrain's weight_reduce_loss does
        _avg_factor(avg_factor, dev)
        _lossmix_pair_args(labels_b, lam, n, dev)  # λ checked before the counts change
        _seesaw_backend(cls_score, self.backend, self.inplace_grad)  # backend / inplace_grad errors, likewise
        self._count(labels, labels_b, counts)

        op_reduction = "sum" if avg_factor is not None else reduction
        kw = dict(p=self.p, q=self.q, eps=self.eps, label_weights=weight, reduction=op_reduction,
                  backend=self.backend, inplace_grad=self.inplace_grad)
        if labels_b is None:
            loss = seesaw_loss(cls_score, labels, counts, **kw)
        else:
            loss = seesaw_loss_mixed(cls_score, labels, labels_b, lam, counts, **kw)
        if avg_factor is not None:
            loss = loss / avg_factor  # mmpretrain: sum / avg_factor, without mmdetection's eps
        if self.loss_weight != 1:
            loss = self.loss_weight * loss
        return loss

    def _count(self, labels: Tensor, labels_b: Optional[Tensor], counts: Tensor) -> None:
        """Add the labels (both sets for LossMix) to ``counts``; every check (label range of both
        sets, finite counts when p > 0) runs before the buffer changes. With ``sync_counts`` and
        an initialised default process group, the histogram is summed over the ranks first."""
        if self.p > 0:
            V.finite(counts, "cum_samples")
        if labels_b is not None:
            V.labels_in_range(labels_b, "labels_b", self.num_classes)
        sets = (labels,) if labels_b is None else (labels, labels_b)
        if self.sync_counts and torch.distributed.is_available() and torch.distributed.is_initialized():
            hist = torch.zeros_like(counts)
            for lab in sets:
                _ops.count_labels_(hist, lab)
            torch.distributed.all_reduce(hist)
            counts.add_(hist)
        else:
            for lab in sets:  # count_labels_ checks `labels` before it adds
                _ops.count_labels_(counts, lab)


def mixed_score_labels(scores: Tensor, n: int, num_classes: int, device) -> Tuple[Tensor, Tensor, Tensor]:
    """``(labels, labels_b, lam)`` of soft targets that mix at most two classes per row, as
    mmpretrain's Mixup / CutMix batch augments make them (``λ·onehot(y) + (1−λ)·onehot(y[index])``,
    the data samples' ``gt_score``): per row the class of the largest score, the class of the
    second (the first again where the row holds one class) and λ = s₁ / (s₁ + s₂). The LossMix
    loss ``λ·L(labels) + (1−λ)·L(labels_b)`` is then the scores' weighted sum of the two
    classes' losses. Rows must be non-negative, sum to 1 (within 1e-3) and have at most two
    non-zero entries (a value check: ``ValueError`` naming ``labels`` on CPU tensors, a device-side
    assert on a GPU in the default validation mode)."""
    if scores.dim() != 2 or scores.shape[0] != n:
        raise ValueError(f"labels must be class indices ({n},) or scores ({n}, {num_classes}), got "
                         f"{scores.dtype} {tuple(scores.shape)}")
    if scores.shape[1] != num_classes:
        V.assert_arg(False, f"The channel number of the labels' scores ({scores.shape[1]}) does not match the "
                            f"`num_classes` of seesaw loss ({num_classes}).")
    V.same_device(scores, "labels", device)
    s = scores.float()
    top_v, top_i = s.topk(min(2, num_classes), dim=1)
    first, labels = top_v[:, 0], top_i[:, 0]
    if num_classes > 1:
        second = top_v[:, 1]
        labels_b = torch.where(second > 0, top_i[:, 1], labels)
    else:
        second, labels_b = torch.zeros_like(first), labels
    if n:
        bad = (s < 0).any() | ((s != 0).sum(1) > 2).any() | ((first + second - 1).abs() > 1e-3).any()
        V._check(bad, "labels given as scores (N, C) must mix at most two classes per row, with non-negative "
                      "scores summing to 1 (mmpretrain's Mixup / CutMix gt_score); Seesaw loss has no other "
                      "soft-label form")
    lam = first / (first + second).clamp(min=torch.finfo(torch.float32).tiny)
    return labels, labels_b, lam


def _registry():
    """``mmpretrain.registry.MODELS``, or an ImportError naming what to install."""
    try:
        registry = importlib.import_module("mmpretrain.registry")
    except Exception as exc:  # missing mmpretrain, mmcv, mmengine or a pure-Python dependency; version asserts
        raise ImportError(
            f"registering lossmix_ext's SeesawLoss needs mmpretrain 1.x, which could not be imported "
            f"({type(exc).__name__}: {exc}); install it with: {_INSTALL}", name="mmpretrain") from exc
    return registry.MODELS


def mmpretrain_models_status() -> str:
    """``"imported"`` when ``mmpretrain.models`` imported at the last :func:`register`, else the
    reason it did not (until it does, mmengine's registry cannot build mmpretrain models)."""
    return _models_status if _models_status is not None else "not tried (mmpretrain could not be imported)"


def register(force: bool = True) -> Tuple[str, ...]:
    """Register :class:`SeesawLoss` in ``mmpretrain.registry.MODELS``; return the names under
    which the registry now builds it.

    ``mmpretrain.models`` is imported first (registering mmpretrain's own ``SeesawLoss``, which
    would otherwise fail on the taken name when imported later). ``force=True`` takes both
    :data:`NAMES`, replacing mmpretrain's class; ``force=False`` only the free ones. Idempotent.
    Raises :class:`ImportError` when mmpretrain cannot be imported.
    """
    global _models_status
    if not isinstance(force, bool):  # before any framework import
        raise TypeError(f"force must be True or False, got {type(force).__name__}")
    registry = _registry()
    try:
        importlib.import_module("mmpretrain.models")
    except Exception as exc:  # e.g. a torchvision build that does not match torch: RuntimeError
        _models_status = f"{type(exc).__name__}: {exc}"
        warnings.warn(
            f"lossmix_ext.integrations.mmpretrain: 'mmpretrain.models' could not be imported ({_models_status}), so "
            f"mmpretrain's registry cannot build models; SeesawLoss is registered all the same", stacklevel=2)
    else:
        _models_status = "imported"
    return register_names(registry, SeesawLoss, NAMES, force)


def _register_if_installed() -> Tuple[str, ...]:
    try:
        installed = importlib.util.find_spec("mmpretrain") is not None
    except (ImportError, ValueError):
        installed = False
    if not installed:
        return ()
    try:
        return register()
    except ImportError as exc:
        warnings.warn(f"lossmix_ext.integrations.mmpretrain: mmpretrain is installed but could not be imported, "
                      f"so SeesawLoss was not registered: {exc}", stacklevel=2)
        return ()


#: The names registered when this module was imported (empty without mmpretrain).
REGISTERED: Tuple[str, ...] = _register_if_installed()
