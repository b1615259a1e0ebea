"""The bank's clients as of the latest snapshot, loaded once at start-up.

Holds every known client's state (for scoring) and what the client view shows: holdings
with the snapshot they were first seen in (in the current run), recently dropped
products with the last snapshot they were held in.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from recommender import columns as C
from recommender.dataset import load_bank_data
from recommender.state import CustomerState, HoldingsCube, StateOptions

NO_ATTRIBUTES = pd.DataFrame(index=range(1))


class CustomerDirectory:
    def __init__(self, data_dir: Path) -> None:
        data = load_bank_data(data_dir)
        self.cube = HoldingsCube.from_data(data)
        self.products = data.products
        self.product_ids = data.product_ids
        self.dates = self.cube.dates
        self.as_of = self.dates[-1]
        self.index = pd.Index(self.cube.customer_ids)
        self.since, self.last_held = _history(self.cube.held)
        self._states: dict[tuple[Any, ...], CustomerState] = {}

    def __len__(self) -> int:
        return len(self.index)

    def row(self, customer_id: str) -> int | None:
        try:  # the index's hash table: microseconds, where get_indexer takes ~0.3 ms
            position = self.index.get_loc(customer_id)
        except KeyError:
            return None
        return position if isinstance(position, int) else None

    def state(self, options: StateOptions) -> CustomerState:
        """Every client as of the latest snapshot (computed once per set of options)."""
        key = tuple(sorted(options.to_dict().items()))
        if key not in self._states:
            self._states[key] = self.cube.state_at(len(self.dates) - 1, options)
        return self._states[key]

    def client(self, options: StateOptions, row: int, attributes: bool = False) -> CustomerState:
        """One client's state, without attributes unless asked (requests use precomputed
        features and rule facts; copying a row of a million-row table costs more than the
        scoring; a re-ranked model reads them)."""
        s = self.state(options)
        rows = np.array([row])
        if attributes:
            return s.take(rows)
        return CustomerState(s.customer_ids[rows], s.as_of[rows], s.held[rows], s.dropped[rows],
                             s.held_months[rows], NO_ATTRIBUTES, s.tier[rows], s.segment[rows],
                             s.tiering, s.past.take(rows))  # fmt: skip

    def segments(self, options: StateOptions) -> set[str]:
        return {str(s) for s in self.state(options).segment}

    def view(self, row: int, options: StateOptions) -> dict[str, Any]:
        state = self.state(options)
        attributes = state.attributes.iloc[row].to_dict()
        names = dict(zip(self.product_ids, self.products[C.NAME].astype(str), strict=True))
        held = [
            {"product_id": p, "name": names[p], "since": self._date(self.since[row, j]),
             "since_first_snapshot": bool(self.since[row, j] == 0)}
            for j, p in enumerate(self.product_ids) if state.held[row, j]
        ]  # fmt: skip
        dropped = [
            {"product_id": p, "name": names[p], "last_held": self._date(self.last_held[row, j])}
            for j, p in enumerate(self.product_ids) if state.dropped[row, j]
        ]  # fmt: skip
        return {
            "customer_id": str(state.customer_ids[row]),
            "as_of": self.as_of.date().isoformat(),
            "attributes": {k: _plain(v) for k, v in attributes.items()},
            "tier": str(state.tier[row]),
            "segment": str(state.segment[row]),
            "holdings": held,
            "recently_dropped": dropped,
        }

    def _date(self, index: int) -> str | None:
        return self.dates[int(index)].date().isoformat() if index >= 0 else None


def _history(held: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per (client, product): snapshot index where the current holding run started, and
    for products not held now, the last snapshot index they were held in (-1: never)."""
    t_last = held.shape[0] - 1
    since = np.full(held.shape[1:], -1, dtype=np.int16)
    last = np.full(held.shape[1:], -1, dtype=np.int16)
    for t in range(held.shape[0]):
        started = held[t] & ((since < 0) | ~held[t - 1] if t else True)
        since = np.where(held[t], np.where(started, t, since), -1).astype(np.int16)
        last = np.where(held[t], t, last).astype(np.int16)
    return since, np.where(held[t_last], -1, last).astype(np.int16)


def _plain(value: Any) -> Any:
    if isinstance(value, pd.Timestamp):
        return value.date().isoformat()
    if value is None or (isinstance(value, float) and np.isnan(value)) or value is pd.NaT:
        return None
    if isinstance(value, np.generic):
        return value.item()
    return value
