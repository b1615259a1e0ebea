"""The A/B readout: per arm, who was assigned, what they were offered and what came of
it, compared with the control; pure (frames in, a JSON-ready dict out).

Metrics, per arm:
- clients: distinct clients with a decision in the experiment (the unit of analysis);
- exposures: offers served; acceptance: offers accepted (or converted) / exposures;
- conversion: clients who converted on an offered product / clients, from `converted`
  feedback and, with snapshot outcomes, from later holdings (then over the clients whose
  outcome window has a snapshot, as any_conversion);
- any_conversion (with snapshot outcomes only): clients who acquired any product within
  the window / clients observed; the one metric a holdout (offered nothing) can be
  compared on.

Each variant's conversion is compared with the control's; the treated arms together
are compared with the holdout on any_conversion. Sample ratio: clients per arm against
the configured shares.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from recommender.experiment import HOLDOUT, Experiment
from recommender.outcome import SnapshotOutcomes
from recommender.significance import Rate, clients_needed, rate, sample_ratio, uplift


def readout(experiment: Experiment, decisions: pd.DataFrame, exposures: pd.DataFrame,
            feedback: pd.DataFrame, snapshots: SnapshotOutcomes | None = None,
            window_days: int = 30) -> dict[str, Any]:  # fmt: skip
    """decisions: request_id, customer_id, variant, model_name, model_version;
    exposures: request_id, customer_id, product_id, variant; feedback: request_id,
    product_id, outcome."""
    accepted = _pairs(feedback, ("accepted", "converted"))
    converted = _pairs(feedback, ("converted",))
    if snapshots is not None:
        converted |= snapshots.converted_offers
    arms: dict[str, dict[str, Any]] = {}
    rates: dict[str, dict[str, Rate]] = {}
    for arm in experiment.arms:
        mine = decisions[decisions["variant"] == arm]
        shown = exposures[exposures["variant"] == arm]
        clients = set(mine["customer_id"].astype(str))
        pairs = list(zip(shown["request_id"], shown["product_id"], strict=True))
        won = [p in converted for p in pairs]
        converting = set(shown["customer_id"].astype(str)[won]) if len(shown) else set()
        arm_rates = {"acceptance": rate(sum(p in accepted for p in pairs), len(pairs))}
        if snapshots is None:
            arm_rates["conversion"] = rate(len(converting), len(clients))
        else:  # only clients whose window has a snapshot can be told converted or not
            seen = clients & snapshots.observed_clients
            arm_rates["conversion"] = rate(len(converting & seen), len(seen))
            arm_rates["any_conversion"] = rate(len(seen & snapshots.acquired_clients), len(seen))
        rates[arm] = arm_rates
        models = mine[["model_name", "model_version"]].drop_duplicates()
        variant = experiment.variant(arm)
        arms[arm] = {
            "clients": len(clients), "requests": len(mine), "exposures": len(pairs),
            "offer_conversions": int(sum(won)),
            "models": [f"{n}/{v}" for n, v in models.itertuples(index=False)] if arm != HOLDOUT
            else [],
            "policy": variant.policy if variant else None,
            "objective": variant.objective if variant else None,
            **{name: r.to_dict() for name, r in arm_rates.items()},
        }  # fmt: skip
    control = experiment.control_name
    comparisons = []
    for variant in experiment.variants:
        if variant.name == control:
            continue
        for metric in ("conversion", "any_conversion"):
            if metric in rates[control]:
                comparisons.append(_compare(variant.name, control, metric, rates))
    holdout = None
    if HOLDOUT in rates and "any_conversion" in rates[HOLDOUT]:
        treated = [r["any_conversion"] for arm, r in rates.items() if arm != HOLDOUT]
        pooled = rate(sum(r.successes for r in treated), sum(r.trials for r in treated))
        rates["treated"] = {"any_conversion": pooled}
        holdout = _compare("treated", HOLDOUT, "any_conversion", rates)
    observed = {arm: a["clients"] for arm, a in arms.items()}
    ratio = sample_ratio(observed, experiment.shares())
    return {
        "experiment": experiment.to_dict(),
        "window_days": window_days,
        "outcomes_from_snapshots": snapshots is not None,
        "clients_total": sum(observed.values()),
        "arms": arms,
        "comparisons": comparisons,
        "treated_vs_holdout": holdout,
        "sample_ratio": ratio.to_dict(),
    }


def _compare(arm: str, control: str, metric: str,
             rates: dict[str, dict[str, Rate]]) -> dict[str, Any]:  # fmt: skip
    a, b = rates[arm][metric], rates[control][metric]
    result = uplift(a, b)
    needed = clients_needed(b.rate or 0.0, a.rate or 0.0)
    return {
        "variant": arm, "control": control, "metric": metric,
        "variant_rate": a.rate, "control_rate": b.rate,
        "clients": {arm: a.trials, control: b.trials},
        "clients_needed_per_arm_80pct_power": needed,
        **result.to_dict(),
    }  # fmt: skip


def _pairs(feedback: pd.DataFrame, outcomes: tuple[str, ...]) -> set[tuple[str, str]]:
    chosen = feedback[feedback["outcome"].isin(outcomes)]
    return set(zip(chosen["request_id"], chosen["product_id"], strict=True))


def render(report: dict[str, Any]) -> str:
    """The readout as text for a terminal."""
    lines = []
    exp = report["experiment"]
    lines.append(
        f"experiment {exp['name']} (channel {exp['channel']}, control "
        f"{exp['control']}, holdout {exp['holdout']:.0%}); "
        f"window {report['window_days']} days; outcomes from snapshots: "
        f"{'yes' if report['outcomes_from_snapshots'] else 'no (feedback only)'}"
    )
    lines.append("")
    lines.append(
        f"{'arm':<14}{'clients':>9}{'exposures':>11}{'accept rate (95% CI)':>28}"
        f"{'conversions':>13}{'conv. rate (95% CI)':>27}{'any-product rate':>26}"
    )
    for arm, a in report["arms"].items():
        anyc = _ci(a["any_conversion"]) if "any_conversion" in a else "-"
        lines.append(
            f"{arm:<14}{a['clients']:>9,}{a['exposures']:>11,}{_ci(a['acceptance']):>28}"
            f"{a['conversion']['successes']:>13,}{_ci(a['conversion']):>27}{anyc:>26}"
        )
    lines.append("")
    rows = list(report["comparisons"])
    if report["treated_vs_holdout"]:
        rows.append(report["treated_vs_holdout"])
    for c in rows:
        lines.append(_comparison_line(c))
    srm = report["sample_ratio"]
    lines.append("")
    if srm["p_value"] is None:
        lines.append("sample ratio: not enough arms or clients to check")
    elif srm["mismatch"]:
        lines.append("!" * 78)
        lines.append(f"!! SAMPLE RATIO MISMATCH: clients per arm {srm['observed']} vs expected "
                     f"{ {k: round(v) for k, v in srm['expected'].items()} } "
                     f"(chi-square p = {srm['p_value']:.2g}).")  # fmt: skip
        lines.append("!! Assignment or logging is broken; do not trust this readout.")
        lines.append("!" * 78)
    else:
        lines.append(f"sample ratio OK: chi-square p = {srm['p_value']:.3f} against the "
                     f"configured shares ({srm['observed']})")  # fmt: skip
    return "\n".join(lines)


def _ci(r: dict[str, Any]) -> str:
    if r["rate"] is None:
        return "-"
    return f"{r['rate']:.2%} [{r['ci_low']:.2%}, {r['ci_high']:.2%}]"


def _comparison_line(c: dict[str, Any]) -> str:
    head = f"{c['variant']} vs {c['control']} on {c['metric']}: "
    if c["difference"] is None:
        return head + "not enough clients to compare"
    rel = ""
    if c["relative"] is not None:
        rel = (
            f", relative {c['relative']:+.1%} [{c['relative_low']:+.1%}, {c['relative_high']:+.1%}]"
        )
    verdict = "significant" if c["significant"] else "not significant"
    needed = c["clients_needed_per_arm_80pct_power"]
    size = ", ".join(f"{k} n={v:,}" for k, v in c["clients"].items())
    power = f"; ~{needed:,} clients per arm give 80% power for this difference" if needed else ""
    interval = ""
    if c["low"] is not None:
        interval = f" [{c['low'] * 100:+.2f}, {c['high'] * 100:+.2f}]"
    return (
        head + f"{c['difference'] * 100:+.2f} pp{interval}"
        f"{rel}; p = {c['p_value']:.3g} ({verdict} at 5%; {size}){power}"
    )
