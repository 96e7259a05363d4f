"""Reporting: device description, the stdout table, the CSV and the plots."""
from __future__ import annotations

import csv
import datetime
import os
import platform
import re
import zlib
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

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
    # throughput of the byte model: MB/s when the best value would round to 0.0x GB/s
    rates = [r.gbps for r in rows if r.gbps is not None]
    scale, unit = (1e3, "MB/s") if rates and max(rates) < 1.0 else (1.0, "GB/s")
    show_peak = any(r.pct_peak_bw is not None for r in rows)
    lines = [head, f"{'provider':<14}{'median ms':>11}{'p20':>10}{'p80':>10}{'x ref':>8}{'x comp':>8}"
                   f"{mem_title:>11}{unit:>9}" + (f"{'%peak':>7}" if show_peak else "") + "  status"]
    for r in rows:
        status = r.status + (f" ({r.note})" if r.note else "")
        rate = None if r.gbps is None else r.gbps * scale
        lines.append(f"{r.provider:<14}{_fmt(r.median_ms, '.3f', 11)}{_fmt(r.p20_ms, '.3f', 10)}"
                     f"{_fmt(r.p80_ms, '.3f', 10)}{_fmt(r.speedup_vs_reference, '.2f', 8)}"
                     f"{_fmt(r.speedup_vs_compiled, '.2f', 8)}{_fmt(_mb(r.mem_bytes), '.3g', 11)}"
                     f"{_fmt(rate, '.3g', 9)}" + (_fmt(r.pct_peak_bw, '.1f', 7) if show_peak else "")
                     + f"  {status}")
    if not show_peak and rates:
        lines.append(f"({unit}: the case's byte model over the median time; no %peak column: this device's peak "
                     "memory bandwidth is not known)")
    return "\n".join(lines)


DTYPE_ORDER = ("float32", "bfloat16", "float16", "uint8", "float64")


def format_dtype_table(rows: List[Row]) -> str:
    """The dtype columns: per op, mode and shape timed in more than one dtype, each provider's
    median ms per dtype and its ratio to the same provider's float32 time (uint8: images in,
    normalised float32 out). Empty when no case has more than one dtype."""
    groups: Dict[tuple, Dict[str, Dict[str, Row]]] = {}
    for r in rows:
        if r.status != "ok" or r.median_ms is None:
            continue
        key = (r.op, r.mode, r.shape_str)
        groups.setdefault(key, {}).setdefault(r.provider, {})[r.dtype] = r
    lines = []
    for (op, mode, shape), by_provider in groups.items():
        dtypes = [d for d in DTYPE_ORDER if any(d in v for v in by_provider.values())]
        if len(dtypes) < 2:
            continue
        lines.append(f"== {op} {mode}  {shape}: median ms (x its float32 time) ==")
        lines.append(f"{'provider':<14}" + "".join(f"{d:>20}" for d in dtypes))
        for provider in _provider_order(by_provider):
            cells = by_provider[provider]
            base = cells.get("float32")
            out = []
            for d in dtypes:
                r = cells.get(d)
                if r is None:
                    out.append(f"{'-':>20}")
                elif d == "float32" or base is None:
                    out.append(f"{r.median_ms:>20.3f}")
                else:
                    out.append(f"{r.median_ms:>12.3f} ({r.median_ms / base.median_ms:4.2f}x)")
            lines.append(f"{provider:<14}" + "".join(out))
        lines.append("")
    return "\n".join(lines).rstrip()


# --------------------------------------------------------------------------- plots
LOSS_OPS = ("seesaw_loss", "seesaw_module", "seesaw_loss_mixed", "mixed_cross_entropy")
_PLOT_DPI = 120
# One colour (and marker) per provider, the same in every figure. A name not listed gets one of
# _SPARE_COLOURS picked by a hash of the name: the same in every figure and run.
_PROVIDER_COLOURS = {
    "reference": "#4d4d4d", "compiled": "#ff7f0e", "torch": "#1f77b4", "cpu": "#2ca02c",
    "cuda": "#d62728", "triton": "#9467bd", "lossmix_ext": "#17becf", "two_ce": "#8c564b",
    "soft_target": "#e377c2", "torchvision": "#bcbd22", "timm_inplace": "#6baed6", "clone": "#b8b8b8",
}
_SPARE_COLOURS = ("#98df8a", "#ff9896", "#c5b0d5", "#c49c94", "#f7b6d2", "#dbdb8d", "#9edae5", "#ffbb78")
_MARKERS = {"reference": "o", "compiled": "s", "torch": "D", "cpu": "^", "cuda": "v", "triton": "P",
            "lossmix_ext": "X", "two_ce": "<", "soft_target": ">", "torchvision": "h", "timm_inplace": "p",
            "clone": "*"}
