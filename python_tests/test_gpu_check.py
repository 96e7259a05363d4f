"""The prepared device check (tools/gpu_check.py) dry-runs on the CPU: every step runs with its
CPU stand-in (tiny inputs, no build, no sanitizer), on a machine as bare as the device check
promises to handle (hypothesis and ninja hidden), within its budget; the summary is printed
last and written to the output folder, and a failing check makes the run fail."""
import os
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOLS = os.path.join(ROOT, "tools")
sys.path.insert(0, TOOLS)

import gpu_check  # noqa: E402
from hiding import bare_env  # noqa: E402

def test_the_hiding_works(tmp_path):
    env = bare_env(tmp_path, modules=("hypothesis", "numpy"))
    p = subprocess.run([sys.executable, "-c", "import importlib.util as u; print(u.find_spec('numpy')); "
                        "import hypothesis"], env=env, capture_output=True, text=True)
    assert p.returncode != 0 and p.stdout.strip() == "None", p.stdout
    assert "ModuleNotFoundError: No module named 'hypothesis'" in p.stderr
    p = subprocess.run([sys.executable, "-c", "from torch.utils.cpp_extension import is_ninja_available as f; "
                        "print(f())"], env=env, capture_output=True, text=True, timeout=300)
    assert p.stdout.strip().endswith("False"), p.stdout + p.stderr


