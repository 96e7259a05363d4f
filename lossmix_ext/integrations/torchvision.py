"""torchvision detection plug-in: LossMix and the Seesaw loss inside torchvision's Faster / Mask R-CNN.

* :func:`lossmix_detection_losses` — LossMix for a ``GeneralizedRCNN`` in train mode: the
  backbone and the RPN head run once on the mixed images; each target set (``targets`` and
  ``targets[index]``) is assigned and sampled by the model's own RPN and RoI heads; the box
  (and mask) heads run once per set; every loss term is λ-interpolated.
* :func:`seesaw_fast_rcnn` — converts a Faster / Mask R-CNN box predictor, in place, to
  mmdetection's Seesaw layout (C+2 outputs from a :class:`NormedLinear`, the fused
  :class:`lossmix_ext.SeesawLoss` with its counts in the model's state dict, mmdetection's
  ``get_activation`` scores at inference).
* :func:`mix_detection_batch` — :func:`lossmix_ext.mix_detection` for torchvision's batch
  format (a list of images, a list of target dicts).

Label mapping (torchvision ↔ mmdetection's Seesaw). torchvision labels a box 1..C and uses 0
for background; mmdetection's Seesaw labels classes 0..C−1 and C = background, with logits
``[class 1 … class C, foreground, background]``. A torchvision label ``t`` becomes ``t − 1``
for ``t >= 1`` and ``C`` for ``t = 0``; the counts buffer ``cum_samples`` (C+1) is in
mmdetection's order (torchvision class ``k`` at ``k − 1``, background last). At inference the
predictor returns ``log`` of mmdetection's ``get_activation`` reordered to torchvision's
columns ``[background, class 1 … class C]``: ``P(bg)`` and ``softmax(classes) · P(fg)``, which
sum to 1, so torchvision's own ``softmax`` in ``postprocess_detections`` gives exactly those
scores and labels 1..C.

torchvision internals relied on (always through the model's own objects, so customised
sub-modules, samplers, matchers and box coders are used): ``model.transform``,
``model.backbone``; ``model.rpn``'s ``head``, ``anchor_generator``, ``box_coder``,
``filter_proposals``, ``assign_targets_to_anchors``, ``fg_bg_sampler`` and the module
function ``torchvision.models.detection.rpn.concat_box_prediction_layers``; ``model.roi_heads``'
``select_training_samples``, ``box_roi_pool``, ``box_head``, ``box_predictor``, ``has_mask()``,
``mask_roi_pool``, ``mask_head``, ``mask_predictor``. The four / five loss formulas are those
of torchvision's ``RegionProposalNetwork.compute_loss``, ``fastrcnn_loss`` and
``maskrcnn_loss`` with per-row weights (mask targets from the public ``torchvision.ops.roi_align``
as in ``project_masks_on_boxes``). ``python_tests/test_integration_torchvision.py`` checks the
results against the model's own ``model(images, targets)``.

torchvision is imported when this module is (never by ``import lossmix_ext``); a missing
torchvision, or one whose compiled ops (``nms``, ``roi_align``) do not load next to the
installed torch, raises an :class:`ImportError` that says so.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from numbers import Integral, Real
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import _validation as V
from ..mix import MixPlan, mix_detection
from ..seesaw import SeesawLoss
from .normed import NormedConv2d, NormedLinear

_INSTALL = ("pip install torchvision (the build made for the installed torch: e.g. torch 2.14.1 with "
            "torchvision 0.29.1, from the same index)")

try:
    import torchvision
    from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN
    from torchvision.models.detection.roi_heads import RoIHeads
    from torchvision.models.detection.rpn import RegionProposalNetwork, concat_box_prediction_layers
    from torchvision.ops import nms as _nms
    from torchvision.ops import roi_align
except ImportError as _exc:
    raise ImportError(f"lossmix_ext.integrations.torchvision needs torchvision, which could not be imported "
                      f"({type(_exc).__name__}: {_exc}); install it with: {_INSTALL}", name="torchvision") from _exc
except RuntimeError as _exc:  # e.g. "operator torchvision::nms does not exist": a build for another torch
    raise ImportError(f"lossmix_ext.integrations.torchvision: torchvision's compiled ops do not load next to "
                      f"torch {torch.__version__} ({_exc}); install the matching build: {_INSTALL}",
                      name="torchvision") from _exc


def _ops_status() -> str:
    """"ok", or why torchvision's compiled detection ops (nms, roi_align) cannot run."""
    try:
        _nms(torch.zeros((0, 4)), torch.zeros((0,)), 0.5)
        roi_align(torch.zeros((1, 1, 2, 2)), torch.zeros((0, 5)), (1, 1))
    except Exception as exc:  # schemas declared without kernels, or a broken build
        return f"{type(exc).__name__}: {exc}"
    return "ok"


_OPS = _ops_status()
if _OPS != "ok":
    raise ImportError(f"lossmix_ext.integrations.torchvision: torchvision {torchvision.__version__} imported but its "
                      f"compiled ops do not run next to torch {torch.__version__} ({_OPS}); install the matching "
                      f"build: {_INSTALL}", name="torchvision")

__all__ = ["lossmix_detection_losses", "seesaw_fast_rcnn", "SeesawFastRCNNPredictor", "SeesawRoIHeads",
           "mix_detection_batch", "DetectionBatch", "NormedLinear", "NormedConv2d", "seesaw_labels"]

_F32_EPS = torch.finfo(torch.float32).eps
_SMOOTH_L1_BETA = 1.0 / 9.0  # torchvision's RPN and Fast R-CNN box losses

Weight = Union[float, Tensor]  # a set's weight: a number, or one per image (B,)