_SPARE_MARKERS = ("d", "H", "8", "1", "2", "3", "4")
_LINESTYLES = ("-", "--", ":", "-.")
_DTYPE_FILLS = {"float32": "none", "bfloat16": "full", "float16": "left", "uint8": "bottom"}
_RC = {"font.size": 10, "axes.titlesize": 10.5, "axes.labelsize": 10, "xtick.labelsize": 9,
       "ytick.labelsize": 9, "legend.fontsize": 9, "figure.titlesize": 11.5}
_SAME_AS_REFERENCE = "1× = same as the eager reference"
_BAR_LABEL_PT = 7.5


def _provider_colour(name: str) -> str:
    if name in _PROVIDER_COLOURS:
        return _PROVIDER_COLOURS[name]
    return _SPARE_COLOURS[zlib.crc32(name.encode()) % len(_SPARE_COLOURS)]


def _marker(name: str) -> str:
    return _MARKERS.get(name) or _SPARE_MARKERS[zlib.crc32(name.encode()) % len(_SPARE_MARKERS)]


def _provider_order(names) -> List[str]:
    """Known providers in the order of :data:`_PROVIDER_COLOURS`, then the others as they come."""
    names = list(dict.fromkeys(names))
    return [p for p in _PROVIDER_COLOURS if p in names] + [p for p in names if p not in _PROVIDER_COLOURS]


def _fmt_x(v: float) -> str:
    """A speed-up: ``24×``, ``3.04×``, ``0.78×``."""
    return (f"{v:.0f}" if v >= 10 else f"{v:.2f}".rstrip("0").rstrip(".")) + "×"


def _fmt_num(v: float) -> str:
    return f"{v:.0f}" if abs(v) >= 10 else f"{v:.2g}"


def _byte_unit(b: float):
    """``(divisor, name)`` putting ``b`` between 1 and 1024 of the unit."""
    for k, unit in enumerate(("B", "KiB", "MiB", "GiB")):
        if b < 1024 ** (k + 1) or unit == "GiB":
            return 1024 ** k, unit


def _titles(fig, what: str, detail: str, dev: DeviceInfo, date: str, extra: str = "") -> None:
    """The figure title: what is shown; the case; device, torch version, date."""
    import textwrap
    width = max(40, int(fig.get_figwidth() * 72 / (0.55 * _RC["figure.titlesize"])))
    device = " · ".join([dev.name, f"torch {dev.torch_version}", date] + ([extra] if extra else []))
    lines = [textwrap.fill(t, width) for t in (what, detail, device) if t]
    fig.suptitle("\n".join(lines))


