"""Mixed cross-entropy, image mixing, LossMix reduction and mixing plans (torch backend)."""
import math

import pytest
import torch
import torch.nn.functional as F

import lossmix_ext as L
from lossmix_ext import _reference as R

import oracle


# ---------------------------------------------------------------- mixed cross-entropy
def test_mixed_ce_scalar_lambda_is_the_mixup_criterion():
    x = torch.randn(10, 7)
    a, b = torch.randint(0, 7, (10,)), torch.randint(0, 7, (10,))
    a[2], b[5], b[6] = -100, -100, -100
    want = 0.3 * F.cross_entropy(x, a) + 0.7 * F.cross_entropy(x, b)
    torch.testing.assert_close(L.mixed_cross_entropy(x, a, b, 0.3), want)
    torch.testing.assert_close(L.mixed_cross_entropy(x, a, b, 0.3, reduction="sum"),
                               0.3 * F.cross_entropy(x, a, reduction="sum")
                               + 0.7 * F.cross_entropy(x, b, reduction="sum"))


def test_mixed_ce_rows_match_oracle_and_reference():
    n, c = 9, 5
    x = torch.randn(n, c, dtype=torch.float64)
    a, b = torch.randint(0, c, (n,)), torch.randint(0, c, (n,))
    b[3] = 7  # ignore_index=7
    lam = torch.rand(n, dtype=torch.float64)
    lw = torch.rand(n, dtype=torch.float64)
    rows = L.mixed_cross_entropy(x, a, b, lam, label_weights=lw, ignore_index=7, reduction="none")
    for i in range(n):
        want = lam[i] * oracle.ce_row(x[i].numpy(), int(a[i]))[0]
        if b[i] != 7:
            want += (1 - lam[i]) * oracle.ce_row(x[i].numpy(), int(b[i]))[0]
        assert float(rows[i]) == pytest.approx(float(want * lw[i]), rel=1e-10)
    for red, af in (("mean", None), ("mean", 6.0), ("sum", None), ("none", None)):
        torch.testing.assert_close(
            L.mixed_cross_entropy(x, a, b, lam, label_weights=lw, ignore_index=7, reduction=red, avg_factor=af),
            R.mixed_cross_entropy(x, a, b, lam, lw, 7, red, af))


def test_mixed_ce_ignore_index_inside_class_range_and_grad():
    x = torch.randn(6, 4, requires_grad=True)
    a = torch.tensor([0, 1, 2, 3, 0, 1])
    b = torch.tensor([1, 1, 0, 3, 2, 2])
    lam = torch.rand(6)
    got = L.mixed_cross_entropy(x, a, b, lam, ignore_index=1)
    xr = x.detach().clone().requires_grad_(True)
    want = R.mixed_cross_entropy(xr, a, b, lam, ignore_index=1)
    torch.testing.assert_close(got, want)
    got.backward()
    want.backward()
    torch.testing.assert_close(x.grad, xr.grad)


# ---------------------------------------------------------------- image mixing
def test_mix_images_flip_equals_timm_batch_mode_and_roll_equals_torchvision():
    x = torch.randn(5, 3, 4, 4)
    lam = 0.37
    _, flip = L.sample_mix(5, pairing="flip")
    _, roll = L.sample_mix(5, pairing="roll")
    timm = x.clone().mul_(lam).add_(x.flip(0).mul(1.0 - lam))
    torch.testing.assert_close(L.mix_images(x, lam, flip), timm)
    tv = x.roll(1, 0).mul(1.0 - lam).add(x.mul(lam))
    torch.testing.assert_close(L.mix_images(x, lam, roll), tv)


def test_mix_images_formula_with_boxes_and_normalisation():
    x = torch.randint(0, 256, (3, 2, 4, 5), dtype=torch.uint8)
    lam = torch.tensor([0.2, 0.9, 0.5])
    index = torch.tensor([2, 2, 0])
    boxes = torch.tensor([[0, 0, 2, 2], [1, 3, 4, 5], [0, 0, 0, 0]])
    mean, std = [0.4, 0.5], [0.2, 0.25]
    out = L.mix_images(x, lam, index, boxes=boxes, mean=mean, std=std)
    assert out.dtype == torch.float32
    for bi in range(3):
        for c in range(2):
            for h in range(4):
                for w in range(5):
                    y0, x0, y1, x1 = boxes[bi].tolist()
                    v_self = (float(x[bi, c, h, w]) / 255 - mean[c]) / std[c]
                    v_part = (float(x[index[bi], c, h, w]) / 255 - mean[c]) / std[c]
                    inside = y0 <= h < y1 and x0 <= w < x1
                    want = v_part if inside else float(lam[bi]) * v_self + (1 - float(lam[bi])) * v_part
                    assert float(out[bi, c, h, w]) == pytest.approx(want, rel=1e-5, abs=1e-5)