# --------------------------------------------------------------------------- labels
def seesaw_labels(labels: Tensor, num_classes: int) -> Tensor:
    """torchvision labels (0 = background, 1..C) → mmdetection's Seesaw labels (0..C−1, C = background)."""
    return torch.where(labels == 0, torch.full_like(labels, num_classes), labels - 1)


# --------------------------------------------------------------------------- Seesaw predictor
class SeesawFastRCNNPredictor(nn.Module):
    """A Fast R-CNN box predictor in mmdetection's Seesaw layout.

    * ``cls_score``: C+2 outputs — C classes (torchvision class k in column k−1), then
      [foreground, background] objectness; a :class:`NormedLinear` (``normed=True``, the Seesaw
      recipe) or an ``nn.Linear`` initialised N(0, 0.01²), bias 0 (mmdetection's ``fc_cls``).
    * ``bbox_pred``: torchvision's class-specific regression, (C+1)·4 outputs (slot 0 unused).
    * ``loss_cls``: a :class:`lossmix_ext.SeesawLoss` (fused op) whose ``cum_samples`` buffer
      (C+1 float32, mmdetection's order) is part of the model's state dict.

    ``forward(x)`` returns ``(scores, box_regression)``: in train mode the raw (N, C+2) logits;
    in eval mode (N, C+1) log-probabilities in torchvision's column order
    (:meth:`log_scores`), so torchvision's ``softmax`` gives mmdetection's ``get_activation``.
    """

    def __init__(self, in_channels: int, num_classes: int, *, p: float = 0.8, q: float = 2.0, eps: float = 1e-2,
                 normed: bool = True, temperature: float = 20.0, power: float = 1.0, norm_eps: float = 1e-6,
                 loss_weight: float = 1.0, sync_counts: bool = False, backend: Optional[str] = None,
                 bbox_pred: Optional[nn.Module] = None) -> None:
        super().__init__()
        if not isinstance(in_channels, Integral) or isinstance(in_channels, bool) or in_channels < 1:
            raise ValueError(f"in_channels must be a positive int, got {in_channels!r}")
        if not isinstance(normed, bool):
            raise TypeError(f"normed must be True or False, got {type(normed).__name__}")
        V.real_arg(loss_weight, "loss_weight")
        V.backend_arg(backend)
        # SeesawLoss checks num_classes, p, q, eps and sync_counts; NormedLinear its own arguments
        loss = SeesawLoss(p=p, q=q, num_classes=num_classes, eps=eps, loss_weight=float(loss_weight),
                          backend=backend, sync_counts=sync_counts)
        if normed:
            cls = NormedLinear(in_channels, num_classes + 2, temperature=temperature, power=power, eps=norm_eps)
        else:
            cls = nn.Linear(in_channels, num_classes + 2)
            nn.init.normal_(cls.weight, mean=0, std=0.01)
            nn.init.constant_(cls.bias, 0)
        self.num_classes = int(num_classes)
        self.cls_score = cls
        self.bbox_pred = bbox_pred if bbox_pred is not None else nn.Linear(in_channels, (num_classes + 1) * 4)
        self.loss_cls = loss

    def forward(self, x: Tensor) -> Tuple[Tensor, Tensor]:
        if x.dim() == 4:
            torch._assert(list(x.shape[2:]) == [1, 1],
                          f"x has the wrong shape, expecting the last two dimensions to be [1,1] instead of "
                          f"{list(x.shape[2:])}")
        x = x.flatten(start_dim=1)
        scores = self.cls_score(x)
        deltas = self.bbox_pred(x)
        if self.training:
            return scores, deltas
        return self.log_scores(scores), deltas

    def log_scores(self, cls_score: Tensor) -> Tensor:
        """(N, C+1) ``log`` of mmdetection's ``get_activation`` in torchvision's column order:
        ``[log P(bg), log softmax(classes)_k + log P(fg)]`` (computed in log space)."""
        c = self.num_classes
        obj = F.log_softmax(cls_score[..., c:], dim=-1)
        classes = F.log_softmax(cls_score[..., :c], dim=-1) + obj[..., :1]
        return torch.cat([obj[..., 1:], classes], dim=-1)

    def scores(self, cls_score: Tensor) -> Tensor:
        """(N, C+1) mmdetection's ``get_activation`` in torchvision's order: ``[P(bg), P(class k)]``."""
        act = self.loss_cls.get_activation(cls_score)
        return torch.cat([act[..., -1:], act[..., :-1]], dim=-1)

    def loss(self, cls_score: Tensor, labels: Tensor, weights: Tensor) -> Dict[str, Tensor]:
        """The Seesaw loss of ``cls_score`` (N, C+2) against torchvision ``labels`` (N,) in [0, C]:
        ``{'loss_cls_objectness', 'loss_cls_classes'}``, each ``Σ weights · loss`` (the module
        with ``reduction="sum"``, ``label_weights=weights``); the counts are updated first."""
        return self.loss_cls(cls_score, seesaw_labels(labels, self.num_classes), label_weights=weights,
                             reduction_override="sum")


class _SeesawRoIHeadsMixin:
    """RoI heads whose training losses come from :func:`_roi_losses` (so a Seesaw predictor
    gets its loss); inference is torchvision's own ``forward``."""

    def forward(self, features, proposals, image_shapes, targets=None):
        if not self.training:
            return super().forward(features, proposals, image_shapes, targets)
        if targets is None:
            raise ValueError("targets should not be None")
        for i, t in enumerate(targets):  # torchvision's checks, then the label range
            if t["boxes"].dtype not in (torch.float, torch.double, torch.half):
                raise TypeError(f"target boxes must of float type, instead got {t['boxes'].dtype}")
            if t["labels"].dtype != torch.int64:
                raise TypeError(f"target labels must of int64 type, instead got {t['labels'].dtype}")
        _check_label_range(targets, _num_classes(self), "targets")
        samples = [self.select_training_samples(proposals, targets) + (targets, 1.0)]
        return [], _roi_losses(self, features, image_shapes, samples)


