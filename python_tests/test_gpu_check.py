"""The prepared device check (tools/gpu_check.py) dry-runs on the CPU: every step runs with its
CPU stand-in (tiny inputs, no build, no sanitizer), the summary is printed last and written to
the output folder, and a failing check makes the run fail."""
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOLS = os.path.join(ROOT, "tools")


def test_device_check_dry_run(tmp_path):
    out = tmp_path / "out"
    p = subprocess.run([sys.executable, os.path.join(TOOLS, "gpu_check.py"), "--device", "cpu", "--small",
                        "--skip-build", "--out", str(out), "--budget", "400"],
                       capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert p.returncode == 0, p.stdout[-4000:] + p.stderr[-2000:]
    summary = (out / "summary.txt").read_text()
    assert p.stdout.rstrip().endswith(summary.rstrip())  # the table is printed last
    for step in ("environment", "build", "pytest -m gpu", "check big_seesaw", "check misaligned",
                 "check determinism", "check graphs", "check assert_poison", "compute-sanitizer",
                 "benchmark quick set"):
        assert step in summary, step
    assert "FAIL" not in summary
    for log in ("env_build.log", "pytest_gpu.log", "extra_checks.log", "bench.log"):
        assert (out / log).exists(), log
    assert (out / "bench" / "host_overhead.csv").exists()


def test_extra_checks_report_failures():
    p = subprocess.run([sys.executable, os.path.join(TOOLS, "gpu_extra.py"), "no_such_check", "--device", "cpu"],
                       capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert p.returncode == 1
    assert "RESULT no_such_check - FAIL unknown check" in p.stdout
