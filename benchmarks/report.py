"""Reporting: device description, the stdout table, the CSV and the plots."""
from __future__ import annotations

import csv
import os
import platform
import re
from dataclasses import dataclass
from typing import Dict, List, Optional

import torch

# Peak DRAM bandwidth in GB/s by device name (checked in order; first match wins).
PEAK_BANDWIDTH_GBPS = (
    (("H200",), 4800.0),
    (("H100", "PCIE"), 2000.0),
    (("H100", "HBM3"), 3350.0),
    (("H100", "SXM"), 3350.0),
    (("A100", "80GB"), 2000.0),
    (("A100",), 1560.0),
)


@dataclass
class DeviceInfo:
    name: str
    slug: str
    peak_gbps: Optional[float]
    torch_version: str
    triton_version: str


def device_info(device: torch.device) -> DeviceInfo:
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        upper = name.upper()
        peak = next((bw for keys, bw in PEAK_BANDWIDTH_GBPS if all(k in upper for k in keys)), None)
    else:
        name, peak = _cpu_name(), None
    try:
        import triton
        triton_version = triton.__version__
    except Exception:  # triton is optional
        triton_version = "none"
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    if device.type == "cpu" and not slug.startswith("cpu"):
        slug = f"cpu-{slug}"
    return DeviceInfo(name, slug, peak, torch.__version__, triton_version)


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return f"{line.split(':', 1)[1].strip()} ({os.cpu_count()} cores)"
    except OSError:
        pass
    return f"{platform.processor() or platform.machine()} ({os.cpu_count()} cores)"


@dataclass
class Row:
    """One provider on one case and mode."""
    op: str
    mode: str
    shape: Dict[str, int]
    dtype: str
    provider: str
    status: str = "ok"                     # "ok", "FAILED" or "skipped"
    note: str = ""
    median_ms: Optional[float] = None
    p20_ms: Optional[float] = None
    p80_ms: Optional[float] = None
    samples: Optional[int] = None          # timed repetitions behind the percentiles
    speedup_vs_reference: Optional[float] = None
    speedup_vs_compiled: Optional[float] = None
    mem_bytes: Optional[int] = None
    mem_kind: str = ""                     # "saved" (CPU, kept for backward) or "peak" (GPU)
    model_bytes: Optional[int] = None
    gbps: Optional[float] = None
    pct_peak_bw: Optional[float] = None
    compile_s: Optional[float] = None
    traffic_bytes: Optional[int] = None    # reference only: counted eager traffic
    traffic_ratio: Optional[float] = None  # reference only: traffic / byte model
    is_backend: bool = False               # a lossmix_ext backend (its failure is a library bug)

    @property
    def shape_str(self) -> str:
        return " ".join(f"{k}={v}" for k, v in self.shape.items())


METRICS = (("median_ms", "ms"), ("p20_ms", "ms"), ("p80_ms", "ms"), ("samples", "n"), ("speedup_vs_reference", "x"),
           ("speedup_vs_compiled", "x"), ("mem_bytes", "B"), ("model_bytes", "B"), ("gbps", "GB/s"),
           ("pct_peak_bw", "%"), ("compile_s", "s"), ("traffic_bytes", "B"), ("traffic_ratio", "x"))
CSV_FIELDS = ("timestamp", "device", "torch", "triton", "op", "mode", "shape", "dtype", "provider", "metric",
              "value", "unit", "note")


def write_csv(rows: List[Row], path: str, dev: DeviceInfo, timestamp: str) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, CSV_FIELDS)
        w.writeheader()
        for r in rows:
            base = {"timestamp": timestamp, "device": dev.name, "torch": dev.torch_version,
                    "triton": dev.triton_version, "op": r.op, "mode": r.mode, "shape": r.shape_str,
                    "dtype": r.dtype, "provider": r.provider}
            w.writerow(dict(base, metric="status", value=r.status, unit="", note=r.note))
            for metric, unit in METRICS:
                value = getattr(r, metric)
                if value is not None:
                    note = r.mem_kind if metric == "mem_bytes" else ""
                    w.writerow(dict(base, metric=metric, value=_csv_value(value), unit=unit, note=note))


def _csv_value(v) -> str:
    return f"{v:.6g}" if isinstance(v, float) else str(v)


# --------------------------------------------------------------------------- table
def _fmt(v: Optional[float], spec: str, width: int) -> str:
    return (format(v, spec) if v is not None else "-").rjust(width)


def _mb(b: Optional[int]) -> Optional[float]:
    return None if b is None else b / 2**20


