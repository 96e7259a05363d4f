"""``python -m benchmarks [--op NAME ...] [--full] [--device cpu|cuda] [--out DIR] [--reps N] [--quick-check]``"""
from __future__ import annotations

import argparse
import sys

import os

from . import host_overhead, timm_mixup
from .cases import OPS
from .harness import default_out, run
from .report import device_info


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks", description=(
        "Benchmark lossmix_ext's ops against the eager reference and torch.compile: checks every "
        "provider first, counts the reference's memory traffic, times the providers interleaved, "
        "writes results.csv and plots."))
    ap.add_argument("--op", nargs="+", choices=list(OPS) + ["host_overhead", "timm_mixup"], metavar="NAME",
                    help=f"ops to run (default all): {', '.join(OPS)}; host_overhead, the per-call cost of "
                         "the public API at training shapes against the plain PyTorch op (one thread); and "
                         "timm_mixup, the timm Mixup drop-in against timm's own (when timm is installed)")
    ap.add_argument("--full", action="store_true", help="the full grid of shapes and dtypes (long)")
    ap.add_argument("--quick-check", action="store_true", help="tiny shapes, to check the harness itself")
    ap.add_argument("--device", choices=("cpu", "cuda"), help="default: cuda when available, else cpu")
    ap.add_argument("--out", help="output folder (default: a new benchmarks/runs/<device>-<time>/, ignored by "
                                  "git; pass --out benchmarks/results/<device> to update the committed results)")
    ap.add_argument("--reps", type=int, help="timed repetitions per provider (default: 5 quick, 25 full, "
                    "ending early past a few seconds per case; exactly N when given)")
    ap.add_argument("--warmup", type=int, help="untimed warm-up rounds")
    ap.add_argument("--providers", nargs="+", metavar="NAME",
                    help="run only these providers (reference, compiled, backend names, torchvision, "
                         "timm_inplace, clone, lossmix_ext); naming triton on CPU times the interpreter")
    ap.add_argument("--dtype", nargs="+", dest="dtypes", metavar="NAME",
                    help="only these dtypes: float32, float16, bfloat16, uint8 (images)")
    ap.add_argument("--skip", nargs="+", default=(), metavar="NAME", help="providers not to run (e.g. compiled)")
    ap.add_argument("--no-plots", action="store_true")
    ap.add_argument("--replot", nargs="+", metavar="CSV", help="only redraw the plots of these results.csv files, "
                    "next to each (with the run's date), and exit")
    args = ap.parse_args(argv)
    if args.replot:
        from .report import read_csv, write_plots
        for path in args.replot:
            rows, dev, stamp = read_csv(path)
            print(f"{path}: wrote {', '.join(write_plots(rows, os.path.dirname(path) or '.', dev, stamp[:10]))}")
        return 0
    if args.full and args.quick_check:
        ap.error("--full and --quick-check exclude each other")
    ops = [o for o in (args.op or OPS) if o not in ("host_overhead", "timm_mixup")]
    host = args.op is None or "host_overhead" in args.op
    timm = args.op is None or "timm_mixup" in args.op
    import torch
    dev = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if dev.type == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: CUDA is not available here")
    out = args.out or default_out(device_info(dev).slug)
    rows = []
    if ops:
        rows = run(ops, full=args.full, quick_check=args.quick_check, device=args.device, out=out,
                   reps=args.reps, warmup=args.warmup, providers=args.providers, skip=args.skip, dtypes=args.dtypes,
                   plots=not args.no_plots)
    if host:
        rounds, inner = (3, 2) if args.quick_check else (31, 50)
        print()
        host_overhead.run(str(dev), out=out, rounds=rounds, inner=inner)
    if timm:
        print()
        if args.quick_check:
            timm_mixup.run(str(dev), out=out, batch=4, size=16, rounds=3, warmup=1)
        else:
            timm_mixup.run(str(dev), out=out)
    print(f"\nall results of this run are in {out}"
          + ("" if args.out else f" (not tracked by git; --out {os.path.join('benchmarks', 'results', device_info(dev).slug)}"
                                 " would update the committed ones)"))
    # A lossmix_ext backend that fails its check is a library bug: say so in the exit status.
    return 1 if any(r.is_backend and r.status == "FAILED" for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
