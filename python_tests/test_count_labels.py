"""``count_labels`` (the C-logit Seesaw count update) and ``MixPlan.seesaw_loss`` (the LossMix
form of the C-logit Seesaw loss), against torch.bincount and the single-set loss."""
import pytest
import torch

import lossmix_ext as L


def test_count_labels_adds_the_histograms():
    g = torch.Generator().manual_seed(0)
    counts = torch.rand(7, generator=g) * 10
    a = torch.randint(0, 7, (50,), generator=g)
    b = torch.randint(0, 7, (50,), generator=g)
    want = counts + torch.bincount(a, minlength=7).float()
    got = L.count_labels(counts, a)
    assert got is counts
    torch.testing.assert_close(counts, want, rtol=0, atol=0)
    want = counts + torch.bincount(a, minlength=7).float() + torch.bincount(b, minlength=7).float()
    L.count_labels(counts, a, b)
    torch.testing.assert_close(counts, want, rtol=0, atol=0)


@pytest.mark.parametrize("bad", ["labels", "labels_b"])
def test_count_labels_checks_both_sets_before_counting(bad):
    counts = torch.zeros(5)
    ok, wrong = torch.tensor([0, 1, 4]), torch.tensor([0, 5, 1])
    a, b = (wrong, ok) if bad == "labels" else (ok, wrong)
    with pytest.raises(ValueError, match=bad):
        L.count_labels(counts, a, b)
    assert torch.equal(counts, torch.zeros(5))  # nothing counted by the failed call
    with pytest.raises(TypeError, match="labels"):
        L.count_labels(counts, ok.float())
    with pytest.raises(ValueError, match="labels_b"):
        L.count_labels(counts, ok, ok[:2])
    with pytest.raises(TypeError, match="cum_samples"):
        L.count_labels(torch.zeros(5, dtype=torch.long), ok)


def test_plan_seesaw_loss_is_the_lam_weighted_pair_of_single_set_losses():
    g = torch.Generator().manual_seed(1)
    n, c = 12, 9
    plan = L.LossMix(alpha=1.0, generator=g).sample(n)
    x = torch.randn(n, c, generator=g)
    y = torch.randint(0, c, (n,), generator=g)
    counts = torch.rand(c, generator=g) * 100
    L.count_labels(counts, y, plan.targets_b(y))
    x1, x2, x3 = (x.clone().requires_grad_() for _ in range(3))
    got = plan.seesaw_loss(x1, y, counts, reduction="none")
    la = L.seesaw_loss(x2, y, counts, reduction="none", backend="torch")
    lb = L.seesaw_loss(x2, y[plan.index], counts, reduction="none", backend="torch")
    want = plan.lam * la + (1 - plan.lam) * lb
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    got.sum().backward()
    want.sum().backward()
    torch.testing.assert_close(x1.grad, x2.grad, rtol=1e-5, atol=1e-6)
    mean = plan.seesaw_loss(x3, y, counts)  # default reduction: the mean over rows
    torch.testing.assert_close(mean, want.mean(), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="cls_score"):
        plan.seesaw_loss(x[:5], y[:5], counts)