def test_mix_images_backward_accumulates_repeated_indices():
    x = torch.randn(4, 6, 1, 1, requires_grad=True)
    lam = torch.tensor([0.1, 0.4, 0.7, 1.0])
    index = torch.tensor([1, 1, 1, 0])
    g = torch.randn(4, 6, 1, 1)
    L.mix_images(x, lam, index).backward(g)
    want = lam[:, None, None, None] * g
    for b in range(4):
        want[index[b]] += (1 - lam[b]) * g[b]
    torch.testing.assert_close(x.grad, want)


def test_mix_images_inplace_pairs_equals_out_of_place():
    lam, index = L.sample_mix(9, pairing="pairs", generator=torch.Generator().manual_seed(0))
    assert torch.equal(index[index], torch.arange(9))
    x = torch.randn(9, 3, 5, 1)
    want = L.mix_images(x, lam, index)
    y = x.clone()
    assert L.mix_images_(y, lam, index) is y
    torch.testing.assert_close(y, want)


# ---------------------------------------------------------------- LossMix reduction
def test_lossmix_reduce_formula():
    a, b = torch.rand(6), torch.rand(6)
    lam, w = torch.rand(6), torch.rand(6)
    rows = w * (lam * a + (1 - lam) * b)
    torch.testing.assert_close(L.lossmix_reduce(a, b, lam, weights=w, reduction="none"), rows)
    torch.testing.assert_close(L.lossmix_reduce(a, b, lam, weights=w), rows.mean())
    torch.testing.assert_close(L.lossmix_reduce(a, b, lam, weights=w, reduction="sum"), rows.sum())
    torch.testing.assert_close(L.lossmix_reduce(a, b, lam, weights=w, avg_factor=2.5),
                               rows.sum() / (2.5 + torch.finfo(torch.float32).eps))
    a2, b2 = torch.rand(6, 3), torch.rand(6, 3)
    torch.testing.assert_close(L.lossmix_reduce(a2, b2, lam, reduction="none"),
                               lam[:, None] * a2 + (1 - lam[:, None]) * b2)
    torch.testing.assert_close(L.lossmix_reduce(a2, b2, 0.25), (0.25 * a2 + 0.75 * b2).mean())


# ---------------------------------------------------------------- sampling
@pytest.mark.parametrize("alpha", [0.2, 1.0, 2.0, 8.0])
def test_sample_beta_moments(alpha):
    x = L.sample_beta((200_000,), alpha, generator=torch.Generator().manual_seed(1)).double()
    assert ((x >= 0) & (x <= 1)).all()
    assert float(x.mean()) == pytest.approx(0.5, abs=4e-3)
    assert float(x.var()) == pytest.approx(1.0 / (4 * (2 * alpha + 1)), rel=2e-2)


@pytest.mark.parametrize("alpha,cdf", [(1.0, lambda t: t), (2.0, lambda t: 3 * t ** 2 - 2 * t ** 3),
                                       (0.5, lambda t: 2 / math.pi * torch.asin(torch.sqrt(t)))])
def test_sample_beta_ks(alpha, cdf):
    n = 50_000
    x = L.sample_beta((n,), alpha, generator=torch.Generator().manual_seed(2)).double().sort().values
    emp_hi = torch.arange(1, n + 1, dtype=torch.float64) / n
    emp_lo = torch.arange(0, n, dtype=torch.float64) / n
    f = cdf(x)
    d = torch.maximum((emp_hi - f).abs(), (f - emp_lo).abs()).max()
    assert float(d) < 1.63 / math.sqrt(n)  # 1% level of the Kolmogorov distribution


def test_sample_mix_pairings_and_determinism():
    for b in (1, 2, 7, 8):
        lam, idx = L.sample_mix(b, pairing="random", generator=torch.Generator().manual_seed(3))
        assert lam.shape == (b,) and lam.dtype == torch.float32
        assert torch.equal(idx.sort().values, torch.arange(b))
        assert torch.equal(L.sample_mix(b, pairing="flip")[1], torch.arange(b).flip(0))
        assert torch.equal(L.sample_mix(b, pairing="roll")[1], (torch.arange(b) - 1) % b)
        _, pairs = L.sample_mix(b, pairing="pairs", generator=torch.Generator().manual_seed(4))
        assert torch.equal(pairs[pairs], torch.arange(b))
        assert int((pairs == torch.arange(b)).sum()) == b % 2
    l1, i1 = L.sample_mix(6, generator=torch.Generator().manual_seed(9))
    l2, i2 = L.sample_mix(6, generator=torch.Generator().manual_seed(9))
    assert torch.equal(l1, l2) and torch.equal(i1, i2)
    lam, _ = L.sample_mix(5, per_sample=False, generator=torch.Generator().manual_seed(1))
    assert torch.equal(lam, lam[:1].expand(5))
