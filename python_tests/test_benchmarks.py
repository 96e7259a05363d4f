"""The benchmark harness on tiny shapes: outputs produced, traffic count, failure reporting.

No speed assertions: only that the harness runs, checks providers and reports honestly.
"""
import csv
import importlib.util
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import lossmix_ext  # noqa: E402
from benchmarks import Provider, run  # noqa: E402
from benchmarks import cases as C  # noqa: E402
from benchmarks.__main__ import main  # noqa: E402
from benchmarks.harness import compare  # noqa: E402
from benchmarks.traffic import TrafficCounter  # noqa: E402

CPU = torch.device("cpu")
# Backends timed here: everything but the Triton interpreter (covered by its own tests).
BACKENDS = [b for b in lossmix_ext.available_backends("cpu") if b != "triton"]


def _wrong_seesaw(i):
    """A deliberately wrong provider: the right loss, 1% too large."""
    return lossmix_ext.seesaw_loss(i["logits"], i["labels"], i["counts"], backend="torch") * 1.01


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    lines = []
    rows = run(["seesaw_loss", "mix_images", "mix_images_", "lossmix_reduce"], quick_check=True, out=str(out),
               reps=2, warmup=0, echo=lines.append,
               providers=["reference", "wrong", "torchvision", "timm_inplace", "clone", "lossmix_ext"] + BACKENDS,
               extra_providers={"seesaw_loss": [Provider("wrong", _wrong_seesaw)]})
    return rows, out, "\n".join(lines)


def _row(rows, op, mode, provider):
    found = [r for r in rows if (r.op, r.mode, r.provider) == (op, mode, provider)]
    assert len(found) == 1, (op, mode, provider, found)
    return found[0]


def test_table_and_csv_are_written(bench):
    rows, out, table = bench
    assert "== seesaw_loss fwd+bwd  N=64 C=17  float32 ==" in table
    assert "== mix_images_ fwd" in table
    with open(out / "results.csv", newline="") as f:
        records = list(csv.DictReader(f))
    assert {"timestamp", "device", "torch", "triton", "op", "mode", "shape", "dtype", "provider", "metric",
            "value", "unit"} <= set(records[0])
    # one row per op x mode x provider x shape x dtype x metric
    keys = [(r["op"], r["mode"], r["provider"], r["shape"], r["dtype"], r["metric"]) for r in records]
    assert len(keys) == len(set(keys))
    ref_median = [r for r in records if (r["op"], r["mode"], r["provider"], r["metric"]) ==
                  ("seesaw_loss", "fwd+bwd", "reference", "median_ms")]
    assert len(ref_median) == 1 and float(ref_median[0]["value"]) > 0
    for mode in ("fwd", "bwd", "fwd+bwd"):
        for provider in ["reference"] + BACKENDS:  # every backend is run; each one's own tests judge it
            assert _row(rows, "seesaw_loss", mode, provider).status in ("ok", "FAILED")
        for provider in ("reference", "torch"):    # the reference maths pass the harness's check
            r = _row(rows, "seesaw_loss", mode, provider)
            assert r.status == "ok", r.note
            assert r.p20_ms <= r.median_ms <= r.p80_ms and r.samples == 2
    assert _row(rows, "seesaw_loss", "fwd+bwd", "reference").speedup_vs_reference == pytest.approx(1.0)
    # the in-place mix and its timm-style counterpart agree with the reference (flip pairing)
    assert _row(rows, "mix_images_", "fwd", "timm_inplace").status == "ok"
    assert _row(rows, "mix_images", "fwd", "torchvision").status == "ok"
    if importlib.util.find_spec("matplotlib") is not None:
        assert (out / "gbps_vs_size.png").stat().st_size > 0


def test_traffic_ratio_of_eager_seesaw_exceeds_the_fused_model(bench):
    rows, _, _ = bench
    r = _row(rows, "seesaw_loss", "fwd+bwd", "reference")
    n, c = 64, 17
    assert r.model_bytes == 2 * n * c * 4 + 8 * n + 4 * c  # read logits + write grad + labels + counts
    assert r.traffic_ratio > 1
    assert r.traffic_bytes == pytest.approx(r.traffic_ratio * r.model_bytes)


def test_wrong_provider_is_failed_and_not_timed(bench):
    rows, _, table = bench
    for mode in ("fwd", "bwd", "fwd+bwd"):
        r = _row(rows, "seesaw_loss", mode, "wrong")
        assert r.status == "FAILED"
        assert "disagrees with the reference" in r.note
        assert r.median_ms is None and r.speedup_vs_reference is None
    assert "FAILED: wrong on seesaw_loss" in table


