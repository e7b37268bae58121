"""The PNG of step_time.py: step time and achieved bandwidth against size."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List

from .cases import IMPLS, OPTIMIZERS

def plot(records: List[Dict[str, Any]], path: Path, copy: Dict[str, float], device: str,
         dtype: str, layout: str) -> None:
    """Time and bandwidth against size, one line per (optimizer, path), log-x."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # The default storage only: "+bf16" variants would share their optimizer's line.
    records = [r for r in records if r.get("storage", "default") == "default"]
    sel = [r for r in records if r["device"] == device and r["dtype"] == dtype and r["layout"] == layout
           and not r["label"]]
    # The target config (28 tensors, not the sweep's ~108) is drawn as stars, not joined to the lines.
    special = [r for r in records if r["device"] == device and r["dtype"] == dtype and r["label"]]
    colors = {"Adam": "tab:gray", "AdamW": "black", "AdaLo": "tab:blue", "AdamL": "tab:orange",
              "AdaLoss": "tab:green"}
    styles = {"fused": "-", "foreach": "--", "forloop": ":"}
    fig, (ax_t, ax_b) = plt.subplots(1, 2, figsize=(13, 5))
    for opt in OPTIMIZERS:
        for impl in IMPLS:
            pts = sorted((r["numel"], r["median_ms"], r["gb_per_s"]) for r in sel
                         if r["optimizer"] == opt and r["impl"] == impl)
            if not pts:
                continue
            x = [p[0] for p in pts]
            kw = dict(color=colors[opt], linestyle=styles[impl], marker="o", markersize=3,
                      label=f"{opt} {impl}")
            ax_t.plot(x, [p[1] for p in pts], **kw)
            ax_b.plot(x, [p[2] for p in pts], **kw)
    for i, r in enumerate(special):
        kw = dict(color=colors[r["optimizer"]], marker="*", markersize=9, linestyle="none",
                  alpha=1.0 if r["impl"] == "fused" else 0.35,
                  label="target config (28 tensors)" if i == 0 else None)
        ax_t.plot([r["numel"]], [r["median_ms"]], **kw)
        ax_b.plot([r["numel"]], [r["gb_per_s"]], **kw)
    if device in copy:
        ax_b.axhline(copy[device], color="red", linewidth=0.8, linestyle="-.", label="copy_ bandwidth")
    ax_t.set(xscale="log", yscale="log", xlabel="elements", ylabel="median step time (ms)",
             title=f"step time, {device} {dtype} {layout}")
    ax_b.set(xscale="log", xlabel="elements", ylabel="GB/s (ideal bytes of the rule / time)",
             title="achieved bandwidth")
    ax_b.legend(fontsize=7, ncol=2)
    for ax in (ax_t, ax_b):
        ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
