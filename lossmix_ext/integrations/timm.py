"""A drop-in for ``timm.data.Mixup`` backed by the fused in-place mixing kernel.

``timm``'s training script builds ``mixup_fn = Mixup(**mixup_args)`` and calls
``input, target = mixup_fn(input, target)`` before a soft-target loss; swapping the import is
the whole change::

    from lossmix_ext.integrations.timm import Mixup   # instead of: from timm.data import Mixup

Same constructor arguments, ``mixup_enabled`` switch and ``__call__(x, target) -> (x, soft_target)``;
the same λ, pairing (sample b with B−1−b), CutMix boxes (timm 1.0's ``rand_bbox`` /
``rand_bbox_minmax`` rules, λ corrected from the clipped box) and soft targets for the same
draws. What differs: the draws come from torch's generator on the batch's device instead of
NumPy's global one (nothing goes to or from the host, no per-sample Python loop), the batch
is mixed in place in one pass by :func:`lossmix_ext.mix_images_` (timm also mixes ``x`` in
place), odd batch sizes are allowed (the middle sample of ``elem`` / ``pair`` modes is its
own partner: left as it is, λ = 1), and an unknown ``mode`` is an error (timm silently uses
``batch``). timm itself is not needed.

The LossMix form: ``x, plan = mixup_fn.mix(x)`` returns the :class:`~lossmix_ext.MixPlan`
instead of dense soft targets, and ``mixup_fn.loss(logits, target, plan)`` is
``λ·CE(logits, target) + (1−λ)·CE(logits, target[index])`` per sample (with the label
smoothing of the object; the fused mixed cross-entropy when there is none) — equal to
``SoftTargetCrossEntropy()(logits, soft_target)``.
"""
from __future__ import annotations

import importlib
import math
from dataclasses import dataclass
from numbers import Real
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import _reference
from .. import _validation as V
from ..functional import _inplace_images, mix_images_, sample_beta
from ..mix import MixPlan

__all__ = ["Mixup", "FastCollateMixup", "MixDraw", "mixup_target"]

_MODES = ("batch", "pair", "elem")


@dataclass
class MixDraw:
    """The random draws of one call, one entry per parameter set (B for ``elem``, B//2 for
    ``pair``, 1 for ``batch``), all on the batch's device:

    ``lam_raw`` float32: λ as drawn (1 where the set is not mixed); ``use_cutmix`` bool;
    ``boxes`` int64 (y0, x0, y1, x1) half-open (empty unless CutMix with λ_raw ≠ 1);
    ``lam`` float32: the weight of the sample's own target (λ corrected from the box area
    where timm corrects it)."""
    lam_raw: Tensor
    use_cutmix: Tensor
    boxes: Tensor
    lam: Tensor


def mixup_target(target: Tensor, num_classes: int, lam: Tensor, smoothing: float = 0.0,
                 multi_label: bool = False) -> Tensor:
    """timm's soft target for the ``flip`` pairing: ``y·λ + y.flip(0)·(1−λ)`` with ``y`` the
    smoothed one-hot labels (``multi_label``: dense targets smoothed towards 0.5); ``lam`` (B,)
    or a number. float32, on the target's device."""
    if multi_label:
        y1 = target.float() * (1.0 - smoothing) + 0.5 * smoothing
    else:
        off_value = smoothing / num_classes
        on_value = 1.0 - smoothing + off_value
        y1 = torch.full((target.shape[0], num_classes), off_value, device=target.device)
        y1.scatter_(1, target.long().view(-1, 1), on_value)
    y2 = y1.flip(0)
    if isinstance(lam, Tensor):
        lam = lam.to(y1.dtype).view(-1, 1)
    return y1 * lam + y2 * (1.0 - lam)


def _alpha(v, name: str) -> float:
    if not isinstance(v, Real) or isinstance(v, bool):
        raise TypeError(f"{name} must be a number, got {type(v).__name__}")
    if not math.isfinite(float(v)) or float(v) < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {v!r}")
    return float(v)


