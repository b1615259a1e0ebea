"""PNG charts for the MLflow run: quality per model, per tier, per product."""

from __future__ import annotations

from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.figure import Figure

HIGHLIGHT = "#c0392b"
OTHER = "#7f8c8d"


def map_by_model(report: dict[str, Any]) -> Figure:
    key = f"map@{report['k']}"
    names = list(report["models"])
    values = [report["models"][n][key] for n in names]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    bars = ax.barh(names, values, color=[HIGHLIGHT if n == "hybrid" else OTHER for n in names])
    ax.bar_label(bars, fmt="%.3f", padding=3)
    ax.set_xlabel(key)
    ax.set_xlim(0, max(values) * 1.15)
    ax.set_title(
        f"{key} by model ({report['protocol']}, {report['n_customers_evaluated']:,} customers)"
    )
    ax.invert_yaxis()
    fig.tight_layout()
    return fig


def map_by_tier(report: dict[str, Any]) -> Figure:
    key = f"map@{report['k']}"
    tiers = list(report["tiers"])
    models = list(report["models"])
    width = 0.8 / max(len(models), 1)
    fig, ax = plt.subplots(figsize=(8, 3.8))
    top = 0.0
    for i, model in enumerate(models):
        values = [report["tiers"][t].get(model, {}).get(key, 0.0) for t in tiers]
        top = max(top, *values)
        ax.bar([x + i * width for x in range(len(tiers))], values, width, label=model)
    ax.set_ylim(0, top * 1.3)
    ax.set_xticks([x + width * (len(models) - 1) / 2 for x in range(len(tiers))])
    ax.set_xticklabels([f"tier {t}" for t in tiers])
    ax.set_ylabel(key)
    ax.set_title(f"{key} by value tier (A = top 20% of clients by value)")
    ax.legend(fontsize=8, ncols=len(models), loc="upper center")
    fig.tight_layout()
    return fig


def hit_rate_by_product(hit_rates: dict[str, dict[str, float]], names: dict[str, str],
                        k: int) -> Figure:  # fmt: skip
    """Share of each product's acquisitions caught in the top k: hybrid vs best baseline."""
    hybrid = hit_rates.get("hybrid", {})
    products = sorted(hybrid, key=lambda p: hybrid[p])
    fig, ax = plt.subplots(figsize=(7, max(3.0, 0.28 * len(products) + 1)))
    y = range(len(products))
    ax.barh([i + 0.2 for i in y], [hybrid[p] for p in products], 0.4, color=HIGHLIGHT,
            label="hybrid")  # fmt: skip
    for model in ("cooccurrence", "popularity"):
        if model in hit_rates:
            ax.barh([i - 0.2 for i in y], [hit_rates[model].get(p, 0.0) for p in products], 0.4,
                    color=OTHER, label=model)  # fmt: skip
            break
    ax.set_yticks(list(y))
    ax.set_yticklabels([names.get(p, p) for p in products], fontsize=8)
    ax.set_xlabel(f"share of acquisitions in the top {k}")
    ax.set_xlim(0, 1)
    ax.legend(fontsize=8)
    ax.set_title("Hit rate by product")
    fig.tight_layout()
    return fig


def experiment_readout(report: dict[str, Any]) -> Figure:
    """Per arm: acceptance, conversion and (with snapshots) any-product conversion, each
    with its 95% interval; the control in red. The holdout, offered nothing, appears only
    in the any-product panel."""
    arms = list(report["arms"])
    metrics = [m for m in ("acceptance", "conversion", "any_conversion")
               if all(m in report["arms"][a] for a in arms)]  # fmt: skip
    control = report["experiment"]["control"]
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.6), squeeze=False)
    for ax, metric in zip(axes[0], metrics, strict=True):
        values, low, high = [], [], []
        shown = arms if metric == "any_conversion" else [a for a in arms if a != "holdout"]
        for arm in shown:
            r = report["arms"][arm][metric]
            v = r["rate"] if r["rate"] is not None else 0.0
            values.append(100 * v)
            low.append(100 * (v - (r["ci_low"] if r["ci_low"] is not None else v)))
            high.append(100 * ((r["ci_high"] if r["ci_high"] is not None else v) - v))
        colors = [HIGHLIGHT if a == control else OTHER for a in shown]
        ax.bar(shown, values, yerr=[low, high], capsize=4, color=colors)
        ax.set_title(metric.replace("_", " ") + " (%, 95% CI)")
        ax.tick_params(axis="x", rotation=20)
    exp = report["experiment"]
    fig.suptitle(f"experiment {exp['name']}: {report['clients_total']:,} clients")
    fig.tight_layout()
    return fig


def close(figure: Figure) -> None:
    """Free a figure once logged (pyplot keeps every open figure alive)."""
    plt.close(figure)
