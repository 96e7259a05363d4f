"""The device check: everything a GPU machine can validate about lossmix_ext, in one call of at
most eight minutes, with no network and nothing installed (it uses the machine's torch, triton,
nvcc and compute-sanitizer as they are, and runs on a machine that has only torch, triton,
numpy, pytest and a CUDA toolkit)::

    python tools/gpu_check.py [--out DIR] [--budget 480] [--archive FILE.tgz] [--skip-build] [--device cuda]

Run from a checkout. Each step has a fixed slice of the budget, in this order (by value: what
matters most runs first, so a slow step can only cost the steps after it the time it was given):

=================  ======  =====================================================================
step               slice   what
=================  ======  =====================================================================
environment         15 s   GPU, driver, torch / CUDA / triton, and whether nvcc, ninja,
                           compute-sanitizer, ncu, pytest, hypothesis, numpy, matplotlib are here
build              150 s   ``lossmix_ext._C`` in place with the CUDA kernels for the visible GPU's
                           architecture only, on every core (without ninja too); without nvcc the
                           CPU kernels, and the CUDA backend is reported as not checked
pytest -m gpu      110 s   parity with the reference on the GPU, CUDA-graph capture, two devices
GPU-only checks    120 s   ``tools/gpu_extra.py``, one process each: more than 2^31 elements,
                           misaligned / strided inputs, determinism, CUDA-graph replay,
                           validation modes and the device-side assert's message
benchmark           50 s   the quick set on the device (``torch.compile`` skipped), host overhead
sanitizer           25 s   compute-sanitizer memcheck (caching allocator off) and racecheck on
                           tiny calls of every kernel family; a tool that refuses the device is
                           reported as unavailable, not as a failure
(summary)           10 s
=================  ======  =====================================================================

The slices scale with ``--budget`` (480 s by default); time a step leaves unused goes to the
steps after it, and each step's processes (their whole process group) are stopped at the end
of its slice, so the run ends within the budget. A summary is always written, also after
failures: ``summary.md`` (environment, the pass/fail table, the benchmark's table and plots)
and ``summary.txt`` (the table, also printed last). By default everything goes to
``benchmarks/results/<device>/device_check/``, ready to commit; ``--archive`` also packs that
folder into one ``.tgz`` (to bring it back from a machine that returns few files). The exit
status is 1 when a step failed or ran out of its slice. ``--device cpu --small --skip-build``
runs the same logic on the CPU with tiny inputs (the test suite's dry run).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from typing import Dict, List, Optional, Sequence, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXTRA = os.path.join(ROOT, "tools", "gpu_extra.py")
CHECKS = ("big_seesaw", "big_mix", "wide_sample", "misaligned", "determinism", "graphs", "validation_modes",
          "assert_message")
DEFAULT_BUDGET = 480.0
# The benchmark's quick set without timm's Mixup comparison (a CPU-side plug-in benchmark).
BENCH_OPS = ("seesaw_loss", "seesaw_module", "seesaw_loss_mixed", "mixed_cross_entropy", "mix_images", "mix_images_",
             "lossmix_reduce", "host_overhead")
# (step, seconds of a DEFAULT_BUDGET run), in the order the steps run; the rest is the summary's.
SLICES: Tuple[Tuple[str, float], ...] = (("environment", 15.0), ("build", 150.0), ("pytest", 110.0),
                                         ("extra", 120.0), ("bench", 50.0), ("sanitizer", 25.0))
SUMMARY_RESERVE = DEFAULT_BUDGET - sum(s for _, s in SLICES)
# What a refusing tool prints ("Device not supported", then error 999 at the first allocation).
REFUSALS = ("device not supported", "not supported on this", "unknown error", "error 999",
            "cuda_error_unknown", "no supported devices", "err_nvgpuctrperm", "insufficient privilege")


class Run:
    def __init__(self, out: str, budget: float):
        self.out, self.budget, self.start = out, budget, time.monotonic()
        self.rows: List[Tuple[str, str, float, str]] = []
        self.env: Dict[str, str] = {}
        self.deadline = self.start
        self.scale = budget / DEFAULT_BUDGET
        os.makedirs(out, exist_ok=True)

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def begin(self, step: str) -> None:
        """Open the slice of ``step``: it ends at the sum of the slices so far (unused time of the
        earlier steps rolls over), never later than the budget minus the summary's reserve."""
        i = [name for name, _ in SLICES].index(step)
        self.deadline = self.start + self.scale * sum(s for _, s in SLICES[:i + 1])
        self.deadline = min(self.deadline, self.start + self.budget - self.scale * SUMMARY_RESERVE)

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def row(self, step: str, status: str, seconds: float, detail: str = "") -> None:
        detail = " ".join(detail.split())[:160]
        self.rows.append((step, status, seconds, detail))
        print(f"[gpu_check {self.elapsed():5.0f}s] {step}: {status} {detail}", flush=True)

    def sh(self, cmd: Sequence[str], log: str, timeout: Optional[float] = None,
           env: Optional[dict] = None) -> Tuple[int, str]:
        """Run ``cmd`` from the checkout in its own process group, its output appended to ``log``;
        the whole group is stopped when ``timeout`` (default: the step's slice) runs out, and the
        call returns 124. Output goes to the log file, not a pipe, so a grandchild that keeps the
        pipe open cannot hold the call past its time."""
        timeout = self.left() if timeout is None else min(timeout, self.left())
        if timeout <= 1:
            return 124, "no time left in this step's slice"
        path = os.path.join(self.out, log)
        with open(path, "a") as f:
            f.write(f"\n$ {' '.join(cmd)}\n")
            start = f.tell()
            f.flush()
            try:
                p = subprocess.Popen(list(cmd), cwd=ROOT, env=env or os.environ.copy(), stdout=f,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
            except OSError as exc:
                f.write(f"[could not start: {exc}]\n")
                return 127, str(exc)
            try:
                rc = p.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                _stop_group(p)
                rc = 124
            if rc == 124:
                f.write(f"\n[stopped: its slice ran out after {timeout:.0f} s]\n")
        with open(path) as f:
            f.seek(start)
            return rc, f.read()


def _stop_group(p: subprocess.Popen) -> None:
    for sig, wait in ((signal.SIGTERM, 3.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(p.pid, sig)
        except (ProcessLookupError, PermissionError):
            return
        try:
            p.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def _last_line(text: str, prefix: str = "") -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.startswith(prefix)]
    return lines[-1][:160] if lines else ""


def _tool_version(run: Run, name: str, args: Sequence[str] = ("--version",)) -> str:
    path = shutil.which(name)
    if path is None:
        return "not found"
    try:
        p = subprocess.run([path, *args], capture_output=True, text=True, timeout=min(15.0, max(run.left(), 1.0)))
        if p.returncode != 0:
            return f"unusable: `{name} {' '.join(args)}` exited {p.returncode} ({path})"
        text = (p.stdout + p.stderr).strip().splitlines()
        line = next((ln for ln in reversed(text) if any(ch.isdigit() for ch in ln)), text[-1] if text else "")
        return f"{line.strip()[:100]} ({path})"
    except (OSError, subprocess.SubprocessError) as exc:
        return f"present at {path}, but `{name} {' '.join(args)}` failed: {type(exc).__name__}"


ENV_CODE = r"""
import json, os, platform, importlib, importlib.util as u
info = {"python": platform.python_version()}
def version(mod):
    if u.find_spec(mod) is None:
        return "not installed"
    try:
        return getattr(importlib.import_module(mod), "__version__", "installed")
    except Exception as exc:
        return f"fails to import: {type(exc).__name__}: {exc}"[:120]
for mod in ("numpy", "pytest", "hypothesis", "matplotlib", "triton"):
    info[mod] = version(mod)
import torch
info["torch"] = torch.__version__
info["torch CUDA"] = str(torch.version.cuda)
info["cpus"] = str(os.cpu_count())
dev = os.environ["GPU_CHECK_DEVICE"]
if dev == "cuda" and torch.cuda.is_available():
    info["gpu"] = torch.cuda.get_device_name(0)
    info["capability"] = "%d.%d" % torch.cuda.get_device_capability(0)
    info["gpus"] = str(torch.cuda.device_count())
    info["gpu memory"] = "%.0f GiB" % (torch.cuda.get_device_properties(0).total_memory / 2**30)
else:
    info["gpu"] = "none" if dev == "cuda" else "cpu (dry run)"
import sys
sys.path.insert(0, os.getcwd())
from benchmarks.report import device_info
info["slug"] = device_info(torch.device("cuda" if info["gpu"] not in ("none", "cpu (dry run)") else "cpu")).slug
import lossmix_ext as L
info["backends"] = json.dumps(L.backend_status(dev))
print("ENV " + json.dumps(info))
"""


def step_env(run: Run, args) -> None:
    run.begin("environment")
    t = time.monotonic()
    env = dict(os.environ, GPU_CHECK_DEVICE=args.device)
    rc, out = run.sh([sys.executable, "-c", ENV_CODE], "env_build.log", env=env)
    line = _full_line(out, "ENV ")
    if line:
        try:
            run.env.update(json.loads(line[4:]))
        except ValueError:
            pass
    for tool in ("nvcc", "ninja", "compute-sanitizer", "ncu", "nvidia-smi"):
        run.env[tool] = _tool_version(run, tool)
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            p = subprocess.run([smi, "--query-gpu=driver_version", "--format=csv,noheader"], capture_output=True,
                               text=True, timeout=10)
            run.env["driver"] = p.stdout.strip().splitlines()[0] if p.returncode == 0 and p.stdout.strip() else "?"
        except (OSError, subprocess.SubprocessError, IndexError):
            run.env["driver"] = "?"
    with open(os.path.join(run.out, "env_build.log"), "a") as f:
        f.write("\n" + "\n".join(f"{k}: {v}" for k, v in run.env.items()) + "\n")
    missing = [k for k in ("nvcc", "ninja", "compute-sanitizer", "hypothesis", "numpy")
               if str(run.env.get(k, "")).startswith(("not found", "not installed", "unusable", "fails"))]
    detail = f"{run.env.get('gpu', '?')}; torch {run.env.get('torch', '?')}"
    if missing:
        detail += "; missing: " + ", ".join(missing)
    run.row("environment", "ok" if rc == 0 and "torch" in run.env else "FAIL", time.monotonic() - t, detail)


def _full_line(text: str, prefix: str) -> str:
    lines = [ln for ln in text.splitlines() if ln.startswith(prefix)]
    return lines[-1] if lines else ""


def _arch(run: Run) -> str:
    return run.env.get("capability", "9.0")


def step_build(run: Run, args) -> None:
    run.begin("build")
    t = time.monotonic()
    if args.skip_build:
        run.row("build", "skipped", 0.0, "--skip-build (uses the extension already built)")
        return
    env = os.environ.copy()
    env["MAX_JOBS"] = str(os.cpu_count() or 4)
    nvcc = shutil.which("nvcc") is not None
    note = ""
    if args.device == "cuda" and nvcc:
        env["FORCE_CUDA"] = "1"
        env["TORCH_CUDA_ARCH_LIST"] = _arch(run)  # the visible GPU only
    elif args.device == "cuda":
        note = "nvcc not found: CPU kernels only, the cuda backend is not checked (triton and torch are)"
    if str(run.env.get("ninja", "")).startswith(("not found", "unusable")):
        note = (note + "; " if note else "") + "ninja not found: sources compiled by setup.py's thread pool"
    rc, out = run.sh([sys.executable, "setup.py", "build_ext", "--inplace"], "env_build.log", env=env)
    check = ("import lossmix_ext as L, lossmix_ext._C as C; print('with_cuda', C.with_cuda); "
             f"print('cuda backend:', L.backend_status({args.device!r}).get('cuda'))")
    rc2, out2 = run.sh([sys.executable, "-c", check], "env_build.log", timeout=60)
    if rc == 124:
        status = "timeout"
    elif rc != 0 or rc2 != 0:
        status = "FAIL"
    elif args.device == "cuda" and nvcc and "with_cuda True" not in out2:
        status = "FAIL"
    elif note.startswith("nvcc"):
        status = "partial"
    else:
        status = "ok"
    detail = _last_line(out2, "with_cuda") or _last_line(out)
    run.row("build", status, time.monotonic() - t, f"{detail}; {note}" if note else detail)


def step_pytest(run: Run, args) -> None:
    run.begin("pytest")
    t = time.monotonic()
    cmd = [sys.executable, "-m", "pytest", "python_tests", "-m", "gpu", "-q", "-rs", "-p", "no:cacheprovider"]
    if args.small:
        cmd += ["-k", "captures_in_a_cuda_graph or non_current_device or no_host_sync"]
    rc, out = run.sh(cmd, "pytest_gpu.log")
    status = "ok" if rc in (0, 5) else "timeout" if rc == 124 else "FAIL"  # 5: nothing collected
    run.row("pytest -m gpu", status, time.monotonic() - t, _last_line(out))


def step_extra(run: Run, args) -> None:
    run.begin("extra")
    names = list(CHECKS)
    for i, name in enumerate(names):
        t = time.monotonic()
        share = run.left() / (len(names) - i)  # an equal share of what is left, unused shares roll on
        cmd = [sys.executable, EXTRA, name, "--device", args.device] + (["--small"] if args.small else [])
        rc, out = run.sh(cmd, "extra_checks.log", timeout=max(share, min(run.left(), 20.0)))
        results = [ln for ln in out.splitlines() if ln.startswith("RESULT ")]
        fails = [ln for ln in results if " FAIL" in ln]
        status = "timeout" if rc == 124 else "FAIL" if fails or rc != 0 or not results else (
            "skipped" if all(" SKIP" in ln for ln in results) else "ok")
        detail = (fails[0] if fails else results[-1] if results else _last_line(out))[7:167]
        run.row(f"check {name}", status, time.monotonic() - t, detail)


def step_bench(run: Run, args) -> None:
    run.begin("bench")
    t = time.monotonic()
    out_dir = os.path.join(run.out, "bench")
    plots = not str(run.env.get("matplotlib", "not installed")).startswith(("not installed", "fails"))
    cmd = [sys.executable, "-m", "benchmarks", "--device", args.device, "--out", out_dir, "--skip", "compiled",
           "--op", *BENCH_OPS]
    cmd += ["--quick-check"] if args.small else []
    cmd += [] if plots else ["--no-plots"]
    rc, out = run.sh(cmd, "bench.log")
    if out.strip():
        os.makedirs(out_dir, exist_ok=True)
        with open(os.path.join(out_dir, "table.txt"), "w") as f:
            f.write(out)
    status = "ok" if rc == 0 else "timeout" if rc == 124 else "FAIL"
    detail = _last_line(out, "all results") or _last_line(out)
    run.row("benchmark quick set", status, time.monotonic() - t,
            detail + ("" if plots else "; no plots (matplotlib not installed: `python -m benchmarks --replot`)"))


def step_sanitizer(run: Run, args) -> None:
    run.begin("sanitizer")
    tool = shutil.which("compute-sanitizer")
    if args.device != "cuda" or tool is None:
        run.row("compute-sanitizer", "skipped", 0.0, "not on a CUDA device" if args.device != "cuda"
                else "compute-sanitizer not found")
        return
    # Without the caching allocator every tensor is its own cudaMalloc, so an out-of-bounds access
    # inside a cached block (which memcheck cannot see) becomes one outside an allocation.
    env = dict(os.environ, PYTORCH_NO_CUDA_MEMORY_CACHING="1")
    for i, kind in enumerate(("memcheck", "racecheck")):
        t = time.monotonic()
        cmd = [tool, "--tool", kind, "--error-exitcode", "3", "--target-processes", "all",
               sys.executable, EXTRA, "sanitize_small"]
        rc, out = run.sh(cmd, "sanitizer.log", env=env, timeout=run.left() / (2 - i))
        low = out.lower()
        if rc == 124:
            status = "incomplete"  # the last step: out of time is reported, not a failure of the code
        elif any(r in low for r in REFUSALS) and "RESULT sanitize_small" not in out:
            status = "unavailable"
        else:
            status = "ok" if rc == 0 else "FAIL"
        detail = _last_line(out, "========= ERROR SUMMARY") or _last_line(out)
        run.row(f"sanitizer {kind}", status, time.monotonic() - t, detail)


STEPS = (step_env, step_build, step_pytest, step_extra, step_bench, step_sanitizer)
FAILING = ("FAIL", "timeout")


def summary_table(run: Run) -> str:
    lines = [f"lossmix_ext device check: {run.elapsed():.0f} s of {run.budget:.0f}",
             f"{'step':<26}{'status':<13}{'s':>6}  detail"]
    lines += [f"{s:<26}{st:<13}{sec:>6.0f}  {d}" for s, st, sec, d in run.rows]
    return "\n".join(lines)


def summary_md(run: Run, args) -> str:
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    ok = not any(st in FAILING for _, st, _, _ in run.rows)
    out = [f"# lossmix_ext device check: {run.env.get('gpu', args.device)}", "",
           f"{when}, {run.elapsed():.0f} s of a {run.budget:.0f} s budget: **{'passed' if ok else 'FAILED'}** "
           f"(`python tools/gpu_check.py{' --small' if args.small else ''}{' --skip-build' if args.skip_build else ''}`).",
           "", "## Environment", "", "| item | value |", "|---|---|"]
    out += [f"| {k} | {str(v).replace('|', '/')} |" for k, v in run.env.items()]
    out += ["", "## Steps", "", "| step | status | s | detail |", "|---|---|---|---|"]
    out += [f"| {s} | {st} | {sec:.0f} | {d.replace('|', '/')} |" for s, st, sec, d in run.rows]
    table = os.path.join(run.out, "bench", "table.txt")
    out += ["", "## Benchmark (quick set, eager reference vs fused backends)", ""]
    if os.path.exists(table):
        with open(table) as f:
            out += ["```text", f.read().rstrip(), "```"]
        pngs = sorted(p for p in os.listdir(os.path.join(run.out, "bench")) if p.endswith(".png"))
        out += [""] + [f"![{p[:-4]}](bench/{p})" for p in pngs]
    else:
        out += ["(the benchmark did not run)"]
    logs = sorted(p for p in os.listdir(run.out) if p.endswith(".log"))
    out += ["", "## Logs", ""] + [f"* [{p}]({p})" for p in logs]
    return "\n".join(out) + "\n"


def write_summary(run: Run, args) -> str:
    text = summary_table(run)
    with open(os.path.join(run.out, "summary.txt"), "w") as f:
        f.write(text + "\n")
    with open(os.path.join(run.out, "summary.md"), "w") as f:
        f.write(summary_md(run, args))
    if args.archive:
        with tarfile.open(args.archive, "w:gz") as tar:
            tar.add(run.out, arcname=os.path.basename(os.path.normpath(run.out)))
    return text


def default_out(slug: str) -> str:
    return os.path.join(ROOT, "benchmarks", "results", slug, "device_check")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python tools/gpu_check.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", help="results folder (default benchmarks/results/<device>/device_check/)")
    ap.add_argument("--budget", type=float, default=DEFAULT_BUDGET, help="seconds for the whole run")
    ap.add_argument("--archive", help="also pack the results folder into this .tgz")
    ap.add_argument("--device", default=None, help="cuda (default when present) or cpu (dry run)")
    ap.add_argument("--small", action="store_true", help="tiny inputs and a subset of the gpu tests (dry run)")
    ap.add_argument("--skip-build", action="store_true", help="use the extension as built")
    args = ap.parse_args(argv)
    if args.device is None:
        args.device = "cuda" if _cuda_visible() else "cpu"
    staging = args.out or os.path.join(ROOT, "benchmarks", "results", f".device_check-{os.getpid()}")
    run = Run(staging, args.budget)
    try:
        for step in STEPS:
            name = step.__name__[5:]
            try:
                step(run, args)
            except Exception as exc:  # a broken step is reported; the others still run
                run.row(name, "FAIL", 0.0, f"{type(exc).__name__}: {exc}")
            if name == "env" and args.out is None:  # the device is known: move to its folder
                final = default_out(run.env.get("slug", "unknown-device"))
                if os.path.exists(final):
                    shutil.rmtree(final)
                os.makedirs(os.path.dirname(final), exist_ok=True)
                shutil.move(staging, final)
                run.out = final
    finally:
        text = write_summary(run, args)
        print("\n" + text)
        print(f"\nresults: {run.out}" + (f" (packed into {args.archive})" if args.archive else ""))
    return 1 if any(st in FAILING for _, st, _, _ in run.rows) else 0


def _cuda_visible() -> bool:
    """Whether torch sees a GPU, asked in a child process (the check's own process stays free of
    CUDA, and a torch that cannot even import is reported by the environment step)."""
    try:
        p = subprocess.run([sys.executable, "-c", "import torch; print(torch.cuda.is_available())"],
                           capture_output=True, text=True, timeout=120)
        return p.stdout.strip().endswith("True")
    except (OSError, subprocess.SubprocessError):
        return False


if __name__ == "__main__":
    sys.exit(main())