class SeesawRoIHeads(_SeesawRoIHeadsMixin, RoIHeads):
    """torchvision's ``RoIHeads`` with the Seesaw training loss (what :func:`seesaw_fast_rcnn`
    turns a plain ``RoIHeads`` into: same attributes and state dict)."""


_SEESAW_CLASSES: Dict[type, type] = {RoIHeads: SeesawRoIHeads}


def _seesaw_class(cls: type) -> type:
    if issubclass(cls, _SeesawRoIHeadsMixin):
        return cls
    if cls not in _SEESAW_CLASSES:  # a user's RoIHeads subclass: its methods stay, forward's training path is ours
        _SEESAW_CLASSES[cls] = type(f"Seesaw{cls.__name__}", (_SeesawRoIHeadsMixin, cls),
                                    {"__module__": __name__, "__doc__": SeesawRoIHeads.__doc__})
    return _SEESAW_CLASSES[cls]


def seesaw_fast_rcnn(model: nn.Module, p: float = 0.8, q: float = 2.0, eps: float = 1e-2, *, normed: bool = True,
                     temperature: float = 20.0, power: float = 1.0, norm_eps: float = 1e-6, normed_mask: bool = False,
                     loss_weight: float = 1.0, sync_counts: bool = False, backend: Optional[str] = None) -> nn.Module:
    """Convert a Faster / Mask R-CNN's box predictor, in place, to mmdetection's Seesaw layout; return ``model``.

    * ``model.roi_heads.box_predictor`` becomes a :class:`SeesawFastRCNNPredictor`: a new class
      layer with C+2 outputs (a :class:`NormedLinear` with ``temperature``, ``power`` and
      ``norm_eps``, or with ``normed=False`` an ``nn.Linear``), freshly initialised as in
      mmdetection; the model's own ``bbox_pred`` (weights kept); and the fused
      :class:`lossmix_ext.SeesawLoss` (``p``, ``q``, ``eps``, ``loss_weight``, ``sync_counts``,
      ``backend``) with ``cum_samples`` at ``roi_heads.box_predictor.loss_cls.cum_samples``.
    * ``model.roi_heads`` becomes a :class:`SeesawRoIHeads` (``__class__`` swap: same
      attributes, same state-dict keys): ``model(images, targets)`` in train mode returns
      ``loss_cls_objectness`` and ``loss_cls_classes`` (mmdetection's keys) instead of
      ``loss_classifier``, each normalised by the number of sampled proposals R as
      mmdetection's bbox head does (``avg_factor = R``: ``Σ loss / (R + float32 eps)``), next to
      torchvision's ``loss_box_reg`` (and ``loss_mask``); in eval mode the detections' scores
      are mmdetection's ``get_activation`` and labels 1..C (see the module docstring).
    * ``normed_mask=True`` (Mask R-CNN): ``roi_heads.mask_predictor.mask_fcn_logits`` becomes a
      :class:`NormedConv2d` (``temperature``, ``power``, ``norm_eps``) holding the old layer's
      weights (mmdetection's ``normed_mask`` Seesaw configs).

    Every argument is checked before the model changes. Raises ``TypeError`` for a model that
    is not a ``GeneralizedRCNN`` with ``RoIHeads`` and a ``cls_score`` / ``bbox_pred`` linear
    predictor, ``ValueError`` for one already converted or bad options.
    """
    roi = _rcnn_heads(model, "model")[1]
    pred = roi.box_predictor
    if isinstance(pred, SeesawFastRCNNPredictor):
        raise ValueError("model.roi_heads.box_predictor is already a SeesawFastRCNNPredictor (model converted before)")
    cls, reg = getattr(pred, "cls_score", None), getattr(pred, "bbox_pred", None)
    if not isinstance(cls, nn.Linear) or not isinstance(reg, nn.Linear):
        raise TypeError(f"model.roi_heads.box_predictor must have nn.Linear cls_score and bbox_pred (torchvision's "
                        f"FastRCNNPredictor), got {type(pred).__name__}")
    c = cls.out_features - 1
    if c < 1:
        raise ValueError(f"model.roi_heads.box_predictor.cls_score must have C+1 >= 2 outputs (background and C "
                         f"classes), got {cls.out_features}")
    if reg.out_features != 4 * (c + 1) or reg.in_features != cls.in_features:
        raise ValueError(f"model.roi_heads.box_predictor.bbox_pred must map {cls.in_features} features to "
                         f"{4 * (c + 1)} class-specific deltas, got {reg.in_features} -> {reg.out_features}")
    if not isinstance(normed_mask, bool):
        raise TypeError(f"normed_mask must be True or False, got {type(normed_mask).__name__}")
    new_pred = SeesawFastRCNNPredictor(cls.in_features, c, p=p, q=q, eps=eps, normed=normed, temperature=temperature,
                                       power=power, norm_eps=norm_eps, loss_weight=loss_weight,
                                       sync_counts=sync_counts, backend=backend, bbox_pred=reg)
    new_pred.cls_score.to(device=cls.weight.device, dtype=cls.weight.dtype)
    new_pred.loss_cls.to(device=cls.weight.device)
    new_pred.train(pred.training)
    new_conv = None
    if normed_mask:
        if not roi.has_mask():
            raise ValueError("normed_mask=True needs a Mask R-CNN (model.roi_heads has no mask branch)")
        conv = getattr(roi.mask_predictor, "mask_fcn_logits", None)
        if type(conv) is not nn.Conv2d:
            raise TypeError(f"normed_mask=True needs model.roi_heads.mask_predictor.mask_fcn_logits to be an "
                            f"nn.Conv2d (torchvision's MaskRCNNPredictor), got {type(conv).__name__}")
        new_conv = NormedConv2d(conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride,
                                padding=conv.padding, dilation=conv.dilation, groups=conv.groups,
                                bias=conv.bias is not None, padding_mode=conv.padding_mode, temperature=temperature,
                                power=power, eps=norm_eps)
        new_conv.to(device=conv.weight.device, dtype=conv.weight.dtype)
        with torch.no_grad():
            new_conv.weight.copy_(conv.weight)
            if conv.bias is not None:
                new_conv.bias.copy_(conv.bias)
        new_conv.train(conv.training)
    # every check passed: change the model
    roi.box_predictor = new_pred
    if new_conv is not None:
        roi.mask_predictor.mask_fcn_logits = new_conv
    roi.__class__ = _seesaw_class(type(roi))
    return model


