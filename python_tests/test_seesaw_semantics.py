"""Seesaw loss and the SeesawLoss module: golden values, independent oracle, mmdetection semantics."""
import math

import pytest
import torch

np = pytest.importorskip("numpy", reason="the NumPy oracle needs numpy")

import lossmix_ext as L
from lossmix_ext import _reference as R

import oracle


def _dict(m, *a, **k):
    out = m(*a, **k)
    return {key: float(v) for key, v in out.items()}


# ---------------------------------------------------------------- golden values (mmdetection's tests)
def test_golden_no_factors():
    m = L.SeesawLoss(p=0.0, q=0.0, num_classes=2)
    out = _dict(m, torch.tensor([[-100.0, 100, -100, 100]]), torch.tensor([1]))
    assert out["loss_cls_objectness"] == pytest.approx(200.0)
    assert out["loss_cls_classes"] == pytest.approx(0.0)


def test_golden_mitigation():
    m = L.SeesawLoss(p=1.0, q=0.0, num_classes=2)
    m.cum_samples[0] = math.exp(20)
    out = _dict(m, torch.tensor([[-100.0, 100, -100, 100]]), torch.tensor([0]))
    assert out["loss_cls_classes"] == pytest.approx(180.0, rel=1e-6)


def test_golden_compensation():
    m = L.SeesawLoss(p=0.0, q=1.0, num_classes=2)
    out = _dict(m, torch.tensor([[-100.0, 100, -100, 100]]), torch.tensor([0]))
    assert out["loss_cls_classes"] == pytest.approx(200 + math.log(100), rel=1e-6)
    assert out["loss_cls_classes"] == pytest.approx(204.6052, abs=1e-3)


def test_golden_perfect_prediction():
    m = L.SeesawLoss(p=0.0, q=1.0, num_classes=2, return_dict=False)
    x = torch.tensor([[100.0, -100, 100, -100]])
    assert float(m(x, torch.tensor([0]))) == pytest.approx(0.0, abs=1e-6)
    acc = m.get_accuracy(x, torch.tensor([0]))
    assert float(acc["acc_objectness"]) == 100.0 and float(acc["acc_classes"]) == 100.0
    torch.testing.assert_close(m.get_activation(x), torch.tensor([[1.0, 0.0, 0.0]]))


def test_golden_lvis_like_batch():
    m = L.SeesawLoss(p=0.8, q=2.0, num_classes=3, eps=1e-2)
    m.cum_samples[:3] = torch.tensor([1000.0, 10, 0])
    x = torch.tensor([[2, 1, .5, 1, -1], [0, 3, -1, 2, 0], [1, 1, 1, -1, 1], [.5, -.5, 2, 0, 0]])
    labels = torch.tensor([0, 1, 3, 2])
    lw = torch.tensor([1, 1, 1, .5])
    out = _dict(m, x, labels, lw, avg_factor=4)
    assert out["loss_cls_objectness"] == pytest.approx(0.181839, abs=1e-6)
    assert out["loss_cls_classes"] == pytest.approx(0.048781, abs=1e-6)
    torch.testing.assert_close(m.cum_samples, torch.tensor([1001.0, 11, 1, 1]))
    # and the independent oracle agrees
    obj, cls, _ = oracle.seesaw_module(x.numpy(), labels.numpy(), [1000, 10, 0, 0], 3, 0.8, 2.0, 1e-2,
                                       lw.numpy(), "mean", 4)
    assert out["loss_cls_objectness"] == pytest.approx(obj, rel=1e-5)
    assert out["loss_cls_classes"] == pytest.approx(cls, rel=1e-5)