def test_image_byte_models():
    g = torch.Generator().manual_seed(0)
    shape = {"B": 4, "C": 3, "H": 8, "W": 8}
    batch = 4 * 3 * 8 * 8 * 4
    case = C.mix_images_case(shape, torch.float32, CPU, g)
    clone = next(p for p in case.providers if p.name == "clone")
    assert case.byte_model["fwd"] == 3 * batch == 1.5 * clone.byte_model["fwd"]  # 2 reads + 1 write
    assert C.mix_images_inplace_case(shape, torch.float32, CPU, g).byte_model["fwd"] == 2 * batch
    u8 = C.mix_images_case(shape, torch.uint8, CPU, g)
    assert u8.byte_model["fwd"] == 4 * 3 * 8 * 8 * (1 + 1 + 4)  # two uint8 reads, one float32 write


def test_compile_failure_is_reported_not_raised(tmp_path, monkeypatch):
    def broken_compile(fn, **kwargs):
        def call(*args, **kw):
            raise RuntimeError("compiler unavailable")
        return call

    monkeypatch.setattr(torch, "compile", broken_compile)
    rows = run(["lossmix_reduce"], quick_check=True, out=str(tmp_path), reps=1, warmup=0, plots=False,
               providers=["reference", "compiled"], echo=lambda s: None)
    assert _row(rows, "lossmix_reduce", "fwd+bwd", "compiled").status == "FAILED"
    assert "compiler unavailable" in _row(rows, "lossmix_reduce", "fwd+bwd", "compiled").note
    assert _row(rows, "lossmix_reduce", "fwd+bwd", "reference").status == "ok"


def test_traffic_counter_counts_bytes_not_views():
    x = torch.randn(1000)
    with TrafficCounter() as tc:
        x.view(10, 100).t().reshape(-1, 10)        # views: nothing moves
    assert tc.bytes == 0
    with TrafficCounter() as tc:
        y = x + 1                                  # read 4000 B, write 4000 B
        torch.ones(1).expand(1000).mul(x)          # ones writes 4 B; mul reads 4 + 4000 B, writes 4000 B
        y.copy_(x)                                 # read 4000 B, write 4000 B
    assert tc.bytes == 8000 + 4 + 8004 + 8000


def test_compare_reports_mismatches():
    ref = torch.tensor([1.0, -2.0, 3.0])
    assert compare((ref * (1 + 1e-6),), (ref,), "output", 1e-4, 1e-5) is None
    assert "max |err|" in compare((ref * 1.01,), (ref,), "output", 1e-4, 1e-5)
    assert compare((torch.tensor([1.0, float("nan"), 3.0]),), (ref,), "output", 1e-4, 1e-5) is not None
    assert "shape" in compare((ref[:2],), (ref,), "gradient", 1e-4, 1e-5)


def test_command_line(tmp_path):
    code = main(["--quick-check", "--op", "lossmix_reduce", "--providers", "reference", "lossmix_ext",
                 "--out", str(tmp_path), "--reps", "1", "--no-plots"])
    assert code == 0
    assert (tmp_path / "results.csv").exists()


def test_host_overhead_group_runs_checks_and_writes_csv(tmp_path):
    """The host-overhead group: every case measured side by side with its plain op, the ratio of
    each round reported with its spread, a CSV written; a provider that disagrees fails loudly."""
    from benchmarks import host_overhead as H
    lines = []
    rows = H.run("cpu", out=str(tmp_path), rounds=3, inner=2, shapes=((8, 10),), echo=lines.append)
    assert [r.case for r in rows] == ["seesaw_loss", "SeesawLoss module", "mixed_cross_entropy", "lossmix_reduce"]
    for r in rows:
        assert r.ours_us > 0 and r.plain_us > 0 and r.ratio_p20 <= r.ratio <= r.ratio_p80
    with open(tmp_path / "host_overhead.csv", newline="") as f:
        records = list(csv.DictReader(f))
    assert len(records) == 4 and {"ratio", "goal", "ok", "ours_us", "plain_us"} <= set(records[0])
    assert "host overhead" in lines[0]
    bad = H.cases(CPU, shapes=((8, 10),))[2]
    bad.base = lambda: None
    bad.check = lambda: (_ for _ in ()).throw(AssertionError("disagree"))
    with pytest.raises(AssertionError, match="disagree"):
        H.measure(bad, CPU, rounds=1, inner=1)


