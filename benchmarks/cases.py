"""What is benchmarked: the ops, their shapes and dtypes, inputs, byte models and providers.

Every benchmark is a :class:`Case` — one op at one shape and dtype. A case holds named
inputs and how each *provider* computes the op from them:

* ``reference``: the eager pure-PyTorch reference of :mod:`lossmix_ext._reference`;
* ``compiled`` (added by the harness): ``torch.compile(reference)``;
* one provider per lossmix_ext backend, calling the public API with ``backend=name``;
* extras written here from the maths (timm- / torchvision-style image mixing, ``clone``).

A provider is a function ``run(inputs) -> tensor or tuple of tensors``. ``Case.fresh``
returns the inputs for one call: the same dict, or copies of what a call mutates (the
images of an in-place mix, the class counts a ``SeesawLoss`` updates); it runs outside the
timed region.

The byte model of a case is the minimum the op must move through memory, per mode:
``fwd`` (forward only), ``bwd`` (backward only) and ``fwd+bwd``. A fused Seesaw forward +
backward reads the logits once and writes their gradient once.
"""
from __future__ import annotations

import inspect
import os
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

import lossmix_ext
from lossmix_ext import _reference as R

MODES = ("fwd", "bwd", "fwd+bwd")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class Provider:
    name: str
    run: Callable[[Dict[str, object]], object]
    #: mode -> bytes, when this provider's minimal traffic differs from the case's (``clone``)
    byte_model: Optional[Dict[str, int]] = None
    #: oracle of its own (e.g. torchvision's roll pairing instead of the case's index)
    expected: Optional[Callable[[Dict[str, object]], object]] = None
    is_backend: bool = False


@dataclass
class Case:
    op: str
    shape: Dict[str, int]
    dtype: torch.dtype
    modes: Tuple[str, ...]
    inputs: Dict[str, object]
    reference: Callable[[Dict[str, object]], object]
    byte_model: Dict[str, int]
    wrt: Tuple[str, ...] = ()          # inputs the backward differentiates
    providers: List[Provider] = field(default_factory=list)
    fresh: Callable[[Dict[str, object]], Dict[str, object]] = lambda inp: inp

    @property
    def dtype_str(self) -> str:
        return str(self.dtype).replace("torch.", "")