# ---------------------------------------------------------------- reference vs independent oracle
@pytest.mark.parametrize("p,q", [(0.8, 2.0), (0.0, 2.0), (0.8, 0.0), (0.0, 0.0), (1.5, 0.5)])
def test_reference_matches_oracle(p, q):
    n, c = 9, 6
    x = torch.randn(n, c, dtype=torch.float64) * 3
    labels = torch.randint(0, c, (n,))
    counts = torch.tensor([500.0, 3, 0, 40, 40, 7], dtype=torch.float64)
    x.requires_grad_(True)
    rows = R.seesaw_ce(x, labels, counts, p, q, 1e-2)
    (g,) = torch.autograd.grad(rows.sum(), x)
    want_rows, want_grad = oracle.seesaw_rows(x.detach().numpy(), labels.numpy(), counts.numpy(), p, q, 1e-2)
    np.testing.assert_allclose(rows.detach().numpy(), want_rows, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(g.numpy(), want_grad, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("reduction,avg_factor", [("mean", None), ("mean", 5.0), ("sum", None), ("none", None),
                                                  ("none", 5.0)])
def test_module_matches_oracle(reduction, avg_factor):
    C, n = 5, 12
    x = torch.randn(n, C + 2, dtype=torch.float64)
    labels = torch.randint(0, C + 1, (n,))
    lw = torch.rand(n, dtype=torch.float64)
    before = torch.tensor([30.0, 0, 5, 2, 100, 1000])
    m = L.SeesawLoss(num_classes=C, reduction=reduction).double()
    m.cum_samples.copy_(before)
    out = m(x, labels, lw, avg_factor=avg_factor)
    obj, cls, counts = oracle.seesaw_module(x.numpy(), labels.numpy(), before.numpy(), C, 0.8, 2.0, 1e-2,
                                            lw.numpy(), reduction, avg_factor)
    np.testing.assert_allclose(out["loss_cls_objectness"].numpy(), obj, rtol=1e-10)
    np.testing.assert_allclose(out["loss_cls_classes"].numpy(), cls, rtol=1e-10)
    np.testing.assert_allclose(m.cum_samples.numpy(), counts)
    if reduction == "none":  # mmdetection's shapes: objectness (N,), classes (N_pos,)
        assert out["loss_cls_objectness"].shape == (n,)
        assert out["loss_cls_classes"].shape == (int((labels < C).sum()),)


def test_module_matches_reference_module_and_grad():
    C, n = 7, 20
    x = torch.randn(n, C + 2, requires_grad=True)
    labels = torch.randint(0, C + 1, (n,))
    m = L.SeesawLoss(num_classes=C, loss_weight=2.0)
    m.cum_samples.copy_(torch.randint(0, 50, (C + 1,)).float())
    counts = m.cum_samples.clone()
    out = m(x, labels)
    R.update_counts(counts, labels)
    torch.testing.assert_close(m.cum_samples, counts)
    xr = x.detach().clone().requires_grad_(True)
    obj, cls = R.seesaw_module_loss(xr, labels, counts, C, loss_weight=2.0)
    torch.testing.assert_close(out["loss_cls_objectness"], obj, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out["loss_cls_classes"], cls, rtol=1e-5, atol=1e-6)
    (out["loss_cls_objectness"] + 3 * out["loss_cls_classes"]).backward()
    (obj + 3 * cls).backward()
    torch.testing.assert_close(x.grad, xr.grad, rtol=1e-5, atol=1e-7)


def test_no_positives_is_differentiable_zero():
    C = 4
    x = torch.randn(5, C + 2, requires_grad=True)
    m = L.SeesawLoss(num_classes=C)
    out = m(x, torch.full((5,), C))
    assert float(out["loss_cls_classes"].detach()) == 0.0
    out["loss_cls_classes"].backward()
    assert x.grad is not None and float(x.grad.abs().sum()) == 0.0
    for reduction, af in (("mean", None), ("mean", 3.0), ("sum", None)):
        o = m(x, torch.full((5,), C), reduction_override=reduction, avg_factor=af)
        assert float(o["loss_cls_classes"].detach()) == 0.0


def test_no_positives_reduction_none_is_0d_zero():
    """mmdetection returns ``cls_score_classes[pos_inds].sum()`` there: a 0-d zero, not a (0,) tensor."""
    C = 4
    x = torch.randn(5, C + 2, requires_grad=True)
    m = L.SeesawLoss(num_classes=C)
    out = m(x, torch.full((5,), C), reduction_override="none")
    assert out["loss_cls_classes"].shape == () and float(out["loss_cls_classes"].detach()) == 0.0
    assert out["loss_cls_objectness"].shape == (5,)
    out["loss_cls_classes"].backward()
    assert float(x.grad.abs().sum()) == 0.0
    ref = R.seesaw_module_loss(x.detach(), torch.full((5,), C), m.cum_samples, C, reduction="none")
    assert ref[1].shape == ()
    # with positives: one entry per positive row
    out = m(x, torch.tensor([0, C, 2, C, 1]), reduction_override="none")
    assert out["loss_cls_classes"].shape == (3,)


# ---------------------------------------------------------------- mmdetection's own unit tests
def test_mmdet_asserts_are_assertion_errors():
    """mmdetection's ``test_seesaw_loss`` / ``test_loss_with_reduction_override`` expect
    AssertionError; the library's error is both an AssertionError and a ValueError."""
    with pytest.raises(AssertionError):
        L.SeesawLoss(use_sigmoid=True, loss_weight=1.0)
    loss_cls = L.SeesawLoss(p=0.0, q=0.0, loss_weight=1.0, num_classes=2)
    for width in (2, 3):  # the length of fake_pred should be num_classes + 2 = 4
        with pytest.raises(AssertionError):
            loss_cls(torch.full((1, width), 100.0), torch.tensor([1]))
    with pytest.raises(AssertionError):
        loss_cls(torch.randn(3, 4), torch.tensor([0, 1, 2]), reduction_override=True)
    with pytest.raises(AssertionError):
        loss_cls.get_cls_channels(3)
    for exc in (AssertionError, ValueError, L.LossMixAssertionError):
        with pytest.raises(exc, match="reduction_override"):
            loss_cls(torch.randn(3, 4), torch.tensor([0, 1, 2]), reduction_override="avg")
    assert float(loss_cls.cum_samples.sum()) == 0.0  # none of the failed calls counted


def test_counts_stay_float32_through_dtype_conversion():
    """.half() / .bfloat16() would stop the counts at 2048 / 256: the buffer stays float32."""
    for conv in (lambda m: m.half(), lambda m: m.bfloat16(), lambda m: m.to(torch.float16),
                 lambda m: torch.nn.Sequential(m).half()[0]):
        m = conv(L.SeesawLoss(num_classes=2))
        assert m.cum_samples.dtype == torch.float32
        m.cum_samples[0] = 2048.0
        with torch.no_grad():
            m._count(torch.tensor([0, 0, 2]))
        assert m.cum_samples.tolist() == [2050.0, 0.0, 1.0]
        assert m.state_dict()["cum_samples"].dtype == torch.float32
    m = L.SeesawLoss(num_classes=2).double()  # widening keeps its exactness: float64, as mmdetection
    assert m.cum_samples.dtype == torch.float64
    # a float16 state dict (saved by a model that converted its buffer) loads into float32 counts
    m = L.SeesawLoss(num_classes=2)
    m.load_state_dict({"cum_samples": torch.tensor([1.0, 2.0, 3.0], dtype=torch.float16)})
    assert m.cum_samples.dtype == torch.float32 and m.cum_samples.tolist() == [1.0, 2.0, 3.0]


def test_half_module_counts_past_2048_in_forward():
    C = 2
    m = L.SeesawLoss(num_classes=C).half()
    m.cum_samples[0] = 2048.0
    x = torch.randn(4, C + 2, dtype=torch.float16)
    m(x, torch.tensor([0, 0, 0, 2]))
    assert m.cum_samples.tolist() == [2051.0, 0.0, 1.0]


def test_counts_update_under_no_grad_and_eval():
    m = L.SeesawLoss(num_classes=3).eval()
    with torch.no_grad():
        m(torch.randn(4, 5), torch.tensor([0, 0, 3, 2]))
    torch.testing.assert_close(m.cum_samples, torch.tensor([2.0, 0, 1, 1]))


def test_state_dict_round_trip():
    m = L.SeesawLoss(num_classes=4)
    m(torch.randn(6, 6), torch.tensor([0, 1, 1, 4, 2, 2]))
    m2 = L.SeesawLoss(num_classes=4)
    m2.load_state_dict(m.state_dict())
    torch.testing.assert_close(m2.cum_samples, m.cum_samples)
    assert list(m.state_dict()) == ["cum_samples"] and m.cum_samples.dtype == torch.float32


def test_module_interface():
    m = L.SeesawLoss(num_classes=10)
    assert m.get_cls_channels(10) == 12
    assert m.custom_cls_channels and m.custom_activation and m.custom_accuracy
    with pytest.raises(ValueError, match="use_sigmoid"):
        L.SeesawLoss(use_sigmoid=True)
    with pytest.raises(AssertionError, match="use_sigmoid"):
        L.SeesawLoss(use_sigmoid=True)
    x = torch.randn(6, 12)
    act = m.get_activation(x)
    assert act.shape == (6, 11)
    torch.testing.assert_close(act.sum(1), torch.ones(6))


def test_accuracy_matches_hand_count():
    C = 3
    x = torch.tensor([[5.0, 0, 0, 1, 0],    # class 0, fg
                      [0.0, 5, 0, 0, 1],    # class 1, bg
                      [0.0, 0, 5, 1, 0],    # class 2, fg
                      [5.0, 0, 0, 0, 1]])   # class 0, bg
    labels = torch.tensor([0, 2, 2, 3])
    acc = L.SeesawLoss(num_classes=C).get_accuracy(x, labels)
    # objectness targets fg, fg, fg, bg -> predictions fg, bg, fg, bg: 3/4
    assert float(acc["acc_objectness"]) == pytest.approx(75.0)
    # positives rows 0..2: labels 0, 2, 2 vs argmax 0, 1, 2 -> 2/3
    assert float(acc["acc_classes"]) == pytest.approx(200.0 / 3)


def test_reduction_override_and_return_dict_false():
    C = 3
    x = torch.randn(6, C + 2)
    labels = torch.tensor([0, 1, 2, 3, 1, 0])
    m = L.SeesawLoss(num_classes=C, return_dict=False)
    total_sum = m(x, labels, reduction_override="sum")
    m2 = L.SeesawLoss(num_classes=C)
    d = m2(x, labels, reduction_override="sum")
    torch.testing.assert_close(total_sum, d["loss_cls_objectness"] + d["loss_cls_classes"])


# ---------------------------------------------------------------- LossMix on the module and functional
def test_module_mixed_reduces_to_single():
    """λ = 1 (any labels_b), or labels_b = labels (any λ), gives the single-set loss for equal counts."""
    C, n = 5, 10
    x = torch.randn(n, C + 2)
    labels = torch.randint(0, C + 1, (n,))
    counts = torch.rand(C + 1) * 50
    single = L.seesaw_module_loss(x, labels, counts, C)
    for lb, lam in ((torch.randint(0, C + 1, (n,)), 1.0), (labels, torch.rand(n))):
        mixed = L.seesaw_module_loss(x, labels, counts, C, labels_b=lb, lam=lam)
        for got, want in zip(mixed, single):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_module_mixed_matches_reference():
    C, n = 6, 16
    x = torch.randn(n, C + 2, dtype=torch.float64)
    la, lb = torch.randint(0, C + 1, (n,)), torch.randint(0, C + 1, (n,))
    lam = torch.rand(n, dtype=torch.float64)
    lw = torch.rand(n, dtype=torch.float64)
    for reduction, af in (("mean", None), ("mean", 7.0), ("sum", None), ("none", None)):
        m = L.SeesawLoss(num_classes=C).double()
        out = m(x, la, lw, avg_factor=af, reduction_override=reduction, labels_b=lb, lam=lam)
        counts = torch.zeros(C + 1, dtype=torch.float64)
        R.update_counts(counts, torch.cat([la, lb]))
        torch.testing.assert_close(m.cum_samples, counts)
        obj, cls = R.seesaw_module_loss_mixed(x, la, lb, lam, counts, C, label_weights=lw, reduction=reduction,
                                              avg_factor=af)
        torch.testing.assert_close(out["loss_cls_objectness"], obj)
        torch.testing.assert_close(out["loss_cls_classes"], cls)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_seesaw_loss_mixed_matches_reference(reduction):
    n, c = 11, 9
    x = torch.randn(n, c, requires_grad=True)
    la, lb = torch.randint(0, c, (n,)), torch.randint(0, c, (n,))
    lam = torch.rand(n)
    counts = torch.randint(0, 100, (c,)).float()
    got = L.seesaw_loss_mixed(x, la, lb, lam, counts, reduction=reduction)
    xr = x.detach().clone().requires_grad_(True)
    want = R.seesaw_loss_mixed(xr, la, lb, lam, counts, reduction=reduction)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    got.sum().backward()
    want.sum().backward()
    torch.testing.assert_close(x.grad, xr.grad, rtol=1e-5, atol=1e-7)


def test_seesaw_loss_mixed_special_cases():
    n, c = 8, 6
    x = torch.randn(n, c)
    la, lb = torch.randint(0, c, (n,)), torch.randint(0, c, (n,))
    counts = torch.rand(c) * 100
    single = L.seesaw_loss(x, la, counts)
    torch.testing.assert_close(L.seesaw_loss_mixed(x, la, lb, 1.0, counts), single)
    torch.testing.assert_close(L.seesaw_loss_mixed(x, la, la, torch.rand(n), counts), single)


def test_seesaw_loss_functional_matches_oracle():
    n, c = 10, 7
    x = torch.randn(n, c, dtype=torch.float64) * 2
    labels = torch.randint(0, c, (n,))
    counts = torch.tensor([0.0, 1, 2, 50, 400, 3, 9], dtype=torch.float64)
    lw = torch.rand(n, dtype=torch.float64)
    rows, _ = oracle.seesaw_rows(x.numpy(), labels.numpy(), counts.numpy(), 0.8, 2.0, 1e-2)
    got = L.seesaw_loss(x, labels, counts, label_weights=lw, avg_factor=3.0)
    assert float(got) == pytest.approx(float((rows * lw.numpy()).sum() / (3.0 + float(np.finfo(np.float32).eps))),
                                       rel=1e-10)
    got_none = L.seesaw_loss(x, labels, counts, reduction="none")
    np.testing.assert_allclose(got_none.numpy(), rows, rtol=1e-10)
