"""What each customer's holdings did before a snapshot: the time-carrying facts.

`History` is computed from the monthly holdings up to and including the snapshot and
travels with `CustomerState`. For every (customer, product) it keeps:
- `past`: which of the previous snapshots held it (bit l-1 set = held l snapshots before);
- `since_add` / `since_drop`: months since the last acquisition / drop on record
  (`NEVER` when none was seen; an acquisition at this snapshot is 0 months ago);
- `adds` / `drops`: how many acquisitions / drops are on record;
and per customer `depth`, how many earlier snapshots are on record (0 for a client known
only from a request: nothing about their past is assumed).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

NEVER = -1
MAX_LAGS = 32  # bits of `past`
DAYS_PER_MONTH = 30.44


@dataclass(frozen=True)
class History:
    past: np.ndarray  # uint32 (n, products)
    depth: np.ndarray  # int16 (n,)
    since_add: np.ndarray  # int16 (n, products), NEVER if none on record
    since_drop: np.ndarray  # int16 (n, products), NEVER if none on record
    adds: np.ndarray  # int16 (n, products)
    drops: np.ndarray  # int16 (n, products)

    def __len__(self) -> int:
        return len(self.depth)

    @staticmethod
    def empty(n: int, n_products: int) -> History:
        """Customers with no past on record (cold-start records, single snapshots)."""
        zeros = np.zeros((n, n_products), dtype=np.int16)
        never = np.full((n, n_products), NEVER, dtype=np.int16)
        return History(
            np.zeros((n, n_products), dtype=np.uint32),
            np.zeros(n, dtype=np.int16),
            never,
            never.copy(),
            zeros,
            zeros.copy(),
        )

    @staticmethod
    def from_cube(held: np.ndarray, dates: list[pd.Timestamp], t: int) -> History:
        """History of every customer as of snapshot t of `held[snapshot, customer, product]`."""
        shape = held.shape[1:]
        past = np.zeros(shape, dtype=np.uint32)
        for lag in range(1, min(t, MAX_LAGS) + 1):
            past |= held[t - lag].astype(np.uint32) << np.uint32(lag - 1)
        adds = np.zeros(shape, dtype=np.int16)
        drops = np.zeros(shape, dtype=np.int16)
        last_add = np.full(shape, NEVER, dtype=np.int16)
        last_drop = np.full(shape, NEVER, dtype=np.int16)
        for s in range(1, t + 1):
            added = held[s] & ~held[s - 1]
            dropped = held[s - 1] & ~held[s]
            adds += added
            drops += dropped
            last_add[added] = s
            last_drop[dropped] = s
        months = _months_before(dates, t)
        return History(
            past,
            np.full(shape[0], t, dtype=np.int16),
            np.where(last_add == NEVER, NEVER, months[last_add]).astype(np.int16),
            np.where(last_drop == NEVER, NEVER, months[last_drop]).astype(np.int16),
            adds,
            drops,
        )

    def held_ago(self, lag: int) -> np.ndarray:
        """bool (n, products): held `lag` snapshots before (False when not on record)."""
        if not 1 <= lag <= MAX_LAGS:
            raise ValueError(f"lag must be in 1..{MAX_LAGS} (got {lag})")
        return (self.past >> np.uint32(lag - 1) & 1).astype(bool)

    def held_before(self) -> np.ndarray:
        """bool (n, products): held at some earlier snapshot on record."""
        return np.asarray(self.past != 0) | (self.drops > 0)

    def take(self, rows: np.ndarray) -> History:
        return History(*(a[rows] for a in self._arrays()))

    def without(self, products: np.ndarray) -> History:
        """Row i's product `products[i]` as never on record (a hidden holding must not
        leave a trace in the features: that would tell the model the answer)."""
        rows = np.arange(len(self))
        out = History(*(a.copy() for a in self._arrays()))
        out.past[rows, products] = 0
        out.since_add[rows, products] = NEVER
        out.since_drop[rows, products] = NEVER
        out.adds[rows, products] = 0
        out.drops[rows, products] = 0
        return out

    @staticmethod
    def concat(parts: list[History]) -> History:
        arrays = zip(*(p._arrays() for p in parts), strict=True)
        return History(*(np.concatenate(list(a)) for a in arrays))

    def _arrays(self) -> tuple[np.ndarray, ...]:
        return (self.past, self.depth, self.since_add, self.since_drop, self.adds, self.drops)


def _months_before(dates: list[pd.Timestamp], t: int) -> np.ndarray:
    """Whole months from each snapshot to snapshot t."""
    days = (dates[t] - pd.DatetimeIndex(dates[: t + 1])).days.to_numpy()
    return np.round(days / DAYS_PER_MONTH).astype(np.int16)
