"""Every bad input gets a clear Python error naming the argument; buffers are never corrupted."""
import pytest
import torch

import lossmix_ext as L


def _seesaw(**over):
    args = dict(cls_score=torch.randn(4, 5), labels=torch.tensor([0, 1, 2, 4]), cum_samples=torch.ones(5))
    args.update(over)
    kw = {k: args.pop(k) for k in list(args) if k not in ("cls_score", "labels", "cum_samples")}
    return L.seesaw_loss(args["cls_score"], args["labels"], args["cum_samples"], **kw)


@pytest.mark.parametrize("over,exc,match", [
    (dict(cls_score=[[1.0]]), TypeError, "cls_score must be a torch.Tensor"),
    (dict(cls_score=torch.ones(4, 5, dtype=torch.int64)), TypeError, "cls_score must have dtype"),
    (dict(cls_score=torch.randn(4, 5, 1)), ValueError, "cls_score must be 2-D"),
    (dict(labels=torch.tensor([0.0, 1, 2, 3])), TypeError, "labels must be an int64"),
    (dict(labels=torch.tensor([0, 1, 2])), ValueError, r"labels must have shape \(4,\)"),
    (dict(labels=torch.tensor([0, 1, 2, 5])), ValueError, r"labels must lie in \[0, 4\]"),
    (dict(labels=torch.tensor([0, -1, 2, 3])), ValueError, r"labels must lie in \[0, 4\]"),
    (dict(cum_samples=torch.ones(4)), ValueError, r"cum_samples must have shape \(5,\)"),
    (dict(cum_samples=torch.tensor([1.0, float("nan"), 1, 1, 1])), ValueError, "cum_samples must be finite"),
    (dict(cum_samples=torch.tensor([1.0, float("inf"), 1, 1, 1])), ValueError, "cum_samples must be finite"),
    (dict(reduction="avg"), ValueError, "reduction must be one of"),
    (dict(reduction="sum", avg_factor=3.0), ValueError, "avg_factor can not be used"),
    (dict(p=float("nan")), ValueError, "p must be a finite number"),
    (dict(eps=0.0), ValueError, "eps must be > 0"),
    (dict(label_weights=torch.ones(3)), ValueError, r"label_weights must have shape \(4,\)"),
    (dict(labels=torch.tensor([0, 1, 2, 3], device="meta")), ValueError, "labels is on meta"),
])
def test_seesaw_loss_bad_inputs(over, exc, match):
    with pytest.raises(exc, match=match):
        _seesaw(**over)


def test_mixed_bad_lambda_and_labels():
    x = torch.randn(4, 5)
    a = torch.tensor([0, 1, 2, 3])
    with pytest.raises(ValueError, match=r"lam must lie in \[0, 1\]"):
        L.seesaw_loss_mixed(x, a, a, 1.5, torch.ones(5))
    with pytest.raises(ValueError, match=r"lam must be a number, a 0-d tensor or have shape \(4,\)"):
        L.mixed_cross_entropy(x, a, a, torch.rand(3))
    with pytest.raises(ValueError, match=r"labels_b must have shape"):
        L.mixed_cross_entropy(x, a, a[:2], 0.5)
    with pytest.raises(ValueError, match="ignore_index=-100"):
        L.mixed_cross_entropy(x, a, torch.tensor([0, 1, 9, 3]), 0.5)
    with pytest.raises(ValueError, match=r"lam must lie in \[0, 1\]"):
        L.mix_images(torch.randn(4, 3, 2, 2), torch.tensor([0.5, 0.5, -0.1, 0.5]), torch.arange(4))


def test_mix_images_bad_inputs():
    x = torch.randn(4, 3, 5, 5)
    with pytest.raises(ValueError, match=r"index must lie in \[0, 3\]"):
        L.mix_images(x, 0.5, torch.tensor([0, 1, 2, 4]))
    with pytest.raises(TypeError, match="index must be an int64"):
        L.mix_images(x, 0.5, torch.tensor([0.0, 1, 2, 3]))
    with pytest.raises(TypeError, match="images must be floating point or uint8"):
        L.mix_images(torch.ones(4, 3, dtype=torch.int32), 0.5, torch.arange(4))
    with pytest.raises(ValueError, match="boxes must be"):
        L.mix_images(x, 0.5, torch.arange(4), boxes=torch.tensor([[0, 0, 6, 5]] * 4))
    with pytest.raises(ValueError, match="boxes must be"):
        L.mix_images(x, 0.5, torch.arange(4), boxes=torch.tensor([[3, 0, 2, 5]] * 4))
    with pytest.raises(ValueError, match=r"mean must have one value per channel"):
        L.mix_images(x, 0.5, torch.arange(4), mean=[0.5, 0.5])
    with pytest.raises(ValueError, match="index must pair samples"):
        L.mix_images_(x, 0.5, torch.tensor([1, 2, 3, 0]))
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        L.sample_mix(0)
    with pytest.raises(ValueError, match="pairing must be one of"):
        L.sample_mix(4, pairing="shuffle")
    with pytest.raises(ValueError, match="alpha must be a finite number > 0"):
        L.sample_mix(4, alpha=0.0)
    with pytest.raises(ValueError, match="loss_a and loss_b must have the same shape"):
        L.lossmix_reduce(torch.rand(4), torch.rand(5), 0.5)