def _figure(n_panels: int, width_ratios=None, panel_w: float = 4.4, h: float = 3.6, ncols: Optional[int] = None):
    import matplotlib.pyplot as plt
    ncols = ncols or n_panels
    nrows = -(-n_panels // ncols)
    ratios = width_ratios or [1] * ncols
    fig, axes = plt.subplots(nrows, ncols, figsize=(max(6.4, panel_w * sum(ratios) + 0.8), h * nrows + 1.6),
                             squeeze=False, layout="constrained", gridspec_kw={"width_ratios": ratios})
    flat = list(axes.flat)
    for ax in flat[n_panels:]:
        ax.set_visible(False)
    return fig, flat[:n_panels]


def _legend(fig, handles: list) -> None:
    """One legend for the whole figure, below the panels (never over data or the title)."""
    # as many columns as fit: a column is as wide as its widest entry (entries fill columns first)
    widths = [0.6 + 0.52 * _RC["legend.fontsize"] / 72 * len(h.get_label()) for h in handles]
    ncol = 1
    for k in range(len(handles), 1, -1):
        rows = -(-len(handles) // k)
        if sum(max(widths[i:i + rows]) for i in range(0, len(handles), rows)) <= fig.get_figwidth() - 0.4:
            ncol = k
            break
    try:
        fig.legend(handles=handles, loc="outside lower center", ncol=ncol, frameon=False)
    except ValueError:  # matplotlib < 3.7: no "outside" locations
        fig.legend(handles=handles, loc="lower center", ncol=ncol, frameon=False)


def _provider_handles(providers: List[str], kind: str) -> list:
    """Legend entries: ``kind`` "bar" (a colour patch), "line" (line and marker) or "point"."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch
    if kind == "bar":
        return [Patch(facecolor=_provider_colour(p), label=p) for p in providers]
    return [Line2D([], [], color=_provider_colour(p), marker=_marker(p), markerfacecolor="none", mew=1.5,
                   ls="-" if kind == "line" else "none", label=p) for p in providers]


def _same_as(series: Dict[str, List[tuple]]) -> Dict[str, str]:
    """``{provider: earlier provider}`` for series that coincide (within 1%) with an earlier one:
    drawn on top of each other, they are named in the legend so that none goes unseen."""
    same: Dict[str, str] = {}
    names = list(series)
    for k, p in enumerate(names):
        for q in names[:k]:
            a, b = series[p], series[q]
            if q not in same and [x for x, _ in a] == [x for x, _ in b] and all(
                    abs(u - v) <= 0.01 * max(abs(u), abs(v), 1e-30) for (_, u), (_, v) in zip(a, b)):
                same[p] = q
                break
    return same


def _same_legend(ax) -> None:
    """An in-panel legend naming the series drawn over an equal one (labelled ``p (= q)``)."""
    same = [h for h in ax.get_lines() if "(=" in h.get_label()]
    if same:
        ax.legend(handles=same, loc="best", fontsize=8, framealpha=0.85, title="equal series", title_fontsize=8)


def _grouped_bars(ax, values: Dict[str, Dict[str, float]], scale: float, label, width_in: float) -> None:
    """A grouped bar chart: one group per key of ``values`` (``{group: {provider: value}}``), one
    bar per provider present in it (centred), ``value / scale`` high and labelled
    ``label(value)``; ``width_in``: the panel's width in inches (labels turn upright when a
    bar is too narrow for its label)."""
    groups = list(values)
    width = 0.8 / max(len(v) for v in values.values())
    slot_in = width * width_in / len(groups)
    texts = {(g, p): label(v) for g, vs in values.items() for p, v in vs.items()}
    longest = max(len(t) for t in texts.values())
    upright = longest * 0.62 * _BAR_LABEL_PT / 72 > slot_in * 0.85
    top = 0.0
    for gi, group in enumerate(groups):
        provs = _provider_order(values[group])
        for k, p in enumerate(provs):
            x = gi + (k - (len(provs) - 1) / 2) * width
            v = values[group][p] / scale
            ax.bar(x, v, width * 0.92, color=_provider_colour(p), edgecolor="white", linewidth=0.5, label=p)
            ax.annotate(texts[group, p], (x, v), xytext=(0, 2), textcoords="offset points", ha="center",
                        va="bottom", fontsize=_BAR_LABEL_PT, rotation=90 if upright else 0, zorder=4,
                        bbox={"boxstyle": "square,pad=0.1", "facecolor": "white", "edgecolor": "none",
                              "alpha": 0.8})  # legible over the 1× line
            top = max(top, v)
    ax.set_xticks(range(len(groups)), groups)
    ax.set_xlim(-0.5, len(groups) - 0.5)
    # headroom for the labels: upright ones take about longest × 0.6 em of the ~2.6 in panel
    head = 1.12 + (longest * 0.6 * _BAR_LABEL_PT / 72 / 2.6 if upright else 0)
    ax.set_ylim(0, top * head if top > 0 else 1)
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)


def _bar_inches(values: Dict[str, Dict[str, float]]) -> float:
    """Width of a bar panel: room for every group's bars and its name."""
    most = max(len(v) for v in values.values())
    return len(values) * max(1.8, 0.36 * most / 0.8) + 0.7


def _loss_rows(rows: List[Row]):
    """The loss-op rows the ``vs C`` figures show: fwd+bwd, one dtype (float32 when run) and one
    N (4096 when run, else the largest); ``(rows, N, dtype)``."""
    loss = [r for r in rows if r.status == "ok" and r.op in LOSS_OPS and r.mode == "fwd+bwd" and "C" in r.shape]
    if not loss:
        return [], None, None
    dtypes = sorted({r.dtype for r in loss})
    dtype = "float32" if "float32" in dtypes else dtypes[0]
    ns = sorted({r.shape["N"] for r in loss if r.dtype == dtype})
    n = 4096 if 4096 in ns else ns[-1]
    return [r for r in loss if r.dtype == dtype and r.shape["N"] == n], n, dtype


def _vs_c_figure(loss: List[Row], metric: str, keep, draw_lines, draw_bars):
    """Speed-up / memory against C: a line panel per op run at several C values, and one grouped
    bar panel (a group per op, a bar per provider) for the ops run at a single C.
    ``(figure, providers shown, whether there are line panels)`` or None without data."""
    data: Dict[str, Dict[str, List[tuple]]] = {}
    for op in [op for op in LOSS_OPS if any(r.op == op for r in loss)]:
        per: Dict[str, List[tuple]] = {}
        for p in _provider_order(r.provider for r in loss if r.op == op and keep(r)):
            pts = sorted((r.shape["C"], getattr(r, metric)) for r in loss
                         if r.op == op and r.provider == p and getattr(r, metric) is not None)
            if pts:
                per[p] = pts
        if per:
            data[op] = per
    if not data:
        return None
    line_ops = [op for op in data if len({c for pts in data[op].values() for c, _ in pts}) > 1]
    bar_ops = [op for op in data if op not in line_ops]
    bar_cs = {op: next(iter(data[op].values()))[0][0] for op in bar_ops}
    one_c = len(set(bar_cs.values())) == 1
    bar_values = {(op if one_c else f"{op}\nC={bar_cs[op]}"): {p: pts[0][1] for p, pts in data[op].items()}
                  for op in bar_ops}
    panel_w = 4.4
    ratios = [1.0] * len(line_ops) + ([_bar_inches(bar_values) / panel_w] if bar_ops else [])
    fig, axes = _figure(len(ratios), ratios, panel_w=panel_w)
    providers: List[str] = []
    for ax, op in zip(axes, line_ops):
        draw_lines(ax, data[op])
        ax.set_xscale("log")
        cs = sorted({c for pts in data[op].values() for c, _ in pts})
        ax.set_xticks(cs, [str(c) for c in cs])
        ax.minorticks_off()
        ax.set_xlabel("classes C (log scale)")
        ax.set_title(op)
        ax.grid(alpha=0.3)
        providers += list(data[op])
    if bar_ops:
        ax = axes[-1]
        draw_bars(ax, bar_values, ratios[-1] * panel_w - 0.7)
        ax.set_title(f"C={next(iter(bar_cs.values()))}" if one_c else "one C value per op")
        providers += [p for v in bar_values.values() for p in v]
    return fig, _provider_order(providers), bool(line_ops)


def _speedup_figure(rows: List[Row], dev: DeviceInfo, date: str):
    """``speedup_vs_C.png``: speed-up of each provider over the eager reference, loss ops."""
    from matplotlib.lines import Line2D
    from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter
    loss, n, dtype = _loss_rows(rows)
    fmt = FuncFormatter(lambda v, _: f"{v:g}×" if v > 0 else "0")

    def one_line(ax):
        ax.axhline(1.0, color="black", ls="--", lw=1.1, zorder=1.5, gid="same_as_reference",
                   label=_SAME_AS_REFERENCE)

    def lines(ax, series):
        same = _same_as(series)
        for k, (p, pts) in enumerate(series.items()):
            ax.plot([c for c, _ in pts], [v for _, v in pts], color=_provider_colour(p), marker=_marker(p),
                    markerfacecolor="none", ms=7, mew=1.5, lw=1.6, ls=_LINESTYLES[k % 4] if p in same else "-",
                    label=p + (f" (= {same[p]})" if p in same else ""))
        one_line(ax)
        ys = [v for pts in series.values() for _, v in pts] + [1.0]
        if max(ys) / min(ys) > 8:
            ax.set_yscale("log")
            ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1, 2, 5)))
            ax.yaxis.set_minor_formatter(NullFormatter())
        ax.yaxis.set_major_formatter(fmt)
        ax.set_ylabel("speed-up over eager reference")
        _same_legend(ax)

    def bars(ax, values, width_in):
        _grouped_bars(ax, values, 1.0, _fmt_x, width_in)
        one_line(ax)
        ax.yaxis.set_major_locator(MaxNLocator(steps=[1, 2, 5, 10]))
        ax.yaxis.set_major_formatter(fmt)
        ax.set_ylabel("speed-up over eager reference")

    out = _vs_c_figure(loss, "speedup_vs_reference", lambda r: r.provider != "reference", lines, bars)
    if out is None:
        return None
    fig, providers, has_lines = out
    _titles(fig, "Speed-up over the eager PyTorch reference (higher is better)",
            f"loss ops, forward + backward, N={n}, {dtype}; median times", dev, date)
    handles = _provider_handles(providers, "line" if has_lines else "bar")
    handles.append(Line2D([], [], color="black", ls="--", lw=1.1, label=_SAME_AS_REFERENCE))
    _legend(fig, handles)
    return fig