def test_main_runs_the_host_overhead_group(tmp_path, capsys):
    assert main(["--quick-check", "--op", "host_overhead", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "host_overhead.csv").exists()
    assert "host overhead" in capsys.readouterr().out


def test_timm_mixup_benchmark(tmp_path, capsys):
    """The timm Mixup comparison: a table and timm_mixup.csv with timm, a clear skip without."""
    from benchmarks import timm_mixup
    from benchmarks.frameworks import import_timm
    rows = timm_mixup.run("cpu", out=str(tmp_path), batch=4, size=16, rounds=3, warmup=0)
    out = capsys.readouterr().out
    if import_timm()[0] is None:
        assert rows == [] and "skipped" in out
        return
    assert [(r.case, r.mode) for r in rows] == [(c, m) for c in timm_mixup.CASES for m in ("elem", "pair", "batch")]
    assert all(r.ours_ms > 0 and r.timm_ms > 0 and r.goal is None for r in rows)  # the goals are for 128x3x224x224
    assert all(r.threads == 1 for r in rows if r.case.startswith("FastCollateMixup"))  # as in a loader worker
    bf16 = [r for r in rows if r.case == "Mixup bfloat16"]
    native = "cpu" in __import__("lossmix_ext").available_backends("cpu")  # the detour exists with the cpu backend
    assert all((r.before_ms is not None and r.before_ms > 0) == native for r in bf16)
    with open(tmp_path / "timm_mixup.csv") as f:
        assert len(list(csv.DictReader(f))) == 9
    assert "FastCollateMixup uint8" in out and "Mixup bfloat16" in out


def test_main_job_writes_outside_the_committed_results(tmp_path, monkeypatch, capsys):
    """Without --out the main job writes a new run folder under benchmarks/runs/ (ignored by git),
    prints it, and leaves benchmarks/results/ alone; progress lines come before the tables."""
    import subprocess

    from benchmarks import harness
    from benchmarks.__main__ import main
    monkeypatch.setattr(harness, "RUNS", str(tmp_path))
    assert main(["--quick-check", "--op", "lossmix_reduce", "--no-plots", "--reps", "1"]) == 0
    runs = list(tmp_path.iterdir())
    assert len(runs) == 1 and (runs[0] / "results.csv").exists()
    out = capsys.readouterr().out
    assert str(runs[0]) in out and "not tracked by git" in out
    assert out.index("[1/1] lossmix_reduce") < out.index("== lossmix_reduce")
    git = subprocess.run(["git", "check-ignore", "-q", "benchmarks/runs/any-run/results.csv"], cwd=ROOT)
    if git.returncode != 128:  # 128: not a git checkout
        assert git.returncode == 0, "benchmarks/runs/ must be ignored by git"


def test_table_units_and_peak_column():
    """Tiny throughputs print in MB/s instead of rounding to 0.0x GB/s; without a known peak
    bandwidth the %peak column is left out and a note says why."""
    from benchmarks.report import Row, format_block
    rows = [Row("lossmix_reduce", "fwd+bwd", {"N": 64}, "float32", "reference", median_ms=0.1, gbps=0.0133,
                model_bytes=1280),
            Row("lossmix_reduce", "fwd+bwd", {"N": 64}, "float32", "lossmix_ext", median_ms=0.1, gbps=0.0123)]
    table = format_block(rows)
    assert "MB/s" in table and "13.3" in table and "%peak" not in table.splitlines()[1]
    assert "peak memory bandwidth is not known" in table
    rows = [Row("seesaw_loss", "fwd", {"N": 4096, "C": 1203}, "float32", "cuda", median_ms=0.05, gbps=1900.0,
                pct_peak_bw=39.6)]
    table = format_block(rows)
    assert "GB/s" in table and "%peak" in table and "39.6" in table


def test_results_csv_round_trip_and_replot(tmp_path):
    """read_csv gives back what write_csv wrote; --replot redraws a committed run's plots."""
    from benchmarks.__main__ import main
    from benchmarks.report import DeviceInfo, Row, read_csv, write_csv
    rows = [Row("seesaw_loss", "fwd+bwd", {"N": 4096, "C": 1203}, "float32", "reference", median_ms=81.5,
                p20_ms=52.2, speedup_vs_reference=1.0, mem_bytes=19718144, mem_kind="saved", gbps=0.484,
                traffic_bytes=1138000000, traffic_ratio=28.9, samples=5),
            Row("seesaw_loss", "fwd+bwd", {"N": 4096, "C": 1203}, "float32", "cpu", median_ms=4.56,
                speedup_vs_reference=17.9, gbps=8.65, samples=5),
            Row("seesaw_loss", "fwd+bwd", {"N": 4096, "C": 1203}, "float32", "triton", status="skipped",
                note="interpreter")]
    dev = DeviceInfo("AMD EPYC (2 cores)", "cpu-x", None, "2.13.0+cpu", "3.9.0")
    path = tmp_path / "results.csv"
    write_csv(rows, str(path), dev, "2026-12-01T10:00:00+00:00")
    back, dev2, stamp = read_csv(str(path))
    assert stamp.startswith("2026-12-01") and dev2.name == dev.name and dev2.torch_version == dev.torch_version
    key = lambda r: r.provider  # noqa: E731
    for a, b in zip(sorted(rows, key=key), sorted(back, key=key)):
        assert (a.op, a.mode, a.shape, a.dtype, a.provider, a.status, a.note) == \
               (b.op, b.mode, b.shape, b.dtype, b.provider, b.status, b.note)
        for m in ("median_ms", "speedup_vs_reference", "mem_bytes", "gbps", "traffic_ratio", "samples"):
            assert getattr(a, m) == pytest.approx(getattr(b, m), rel=1e-3) if getattr(a, m) is not None \
                else getattr(b, m) is None
    assert back[0].mem_kind == "saved" or any(r.mem_kind == "saved" for r in back)
    pytest.importorskip("matplotlib")
    assert main(["--replot", str(path)]) == 0
    assert (tmp_path / "speedup_vs_C.png").stat().st_size > 0


def test_dtype_table_and_quick_set_dtypes():
    """The quick set has float32, bfloat16 and float16 columns (half precision timed fwd+bwd for
    the losses), uint8 for image mixing; the by-dtype table gives each provider's ratio to its own
    float32 time."""
    from benchmarks.report import Row, format_dtype_table
    cpu = torch.device("cpu")
    assert C.dtypes_for("loss", "quick", cpu) == [torch.float32, torch.bfloat16, torch.float16]
    assert C.dtypes_for("image", "quick", cpu) == [torch.float32, torch.uint8, torch.bfloat16, torch.float16]
    assert C.dtypes_for("loss", "quick-check", cpu) == [torch.float32]
    assert C.modes_for(C.OPS["seesaw_loss"], "quick", torch.bfloat16) == ("fwd+bwd",)
    assert C.modes_for(C.OPS["seesaw_loss"], "quick", torch.float32) == C.MODES
    shape = {"N": 8, "C": 4}
    rows = [Row("seesaw_loss", "fwd+bwd", shape, d, p, median_ms=ms)
            for d, p, ms in [("float32", "cpu", 2.0), ("bfloat16", "cpu", 1.0), ("float16", "cpu", 3.0),
                             ("float32", "reference", 10.0)]]
    rows.append(Row("lossmix_reduce", "fwd+bwd", {"N": 8}, "float32", "cpu", median_ms=1.0))  # one dtype: no table
    text = format_dtype_table(rows)
    assert "== seesaw_loss fwd+bwd  N=8 C=4: median ms (x its float32 time) ==" in text
    assert "(0.50x)" in text and "(1.50x)" in text and "lossmix_reduce" not in text
    line = next(ln for ln in text.splitlines() if ln.startswith("reference"))
    assert line.split()[1:] == ["10.000", "-", "-"]


def test_half_precision_benchmark_reports_every_case_and_restores_the_isa():
    """The interleaved fp32 / bf16 / fp16 comparison: a ratio for every case, dtype and kernel
    build, and the run-time ISA choice and thread count put back afterwards."""
    pytest.importorskip("lossmix_ext._C")
    import lossmix_ext._C as native
    from benchmarks import half_precision as H
    before = (native.cpu_isa(), torch.get_num_threads())
    lines = []
    results = H.run(rounds=1, threads=(1,), echo=lines.append)
    isas = [i for i in ("avx2", "baseline") if i in native.cpu_isas().split(",")]
    names = list(H._cases(torch.Generator().manual_seed(0)))
    assert any("rows stay in L2" in n for n in names)
    assert set(results) == {f"{i}/1/{n}/{d}" for i in isas for n in names for d in ("bfloat16", "float16")}
    assert all(r > 0 for r in results.values())
    assert (native.cpu_isa(), torch.get_num_threads()) == before
    assert sum(line.lstrip().startswith("== ") for line in lines) == len(isas)