def test_seesaw_module_bad_inputs_leave_counts_untouched():
    m = L.SeesawLoss(num_classes=3)
    m.cum_samples.copy_(torch.tensor([5.0, 6, 7, 8]))
    before = m.cum_samples.clone()
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\]"):
        m(torch.randn(3, 5), torch.tensor([0, 4, 1]))
    with pytest.raises(ValueError, match="num_classes \\+ 2 = 5 columns"):
        m(torch.randn(3, 4), torch.tensor([0, 1, 1]))
    with pytest.raises(ValueError, match="reduction_override"):
        m(torch.randn(3, 5), torch.tensor([0, 1, 1]), reduction_override="avg")
    with pytest.raises(ValueError, match="avg_factor can not be used"):
        m(torch.randn(3, 5), torch.tensor([0, 1, 1]), avg_factor=2.0, reduction_override="sum")
    with pytest.raises(ValueError, match="lam is given but labels_b is None"):
        m(torch.randn(3, 5), torch.tensor([0, 1, 1]), lam=0.5)
    with pytest.raises(ValueError, match=r"lam must lie in \[0, 1\]"):
        m(torch.randn(3, 5), torch.tensor([0, 1, 1]), labels_b=torch.tensor([1, 1, 0]), lam=torch.tensor([0.5, 2.0, 0]))
    torch.testing.assert_close(m.cum_samples, before)
    with pytest.raises(ValueError, match="get_cls_channels|differs"):
        m.get_cls_channels(4)


def test_validation_modes():
    x = torch.randn(4, 5)
    bad = torch.tensor([0, 1, 2, 7])
    assert L.get_validation() == "auto"
    with L.validation("sync"):
        with pytest.raises(ValueError):
            L.seesaw_loss(x, bad, torch.ones(5))
    with L.validation("off"):
        out = L.mixed_cross_entropy(x, bad, bad, 0.5, reduction="none")  # no check; out-of-range rows skipped
        assert out.shape == (4,)
    assert L.get_validation() == "auto"
    with pytest.raises(ValueError, match="validation mode must be one of"):
        L.set_validation("strict")


def test_count_updates_skip_out_of_range_labels_without_validation():
    """With the value checks off nothing is checked, and a label outside the counts buffer is
    skipped by every count update (never an out-of-bounds write, never an IndexError from deep
    inside): the public functions (C++ ops with the extension) and the Python twins of the ops
    (builds without it) alike."""
    from lossmix_ext import _ops
    bad = torch.tensor([0, 7, -3, 2, 3, 99, -1])
    want = torch.tensor([1.0, 0.0, 1.0, 1.0])  # 0, 2 and 3 are inside [0, 4)
    with L.validation("off"):
        torch.testing.assert_close(L.count_labels(torch.zeros(4), bad), want)
        module = L.SeesawLoss(num_classes=3)
        out = module(torch.randn(7, 5), bad, labels_b=bad.flip(0), lam=0.5)
        torch.testing.assert_close(module.cum_samples, 2 * want)
        assert all(torch.isfinite(v) for v in out.values())
        counts = torch.zeros(4)
        _ops._count_labels_impl(counts, bad)
        torch.testing.assert_close(counts, want)
        counts = torch.zeros(4)
        _ops._seesaw_count_impl(counts, bad, bad.flip(0), True)
        torch.testing.assert_close(counts, 2 * want)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\]"):  # checked again once the mode is back
        L.count_labels(torch.zeros(4), bad)


def test_value_checks_inside_compiled_graphs():
    f = torch.compile(lambda x, a, lam: L.mixed_cross_entropy(x, a, a, lam, backend="torch"), fullgraph=True)
    x, a = torch.randn(3, 4), torch.tensor([0, 1, 2])
    torch.testing.assert_close(f(x, a, torch.rand(3)), torch.nn.functional.cross_entropy(x, a))
    with pytest.raises(RuntimeError, match=r"lam must lie in \[0, 1\]"):
        f(x, a, torch.tensor([0.5, 1.5, 0.5]))
    # the composite op's check names the set (labels_a); a graph that calls seesaw_fwd directly
    # gets that op's check ("labels")
    with pytest.raises(ValueError, match=r"labels(_a)? must lie in \[0, 3\]"):
        f(x, torch.tensor([0, 1, 5]), torch.rand(3))
