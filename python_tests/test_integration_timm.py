"""``lossmix_ext.integrations.timm.Mixup`` / ``FastCollateMixup`` against timm's own
``timm.data.Mixup`` / ``timm.data.FastCollateMixup``.

Equality is checked by replaying our draws (λ, CutMix flags, boxes) inside timm's class: its
parameter methods and ``cutmix_bbox_and_lam`` are replaced by ones returning our draws, and
everything else — the per-sample loop, the mixing arithmetic and its rounding, λ correction,
``mixup_target`` — is timm's code. Tests that need no timm check the formulas directly. The
training loop through timm's loader and model is in ``test_timm_training_loop.py``.
"""
from __future__ import annotations

import math
import pickle
import subprocess
import sys

import pytest
import torch

import torch.nn.functional as F

import lossmix_ext as L
import lossmix_ext.integrations.timm as plugin
from lossmix_ext import _reference as R
from lossmix_ext.integrations.timm import FastCollateMixup, Mixup, mixup_target

from benchmarks.frameworks import import_timm

np = pytest.importorskip("numpy", reason="the framework (and these tests) need numpy")
TIMM, TIMM_NOTE = import_timm()
needs_timm = pytest.mark.skipif(TIMM is None, reason=f"timm: {TIMM_NOTE}")

MODES = ("elem", "pair", "batch")
CONFIGS = {
    "both": dict(mixup_alpha=0.8, cutmix_alpha=1.0, prob=0.8),
    "cutmix": dict(mixup_alpha=0.0, cutmix_alpha=1.0, label_smoothing=0.0),
    "mixup": dict(mixup_alpha=1.0, cutmix_alpha=0.0),
    "minmax": dict(mixup_alpha=0.8, cutmix_alpha=1.0, cutmix_minmax=(0.2, 0.8)),
    "uncorrected": dict(mixup_alpha=0.8, cutmix_alpha=1.0, correct_lam=False, switch_prob=0.7),
    "rare": dict(mixup_alpha=0.5, cutmix_alpha=0.5, prob=0.3, label_smoothing=0.2),
}
BACKENDS = [b for b in ("torch", "cpu", "triton") if b in L.available_backends("cpu", op="mix_images_")]


def _batch(b, h=16, w=20, k=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, 3, h, w, generator=g), torch.randint(0, k, (b,), generator=g)


def _timm_replay(mode, draw, x, target, cls="Mixup", **kw):
    """timm's ``Mixup`` on ``x`` (mutated) with our draws; ``cls="FastCollateMixup"``: timm's
    collate on the batch ``x`` (a list of (image, label))."""
    import timm.data.mixup as TM
    ref = getattr(TM, cls)(mode=mode, num_classes=kw.pop("num_classes", 10), **kw)
    if mode == "batch":
        # timm's per-batch draw says "no CutMix" when the batch is not mixed (λ = 1)
        ref._params_per_batch = lambda: (float(draw.lam_raw[0]),
                                         bool(draw.use_cutmix[0]) and float(draw.lam_raw[0]) != 1.0)
    else:
        ref._params_per_elem = lambda n: (draw.lam_raw.numpy().copy(), draw.use_cutmix.numpy().copy())
    # the boxes, in the order timm asks for them (sets with CutMix and λ != 1), as (yl, yh, xl, xh)
    calls = iter([((int(b[0]), int(b[2]), int(b[1]), int(b[3])), float(lam))
                  for b, lam, cut, raw in zip(draw.boxes, draw.lam, draw.use_cutmix, draw.lam_raw)
                  if cut and raw != 1.0])
    saved = TM.cutmix_bbox_and_lam
    TM.cutmix_bbox_and_lam = lambda *a, **k: next(calls)
    try:
        return ref(x) if cls == "FastCollateMixup" else ref(x, target)
    finally:
        TM.cutmix_bbox_and_lam = saved


@needs_timm
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("config", list(CONFIGS))
@pytest.mark.parametrize("mode", MODES)
def test_equals_timm_for_the_same_draws(mode, config, backend):
    kw = CONFIGS[config]
    for seed in range(3):
        x, t = _batch(8, seed=seed)
        ours = Mixup(mode=mode, num_classes=10, generator=torch.Generator().manual_seed(seed), backend=backend, **kw)
        draw = ours.draw(8, 16, 20)
        want_x, want_t = _timm_replay(mode, draw, x.clone(), t, **kw)
        ours.generator = torch.Generator().manual_seed(seed)  # the same draws again
        y = x.clone()
        got_x, got_t = ours(y, t)
        assert got_x is y  # mixed in place, as timm does
        torch.testing.assert_close(got_x, want_x, rtol=1e-6, atol=1e-6)  # one rounding (fused multiply-add)
        torch.testing.assert_close(got_t, want_t, rtol=0, atol=0)


