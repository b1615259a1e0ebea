"""What is known about customers at a snapshot: the input of every model.

`HoldingsCube` turns the holdings table into a dense (snapshot, customer, product) array;
`CustomerState` is a batch of customers as of a snapshot: attributes, what they hold,
what they recently dropped, how long they have held each product, value tier, segment.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from recommender import columns as C
from recommender.dataset import BankData
from recommender.history import History
from recommender.tier import ValueTier, segment_labels

CENSORED = -1  # held since the first snapshot on record: acquisition date unknown


@dataclass(frozen=True)
class StateOptions:
    """How states are derived from raw data (round-trips through `to_dict`)."""

    drop_window: int = 3
    value_col: str | None = None
    segment_col: str | None = None

    def to_dict(self) -> dict[str, object]:
        return {
            "drop_window": self.drop_window,
            "value_col": self.value_col,
            "segment_col": self.segment_col,
        }


@dataclass(frozen=True)
class CustomerState:
    """A batch of customers as of a snapshot; all arrays have one row per customer."""

    customer_ids: np.ndarray
    as_of: np.ndarray  # datetime64[ns]
    held: np.ndarray  # bool (n, products)
    dropped: np.ndarray  # bool (n, products)
    held_months: np.ndarray  # int16 (n, products): months since acquired, CENSORED, 0 if not held
    attributes: pd.DataFrame
    tier: np.ndarray  # "A" | "B" | "C"
    segment: np.ndarray
    tiering: ValueTier | None = None  # recomputes `tier` when holdings change
    history: History | None = None  # None: nothing before this snapshot is on record

    def __len__(self) -> int:
        return len(self.customer_ids)

    @property
    def past(self) -> History:
        """The history, empty when none is on record."""
        if self.history is None:
            return History.empty(len(self), self.held.shape[1])
        return self.history

    def take(self, rows: np.ndarray) -> CustomerState:
        return CustomerState(
            self.customer_ids[rows],
            self.as_of[rows],
            self.held[rows],
            self.dropped[rows],
            self.held_months[rows],
            self.attributes.iloc[rows].reset_index(drop=True),
            self.tier[rows],
            self.segment[rows],
            self.tiering,
            None if self.history is None else self.history.take(rows),
        )

    def without(self, products: np.ndarray) -> CustomerState:
        """The same customers with product `products[i]` removed from row i's holdings."""
        rows = np.arange(len(self))
        held = self.held.copy()
        months = self.held_months.copy()
        held[rows, products] = False
        months[rows, products] = 0
        tier = self.tier
        if self.tiering is not None:  # breadth-based value must not see the removed product
            tier = self.tiering.transform(self.attributes, held, months)
        history = None if self.history is None else self.history.without(products)
        return replace(self, held=held, held_months=months, tier=tier, history=history)

    @staticmethod
    def concat(states: list[CustomerState]) -> CustomerState:
        return CustomerState(
            np.concatenate([s.customer_ids for s in states]),
            np.concatenate([s.as_of for s in states]),
            np.concatenate([s.held for s in states]),
            np.concatenate([s.dropped for s in states]),
            np.concatenate([s.held_months for s in states]),
            pd.concat([s.attributes for s in states], ignore_index=True),
            np.concatenate([s.tier for s in states]),
            np.concatenate([s.segment for s in states]),
            states[0].tiering if states else None,
            History.concat([s.past for s in states]) if states else None,
        )


@dataclass(frozen=True)
class HoldingsCube:
    """Dense holdings: `held[t, c, p]` for snapshot t, customer c, product p."""

    data: BankData
    customer_ids: np.ndarray
    dates: list[pd.Timestamp]
    held: np.ndarray

    @staticmethod
    def from_data(data: BankData) -> HoldingsCube:
        customer_ids = np.asarray(pd.unique(data.customers[C.CUSTOMER_ID]), dtype=object)
        dates = data.snapshots
        h = data.holdings
        c = pd.Index(customer_ids).get_indexer(pd.Index(h[C.CUSTOMER_ID].astype(object)))
        p = pd.Index(data.product_ids).get_indexer(pd.Index(h[C.PRODUCT_ID].astype(object)))
        t = pd.Index(dates).get_indexer(pd.Index(h[C.SNAPSHOT_DATE]))
        held = np.zeros((len(dates), len(customer_ids), len(data.product_ids)), dtype=bool)
        held[t, c, p] = True
        return HoldingsCube(data, customer_ids, dates, held)

    def head(self, n_snapshots: int) -> HoldingsCube:
        """The cube as known after its first `n_snapshots` snapshots."""
        if not 1 <= n_snapshots <= len(self.dates):
            raise ValueError(f"n_snapshots must be in 1..{len(self.dates)}")
        data = self.data.until(self.dates[n_snapshots - 1])
        return HoldingsCube(
            data, self.customer_ids, self.dates[:n_snapshots], self.held[:n_snapshots]
        )

    def acquisitions(self, t: int) -> np.ndarray:
        """Products acquired at snapshot t (held at t, not at t-1)."""
        gained: np.ndarray = self.held[t] & ~self.held[t - 1]
        return gained

    def held_months(self, t: int) -> np.ndarray:
        run = np.zeros(self.held.shape[1:], dtype=np.int16)
        for s in range(t + 1):
            run = (run + 1) * self.held[s]
        start = t - run + 1
        days = (self.dates[t] - pd.DatetimeIndex(self.dates)).days.to_numpy()
        months = np.round(days[np.clip(start, 0, t)] / 30.44).astype(np.int16)
        months = np.where(start == 0, CENSORED, months)
        return np.asarray(np.where(run > 0, months, 0), dtype=np.int16)

    def attributes_at(self, t: int) -> pd.DataFrame:
        customers = self.data.customers
        if C.SNAPSHOT_DATE in customers.columns:
            known = customers[customers[C.SNAPSHOT_DATE] <= self.dates[t]]
            customers = known.sort_values(C.SNAPSHOT_DATE).drop_duplicates(
                C.CUSTOMER_ID, keep="last"
            )
            customers = customers.drop(columns=[C.SNAPSHOT_DATE])
        indexed = customers.drop_duplicates(C.CUSTOMER_ID).set_index(C.CUSTOMER_ID)
        return indexed.reindex(self.customer_ids).reset_index(drop=True)

    def state_at(self, t: int, options: StateOptions | None = None) -> CustomerState:
        """Every customer as of snapshot t, using nothing after it."""
        options = options or StateOptions()
        held = self.held[t]
        window = self.held[max(0, t - options.drop_window) : t]
        dropped = window.any(axis=0) & ~held if len(window) else np.zeros_like(held)
        attributes = self.attributes_at(t)
        as_of = np.full(len(held), np.datetime64(self.dates[t], "ns"))
        held_months = self.held_months(t)
        tiering = ValueTier(options.value_col).fit(attributes, held, held_months)
        tier = tiering.transform(attributes, held, held_months)
        segment = segment_labels(attributes, tier, options.segment_col)
        return CustomerState(
            self.customer_ids,
            as_of,
            held,
            dropped,
            held_months,
            attributes,
            tier,
            segment,
            tiering,
            History.from_cube(self.held, self.dates, t),
        )