# --------------------------------------------------------------------------- argument checks
def _rcnn_heads(model, name: str) -> Tuple[RegionProposalNetwork, RoIHeads]:
    if not isinstance(model, GeneralizedRCNN):
        kind = type(model).__name__
        extra = (" (RetinaNet and FCOS are one-stage models without proposals or samplers: not supported)"
                 if kind in ("RetinaNet", "FCOS") else "")
        if isinstance(getattr(model, "module", None), GeneralizedRCNN):  # DistributedDataParallel, DataParallel
            extra = (f" wrapping a {type(model.module).__name__}: pass the detector itself, from inside the wrapped "
                     f"module's forward (e.g. a module whose forward calls this on its detector, wrapped in DDP)")
        raise TypeError(f"{name} must be a torchvision GeneralizedRCNN (Faster R-CNN, Mask R-CNN), got {kind}{extra}")
    rpn, roi = getattr(model, "rpn", None), getattr(model, "roi_heads", None)
    if not isinstance(rpn, RegionProposalNetwork):
        raise TypeError(f"{name}.rpn must be a torchvision RegionProposalNetwork, got {type(rpn).__name__}")
    if not isinstance(roi, RoIHeads):
        raise TypeError(f"{name}.roi_heads must be a torchvision RoIHeads, got {type(roi).__name__}")
    if roi.has_keypoint():
        raise ValueError(f"{name} has a keypoint head (Keypoint R-CNN): not supported")
    return rpn, roi


def _num_classes(roi: RoIHeads) -> Optional[int]:
    """C (foreground classes) from the box predictor, or None when it cannot be told."""
    pred = roi.box_predictor
    if isinstance(pred, SeesawFastRCNNPredictor):
        return pred.num_classes
    cls = getattr(pred, "cls_score", None)
    return cls.out_features - 1 if isinstance(cls, nn.Linear) else None


def _check_label_range(targets, num_classes: Optional[int], name: str) -> None:
    """Every target label in [0, C] (a value check, following the validation mode); on failure
    (read on the host) the message names the first offending target."""
    if num_classes is None or not targets:
        return
    labels = torch.cat([t["labels"].reshape(-1) for t in targets])
    if labels.numel() == 0:
        return
    msg = f"{name}[...]['labels'] must lie in [0, {num_classes}] (0 = background, 1..{num_classes} classes)"
    try:
        V._check(((labels < 0) | (labels > num_classes)).any(), msg)
    except ValueError:
        for i, t in enumerate(targets):
            lab = t["labels"]
            if lab.numel() and bool(((lab < 0) | (lab > num_classes)).any()):
                raise ValueError(f"{name}[{i}]['labels'] must lie in [0, {num_classes}] (0 = background, "
                                 f"1..{num_classes} classes), got values {sorted(set(lab.tolist()))}") from None
        raise


def _model_device(model: nn.Module) -> Optional[torch.device]:
    for p in model.parameters():
        return p.device
    return None


def _check_images(images, device) -> List[Tensor]:
    if isinstance(images, Tensor):
        if images.dim() != 4:
            raise ValueError(f"images must be a list of (C, H, W) tensors or a (B, C, H, W) tensor, got shape "
                             f"{tuple(images.shape)}")
        images = list(images.unbind(0))
    if not isinstance(images, (list, tuple)) or len(images) == 0:
        raise TypeError(f"images must be a non-empty list of (C, H, W) tensors, got {type(images).__name__}")
    for i, im in enumerate(images):
        V.tensor(im, f"images[{i}]")
        if not im.is_floating_point():
            raise TypeError(f"images[{i}] must be floating point (values in [0, 1]), got {im.dtype}")
        if im.dim() != 3:
            raise ValueError(f"images[{i}] must be (C, H, W), got shape {tuple(im.shape)}")
        if device is not None and im.device != device:
            raise ValueError(f"images[{i}] is on {im.device} but the model is on {device}")
    return list(images)