@needs_timm
@pytest.mark.parametrize("mode", MODES)
def test_multi_label_and_disabled_equal_timm(mode):
    import timm.data.mixup as TM
    x, _ = _batch(6)
    dense = (torch.rand(6, 10) < 0.3).float()
    ours = Mixup(mode=mode, num_classes=10, multi_label=True, generator=torch.Generator().manual_seed(3))
    draw = ours.draw(6, 16, 20)
    want_x, want_t = _timm_replay(mode, draw, x.clone(), dense, multi_label=True)
    ours.generator = torch.Generator().manual_seed(3)
    got_x, got_t = ours(x.clone(), dense)
    torch.testing.assert_close(got_x, want_x, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(got_t, want_t, rtol=0, atol=0)
    # mixup_enabled = False (timm's switch for the last epochs): images untouched, smoothed targets
    ours = Mixup(mode=mode, num_classes=10)
    ours.mixup_enabled = False
    ref = TM.Mixup(mode=mode, num_classes=10)
    ref.mixup_enabled = False
    x, t = _batch(6)
    want_x, want_t = ref(x.clone(), t)
    got_x, got_t = ours(x.clone(), t)
    assert torch.equal(got_x, x) and torch.equal(want_x, x)
    torch.testing.assert_close(got_t, want_t, rtol=0, atol=0)


@needs_timm
def test_lossmix_form_equals_soft_target_cross_entropy():
    """``loss(logits, target, plan)`` = timm's SoftTargetCrossEntropy of timm's soft targets."""
    from timm.loss import SoftTargetCrossEntropy
    for smoothing in (0.0, 0.1):
        for mode in MODES:
            ours = Mixup(mode=mode, mixup_alpha=0.8, cutmix_alpha=1.0, num_classes=10, label_smoothing=smoothing,
                         generator=torch.Generator().manual_seed(5))
            x, t = _batch(8)
            draw = ours.draw(8, 16, 20)
            _, soft = _timm_replay(mode, draw, x.clone(), t, mixup_alpha=0.8, cutmix_alpha=1.0,
                                   label_smoothing=smoothing)
            ours.generator = torch.Generator().manual_seed(5)
            _, plan = ours.mix(x.clone())
            logits = torch.randn(8, 10, requires_grad=True)
            got = ours.loss(logits, t, plan)
            want = SoftTargetCrossEntropy()(logits, soft)
            torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
            g1, = torch.autograd.grad(got, logits)
            g2, = torch.autograd.grad(want, logits)
            torch.testing.assert_close(g1, g2, rtol=1e-6, atol=1e-7)


@needs_timm
def test_constructor_matches_timm_signature():
    import inspect

    import timm.data.mixup as TM
    theirs = list(inspect.signature(TM.Mixup.__init__).parameters.values())[1:]
    ours = inspect.signature(Mixup.__init__).parameters
    for p in theirs:
        assert p.name in ours, p.name
        assert ours[p.name].default == p.default, p.name
    assert [p.name for p in theirs] == [p for p in ours if ours[p].kind != inspect.Parameter.KEYWORD_ONLY][1:]


@needs_timm
@pytest.mark.parametrize("mode", MODES)
def test_feature_batches_equal_timm(mode):
    """Mixup without CutMix mixes any (B, ...) batch, as timm does: feature vectors (B, D)."""
    for shape in [(6, 5), (6, 4, 3), (6,)]:
        x, t = torch.rand(shape), torch.arange(6) % 5
        ours = Mixup(mixup_alpha=1.0, cutmix_alpha=0.0, mode=mode, num_classes=5,
                     generator=torch.Generator().manual_seed(7))
        draw = ours.draw(6, 1, 1)
        want_x, want_t = _timm_replay(mode, draw, x.clone(), t, mixup_alpha=1.0, cutmix_alpha=0.0, num_classes=5)
        ours.generator = torch.Generator().manual_seed(7)
        got_x, got_t = ours(x.clone(), t)
        torch.testing.assert_close(got_x, want_x, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(got_t, want_t, rtol=0, atol=0)
    # the example
    _, soft = Mixup(mixup_alpha=1.0, cutmix_alpha=0.0, num_classes=5)(torch.rand(6, 5), torch.arange(6) % 5)
    assert soft.shape == (6, 5)
    with pytest.raises(ValueError, match="x must be .B, C, H, W. for CutMix"):
        Mixup(mixup_alpha=1.0, cutmix_alpha=1.0, num_classes=5)(torch.rand(6, 5), torch.arange(6) % 5)


@needs_timm
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("mode", MODES)
def test_half_precision_equals_timm_within_its_rounding(mode, dtype):
    """bf16 / fp16 batches: timm rounds each of its ops to the batch's dtype, the plug-in mixes in
    float32 and rounds once, so the two agree to the dtype's rounding."""
    kw = CONFIGS["both"]
    x, t = _batch(8)
    x = x.to(dtype)
    ours = Mixup(mode=mode, num_classes=10, generator=torch.Generator().manual_seed(2), **kw)
    draw = ours.draw(8, 16, 20)
    want_x, want_t = _timm_replay(mode, draw, x.clone(), t, **kw)
    ours.generator = torch.Generator().manual_seed(2)
    got_x, got_t = ours(x.clone(), t)
    assert got_x.dtype == dtype
    # timm's products are rounded to the dtype before they are added: up to an ulp of the operands
    eps = torch.finfo(dtype).eps
    torch.testing.assert_close(got_x, want_x, rtol=eps, atol=eps * float(x.abs().max()))
    # timm's elem / pair modes round λ of the targets to the dtype too; the plug-in keeps float32
    assert got_t.dtype == want_t.dtype == torch.float32
    torch.testing.assert_close(got_t, want_t, rtol=0, atol=eps if mode != "batch" else 0)


# ------------------------------------------------------------------ FastCollateMixup
COLLATE_MODES = ("elem", "pair", "batch", "half")
PATHS = ["torch"] + (["native"] if hasattr(torch.ops.lossmix_ext, "timm_collate_mix_") else [])


@pytest.fixture(params=PATHS)
def collate_path(request, monkeypatch):
    """The native kernel (lossmix_ext._C) or the plain torch ops used without it."""
    monkeypatch.setattr(plugin, "_NATIVE_COLLATE", request.param == "native")
    return request.param


def _samples(b, layout, seed, shape=(12, 14, 3)):
    """b (image, label) pairs as timm's datasets give them: ``hwc`` = CHW views of HWC arrays
    (timm's ToNumpy), ``chw`` = contiguous arrays, ``tensor`` = uint8 tensors, ``features`` =
    1-D arrays."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(b):
        a = rng.integers(0, 256, shape, dtype=np.uint8)
        if layout == "hwc":
            a = np.rollaxis(a, 2)
        elif layout == "chw":
            a = np.ascontiguousarray(np.rollaxis(a, 2))
        elif layout == "tensor":
            a = torch.from_numpy(np.ascontiguousarray(np.rollaxis(a, 2)))
        else:
            a = a.reshape(-1)
        out.append((a, int(rng.integers(0, 10))))
    return out


def _copy(batch):
    return [(a.copy() if isinstance(a, np.ndarray) else a.clone(), y) for a, y in batch]


def _collate_both(mode, batch, seed, h=12, w=14, **kw):
    """(ours, timm's replaying our draws) for one batch."""
    ours = FastCollateMixup(mode=mode, num_classes=10, generator=torch.Generator().manual_seed(seed), **kw)
    draw = ours.draw(len(batch), h, w)
    want = _timm_replay(mode, draw, _copy(batch), None, cls="FastCollateMixup", **kw)
    ours.generator = torch.Generator().manual_seed(seed)
    return ours(batch), want


@needs_timm
@pytest.mark.parametrize("config", list(CONFIGS))
@pytest.mark.parametrize("mode", COLLATE_MODES)
def test_collate_equals_timm_for_the_same_draws(collate_path, mode, config):
    """Bit-identical uint8 batch (timm's float32 arithmetic and rounding) and soft targets."""
    kw = CONFIGS[config]
    for seed, layout in enumerate(("hwc", "chw", "tensor")):
        batch = _samples(8, layout, seed)
        before = _copy(batch)
        (got_x, got_t), (want_x, want_t) = _collate_both(mode, batch, seed, **kw)
        assert got_x.dtype == torch.uint8 and got_x.is_contiguous()
        assert got_x.shape == want_x.shape == ((4,) if mode == "half" else (8,)) + (3, 12, 14)
        assert torch.equal(got_x, want_x), f"{int((got_x != want_x).sum())} pixels differ"
        assert got_t.dtype == want_t.dtype and torch.equal(got_t, want_t)
        for (a, _), (b, _) in zip(batch, before):  # the samples are left as they were
            assert np.array_equal(np.asarray(a), np.asarray(b))


@needs_timm
def test_collate_rounds_as_timm_where_a_fused_multiply_add_would_not(collate_path):
    """Pixel pairs (a, b) and λ whose mix x_a·λ + x_b·(1−λ) rounds to a different integer when
    the products are fused (one rounding less): timm rounds each product, so must the plug-in."""
    a = np.arange(256, dtype=np.float32)[:, None]
    b = np.arange(256, dtype=np.float32)[None, :]
    rng = np.random.default_rng(3)
    found = None
    for lam in rng.random(400).astype(np.float32):
        m = np.float32(1) - lam
        plain = np.rint(a * lam + b * m)
        fused = np.rint((a.astype(np.float64) * np.float64(lam) + (b * m).astype(np.float64)).astype(np.float32))
        ys, xs = np.nonzero(plain != fused)
        if len(ys):
            found = lam, ys, xs
            break
    assert found is not None
    lam, ys, xs = found
    ys, xs = np.resize(ys, 37), np.resize(xs, 37)  # rows of 37: the native kernel's vector loop and its tail
    img_a = np.broadcast_to(ys.astype(np.uint8)[None, None, :], (3, 2, len(ys))).copy()
    img_b = np.broadcast_to(xs.astype(np.uint8)[None, None, :], (3, 2, len(xs))).copy()
    batch = [(img_a, 0), (img_b, 1)]
    ours = FastCollateMixup(mode="batch", mixup_alpha=1.0, num_classes=10)
    draw = plugin.MixDraw(lam_raw=torch.tensor([float(lam)]), use_cutmix=torch.tensor([False]),
                          boxes=torch.zeros(1, 4, dtype=torch.long), lam=torch.tensor([float(lam)]))
    ours.draw = lambda *args, **kwargs: draw
    want_x, _ = _timm_replay("batch", draw, _copy(batch), None, cls="FastCollateMixup", mixup_alpha=1.0)
    from lossmix_ext import _ops
    isas = _ops._native.cpu_isas().split(",") if collate_path == "native" else ["-"]
    try:
        for isa in isas:  # both instances of the native row functions (baseline, AVX2)
            if collate_path == "native":
                assert _ops._native.set_cpu_isa(isa)
            got_x, _ = ours(batch)
            assert torch.equal(got_x, want_x), isa
    finally:
        if collate_path == "native":
            _ops._native.set_cpu_isa("auto")
    plain = np.rint(ys.astype(np.float32) * lam + xs.astype(np.float32) * (np.float32(1) - lam))
    assert torch.equal(got_x[0, 0, 0], torch.from_numpy(plain.astype(np.uint8)))
    fused = np.rint((ys * np.float64(lam) + (xs.astype(np.float32) * (np.float32(1) - lam)).astype(np.float64))
                    .astype(np.float32))
    assert (got_x[0, 0, 0].numpy() != fused).all()  # what a fused multiply-add would have given


@needs_timm
@pytest.mark.parametrize("mode", COLLATE_MODES)
def test_collate_feature_samples_and_disabled_equal_timm(collate_path, mode):
    kw = dict(mixup_alpha=1.0, cutmix_alpha=0.0)
    batch = _samples(6, "features", 4, shape=(5, 7))
    (got_x, got_t), (want_x, want_t) = _collate_both(mode, batch, 4, **kw)
    assert torch.equal(got_x, want_x) and torch.equal(got_t, want_t)
    assert got_x.shape == ((3,) if mode == "half" else (6,)) + (35,)
    # mixup_enabled = False: the batch as it is, smoothed one-hot targets (timm's switch)
    import timm.data.mixup as TM
    batch = _samples(6, "hwc", 5)
    ours, ref = FastCollateMixup(mode=mode, num_classes=10), TM.FastCollateMixup(mode=mode, num_classes=10)
    ours.mixup_enabled = ref.mixup_enabled = False
    (got_x, got_t), (want_x, want_t) = ours(batch), ref(_copy(batch))
    assert torch.equal(got_x, want_x) and torch.equal(got_t, want_t)
    # multi-label dense targets
    dense = [(a, (torch.rand(10) < 0.3).float()) for a, _ in _samples(6, "tensor", 6)]
    (got_x, got_t), (want_x, want_t) = _collate_both(mode, dense, 6, multi_label=True, cutmix_alpha=1.0)
    assert torch.equal(got_x, want_x) and torch.equal(got_t, want_t)


@needs_timm
def test_collate_is_timms_class_for_its_loader():
    """timm's PrefetchLoader reads and sets ``mixup_enabled`` of the collate only when it is a
    ``timm.data.FastCollateMixup`` (train.py's --mixup-off-epoch); pickling keeps the class."""
    import inspect

    import timm.data.mixup as TM
    from timm.data.loader import PrefetchLoader
    fn = FastCollateMixup(mixup_alpha=0.8, cutmix_alpha=1.0, num_classes=10)
    assert isinstance(fn, TM.FastCollateMixup) and isinstance(fn, FastCollateMixup) and isinstance(fn, Mixup)
    loader = torch.utils.data.DataLoader(_samples(4, "hwc", 0), batch_size=4, collate_fn=fn)
    pre = PrefetchLoader(loader, device=torch.device("cpu"))
    assert pre.mixup_enabled is True
    pre.mixup_enabled = False
    assert fn.mixup_enabled is False
    again = pickle.loads(pickle.dumps(fn))
    assert type(again) is type(fn) and again.mixup_enabled is False and again.mode == fn.mode
    x, t = again(_samples(4, "hwc", 1))
    assert x.shape == (4, 3, 12, 14) and t.shape == (4, 10)
    assert "FastCollateMixup(mixup_alpha=0.8" in repr(fn)
    theirs = list(inspect.signature(TM.FastCollateMixup.__init__).parameters)
    assert [p for p, v in inspect.signature(FastCollateMixup.__init__).parameters.items()
            if v.kind != inspect.Parameter.KEYWORD_ONLY] == theirs
    theirs_call = list(inspect.signature(TM.FastCollateMixup.__call__).parameters)
    assert list(inspect.signature(FastCollateMixup.__call__).parameters) == theirs_call


# ------------------------------------------------------------------ without timm: the formulas
def test_soft_target_formula():
    t = torch.tensor([0, 3, 3, 1, 2])
    lam = torch.tensor([1.0, 0.25, 0.5, 0.75, 0.0])
    got = mixup_target(t, 4, lam, smoothing=0.2)
    off, on = 0.2 / 4, 1 - 0.2 + 0.2 / 4
    for b in range(5):
        y_a = torch.full((4,), off)
        y_a[t[b]] = on
        y_b = torch.full((4,), off)
        y_b[t[4 - b]] = on  # partner B−1−b
        torch.testing.assert_close(got[b], lam[b] * y_a + (1 - lam[b]) * y_b)
    torch.testing.assert_close(got.sum(1), torch.ones(5))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("b", [1, 5, 7])
def test_odd_batches_mix_as_the_formula_says(mode, b):
    """timm asserts an even batch; here the middle sample is its own partner (left as it is)."""
    x, t = _batch(b)
    m = Mixup(mode=mode, mixup_alpha=1.0, cutmix_alpha=1.0, num_classes=10,
              generator=torch.Generator().manual_seed(b))
    y, plan = m.mix(x.clone())
    assert torch.equal(plan.index, torch.arange(b - 1, -1, -1))
    want = L.mix_images(x, plan.pixel_lam, plan.index, boxes=plan.boxes, backend="torch")
    mid = b // 2
    want[mid] = x[mid]
    torch.testing.assert_close(y, want, rtol=1e-6, atol=1e-6)
    if mode == "pair":
        assert plan.lam[mid] == 1.0
        torch.testing.assert_close(plan.lam, plan.lam.flip(0))
    m.generator = torch.Generator().manual_seed(b)
    _, soft = m(x.clone(), t)
    torch.testing.assert_close(soft[mid], F.one_hot(t[mid], 10).float() * 0.9 + 0.01, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("b", [1, 6, 7])
@pytest.mark.parametrize("channels_last", [False, True])
def test_half_precision_stays_on_the_native_kernel(monkeypatch, b, channels_last):
    """bf16 / fp16 CPU batches are mixed by the cpu backend's native half-precision kernel (never
    by the torch kernels, about 40x slower): the result is the reference's (float32 maths, one
    rounding to the dtype) to one rounding."""
    if "cpu" not in L.available_backends("cpu", op="mix_images_"):
        pytest.skip("the native cpu backend is not built")
    from lossmix_ext.backends import torch as torch_kernels

    def refuse(*a, **k):
        raise AssertionError("the torch kernel was called")

    for dtype in (torch.bfloat16, torch.float16):
        x, t = _batch(b)
        x = x.to(dtype)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        for mode in MODES:
            m = Mixup(mode=mode, mixup_alpha=0.8, cutmix_alpha=1.0, num_classes=10,
                      generator=torch.Generator().manual_seed(b))
            y = x.clone()
            with monkeypatch.context() as mp:  # the torch kernel, as registered and as the cpu backend calls it
                mp.setitem(L._backend._kernels, ("mix_images_", "torch"), refuse)
                mp.setattr(torch_kernels, "mix_images_inplace", refuse)
                got, plan = m.mix(y)
            assert got is y and y.dtype == dtype and y.is_contiguous(memory_format=torch.channels_last) == channels_last
            want = R.mix_images(x.float(), plan.pixel_lam, plan.index, plan.boxes).to(dtype)
            torch.testing.assert_close(y, want)


def test_half_precision_checks_the_batch_first():
    x = _batch(4)[0].to(torch.bfloat16).requires_grad_(True)
    with pytest.raises(ValueError, match="x requires grad"):
        Mixup(num_classes=10)(x, torch.arange(4))
    y = _batch(1)[0].to(torch.bfloat16).expand(4, 3, 16, 20)
    with pytest.raises(ValueError, match="x has elements that share memory"):
        Mixup(num_classes=10)(y, torch.arange(4))



@pytest.mark.parametrize("mode", COLLATE_MODES)
@pytest.mark.parametrize("b", [1, 5, 8])
def test_collate_formula_and_paths_agree(mode, b):
    """Without timm: row i of the batch is sample i mixed with sample B−1−i as the plan says
    (rint of the float32 mix, the partner inside the box), the same from the native kernel and
    from the torch ops; odd batches keep the middle sample (its own partner)."""
    batch = _samples(b, "hwc", b)
    x = torch.stack([torch.from_numpy(np.ascontiguousarray(a)) for a, _ in batch])
    n = b // 2 if mode == "half" else b
    results = []
    for native in PATHS:
        fn = FastCollateMixup(mode=mode, mixup_alpha=0.8, cutmix_alpha=1.0, prob=0.9, num_classes=10,
                              generator=torch.Generator().manual_seed(b))
        plugin._NATIVE_COLLATE = native == "native"
        try:
            results.append(fn(batch))
        finally:
            plugin._NATIVE_COLLATE = None
    got, soft = results[0]
    for other, other_soft in results[1:]:
        assert torch.equal(got, other) and torch.equal(soft, other_soft)
    assert got.shape == (n, 3, 12, 14) and soft.shape == (n, 10)
    fn.generator = torch.Generator().manual_seed(b)
    d = fn.draw(b, 12, 14)
    if mode == "half":  # sample i < B/2 with B−1−i, one draw each
        pix, boxes, lam = torch.where(d.use_cutmix, torch.ones(n), d.lam_raw), d.boxes, d.lam
    else:  # Mixup's plan: pixel λ (1 for CutMix samples outside the box), boxes, target λ
        p = fn.plan(d, b)
        pix, boxes, lam = p.pixel_lam, p.boxes, p.lam
    partner = torch.arange(b - 1, -1, -1)[:n]
    pix = pix[:n].view(-1, 1, 1, 1)
    want = (x[:n].float() * pix + x[partner].float() * (1 - pix)).round().to(torch.uint8)
    inside = R.cutmix_mask(boxes[:n], 12, 14).unsqueeze(1)
    want = torch.where(inside, x[partner], want)
    if b % 2 and mode != "half":
        want[b // 2] = x[b // 2]
    assert torch.equal(got, want)
    t = torch.tensor([y for _, y in batch])
    full_lam = torch.cat([lam[:n], torch.ones(b - n)]) if mode == "half" else lam
    torch.testing.assert_close(soft, mixup_target(t, 10, full_lam, 0.1)[:n], rtol=0, atol=0)


def test_collate_in_a_loader_worker():
    """In a DataLoader worker the batch is made in shared memory (as default_collate makes it:
    nothing is copied to hand it over); a generator given to the collate is copied into the
    worker with its state, so the worker's batch is the one collated here."""
    samples = _samples(8, "hwc", 3)
    kw = dict(mixup_alpha=0.8, cutmix_alpha=1.0, num_classes=10)
    fn = FastCollateMixup(generator=torch.Generator().manual_seed(4), **kw)
    loader = torch.utils.data.DataLoader(samples, batch_size=8, collate_fn=fn, num_workers=1)
    (x, t), = list(loader)
    assert x.is_shared() and x.is_contiguous() and x.dtype == torch.uint8
    want_x, want_t = FastCollateMixup(generator=torch.Generator().manual_seed(4), **kw)(samples)
    assert not want_x.is_shared()
    assert torch.equal(x, want_x) and torch.equal(t, want_t)


def test_collate_bad_batches_name_the_batch():
    fn = FastCollateMixup(mixup_alpha=0.8, cutmix_alpha=1.0, num_classes=10)
    good = _samples(4, "hwc", 0)
    for bad, exc in [(None, TypeError), ([], ValueError), ([good[0][0]] * 4, TypeError),
                     ([(a.astype(np.float32), y) for a, y in good], TypeError),
                     ([(a.tolist(), y) for a, y in good], TypeError),
                     (good[:2] + _samples(2, "hwc", 1, shape=(10, 14, 3)), ValueError),
                     (_samples(4, "features", 0), ValueError),
                     ([(a, float(y) + 0.5) for a, y in good], ValueError)]:
        with pytest.raises(exc, match="batch"):
            fn(bad)
    with pytest.raises(ValueError, match="mode"):
        FastCollateMixup(mode="halfpair")
    if torch.cuda.is_available():
        with pytest.raises(ValueError, match="generator"):
            FastCollateMixup(num_classes=10, generator=torch.Generator("cuda"))(good)
    # mixup only: any one shape per sample
    x, t = FastCollateMixup(mixup_alpha=1.0, num_classes=10)(_samples(4, "features", 0))
    assert x.shape == (4, 504) and x.dtype == torch.uint8 and t.shape == (4, 10)


def test_draws_are_distributed_as_timm_draws():
    """λ ~ Beta(α, α) where mixed, CutMix with probability switch_prob, mixed with probability
    prob, boxes of area ≈ (1 − λ)·H·W inside the image (timm's rand_bbox), λ corrected."""
    m = Mixup(mode="elem", mixup_alpha=0.5, cutmix_alpha=2.0, prob=0.6, switch_prob=0.3, num_classes=10,
              generator=torch.Generator().manual_seed(0))
    n, h, w = 40000, 64, 48
    d = m.draw(n, h, w)
    mixed = d.lam_raw != 1.0
    assert abs(mixed.float().mean().item() - 0.6) < 0.015
    assert abs(d.use_cutmix.float().mean().item() - 0.3) < 0.015
    lm = d.lam_raw[mixed & ~d.use_cutmix].double()
    lc = d.lam_raw[mixed & d.use_cutmix].double()
    for lam, a in ((lm, 0.5), (lc, 2.0)):  # Beta(a, a): mean 1/2, variance 1 / (4 (2a + 1))
        assert abs(lam.mean().item() - 0.5) < 0.01
        assert abs(lam.var().item() - 1 / (4 * (2 * a + 1))) < 0.01
    cut = mixed & d.use_cutmix
    bx = d.boxes[cut]
    assert (bx[:, 0] >= 0).all() and (bx[:, 2] <= h).all() and (bx[:, 1] >= 0).all() and (bx[:, 3] <= w).all()
    assert (bx[:, 0] <= bx[:, 2]).all() and (bx[:, 1] <= bx[:, 3]).all()
    area = ((bx[:, 2] - bx[:, 0]) * (bx[:, 3] - bx[:, 1])).double()
    torch.testing.assert_close(d.lam[cut].double(), 1 - area / (h * w), rtol=0, atol=1e-6)
    assert torch.equal(d.boxes[~cut], torch.zeros_like(d.boxes[~cut]))
    # an unclipped box has the size timm asks for: ⌊H·√(1−λ)⌋ × ⌊W·√(1−λ)⌋
    r = torch.sqrt(1 - d.lam_raw[cut].double())
    inside = (bx[:, 0] > 0) & (bx[:, 2] < h) & (bx[:, 1] > 0) & (bx[:, 3] < w)
    assert torch.equal((bx[:, 2] - bx[:, 0])[inside], (h * r).long()[inside])
    assert torch.equal((bx[:, 3] - bx[:, 1])[inside], (w * r).long()[inside])


def test_minmax_boxes_are_in_range():
    m = Mixup(mode="elem", mixup_alpha=0.0, cutmix_alpha=0.0, cutmix_minmax=(0.25, 0.75), num_classes=10,
              generator=torch.Generator().manual_seed(0))
    assert m.cutmix_alpha == 1.0  # forced, as timm does
    d = m.draw(5000, 40, 30)
    cut = d.lam_raw != 1.0
    bx = d.boxes[cut]
    hh, ww = bx[:, 2] - bx[:, 0], bx[:, 3] - bx[:, 1]
    assert hh.min() >= 10 and hh.max() < 30 and ww.min() >= 7 and ww.max() < 22
    assert (bx[:, 2] <= 40).all() and (bx[:, 3] <= 30).all()


def test_bad_arguments_name_themselves():
    with pytest.raises(ValueError, match="mode"):
        Mixup(mode="half")
    with pytest.raises(ValueError, match="mixup_alpha"):
        Mixup(mixup_alpha=-1)
    with pytest.raises(ValueError, match="one of mixup_alpha"):
        Mixup(mixup_alpha=0.0, cutmix_alpha=0.0)
    with pytest.raises(ValueError, match="cutmix_minmax"):
        Mixup(cutmix_minmax=(0.5,))
    with pytest.raises(ValueError, match="prob"):
        Mixup(prob=1.5)
    with pytest.raises(TypeError, match="generator"):
        Mixup(generator=3)
    m = Mixup(mixup_alpha=1.0, cutmix_alpha=1.0, num_classes=10)
    x, t = _batch(4)
    before = x.clone()
    with pytest.raises(TypeError, match="x must be a floating"):
        m(x.to(torch.uint8), t)
    with pytest.raises(ValueError, match="target"):
        m(x, t[:3])
    with pytest.raises(ValueError, match="target"):
        m(x, t.float())
    with pytest.raises(ValueError, match="x must be"):
        m(x[:, 0], t)
    assert torch.equal(x, before)  # nothing mixed by a call that failed


def test_no_timm_needed():
    """The plug-in imports and runs with timm hidden."""
    code = ("import sys; sys.modules['timm'] = None\n"
            "import torch\n"
            "from lossmix_ext.integrations.timm import Mixup\n"
            "x, t = torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 2, 3])\n"
            "y, s = Mixup(mode='elem', cutmix_alpha=1.0, num_classes=4)(x, t)\n"
            "assert s.shape == (4, 4)\n"
            "from lossmix_ext.integrations.timm import FastCollateMixup\n"
            "fn = FastCollateMixup(mode='pair', cutmix_alpha=1.0, num_classes=4)\n"
            "assert type(fn) is FastCollateMixup\n"
            "b, s = fn([(torch.zeros(3, 8, 8, dtype=torch.uint8), k) for k in range(4)])\n"
            "assert b.shape == (4, 3, 8, 8) and s.shape == (4, 4)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr


@pytest.mark.gpu
@pytest.mark.parametrize("mode", MODES)
def test_gpu_no_host_sync(mode):
    m = Mixup(mode=mode, mixup_alpha=0.8, cutmix_alpha=1.0, num_classes=1000,
              generator=torch.Generator(device="cuda").manual_seed(0))
    x = torch.randn(64, 3, 64, 64, device="cuda")
    t = torch.randint(0, 1000, (64,), device="cuda")
    m(x, t)  # warm-up (index cache, kernels)
    with L.validation("off"):
        torch.cuda.set_sync_debug_mode("error")
        try:
            y, soft = m(x, t)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    assert math.isclose(soft.sum().item(), 64.0, rel_tol=1e-5)
