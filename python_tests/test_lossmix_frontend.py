"""LossMix front end: sample_mix statistics, LossMix plans (mixup / CutMix / prob / batch
mode), mixed losses, detection mixing and domain-adaptation plans.

Golden values are written out in the tests (loops over samples, formulas, exact CDFs);
the default backend is used (CPU), plus one run through the Triton backend.
"""
import math

import pytest
import torch
import torch.nn.functional as F

import lossmix_ext as L
from lossmix_ext.mix import box_lam, cutmix_boxes, index_targets


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


# --------------------------------------------------------------------------- sample_mix
@pytest.mark.parametrize("alpha", [0.2, 1.0, 2.0])
def test_sample_mix_beta_moments(alpha):
    n = 40000
    lam, _ = L.sample_mix(n, alpha, generator=_gen(1))
    assert lam.dtype == torch.float32 and lam.shape == (n,)
    assert bool(((lam >= 0) & (lam <= 1)).all())
    var = 1.0 / (4.0 * (2.0 * alpha + 1.0))  # Beta(α, α): mean 1/2, variance 1/(4(2α+1))
    mean_se = math.sqrt(var / n)
    assert abs(lam.double().mean().item() - 0.5) < 5 * mean_se
    # Var of the sample variance ≈ (μ4 − σ⁴)/n, μ4 of Beta(α, α) = 3 / (16 (2α+1)(2α+3)).
    mu4 = 3.0 / (16.0 * (2 * alpha + 1) * (2 * alpha + 3))
    var_se = math.sqrt((mu4 - var ** 2) / n)
    assert abs(lam.double().var().item() - var) < 5 * var_se


@pytest.mark.parametrize("alpha,cdf", [(1.0, lambda x: x), (2.0, lambda x: 3 * x ** 2 - 2 * x ** 3)])
def test_sample_mix_ks_against_exact_cdf(alpha, cdf):
    n = 20000
    lam, _ = L.sample_mix(n, alpha, generator=_gen(2))
    x = torch.sort(lam.double()).values
    f = cdf(x)
    i = torch.arange(1, n + 1, dtype=torch.float64)
    d = torch.maximum(i / n - f, f - (i - 1) / n).max().item()
    assert d < 1.95 / math.sqrt(n)  # Kolmogorov–Smirnov, 0.1% level


@pytest.mark.parametrize("b", [1, 2, 3, 7, 8])
def test_pairings_and_odd_batches(b):
    ar = torch.arange(b)
    _, idx = L.sample_mix(b, pairing="random", generator=_gen(3))
    assert sorted(idx.tolist()) == list(range(b))
    _, idx = L.sample_mix(b, pairing="flip")
    assert idx.tolist() == list(range(b - 1, -1, -1))
    _, idx = L.sample_mix(b, pairing="roll")
    assert idx.tolist() == [(i - 1) % b for i in range(b)]
    _, idx = L.sample_mix(b, pairing="pairs", generator=_gen(4))
    assert sorted(idx.tolist()) == list(range(b))
    assert torch.equal(idx[idx], ar)  # involutive
    assert int((idx == ar).sum()) == b % 2  # one fixed point for odd b, none for even
    lam, _ = L.sample_mix(b, per_sample=False, generator=_gen(5))
    assert bool((lam == lam[0]).all())


def test_generator_determinism():
    a = L.sample_mix(9, 0.4, generator=_gen(7))
    b = L.sample_mix(9, 0.4, generator=_gen(7))
    c = L.sample_mix(9, 0.4, generator=_gen(8))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])
    x = torch.rand(6, 3, 8, 8)
    m1 = L.LossMix(alpha=0.5, cutmix_alpha=1.0, prob=0.7, generator=_gen(9))
    m2 = L.LossMix(alpha=0.5, cutmix_alpha=1.0, prob=0.7, generator=_gen(9))
    y1, p1 = m1(x)
    y2, p2 = m2(x)
    assert torch.equal(y1, y2)
    for f in ("lam", "index", "boxes", "pixel_lam"):
        assert torch.equal(getattr(p1, f), getattr(p2, f))
    y3, p3 = m1(x)  # the generator moved on
    assert not torch.equal(p1.lam, p3.lam)


