"""Plots of evaluation tables: AbsGain (or R-Score) against eps per model, and the
robustness / accuracy trade-off scatter (Meleshin et al., Figure 3)."""
from __future__ import annotations

import os

# Figures are drawn without pyplot: no global backend is switched and no window opens,
# so importing this module leaves a notebook's inline plots alone.
from matplotlib.figure import Figure

from .evaluation import Table

__all__ = ["plot_curves", "plot_tradeoff"]


def plot_curves(table: Table, path: str | os.PathLike, metric: str = "abs_gain") -> None:
    """One line per (model, eps-swept attack): ``metric`` against eps (x 1/255)."""
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    keys = dict.fromkeys((r["model"], r["attack"]) for r in table.rows if r.get("eps") is not None)
    for model, attack in keys:
        points = sorted((r["eps"], r[metric]) for r in table.rows if r["model"] == model and r["attack"] == attack)
        if len(points) > 1:
            ax.plot(*zip(*points), marker="o", label=f"{model} {attack}")
    ax.set_xlabel("eps (x 1/255)")
    ax.set_ylabel({"abs_gain": "AbsGain (lower is more robust)", "r_score": "R-Score (higher is more robust)"}.get(metric, metric))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def plot_tradeoff(table: Table, path: str | os.PathLike, attack: str = "pgd-1", accuracy: str = "srocc") -> None:
    """Each model as a point: accuracy (x) against the attack's AbsGain AUC (y)."""
    key = f"{attack} abs_gain_auc"
    points = [(s["model"], s.get(accuracy), s.get(key)) for s in table.summaries]
    points = [p for p in points if p[1] is not None and p[2] is not None]
    if not points:
        raise ValueError(f"no model has both {accuracy!r} and {key!r}: evaluate with MOS and the {attack} sweep")
    fig = Figure(figsize=(5, 4))
    ax = fig.subplots()
    for name, x, y in points:
        ax.scatter(x, y)
        ax.annotate(name, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xlabel(f"{accuracy.upper()} (higher is better)")
    ax.set_ylabel(f"{attack.upper()} AbsGain AUC (lower is more robust)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