def _check_targets(targets, images: List[Tensor], with_masks: bool) -> None:
    n = len(images)
    if not isinstance(targets, (list, tuple)):
        raise TypeError(f"targets must be a list of {n} dicts (torchvision's format), got {type(targets).__name__}")
    if len(targets) != n:
        raise ValueError(f"targets must have one dict per image ({n}), got {len(targets)}")
    dev = images[0].device
    for i, t in enumerate(targets):
        if not isinstance(t, dict) or "boxes" not in t or "labels" not in t:
            raise ValueError(f"targets[{i}] must be a dict with 'boxes' (K, 4) and 'labels' (K,)")
        boxes, labels = t["boxes"], t["labels"]
        V.tensor(boxes, f"targets[{i}]['boxes']")
        V.tensor(labels, f"targets[{i}]['labels']")
        if boxes.dtype not in (torch.float16, torch.float32, torch.float64):
            raise TypeError(f"targets[{i}]['boxes'] must be floating point, got {boxes.dtype}")
        if labels.dtype != torch.int64:
            raise TypeError(f"targets[{i}]['labels'] must be int64 (torchvision's labels), got {labels.dtype}")
        if boxes.dim() != 2 or boxes.shape[1] != 4 or labels.shape != boxes.shape[:1]:
            raise ValueError(f"targets[{i}]: 'boxes' must be (K, 4) and 'labels' (K,), got {tuple(boxes.shape)} and "
                             f"{tuple(labels.shape)}")
        for key, v in (("boxes", boxes), ("labels", labels)):
            if v.device != dev:
                raise ValueError(f"targets[{i}][{key!r}] is on {v.device} but the images are on {dev}")
        if with_masks:
            masks = t.get("masks")
            if masks is None:
                raise ValueError(f"targets[{i}] needs 'masks' (K, H, W): the model has a mask head")
            V.tensor(masks, f"targets[{i}]['masks']")
            if masks.dim() != 3 or masks.shape[0] != boxes.shape[0]:
                raise ValueError(f"targets[{i}]['masks'] must be (K, H, W) with K = {boxes.shape[0]}, got "
                                 f"{tuple(masks.shape)}")
            if masks.device != dev:
                raise ValueError(f"targets[{i}]['masks'] is on {masks.device} but the images are on {dev}")


def _check_masks_fit(targets, images: List[Tensor], own: bool, partners: Optional[List[int]]) -> None:
    """Masks are in the pixels of the image they supervise: targets[j] supervises images[b]
    for j = b (``own``) and, as the partner set, for j = index[b] (``partners``)."""
    for b, im in enumerate(images):
        hw = tuple(im.shape[-2:])
        pairs = [(b, f"images[{b}]")] if own else []
        if partners is not None:
            pairs.append((partners[b], f"images[{b}] (whose partner set is targets[index[{b}]])"))
        for j, role in pairs:
            got = tuple(targets[j]["masks"].shape[-2:])
            if got != hw:
                raise ValueError(f"targets[{j}]['masks'] must be the size of {role}, {hw}, got {got} (mix the batch "
                                 f"on one canvas, e.g. with mix_detection_batch)")


def _check_boxes(targets) -> None:
    """No degenerate box (x1 <= x0 or y1 <= y0), as torchvision asserts (one host read)."""
    boxes = [t["boxes"] for t in targets]
    allb = torch.cat([b.reshape(-1, 4) for b in boxes]) if boxes else None
    if allb is None or allb.numel() == 0 or not bool((allb[:, 2:] <= allb[:, :2]).any()):
        return
    for i, b in enumerate(boxes):
        bad = (b[:, 2:] <= b[:, :2]).any(1)
        if bool(bad.any()):
            k = int(torch.where(bad)[0][0])
            raise ValueError(f"targets[{i}]['boxes'] must have positive height and width (x0 < x1, y0 < y1), got box "
                             f"{k}: {b[k].tolist()}")


def _check_index(index, n: int) -> List[int]:
    if isinstance(index, Tensor):
        if index.dtype not in V.INDEX_DTYPES:
            raise TypeError(f"index must be an int64 (or int32) tensor, got {index.dtype}")
        if index.shape != (n,):
            raise ValueError(f"index must have shape ({n},) (one partner per image), got {tuple(index.shape)}")
        partners = index.tolist()  # on the host: the partner targets are a Python list
    elif isinstance(index, (list, tuple)):
        if len(index) != n or any(not isinstance(j, Integral) or isinstance(j, bool) for j in index):
            raise ValueError(f"index must be {n} ints (one partner per image), got {index!r}")
        partners = [int(j) for j in index]
    else:
        raise TypeError(f"index must be a (B,) int64 tensor or a list of ints, got {type(index).__name__}")
    if any(not 0 <= j < n for j in partners):
        raise ValueError(f"index must lie in [0, {n - 1}] (partners among the {n} images), got {partners}")
    return partners


def _check_lam(lam, n: int, device) -> Weight:
    """A number in [0, 1] (returned as a float) or a (B,) / 0-d floating tensor on the images'
    device with values in [0, 1] (a value check following the validation mode; returned (B,))."""
    if isinstance(lam, Real) and not isinstance(lam, bool):
        if not 0.0 <= float(lam) <= 1.0:
            raise ValueError(f"lam must lie in [0, 1], got {lam}")
        return float(lam)
    if not isinstance(lam, Tensor):
        raise TypeError(f"lam must be a number or a (B,) tensor, got {type(lam).__name__}")
    V.float_tensor(lam, "lam")
    if lam.device != device:
        raise ValueError(f"lam is on {lam.device} but the images are on {device}")
    if lam.dim() == 0:
        lam = lam.expand(n)
    if lam.shape != (n,):
        raise ValueError(f"lam must be a number or have shape ({n},) (one per image), got {tuple(lam.shape)}")
    V.in_unit_interval(lam, "lam")
    return lam


