"""The benchmark loop: for each case, check every provider against the reference, count the
reference's memory traffic, time the providers that agree, and report.

Per case (op × shape × dtype):

1. the oracle: the eager reference on the inputs (float16/bfloat16 inputs upcast to float32);
2. every provider runs once (values and, for differentiable ops, gradients w.r.t. the inputs
   with the same upstream gradients) and is compared with the oracle; a provider that raises
   or disagrees is reported FAILED and not timed. This call is also the first warm-up;
   ``compiled``'s is its compile time; on CPU it measures the bytes saved for backward;
3. the eager reference runs under :class:`~benchmarks.traffic.TrafficCounter`;
4. per mode (fwd / bwd / fwd+bwd): interleaved timing of all providers that passed and, on a
   GPU, their peak allocation.
"""
from __future__ import annotations

import datetime
import gc
import os
import time
from typing import Callable, Dict, Iterable, List, Optional, Sequence

import torch

from . import cases as C
from .report import Row, device_info, format_block, format_dtype_table, write_csv, write_plots
from .timing import peak_cuda_bytes, percentile, saved_bytes, time_interleaved
from .traffic import TrafficCounter

# (rtol, atol); atol is relative to the largest magnitude of the reference tensor compared.
TOLERANCES = {torch.float32: (1e-4, 1e-5), torch.float16: (1e-2, 1e-2), torch.bfloat16: (5e-2, 5e-2),
              torch.uint8: (1e-4, 1e-5)}
DEFAULT_REPS = {"quick-check": 3, "quick": 5, "full": 25}
# Untimed rounds per mode after the checking call: at least one, so that the first mode timed
# (fwd) does not pay first-touch costs (allocator growth, page faults) that fwd+bwd then skips.
DEFAULT_WARMUP = {"quick-check": 0, "quick": 1, "full": 2}
# Seconds of timing per case and mode after which the default repetitions stop early (after 3).
DEFAULT_BUDGET_S = {"quick-check": None, "quick": 3.0, "full": 5.0}
HERE = os.path.dirname(os.path.abspath(__file__))
NOT_SELECTED = "not selected"
# Where a run writes by default: an ignored folder of the checkout, one subfolder per run, so
# that the committed results (benchmarks/results/) change only with an explicit --out.
RUNS = os.path.join(HERE, "runs")


def default_out(slug: str, when: Optional[datetime.datetime] = None) -> str:
    """``benchmarks/runs/<device>-<UTC time>`` (ignored by git)."""
    when = when or datetime.datetime.now(datetime.timezone.utc)
    return os.path.join(RUNS, f"{slug}-{when.strftime('%Y%m%d-%H%M%S')}")


# --------------------------------------------------------------------------- evaluation
def _as_tuple(x) -> tuple:
    return tuple(x) if isinstance(x, (tuple, list)) else (x,)


def _upcast(inp: dict) -> dict:
    """float16/bfloat16 tensors → float32 (new leaves, ``requires_grad`` kept)."""
    out = {}
    for k, v in inp.items():
        if isinstance(v, torch.Tensor) and v.dtype in (torch.float16, torch.bfloat16):
            v = v.detach().float().requires_grad_(v.requires_grad)
        out[k] = v
    return out


def _upstream(outs: Sequence[torch.Tensor]) -> List[torch.Tensor]:
    """The upstream gradients of the differentiable outputs: fixed values in {0.25, …, 1.75}
    (exact in every float dtype), the same for every provider."""
    g = torch.Generator().manual_seed(1234)
    return [(torch.randint(1, 8, o.shape, generator=g) / 4).to(device=o.device, dtype=o.dtype)
            for o in outs if o.requires_grad]


def _backward(case: C.Case, inp: dict, outs: tuple, upstream: List[torch.Tensor]):
    diff = [o for o in outs if o.requires_grad]
    return torch.autograd.grad(diff, [inp[k] for k in case.wrt], upstream, allow_unused=True)


def _evaluate(case: C.Case, fn: Callable, inp: dict, count_saved: bool = False):
    """``(outputs, gradients, upstream, saved)`` of one call, detached; ``saved``: bytes kept
    for the backward (see :func:`~benchmarks.timing.saved_bytes`) if ``count_saved``, else None."""
    saved = None
    if count_saved:
        saved, outs = saved_bytes(lambda: fn(inp), [v for v in inp.values() if isinstance(v, torch.Tensor)])
    else:
        outs = fn(inp)
    outs = _as_tuple(outs)
    upstream = _upstream(outs) if case.wrt else []
    grads = _backward(case, inp, outs, upstream) if upstream else ()
    return tuple(o.detach() for o in outs), grads, upstream, saved