def human_bytes(b: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(b) < 1024 or unit == "GiB":
            return f"{b:.3g} {unit}" if unit != "B" else f"{int(b)} B"
        b /= 1024
    return f"{b:.3g} GiB"


def format_block(rows: List[Row]) -> str:
    """The table of one case and mode (all rows share op, mode, shape and dtype)."""
    r0 = rows[0]
    ref = next((r for r in rows if r.provider == "reference"), None)
    head = f"== {r0.op} {r0.mode}  {r0.shape_str}  {r0.dtype} =="
    model = (ref or r0).model_bytes  # the case's model (a provider may have its own, e.g. clone)
    if model:
        head += f"  byte model {human_bytes(model)}"
    if ref is not None and ref.traffic_ratio is not None:
        head += f"; eager reference moves {human_bytes(ref.traffic_bytes)} = {ref.traffic_ratio:.1f}x the model"
    mem_kind = next((r.mem_kind for r in rows if r.mem_kind), "")
    mem_title = {"saved": "saved MiB", "peak": "peak MiB"}.get(mem_kind, "mem MiB")
    lines = [head, f"{'provider':<14}{'median ms':>11}{'p20':>10}{'p80':>10}{'x ref':>8}{'x comp':>8}"
                   f"{mem_title:>11}{'GB/s':>9}{'%peak':>7}  status"]
    for r in rows:
        status = r.status + (f" ({r.note})" if r.note else "")
        lines.append(f"{r.provider:<14}{_fmt(r.median_ms, '.3f', 11)}{_fmt(r.p20_ms, '.3f', 10)}"
                     f"{_fmt(r.p80_ms, '.3f', 10)}{_fmt(r.speedup_vs_reference, '.2f', 8)}"
                     f"{_fmt(r.speedup_vs_compiled, '.2f', 8)}{_fmt(_mb(r.mem_bytes), '.3g', 11)}"
                     f"{_fmt(r.gbps, '.3g', 9)}{_fmt(r.pct_peak_bw, '.1f', 7)}  {status}")
    return "\n".join(lines)


# --------------------------------------------------------------------------- plots
LOSS_OPS = ("seesaw_loss", "seesaw_module", "seesaw_loss_mixed", "mixed_cross_entropy")


def write_plots(rows: List[Row], out_dir: str, dev: DeviceInfo) -> List[str]:
    """speedup_vs_C.png, memory_vs_C.png, gbps_vs_size.png; [] with a message without matplotlib."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: skipping plots (pip install matplotlib)")
        return []
    ok = [r for r in rows if r.status == "ok"]
    loss = [r for r in ok if r.op in LOSS_OPS and r.mode == "fwd+bwd" and r.dtype == "float32"]
    ns = sorted({r.shape["N"] for r in loss})
    n_pick = 4096 if 4096 in ns else (ns[-1] if ns else None)
    loss = [r for r in loss if r.shape["N"] == n_pick]
    paths = []
    for fname, metric, ylabel, keep in (
            ("speedup_vs_C.png", "speedup_vs_reference", "speed-up vs eager reference (x)",
             lambda r: r.provider != "reference"),
            ("memory_vs_C.png", "mem_bytes", "memory (MiB)", lambda r: True)):
        ops = [op for op in LOSS_OPS if any(r.op == op for r in loss)]
        if not ops:
            continue
        fig, axes = plt.subplots(1, len(ops), figsize=(4.2 * len(ops), 3.6), squeeze=False)
        for ax, op in zip(axes[0], ops):
            for prov in dict.fromkeys(r.provider for r in loss if r.op == op and keep(r)):
                pts = sorted((r.shape["C"], getattr(r, metric)) for r in loss
                             if r.op == op and r.provider == prov and getattr(r, metric) is not None)
                if pts:
                    ys = [y / 2**20 if metric == "mem_bytes" else y for _, y in pts]
                    ax.plot([x for x, _ in pts], ys, marker="o", label=prov)
            ax.set_xscale("log")
            ax.set_title(f"{op} fwd+bwd, N={n_pick}, fp32", fontsize=9)
            ax.set_xlabel("classes C")
            ax.set_ylabel(ylabel)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        fig.suptitle(dev.name, fontsize=9)
        fig.tight_layout()
        paths.append(os.path.join(out_dir, fname))
        fig.savefig(paths[-1], dpi=110)
        plt.close(fig)
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for prov in dict.fromkeys(r.provider for r in ok if r.gbps is not None):
        pts = [(r.model_bytes, r.gbps) for r in ok if r.provider == prov and r.gbps is not None]
        ax.scatter([x for x, _ in pts], [y for _, y in pts], label=prov, s=14)
    if dev.peak_gbps:
        ax.axhline(dev.peak_gbps, color="k", ls="--", lw=0.8, label="peak bandwidth")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("byte model (bytes the op must move)")
    ax.set_ylabel("achieved GB/s (byte model / median time)")
    ax.set_title(dev.name, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    paths.append(os.path.join(out_dir, "gbps_vs_size.png"))
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)
    return paths
