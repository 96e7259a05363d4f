"""Deterministic memory-traffic count of eager PyTorch code, no timing involved.

:class:`TrafficCounter` is a ``TorchDispatchMode`` that adds up, for every ATen op that
runs (autograd's backward ops included), the bytes of its tensor inputs and outputs:

* views (``op.is_view``: view, reshape, expand, t, detach, alias, …) move nothing: 0 bytes;
* a tensor counts its distinct elements only (an expanded dimension, stride 0, counts once);
* allocations (``empty*``) move nothing; ``copy_``/``fill_``/``zero_`` do not read their
  destination.

Each eager op reads its inputs from and writes its outputs to memory, so the sum is the
traffic of unfused eager execution — approximately: an indexing op is charged its whole
source, a cache may absorb re-reads. Divided by a fused kernel's byte model it says how many
times more memory traffic the eager code causes, a machine-independent figure.
"""
from __future__ import annotations

from collections import Counter

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

aten = torch.ops.aten
_NO_TRAFFIC = {aten.empty, aten.empty_like, aten.empty_strided, aten.new_empty, aten.new_empty_strided,
               aten._local_scalar_dense, aten.lift_fresh, aten.lift_fresh_copy}
_WRITE_ONLY = {aten.copy_, aten.fill_, aten.zero_}


def tensor_bytes(t: torch.Tensor) -> int:
    """Bytes of the distinct elements of ``t`` (dimensions of stride 0 count once)."""
    n = 1
    for size, stride in zip(t.shape, t.stride()):
        if size == 0:
            return 0
        if stride != 0:
            n *= size
    return n * t.element_size()


class TrafficCounter(TorchDispatchMode):
    """``with TrafficCounter() as tc: ...`` then ``tc.bytes`` (total) and ``tc.by_op`` (per ATen op)."""

    def __init__(self):
        super().__init__()
        self.bytes = 0
        self.by_op: Counter = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        packet = func.overloadpacket
        if func.is_view or packet in _NO_TRAFFIC:
            return out
        inputs = tree_leaves((args, kwargs))
        if packet in _WRITE_ONLY:
            inputs = inputs[1:]  # the destination is written, not read
        moved = sum(tensor_bytes(t) for t in inputs + tree_leaves(out) if isinstance(t, torch.Tensor))
        self.bytes += moved
        self.by_op[str(packet)] += moved
        return out