# --------------------------------------------------------------------------- LossMix
def _normalise(x, mean, std, scale):
    return (x.double() * scale - torch.tensor(mean, dtype=torch.float64).view(1, -1, 1, 1)) / \
        torch.tensor(std, dtype=torch.float64).view(1, -1, 1, 1)


def _expected_images(v, plan):
    """Sample by sample, pixel by pixel box test: inside box → partner, else pixel_lam mix."""
    out = torch.empty_like(v)
    for b in range(v.shape[0]):
        j = int(plan.index[b])
        lp = float(plan.pixel_lam[b])
        out[b] = lp * v[b] + (1 - lp) * v[j]
        if plan.boxes is not None:
            y0, x0, y1, x1 = plan.boxes[b].tolist()
            out[b, :, y0:y1, x0:x1] = v[j, :, y0:y1, x0:x1]
    return out


@pytest.mark.parametrize("per_sample", [True, False])
def test_lossmix_mixup_and_cutmix_images(per_sample):
    mean, std = [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]
    x = torch.randint(0, 256, (9, 3, 10, 13), dtype=torch.uint8)
    mixer = L.LossMix(alpha=0.8, cutmix_alpha=1.0, switch_prob=0.5, per_sample=per_sample, mean=mean, std=std,
                      generator=_gen(11))
    y, plan = mixer(x)
    assert isinstance(plan, L.MixPlan) and len(plan) == 9
    assert y.dtype == torch.float32 and y.shape == x.shape
    want = _expected_images(_normalise(x, mean, std, 1 / 255), plan)
    torch.testing.assert_close(y.double(), want, rtol=1e-5, atol=1e-5)
    cut = (plan.boxes[:, 2] > plan.boxes[:, 0]) & (plan.boxes[:, 3] > plan.boxes[:, 1])
    # CutMix samples keep their own pixels outside the box: pixel λ = 1, loss λ = own area share.
    assert bool((plan.pixel_lam[cut] == 1).all())
    if not per_sample:
        for f in (plan.lam, plan.pixel_lam):
            assert bool((f == f[0]).all())
        assert bool((plan.boxes == plan.boxes[0]).all())


def test_cutmix_lambda_is_the_true_box_area():
    h, w = 11, 16
    mixer = L.LossMix(alpha=0.0, cutmix_alpha=1.0, generator=_gen(12))
    plan = mixer.sample(500, h, w)
    for b in range(500):
        y0, x0, y1, x1 = plan.boxes[b].tolist()
        assert 0 <= y0 <= y1 <= h and 0 <= x0 <= x1 <= w
        area = (y1 - y0) * (x1 - x0)
        assert plan.lam[b].item() == pytest.approx(1 - area / (h * w), abs=1e-7)
    assert bool((plan.pixel_lam == 1).all())  # CutMix only: no pixel blending outside boxes
    # Images: inside the box exactly the partner's pixels, outside exactly the own ones.
    x = torch.randn(500, 2, h, w)
    y = plan.apply(x)
    torch.testing.assert_close(y, _expected_images(x, plan), rtol=0, atol=0)


