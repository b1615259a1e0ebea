"""`recommender ab simulate`: rehearse an experiment against the running service.

Synthetic-bank clients are sent to the service over HTTP (the batch endpoint, in the
experiment's channel); each offer they get is accepted or declined, and accepted offers
convert, with probabilities drawn from the generator's true acquisition probabilities
for the month after the last snapshot (`demo-data --rehearsal`):

    P(accept offer of p) = min(0.95, lift x P(acquire p next month))
    P(convert | accepted) = convert

Every client, offered something or not (the holdout), also acquires products on their
own with the true probabilities. The outcomes go back through `/v1/feedback/batch`, and
the month after is written as a holdings snapshot (`after_days` after the offers) in a
data directory of the simulated clients, from which the report derives conversions.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pyarrow as pa

from recommender import columns as C
from recommender.dataset import load_bank_data
from recommender.errors import ConfigError, DataError
from recommender.storage import write_tables_atomically

BATCH = 500


@dataclass(frozen=True)
class Behaviour:
    lift: float = 3.0  # an officer's offer multiplies the chance the client wants it
    convert: float = 0.8  # accepted offers that complete
    ceiling: float = 0.95


def simulate(url: str, key: str, data_dir: Path, channel: str, customers: int, seed: int,
             out_dir: Path, after_days: int = 28, behaviour: Behaviour = Behaviour(), k: int = 3,
             progress: Callable[[int], None] | None = None) -> dict[str, Any]:  # fmt: skip
    """Drive the service; returns counts and writes the outcome data directory."""
    data = load_bank_data(data_dir)
    truth = _next_month_truth(data_dir, data.product_ids)
    ids = truth.index.to_numpy(dtype=str)
    if customers > len(ids):
        raise ConfigError(f"--customers {customers:,}: the bank has {len(ids):,} clients")
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(len(ids), size=customers, replace=False))
    clients = ids[chosen]
    p = truth.to_numpy(dtype=np.float64)[chosen]
    products = data.product_ids
    column = {pid: j for j, pid in enumerate(products)}
    organic = rng.random(p.shape) < p  # what clients do on their own, offer or not
    u_accept = rng.random(p.shape)
    u_convert = rng.random(p.shape)
    acquired = organic.copy()
    counts: dict[str, Any] = {"clients": customers, "requests": 0, "offers": 0, "accepted": 0,
              "converted": 0, "errors": 0}  # fmt: skip
    headers = {"X-API-Key": key}
    with httpx.Client(base_url=url, headers=headers, timeout=300) as client:
        for start in range(0, customers, BATCH):
            rows = range(start, min(start + BATCH, customers))
            body = {"requests": [{"customer_id": str(clients[i]), "k": k, "explain": False,
                                  "channel": channel} for i in rows]}  # fmt: skip
            answers = _post(client, "/v1/recommendations/batch", body)["results"]
            feedback = []
            for i, answer in zip(rows, answers, strict=True):
                if "request_id" not in answer:
                    counts["errors"] += 1
                    continue
                counts["requests"] += 1
                for offer in answer["recommendations"]:
                    j = column[offer["product_id"]]
                    counts["offers"] += 1
                    chance = min(behaviour.ceiling, behaviour.lift * p[i, j])
                    said = "accepted" if u_accept[i, j] < chance else "declined"
                    item = {"request_id": answer["request_id"], "product_id": offer["product_id"]}
                    feedback.append({**item, "outcome": said})
                    if said == "accepted":
                        counts["accepted"] += 1
                        if u_convert[i, j] < behaviour.convert:
                            counts["converted"] += 1
                            acquired[i, j] = True
                            feedback.append({**item, "outcome": "converted"})
            for chunk in range(0, len(feedback), 1000):
                _post(client, "/v1/feedback/batch", {"items": feedback[chunk : chunk + 1000]})
            if progress:
                progress(len(rows))
    when = (datetime.now(UTC) + timedelta(days=after_days)).date()
    _write_outcomes(data, clients, acquired, pd.Timestamp(when), out_dir)
    counts["organic_acquisitions"] = int(organic.sum())
    counts["outcome_snapshot"] = str(when)
    return counts


def _post(client: httpx.Client, path: str, body: dict[str, Any],
          max_wait: float = 600.0) -> dict[str, Any]:  # fmt: skip
    """POST, waiting out the key's rate limit (429 + Retry-After) up to `max_wait` s."""
    waited = 0.0
    while True:
        try:
            response = client.post(path, json=body)
        except httpx.HTTPError as exc:
            raise ConfigError(f"cannot reach the service at {client.base_url}: {exc}; start "
                              "it with `recommender serve` or pass --url") from exc  # fmt: skip
        if response.status_code != 429 or waited >= max_wait:
            break
        try:
            pause = min(max(float(response.headers.get("Retry-After", "1")), 0.1), 60.0)
        except ValueError:  # an HTTP date: wait a second and ask again
            pause = 1.0
        time.sleep(pause)
        waited += pause
    if response.status_code in (401, 403):
        raise ConfigError(f"{path}: {response.status_code} {response.json().get('detail')}; "
                          "pass an officer key with --key-file")  # fmt: skip
    if response.status_code != 200:
        raise ConfigError(f"{path} answered {response.status_code}: {response.text[:300]}")
    answer: dict[str, Any] = response.json()
    return answer