def compare(got: Sequence, want: Sequence, what: str, rtol: float, atol: float) -> Optional[str]:
    """``None`` when every tensor matches: |got − want| ≤ atol·max|want| + rtol·|want|, else why not."""
    if len(got) != len(want):
        return f"{len(got)} {what}s, the reference has {len(want)}"
    for k, (a, b) in enumerate(zip(got, want)):
        if a is None or b is None:
            if a is not b:
                return f"{what} {k} is None on one side only"
            continue
        if a.shape != b.shape:
            return f"{what} {k} has shape {tuple(a.shape)}, the reference {tuple(b.shape)}"
        a64, b64 = a.detach().double().cpu(), b.detach().double().cpu()
        if b64.numel() == 0:
            continue
        err = (a64 - b64).abs()
        tol = atol * b64.abs().max().clamp(min=1e-30) + rtol * b64.abs()
        if not bool((err <= tol).all()):
            return (f"{what} {k}: max |err| {err.nan_to_num(float('inf')).max().item():.3g} "
                    f"(max |ref| {b64.abs().max().item():.3g}; rtol {rtol:g}, atol {atol:g}·max|ref|)")
    return None


def _short(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".strip().splitlines()[0]
    return text[:160]


# --------------------------------------------------------------------------- one case
def _job(case: C.Case, p: C.Provider, mode: str, upstream: List[torch.Tensor]):
    """``(prepare, run)`` timing ``mode`` of provider ``p``; ``prepare`` is not timed."""
    fresh = lambda: case.fresh(case.inputs)  # noqa: E731
    if mode == "fwd":
        return fresh, p.run
    if mode == "bwd":
        def prepare():
            inp = fresh()
            return inp, _as_tuple(p.run(inp))
        return prepare, lambda s: _backward(case, s[0], s[1], upstream)
    return fresh, lambda inp: _backward(case, inp, _as_tuple(p.run(inp)), upstream)


def _traffic(case: C.Case) -> Dict[str, int]:
    """Bytes the eager reference moves, per mode (see :mod:`benchmarks.traffic`)."""
    inp = case.fresh(case.inputs)
    with TrafficCounter() as fwd:
        outs = _as_tuple(case.reference(inp))
    counts = {"fwd": fwd.bytes}
    if case.wrt:
        upstream = _upstream(outs)
        with TrafficCounter() as bwd:
            _backward(case, inp, outs, upstream)
        counts.update({"bwd": bwd.bytes, "fwd+bwd": fwd.bytes + bwd.bytes})
    return counts


def bench_case(case: C.Case, device: torch.device, reps: int, warmup: int, peak_gbps: Optional[float],
               want: Callable[[str], Optional[str]], extra: Sequence[C.Provider] = (),
               budget_s: Optional[float] = None, progress: Callable[[str], None] = lambda msg: None) -> List[Row]:
    """All rows of one case. ``want(name)``: ``None`` to run provider ``name``, else why it is
    skipped. ``reps``, ``warmup``, ``budget_s``: see :func:`~benchmarks.timing.time_interleaved`.
    ``progress`` receives one-line notes on slow steps (a compile, a long check)."""
    rtol, atol = TOLERANCES[case.dtype]
    row = lambda mode, name, **kw: Row(case.op, mode, case.shape, case.dtype_str, name, **kw)  # noqa: E731
    providers = [C.Provider("reference", case.reference)]
    if want("compiled") is None:
        torch._dynamo.reset()
        providers.append(C.Provider("compiled", torch.compile(case.reference, dynamic=False)))
    providers += list(case.providers) + list(extra)
    skipped = {p.name: want(p.name) for p in providers if want(p.name) is not None}
    providers = [p for p in providers if p.name not in skipped]

    try:
        oracle = _evaluate(case, case.reference, _upcast(case.fresh(case.inputs)))
    except Exception as exc:  # e.g. the reference has no kernel for this dtype, or out of memory
        return [row(m, "reference", status="skipped", note=f"reference cannot run: {_short(exc)}") for m in case.modes]

    failed: Dict[str, str] = {}
    upstream: Dict[str, List[torch.Tensor]] = {}
    first_call: Dict[str, float] = {}
    saved: Dict[str, int] = {}
    count_saved = device.type == "cpu" and bool(case.wrt)
    for p in providers:
        if p.name == "compiled":
            progress("  compiling the reference (torch.compile, first call) ...")
        t0 = time.perf_counter()
        try:
            outs, grads, upstream[p.name], saved[p.name] = _evaluate(case, p.run, case.fresh(case.inputs),
                                                                     count_saved)
        except Exception as exc:
            failed[p.name] = _short(exc)
            continue
        first_call[p.name] = time.perf_counter() - t0
        if first_call[p.name] > 2.0:
            progress(f"  {p.name}: first call (checked against the reference) took {first_call[p.name]:.1f} s")
        want_outs, want_grads = oracle[:2]
        if p.expected is not None:
            want_outs, want_grads = _evaluate(case, p.expected, _upcast(case.fresh(case.inputs)))[:2]
        why = compare(outs, want_outs, "output", rtol, atol) or compare(grads, want_grads, "gradient", rtol, atol)
        if why:
            failed[p.name] = f"disagrees with the reference: {why}"
    good = [p for p in providers if p.name not in failed]

    traffic, traffic_error = {}, None
    try:
        traffic = _traffic(case) if "reference" not in skipped else {}
    except Exception as exc:  # the count runs the reference once more (memory)
        traffic_error = f"traffic count failed: {_short(exc)}"

    rows: List[Row] = []
    progress(f"  timing {', '.join(case.modes)} of {', '.join(p.name for p in good) or 'nothing'} ...")
    for mode in case.modes:
        jobs = {p.name: _job(case, p, mode, upstream[p.name]) for p in good}
        try:
            samples = time_interleaved(jobs, device, reps, warmup, budget_s)
            timing_error = None
        except Exception as exc:  # e.g. out of memory while timing
            samples, timing_error = {}, _short(exc)
        med = {n: percentile(s, 50) for n, s in samples.items()}
        for p in providers:
            r = row(mode, p.name, is_backend=p.is_backend)
            r.model_bytes = (p.byte_model or case.byte_model)[mode]
            if p.name == "compiled" and p.name in first_call:
                r.compile_s = first_call[p.name]
            if p.name == "reference" and mode in traffic:
                r.traffic_bytes = traffic[mode]
                r.traffic_ratio = traffic[mode] / case.byte_model[mode]
            if p.name in failed or timing_error:
                r.status, r.note = "FAILED", failed.get(p.name) or f"timing: {timing_error}"
                rows.append(r)
                continue
            s = samples[p.name]
            r.median_ms, r.p20_ms, r.p80_ms = (percentile(s, q) * 1e3 for q in (50, 20, 80))
            r.samples = len(s)
            if "reference" in med:
                r.speedup_vs_reference = med["reference"] / med[p.name]
            if "compiled" in med:
                r.speedup_vs_compiled = med["compiled"] / med[p.name]
            r.gbps = r.model_bytes / med[p.name] / 1e9
            r.pct_peak_bw = 100 * r.gbps / peak_gbps if peak_gbps else None
            if device.type == "cuda":
                r.mem_bytes, r.mem_kind = peak_cuda_bytes(*jobs[p.name], device), "peak"
            elif saved.get(p.name) is not None:
                r.mem_bytes, r.mem_kind = saved[p.name], "saved"
            if p.name == "compiled":
                r.note = f"first call incl. compile {first_call[p.name]:.1f} s"
            if p.name == "reference" and traffic_error:
                r.note = traffic_error
            rows.append(r)
        rows += [row(mode, name, status="skipped", note=why) for name, why in skipped.items()
                 if why != NOT_SELECTED]
    return rows


# --------------------------------------------------------------------------- the run
def run(ops: Optional[Iterable[str]] = None, *, full: bool = False, quick_check: bool = False,
        device: Optional[str] = None, out: Optional[str] = None, reps: Optional[int] = None,
        warmup: Optional[int] = None, providers: Optional[Iterable[str]] = None,
        skip: Iterable[str] = (), dtypes: Optional[Iterable[str]] = None, extra_providers: Optional[Dict[str, Sequence[C.Provider]]] = None,
        plots: bool = True, echo: Callable[[str], None] = print) -> List[Row]:
    """Run the benchmark and write ``results.csv`` (and plots) to ``out``; returns the rows.

    ``ops``: names from :data:`benchmarks.cases.OPS` (default all). ``providers``: run only
    these (default all; the Triton backend on CPU — the interpreter — only when named);
    ``skip``: not these. ``dtypes``: only these dtype names (e.g. ``["float32", "uint8"]``). ``reps``/``warmup`` default per set; without ``reps`` the timing of a
    case stops early past a time budget (:data:`DEFAULT_BUDGET_S`).
    ``extra_providers``: ``{op: [Provider, ...]}`` added to those cases.
    """
    dev_t = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if dev_t.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device cuda was asked for, but CUDA is not available here")
    set_name = "quick-check" if quick_check else "full" if full else "quick"
    budget_s = DEFAULT_BUDGET_S[set_name] if reps is None else None
    reps = reps or DEFAULT_REPS[set_name]
    warmup = DEFAULT_WARMUP[set_name] if warmup is None else warmup
    ops = list(ops or C.OPS)
    unknown = [o for o in ops if o not in C.OPS]
    if unknown:
        raise ValueError(f"unknown op(s) {unknown}; known: {list(C.OPS)}")
    wanted = None if providers is None else set(providers)
    skip = set(skip)
    extra_providers = extra_providers or {}

    def want(name: str) -> Optional[str]:
        if (wanted is not None and name not in wanted) or name in skip:
            return NOT_SELECTED
        if name == "triton" and dev_t.type == "cpu" and (wanted is None or "triton" not in wanted):
            return "Triton interpreter on CPU: not a performance measurement"
        return None

    dev = device_info(dev_t)
    now = datetime.datetime.now(datetime.timezone.utc)
    out = out or default_out(dev.slug, now)
    os.makedirs(out, exist_ok=True)
    stamp = now.isoformat(timespec="seconds")
    echo(f"lossmix_ext benchmarks ({set_name} set) on {dev.name}; torch {dev.torch_version}, "
         f"triton {dev.triton_version}; backends: {', '.join(_backends(dev_t))}")
    budget = f" (fewer past {budget_s:g} s of timing, at least 3)" if budget_s else ""
    echo(f"{reps} timed repetitions{budget} after the checking call and {warmup} warm-up round(s), providers "
         f"interleaved; times in ms "
         f"({'CUDA events, L2 flushed' if dev_t.type == 'cuda' else 'perf_counter'}); "
         f"outputs and gradients checked first (fp32: rtol 1e-4, atol 1e-5·max|ref|)\n")
    echo(f"writing to {out}\n")
    t0 = time.perf_counter()
    rows: List[Row] = []
    todo = [c for c in C.cases(ops, set_name, dev_t)
            if dtypes is None or str(c[2]).replace("torch.", "") in dtypes]

    def progress(msg: str) -> None:
        echo(msg)
        _flush()

    for k, (op, shape, dtype, build) in enumerate(todo):
        done = time.perf_counter() - t0
        eta = f", about {done / k * (len(todo) - k) / 60:.1f} min left" if k else ""
        shape_s = " ".join(f"{n}={v}" for n, v in shape.items()) if isinstance(shape, dict) else str(shape)
        progress(f"[{k + 1}/{len(todo)}] {op}  {shape_s}  {str(dtype).replace('torch.', '')}  "
                 f"({done:.0f} s elapsed{eta})")
        t_case = time.perf_counter()
        try:
            case = build()
        except C.SkipCase as exc:
            dtype_str = str(dtype).replace("torch.", "")
            rows.append(Row(op, "-", shape, dtype_str, "all", status="skipped", note=str(exc)))
            echo(f"== {op}  {rows[-1].shape_str}  {dtype_str} ==  skipped: {exc}\n")
            continue
        case_rows = bench_case(case, dev_t, reps, warmup, dev.peak_gbps, want, extra_providers.get(op, ()),
                               budget_s, progress)
        del case
        gc.collect()
        if dev_t.type == "cuda":
            torch.cuda.empty_cache()
        modes = dict.fromkeys(r.mode for r in case_rows)
        blocks = [format_block([r for r in case_rows if r.mode == m]) for m in modes]
        echo("\n\n".join(blocks) + f"\n(case done in {time.perf_counter() - t_case:.1f} s)\n")
        rows += case_rows
    elapsed = time.perf_counter() - t0
    by_dtype = format_dtype_table(rows)
    if by_dtype:
        echo(by_dtype + "\n")
    csv_path = os.path.join(out, "results.csv")
    write_csv(rows, csv_path, dev, stamp)
    written = [csv_path] + (write_plots(rows, out, dev) if plots else [])
    failures = [r for r in rows if r.status == "FAILED"]
    echo(f"total {elapsed:.1f} s; wrote {', '.join(written)}")
    if failures:
        echo("FAILED: " + "; ".join(sorted({f"{r.provider} on {r.op} {r.shape_str} {r.dtype}" for r in failures})))
    return rows


def _flush() -> None:
    import sys
    sys.stdout.flush()


def _backends(device: torch.device) -> List[str]:
    import lossmix_ext
    return lossmix_ext.available_backends(device)