def _memory_label(rows: List[Row], dev: DeviceInfo) -> tuple:
    """``(kind, axis label without unit, figure title)`` of ``mem_bytes``: what it measures on
    this device (see the docstring of :mod:`benchmarks.harness`): "saved" on a CPU, "peak" on a GPU."""
    kinds = [r.mem_kind for r in rows if r.mem_kind]
    kind = max(set(kinds), key=kinds.count) if kinds else ("saved" if dev.slug.startswith("cpu") else "peak")
    if kind == "saved":
        return (kind, "saved for backward",
                "Memory kept for the backward: bytes autograd saves in the forward (inputs excluded; lower is better)")
    return (kind, "peak GPU memory allocated",
            "Peak GPU memory during the call, above the inputs (lower is better)")


def _memory_figure(rows: List[Row], dev: DeviceInfo, date: str):
    """``memory_vs_C.png``: ``mem_bytes`` of every provider, loss ops."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter
    loss, n, dtype = _loss_rows(rows)
    loss = [r for r in loss if r.mem_bytes is not None]
    if not loss:
        return None
    _, what, title = _memory_label(loss, dev)

    def lines(ax, series):
        same = _same_as(series)
        for k, (p, pts) in enumerate(series.items()):
            dodge = 1.06 ** (k - (len(series) - 1) / 2)  # a small offset along log C keeps equal series apart
            ax.plot([c * dodge for c, _ in pts], [v for _, v in pts], color=_provider_colour(p), marker=_marker(p),
                    markerfacecolor="none", ms=7, mew=1.5, lw=1.6, ls=_LINESTYLES[k % 4],
                    label=p + (f" (= {same[p]})" if p in same else ""))
        ys = [v for pts in series.values() for _, v in pts if v > 0] or [1]
        if max(ys) / min(ys) > 16:
            ax.set_yscale("log", base=2)
            ax.yaxis.set_major_locator(LogLocator(base=2, numticks=8))
            ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: human_bytes(v)))
            ax.yaxis.set_minor_formatter(NullFormatter())
            ax.set_ylabel(f"{what} (log scale)")
        else:
            scale, unit = _byte_unit(max(ys))
            ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v / scale:g}"))
            ax.set_ylim(bottom=0)
            ax.set_ylabel(f"{what} ({unit})")
        _same_legend(ax)

    def bars(ax, values, width_in):
        scale, unit = _byte_unit(max(v for g in values.values() for v in g.values()) or 1)
        _grouped_bars(ax, values, scale, human_bytes, width_in)
        ax.set_ylabel(f"{what} ({unit})")

    out = _vs_c_figure(loss, "mem_bytes", lambda r: True, lines, bars)
    if out is None:
        return None
    fig, providers, has_lines = out
    _titles(fig, title, f"loss ops, forward + backward, N={n}, {dtype}", dev, date)
    _legend(fig, _provider_handles(providers, "line" if has_lines else "bar"))
    return fig


def _primary_mode(modes) -> str:
    return "fwd+bwd" if "fwd+bwd" in modes else ("fwd" if "fwd" in modes else sorted(modes)[0])


def _gbps_figure(rows: List[Row], dev: DeviceInfo, date: str):
    """``gbps_vs_size.png``: achieved throughput (byte model / median time), one panel per op at
    its fwd+bwd (else fwd): grouped bars (a group per dtype / shape) where the op ran at one
    shape per dtype, else points against the byte model (log-log)."""
    from matplotlib.lines import Line2D
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter
    ok = [r for r in rows if r.status == "ok" and r.gbps and r.model_bytes]
    ops = list(dict.fromkeys(r.op for r in ok))
    if not ops:
        return None
    ncols = min(len(ops), 3)
    panel_w = 5.0
    fig, axes = _figure(len(ops), panel_w=panel_w, h=3.5, ncols=ncols)
    providers: List[str] = []
    point_dtypes: List[str] = []
    bar_panels = 0
    peak_drawn = False
    for ax, op in zip(axes, ops):
        mode = _primary_mode({r.mode for r in ok if r.op == op})
        rs = [r for r in ok if r.op == op and r.mode == mode]
        providers += [r.provider for r in rs]
        top = max(r.gbps for r in rs)
        scale, unit = (1.0, "GB/s") if top >= 1 else (1e-3, "MB/s")
        cases = list(dict.fromkeys((r.dtype, r.shape_str) for r in rs))
        dtypes = list(dict.fromkeys(d for d, _ in cases))
        shapes = list(dict.fromkeys(s for _, s in cases))
        if len(shapes) == 1:
            bar_panels += 1
            values: Dict[str, Dict[str, float]] = {}
            for d, s in cases:
                crs = [r for r in rs if (r.dtype, r.shape_str) == (d, s)]
                ref = next((r for r in crs if r.provider == "reference"), crs[0])
                name = (f"{d}\n" if len(dtypes) > 1 else "") + f"{human_bytes(ref.model_bytes)} moved"
                values[name] = {r.provider: r.gbps for r in crs}
            _grouped_bars(ax, values, scale, lambda v: _fmt_num(v / scale), panel_w - 0.9)
            ax.set_title(f"{op} ({mode})\n" + ", ".join(([dtypes[0]] if len(dtypes) == 1 else []) + shapes),
                         fontsize=10)
        else:
            for p in _provider_order(r.provider for r in rs):
                for d in dtypes:
                    pts = [(r.model_bytes, r.gbps / scale) for r in rs if r.provider == p and r.dtype == d]
                    if pts:
                        ax.plot([x for x, _ in pts], [y for _, y in pts], ls="none", color=_provider_colour(p),
                                marker=_marker(p), fillstyle=_DTYPE_FILLS.get(d, "full"), ms=6.5, mew=1.3,
                                alpha=0.9, label=f"{p} {d}")
            point_dtypes += dtypes
            ax.set_xscale("log", base=2)
            ax.xaxis.set_major_locator(LogLocator(base=4))
            ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: human_bytes(v)))
            ax.xaxis.set_minor_formatter(NullFormatter())
            ys = [r.gbps for r in rs]
            if max(ys) / min(ys) > 10:
                ax.set_yscale("log")
                ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1, 2, 5)))
                ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
                ax.yaxis.set_minor_formatter(NullFormatter())
            ax.set_xlabel("byte model: bytes the op must move")
            ax.grid(alpha=0.3)
            ax.set_title(f"{op} ({mode})" + (f", {dtypes[0]}" if len(dtypes) == 1 else ""), fontsize=10)
        if dev.peak_gbps and top >= 0.1 * dev.peak_gbps:  # else the line would flatten the data
            ax.axhline(dev.peak_gbps / scale, color="black", ls="--", lw=1, gid="peak_bandwidth")
            ax.set_ylim(top=max(ax.get_ylim()[1], dev.peak_gbps / scale * 1.1))
            peak_drawn = True
        ax.set_ylabel(unit)
    fig.supylabel("achieved throughput", fontsize=10)
    extra = f"peak {dev.peak_gbps:g} GB/s" if dev.peak_gbps else ""
    _titles(fig, "Achieved memory throughput = byte model / median time (higher is better)",
            "each op at its fwd+bwd (fwd when it has no backward); GB/s = 1e9 B/s", dev, date, extra)
    # colour names the provider in every panel; markers only where no panel has bars
    handles = _provider_handles(_provider_order(providers), "bar" if bar_panels or not point_dtypes else "point")
    if len(set(point_dtypes)) > 1:
        handles += [Line2D([], [], ls="none", color="black", marker="o", fillstyle=_DTYPE_FILLS.get(d, "full"),
                           label=d) for d in dict.fromkeys(point_dtypes)]
    if peak_drawn:
        handles.append(Line2D([], [], color="black", ls="--", lw=1, label="peak DRAM bandwidth"))
    _legend(fig, handles)
    return fig


def _build_figures(rows: List[Row], dev: DeviceInfo, date: Optional[str] = None,
                   names: Optional[List[str]] = None) -> Dict[str, object]:
    """``{file name: matplotlib Figure}`` for the figures (all, or those ``names``) these rows
    have data for (needs matplotlib); ``date`` for the titles, default today (UTC)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    date = date or datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
    figs = {}
    with plt.rc_context(_RC):
        for fname, build in (("speedup_vs_C.png", _speedup_figure), ("memory_vs_C.png", _memory_figure),
                             ("gbps_vs_size.png", _gbps_figure)):
            if names is not None and fname not in names:
                continue
            fig = build(rows, dev, date)
            if fig is not None:
                figs[fname] = fig
    return figs