def _next_month_truth(data_dir: Path, product_ids: list[str]) -> pd.DataFrame:
    path = Path(data_dir) / C.TRUTH_DIR / C.NEXT_TRUTH_FILE
    if not path.exists():
        raise DataError(
            f"{path} is missing: a rehearsal needs the true probabilities of the month "
            "after the last snapshot; generate the bank with `recommender demo-data DIR "
            "--rehearsal` and serve that directory"
        )
    table = pd.read_parquet(path)
    wide = table.pivot_table(index=C.CUSTOMER_ID, columns=C.PRODUCT_ID,
                             values=C.PROBABILITY, observed=True)  # fmt: skip
    wide.index = wide.index.astype(str)
    wide.columns = wide.columns.astype(str)
    return wide.reindex(columns=product_ids).fillna(0.0)


def _write_outcomes(data: Any, clients: np.ndarray, acquired: np.ndarray,
                    when: pd.Timestamp, out_dir: Path) -> None:  # fmt: skip
    """The simulated clients' data directory: attributes, the last real snapshot and
    the simulated one after the offers (what they held then, plus what they acquired)."""
    last = data.snapshots[-1]
    keep = set(clients)
    holdings = data.holdings
    before = holdings[(holdings[C.SNAPSHOT_DATE] == last)
                      & holdings[C.CUSTOMER_ID].astype(str).isin(keep)]  # fmt: skip
    before = pd.DataFrame({C.CUSTOMER_ID: before[C.CUSTOMER_ID].astype(str),
                           C.PRODUCT_ID: before[C.PRODUCT_ID].astype(str),
                           C.SNAPSHOT_DATE: before[C.SNAPSHOT_DATE]})  # fmt: skip
    rows, cols = np.nonzero(acquired)
    names = np.asarray(data.product_ids, dtype=object)
    gained = pd.DataFrame({C.CUSTOMER_ID: clients[rows], C.PRODUCT_ID: names[cols]})
    after = pd.concat([before[[C.CUSTOMER_ID, C.PRODUCT_ID]], gained]).drop_duplicates()
    after[C.SNAPSHOT_DATE] = when
    table = pd.concat([before, after], ignore_index=True)
    table[C.SNAPSHOT_DATE] = pd.to_datetime(table[C.SNAPSHOT_DATE]).dt.date
    customers = data.customers[data.customers[C.CUSTOMER_ID].astype(str).isin(keep)]
    write_tables_atomically({
        f"{C.CUSTOMERS}.parquet": pa.Table.from_pandas(customers, preserve_index=False),
        f"{C.HOLDINGS}.parquet": pa.Table.from_pandas(table, preserve_index=False),
        f"{C.PRODUCTS}.parquet": pa.Table.from_pandas(data.products, preserve_index=False),
    }, Path(out_dir))  # fmt: skip