def test_cutmix_boxes_follow_the_cut_ratio():
    h, w = 20, 30
    lam = torch.tensor([0.0, 0.19, 0.5, 0.75, 0.96, 1.0]).repeat(200)
    boxes = cutmix_boxes(lam, h, w, generator=_gen(13))
    r = torch.sqrt(1 - lam.double())
    cut_h, cut_w = torch.floor(h * r).long(), torch.floor(w * r).long()
    bh, bw = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    assert bool((bh <= 2 * (cut_h // 2)).all() and (bw <= 2 * (cut_w // 2)).all())
    inner_y = (boxes[:, 0] > 0) & (boxes[:, 2] < h)  # not clipped: the full cut size
    inner_x = (boxes[:, 1] > 0) & (boxes[:, 3] < w)
    assert bool((bh[inner_y] == 2 * (cut_h[inner_y] // 2)).all())
    assert bool((bw[inner_x] == 2 * (cut_w[inner_x] // 2)).all())
    assert bool((bh[lam == 1] == 0).all())  # λ = 1: empty box
    # centre uniform: boxes of λ = 0 (full size) are clipped on one side or the other
    full = lam == 0
    assert bool(((boxes[full, 0] == 0) | (boxes[full, 2] == h)).all())
    assert box_lam(torch.tensor([[0, 0, h, w], [0, 0, 0, 0], [2, 3, 7, 9]]), h, w).tolist() == \
        pytest.approx([0.0, 1.0, 1 - 30 / 600])


@pytest.mark.parametrize("per_sample", [True, False])
def test_prob_leaves_samples_unmixed(per_sample):
    n = 4000 if per_sample else 1
    trials = 1 if per_sample else 400
    unmixed = 0
    g = _gen(14)
    mixer = L.LossMix(alpha=1.0, cutmix_alpha=1.0, prob=0.3, per_sample=per_sample, generator=g)
    for _ in range(trials):
        plan = mixer.sample(n if per_sample else 3, 8, 8)
        off = (plan.lam == 1) & (plan.pixel_lam == 1) & (plan.boxes.sum(1) == 0)
        unmixed += int(off.sum()) if per_sample else int(off.all())
        if not per_sample:
            assert bool(off.all()) or not bool(off.any())
    total = n * trials if per_sample else trials
    frac = unmixed / total
    assert abs(frac - 0.7) < 5 * math.sqrt(0.21 / total)
    x = torch.rand(5, 3, 4, 4)
    y, plan = L.LossMix(prob=0.0, mean=[0.1, 0.2, 0.3], std=[1.0, 2.0, 4.0])(x)
    assert bool((plan.lam == 1).all())
    torch.testing.assert_close(y.double(), _normalise(x, [0.1, 0.2, 0.3], [1.0, 2.0, 4.0], 1.0), rtol=1e-6,
                               atol=1e-6)


def test_switch_prob_share_of_cutmix():
    plan = L.LossMix(alpha=1.0, cutmix_alpha=1.0, switch_prob=0.25, generator=_gen(15)).sample(4000, 32, 32)
    cutmix = plan.pixel_lam == 1  # mixup λ is never exactly 1
    frac = cutmix.double().mean().item()
    assert abs(frac - 0.25) < 5 * math.sqrt(0.25 * 0.75 / 4000)
    assert bool((plan.lam[~cutmix] == plan.pixel_lam[~cutmix]).all())
    assert bool((plan.boxes[~cutmix] == 0).all())


def test_lossmix_inplace_matches_out_of_place():
    x = torch.randn(7, 3, 5, 5)
    y_ref, p_ref = L.LossMix(alpha=0.5, pairing="pairs", generator=_gen(16))(x)
    x2 = x.clone()
    y, p = L.LossMix(alpha=0.5, pairing="pairs", inplace=True, generator=_gen(16))(x2)
    assert y is x2
    assert torch.equal(p.index, p_ref.index) and torch.equal(p.lam, p_ref.lam)
    torch.testing.assert_close(y, y_ref, rtol=1e-6, atol=1e-6)


def test_lossmix_through_triton_backend():
    if L._backend.unavailable_reason("triton", "cpu") is not None:
        pytest.skip("triton backend not usable on CPU here")
    x = torch.randint(0, 256, (5, 3, 6, 7), dtype=torch.uint8)
    kw = dict(alpha=0.5, cutmix_alpha=1.0, mean=[0.4, 0.5, 0.6], std=[0.2, 0.3, 0.4])
    y_tr, p_tr = L.LossMix(**kw, generator=_gen(17), backend="triton")(x)
    y_to, p_to = L.LossMix(**kw, generator=_gen(17), backend="torch")(x)
    assert torch.equal(p_tr.lam, p_to.lam)
    torch.testing.assert_close(y_tr, y_to, rtol=1e-5, atol=1e-5)


def test_lossmix_argument_errors():
    with pytest.raises(ValueError, match="alpha"):
        L.LossMix(alpha=-1)
    with pytest.raises(ValueError, match="both 0"):
        L.LossMix(alpha=0, cutmix_alpha=0)
    with pytest.raises(ValueError, match="prob"):
        L.LossMix(prob=1.5)
    with pytest.raises(ValueError, match="switch_prob"):
        L.LossMix(switch_prob=-0.1)
    with pytest.raises(ValueError, match="pairing"):
        L.LossMix(pairing="shuffle")
    with pytest.raises(ValueError, match="involutive"):
        L.LossMix(inplace=True, pairing="random")
    with pytest.raises(ValueError, match="inplace"):
        L.LossMix(inplace=True, pairing="flip", cutmix_alpha=1.0)
    with pytest.raises(ValueError, match="CutMix"):
        L.LossMix(cutmix_alpha=1.0)(torch.rand(4, 10))
    with pytest.raises(TypeError, match="images"):
        L.LossMix()([1, 2])
    with pytest.raises(ValueError, match="samples"):
        L.LossMix().sample(4).apply(torch.rand(5, 3))


# --------------------------------------------------------------------------- mixed losses
def test_mix_loss_equals_hand_computation():
    n, k = 7, 5
    logits = torch.randn(n, k)
    labels = torch.randint(0, k, (n,))
    plan = L.LossMix(alpha=0.7, generator=_gen(18)).sample(n)

    def ce_rows(out, y):
        return F.cross_entropy(out, y, reduction="none")

    by_hand = 0.0
    for b in range(n):
        j = int(plan.index[b])
        la = F.cross_entropy(logits[b:b + 1], labels[b:b + 1]).item()
        lb = F.cross_entropy(logits[b:b + 1], labels[j:j + 1]).item()
        by_hand += (float(plan.lam[b]) * la + (1 - float(plan.lam[b])) * lb) / n
    assert plan.mix_loss(ce_rows, logits, labels).item() == pytest.approx(by_hand, rel=1e-5)
    assert plan.cross_entropy(logits, labels).item() == pytest.approx(by_hand, rel=1e-5)
    total = plan.mix_loss(ce_rows, logits, labels, reduction="sum").item()
    assert total == pytest.approx(by_hand * n, rel=1e-5)

    # list and dict targets, a loss returning (B, T) values
    seq = torch.randn(n, 3)
    targets = [torch.full((3,), float(b)) for b in range(n)]
    dict_t = {"y": torch.stack(targets)}

    def mse_rows(out, t):
        t = torch.stack(list(t)) if isinstance(t, list) else t["y"]
        return (out - t) ** 2

    by_hand2 = torch.stack([float(plan.lam[b]) * (seq[b] - b) ** 2
                            + (1 - float(plan.lam[b])) * (seq[b] - float(plan.index[b])) ** 2 for b in range(n)]).mean()
    torch.testing.assert_close(plan.mix_loss(mse_rows, seq, targets), by_hand2, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(plan.mix_loss(mse_rows, seq, dict_t), by_hand2, rtol=1e-6, atol=1e-6)
    assert index_targets(("a", "b"), torch.tensor([1, 1])) == ("b", "b")
    with pytest.raises(TypeError, match="targets"):
        index_targets(3, torch.tensor([0]))


def test_mix_loss_gradient_flows():
    logits = torch.randn(6, 4, requires_grad=True)
    labels = torch.randint(0, 4, (6,))
    plan = L.LossMix(alpha=1.0, generator=_gen(19)).sample(6)
    plan.cross_entropy(logits, labels).backward()
    g1 = logits.grad.clone()
    logits.grad = None
    lam = plan.lam[:, None]
    p = logits.detach().softmax(1)
    ya, yb = F.one_hot(labels, 4).float(), F.one_hot(labels[plan.index], 4).float()
    torch.testing.assert_close(g1, (p - lam * ya - (1 - lam) * yb) / 6, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------- detection
def _det_inputs():
    sizes = [(5, 7), (8, 4), (6, 6)]
    images = [torch.randint(0, 256, (3, h, w), dtype=torch.uint8) for h, w in sizes]
    targets = []
    for i, (h, w) in enumerate(sizes):
        k = i + 1
        masks = torch.zeros(k, h, w, dtype=torch.uint8)
        masks[:, 0, 0] = 1
        masks[:, h - 1, w - 1] = 1
        targets.append({"boxes": torch.rand(k, 4) * 4, "labels": torch.arange(k) + 10 * i, "masks": masks,
                        "image_id": i})
    return sizes, images, targets


def test_mix_detection_canvas_and_targets():
    sizes, images, targets = _det_inputs()
    plan = L.LossMix(alpha=1.0, generator=_gen(20)).sample(3)
    det = L.mix_detection(images, targets, plan, size_divisible=4)
    hc, wc = 8, 8  # max(5, 8, 6) = 8, max(7, 4, 6) = 7 -> rounded up to 8
    assert det.images.shape == (3, 3, hc, wc) and det.images.dtype == torch.float32
    for b in range(3):
        j = int(plan.index[b])
        lam = float(plan.lam[b])
        ca = torch.zeros(3, hc, wc, dtype=torch.float64)
        cb = torch.zeros(3, hc, wc, dtype=torch.float64)
        ca[:, :sizes[b][0], :sizes[b][1]] = images[b].double() / 255
        cb[:, :sizes[j][0], :sizes[j][1]] = images[j].double() / 255
        torch.testing.assert_close(det.images[b].double(), lam * ca + (1 - lam) * cb, rtol=1e-5, atol=1e-6)
        assert det.image_sizes[b] == (max(sizes[b][0], sizes[j][0]), max(sizes[b][1], sizes[j][1]))
        ta, tb, tu = det.targets_a[b], det.targets_b[b], det.targets[b]
        assert torch.equal(ta["boxes"], targets[b]["boxes"]) and torch.equal(tb["boxes"], targets[j]["boxes"])
        assert torch.equal(tb["labels"], targets[j]["labels"])
        torch.testing.assert_close(ta["weights"], torch.full((b + 1,), lam))
        torch.testing.assert_close(tb["weights"], torch.full((j + 1,), 1 - lam))
        assert torch.equal(tu["boxes"], torch.cat([targets[b]["boxes"], targets[j]["boxes"]]))
        assert torch.equal(tu["labels"], torch.cat([targets[b]["labels"], targets[j]["labels"]]))
        torch.testing.assert_close(tu["weights"], torch.cat([torch.full((b + 1,), lam), torch.full((j + 1,), 1 - lam)]))
        for t, src in ((ta, b), (tb, j)):
            m = t["masks"]
            h, w = sizes[src]
            assert m.shape == (src + 1, hc, wc)
            assert torch.equal(m[:, :h, :w], targets[src]["masks"])
            assert int(m.sum()) == 2 * (src + 1)  # nothing outside the pasted image
        assert tu["masks"].shape == (b + 1 + j + 1, hc, wc)
        assert ta["image_id"] == b and tb["image_id"] == j


def test_mix_detection_errors():
    sizes, images, targets = _det_inputs()
    cut = L.LossMix(alpha=0.0, cutmix_alpha=1.0, generator=_gen(21)).sample(3, 8, 8)
    with pytest.raises(ValueError, match="CutMix"):
        L.mix_detection(images, targets, cut)
    plan = L.LossMix(generator=_gen(22)).sample(3)
    with pytest.raises(ValueError, match="targets"):
        L.mix_detection(images, targets[:2], plan)
    bad = [dict(t) for t in targets]
    bad[1] = {"labels": bad[1]["labels"]}
    with pytest.raises(ValueError, match="boxes"):
        L.mix_detection(images, bad, L.MixPlan(plan.lam, torch.tensor([1, 1, 1]), None, plan.lam))
    with pytest.raises(ValueError, match=r"images\[2\]"):
        L.mix_detection(images[:2] + [images[2].float()], targets, plan)


# --------------------------------------------------------------------------- domain adaptation
@pytest.mark.parametrize("n_s,n_t", [(4, 6), (5, 3)])
def test_domain_mix_plans_per_phase(n_s, n_t):
    warm = L.domain_mix_plans(n_s, n_t, "warmup", alpha=0.5, generator=_gen(23))
    assert [(p.a, p.b, p.labels_a, p.labels_b) for p in warm] == [
        ("source", "source", "labels", "labels"), ("source", "target", "labels", None)]
    adapt = L.domain_mix_plans(n_s, n_t, "adaptation", alpha=0.5, generator=_gen(23))
    assert [(p.a, p.b, p.labels_a, p.labels_b) for p in adapt] == [
        ("source", "source", "labels", "labels"), ("source", "target", "labels", None),
        ("target", "target", "pseudo", "pseudo")]
    for p in adapt:
        n_a = n_s if p.a == "source" else n_t
        n_b = n_s if p.b == "source" else n_t
        assert p.lam.shape == (n_a,) and p.index.shape == (n_a,)
        assert bool(((p.lam >= 0) & (p.lam <= 1)).all())
        assert bool(((p.index >= 0) & (p.index < n_b)).all())
        if p.a == p.b:
            assert sorted(p.index.tolist()) == list(range(n_a))
        elif n_b >= n_a:
            assert len(set(p.index.tolist())) == n_a
        else:
            assert set(p.index.tolist()) == set(range(n_b))
    # the warm-up plans are the first draws of the same generator stream
    for w, a in zip(warm, adapt):
        assert torch.equal(w.lam, a.lam) and torch.equal(w.index, a.index)
    with pytest.raises(ValueError, match="phase"):
        L.domain_mix_plans(n_s, n_t, "burnin")


def test_domain_mix_images_and_losses():
    src, tgt = torch.randn(4, 3, 5, 5), torch.randn(3, 3, 5, 5)
    ys, pseudo = torch.randint(0, 6, (4,)), torch.randint(0, 6, (3,))
    plans = L.domain_mix_plans(4, 3, "adaptation", generator=_gen(24))
    batches = {"source": (src, ys), "target": (tgt, pseudo)}
    logits = torch.randn(4, 6)

    def ce_rows(out, y):
        return F.cross_entropy(out, y, reduction="none")

    for p in plans:
        xa, ya = batches[p.a]
        xb, yb = batches[p.b]
        mixed = p.mix(xa, xb)
        want = torch.stack([float(p.lam[i]) * xa[i] + (1 - float(p.lam[i])) * xb[int(p.index[i])]
                            for i in range(xa.shape[0])])
        torch.testing.assert_close(mixed, want, rtol=1e-6, atol=1e-6)
        out = logits[:xa.shape[0]]
        loss = p.mix_loss(ce_rows, out, ya, yb)
        la = ce_rows(out, ya)
        if p.labels_b is None:
            want_loss = (p.lam * la).mean()
        else:
            want_loss = (p.lam * la + (1 - p.lam) * ce_rows(out, yb[p.index])).mean()
        torch.testing.assert_close(loss, want_loss, rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="images_b"):
        plans[1].mix(src)
    with pytest.raises(ValueError, match="targets_b"):
        plans[0].mix_loss(ce_rows, logits, ys)


def test_lossmix_mean_std_made_once_per_device():
    """A sequence mean/std becomes a device tensor once, not at every call (a host-to-device
    copy per step on a GPU); the result equals passing the sequences to mix_images."""
    mixer = L.LossMix(alpha=1.0, mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3), generator=torch.Generator().manual_seed(3))
    x = torch.randint(0, 256, (4, 3, 5, 6), dtype=torch.uint8)
    mixer(x)
    assert list(mixer._per_channel_cache) == [x.device]  # made by the call
    consts = mixer._per_channel_cache[x.device]
    out2, plan2 = mixer(x)
    assert mixer._per_channel_cache[x.device] is consts and len(mixer._per_channel_cache) == 1
    assert consts[0].dtype == torch.float32 and consts[0].tolist() == pytest.approx([0.5, 0.4, 0.3])
    want = L.mix_images(x, plan2.pixel_lam, plan2.index, boxes=plan2.boxes, mean=[0.5, 0.4, 0.3],
                        std=[0.2, 0.25, 0.3])
    torch.testing.assert_close(out2, want)
    mixer.std = (1.0, 1.0, 1.0)  # reassigned: made anew
    assert mixer._per_channel_on(x.device)[1].tolist() == [1.0, 1.0, 1.0]
