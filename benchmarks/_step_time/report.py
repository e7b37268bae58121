"""What step_time.py prints and writes: the step table, the target
configuration's lines, the JSON and the PNG."""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import re
from pathlib import Path
from typing import Any, Dict, List, Sequence

import torch

from _system import device_name

from .cases import TARGET_LABEL, TARGET_LABEL_BF16
from .plots import plot

RESULTS = Path(__file__).resolve().parents[1] / "results"

def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Plain aligned text: text columns left, numbers right."""
    cells = [[str(h) for h in headers]] + [[("" if v is None else str(v)) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    numeric = [all(re.fullmatch(r"[-+0-9.,x%eE]*", r[i] or "0") for r in cells[1:]) for i in range(len(headers))]
    lines = []
    for j, row in enumerate(cells):
        line = "  ".join(c.rjust(w) if numeric[i] else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths)))
        lines.append(line.rstrip())
        if j == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _label(r: Dict[str, Any]) -> str:
    """The optimizer, marked ``+bf16`` when it keeps bfloat16 state."""
    return r["optimizer"] + ("+bf16" if r.get("storage", "default") != "default" else "")


def step_table(records: List[Dict[str, Any]]) -> str:
    headers = ["device", "dtype", "layout", "numel", "tensors", "optimizer", "impl", "median ms",
               "IQR ms", "min ms", "B/el", "FLOP/el", "GB/s", "of copy", "x best Adam", "config"]
    rows = []
    for r in records:
        rows.append([
            r["device"], r["dtype"], r["layout"], f"{r['numel']:,}", r["n_tensors"], _label(r),
            r["impl"], f"{r['median_ms']:.3f}", f"{r['q3_ms'] - r['q1_ms']:.3f}", f"{r['min_ms']:.3f}", r["bytes_per_element"],
            r["flops_per_element"], f"{r['gb_per_s']:.2f}",
            f"{100 * r['fraction_of_copy']:.0f}%" if r["fraction_of_copy"] is not None else None,
            f"{r['ratio_to_best_adam']:.2f}x" if r["ratio_to_best_adam"] is not None else None,
            ("TARGET" if r["label"] else "") + (" noisy!" if r.get("noisy") else ""),
        ])
    return format_table(headers, rows)


def print_report(plan: Sequence[Any], records: List[Dict[str, Any]], copy: Dict[str, Dict[str, float]],
                 load: Sequence[Any]) -> None:
    """The plain-text summary of part 1: bandwidth, the step table, the target config."""
    print()
    if load[0] is not None and load[0] > 0.5 and "cpu" in copy:
        # Other processes on the same cores make every CPU number here slower and
        # noisier (the end value includes this run's own threads).
        print(f"warning: the machine was busy before this run started (1-min load average {load[0]}; "
              f"{load[1]} at the end; {os.cpu_count()} CPUs): CPU timings are pessimistic and noisy")
    for dev, c in copy.items():
        print(f"copy bandwidth {dev} ({device_name(torch.device(dev))}): {c['copy_gb_per_s_start']:.1f} GB/s "
              f"at the start, {c['copy_gb_per_s_end']:.1f} GB/s at the end, reference {c['copy_gb_per_s']:.1f} "
              f"(dst.copy_(src), {c['copy_bytes'] / 2**20:.0f} MiB fp32, counted 2x bytes); in-place "
              f"dst.add_(src) {c['inplace_add_gb_per_s']:.1f} / {c['inplace_add_gb_per_s_end']:.1f} GB/s (3x bytes)")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; B/el = the rule's ideal bytes per "
          f"element; GB/s = B/el * numel / median; x best Adam = median / fastest Adam or AdamW path\n")
    print(step_table(records))
    if any(r.get("noisy") for r in records):
        print("noisy!: IQR > half the median or median > 2x min: the machine interfered; compare the min column "
              "too, rerun on an idle machine, or try --threads 1")
    for cfg, _ in plan:
        if cfg.note:
            print(f"note: {cfg.describe()}: {cfg.note}")
    for label in (TARGET_LABEL, TARGET_LABEL_BF16):
        target = [r for r in records if r["label"] == label]
        if not target:
            continue
        print(f"\n{label}:")
        for r in sorted(target, key=lambda r: r["median_ms"]):
            ratio = (f"{r['ratio_to_best_adam']:.2f}x best Adam ({r['best_adam']})"
                     if r["ratio_to_best_adam"] is not None else "")
            print(f"  {_label(r) + '/' + r['impl']:<20} median {r['median_ms']:9.3f} ms  "
                  f"min {r['min_ms']:9.3f} ms  state {r['state_bytes_per_element']} B/el  "
                  f"{ratio}{'  noisy!' if r.get('noisy') else ''}")

def save(result: Dict[str, Any], records: List[Dict[str, Any]], copy: Dict[str, Dict[str, float]],
         primary: str, stamp: _dt.datetime, args: argparse.Namespace) -> None:
    """Write the JSON and the PNG where asked (default names under benchmarks/results/)."""
    out, png = args.out, args.plot
    if args.save or (not args.quick and out is None and png is None):
        name = device_name(torch.device(primary))
        tag = primary if primary == "cpu" else "cuda-" + re.sub(r"[^A-Za-z0-9]+", "-", name).strip("-")
        base = RESULTS / f"step_time_{tag}_{stamp.strftime('%Y%m%d-%H%M%S')}"
        out, png = out or base.with_suffix(".json"), png or base.with_suffix(".png")
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=1) + "\n")
        print(f"wrote {out}")
    if png:
        copy_gbps = {d: c["copy_gb_per_s"] for d, c in copy.items()}
        plot(records, png, copy_gbps, primary, args.plot_dtype, args.plot_layout)
        print(f"wrote {png}")
