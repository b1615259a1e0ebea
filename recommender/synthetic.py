"""A synthetic retail bank that behaves like the real one (the embedded default data).

Customers get a segment (top / individual / student / other) with the calibration table's
shares, ages, incomes and tenures, plus sex, region, channel and a risk tolerance. The
first snapshot's holdings are drawn product by product so that each segment's
penetration matches the real Santander table in expectation. Every later month, held
products are dropped with a product-specific churn rate, and each product not held is
acquired with a probability that depends only on things a bank can observe:

    logit P(acquire p) = a[segment, p] + attributes . B[:, p] + held . W[:, p]
                         + reacquire[p] * (dropped p in the last 3 months)

`a` is re-solved every month so that expected acquisitions balance expected drops per
segment and product, which keeps the penetration stable at the calibrated level. `W`
holds the product affinities (payroll with pensions, payroll account and direct debit;
funds with securities; ...), `B` the attribute effects (age, income, risk tolerance,
digital channel). The last month's acquisition probabilities are the ground truth that
the oracle ranks by.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from recommender import columns as C
from recommender.catalog import bank_catalog, penetration_table, segment_table
from recommender.storage import write_tables_atomically
from recommender.synthetic_params import (
    AGE_KNOTS,
    CHANNELS,
    HOLDING_ORDER,
    REGIONS,
    attribute_effects,
    churn_rates,
    covariates,
    latent_loadings,
    product_affinities,
    reacquire_boost,
)

SEGMENT_NAMES = ("top", "individual", "student", "other")
OTHER_PENETRATION_SCALE = 0.26  # 'other' holds 0.365 products vs 1.42 overall
RECENT_DROP_MONTHS = 3
CALIBRATION_SAMPLE = 100_000
Float = np.float32


@dataclass(frozen=True)
class SyntheticBank:
    """Generated tables: customers, holdings as index arrays, last-month truth."""

    customers: pd.DataFrame
    product_ids: list[str]
    snapshot_dates: list[pd.Timestamp]
    held: np.ndarray  # (months, customers, products) bool
    truth: np.ndarray  # (customers, products) float32, last month's acquisition prob.
    next_truth: np.ndarray | None = None  # the month after the last snapshot (rehearsals)

    @property
    def acquisition_rate(self) -> list[float]:
        """Share of customers acquiring at least one product, per month after the first."""
        gained = self.held[1:] & ~self.held[:-1]
        return [float(x) for x in gained.any(axis=2).mean(axis=1)]


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return np.asarray(1.0 / (1.0 + np.exp(-np.clip(x, -30, 30))), dtype=Float)


def _solve_intercepts(
    x: np.ndarray, groups: np.ndarray, n_groups: int, target: np.ndarray, mask: np.ndarray
) -> np.ndarray:
    """Per group g, the b with sum over masked rows of sigmoid(b + x) == target[g]."""
    count = np.bincount(groups, weights=mask, minlength=n_groups)
    feasible = (target > 0) & (count > 0)
    rate = np.where(feasible, target / np.maximum(count, 1), 0.5).clip(1e-9, 1 - 1e-6)
    mean_x = np.bincount(groups, weights=x * mask, minlength=n_groups) / np.maximum(count, 1)
    b = np.log(rate / (1 - rate)) - mean_x
    for _ in range(25):
        s = _sigmoid(b[groups] + x)
        value = np.bincount(groups, weights=s * mask, minlength=n_groups) - target
        slope = np.bincount(groups, weights=s * (1 - s) * mask, minlength=n_groups)
        b = b - np.clip(value / np.maximum(slope, 1e-12), -4, 4)
    return np.where(feasible, b, -30.0)


def _sample_customers(n: int, rng: np.random.Generator, first: pd.Timestamp) -> pd.DataFrame:
    seg_table = segment_table().loc[list(SEGMENT_NAMES)]
    shares = seg_table["share"].to_numpy() / seg_table["share"].sum()
    segment = rng.choice(len(SEGMENT_NAMES), size=n, p=shares)
    age = np.empty(n)
    income = np.empty(n)
    tenure = np.empty(n)
    for s, name in enumerate(SEGMENT_NAMES):
        rows = segment == s
        k = int(rows.sum())
        row = seg_table.loc[name]
        xs, ys = AGE_KNOTS[name]
        age[rows] = np.interp(rng.random(k), xs, ys)
        med, p90 = row["income_median"], row["income_p90"]
        income[rows] = np.interp(
            rng.random(k), [0, 0.1, 0.5, 0.9, 1], [0.2 * med, 0.5 * med, med, p90, 3 * p90]
        )
        tmed = max(float(seg_table["tenure_months_median"].loc[name]), 2.0)
        tenure[rows] = np.interp(
            rng.random(k), [0, 0.1, 0.5, 0.9, 1], [0, 0.15 * tmed, tmed, 2.2 * tmed, 3 * tmed]
        )
    tenure = np.minimum(tenure, np.maximum(age - 16, 0) * 12).round()
    income_z = (np.log(income) - np.log(100_000)) / 0.5
    risk_latent = 0.6 * income_z + 0.4 * (segment == 0) - 0.02 * (age - 45) + rng.normal(0, 0.8, n)
    risk = np.digitize(risk_latent, [-1.2, -0.4, 0.4, 1.2]) + 1.0
    risk[rng.random(n) < 0.12] = np.nan
    young = age < 30
    channel_p = np.where(young[:, None], [0.55, 0.2, 0.15, 0.1], [0.15, 0.4, 0.3, 0.15])
    channel = (rng.random(n)[:, None] > np.cumsum(channel_p, axis=1)).sum(axis=1)
    region_w = 1.0 / np.arange(1, len(REGIONS) + 1)
    birth = first - pd.to_timedelta(np.round(age * 365.25), unit="D")
    joined = first - pd.to_timedelta(np.round(tenure * 30.44), unit="D")
    return pd.DataFrame(
        {
            C.CUSTOMER_ID: np.char.add("C", np.char.zfill(np.arange(1, n + 1).astype(str), 7)),
            C.SEGMENT: np.asarray(SEGMENT_NAMES, dtype=object)[segment],
            "sex": np.where(rng.random(n) < 0.46, "H", "V").astype(object),
            "birth_date": birth.normalize(),
            "join_date": joined.normalize(),
            "income": income.round(2),
            "risk_tolerance": risk,
            "region": np.asarray(REGIONS, dtype=object)[
                rng.choice(len(REGIONS), size=n, p=region_w / region_w.sum())
            ],
            "channel": np.asarray(CHANNELS, dtype=object)[channel],
        }
    )


def _penetration_targets(product_ids: list[str]) -> np.ndarray:
    """(segments, products) share of customers holding each product."""
    table = penetration_table().loc[product_ids]
    other = table["all"].to_numpy() * OTHER_PENETRATION_SCALE
    rows = [table[name].to_numpy() for name in SEGMENT_NAMES[:3]] + [other]
    return np.vstack(rows).astype(float)


def _initial_holdings(
    static: np.ndarray, segment: np.ndarray, product_ids: list[str], rng: np.random.Generator
) -> np.ndarray:
    """First snapshot, drawn product by product (drivers first), calibrated per segment."""
    n, n_products = static.shape
    targets = _penetration_targets(product_ids)
    seg_counts = np.bincount(segment, minlength=len(SEGMENT_NAMES))
    affinity = product_affinities(product_ids)
    taste = rng.normal(size=(n, 2)).astype(Float) @ latent_loadings(product_ids)
    held = np.zeros((n, n_products), dtype=bool)
    index = {p: i for i, p in enumerate(product_ids)}
    for pid in HOLDING_ORDER:
        p = index[pid]
        x = static[:, p] + taste[:, p] + held.astype(Float) @ affinity[:, p]
        b = _solve_intercepts(
            x, segment, len(SEGMENT_NAMES), targets[:, p] * seg_counts, np.ones(n)
        )
        held[:, p] = rng.random(n, dtype=Float) < _sigmoid(b[segment] + x)
    return held


class _Dynamics:
    """One month of churn and acquisition; keeps penetration stationary per segment."""

    def __init__(
        self,
        static: np.ndarray,
        segment: np.ndarray,
        product_ids: list[str],
        rng: np.random.Generator,
    ) -> None:
        self.static = static
        self.segment = segment
        self.rng = rng
        self.affinity = product_affinities(product_ids)
        self.churn = churn_rates(product_ids)
        self.reacquire = reacquire_boost(product_ids)
        n = static.shape[0]
        self.sample = np.sort(rng.choice(n, size=min(n, CALIBRATION_SAMPLE), replace=False))
        self.since_drop = np.full(static.shape, RECENT_DROP_MONTHS + 1, dtype=np.int8)

    def probabilities(self, held: np.ndarray) -> np.ndarray:
        """P(acquire p next month | state), zero for held products."""
        recent = (self.since_drop <= RECENT_DROP_MONTHS).astype(Float)
        x = self.static + held.astype(Float) @ self.affinity + recent * self.reacquire
        s = self.sample
        n_seg = len(SEGMENT_NAMES)
        intercepts = np.empty((n_seg, held.shape[1]))
        for p in range(held.shape[1]):
            holders = np.bincount(self.segment[s], weights=held[s, p], minlength=n_seg)
            intercepts[:, p] = _solve_intercepts(
                x[s, p], self.segment[s], n_seg, holders * self.churn[p], ~held[s, p]
            )
        logits = intercepts.astype(Float)[self.segment] + x
        return np.where(held, Float(0), _sigmoid(logits))

    def step(self, held: np.ndarray, probability: np.ndarray) -> np.ndarray:
        n, n_products = held.shape
        acquire = self.rng.random((n, n_products), dtype=Float) < probability
        drop = held & (self.rng.random((n, n_products), dtype=Float) < self.churn)
        self.since_drop = np.where(drop, 1, np.minimum(self.since_drop + 1, 127)).astype(np.int8)
        return (held & ~drop) | acquire


def generate(
    n_customers: int,
    n_months: int,
    seed: int,
    end_date: str = "2026-10-31",
    progress: Callable[[int], None] | None = None,
    next_month: bool = False,
) -> SyntheticBank:
    """Generate a synthetic bank; deterministic for a given seed. `next_month` also
    gives the true acquisition probabilities of the month after the last snapshot
    (what an A/B rehearsal draws client decisions from); the data is the same."""
    rng = np.random.default_rng(seed)
    dates = list(pd.date_range(end=pd.Timestamp(end_date), periods=n_months, freq="ME"))
    customers = _sample_customers(n_customers, rng, dates[0])
    product_ids = bank_catalog()[C.PRODUCT_ID].tolist()
    segment = pd.Categorical(customers[C.SEGMENT], categories=SEGMENT_NAMES).codes.astype(int)
    static = covariates(customers, dates[0]) @ attribute_effects(product_ids)
    static = static.astype(Float)
    held = np.zeros((n_months, n_customers, len(product_ids)), dtype=bool)
    held[0] = _initial_holdings(static, segment, product_ids, rng)
    if progress:
        progress(1)
    dynamics = _Dynamics(static, segment, product_ids, rng)
    probability = np.zeros(static.shape, dtype=Float)
    for t in range(1, n_months):
        probability = dynamics.probabilities(held[t - 1])
        held[t] = dynamics.step(held[t - 1], probability)
        if progress:
            progress(1)
    upcoming = dynamics.probabilities(held[-1]) if next_month else None
    return SyntheticBank(customers, product_ids, dates, held, probability, upcoming)


def write_bank(bank: SyntheticBank, out_dir: Path, fmt: str = "parquet") -> list[Path]:
    """Write the bank as a data directory (+ truth/), atomically: all files or none."""
    out_dir = Path(out_dir)
    months, customer_idx, product_idx = np.nonzero(bank.held)
    ids = pa.array(bank.customers[C.CUSTOMER_ID].to_numpy(dtype=str))
    products = pa.array(bank.product_ids)
    dates = pa.array([d.date() for d in bank.snapshot_dates], type=pa.date32())
    holdings = pa.table(
        {
            C.CUSTOMER_ID: pa.DictionaryArray.from_arrays(customer_idx.astype(np.int32), ids),
            C.PRODUCT_ID: pa.DictionaryArray.from_arrays(product_idx.astype(np.int8), products),
            C.SNAPSHOT_DATE: dates.take(pa.array(months.astype(np.int32))),
        }
    )
    c_idx, p_idx = np.nonzero(np.ones(bank.truth.shape, dtype=bool))
    truth = pa.table(
        {
            C.CUSTOMER_ID: pa.DictionaryArray.from_arrays(c_idx.astype(np.int32), ids),
            C.PRODUCT_ID: pa.DictionaryArray.from_arrays(p_idx.astype(np.int8), products),
            C.PROBABILITY: pa.array(bank.truth.ravel()),
        }
    )
    tables = {
        f"{C.CUSTOMERS}.{fmt}": pa.Table.from_pandas(bank.customers, preserve_index=False),
        f"{C.HOLDINGS}.{fmt}": holdings,
        f"{C.PRODUCTS}.{fmt}": pa.Table.from_pandas(bank_catalog(), preserve_index=False),
        f"{C.TRUTH_DIR}/{C.TRUTH_FILE}": truth,
    }
    if bank.next_truth is not None:
        tables[f"{C.TRUTH_DIR}/{C.NEXT_TRUTH_FILE}"] = truth.set_column(
            2, C.PROBABILITY, pa.array(bank.next_truth.ravel())
        )
    return write_tables_atomically(tables, out_dir)
