"""LossMix front end for training loops: mixing plans, mixed losses, detection and domain mixing.

LossMix mixes the *inputs* and interpolates the *losses*: for a sample b mixed with its
partner ``index[b]`` with weight λ[b], the loss is ``λ·L(out, y[b]) + (1−λ)·L(out, y[index[b]])``
instead of the loss against an interpolated (soft) target. So the object returned with the
mixed images is a :class:`MixPlan` (λ, index, CutMix boxes), not dense soft targets, and any
loss that returns per-sample values can be mixed.

* :class:`LossMix` — like timm's ``Mixup`` (mixup and/or CutMix, per-sample or per-batch,
  ``prob``, ``switch_prob``), drawing everything on the images' device with no host sync::

      mixer = LossMix(alpha=0.2, cutmix_alpha=1.0, mean=MEAN, std=STD)
      images, plan = mixer(images_uint8)           # one fused pass: mix + normalise + cast
      loss = plan.cross_entropy(model(images), labels)
      loss = plan.mix_loss(per_sample_loss_fn, model(images), targets)

* :func:`mix_detection` — geometry-preserving mixup of a list of differently sized images
  with their box/mask targets (the LossMix detection recipe and the union baseline).
* :func:`domain_mix_plans` — LossMix's two-phase source/target mixing for domain adaptation.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from numbers import Real
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from . import _validation as V
from .functional import (_PAIRINGS, _image_batch, _inplace_images, _mixed_cross_entropy, _out_dtype,
                         _per_channel_values, lossmix_reduce,
                         mix_images, mix_images_, sample_beta, sample_mix, seesaw_loss_mixed)

__all__ = ["LossMix", "MixPlan", "cutmix_boxes", "mix_detection", "DetectionMix", "domain_mix_plans",
           "DomainMixPlan", "index_targets"]


# --------------------------------------------------------------------------- helpers
def index_targets(targets: Any, index: Tensor) -> Any:
    """``targets`` reordered by ``index``: a tensor (indexed along dim 0 on its device, no
    host sync), a list/tuple (``index`` is copied to the host), or a dict of those."""
    if isinstance(targets, Tensor):
        return targets.index_select(0, index.to(targets.device))
    if isinstance(targets, dict):
        return {k: index_targets(v, index) for k, v in targets.items()}
    if isinstance(targets, (list, tuple)):
        picked = [targets[i] for i in index.tolist()]
        return type(targets)(picked) if isinstance(targets, tuple) else picked
    raise TypeError(f"targets must be a tensor, a list/tuple or a dict of those, got {type(targets).__name__}")


def _check_batch(targets: Any, n: int, name: str, what: str = "the plan's batch size") -> None:
    """``targets`` holds one entry per sample: a tensor with ``n`` rows, a list/tuple of ``n``
    items, or a dict of those (metadata only)."""
    if isinstance(targets, Tensor):
        if targets.dim() < 1 or targets.shape[0] != n:
            raise ValueError(f"{name} must have {n} samples along dim 0 ({what}), got shape {tuple(targets.shape)}")
    elif isinstance(targets, dict):
        for k, v in targets.items():
            _check_batch(v, n, f"{name}[{k!r}]", what)
    elif isinstance(targets, (list, tuple)):
        if len(targets) != n:
            raise ValueError(f"{name} must have {n} entries (one per sample, {what}), got {len(targets)}")
    else:
        raise TypeError(f"{name} must be a tensor, a list/tuple or a dict of those, got {type(targets).__name__}")


def _check_partners(targets: Any, index: Tensor, name: str) -> None:
    """Every partner ``index[b]`` is a sample of ``targets`` (for plans that do not record the
    partner batch's size): a value check on the index (following the validation mode) for
    tensors, a host check for lists (``index_targets`` reads the index on the host for those)."""
    if isinstance(targets, Tensor):
        if targets.dim() < 1:
            raise ValueError(f"{name} must have a batch dimension, got a 0-d tensor")
        n = targets.shape[0]
        if index.numel():
            V._check(((index < 0) | (index >= n)).any(),
                     f"{name} has {n} samples, fewer than the plan's partner index refers to")
    elif isinstance(targets, dict):
        for k, v in targets.items():
            _check_partners(v, index, f"{name}[{k!r}]")
    elif isinstance(targets, (list, tuple)):
        if any(not 0 <= j < len(targets) for j in index.tolist()):
            raise ValueError(f"{name} has {len(targets)} entries, fewer than the plan's partner index refers to")
    else:
        raise TypeError(f"{name} must be a tensor, a list/tuple or a dict of those, got {type(targets).__name__}")


def _per_channel_arg(v, name: str) -> None:
    """``mean`` / ``std`` of :class:`LossMix`, checked as far as possible without the images:
    a sequence of finite numbers (``std`` without zeros) or a 1-D floating tensor."""
    if v is None:
        return
    if isinstance(v, Tensor):
        V.float_tensor(v, name, ndim=1)
        return
    _per_channel_values(v, name)


def _unit(x, name: str) -> float:
    if not isinstance(x, Real) or isinstance(x, bool) or not 0.0 <= float(x) <= 1.0:
        raise ValueError(f"{name} must be a number in [0, 1], got {x!r}")
    return float(x)


def _alpha(x, name: str) -> float:
    if not isinstance(x, Real) or isinstance(x, bool) or not (math.isfinite(float(x)) and float(x) >= 0):
        raise ValueError(f"{name} must be a finite number >= 0, got {x!r}")
    return float(x)


def cutmix_boxes(lam: Tensor, height: int, width: int, *, generator: Optional[torch.Generator] = None) -> Tensor:
    """CutMix boxes as in the CutMix paper: cut ratio √(1−λ), cut size ``⌊H·r⌋ × ⌊W·r⌋``,
    centre uniform over the pixels, box ``centre ± size//2`` clipped to the image.

    ``lam`` (n,) on the device to draw on. Returns (n, 4) int64 (y0, x0, y1, x1), half-open.
    The clipped box can be smaller than asked: use :func:`box_lam` for the true λ.
    """
    n = lam.shape[0]
    dev = lam.device
    r = torch.sqrt((1.0 - lam.double()).clamp(min=0.0))
    cut_h = torch.floor(height * r).long()
    cut_w = torch.floor(width * r).long()
    cy = torch.randint(0, height, (n,), generator=generator, device=dev)
    cx = torch.randint(0, width, (n,), generator=generator, device=dev)
    y0 = (cy - cut_h // 2).clamp(0, height)
    y1 = (cy + cut_h // 2).clamp(0, height)
    x0 = (cx - cut_w // 2).clamp(0, width)
    x1 = (cx + cut_w // 2).clamp(0, width)
    return torch.stack([y0, x0, y1, x1], dim=1)


def box_lam(boxes: Tensor, height: int, width: int) -> Tensor:
    """λ = 1 − box area / (H·W) (float32), the share of the sample's own pixels."""
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return (1.0 - area.double() / float(height * width)).float()


# --------------------------------------------------------------------------- plan
@dataclass
class MixPlan:
    """How a batch was mixed.

    ``lam`` (B,) float32: the loss weight of each sample's own targets (for CutMix samples
    the true share of its own pixels, 1 − box area/(H·W); 1 for samples left unmixed);
    ``index`` (B,) int64: the partner of each sample; ``boxes`` (B, 4) int64 (y0, x0, y1, x1)
    or None: the CutMix box of each sample (empty for mixup or unmixed samples);
    ``pixel_lam`` (B,): the weight of the sample's own pixels outside its box (λ for mixup
    samples, 1 for CutMix and unmixed samples) — what :meth:`apply` passes to ``mix_images``.
    """
    lam: Tensor
    index: Tensor
    boxes: Optional[Tensor]
    pixel_lam: Tensor

    def __len__(self) -> int:
        return self.lam.shape[0]

    def apply(self, images: Tensor, *, mean=None, std=None, scale: Optional[float] = None,
              out_dtype: Optional[torch.dtype] = None, backend: Optional[str] = None) -> Tensor:
        """Mix ``images`` (B, C, H, W) with this plan in one pass (see :func:`lossmix_ext.mix_images`)."""
        V.tensor(images, "images")
        if images.dim() < 1 or images.shape[0] != len(self):
            raise ValueError(f"images must have {len(self)} samples (the plan's batch size), "
                             f"got shape {tuple(images.shape)}")
        return mix_images(images, self.pixel_lam, self.index, boxes=self.boxes, mean=mean, std=std, scale=scale,
                          out_dtype=out_dtype, backend=backend)

    def targets_b(self, targets: Any) -> Any:
        """The partners' targets, ``targets[index]`` (see :func:`index_targets`); ``targets`` has
        one entry per sample of the plan."""
        _check_batch(targets, len(self), "targets")
        return index_targets(targets, self.index)

    def mix_loss(self, loss_fn: Callable[[Any, Any], Tensor], outputs: Any, targets: Any, *,
                 weights: Optional[Tensor] = None, reduction: str = "mean", avg_factor=None) -> Tensor:
        """``λ·loss_fn(outputs, targets) + (1−λ)·loss_fn(outputs, targets[index])`` per sample,
        then weighted and reduced by :func:`lossmix_ext.lossmix_reduce`.

        ``loss_fn`` must return per-sample losses (B,) or (B, ...) (e.g. ``reduction="none"``).
        """
        if not callable(loss_fn):
            raise TypeError(f"loss_fn must be callable, got {type(loss_fn).__name__}")
        _check_batch(targets, len(self), "targets")
        loss_a = loss_fn(outputs, targets)
        loss_b = loss_fn(outputs, self.targets_b(targets))
        return lossmix_reduce(loss_a, loss_b, self.lam.to(loss_a.device), weights=weights, reduction=reduction,
                              avg_factor=avg_factor)

    def seesaw_loss(self, cls_score: Tensor, labels: Tensor, cum_samples: Tensor, **kwargs) -> Tensor:
        """Fused ``λ·seesaw(cls_score, labels) + (1−λ)·seesaw(cls_score, labels[index])``
        (:func:`lossmix_ext.seesaw_loss_mixed`, whose keyword arguments these are) over C class
        logits (N, C). The counts are not updated here: call
        ``lossmix_ext.count_labels(cum_samples, labels, plan.targets_b(labels))`` first, as a
        mixed image shows the instances of both."""
        V.float_tensor(cls_score, "cls_score", ndim=2)
        if cls_score.shape[0] != len(self):
            raise ValueError(f"cls_score must have {len(self)} rows (the plan's batch size), got shape "
                             f"{tuple(cls_score.shape)}")
        V.index_tensor(labels, "labels", len(self), cls_score.device)
        return seesaw_loss_mixed(cls_score, labels, self.targets_b(labels), self.lam.to(cls_score.device),
                                 cum_samples, **kwargs)

    def cross_entropy(self, logits: Tensor, labels: Tensor, *, label_weights: Optional[Tensor] = None,
                      ignore_index: int = -100, reduction: str = "mean", avg_factor=None,
                      backend: Optional[str] = None, inplace_grad: bool = False) -> Tensor:
        """Fused ``λ·CE(logits, labels) + (1−λ)·CE(logits, labels[index])``
        (:func:`lossmix_ext.mixed_cross_entropy`, whose keyword arguments these are).
        ``logits`` (B, C) and ``labels`` (B,) for the plan's B samples."""
        V.float_tensor(logits, "logits", ndim=2)
        if logits.shape[0] != len(self):
            raise ValueError(f"logits must have {len(self)} rows (the plan's batch size), got shape "
                             f"{tuple(logits.shape)}")
        V.index_tensor(labels, "labels", len(self), logits.device)
        return _mixed_cross_entropy(logits, labels, self.targets_b(labels), self.lam.to(logits.device), label_weights,
                                    ignore_index, reduction, avg_factor, backend, inplace_grad,
                                    names=("labels", "labels (the partners', labels[index])"))


# --------------------------------------------------------------------------- LossMix
class LossMix:
    """Batch mixer for training loops: mixup and/or CutMix, returning a :class:`MixPlan`.

    Args:
        alpha: mixup Beta(α, α) parameter (0 turns mixup off).
        cutmix_alpha: CutMix Beta parameter (0 turns CutMix off).
        prob: probability that a sample (``per_sample=True``) or the batch is mixed at all;
            unmixed samples get λ = 1.
        switch_prob: with both on, probability of CutMix instead of mixup (per sample or batch).
        per_sample: one λ (and box) per sample, else one for the whole batch (timm's ``batch`` mode).
        pairing: partner choice, see :func:`lossmix_ext.sample_mix` (``random``, ``flip``,
            ``roll``, ``pairs``).
        mean, std: per-channel normalisation fused into the mixing pass (after ``scale``,
            1/255 for uint8 images by default).
        scale, out_dtype: see :func:`lossmix_ext.mix_images`.
        inplace: mix floating images in place (:func:`lossmix_ext.mix_images_`, one read and
            one write of the batch) — needs an involutive pairing (``flip`` or ``pairs``), no
            CutMix and no normalisation.
        generator: torch.Generator for every draw (on the images' device).
        backend: backend for the mixing op.

    ``images, plan = mixer(images)`` mixes a (B, C, H, W) batch (NCHW or channels_last; without
    CutMix or normalisation, any (B, ...) batch: video, feature vectors (B, D), ...). Nothing is
    read back to the host.
    """

    def __init__(self, alpha: float = 1.0, cutmix_alpha: float = 0.0, prob: float = 1.0, switch_prob: float = 0.5,
                 per_sample: bool = True, pairing: str = "random", mean=None, std=None,
                 generator: Optional[torch.Generator] = None, backend: Optional[str] = None, *,
                 scale: Optional[float] = None, out_dtype: Optional[torch.dtype] = None, inplace: bool = False):
        self.alpha = _alpha(alpha, "alpha")
        self.cutmix_alpha = _alpha(cutmix_alpha, "cutmix_alpha")
        if self.alpha == 0 and self.cutmix_alpha == 0:
            raise ValueError("alpha and cutmix_alpha are both 0: at least one of mixup or CutMix must be on "
                             "(use prob=0 to leave batches unmixed)")
        self.prob = _unit(prob, "prob")
        self.switch_prob = _unit(switch_prob, "switch_prob")
        if pairing not in _PAIRINGS:
            raise ValueError(f"pairing must be one of {_PAIRINGS}, got {pairing!r}")
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
        _per_channel_arg(mean, "mean")
        _per_channel_arg(std, "std")
        if isinstance(std, Tensor):
            V.nonzero(std, "std")
        if scale is not None:
            V.real_arg(scale, "scale")
        _out_dtype(out_dtype)
        V.backend_arg(backend)
        self.per_sample = bool(per_sample)
        self.pairing = pairing
        self.mean, self.std, self.scale, self.out_dtype = mean, std, scale, out_dtype
        self._per_channel_cache: Dict[torch.device, tuple] = {}  # device -> (mean, std, their sources)
        self.generator = generator
        self.backend = backend
        self.inplace = bool(inplace)
        if self.inplace:
            if pairing not in ("flip", "pairs"):
                raise ValueError(f"inplace=True needs an involutive pairing ('flip' or 'pairs'), got {pairing!r}")
            if self.cutmix_alpha > 0 or mean is not None or std is not None or scale is not None \
                    or out_dtype is not None:
                raise ValueError("inplace=True mixes floating images as they are: no CutMix, mean, std, scale "
                                 "or out_dtype")

    def __repr__(self) -> str:
        return (f"LossMix(alpha={self.alpha}, cutmix_alpha={self.cutmix_alpha}, prob={self.prob}, "
                f"switch_prob={self.switch_prob}, per_sample={self.per_sample}, pairing={self.pairing!r}, "
                f"inplace={self.inplace})")

    def sample(self, batch_size: int, height: Optional[int] = None, width: Optional[int] = None,
               device=None) -> MixPlan:
        """Draw a plan for a batch of ``batch_size`` images of ``height × width`` (needed for
        CutMix) on ``device`` without touching any images."""
        g = self.generator
        device = V.device_arg(device)
        if device is None:
            device = g.device if g is not None else torch.device("cpu")
        if self.cutmix_alpha > 0:
            if height is None or width is None:
                raise ValueError("CutMix needs the image height and width")
            V.int_arg(height, "height", 1)
            V.int_arg(width, "width", 1)
        B = batch_size
        n = B if self.per_sample else 1
        lam_mix, index = sample_mix(B, self.alpha if self.alpha > 0 else 1.0, per_sample=self.per_sample,
                                    pairing=self.pairing, generator=g, device=device)
        lam_mix = lam_mix[:n]
        ones = torch.ones((n,), dtype=torch.float32, device=device)
        if self.prob < 1.0:
            applied = torch.rand((n,), generator=g, device=device) < self.prob
        else:
            applied = torch.ones((n,), dtype=torch.bool, device=device)
        boxes = None
        if self.cutmix_alpha > 0:
            if self.alpha > 0:
                use_cut = torch.rand((n,), generator=g, device=device) < self.switch_prob
            else:
                use_cut = torch.ones((n,), dtype=torch.bool, device=device)
            use_cut = use_cut & applied
            lam_cut = sample_beta((n,), self.cutmix_alpha, generator=g, device=device)
            boxes = cutmix_boxes(lam_cut, height, width, generator=g)
            boxes = torch.where(use_cut[:, None], boxes, torch.zeros_like(boxes))
            lam_cut = box_lam(boxes, height, width)
            pixel_lam = torch.where(applied & ~use_cut, lam_mix, ones)
            lam = torch.where(use_cut, lam_cut, pixel_lam)
        else:
            pixel_lam = torch.where(applied, lam_mix, ones)
            lam = pixel_lam
        if not self.per_sample:
            lam, pixel_lam = lam.expand(B).contiguous(), pixel_lam.expand(B).contiguous()
            boxes = boxes.expand(B, 4).contiguous() if boxes is not None else None
        return MixPlan(lam=lam, index=index, boxes=boxes, pixel_lam=pixel_lam)

    def __call__(self, images: Tensor) -> Tuple[Tensor, MixPlan]:
        # Every metadata check of the mixing runs before the plan is drawn (the generator advances).
        V.tensor(images, "images")
        if self.cutmix_alpha > 0 and images.dim() != 4:
            raise ValueError(f"CutMix needs (B, C, H, W) images, got shape {tuple(images.shape)}")
        if self.inplace:
            _inplace_images(images)
        else:
            _image_batch(images)
        for name, v in (("mean", self.mean), ("std", self.std)):
            if v is None:
                continue
            if images.dim() != 4:
                raise ValueError(f"{name} needs (B, C, H, W) images, got shape {tuple(images.shape)}")
            got = tuple(v.shape) if isinstance(v, Tensor) else (len(v),)
            if got != (images.shape[1],):
                raise ValueError(f"{name} must have one value per channel, shape ({images.shape[1]},), got {got}")
            if isinstance(v, Tensor):
                V.same_device(v, name, images.device)
        h, w = (images.shape[-2], images.shape[-1]) if images.dim() == 4 else (None, None)
        plan = self.sample(images.shape[0], h, w, images.device)
        if self.inplace:
            return mix_images_(images, plan.pixel_lam, plan.index, backend=self.backend), plan
        mean, std = self._per_channel_on(images.device)
        return plan.apply(images, mean=mean, std=std, scale=self.scale, out_dtype=self.out_dtype,
                          backend=self.backend), plan

    def _per_channel_on(self, device: torch.device) -> Tuple[Optional[Tensor], Optional[Tensor]]:
        """``mean`` / ``std`` as float32 tensors on ``device``, made once per device: a Python
        sequence copied to the GPU at every call would be a host-to-device copy per step."""
        cached = self._per_channel_cache.get(device)
        if cached is None or cached[2] is not self.mean or cached[3] is not self.std:  # (re)assigned since
            cached = tuple(v if v is None or isinstance(v, Tensor)
                           else torch.tensor(_per_channel_values(v, name), dtype=torch.float32, device=device)
                           for name, v in (("mean", self.mean), ("std", self.std))) + (self.mean, self.std)
            self._per_channel_cache[device] = cached
        return cached[0], cached[1]


# --------------------------------------------------------------------------- detection
@dataclass
class DetectionMix:
    """Result of :func:`mix_detection`.

    ``images`` (B, C, H, W): the canvas batch; ``image_sizes``: per sample (h, w) of the area
    covered by either image; ``targets_a`` / ``targets_b``: per sample, the own and the
    partner's targets (masks padded to the canvas) with ``"weights"`` = λ resp. 1−λ per
    instance — the LossMix recipe: assign and compute the detector's loss for each set
    separately, then ``λ·L_a + (1−λ)·L_b``; ``targets``: the union of both sets with the same
    per-instance weights (the usual mixup-for-detection baseline); ``lam``, ``index``: the plan.
    """
    images: Tensor
    image_sizes: List[Tuple[int, int]]
    targets_a: List[Dict[str, Any]]
    targets_b: List[Dict[str, Any]]
    targets: List[Dict[str, Any]]
    lam: Tensor
    index: Tensor


def _pad_masks(masks: Tensor, height: int, width: int) -> Tensor:
    out = masks.new_zeros((masks.shape[0], height, width))
    out[:, :masks.shape[-2], :masks.shape[-1]] = masks
    return out


def _check_target(t: Any, name: str, image_size: Tuple[int, int], image_name: str) -> None:
    """A detection target: ``boxes`` (K, 4), ``labels`` (K,), optional ``masks`` (K, H, W) of its
    image's size (metadata only)."""
    if not isinstance(t, dict) or "boxes" not in t or "labels" not in t:
        raise ValueError(f"{name} must be a dict with 'boxes' (K, 4) and 'labels' (K,)")
    boxes, labels = t["boxes"], t["labels"]
    V.tensor(boxes, f"{name}['boxes']")
    V.tensor(labels, f"{name}['labels']")
    if boxes.dim() != 2 or boxes.shape[1] != 4 or labels.shape != boxes.shape[:1]:
        raise ValueError(f"{name}: boxes must be (K, 4) and labels (K,), got {tuple(boxes.shape)} and "
                         f"{tuple(labels.shape)}")
    if t.get("masks") is not None:
        masks = t["masks"]
        V.tensor(masks, f"{name}['masks']")
        h, w = image_size
        if masks.dim() != 3 or masks.shape[0] != boxes.shape[0] or tuple(masks.shape[1:]) != (h, w):
            raise ValueError(f"{name}['masks'] must be (K, H, W) = ({boxes.shape[0]}, {h}, {w}) (K boxes, the size "
                             f"of {image_name}), got {tuple(masks.shape)}")


def _weighted_target(t: Dict[str, Any], w: Tensor, height: int, width: int) -> Dict[str, Any]:
    """``t`` (checked by :func:`_check_target`) with masks padded to the canvas and per-instance weights."""
    boxes = t["boxes"]
    out = dict(t)
    if t.get("masks") is not None:
        out["masks"] = _pad_masks(t["masks"], height, width)
    out["weights"] = w.to(device=boxes.device, dtype=torch.float32).expand(boxes.shape[0]).clone()
    return out


def mix_detection(images: Sequence[Tensor], targets: Sequence[Dict[str, Any]], plan: MixPlan, *,
                  scale: Optional[float] = None, out_dtype: Optional[torch.dtype] = None, size_divisible: int = 1,
                  backend: Optional[str] = None) -> DetectionMix:
    """Geometry-preserving mixup for detection (LossMix's recipe).

    ``images``: B tensors (C, H_b, W_b) of one dtype (uint8 or floating) on one device;
    ``targets``: B dicts with ``boxes`` (K, 4) xyxy, ``labels`` (K,), optionally ``masks``
    (K, H_b, W_b); ``plan``: a mixup plan for B samples (no CutMix boxes).

    Every image is pasted at the top-left of a zero canvas of the largest size (rounded up to
    ``size_divisible``), so boxes keep their coordinates; sample b of the result is
    ``λ[b]·x_b + (1−λ[b])·x_{index[b]}`` on the canvas (pixels outside an image count as 0
    for it), computed in one fused pass (``scale`` defaults to 1/255 for uint8; no
    normalisation, as detectors normalise inside). Reading the partners' targets needs
    ``plan.index`` on the host (one sync).
    """
    if not isinstance(images, (list, tuple)) or len(images) == 0:
        raise TypeError("images must be a non-empty list of (C, H, W) tensors")
    if not isinstance(targets, (list, tuple)) or len(targets) != len(images):
        raise ValueError(f"targets must be a list of {len(images)} dicts (one per image)")
    if not isinstance(plan, MixPlan) or len(plan) != len(images):
        raise ValueError(f"plan must be a MixPlan for {len(images)} samples")
    if plan.boxes is not None:
        raise ValueError("mix_detection needs a mixup plan without CutMix boxes (LossMix(cutmix_alpha=0))")
    if not isinstance(size_divisible, int) or isinstance(size_divisible, bool) or size_divisible < 1:
        raise ValueError(f"size_divisible must be a positive int, got {size_divisible!r}")
    first = images[0]
    V.tensor(first, "images[0]")
    if first.dim() != 3 or first.shape[0] < 1:
        raise ValueError(f"images[0] must be (C, H, W) with C >= 1, got {tuple(first.shape)}")
    if not (first.dtype.is_floating_point or first.dtype == torch.uint8):
        raise TypeError(f"images must be floating point or uint8, got {first.dtype} for images[0]")
    for i, im in enumerate(images):
        V.tensor(im, f"images[{i}]")
        if im.dim() != 3 or im.shape[0] != first.shape[0]:
            raise ValueError(f"images[{i}] must be (C, H, W) with C = {first.shape[0]}, got {tuple(im.shape)}")
        if im.dtype != first.dtype or im.device != first.device:
            raise ValueError(f"images[{i}] is {im.dtype} on {im.device}, images[0] is {first.dtype} on {first.device}")
    B = len(images)
    sizes = [(int(im.shape[1]), int(im.shape[2])) for im in images]
    for b, t in enumerate(targets):
        _check_target(t, f"targets[{b}]", sizes[b], f"images[{b}]")
    H = max(h for h, _ in sizes)
    W = max(w for _, w in sizes)
    H = -(-H // size_divisible) * size_divisible
    W = -(-W // size_divisible) * size_divisible
    canvas = first.new_zeros((B, first.shape[0], H, W))
    for b, im in enumerate(images):
        canvas[b, :, :im.shape[1], :im.shape[2]] = im
    lam = plan.lam.to(first.device)
    mixed = mix_images(canvas, plan.pixel_lam.to(first.device), plan.index.to(first.device), scale=scale,
                       out_dtype=out_dtype, backend=backend)
    partners = plan.index.tolist()
    if any(not 0 <= j < B for j in partners):  # already on the host: checked in every validation mode
        raise ValueError(f"plan.index must lie in [0, {B - 1}] (partners among the {B} images), got {partners}")
    targets_a, targets_b, union, image_sizes = [], [], [], []
    for b, j in enumerate(partners):
        ta = _weighted_target(targets[b], lam[b], H, W)
        tb = _weighted_target(targets[j], 1.0 - lam[b], H, W)
        targets_a.append(ta)
        targets_b.append(tb)
        u = dict(ta)
        ka = ta["boxes"].shape[0]
        kb = tb["boxes"].shape[0]
        for key, va in ta.items():
            vb = tb.get(key)
            if (isinstance(va, Tensor) and isinstance(vb, Tensor) and va.dim() >= 1 and vb.dim() >= 1
                    and va.shape[0] == ka and vb.shape[0] == kb and va.shape[1:] == vb.shape[1:]):
                u[key] = torch.cat([va, vb.to(va.device)])
        union.append(u)
        image_sizes.append((max(sizes[b][0], sizes[j][0]), max(sizes[b][1], sizes[j][1])))
    return DetectionMix(images=mixed, image_sizes=image_sizes, targets_a=targets_a, targets_b=targets_b,
                        targets=union, lam=lam, index=plan.index)


# --------------------------------------------------------------------------- domain adaptation
_PHASES = ("warmup", "adaptation")


@dataclass
class DomainMixPlan:
    """One mixing pair for domain adaptation: the first images come from batch ``a``
    (``"source"`` or ``"target"``), their partners ``index`` from batch ``b``; ``lam`` (n_a,).

    ``labels_a`` / ``labels_b``: which targets supervise each side — ``"labels"`` (source
    ground truth), ``"pseudo"`` (the teacher's pseudo-labels on target images) or None (no
    supervised loss for that side: its pixels act as an unlabeled mixing partner).
    ``n_b``: the size of batch ``b`` the partners were drawn from (None: not recorded; the
    partner index is then checked against the batch given, as a value check).
    """
    a: str
    b: str
    lam: Tensor
    index: Tensor
    labels_a: str
    labels_b: Optional[str]
    n_b: Optional[int] = None

    def _n_b(self) -> Optional[int]:
        return len(self.lam) if self.a == self.b else self.n_b

    def mix(self, images_a: Tensor, images_b: Optional[Tensor] = None, **kwargs) -> Tensor:
        """Mixed images (n_a, ...): ``λ·a + (1−λ)·b[index]`` (keyword arguments go to
        :func:`lossmix_ext.mix_images`: ``mean``, ``std``, ``scale``, ``out_dtype``, ``backend``).
        ``images_b`` is needed when the two sides come from different batches: the same image
        size, dtype and number of samples as the batch the plan was drawn for."""
        n_a = len(self.lam)
        _image_batch(images_a, "images_a")
        if images_a.shape[0] != n_a:
            raise ValueError(f"images_a must have {n_a} samples (the plan's batch size), got shape "
                             f"{tuple(images_a.shape)}")
        if self.a == self.b:
            return mix_images(images_a, self.lam, self.index, **kwargs)
        if images_b is None:
            raise ValueError(f"this plan mixes {self.a} with {self.b} images: pass images_b")
        _image_batch(images_b, "images_b")
        if images_b.shape[1:] != images_a.shape[1:] or images_b.dtype != images_a.dtype:
            raise ValueError(f"images_b must have the image size and dtype of images_a, {tuple(images_a.shape[1:])} "
                             f"{images_a.dtype}, got {tuple(images_b.shape[1:])} {images_b.dtype}")
        n_b = images_b.shape[0]
        if self.n_b is not None and n_b != self.n_b:
            raise ValueError(f"images_b must have {self.n_b} samples (the {self.b} batch the plan was drawn for), "
                             f"got {n_b}")
        if self.n_b is None and self.index.numel():
            V._check(((self.index < 0) | (self.index >= n_b)).any(),
                     f"images_b has {n_b} samples, fewer than the plan's partner index refers to")
        dev = images_a.device
        both = torch.cat([images_a, images_b.to(dev)])
        lam = torch.cat([self.lam.to(dev), torch.ones((n_b,), dtype=self.lam.dtype, device=dev)])
        index = torch.cat([self.index.to(dev) + n_a, torch.arange(n_a, n_a + n_b, device=dev)])
        return mix_images(both, lam, index, **kwargs)[:n_a]

    def mix_loss(self, loss_fn: Callable[[Any, Any], Tensor], outputs: Any, targets_a: Any,
                 targets_b: Any = None, **kwargs) -> Tensor:
        """``λ·loss_fn(outputs, targets_a) + (1−λ)·loss_fn(outputs, targets_b[index])``, or only
        ``λ·loss_fn(outputs, targets_a)`` when ``labels_b`` is None; reduced by
        :func:`lossmix_ext.lossmix_reduce` (keyword arguments: ``weights``, ``reduction``,
        ``avg_factor``). Pass ``targets_b`` for a plan within one batch too (the same targets)."""
        if not callable(loss_fn):
            raise TypeError(f"loss_fn must be callable, got {type(loss_fn).__name__}")
        _check_batch(targets_a, len(self.lam), "targets_a")
        if self.labels_b is not None:
            if targets_b is None:
                raise ValueError(f"this plan supervises side b with {self.labels_b!r}: pass targets_b")
            n_b = self._n_b()
            if n_b is not None:
                _check_batch(targets_b, n_b, "targets_b", f"the {self.b} batch the plan was drawn for")
            else:
                _check_partners(targets_b, self.index, "targets_b")
        loss_a = loss_fn(outputs, targets_a)
        lam = self.lam.to(loss_a.device)
        if self.labels_b is None:
            return lossmix_reduce(loss_a, torch.zeros_like(loss_a), lam, **kwargs)
        loss_b = loss_fn(outputs, index_targets(targets_b, self.index))
        return lossmix_reduce(loss_a, loss_b, lam, **kwargs)


def _cross_index(n_a: int, n_b: int, generator, device) -> Tensor:
    """n_a partners drawn from n_b samples: distinct when n_b >= n_a, each used about equally otherwise."""
    if n_b >= n_a:
        return torch.randperm(n_b, generator=generator, device=device)[:n_a]
    return torch.randperm(n_a, generator=generator, device=device) % n_b


def domain_mix_plans(n_source: int, n_target: int, phase: str, alpha: float = 1.0, *,
                     generator: Optional[torch.Generator] = None, device=None) -> List[DomainMixPlan]:
    """The mixing pairs of LossMix's two-phase domain-adaptation schedule.

    * ``"warmup"``: source × source (ground truth on both sides) and source × target (the
      target images are unlabeled partners: only the source side is supervised, with weight λ).
    * ``"adaptation"``: the two above, plus target × target supervised on both sides by the
      teacher's pseudo-labels.

    λ ~ Beta(α, α) per sample; partners are a random permutation within a batch, random
    distinct samples across batches. Usage, per step::

        for p in domain_mix_plans(len(src), len(tgt), phase, generator=g):
            a = src if p.a == "source" else tgt
            b = src if p.b == "source" else tgt
            x = p.mix(a.images, b.images)
            out = model(x)
            ya = a.labels if p.labels_a == "labels" else a.pseudo
            yb = None if p.labels_b is None else (b.labels if p.labels_b == "labels" else b.pseudo)
            loss = loss + p.mix_loss(per_sample_loss, out, ya, yb)
    """
    for name, n in (("n_source", n_source), ("n_target", n_target)):
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise ValueError(f"{name} must be a positive int, got {n!r}")
    if phase not in _PHASES:
        raise ValueError(f"phase must be one of {_PHASES}, got {phase!r}")
    alpha = _alpha(alpha, "alpha")
    if alpha == 0:
        raise ValueError("alpha must be > 0")
    V.generator_arg(generator)
    device = V.device_arg(device)
    if device is None:
        device = generator.device if generator is not None else torch.device("cpu")
    lam_ss, idx_ss = sample_mix(n_source, alpha, pairing="random", generator=generator, device=device)
    plans = [DomainMixPlan("source", "source", lam_ss, idx_ss, "labels", "labels", n_source)]
    lam_st = sample_beta((n_source,), alpha, generator=generator, device=device)
    idx_st = _cross_index(n_source, n_target, generator, device)
    plans.append(DomainMixPlan("source", "target", lam_st, idx_st, "labels", None, n_target))
    if phase == "adaptation":
        lam_tt, idx_tt = sample_mix(n_target, alpha, pairing="random", generator=generator, device=device)
        plans.append(DomainMixPlan("target", "target", lam_tt, idx_tt, "pseudo", "pseudo", n_target))
    return plans