def read_csv(path: str) -> Tuple[List[Row], DeviceInfo, str]:
    """The rows of a ``results.csv`` written by :func:`write_csv`, its device and its timestamp
    (to redraw the plots of a committed run: ``python -m benchmarks --replot CSV``)."""
    types = {m: (int if u in ("B", "n") else float) for m, u in METRICS}
    rows: Dict[tuple, Row] = {}
    dev, stamp = None, ""
    with open(path, newline="") as f:
        for rec in csv.DictReader(f):
            if dev is None:
                slug = os.path.basename(os.path.dirname(os.path.abspath(path)))
                dev = DeviceInfo(rec["device"], slug, None, rec["torch"], rec["triton"])
                stamp = rec["timestamp"]
            shape = {k: int(v) for k, v in (kv.split("=") for kv in rec["shape"].split())}
            key = (rec["op"], rec["mode"], rec["shape"], rec["dtype"], rec["provider"])
            r = rows.get(key)
            if r is None:
                r = rows[key] = Row(rec["op"], rec["mode"], shape, rec["dtype"], rec["provider"])
            if rec["metric"] == "status":
                r.status, r.note = rec["value"], rec["note"]
            elif rec["metric"] in types:
                setattr(r, rec["metric"], types[rec["metric"]](float(rec["value"])))
                if rec["metric"] == "mem_bytes":
                    r.mem_kind = rec["note"] or None
    if dev is None:
        raise ValueError(f"{path} has no rows")
    return list(rows.values()), dev, stamp


def write_plots(rows: List[Row], out_dir: str, dev: DeviceInfo, date: Optional[str] = None) -> List[str]:
    """speedup_vs_C.png, memory_vs_C.png, gbps_vs_size.png; [] with a message without matplotlib.
    ``date`` for the titles (default: today, UTC — the run's date when the harness calls it)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: skipping plots (pip install matplotlib)")
        return []
    paths = []
    with plt.rc_context(_RC):
        for fname, fig in _build_figures(rows, dev, date=date).items():
            paths.append(os.path.join(out_dir, fname))
            fig.savefig(paths[-1], dpi=_PLOT_DPI)
            plt.close(fig)
    return paths
