"""Timing and memory measurement.

:func:`time_interleaved` is the one timing loop: every repetition runs each provider once,
round-robin (the starting provider rotates), so slow drifts of the machine (clock, other
load) hit all providers alike; an optional time budget ends it early (after a minimum).
Each call is split into an untimed ``prepare()`` (fresh inputs for in-place ops, the
forward before a backward-only timing, an L2 flush on a GPU) and the timed ``run(state)``. GPU: CUDA events around ``run`` after a synchronisation (so
the launch overhead is inside the measurement, not hidden behind queued work); CPU:
``time.perf_counter``. The result of ``run`` is freed after the clock stops.
"""
from __future__ import annotations

import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch

Job = Tuple[Callable[[], Any], Callable[[Any], Any]]  # (prepare, run)


def percentile(samples: Sequence[float], q: float) -> float:
    """Linear-interpolation percentile, ``q`` in [0, 100]."""
    s = sorted(samples)
    pos = (len(s) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


class _L2Flush:
    """Overwrites a buffer larger than the GPU's L2 so that every timed call starts cold."""

    def __init__(self, device: torch.device):
        self.buf = torch.empty(256 * 2**20, dtype=torch.int8, device=device) if device.type == "cuda" else None

    def __call__(self):
        if self.buf is not None:
            self.buf.zero_()


def run_echoing(body: Callable[[Callable[[str], None]], Any], out: Optional[str] = None) -> None:
    """Run ``body(echo)``: every line it echoes is printed at once and, with ``out``, also written
    to that file at the end (a side script's console kept next to the results)."""
    lines: List[str] = []

    def echo(msg: str) -> None:
        print(msg, flush=True)
        lines.append(msg)

    body(echo)
    if out:
        with open(out, "w") as f:
            f.write("\n".join(lines) + "\n")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def wall_seconds(fn: Callable[[], Any], device: torch.device) -> float:
    """Wall-clock seconds of ``fn()``, the device synchronised before and after (whole training
    steps, host work included)."""
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - t0


def _time_one(prepare, run, device: torch.device, flush: _L2Flush) -> float:
    """Seconds taken by ``run(prepare())``, ``prepare`` excluded."""
    state = prepare()
    flush()
    _sync(device)
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        out = run(state)
        end.record()
        end.synchronize()
        elapsed = start.elapsed_time(end) / 1e3
    else:
        t0 = time.perf_counter()
        out = run(state)
        elapsed = time.perf_counter() - t0
    del out, state
    return elapsed


def time_interleaved(jobs: Dict[str, Job], device: torch.device, reps: int, warmup: int,
                     budget_s: Optional[float] = None, min_reps: int = 3) -> Dict[str, List[float]]:
    """Per provider, up to ``reps`` wall times in seconds, measured round-robin after ``warmup``
    rounds. With ``budget_s``, stops after the first round that ends past ``budget_s`` seconds
    of timed rounds, once ``min_reps`` rounds are in."""
    names = list(jobs)
    flush = _L2Flush(device)
    samples: Dict[str, List[float]] = {n: [] for n in names}
    start = None
    for r in range(warmup + reps):
        if r == warmup:
            start = time.perf_counter()
        k = r % len(names)
        for name in names[k:] + names[:k]:
            t = _time_one(*jobs[name], device, flush)
            if r >= warmup:
                samples[name].append(t)
        if (budget_s is not None and r + 1 - warmup >= min_reps
                and time.perf_counter() - start > budget_s):
            break
    return samples


def peak_cuda_bytes(prepare, run, device: torch.device) -> int:
    """GPU memory allocated at the peak of ``run(prepare())`` above what was allocated before it."""
    state = prepare()
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    out = run(state)
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device) - base
    del out, state
    return peak


def saved_bytes(forward: Callable[[], Any], inputs: Sequence[torch.Tensor] = ()) -> Tuple[int, Any]:
    """Bytes autograd keeps alive between ``forward()`` and its backward: the sum over the
    distinct storages of the tensors saved for backward, except the storages of ``inputs``
    (which the caller keeps alive anyway)."""
    storages: Dict[int, int] = {}
    skip = {t.untyped_storage().data_ptr() for t in inputs}

    def pack(t):
        st = t.untyped_storage()
        if st.data_ptr() not in skip:
            storages[st.data_ptr()] = st.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = forward()
    return sum(storages.values()), out