# --------------------------------------------------------------------------- the plug-in
def lossmix_detection_losses(model: nn.Module, images, targets: Sequence[Dict[str, Tensor]], index,
                             lam) -> Dict[str, Tensor]:
    """LossMix losses of a torchvision Faster / Mask R-CNN (a ``GeneralizedRCNN`` in train mode).

    ``images``: the already-mixed batch (B tensors (C, H, W) in [0, 1], or a (B, C, H, W)
    tensor); ``targets``: torchvision's B dicts (``boxes`` (K, 4) xyxy float, ``labels`` (K,)
    int64 in [0, C], ``masks`` (K, H, W) for Mask R-CNN, in the pixels of the image they
    supervise); ``index``: the partner of each image, (B,) int tensor or list (read on the
    host); ``lam``: a number in [0, 1] or a (B,) tensor (λ of each image's own targets).

    Image b is supervised by ``targets[b]`` with weight λ_b and by ``targets[index[b]]`` with
    weight 1 − λ_b. The transform and backbone run once (both sets' boxes and masks go through
    ``model.transform`` together, so a multi-scale resize draws one size for both); so do the
    RPN head and its proposals (they depend on the features only). Each set is then assigned
    and sampled by the model's own RPN and RoI samplers (set a's RPN and RoI sampling first,
    then set b's), and the box (and mask) heads run once per set on that set's sampled
    proposals. Returns the model's loss dict (same keys as ``model(images, targets)``), every
    term k being

        Σ over sets s ∈ {a, b}: (1 / N_k,s) · Σ over the sampled rows r of set s: w_s(image of r) · ℓ_k(r)

    with w_a = λ, w_b = 1 − λ (per image) and N_k,s torchvision's own normaliser of that term
    for that set: the number of sampled anchors (``loss_objectness``, ``loss_rpn_box_reg``),
    of sampled proposals (``loss_classifier``, ``loss_box_reg``; with a Seesaw predictor,
    ``loss_cls_objectness`` / ``loss_cls_classes`` divide by it + float32 eps, as
    mmdetection), of positive proposals × M² mask pixels (``loss_mask``). So:

    * a number λ gives ``λ·model(images, targets) + (1−λ)·model(images, targets[index])``
      term by term, on the same sampled anchors / proposals; λ = 1 (0) computes only the
      first (second) set: with the identity index and λ = 1 this is ``model(images, targets)``
      (also its random sampling, from the same RNG state);
    * a (B,) λ weights each sampled row by its image's λ (or 1 − λ) inside that same
      normaliser — not a mean of per-image losses, and the normaliser is not re-weighted.

    With a Seesaw predictor (:func:`seesaw_fast_rcnn`) both sets' sampled labels are counted
    in ``cum_samples`` before the loss (one call of the fused loss over both sets' rows); a
    number λ of 1 or 0 counts only the set it computes. An empty sampled set contributes 0
    (torchvision's mean would be NaN).

    Every argument is checked before anything runs (no count, no batch-norm statistic
    changes on a failed call): ``TypeError`` / ``ValueError`` naming the argument. Host reads:
    the index, one for the degenerate-box check (as torchvision), and torchvision's own
    (the samplers' ``torch.where``).
    """
    rpn, roi = _rcnn_heads(model, "model")
    if not model.training:
        raise ValueError("model must be in train mode (model.train()): the losses need the training samplers")
    device = _model_device(model)
    imgs = _check_images(images, device)
    n = len(imgs)
    with_masks = roi.has_mask()
    _check_targets(targets, imgs, with_masks)
    partners = _check_index(index, n)
    lam = _check_lam(lam, n, imgs[0].device)
    only = lam if isinstance(lam, float) and lam in (0.0, 1.0) else None  # a number λ of 1 (0): one set
    if with_masks:
        _check_masks_fit(targets, imgs, own=only != 0.0, partners=None if only == 1.0 else partners)
    _check_label_range(targets, _num_classes(roi), "targets")
    _check_boxes(targets)

    targets_b = [targets[j] for j in partners]
    if only is not None:
        sets = [(targets if only == 1.0 else targets_b, 1.0)]
    else:
        sets = [(targets, lam), (targets_b, 1.0 - lam)]
    image_list, set_targets = _transform(model, imgs, [t for t, _ in sets], with_masks)
    features = model.backbone(image_list.tensors)
    if isinstance(features, Tensor):
        features = OrderedDict([("0", features)])
    objectness, deltas, anchors, proposals = _rpn_proposals(rpn, image_list, features)
    rpn_samples, roi_samples = [], []
    for tg, (_, w) in zip(set_targets, sets):  # set a's RPN and RoI sampling, then set b's
        rpn_samples.append(_rpn_sample(rpn, anchors, tg) + (w,))
        roi_samples.append(roi.select_training_samples(proposals, tg) + (tg, w))
    losses = _roi_losses(roi, features, image_list.image_sizes, roi_samples)
    losses.update(_rpn_losses(objectness, deltas, anchors, rpn_samples))
    return losses


def _transform(model, images: List[Tensor], target_sets: List[list], with_masks: bool):
    """``model.transform`` once: per image, the boxes (and masks) of every set concatenated, then
    split back. The transform scales each instance on its own, so this equals transforming
    each set, with one resize draw for both."""
    keys = ("boxes", "masks") if with_masks else ("boxes",)
    merged = []
    for i in range(len(images)):
        if len(target_sets) == 1:
            merged.append({k: target_sets[0][i][k] for k in keys})
        else:
            merged.append({k: torch.cat([ts[i][k] for ts in target_sets]) for k in keys})
    image_list, out = model.transform(images, merged)
    result: List[List[Dict[str, Tensor]]] = [[] for _ in target_sets]
    for i, o in enumerate(out):
        start = 0
        for s, ts in enumerate(target_sets):
            k = ts[i]["boxes"].shape[0]
            t = {key: o[key][start:start + k] for key in keys}
            t["labels"] = ts[i]["labels"]
            result[s].append(t)
            start += k
    return image_list, result


