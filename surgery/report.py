"""Plots of evaluation tables: AbsGain (or R-Score) against eps per model, and the
robustness / accuracy trade-off scatter (Meleshin et al., Figure 3)."""
from __future__ import annotations

import os

# Figures are drawn without pyplot: no global backend is switched and no window opens,
# so importing this module leaves a notebook's inline plots alone.
from matplotlib.figure import Figure

from .evaluation import Table

__all__ = ["plot_curves", "plot_tradeoff", "strongest_attack"]


def _colours(models: list[str]) -> dict[str, str]:
    """One colour per model, the same in every panel and every plot of a table."""
    return {model: f"C{i % 10}" for i, model in enumerate(models)}


def plot_curves(table: Table, path: str | os.PathLike, metric: str = "abs_gain") -> Figure:
    """One panel per eps-swept attack, one line per model (its colour the same in every
    panel): ``metric`` against eps (x 1/255). Saved to ``path``; the figure is returned."""
    with_eps = [r for r in table.rows if r.get("eps") is not None]
    budgets: dict[str, set] = {}
    for row in with_eps:
        budgets.setdefault(row["attack"], set()).add(row["eps"])
    attacks = [attack for attack, values in budgets.items() if len(values) > 1]  # UAP runs at one eps: no curve
    swept = [r for r in with_eps if r["attack"] in attacks]
    if not attacks:
        raise ValueError("the table has no attack swept over eps (pgd-K, pgd-K-rs, apgd): nothing to plot against eps")
    colours = _colours(list(dict.fromkeys(r["model"] for r in swept)))
    columns = min(len(attacks), 3)
    rows = -(-len(attacks) // columns)
    fig = Figure(figsize=(4 * columns, 3.4 * rows))
    axes = fig.subplots(rows, columns, squeeze=False, sharey=True)
    label = {"abs_gain": "AbsGain (lower is more robust)", "r_score": "R-Score (higher is more robust)"}.get(metric, metric)
    for ax, attack in zip(axes.flat, attacks):
        for model, colour in colours.items():
            points = sorted((r["eps"], r[metric]) for r in swept if r["model"] == model and r["attack"] == attack)
            if points:
                ax.plot(*zip(*points), marker="o", color=colour, label=model)
        ax.set_title(attack)
        ax.set_xlabel("eps (x 1/255)")
        ax.grid(alpha=0.3)
    for ax in axes[:, 0]:
        ax.set_ylabel(label)
    for ax in list(axes.flat)[len(attacks):]:
        ax.set_visible(False)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 4), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.1 if rows == 1 else 0.06, 1, 1))
    fig.savefig(path, dpi=120)
    return fig


def strongest_attack(table: Table) -> str:
    """The attack with the largest mean AbsGain AUC over the table's models."""
    suffix = " abs_gain_auc"
    gains: dict[str, list[float]] = {}
    for summary in table.summaries:
        for key, value in summary.items():
            if key.endswith(suffix) and value is not None:
                gains.setdefault(key[: -len(suffix)], []).append(float(value))
    if not gains:
        raise ValueError("the table has no AbsGain AUC: evaluate with an attack swept over eps (pgd-K, apgd)")
    return max(gains, key=lambda attack: sum(gains[attack]) / len(gains[attack]))


def plot_tradeoff(table: Table, path: str | os.PathLike, attack: str | None = None, accuracy: str = "srocc") -> Figure:
    """Each model as a point: accuracy (x) against an attack's AbsGain AUC (y); by default the
    strongest attack that was run (:func:`strongest_attack`), named in the title."""
    strongest = attack is None
    attack = strongest_attack(table) if strongest else attack
    key = f"{attack} abs_gain_auc"
    points = [(s["model"], s.get(accuracy), s.get(key)) for s in table.summaries]
    points = [p for p in points if p[1] is not None and p[2] is not None]
    if not points:
        raise ValueError(f"no model has both {accuracy!r} and {key!r}: evaluate with MOS and the {attack} sweep")
    colours = _colours([s["model"] for s in table.summaries])
    fig = Figure(figsize=(5, 4))
    ax = fig.subplots()
    for name, x, y in points:
        ax.scatter(x, y, color=colours[name])
        ax.annotate(name, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xlabel(f"{accuracy.upper()} (higher is better)")
    ax.set_ylabel(f"{attack} AbsGain AUC (lower is more robust)")
    ax.set_title(f"{attack}" + (" (the strongest attack run)" if strongest else ""))
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return fig
