"""The portable ``torch`` backend at large class counts: O(N·C), no C×C matrix.

The eager reference cannot run at C = 70000 (its C×C mitigation matrix alone is 19.6 GB), so
the large cases are checked two ways, both independent of the code under test:

* against ``oracle.seesaw_fwd_contract``, the op's contract transcribed row by row in float64
  with an (N, C) factor matrix — the definition, feasible at large C for a few rows;
* against the reference itself on a small problem embedded in a large one: classes whose
  logits are −inf have probability 0 in every softmax (exp(−inf) = 0 exactly), whatever their
  counts or Seesaw factors, so logits (N, c) padded with −inf columns to (N, C) give exactly
  the small problem's loss, its gradient in the first c columns and a zero gradient elsewhere.
"""
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from lossmix_ext import _ops
from lossmix_ext import _reference as R

import oracle


def _fwd(x, labels, weights, obj_weights, counts, p=0.8, q=2.0, eps=1e-2, ignore_index=None):
    return _ops._backend.kernel("seesaw_fwd", "torch")(x, labels, weights, obj_weights, counts, p, q, eps,
                                                       ignore_index)


@pytest.mark.parametrize("c,obj,sets", [(70000, True, 2), (33000, False, 1), (4097, True, 1)])
def test_large_c_matches_the_contract_oracle(c, obj, sets):
    g = torch.Generator().manual_seed(c)
    n = 3
    x = torch.randn(n, c + (2 if obj else 0), generator=g) * 3
    x[0, 5] = 40.0  # a dominant class: compensation on for the other rows' labels
    labels = torch.randint(0, c, (sets, n), generator=g)
    labels[0, 2] = c if obj else 7  # a background row with objectness
    counts = torch.randint(0, 5000, (c,), generator=g).float()
    counts[:100] = 0  # clamped to 1
    weights = torch.rand(sets, n, generator=g)
    ow = torch.rand(sets, n, generator=g) if obj else None
    got = _fwd(x, labels, weights, ow, counts, ignore_index=c if obj else None)
    want = oracle.seesaw_fwd_contract(x, labels, weights, ow, counts, 0.8, 2.0, 1e-2, c if obj else None)
    for a, b in zip(got, want):
        torch.testing.assert_close(a.double(), b, rtol=1e-5, atol=1e-6)


def test_large_c_embeds_the_reference_on_a_small_problem():
    g = torch.Generator().manual_seed(1)
    n, c_small, c = 6, 40, 50000
    small = torch.randn(n, c_small, generator=g, dtype=torch.float64) * 2
    labels = torch.randint(0, c_small, (n,), generator=g)
    counts = torch.cat([torch.randint(1, 300, (c_small,), generator=g), torch.randint(0, 10 ** 6, (c - c_small,),
                                                                                       generator=g)]).double()
    x = torch.full((n, c), float("-inf"), dtype=torch.float64)
    x[:, :c_small] = small
    w = torch.full((1, n), 1.0 / n, dtype=torch.float64)
    loss, _, grad = _fwd(x, labels[None], w, None, counts)
    ref_in = small.clone().requires_grad_(True)
    ref = R.seesaw_loss(ref_in, labels, counts[:c_small])
    ref.backward()
    torch.testing.assert_close(loss.sum(), ref.detach(), rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(grad[:, :c_small], ref_in.grad, rtol=1e-12, atol=1e-14)
    assert torch.count_nonzero(grad[:, c_small:]) == 0


class _LargestTensor(TorchDispatchMode):
    """The largest number of elements of any tensor an op returns while active."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in (out if isinstance(out, (tuple, list)) else (out,)):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


def test_no_tensor_scales_with_c_squared():
    """At N = 64, C = 70000 (the case the issue reports killed for memory) no intermediate is
    larger than the (N, C) logits: the C×C matrix (4.9e9 elements, 19.6 GB) is never built."""
    g = torch.Generator().manual_seed(2)
    n, c = 64, 70000
    x = torch.randn(n, c + 2, generator=g)
    labels = torch.randint(0, c + 1, (2, n), generator=g)
    counts = torch.randint(0, 1000, (c,), generator=g).float()
    w, ow = torch.rand(2, n, generator=g), torch.rand(2, n, generator=g)
    with _LargestTensor() as mode:
        loss, obj, grad = _fwd(x, labels, w, ow, counts, ignore_index=c)
    assert mode.largest <= n * (c + 2), mode.largest
    assert torch.isfinite(loss).all() and torch.isfinite(grad).all()