def _rpn_proposals(rpn: RegionProposalNetwork, images, features):
    """The target-independent part of ``RegionProposalNetwork.forward``: head, anchors, proposals."""
    feats = list(features.values())
    objectness, deltas = rpn.head(feats)
    anchors = rpn.anchor_generator(images, feats)
    num_images = len(anchors)
    num_anchors_per_level = [o[0].shape[0] * o[0].shape[1] * o[0].shape[2] for o in objectness]
    objectness, deltas = concat_box_prediction_layers(objectness, deltas)
    proposals = rpn.box_coder.decode(deltas.detach(), anchors).view(num_images, -1, 4)
    boxes, _ = rpn.filter_proposals(proposals, objectness, images.image_sizes, num_anchors_per_level)
    return objectness, deltas, anchors, boxes


def _rpn_sample(rpn: RegionProposalNetwork, anchors, targets):
    labels, matched_gt_boxes = rpn.assign_targets_to_anchors(anchors, targets)
    regression_targets = rpn.box_coder.encode(matched_gt_boxes, anchors)
    pos, neg = rpn.fg_bg_sampler(labels)
    pos = torch.where(torch.cat(pos, dim=0))[0]
    neg = torch.where(torch.cat(neg, dim=0))[0]
    return torch.cat(labels, dim=0), torch.cat(regression_targets, dim=0), pos, neg


def _image_of(rows: Tensor, sizes: List[int]) -> Tensor:
    """The image of each row index of a concatenation of per-image blocks of ``sizes`` rows."""
    if len(set(sizes)) == 1:
        return torch.div(rows, sizes[0], rounding_mode="floor")
    ends = torch.tensor(sizes, device=rows.device).cumsum(0)
    return torch.searchsorted(ends, rows, right=True)


def _per_row(w: Weight, counts: List[int]) -> Weight:
    """A set's weight per row of per-image blocks of ``counts`` rows (a number stays a number)."""
    if not isinstance(w, Tensor):
        return w
    reps = torch.tensor(counts, device=w.device)
    return w.repeat_interleave(reps, output_size=sum(counts))


def _weighted_sum(rows: Tensor, w: Weight) -> Tensor:
    return (rows * w.to(rows.dtype)).sum() if isinstance(w, Tensor) else rows.sum() * w


def _rpn_losses(objectness: Tensor, deltas: Tensor, anchors, samples) -> Dict[str, Tensor]:
    """``RegionProposalNetwork.compute_loss`` per set, rows weighted, summed over the sets."""
    obj = objectness.flatten()
    sizes = [a.shape[0] for a in anchors]
    loss_obj = loss_box = None
    for labels, reg, pos, neg, w in samples:
        sampled = torch.cat([pos, neg], dim=0)
        n = max(sampled.numel(), 1)
        if isinstance(w, Tensor):
            w_all, w_pos = w[_image_of(sampled, sizes)], w[_image_of(pos, sizes)]
            o = _weighted_sum(F.binary_cross_entropy_with_logits(obj[sampled], labels[sampled], reduction="none"),
                              w_all) / n
            b = _weighted_sum(F.smooth_l1_loss(deltas[pos], reg[pos], beta=_SMOOTH_L1_BETA, reduction="none").sum(1),
                              w_pos) / n
        else:  # torchvision's expressions, times the number
            o = (F.binary_cross_entropy_with_logits(obj[sampled], labels[sampled]) if sampled.numel()
                 else obj.sum() * 0.0) * w
            b = F.smooth_l1_loss(deltas[pos], reg[pos], beta=_SMOOTH_L1_BETA, reduction="sum") / n * w
        loss_obj = o if loss_obj is None else loss_obj + o
        loss_box = b if loss_box is None else loss_box + b
    return {"loss_objectness": loss_obj, "loss_rpn_box_reg": loss_box}


def _project_masks(gt_masks: Tensor, boxes: Tensor, matched_idxs: Tensor, m: int) -> Tensor:
    """Mask targets (P, m, m): each positive's ground-truth mask cropped to its proposal and
    resized (torchvision's ``project_masks_on_boxes``, with the public ``roi_align``)."""
    matched_idxs = matched_idxs.to(boxes)
    rois = torch.cat([matched_idxs[:, None], boxes], dim=1)
    return roi_align(gt_masks[:, None].to(rois), rois, (m, m), 1.0)[:, 0]


