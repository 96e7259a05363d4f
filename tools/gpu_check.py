"""The device check: everything a GPU machine can validate about lossmix_ext, in one call of at
most ten minutes, with no network and nothing installed (it uses the machine's torch, triton,
nvcc and compute-sanitizer as they are)::

    python tools/gpu_check.py --out DIR [--budget 540] [--skip-build] [--device cuda]

Run from a checkout. Steps, each capped so the whole run ends within ``--budget`` seconds:

1. environment: GPU, driver, torch / CUDA / triton versions, nvcc, ``backend_status()``;
2. build ``lossmix_ext._C`` in place with the CUDA kernels for the visible GPU
   (``FORCE_CUDA=1``, ``TORCH_CUDA_ARCH_LIST`` = its compute capability; setup.py finds the
   toolkit behind a wrapper ``nvcc``);
3. ``pytest -m gpu`` (parity with the reference on the GPU, CUDA-graph capture, two-device
   launches where two GPUs exist);
4. the GPU-only checks of ``tools/gpu_extra.py``, one process each: more than 2^31 elements
   (a batch, and one sample: the mix kernels' 64-bit index path),
   misaligned / strided inputs, determinism, CUDA-graph replay, device-assert behaviour;
5. compute-sanitizer memcheck and racecheck on tiny calls of every kernel family;
6. the benchmark's quick set on the device (``torch.compile`` skipped) and the host-overhead
   group.

Logs and CSVs go to ``--out``; a short summary table is printed last and written to
``summary.txt``. The exit status is 1 when a step failed. ``--device cpu --small
--skip-build`` runs the same logic on the CPU with tiny inputs (the test suite's dry run).
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from typing import List, Optional, Sequence, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXTRA = os.path.join(ROOT, "tools", "gpu_extra.py")
CHECKS = ("big_seesaw", "big_mix", "wide_sample", "misaligned", "determinism", "graphs", "assert_poison")


class Run:
    def __init__(self, out: str, budget: float):
        self.out, self.budget, self.start = out, budget, time.monotonic()
        self.rows: List[Tuple[str, str, float, str]] = []
        os.makedirs(out, exist_ok=True)

    def left(self) -> float:
        return self.budget - (time.monotonic() - self.start)

    def cap(self, want: float, reserve: float = 20.0) -> float:
        return max(0.0, min(want, self.left() - reserve))

    def row(self, step: str, status: str, seconds: float, detail: str = "") -> None:
        self.rows.append((step, status, seconds, detail))
        print(f"[gpu_check {time.monotonic() - self.start:5.0f}s] {step}: {status} {detail}", flush=True)

    def sh(self, cmd: Sequence[str], log: str, timeout: float, env: Optional[dict] = None) -> Tuple[int, str]:
        """Run ``cmd`` from the checkout, appending its output to ``log``; 124 on timeout."""
        if timeout <= 0:
            return 124, "no time left"
        path = os.path.join(self.out, log)
        with open(path, "a") as f:
            f.write(f"\n$ {' '.join(cmd)}\n")
            f.flush()
            try:
                p = subprocess.run(list(cmd), cwd=ROOT, env=env or os.environ.copy(), stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True, timeout=timeout)
                f.write(p.stdout)
                return p.returncode, p.stdout
            except subprocess.TimeoutExpired as exc:
                text = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
                f.write(text + f"\n[timed out after {timeout:.0f} s]\n")
                return 124, text


def _last_line(text: str, prefix: str = "") -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.startswith(prefix)]
    return lines[-1][:120] if lines else ""


def step_env(run: Run, args) -> None:
    t = time.monotonic()
    code = ("import torch, lossmix_ext as L; import platform; "
            "print('python', platform.python_version(), 'torch', torch.__version__, 'cuda', torch.version.cuda); "
            "print('gpu', torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'none', "
            "torch.cuda.get_device_capability(0) if torch.cuda.is_available() else ''); "
            "import importlib.util as u; t = u.find_spec('triton'); "
            "print('triton', __import__('triton').__version__ if t else 'none'); "
            f"print('backends', L.backend_status({args.device!r}))")
    rc, out = run.sh([sys.executable, "-c", code], "env_build.log", run.cap(60))
    nvcc = shutil.which("nvcc")
    if nvcc:
        run.sh([nvcc, "--version"], "env_build.log", run.cap(30))
    run.row("environment", "ok" if rc == 0 else "FAIL", time.monotonic() - t, _last_line(out, "gpu"))


def _arch() -> str:
    try:
        import torch
        if torch.cuda.is_available():
            major, minor = torch.cuda.get_device_capability(0)
            return f"{major}.{minor}"
    except Exception:
        pass
    return "9.0"


def step_build(run: Run, args) -> None:
    t = time.monotonic()
    if args.skip_build:
        run.row("build", "skipped", 0.0, "--skip-build (uses the extension already built)")
        return
    env = os.environ.copy()
    if args.device == "cuda":
        env.setdefault("FORCE_CUDA", "1")
        env.setdefault("TORCH_CUDA_ARCH_LIST", _arch())
    env.setdefault("MAX_JOBS", str(os.cpu_count() or 4))
    rc, out = run.sh([sys.executable, "setup.py", "build_ext", "--inplace"], "env_build.log", run.cap(360, 200), env)
    check = "import lossmix_ext._C as C; print('with_cuda', C.with_cuda)"
    rc2, out2 = run.sh([sys.executable, "-c", check], "env_build.log", run.cap(60))
    ok = rc == 0 and rc2 == 0 and (args.device != "cuda" or "with_cuda True" in out2)
    run.row("build", "ok" if ok else "FAIL", time.monotonic() - t, _last_line(out2) or _last_line(out))


def step_pytest(run: Run, args) -> None:
    t = time.monotonic()
    cmd = [sys.executable, "-m", "pytest", "python_tests", "-m", "gpu", "-q", "-rs", "-p", "no:cacheprovider"]
    if args.small:
        cmd += ["-k", "captures_in_a_cuda_graph or non_current_device"]
    rc, out = run.sh(cmd, "pytest_gpu.log", run.cap(300, 150))
    status = "ok" if rc in (0, 5) else "timeout" if rc == 124 else "FAIL"  # 5: nothing collected
    run.row("pytest -m gpu", status, time.monotonic() - t, _last_line(out))


def step_extra(run: Run, args) -> None:
    for name in CHECKS:
        t = time.monotonic()
        cmd = [sys.executable, EXTRA, name, "--device", args.device] + (["--small"] if args.small else [])
        rc, out = run.sh(cmd, "extra_checks.log", run.cap(90, 90))
        results = [ln for ln in out.splitlines() if ln.startswith("RESULT ")]
        fails = [ln for ln in results if " FAIL" in ln]
        status = "timeout" if rc == 124 else "FAIL" if fails or rc != 0 or not results else (
            "skipped" if all(" SKIP" in ln for ln in results) else "ok")
        detail = (fails[0] if fails else results[-1] if results else _last_line(out))[7:127]
        run.row(f"check {name}", status, time.monotonic() - t, detail)


def step_sanitizer(run: Run, args) -> None:
    tool = shutil.which("compute-sanitizer")
    if args.device != "cuda" or tool is None:
        run.row("compute-sanitizer", "skipped", 0.0, "not on a CUDA device" if args.device != "cuda"
                else "compute-sanitizer not found")
        return
    for kind in ("memcheck", "racecheck"):
        t = time.monotonic()
        cmd = [tool, "--tool", kind, "--error-exitcode", "3", sys.executable, EXTRA, "sanitize_small"]
        rc, out = run.sh(cmd, "sanitizer.log", run.cap(120, 60))
        status = "ok" if rc == 0 else "timeout" if rc == 124 else "did not run" if "not supported" in out else "FAIL"
        run.row(f"sanitizer {kind}", status, time.monotonic() - t, _last_line(out, "========= ERROR SUMMARY"))


def step_bench(run: Run, args) -> None:
    t = time.monotonic()
    out_dir = os.path.join(run.out, "bench")
    cmd = [sys.executable, "-m", "benchmarks", "--device", args.device, "--out", out_dir, "--skip", "compiled",
           "--no-plots"] + (["--quick-check"] if args.small else [])
    rc, out = run.sh(cmd, "bench.log", run.cap(240, 10))
    status = "ok" if rc == 0 else "timeout" if rc == 124 else "FAIL"
    run.row("benchmark quick set", status, time.monotonic() - t, _last_line(out, "wrote") or _last_line(out))


def summary(run: Run) -> str:
    lines = [f"lossmix_ext device check: {time.monotonic() - run.start:.0f} s of {run.budget:.0f}",
             f"{'step':<26}{'status':<13}{'s':>6}  detail"]
    lines += [f"{s:<26}{st:<13}{sec:>6.0f}  {d}" for s, st, sec, d in run.rows]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python tools/gpu_check.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=os.path.join(ROOT, "gpu_check_out"))
    ap.add_argument("--budget", type=float, default=540.0, help="seconds for the whole run")
    ap.add_argument("--device", default=None, help="cuda (default when present) or cpu (dry run)")
    ap.add_argument("--small", action="store_true", help="tiny inputs and a subset of the gpu tests (dry run)")
    ap.add_argument("--skip-build", action="store_true", help="use the extension as built")
    args = ap.parse_args(argv)
    if args.device is None:
        import torch
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    run = Run(args.out, args.budget)
    for step in (step_env, step_build, step_pytest, step_extra, step_sanitizer, step_bench):
        step(run, args)
    text = summary(run)
    with open(os.path.join(run.out, "summary.txt"), "w") as f:
        f.write(text + "\n")
    print("\n" + text)
    return 1 if any(st in ("FAIL", "timeout") for _, st, _, _ in run.rows) else 0


if __name__ == "__main__":
    sys.exit(main())
