"""``lossmix_ext.integrations.timm.Mixup`` against timm's own ``timm.data.Mixup``.

Equality is checked by replaying our draws (λ, CutMix flags, boxes) inside timm's class: its
parameter methods and ``cutmix_bbox_and_lam`` are replaced by ones returning our draws, and
everything else — the per-sample loop, the mixing arithmetic, λ correction, ``mixup_target``
— is timm's code. Tests that need no timm check the formulas directly.
"""
from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import lossmix_ext as L
from lossmix_ext.integrations.timm import Mixup, mixup_target

from benchmarks.frameworks import import_timm

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


def _timm_replay(mode, draw, x, target, **kw):
    """timm's Mixup on ``x`` (mutated) with our draws."""
    import timm.data.mixup as TM
    ref = TM.Mixup(mode=mode, num_classes=10, **kw)
    if mode == "batch":
        ref._params_per_batch = lambda: (float(draw.lam_raw[0]), bool(draw.use_cutmix[0]))
    else:
        ref._params_per_elem = lambda n: (draw.lam_raw.numpy().copy(), draw.use_cutmix.numpy().copy())
    # the boxes, in the order timm asks for them (sets with CutMix and λ != 1), as (yl, yh, xl, xh)
    calls = iter([((int(b[0]), int(b[2]), int(b[1]), int(b[3])), float(lam))
                  for b, lam, cut, raw in zip(draw.boxes, draw.lam, draw.use_cutmix, draw.lam_raw)
                  if cut and raw != 1.0])
    saved = TM.cutmix_bbox_and_lam
    TM.cutmix_bbox_and_lam = lambda *a, **k: next(calls)
    try:
        return ref(x, target)
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
            "assert s.shape == (4, 4)\n")
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