def _roi_losses(roi: RoIHeads, features, image_shapes, samples) -> Dict[str, Tensor]:
    """The RoI heads' training losses over target sets. ``samples``: per set, the result of
    ``roi.select_training_samples`` (proposals, matched_idxs, labels, regression_targets),
    the set's (transformed) targets and its weight (a number or (B,))."""
    pred = roi.box_predictor
    seesaw = isinstance(pred, SeesawFastRCNNPredictor)
    loss_cls = loss_box = loss_mask = None
    seesaw_parts = []
    for proposals, matched_idxs, labels, regression_targets, targets, w in samples:
        counts = [lab.shape[0] for lab in labels]
        feats = roi.box_head(roi.box_roi_pool(features, proposals, image_shapes))
        class_logits, box_regression = pred(feats)
        labels_cat = torch.cat(labels, dim=0)
        reg_cat = torch.cat(regression_targets, dim=0)
        r = labels_cat.numel()
        w_rows = _per_row(w, counts)
        if seesaw:
            rows_w = w_rows if isinstance(w_rows, Tensor) else torch.full((r,), float(w_rows), device=labels_cat.device)
            seesaw_parts.append((class_logits, labels_cat, rows_w.float() / (r + _F32_EPS)))
        else:
            if isinstance(w_rows, Tensor):
                c = _weighted_sum(F.cross_entropy(class_logits, labels_cat, reduction="none"), w_rows) / max(r, 1)
            elif r:
                c = F.cross_entropy(class_logits, labels_cat) * w_rows
            else:
                c = class_logits.sum() * 0.0
            loss_cls = c if loss_cls is None else loss_cls + c
        # box regression: class-specific deltas of the positives, / all sampled rows (fastrcnn_loss)
        pos = torch.where(labels_cat > 0)[0]
        labels_pos = labels_cat[pos]
        box_regression = box_regression.reshape(box_regression.shape[0], box_regression.size(-1) // 4, 4)
        sl1 = F.smooth_l1_loss(box_regression[pos, labels_pos], reg_cat[pos], beta=_SMOOTH_L1_BETA,
                               reduction="none" if isinstance(w_rows, Tensor) else "sum")
        b = (_weighted_sum(sl1.sum(1), w_rows[pos]) if isinstance(w_rows, Tensor) else sl1 * w_rows) / max(r, 1)
        loss_box = b if loss_box is None else loss_box + b
        if roi.has_mask():
            m = _mask_loss(roi, features, image_shapes, proposals, matched_idxs, labels, targets, w)
            loss_mask = m if loss_mask is None else loss_mask + m
    losses: Dict[str, Tensor] = {}
    if seesaw:
        logits = torch.cat([p[0] for p in seesaw_parts]) if len(seesaw_parts) > 1 else seesaw_parts[0][0]
        labels_all = torch.cat([p[1] for p in seesaw_parts]) if len(seesaw_parts) > 1 else seesaw_parts[0][1]
        weights = torch.cat([p[2] for p in seesaw_parts]) if len(seesaw_parts) > 1 else seesaw_parts[0][2]
        losses.update(pred.loss(logits, labels_all, weights))
    else:
        losses["loss_classifier"] = loss_cls
    losses["loss_box_reg"] = loss_box
    if loss_mask is not None:
        losses["loss_mask"] = loss_mask
    return losses


def _mask_loss(roi: RoIHeads, features, image_shapes, proposals, matched_idxs, labels, targets, w) -> Tensor:
    """``maskrcnn_loss`` of one set (positives of the sampled proposals), rows weighted."""
    mask_proposals, pos_matched = [], []
    for props, idxs, lab in zip(proposals, matched_idxs, labels):
        pos = torch.where(lab > 0)[0]
        mask_proposals.append(props[pos])
        pos_matched.append(idxs[pos])
    mask_logits = roi.mask_predictor(roi.mask_head(roi.mask_roi_pool(features, mask_proposals, image_shapes)))
    m = mask_logits.shape[-1]
    gt_labels = torch.cat([t["labels"][idxs] for t, idxs in zip(targets, pos_matched)], dim=0)
    mask_targets = torch.cat([_project_masks(t["masks"], p, idxs, m)
                              for t, p, idxs in zip(targets, mask_proposals, pos_matched)], dim=0)
    if mask_targets.numel() == 0:
        return mask_logits.sum() * 0
    picked = mask_logits[torch.arange(gt_labels.shape[0], device=gt_labels.device), gt_labels]
    if not isinstance(w, Tensor):
        return F.binary_cross_entropy_with_logits(picked, mask_targets) * w
    rows = F.binary_cross_entropy_with_logits(picked, mask_targets, reduction="none").sum((1, 2))
    return _weighted_sum(rows, _per_row(w, [p.shape[0] for p in mask_proposals])) / mask_targets.numel()


# --------------------------------------------------------------------------- mixing
@dataclass
class DetectionBatch:
    """A mixed torchvision detection batch (:func:`mix_detection_batch`).

    ``images``: B mixed images (C, H, W), all the canvas size; ``targets``: torchvision's B
    dicts, ``targets[b]`` for image b (masks padded to the canvas, every other key as given);
    ``index`` (B,): each image's partner, whose targets ``targets[index[b]]`` supervise image b
    too; ``lam`` (B,) float32: the weight of each image's own targets.
    """
    images: List[Tensor]
    targets: List[Dict[str, Any]]
    index: Tensor
    lam: Tensor

    def losses(self, model: nn.Module) -> Dict[str, Tensor]:
        """:func:`lossmix_detection_losses` of ``model`` on this batch."""
        return lossmix_detection_losses(model, self.images, self.targets, self.index, self.lam)


def mix_detection_batch(images: Sequence[Tensor], targets: Sequence[Dict[str, Any]], plan: MixPlan, *,
                        scale: Optional[float] = None, out_dtype: Optional[torch.dtype] = None,
                        size_divisible: int = 1, backend: Optional[str] = None) -> DetectionBatch:
    """:func:`lossmix_ext.mix_detection` for torchvision's format: mix a batch (B images (C, H_b, W_b),
    uint8 or float in [0, 1], and B target dicts) with a mixup ``plan`` (e.g.
    ``LossMix(alpha=1.0).sample(B)``; no CutMix boxes).

    Every image is pasted top-left on one zero canvas of the largest size (so boxes keep their
    coordinates; masks are padded to it) and image b becomes ``λ_b·x_b + (1−λ_b)·x_{index[b]}``
    in one fused pass (uint8 → float32 / 255). Every mixed image has the canvas size, so a
    partner's masks fit the image they supervise. Pass the result to the plug-in:
    ``batch.losses(model)`` = ``lossmix_detection_losses(model, batch.images, batch.targets,
    batch.index, batch.lam)``. Reads ``plan.index`` on the host (as ``mix_detection``).
    """
    mixed = mix_detection(images, targets, plan, scale=scale, out_dtype=out_dtype, size_divisible=size_divisible,
                          backend=backend)
    own = [{k: v for k, v in t.items() if k != "weights"} for t in mixed.targets_a]
    return DetectionBatch(images=list(mixed.images.unbind(0)), targets=own, index=mixed.index, lam=mixed.lam)