def nbytes(shape: Sequence[int], dtype: torch.dtype) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n * (torch.finfo(dtype).bits // 8 if dtype.is_floating_point else torch.iinfo(dtype).bits // 8)


def backends_for(registry_op: str, device: torch.device) -> List[str]:
    """The lossmix_ext backends that can run ``registry_op`` on ``device`` tensors."""
    from lossmix_ext import _backend
    return [name for name in lossmix_ext.available_backends(device)
            if _backend.unavailable_reason(name, device.type, registry_op) is None]


def _backend_providers(registry_op: str, call: Callable[[Dict[str, object], str], object],
                       device: torch.device) -> List[Provider]:
    """One provider per backend, each calling ``call(inputs, backend_name)``."""
    return [Provider(name, (lambda inp, _n=name: call(inp, _n)), is_backend=True)
            for name in backends_for(registry_op, device)]


# --------------------------------------------------------------------------- inputs
def _long_tail_counts(c: int, device, g: torch.Generator) -> Tensor:
    """Per-class sample counts with an LVIS-like long tail (a few classes with 10^4+ samples)."""
    rank = torch.randperm(c, generator=g).to(torch.float64) + 1
    return (20000.0 * rank.pow(-1.2)).floor().clamp(min=1).to(torch.float32).to(device)


def _logits(n: int, c: int, dtype, device, g) -> Tensor:
    return (2 * torch.randn(n, c, generator=g)).to(device=device, dtype=dtype).requires_grad_()


def _labels(n: int, c: int, device, g) -> Tensor:
    return torch.randint(0, c, (n,), generator=g).to(device)


# --------------------------------------------------------------------------- Seesaw family
def _seesaw_bytes(n: int, ct: int, dtype, extra: int) -> Dict[str, int]:
    """Minimal traffic: fwd reads the logits; bwd reads logits and writes the gradient;
    fwd+bwd reads the logits once and writes the gradient once. ``extra``: labels, counts, λ."""
    z = nbytes((n, ct), dtype)
    return {"fwd": z + extra, "bwd": 2 * z + extra, "fwd+bwd": 2 * z + extra}


def seesaw_loss_case(shape, dtype, device, g) -> Case:
    n, c = shape["N"], shape["C"]
    inp = {"logits": _logits(n, c, dtype, device, g), "labels": _labels(n, c, device, g),
           "counts": _long_tail_counts(c, device, g)}

    def reference(i):
        return R.seesaw_loss(i["logits"], i["labels"], i["counts"])

    def call(i, b):
        return lossmix_ext.seesaw_loss(i["logits"], i["labels"], i["counts"], backend=b)

    return Case("seesaw_loss", dict(shape), dtype, MODES, inp, reference,
                _seesaw_bytes(n, c, dtype, 8 * n + 4 * c), ("logits",),
                _backend_providers("seesaw_fwd", call, device))


def seesaw_module_case(shape, dtype, device, g) -> Case:
    """mmdetection's ``SeesawLoss`` module: C classes + 2 objectness columns (shape ``C`` is the
    class count), labels in
    [0, C] with 75% background (the RoI sampler's default 25% positives), count update
    included. The outputs are (loss_objectness, loss_classes, updated counts)."""
    n, c = shape["N"], shape["C"]
    labels = torch.where(torch.rand(n, generator=g) < 0.25, torch.randint(0, c, (n,), generator=g),
                         torch.full((n,), c)).to(device)
    counts = torch.cat([_long_tail_counts(c, "cpu", g), torch.tensor([1e6])]).to(device)
    inp = {"logits": _logits(n, c + 2, dtype, device, g), "labels": labels, "counts": counts}

    def reference(i):
        R.update_counts(i["counts"], i["labels"])
        obj, cls = R.seesaw_module_loss(i["logits"], i["labels"], i["counts"], c)
        return obj, cls, i["counts"]

    providers = []
    for name in backends_for("seesaw_fwd", device):
        module = lossmix_ext.SeesawLoss(num_classes=c, backend=name).to(device)

        def run(i, m=module):
            m._buffers["cum_samples"] = i["counts"]  # this call's copy of the counts
            out = m(i["logits"], i["labels"])
            return out["loss_cls_objectness"], out["loss_cls_classes"], i["counts"]

        providers.append(Provider(name, run, is_backend=True))
    counts_rw = 2 * 4 * (c + 1)
    return Case("seesaw_module", dict(shape), dtype, MODES, inp, reference,
                _seesaw_bytes(n, c + 2, dtype, 8 * n + counts_rw), ("logits",), providers,
                fresh=lambda i: dict(i, counts=i["counts"].clone()))


def _mixed_inputs(shape, dtype, device, g):
    n, c = shape["N"], shape["C"]
    return {"logits": _logits(n, c, dtype, device, g), "labels_a": _labels(n, c, device, g),
            "labels_b": _labels(n, c, device, g), "lam": torch.rand(n, generator=g).to(device)}


def seesaw_mixed_case(shape, dtype, device, g) -> Case:
    n, c = shape["N"], shape["C"]
    inp = _mixed_inputs(shape, dtype, device, g)
    inp["counts"] = _long_tail_counts(c, device, g)

    def reference(i):
        return R.seesaw_loss_mixed(i["logits"], i["labels_a"], i["labels_b"], i["lam"], i["counts"])

    def call(i, b):
        return lossmix_ext.seesaw_loss_mixed(i["logits"], i["labels_a"], i["labels_b"], i["lam"], i["counts"],
                                             backend=b)

    return Case("seesaw_loss_mixed", dict(shape), dtype, MODES, inp, reference,
                _seesaw_bytes(n, c, dtype, 16 * n + 4 * n + 4 * c), ("logits",),
                _backend_providers("seesaw_fwd", call, device))


def mixed_ce_case(shape, dtype, device, g) -> Case:
    n, c = shape["N"], shape["C"]
    inp = _mixed_inputs(shape, dtype, device, g)

    def reference(i):
        return R.mixed_cross_entropy(i["logits"], i["labels_a"], i["labels_b"], i["lam"])

    def call(i, b):
        return lossmix_ext.mixed_cross_entropy(i["logits"], i["labels_a"], i["labels_b"], i["lam"], backend=b)

    def two_ce(i):
        # what training code writes today: two cross-entropy calls, interpolated per sample
        x, lam = i["logits"], i["lam"]
        return (lam * F.cross_entropy(x, i["labels_a"], reduction="none")
                + (1 - lam) * F.cross_entropy(x, i["labels_b"], reduction="none")).mean()

    def soft_target(i):
        # timm-style dense soft targets: λ·onehot(y_a) + (1−λ)·onehot(y_b), then soft-target CE
        x, lam = i["logits"], i["lam"][:, None]
        target = (lam * F.one_hot(i["labels_a"], c) + (1 - lam) * F.one_hot(i["labels_b"], c)).to(x.dtype)
        return -(target * F.log_softmax(x, dim=1)).sum(1).mean()

    extras = [Provider("two_ce", two_ce), Provider("soft_target", soft_target)]
    return Case("mixed_cross_entropy", dict(shape), dtype, MODES, inp, reference,
                _seesaw_bytes(n, c, dtype, 16 * n + 4 * n), ("logits",),
                _backend_providers("seesaw_fwd", call, device) + extras)


# --------------------------------------------------------------------------- image mixing
def _images(shape, dtype, device, g) -> Tensor:
    size = (shape["B"], shape["C"], shape["H"], shape["W"])
    if dtype == torch.uint8:
        return torch.randint(0, 256, size, generator=g, dtype=torch.uint8).to(device)
    return torch.randn(size, generator=g).to(device=device, dtype=dtype)


def _normalise(x: Tensor, i) -> Tensor:
    """uint8 → float32, ``(x/255 − mean)/std``; floating images pass through."""
    if x.dtype != torch.uint8:
        return x
    chan = (1, -1, 1, 1)
    return x.float().div_(255).sub_(i["mean"].view(chan)).div_(i["std"].view(chan))


def _lam4(i) -> Tensor:
    return i["lam"].view(-1, 1, 1, 1)


def _clone_provider(x: Tensor) -> Provider:
    return Provider("clone", lambda i: i["images"].clone(), expected=lambda i: i["images"],
                    byte_model={"fwd": 2 * x.numel() * x.element_size()})


def mix_images_case(shape, dtype, device, g) -> Case:
    """Out-of-place mix with a random partner index; uint8 images give normalised float32."""
    b = shape["B"]
    x = _images(shape, dtype, device, g)
    inp = {"images": x, "lam": torch.rand(b, generator=g).to(device),
           "index": torch.randperm(b, generator=g).to(device), "roll": torch.roll(torch.arange(b), 1).to(device)}
    u8 = dtype == torch.uint8
    if u8:
        inp["mean"] = torch.tensor(IMAGENET_MEAN, device=device)
        inp["std"] = torch.tensor(IMAGENET_STD, device=device)
    kw = (lambda i: {"mean": i["mean"], "std": i["std"]}) if u8 else (lambda i: {})

    def reference(i, index="index"):
        return R.mix_images(i["images"], i["lam"], i[index], scale=1 / 255 if u8 else 1.0,
                            out_dtype=torch.float32 if u8 else None, **kw(i))

    def call(i, be):
        return lossmix_ext.mix_images(i["images"], i["lam"], i["index"], backend=be, **kw(i))

    def torchvision_style(i):
        # torchvision.transforms.v2.MixUp after ToDtype(scale=True) + Normalize: partner = roll(1, 0)
        v = _normalise(i["images"], i)
        lam = _lam4(i)
        return v.roll(1, 0).mul_(1 - lam).add_(v.mul(lam))

    out_size = x.numel() * (4 if u8 else x.element_size())
    model = {"fwd": 2 * x.numel() * x.element_size() + out_size}
    providers = _backend_providers("mix_images", call, device)
    providers += [Provider("torchvision", torchvision_style, expected=lambda i: reference(i, "roll")),
                  _clone_provider(x)]
    return Case("mix_images", dict(shape), dtype, ("fwd",), inp, reference, model, (), providers)


def mix_images_inplace_case(shape, dtype, device, g) -> Case:
    """In-place mix of involutive pairs (b ↔ B−1−b, timm's batch mode): 1 read + 1 write."""
    b = shape["B"]
    x = _images(shape, dtype, device, g)
    inp = {"images": x, "lam": torch.rand(b, generator=g).to(device), "index": torch.arange(b - 1, -1, -1).to(device)}

    def reference(i):
        return R.mix_images(i["images"], i["lam"], i["index"])

    def timm_style(i):
        # timm.data.Mixup batch mode, per-sample λ: flip the batch, mix in place
        x, lam = i["images"], _lam4(i)
        flipped = x.flip(0).mul_(1 - lam)
        return x.mul_(lam).add_(flipped)

    providers = []
    if hasattr(lossmix_ext, "mix_images_"):
        def call(i, be):
            return lossmix_ext.mix_images_(i["images"], i["lam"], i["index"], backend=be)
        providers = _backend_providers("mix_images_", call, device)
    providers += [Provider("timm_inplace", timm_style), _clone_provider(x)]
    model = {"fwd": 2 * x.numel() * x.element_size()}
    return Case("mix_images_", dict(shape), dtype, ("fwd",), inp, reference, model, (), providers,
                fresh=lambda i: dict(i, images=i["images"].clone()))


# --------------------------------------------------------------------------- LossMix reduction
def lossmix_reduce_case(shape, dtype, device, g) -> Case:
    size = (shape["B"], shape["K"]) if "K" in shape else (shape["N"],)
    loss = lambda: torch.rand(size, generator=g).mul(5).to(device=device, dtype=dtype).requires_grad_()  # noqa: E731
    inp = {"loss_a": loss(), "loss_b": loss(), "lam": torch.rand(size[0], generator=g).to(device)}

    def reference(i):
        return R.lossmix_reduce(i["loss_a"], i["loss_b"], i["lam"])

    if "backend" in inspect.signature(lossmix_ext.lossmix_reduce).parameters:
        providers = _backend_providers(
            "lossmix_reduce", lambda i, b: lossmix_ext.lossmix_reduce(i["loss_a"], i["loss_b"], i["lam"], backend=b),
            device)
    else:  # plain PyTorch in the public API: one provider
        providers = [Provider("lossmix_ext", lambda i: lossmix_ext.lossmix_reduce(i["loss_a"], i["loss_b"], i["lam"]),
                              is_backend=True)]
    a = nbytes(size, dtype)
    lam = 4 * size[0]
    model = {"fwd": 2 * a + lam, "bwd": 2 * a + lam, "fwd+bwd": 4 * a + lam}
    return Case("lossmix_reduce", dict(shape), dtype, MODES, inp, reference, model, ("loss_a", "loss_b"),
                providers)


# --------------------------------------------------------------------------- the sets
@dataclass(frozen=True)
class Op:
    build: Callable[..., Case]
    kind: str                         # "loss" | "image" | "reduce": picks shapes and dtypes
    quick_modes: Tuple[str, ...]


OPS: Dict[str, Op] = {
    "seesaw_loss": Op(seesaw_loss_case, "loss", MODES),
    "seesaw_module": Op(seesaw_module_case, "loss", ("fwd+bwd",)),
    "seesaw_loss_mixed": Op(seesaw_mixed_case, "loss", ("fwd+bwd",)),
    "mixed_cross_entropy": Op(mixed_ce_case, "loss", ("fwd+bwd",)),
    "mix_images": Op(mix_images_case, "image", ("fwd",)),
    "mix_images_": Op(mix_images_inplace_case, "image_inplace", ("fwd",)),
    "lossmix_reduce": Op(lossmix_reduce_case, "reduce", ("fwd+bwd",)),
}

SHAPES = {
    "quick-check": {"loss": [{"N": 64, "C": 17}], "image": [{"B": 4, "C": 3, "H": 8, "W": 8}],
                    "reduce": [{"N": 64}]},
    "quick": {"loss": [{"N": 4096, "C": 1203}], "image": [{"B": 64, "C": 3, "H": 224, "W": 224}],
              "reduce": [{"N": 4096}]},
    "full": {"loss": [{"N": n, "C": c} for c in (81, 1204, 4096, 32768) for n in (512, 4096, 8192)],
             "image": [{"B": 64, "C": 3, "H": h, "W": w} for h, w in ((224, 224), (800, 1333))],
             "reduce": [{"N": n} for n in (512, 4096, 8192)] + [{"B": 64, "K": 65536}]},
}


HALF = (torch.bfloat16, torch.float16)


def dtypes_for(kind: str, set_name: str, device: torch.device) -> List[torch.dtype]:
    """float32 and the half-precision dtypes training runs in (the quick set's dtype columns),
    plus uint8 → normalised float32 for out-of-place image mixing; the quick-check set only
    float32. A case whose reference cannot run a dtype is dropped, saying so."""
    if set_name == "quick-check":
        return [torch.float32]
    half = list(HALF) if device.type != "cuda" or torch.cuda.is_bf16_supported() else [torch.float16]
    if kind == "image":
        return [torch.float32, torch.uint8] + half
    return [torch.float32] + half


def modes_for(op: "Op", set_name: str, dtype: torch.dtype) -> Optional[Tuple[str, ...]]:
    """The modes timed: all in the full set; the op's quick modes in the quick sets, and for the
    half-precision columns only the op's main mode (fwd+bwd for losses)."""
    if set_name == "full":
        return None
    if dtype in HALF and "fwd+bwd" in op.quick_modes:
        return ("fwd+bwd",)
    return op.quick_modes


class SkipCase(Exception):
    """Raised by a case's ``build()`` when the case cannot run here (the reason is the message)."""


def _memory_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def reference_footprint(kind: str, shape: Dict[str, int]) -> int:
    """Rough peak memory of the eager Seesaw reference: a few C×C and ~16 N×C float32 tensors."""
    if kind != "loss":
        return 0
    n, c = shape["N"], shape["C"] + 2
    return 4 * (4 * c * c + 16 * n * c)


def cases(op_names: Sequence[str], set_name: str, device: torch.device, seed: int = 0):
    """Yield ``(op, shape, dtype, build)`` for the chosen set; ``build()`` makes the Case or
    raises :class:`SkipCase` (e.g. the reference would not fit in memory: on a CPU the out-of-
    memory killer, unlike a CUDA allocation failure, cannot be caught)."""
    for name in op_names:
        op = OPS[name]
        shape_kind = "image" if op.kind.startswith("image") else op.kind
        for dtype in dtypes_for(op.kind, set_name, device):
            modes = modes_for(op, set_name, dtype)
            for shape in SHAPES[set_name][shape_kind]:
                def build(op=op, shape=shape, dtype=dtype, modes=modes):
                    need, have = reference_footprint(op.kind, shape), _memory_bytes(device)
                    if need > 0.6 * have:
                        raise SkipCase(f"the eager reference needs ~{need / 2**30:.0f} GiB, "
                                       f"more than 60% of the {have / 2**30:.0f} GiB here")
                    g = torch.Generator().manual_seed(seed)
                    case = op.build(shape, dtype, device, g)
                    if modes is not None:
                        case.modes = tuple(m for m in case.modes if m in modes)
                    return case
                yield name, shape, dtype, build
