"""The speed/agreement frontier of a precision search, as a PNG."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ..io.images import save_figure

if TYPE_CHECKING:
    from .search import PlanSearch


def plot_frontier(search: PlanSearch, path: str | Path, title: str) -> Path:
    """Two panels against the median forward latency: held-out top-1 agreement with PyTorch fp32,
    and the logits' drift from it (log scale); one point per plan (the uniform fp32, mixed and
    int8 bundles as gray squares, the chosen plan as a star), the frontier of agreement joined,
    and the budget's bounds drawn across."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.4), dpi=110)
    uniform = {id(c) for c in search.uniform}
    shown = search.frontier()
    front = search.pareto()
    held = search.images["held_out"]["images"]
    panels = [(axes[0], lambda c: c.held_out.agreement, f"top-1 agreement with PyTorch fp32 ({held} held-out images)",
               search.budget.agreement),
              (axes[1], lambda c: max(c.held_out.logits_p99, 1e-9), "logits rel. L2 to PyTorch fp32, p99 over images",
               search.budget.logits)]
    for ax, value, label, bound in panels:
        for c in shown:
            marker, color, size = ("s", "tab:gray", 40) if id(c) in uniform else ("o", "tab:blue", 40)
            if c is search.chosen:
                marker, color, size = "*", "tab:red", 120
            ax.scatter(c.median_ms, value(c), marker=marker, color=color, s=size, zorder=3)
            ax.annotate(c.label, (c.median_ms, value(c)), textcoords="offset points", xytext=(5, 4), fontsize=7)
        ax.plot([c.median_ms for c in front], [value(c) for c in front], color="tab:blue", alpha=0.5, zorder=2,
                label="frontier: no plan both faster and closer")
        if bound is not None:
            ax.axhline(bound, color="tab:red", linestyle="--", linewidth=1, label=f"budget {search.budget}")
        ax.set_xlabel(f"forward median latency, batch {search.bench_batch}, {search.backend} (ms)")
        ax.set_ylabel(label, fontsize=8)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    axes[1].set_yscale("log")
    fig.suptitle(title, fontsize=10)
    return save_figure(fig, path)