@pytest.mark.parametrize("hidden", [("hypothesis",), ("hypothesis", "numpy")], ids=["no-hypothesis", "no-numpy"])
def test_gpu_tests_collect_without_optional_dependencies(tmp_path, hidden):
    """``pytest -m gpu`` collects without hypothesis (the property-based module is skipped whole,
    saying why) and even without numpy (then triton, which needs it, and the NumPy oracles skip
    their modules): no collection error stops the GPU tests that can still run."""
    env = bare_env(tmp_path, modules=hidden)
    p = subprocess.run([sys.executable, "-m", "pytest", "python_tests", "-m", "gpu", "--collect-only", "-q",
                        "-p", "no:cacheprovider", "-rs"], env=env, capture_output=True, text=True, timeout=600,
                       cwd=ROOT)
    out = p.stdout + p.stderr
    assert p.returncode == 0 and "error" not in out.lower(), out[-3000:]
    assert "test_native.py::test_gpu_seesaw_fwd" in out and "test_registration.py::" in out
    if "numpy" not in hidden:
        assert "test_triton_seesaw.py::test_gpu_fwd_parity" in out and "test_triton_mix.py::" in out
    p = subprocess.run([sys.executable, "-m", "pytest", "python_tests/test_properties.py", "-q", "-rs",
                        "-p", "no:cacheprovider"], env=env, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert p.returncode in (0, 5) and "the property-based tests need hypothesis" in p.stdout, p.stdout[-2000:]


def test_device_check_dry_run_on_a_bare_machine(tmp_path):
    out = tmp_path / "out"
    archive = tmp_path / "check.tgz"
    env = bare_env(tmp_path)
    start = time.monotonic()
    p = subprocess.run([sys.executable, os.path.join(TOOLS, "gpu_check.py"), "--device", "cpu", "--small",
                        "--skip-build", "--out", str(out), "--budget", "400", "--archive", str(archive)],
                       capture_output=True, text=True, timeout=600, cwd=ROOT, env=env)
    assert time.monotonic() - start < 400 + 10
    assert p.returncode == 0, p.stdout[-4000:] + p.stderr[-2000:]
    summary = (out / "summary.txt").read_text()
    assert summary.rstrip() in p.stdout  # the table is printed last, then where the results are
    assert p.stdout.rstrip().endswith(f"results: {out} (packed into {archive})")
    for step in ("environment", "build", "pytest -m gpu", "check big_seesaw", "check misaligned",
                 "check determinism", "check graphs", "check validation_modes", "check assert_message",
                 "compute-sanitizer", "benchmark quick set"):
        assert step in summary, step
    assert "FAIL" not in summary and "timeout" not in summary
    missing = next(line for line in summary.splitlines() if line.startswith("environment")).split("missing: ")[1]
    assert "ninja" in missing and "hypothesis" in missing  # the environment step says what is not there
    for log in ("env_build.log", "pytest_gpu.log", "extra_checks.log", "bench.log"):
        assert (out / log).exists(), log
    env_log = (out / "env_build.log").read_text()
    assert "hypothesis: not installed" in env_log and "ninja: unusable" in env_log
    for tool in ("nvcc", "compute-sanitizer", "ncu", "numpy", "pytest"):
        assert f"\n{tool}: " in env_log, tool
    assert (out / "bench" / "host_overhead.csv").exists() and (out / "bench" / "table.txt").exists()
    md = (out / "summary.md").read_text()
    assert "## Environment" in md and "## Steps" in md and "## Benchmark" in md and "| check graphs |" in md
    assert "host overhead" in md.lower()  # the benchmark's table is in the summary
    import tarfile
    with tarfile.open(archive) as tar:
        names = tar.getnames()
    assert "out/summary.md" in names and "out/bench/table.txt" in names


def test_a_step_is_stopped_at_the_end_of_its_slice(tmp_path):
    """A command that would run past its step's slice is stopped when the slice ends, with its
    whole process group (a grandchild that holds the log open included), and reported as 124."""
    run = gpu_check.Run(str(tmp_path), budget=9.6)  # slices at 2 % of the default: pytest's ends at 5.5 s
    run.begin("pytest")
    pid_file = tmp_path / "grandchild.pid"
    code = ("import subprocess, sys, time; p = subprocess.Popen(['sleep', '60']); "
            f"open({str(pid_file)!r}, 'w').write(str(p.pid)); print('started', flush=True); time.sleep(60)")
    start = time.monotonic()
    rc, out = run.sh([sys.executable, "-c", code], "t.log")
    took = time.monotonic() - start
    assert rc == 124 and "started" in out and "its slice ran out" in out
    assert 4.0 < took < 5.5 + 9.0, took  # the slice, plus at most the stop's grace periods
    pid = int(pid_file.read_text())
    time.sleep(0.5)
    try:
        with open(f"/proc/{pid}/status") as f:
            state = next(line for line in f if line.startswith("State:"))
        assert "Z" in state or "X" in state, state  # a zombie waiting for init at most
    except FileNotFoundError:
        pass


def test_a_short_budget_is_kept(tmp_path):
    """The whole run ends within its budget (±10 s) and still writes its summary, whatever the
    steps would have needed."""
    out = tmp_path / "out"
    budget = 48.0
    start = time.monotonic()
    subprocess.run([sys.executable, os.path.join(TOOLS, "gpu_check.py"), "--device", "cpu", "--skip-build",
                    "--out", str(out), "--budget", str(budget)], capture_output=True, text=True, timeout=300,
                   cwd=ROOT)
    assert time.monotonic() - start < budget + 10
    summary = (out / "summary.txt").read_text()
    assert "benchmark quick set" in summary and "compute-sanitizer" in summary, summary  # every step has its row
    assert (out / "summary.md").exists()


def test_slices_add_up_to_the_budget():
    assert sum(s for _, s in gpu_check.SLICES) + gpu_check.SUMMARY_RESERVE == gpu_check.DEFAULT_BUDGET == 480
    names = [n for n, _ in gpu_check.SLICES]
    assert names == ["environment", "build", "pytest", "extra", "bench", "sanitizer"]  # by value, sanitizer last
    run = gpu_check.Run.__new__(gpu_check.Run)
    run.start, run.budget, run.scale = 0.0, 240.0, 0.5
    run.begin("pytest")  # ends at half of 15 + 150 + 110
    assert run.deadline == pytest.approx(137.5)
    run.begin("sanitizer")
    assert run.deadline == pytest.approx(235.0)  # the summary's reserve is left


def test_results_default_to_a_tracked_folder():
    assert gpu_check.default_out("nvidia-h200") == os.path.join(ROOT, "benchmarks", "results", "nvidia-h200",
                                                                "device_check")
    ignored = subprocess.run(["git", "check-ignore", "-q", "benchmarks/results/nvidia-h200/device_check/summary.md"],
                             cwd=ROOT)
    if ignored.returncode == 128:
        pytest.skip("not a git checkout (a copy of the tree)")
    assert ignored.returncode == 1  # not ignored: ready to commit


def test_refusing_tools_are_reported_not_failed(tmp_path):
    """A compute-sanitizer that refuses the device ("Device not supported", then error 999) is
    'unavailable', and the run goes on."""
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "compute-sanitizer").write_text("#!/bin/sh\necho '========= Error: Device not supported'\n"
                                            "echo 'CUDA error: unknown error (999)'\nexit 3\n")
    (fake / "compute-sanitizer").chmod(0o755)
    run = gpu_check.Run(str(tmp_path / "out"), 480.0)
    args = type("A", (), {"device": "cuda"})()
    old = os.environ["PATH"]
    os.environ["PATH"] = f"{fake}{os.pathsep}{old}"
    try:
        gpu_check.step_sanitizer(run, args)
    finally:
        os.environ["PATH"] = old
    assert [r[1] for r in run.rows] == ["unavailable", "unavailable"], run.rows


def test_extra_checks_report_failures():
    p = subprocess.run([sys.executable, os.path.join(TOOLS, "gpu_extra.py"), "no_such_check", "--device", "cpu"],
                       capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert p.returncode == 1
    assert "RESULT no_such_check - FAIL unknown check" in p.stdout