def _unit(v, name: str) -> float:
    if not isinstance(v, Real) or isinstance(v, bool):
        raise TypeError(f"{name} must be a number, got {type(v).__name__}")
    if not 0.0 <= float(v) <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {v!r}")
    return float(v)


class Mixup:
    """Mixup / CutMix with timm's arguments and results (see the module docstring).

    Args (as ``timm.data.Mixup``):
        mixup_alpha: mixup Beta(α, α) parameter, active if > 0.
        cutmix_alpha: CutMix Beta parameter, active if > 0.
        cutmix_minmax: (min, max) box side ratios; CutMix with boxes of uniform size in that
            range (and α forced to 1.0, as timm does).
        prob: probability of mixing, per batch / pair / element.
        switch_prob: probability of CutMix instead of mixup when both are active.
        mode: ``"batch"`` (one λ and box for the batch), ``"pair"`` (per pair b, B−1−b) or
            ``"elem"`` (per element).
        correct_lam: λ from the clipped box area for CutMix.
        label_smoothing, num_classes, multi_label: of the soft targets.
        generator: a ``torch.Generator`` on the batch's device for every draw (else torch's
            default generator of that device).
        backend: backend of the mixing kernel (default: automatic).
    """

    _MODES = _MODES

    def __init__(self, mixup_alpha: float = 1.0, cutmix_alpha: float = 0.0,
                 cutmix_minmax: Optional[Sequence[float]] = None, prob: float = 1.0, switch_prob: float = 0.5,
                 mode: str = "batch", correct_lam: bool = True, label_smoothing: float = 0.1,
                 num_classes: int = 1000, multi_label: bool = False, *,
                 generator: Optional[torch.Generator] = None, backend: Optional[str] = None):
        self.mixup_alpha = _alpha(mixup_alpha, "mixup_alpha")
        self.cutmix_alpha = _alpha(cutmix_alpha, "cutmix_alpha")
        self.cutmix_minmax = None
        if cutmix_minmax is not None:
            if isinstance(cutmix_minmax, (str, bytes)) or not hasattr(cutmix_minmax, "__len__") \
                    or len(cutmix_minmax) != 2:
                raise ValueError(f"cutmix_minmax must be a (min, max) pair, got {cutmix_minmax!r}")
            lo, hi = (_unit(v, "cutmix_minmax") for v in cutmix_minmax)
            if lo > hi:
                raise ValueError(f"cutmix_minmax must have min <= max, got {cutmix_minmax!r}")
            self.cutmix_minmax = (lo, hi)
            self.cutmix_alpha = 1.0  # as timm: minmax boxes, alpha forced to 1
        if self.mixup_alpha == 0.0 and self.cutmix_alpha == 0.0:
            raise ValueError("one of mixup_alpha > 0, cutmix_alpha > 0 or cutmix_minmax must be set")
        self.mix_prob = _unit(prob, "prob")
        self.switch_prob = _unit(switch_prob, "switch_prob")
        if mode not in self._MODES:
            raise ValueError(f"mode must be one of {self._MODES}, got {mode!r}")
        self.mode = mode
        self.correct_lam = bool(correct_lam)
        self.label_smoothing = _unit(label_smoothing, "label_smoothing")
        if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
        self.num_classes = num_classes
        self.multi_label = bool(multi_label)
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
        self.generator = generator
        V.backend_arg(backend)
        self.backend = backend
        self.mixup_enabled = True  # the training loop may switch mixing off (timm's attribute)
        self._flip: Dict[Tuple[int, torch.device], Tensor] = {}

    # ------------------------------------------------------------------ draws
    def __repr__(self) -> str:
        return (f"{type(self).__name__}(mixup_alpha={self.mixup_alpha}, cutmix_alpha={self.cutmix_alpha}, "
                f"cutmix_minmax={self.cutmix_minmax}, prob={self.mix_prob}, switch_prob={self.switch_prob}, "
                f"mode={self.mode!r}, correct_lam={self.correct_lam}, label_smoothing={self.label_smoothing}, "
                f"num_classes={self.num_classes})")

    def _sets(self, batch_size: int) -> int:
        return batch_size if self.mode == "elem" else batch_size // 2 if self.mode in ("pair", "half") else 1

    def draw(self, batch_size: int, height: int, width: int, device=None) -> MixDraw:
        """The draws for a batch of ``batch_size`` images of ``height × width`` (see :class:`MixDraw`)."""
        g = self.generator
        device = torch.device(device) if device is not None else (g.device if g is not None else torch.device("cpu"))
        n = self._sets(batch_size)
        ones = torch.ones(n, device=device)
        use_cut = torch.zeros(n, dtype=torch.bool, device=device)
        lam_raw = ones
        if self.mixup_enabled and n > 0:
            if self.mixup_alpha > 0 and self.cutmix_alpha > 0:
                use_cut = torch.rand(n, generator=g, device=device) < self.switch_prob
                lam_mix = torch.where(use_cut, sample_beta((n,), self.cutmix_alpha, generator=g, device=device),
                                      sample_beta((n,), self.mixup_alpha, generator=g, device=device))
            elif self.mixup_alpha > 0:
                lam_mix = sample_beta((n,), self.mixup_alpha, generator=g, device=device)
            else:
                use_cut = torch.ones(n, dtype=torch.bool, device=device)
                lam_mix = sample_beta((n,), self.cutmix_alpha, generator=g, device=device)
            if self.mix_prob < 1.0:
                lam_raw = torch.where(torch.rand(n, generator=g, device=device) < self.mix_prob, lam_mix, ones)
            else:
                lam_raw = lam_mix
        boxes = torch.zeros((n, 4), dtype=torch.long, device=device)
        lam = lam_raw
        if self.cutmix_alpha > 0 and self.mixup_enabled and n > 0:
            cut = use_cut & (lam_raw != 1.0)  # timm cuts only where λ != 1
            boxes = torch.where(cut[:, None], self._boxes(lam_raw, height, width, device), boxes)
            if self.correct_lam or self.cutmix_minmax is not None:
                area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
                lam = torch.where(cut, (1.0 - area.double() / float(height * width)).float(), lam_raw)
        return MixDraw(lam_raw=lam_raw, use_cutmix=use_cut, boxes=boxes, lam=lam)

    def _boxes(self, lam: Tensor, h: int, w: int, device) -> Tensor:
        g, n = self.generator, lam.shape[0]
        if self.cutmix_minmax is not None:
            lo, hi = self.cutmix_minmax
            # timm: cut = randint(int(H·min), int(H·max)), corner = randint(0, H − cut + 1)
            def side(size):
                a, b = int(size * lo), int(size * hi)
                cut = a + (torch.rand(n, generator=g, device=device, dtype=torch.float64) * max(b - a, 0)).long()
                if b <= a:  # numpy's randint(a, a) raises; an empty range gives its low end here
                    cut = torch.full((n,), a, dtype=torch.long, device=device)
                start = (torch.rand(n, generator=g, device=device, dtype=torch.float64)
                         * (size - cut + 1).double()).long()
                return start, start + cut
            y0, y1 = side(h)
            x0, x1 = side(w)
        else:
            # timm: ratio = √(1−λ), cut = ⌊size·ratio⌋, centre uniform, [c − cut//2, c + (cut+1)//2) clipped
            ratio = torch.sqrt((1.0 - lam.double()).clamp(min=0.0))
            cut_h, cut_w = (h * ratio).long(), (w * ratio).long()
            cy = torch.randint(0, h, (n,), generator=g, device=device)
            cx = torch.randint(0, w, (n,), generator=g, device=device)
            y0, y1 = (cy - cut_h // 2).clamp(0, h), (cy + (cut_h + 1) // 2).clamp(0, h)
            x0, x1 = (cx - cut_w // 2).clamp(0, w), (cx + (cut_w + 1) // 2).clamp(0, w)
        return torch.stack([y0, x0, y1, x1], dim=1)

    def plan(self, draw: MixDraw, batch_size: int) -> MixPlan:
        """The per-sample :class:`~lossmix_ext.MixPlan` of ``draw`` for ``batch_size`` samples:
        partner B−1−b, parameters per sample (a pair's for both members, the batch's for all)."""
        B = batch_size
        dev = draw.lam.device
        index = self._flip_index(B, dev)
        if self.mode == "elem":
            lam, lam_raw, boxes, cut = draw.lam, draw.lam_raw, draw.boxes, draw.use_cutmix
        elif self.mode == "batch":
            lam, lam_raw = draw.lam.expand(B), draw.lam_raw.expand(B)
            boxes, cut = draw.boxes.expand(B, 4), draw.use_cutmix.expand(B)
        else:  # pair: sets i and B−1−i share parameters; an odd B's middle sample is unmixed
            half = B // 2
            one = torch.ones(B - 2 * half, device=dev)
            lam = torch.cat([draw.lam, one, draw.lam.flip(0)])
            lam_raw = torch.cat([draw.lam_raw, one, draw.lam_raw.flip(0)])
            boxes = torch.cat([draw.boxes, torch.zeros((B - 2 * half, 4), dtype=torch.long, device=dev),
                               draw.boxes.flip(0)])
            cut = torch.cat([draw.use_cutmix, torch.zeros(B - 2 * half, dtype=torch.bool, device=dev),
                             draw.use_cutmix.flip(0)])
        # pixels outside the box: own weight λ for mixup samples, 1 (kept) for CutMix samples
        pixel_lam = torch.where(cut, torch.ones_like(lam_raw), lam_raw)
        return MixPlan(lam=lam.contiguous(), index=index, boxes=boxes.contiguous(), pixel_lam=pixel_lam.contiguous())

    def _flip_index(self, B: int, device: torch.device) -> Tensor:
        key = (B, device)
        idx = self._flip.get(key)
        if idx is None:
            idx = self._flip[key] = torch.arange(B - 1, -1, -1, device=device)
        return idx

    # ------------------------------------------------------------------ mixing
    def _check_x(self, x: Tensor) -> None:
        if not isinstance(x, Tensor):
            raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
        if not x.is_floating_point():
            raise TypeError(f"x must be a floating tensor (the batch is mixed in place), got {x.dtype}")
        if x.dim() != 4 and self.cutmix_alpha > 0:
            raise ValueError(f"x must be (B, C, H, W) for CutMix, got shape {tuple(x.shape)}")
        if x.dim() < 1 or x.shape[0] < 1:
            raise ValueError(f"x must be a batch (B, ...) with B >= 1, got shape {tuple(x.shape)}")
        if self.generator is not None and self.generator.device.type != x.device.type:
            raise ValueError(f"the generator is on {self.generator.device} but x is on {x.device}")

    def mix(self, x: Tensor) -> Tuple[Tensor, MixPlan]:
        """Mix ``x`` in place; return it with the :class:`~lossmix_ext.MixPlan` (the LossMix form).

        ``x``: a floating batch (B, C, H, W), NCHW or channels_last; without CutMix
        (``cutmix_alpha=0``) any batch (B, ...), e.g. feature vectors (B, D), as timm mixes them."""
        self._check_x(x)
        B = x.shape[0]
        h, w = (x.shape[-2], x.shape[-1]) if x.dim() == 4 else (1, 1)
        plan = self.plan(self.draw(B, h, w, x.device), B)
        if self.mixup_enabled:
            boxes = plan.boxes if self.cutmix_alpha > 0 else None
            _inplace_images(x, "x")  # the in-place conditions, naming timm's argument
            mix_images_(x, plan.pixel_lam, plan.index, boxes=boxes, backend=self.backend)
        return x, plan

    def __call__(self, x: Tensor, target: Tensor) -> Tuple[Tensor, Tensor]:
        self._check_target(x, target)
        x, plan = self.mix(x)
        return x, mixup_target(target, self.num_classes, plan.lam, self.label_smoothing, self.multi_label)

    def _check_target(self, x, target) -> None:
        if not isinstance(target, Tensor):
            raise TypeError(f"target must be a torch.Tensor, got {type(target).__name__}")
        if isinstance(x, Tensor) and x.dim() >= 1 and target.shape[:1] != x.shape[:1]:
            raise ValueError(f"target must have one entry per sample ({x.shape[0]}), got shape {tuple(target.shape)}")
        if self.multi_label:
            if target.dim() != 2 or target.shape[1] != self.num_classes:
                raise ValueError("multi-label mixup expects dense targets shaped (batch, num_classes), got "
                                 f"{tuple(target.shape)}")
        elif target.dim() != 1 or target.dtype.is_floating_point or target.dtype == torch.bool:
            raise ValueError(f"target must be (B,) integer class labels, got {target.dtype} {tuple(target.shape)}")

    def loss(self, logits: Tensor, target: Tensor, plan: MixPlan, reduction: str = "mean") -> Tensor:
        """``λ·CE(logits, target) + (1−λ)·CE(logits, target[index])`` per sample, reduced —
        ``SoftTargetCrossEntropy`` of the soft targets, without building them (class labels)."""
        if self.multi_label:
            raise ValueError("loss() takes class labels; with multi_label use the soft targets of __call__")
        if self.label_smoothing == 0.0:
            return plan.cross_entropy(logits, target, reduction=reduction)
        eps = self.label_smoothing
        return plan.mix_loss(lambda o, t: F.cross_entropy(o, t, label_smoothing=eps, reduction="none"),
                             logits, target, reduction=reduction)


# --------------------------------------------------------------------------- FastCollateMixup
class FastCollateMixup(Mixup):
    """A drop-in for ``timm.data.FastCollateMixup``: Mixup / CutMix while collating, as timm's
    training script does with its prefetcher (the default)::

        from lossmix_ext.integrations.timm import FastCollateMixup   # instead of timm.data's
        collate_fn = FastCollateMixup(**mixup_args)
        loader = timm.data.create_loader(dataset, ..., collate_fn=collate_fn, use_prefetcher=True)

    The constructor is timm's (``mode`` also ``"half"``: mix the first half of the batch with the
    second and return the first half). ``collate(batch)`` takes a list of ``(image, label)``
    with uint8 images — NumPy arrays (timm's ``ToNumpy`` gives CHW views of HWC arrays) or CPU
    tensors, all of one shape, (C, H, W) for CutMix — and returns a uint8 batch (B, C, H, W)
    (B/2 rows in ``half`` mode), contiguous, and the soft targets (float32), as timm's.

    Identical to timm's for the same draws: the pairing (b with B−1−b), λ and boxes (timm 1.0's
    rules, λ corrected from the clipped box), the mixed pixels (timm's float32 arithmetic, two
    products and a sum each rounded, then rounded half to even) and the soft targets. The
    draws come from torch's CPU generator (``generator=``, else the default one, which
    ``DataLoader`` seeds differently in each worker — a ``generator`` given here is copied into
    every worker with the same state, so leave it None there); the batch is written in one
    pass per image row by a native kernel (``lossmix_ext._C``; plain torch ops without it),
    into shared memory in a DataLoader worker (as ``default_collate``), with no per-sample
    Python loop and without changing the samples (timm's ``half`` mode pastes
    CutMix boxes into its input samples). Odd batches work (the middle sample is its own
    partner); images must be uint8; an unknown ``mode`` is an error.

    When timm is importable, instances are also instances of ``timm.data.FastCollateMixup``
    (the object's class derives from both), so that timm's ``PrefetchLoader.mixup_enabled``,
    which ``train.py`` uses to switch mixing off after ``--mixup-off-epoch``, finds it.
    """

    _MODES = _MODES + ("half",)

    def __new__(cls, *args, **kwargs):
        if cls is FastCollateMixup:
            cls = _timm_collate_class() or cls
        return super().__new__(cls)

    def __call__(self, batch, _=None) -> Tuple[Tensor, Tensor]:
        samples, shape = _collate_samples(batch, self.cutmix_alpha > 0)
        B = len(samples)
        if self.generator is not None and self.generator.device.type != "cpu":
            raise ValueError(f"the generator is on {self.generator.device}, but collating runs on the CPU")
        target = _collate_targets(batch)
        self._check_collated_target(target, B)
        h, w = (shape[-2], shape[-1]) if len(shape) == 3 else (1, 1)
        draw = self.draw(B, h, w, "cpu")
        if self.mode == "half":
            n = B // 2
            partner = torch.arange(B - 1, B - 1 - n, -1)
            pixel_lam = torch.where(draw.use_cutmix, torch.ones_like(draw.lam_raw), draw.lam_raw)
            boxes, lam = draw.boxes, torch.cat([draw.lam, torch.ones(B - n)])
        else:
            n = B
            plan = self.plan(draw, B)
            partner, pixel_lam, boxes, lam = plan.index, plan.pixel_lam, plan.boxes, plan.lam
        out = _new_batch((n, *shape))
        _collate_mix(out, samples, partner, pixel_lam.float().contiguous(), boxes.contiguous())
        soft = mixup_target(target, self.num_classes, lam, self.label_smoothing, self.multi_label)
        return out, soft[:n]

    def _check_collated_target(self, target: Tensor, batch_size: int) -> None:
        if self.multi_label:
            if target.dim() != 2 or target.shape != (batch_size, self.num_classes):
                raise ValueError(f"multi-label mixup expects dense targets shaped (batch, num_classes) = "
                                 f"({batch_size}, {self.num_classes}), got {tuple(target.shape)}")
        elif target.dim() != 1 or target.dtype.is_floating_point or target.dtype == torch.bool:
            raise ValueError(f"batch labels must be integer class labels (one per sample), got {target.dtype} "
                             f"{tuple(target.shape)}")


_TIMM_COLLATE_CLASS = None


def _timm_collate_class():
    """:class:`FastCollateMixup` with ``timm.data.FastCollateMixup`` as a second base (made once,
    when timm first imports); None without timm."""
    global _TIMM_COLLATE_CLASS
    if _TIMM_COLLATE_CLASS is None:
        try:
            base = importlib.import_module("timm.data.mixup").FastCollateMixup
        except Exception:  # timm missing, or not importable here (e.g. its torchvision)
            return None
        _TIMM_COLLATE_CLASS = type("FastCollateMixup", (FastCollateMixup, base),
                                   {"__module__": __name__, "__qualname__": "_TimmFastCollateMixup",
                                    "__doc__": FastCollateMixup.__doc__})
    return _TIMM_COLLATE_CLASS


def __getattr__(name: str):
    # pickle finds the combined class by this name (DataLoader workers started by spawn / forkserver)
    if name == "_TimmFastCollateMixup":
        cls = _timm_collate_class()
        if cls is not None:
            return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _collate_samples(batch, cutmix: bool) -> Tuple[List[Tensor], Tuple[int, ...]]:
    """The images of ``batch`` (a list of (image, label)) as uint8 CPU tensors (NumPy arrays
    shared, not copied), all of one shape; (C, H, W) when ``cutmix``."""
    if isinstance(batch, (str, bytes)) or not hasattr(batch, "__len__") or not hasattr(batch, "__getitem__"):
        raise TypeError(f"batch must be a list of (image, label) pairs, got {type(batch).__name__}")
    if len(batch) == 0:
        raise ValueError("batch must hold at least one (image, label) pair, got an empty batch")
    samples = []
    shape = None
    for k, item in enumerate(batch):
        if not isinstance(item, (tuple, list)) or len(item) < 2:
            raise TypeError(f"batch must be a list of (image, label) pairs; item {k} is {type(item).__name__}")
        img = item[0]
        if isinstance(img, Tensor):
            if img.device.type != "cpu":
                raise ValueError(f"batch images must be on the CPU (collating runs there); item {k} is on {img.device}")
        elif type(img).__module__ == "numpy" and hasattr(img, "dtype"):
            if any(st < 0 for st in img.strides):
                img = img.copy()
            img = torch.from_numpy(img)
        else:
            raise TypeError(f"batch images must be uint8 NumPy arrays or tensors; item {k} is {type(img).__name__}")
        if img.dtype != torch.uint8:
            raise TypeError(f"batch images must be uint8 (timm's prefetcher pipeline); item {k} is {img.dtype}")
        if shape is None:
            shape = tuple(img.shape)
            if cutmix and len(shape) != 3:
                raise ValueError(f"batch images must be (C, H, W) for CutMix; item 0 has shape {shape}")
        elif tuple(img.shape) != shape:
            raise ValueError(f"batch images must all have one shape; item 0 is {shape}, item {k} is "
                             f"{tuple(img.shape)}")
        samples.append(img)
    return samples, shape


def _new_batch(shape: Tuple[int, ...]) -> Tensor:
    """An empty uint8 batch; in a DataLoader worker process in shared memory, as torch's
    ``default_collate`` makes it, so that handing it to the main process copies nothing."""
    if torch.utils.data.get_worker_info() is not None:
        try:
            storage = torch.empty(0, dtype=torch.uint8)._typed_storage()._new_shared(math.prod(shape))
            return torch.empty(0, dtype=torch.uint8).set_(storage).view(shape)
        except (AttributeError, RuntimeError):  # a torch without these (private) helpers
            pass
    return torch.empty(shape, dtype=torch.uint8)


def _collate_targets(batch) -> Tensor:
    from torch.utils.data import default_collate
    return default_collate([item[1] for item in batch])


_NATIVE_COLLATE: Optional[bool] = None  # whether lossmix_ext._C has timm_collate_mix_ (found on first use)


def _collate_mix(out: Tensor, samples: List[Tensor], partner: Tensor, lam: Tensor, boxes: Tensor) -> None:
    """``out[i]`` (uint8, contiguous (n, *shape)): sample i mixed with sample ``partner[i]`` as
    timm's FastCollateMixup computes it — the partner's pixels inside box i, sample i's where
    ``lam[i] == 1``, else ``rint(x_i·λ + x_p·(1−λ))`` in float32 without fused multiply-adds."""
    global _NATIVE_COLLATE
    if _NATIVE_COLLATE is None:
        from .. import _ops
        _NATIVE_COLLATE = _ops._native is not None and hasattr(torch.ops.lossmix_ext, "timm_collate_mix_")
    shape = tuple(out.shape[1:])
    if len(shape) != 3:  # feature batches (mixup only): each sample one row of values
        p = math.prod(shape)
        samples = [s.reshape(1, 1, p) for s in samples]
        out = out.view(out.shape[0], 1, 1, p)
    hwc = [s.dim() == 3 and not s.is_contiguous() and s.stride(0) == 1 and s.stride(2) == s.shape[0]
           and s.stride(1) == s.shape[0] * s.shape[2] for s in samples]
    if not (all(hwc) or not any(hwc)) or not all(h or s.is_contiguous() for h, s in zip(hwc, samples)):
        samples = [s.contiguous() for s in samples]
    if _NATIVE_COLLATE:
        torch.ops.lossmix_ext.timm_collate_mix_(out, samples, partner, lam, boxes)
    else:
        _collate_mix_torch(out, samples, partner, lam, boxes)


def _collate_mix_torch(out: Tensor, samples: List[Tensor], partner: Tensor, lam: Tensor, boxes: Tensor) -> None:
    """:func:`_collate_mix` with plain torch ops (without the native extension): the same values."""
    x = torch.stack(samples)
    n = out.shape[0]
    own, part = x[:n], x[partner]
    view = (-1,) + (1,) * (x.dim() - 1)
    mixed = own.float().mul_(lam.view(view)).add_(part.float().mul_((1 - lam).view(view))).round_().to(torch.uint8)
    inside = _reference.cutmix_mask(boxes, x.shape[-2], x.shape[-1]).unsqueeze(1)
    out.copy_(torch.where(inside, part, mixed))
