"""Interleaved A/B timing of the CPU Seesaw kernel (fused forward + gradient) of two builds of
``lossmix_ext._C``, e.g. before and after a kernel change::

    python -m benchmarks.ab_native OLD.so NEW.so [--n 4096] [--c 1203] [--reps 25]

Both extension files are loaded into one process (the module only holds pybind functions) and
called alternately on the same inputs, one thread, so machine noise hits both alike. Prints
the median per build and the ratio, per dtype and with compensation on (q = 2) and off (q = 0).
"""
from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import time

import torch


def _load(path: str, tag: str):
    spec = importlib.util.spec_from_file_location(f"_lossmix_ab_{tag}._C", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.ab_native", description=__doc__.split("\n\n")[0])
    ap.add_argument("a", help="extension file A (e.g. the build before a change)")
    ap.add_argument("b", help="extension file B")
    ap.add_argument("--n", type=int, default=4096)
    ap.add_argument("--c", type=int, default=1203)
    ap.add_argument("--reps", type=int, default=25)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    mods = {"A": _load(args.a, "a"), "B": _load(args.b, "b")}
    torch.manual_seed(0)
    n, c = args.n, args.c
    print(f"seesaw_fwd_cpu, N={n} C={c}, 1 thread, {args.reps} interleaved reps, medians")
    for dt in (torch.float32, torch.bfloat16, torch.float16):
        for q in (2.0, 0.0):
            x = torch.randn(n, c).to(dt)
            lab = torch.randint(0, c, (1, n))
            w = torch.ones(1, n)
            cnt = torch.rand(c) * 1000 + 1
            ts = {k: [] for k in mods}
            for m in mods.values():
                for _ in range(2):
                    m.seesaw_fwd_cpu(x, lab, w, None, cnt, 0.8, q, 0.01, None)
            order = list(mods.items())
            for r in range(args.reps):
                for k, m in (order if r % 2 else order[::-1]):
                    t = time.perf_counter()
                    m.seesaw_fwd_cpu(x, lab, w, None, cnt, 0.8, q, 0.01, None)
                    ts[k].append(time.perf_counter() - t)
            a, b = (statistics.median(ts[k]) * 1e3 for k in ("A", "B"))
            print(f"{str(dt).removeprefix('torch.'):9s} q={q}: A {a:6.2f} ms  B {b:6.2f} ms  B/A {b / a:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
