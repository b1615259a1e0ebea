"""Evaluation protocols: how data is split into training examples and test queries.

A training example is a customer's state *before* an acquisition with the acquired
products as targets. `temporal` takes acquisitions between consecutive snapshots strictly
before the test snapshot; `leave-one-out` hides one held product of a seeded 20% of
customers at one snapshot and treats every other held product as an acquisition.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from recommender import columns as C
from recommender.dataset import BankData
from recommender.errors import ConfigError
from recommender.state import CustomerState, HoldingsCube, StateOptions

TEMPORAL = "temporal"
LEAVE_ONE_OUT = "leave-one-out"
AUTO = "auto"
PROTOCOLS = (AUTO, TEMPORAL, LEAVE_ONE_OUT)
CALIBRATION_ROWS = 100_000
VALIDATION_SEED = 7


@dataclass(frozen=True)
class Examples:
    """States with the products acquired next (`targets`, bool, one row per state)."""

    state: CustomerState
    targets: np.ndarray

    def __len__(self) -> int:
        return len(self.state)


@dataclass(frozen=True)
class Split:
    protocol: str
    test_date: pd.Timestamp
    train: Examples
    test: Examples
    n_candidates: int  # customers who could have been evaluated
    cube: HoldingsCube  # everything the models may see (nothing from the test truth)
    calibration: Examples  # held-out pairs for probability calibration (incl. non-acquirers)


def acquisition_examples(cube: HoldingsCube, options: StateOptions, start: int = 1) -> Examples:
    """States at t-1 with the products acquired at t, for every t >= start in the cube."""
    states, targets = [], []
    for t in range(max(start, 1), len(cube.dates)):
        gained = cube.acquisitions(t)
        rows = np.flatnonzero(gained.any(axis=1))
        states.append(cube.state_at(t - 1, options).take(rows))
        targets.append(gained[rows])
    if not states:
        raise ConfigError("temporal training needs at least 2 snapshots before the test date")
    return Examples(CustomerState.concat(states), np.concatenate(targets))


def temporal_split(
    data: BankData,
    test_date: pd.Timestamp | None = None,
    options: StateOptions | None = None,
    seed: int = 42,
) -> Split:
    options = options or StateOptions()
    full = HoldingsCube.from_data(data)
    t = _snapshot_index(full.dates, test_date)
    if t < 2:
        raise ConfigError(
            f"temporal protocol needs 3+ snapshots up to the test date (have {t + 1}); "
            "use --protocol leave-one-out for single-snapshot data"
        )
    history = full.head(t)  # snapshots strictly before the test snapshot
    train = acquisition_examples(history, options)
    truth = full.held[t] & ~full.held[t - 1]
    rows = np.flatnonzero(truth.any(axis=1))
    before = history.state_at(t - 1, options)
    test = Examples(before.take(rows), truth[rows])
    sample = np.random.default_rng(seed).permutation(len(before))[:CALIBRATION_ROWS]
    calibration = Examples(before.take(np.sort(sample)), truth[np.sort(sample)])
    return Split(TEMPORAL, full.dates[t], train, test, len(full.customer_ids), history, calibration)


def leave_one_out_split(
    data: BankData,
    test_date: pd.Timestamp | None = None,
    options: StateOptions | None = None,
    holdout: float = 0.2,
    seed: int = 42,
) -> Split:
    options = options or StateOptions()
    full = HoldingsCube.from_data(data)
    t = _snapshot_index(full.dates, test_date)
    cube = full.head(t + 1)
    state = cube.state_at(t, options)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(state))
    is_test = np.zeros(len(state), dtype=bool)
    is_test[order[: round(holdout * len(state))]] = True
    test_rows = np.flatnonzero(is_test & state.held.any(axis=1))
    hidden = _pick_held(state.held[test_rows], rng)
    truth = np.zeros((len(test_rows), state.held.shape[1]), dtype=bool)
    truth[np.arange(len(test_rows)), hidden] = True
    test = Examples(state.take(test_rows).without(hidden), truth)
    train = held_product_examples(state.take(np.flatnonzero(~is_test)))
    return Split(LEAVE_ONE_OUT, full.dates[t], train, test, int(is_test.sum()), cube, test)


def held_product_examples(state: CustomerState) -> Examples:
    """Each held product in turn as the target, the other holdings as the state."""
    rows, products = np.nonzero(state.held)
    targets = np.zeros((len(rows), state.held.shape[1]), dtype=bool)
    targets[np.arange(len(rows)), products] = True
    return Examples(state.take(rows).without(products), targets)


def refit_examples(
    data: BankData,
    protocol: str,
    options: StateOptions | None = None,
    cube: HoldingsCube | None = None,
) -> Examples:
    """All training examples the data holds, the test snapshot included (for the final fit).
    `cube`: the data's holdings cube, if the caller has built it already."""
    options = options or StateOptions()
    cube = cube or HoldingsCube.from_data(data)
    if resolve(protocol, data) == TEMPORAL:
        return acquisition_examples(cube, options)
    return held_product_examples(cube.state_at(len(cube.dates) - 1, options))


def resolve(protocol: str, data: BankData) -> str:
    if protocol not in PROTOCOLS:
        raise ConfigError(f"unknown protocol {protocol!r}; use one of {', '.join(PROTOCOLS)}")
    if protocol == AUTO:
        return TEMPORAL if len(data.snapshots) >= 3 else LEAVE_ONE_OUT
    return protocol


def validation_split(
    data: BankData, protocol: str = AUTO, options: StateOptions | None = None
) -> Split:
    """A split for tuning that never touches the evaluation split's test truth: temporal
    tests on the snapshot before the test snapshot; leave-one-out drops the evaluation's
    held-out customers and holds out others with another seed."""
    options = options or StateOptions()
    if resolve(protocol, data) == TEMPORAL:
        return temporal_split(data.until(data.snapshots[-2]), options=options)
    evaluation = leave_one_out_split(data, options=options)
    keep = ~data.customers[C.CUSTOMER_ID].isin(set(evaluation.test.state.customer_ids))
    customers = data.customers[keep]
    holdings = data.holdings[data.holdings[C.CUSTOMER_ID].isin(set(customers[C.CUSTOMER_ID]))]
    rest = BankData(customers, holdings, data.products, data.directory)
    return leave_one_out_split(rest, options=options, seed=VALIDATION_SEED)


def split(
    data: BankData,
    protocol: str = AUTO,
    test_date: pd.Timestamp | None = None,
    options: StateOptions | None = None,
) -> Split:
    if resolve(protocol, data) == TEMPORAL:
        return temporal_split(data, test_date, options)
    return leave_one_out_split(data, test_date, options)


def _pick_held(held: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One uniformly random held product per row."""
    keys = np.where(held, rng.random(held.shape), -1.0)
    return np.asarray(keys.argmax(axis=1))


def _snapshot_index(dates: list[pd.Timestamp], test_date: pd.Timestamp | None) -> int:
    if test_date is None:
        return len(dates) - 1
    if test_date not in dates:
        shown = ", ".join(d.date().isoformat() for d in dates[-5:])
        raise ConfigError(f"test date {test_date.date()} is not a snapshot (latest: {shown})")
    return dates.index(test_date)
