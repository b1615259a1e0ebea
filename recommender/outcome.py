"""Outcomes read from later holdings snapshots: what clients acquired after an offer.

An offer made on day d converted if the product is held in a snapshot dated after d and
at most `window_days` later, and was not held in the latest snapshot dated on or before
d (the data the decision saw). The same rule, for any product, tells which assigned
clients acquired something at all; that is what a holdout can be compared on, since it
is offered nothing. A client whose window contains no snapshot yet is not observed
(neither converted nor not), and is counted apart.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from recommender import columns as C


@dataclass(frozen=True)
class SnapshotOutcomes:
    converted_offers: set[tuple[str, str]]  # (request_id, product_id)
    acquired_clients: set[str]  # clients that acquired any product in their window
    observed_clients: set[str]  # clients whose window has a snapshot


def derive(exposures: pd.DataFrame, clients: pd.DataFrame, holdings: pd.DataFrame,
           window_days: int) -> SnapshotOutcomes:  # fmt: skip
    """`exposures`: request_id, customer_id, product_id, created_at; `clients`:
    customer_id, created_at (their first decision); `holdings`: the data contract's
    customer_id, product_id, snapshot_date."""
    dates = np.sort(pd.to_datetime(holdings[C.SNAPSHOT_DATE]).unique())
    ids = set(clients[C.CUSTOMER_ID].astype(str))
    held = holdings[holdings[C.CUSTOMER_ID].astype(str).isin(ids)].copy()
    held[C.CUSTOMER_ID] = held[C.CUSTOMER_ID].astype(str)
    held[C.PRODUCT_ID] = held[C.PRODUCT_ID].astype(str)
    held[C.SNAPSHOT_DATE] = pd.to_datetime(held[C.SNAPSHOT_DATE])

    offers = _windows(exposures, dates, window_days)
    converted: set[tuple[str, str]] = set()
    if len(offers):
        new = _new_holdings(offers, held, by_product=True)
        converted = set(zip(new["request_id"], new[C.PRODUCT_ID], strict=True))

    first = _windows(clients, dates, window_days)
    observed = first[first["observable"]]
    acquired = _new_holdings(observed, held, by_product=False)
    return SnapshotOutcomes(converted, set(acquired[C.CUSTOMER_ID]),
                            set(observed[C.CUSTOMER_ID]))  # fmt: skip


def _windows(frame: pd.DataFrame, dates: np.ndarray, window_days: int) -> pd.DataFrame:
    """Adds `before` (latest snapshot on or before the day), `end` (day + window) and
    `observable` (a snapshot falls in (day, end])."""
    out = frame.copy()
    out[C.CUSTOMER_ID] = out[C.CUSTOMER_ID].astype(str)
    day = pd.to_datetime(out["created_at"]).dt.tz_localize(None).dt.normalize()
    position = np.searchsorted(dates, day.to_numpy(), side="right") - 1
    out["before"] = pd.NaT
    has_before = position >= 0
    out.loc[has_before, "before"] = dates[position[has_before]]
    out["before"] = pd.to_datetime(out["before"])
    out["day"] = day
    out["end"] = day + pd.Timedelta(days=window_days)
    nxt = np.searchsorted(dates, day.to_numpy(), side="right")
    next_date = pd.to_datetime(
        pd.Series([dates[i] if i < len(dates) else pd.NaT for i in nxt], index=out.index)
    )
    out["observable"] = next_date.notna() & (next_date <= out["end"])
    return out


def _new_holdings(rows: pd.DataFrame, held: pd.DataFrame, by_product: bool) -> pd.DataFrame:
    """Rows (or, per client, products) held in (day, end] and not held at `before`."""
    keys = [C.CUSTOMER_ID, C.PRODUCT_ID] if by_product else [C.CUSTOMER_ID]
    later = rows.merge(held, on=keys, how="inner")
    later = later[
        (later[C.SNAPSHOT_DATE] > later["day"]) & (later[C.SNAPSHOT_DATE] <= later["end"])
    ]
    if not by_product:
        later = later.drop_duplicates([C.CUSTOMER_ID, C.PRODUCT_ID])
    before = held.rename(columns={C.SNAPSHOT_DATE: "before"})[
        [C.CUSTOMER_ID, C.PRODUCT_ID, "before"]
    ]
    marked = later.merge(before, on=[C.CUSTOMER_ID, C.PRODUCT_ID, "before"], how="left",
                         indicator=True)  # fmt: skip
    return marked[marked["_merge"] == "left_only"]
