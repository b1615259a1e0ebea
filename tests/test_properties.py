"""Property-based tests (Hypothesis) of the data contract, the feature builder and metrics.

Holdings: random small banks (one customer or several, one product or several, one
snapshot or several, customers holding nothing, every product held) go through the real
files-to-`BankData` loader, `HoldingsCube` and `FeatureBuilder`, and the features must
agree with the holdings that were written. Metrics: bounds, perfect rankings, invariance
to how irrelevant items are ordered, monotonicity in k, and agreement with a slow
reference implementation written here.
"""

from __future__ import annotations

import math
import random
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from recommender import columns as C
from recommender.dataset import BankData, load_bank_data
from recommender.features import HELD_FOR_BUCKETS, N_HELD_CAP, FeatureBuilder
from recommender.metrics import per_customer, summarise
from recommender.state import HoldingsCube, StateOptions

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
MONTH_ENDS = [d.date().isoformat() for d in pd.date_range("2024-01-31", periods=6, freq="ME")]
# Ids that survive CSV and Parquet unchanged, with leading zeros, spaces inside, commas,
# quotes and non-ASCII letters. (Ids that pandas reads as missing, like "NA", are not
# valid ids; see the report.)
ID_PIECES = ["0", "007", "a", "B", "é", "x y", "q,r", 'say "hi"', "-", "_"]


# --- holdings -> features ------------------------------------------------------------------


@dataclass(frozen=True)
class Holdings:
    customers: list[str]
    products: list[str]
    dates: list[str]
    held: np.ndarray  # (snapshots, customers, products) bool
    income: list[float | None]
    fmt: str

    def rows(self) -> list[tuple[str, str, str]]:
        t, c, p = np.nonzero(self.held)
        return [
            (self.customers[i], self.products[j], self.dates[s])
            for s, i, j in zip(t, c, p, strict=True)
        ]


def unique_ids(size: int) -> st.SearchStrategy[list[str]]:
    piece = st.lists(st.sampled_from(ID_PIECES), min_size=1, max_size=2).map("".join)
    return st.lists(piece, min_size=size, max_size=size, unique=True)


@st.composite
def holdings(draw: st.DrawFn) -> Holdings:
    n_customers = draw(st.integers(1, 6))
    n_products = draw(st.integers(1, 4))
    n_dates = draw(st.integers(1, 4))
    customers = draw(unique_ids(n_customers))
    products = draw(unique_ids(n_products))
    start = draw(st.integers(0, len(MONTH_ENDS) - n_dates))
    shape = (n_dates, n_customers, n_products)
    cells = draw(st.lists(st.booleans(), min_size=math.prod(shape), max_size=math.prod(shape)))
    held = np.array(cells, dtype=bool).reshape(shape)
    for t in range(n_dates):  # a snapshot exists only through its holdings rows
        if not held[t].any():
            c, p = draw(st.integers(0, n_customers - 1)), draw(st.integers(0, n_products - 1))
            held[t, c, p] = True
    income = st.none() | st.floats(0, 1e6, allow_nan=False)
    incomes = draw(st.lists(income, min_size=n_customers, max_size=n_customers))
    fmt = draw(st.sampled_from(["csv", "parquet"]))
    return Holdings(customers, products, MONTH_ENDS[start : start + n_dates], held, incomes, fmt)


def edge(held: list[list[list[int]]]) -> Holdings:
    """A hand-picked case: held[t][c] lists the product indices customer c holds at t."""
    n_c = len(held[0])
    n_p = max(p for snapshot in held for row in snapshot for p in row) + 1
    cube = np.zeros((len(held), n_c, n_p), dtype=bool)
    for t, snapshot in enumerate(held):
        for c, row in enumerate(snapshot):
            cube[t, c, row] = True
    return Holdings(
        customers=[f"c{i}" for i in range(n_c)],
        products=[f"p{j}" for j in range(n_p)],
        dates=MONTH_ENDS[: len(held)],
        held=cube,
        income=[None] * n_c,
        fmt="csv",
    )


ONE_OF_EACH = edge([[[0]]])  # one customer, one product, one snapshot
NOBODY_ELSE = edge([[[0], []], [[0], []]])  # a customer who never holds anything
EVERYTHING = edge([[[0, 1, 2], [0, 1, 2]], [[0, 1, 2], [0, 1, 2]]])  # every product held


def write(h: Holdings, directory: Path) -> BankData:
    tables = {
        C.CUSTOMERS: pd.DataFrame({C.CUSTOMER_ID: h.customers, "income": h.income}),
        C.HOLDINGS: pd.DataFrame(h.rows(), columns=[C.CUSTOMER_ID, C.PRODUCT_ID, C.SNAPSHOT_DATE]),
        C.PRODUCTS: pd.DataFrame({C.PRODUCT_ID: h.products}),
    }
    for name, frame in tables.items():
        path = directory / f"{name}.{h.fmt}"
        if h.fmt == "csv":
            frame.to_csv(path, index=False)
        else:
            frame.to_parquet(path, index=False)
    return load_bank_data(directory)


@dataclass(frozen=True)
class Built:
    vocabulary: list[str]
    matrices: list[sp.csr_matrix]  # one per snapshot
    customer_ids: list[str]


def build(h: Holdings) -> Built:
    """Files -> BankData -> cube -> state and features at every snapshot."""
    with tempfile.TemporaryDirectory() as tmp:
        data = write(h, Path(tmp))
    cube = HoldingsCube.from_data(data)
    builder = FeatureBuilder().fit(cube.state_at(len(cube.dates) - 1), data.product_ids)
    matrices = [builder.transform(cube.state_at(t)) for t in range(len(cube.dates))]
    return Built(builder.vocabulary_, matrices, [str(c) for c in cube.customer_ids])


def active(built: Built, t: int, row: int) -> set[str]:
    return {built.vocabulary[j] for j in built.matrices[t][row].indices}


@SETTINGS
@given(holdings())
@example(ONE_OF_EACH)
@example(NOBODY_ELSE)
@example(EVERYTHING)
def test_features_are_finite_indicators_with_one_row_per_customer(h: Holdings) -> None:
    built = build(h)
    assert built.customer_ids == h.customers  # file order, ids unchanged by the round trip
    for x in built.matrices:
        assert x.shape == (len(h.customers), len(built.vocabulary))
        assert np.isfinite(x.data).all()
        assert (x.data == 1).all()  # an indicator matrix: no token counted twice


def test_feature_names_are_unique_when_an_attribute_is_all_missing() -> None:
    vocabulary = build(ONE_OF_EACH).vocabulary
    assert len(set(vocabulary)) == len(vocabulary), vocabulary


@SETTINGS
@given(holdings())
@example(ONE_OF_EACH)
@example(EVERYTHING)
def test_features_are_deterministic(h: Holdings) -> None:
    first, second = build(h), build(h)
    assert first.vocabulary == second.vocabulary
    for a, b in zip(first.matrices, second.matrices, strict=True):
        assert (a != b).nnz == 0


@SETTINGS
@given(holdings())
@example(ONE_OF_EACH)
@example(NOBODY_ELSE)
@example(EVERYTHING)
def test_holdings_features_agree_with_the_holdings_written(h: Holdings) -> None:
    built = build(h)
    window = StateOptions().drop_window
    for t in range(len(h.dates)):
        for c, customer in enumerate(h.customers):
            tokens = active(built, t, c)
            held = {p for j, p in enumerate(h.products) if h.held[t, c, j]}
            earlier = np.asarray(h.held[max(0, t - window) : t, c].any(axis=0))  # none at t=0
            dropped = {p for j, p in enumerate(h.products) if earlier[j]} - held
            assert {s.removeprefix("held:") for s in tokens if s.startswith("held:")} == held
            assert {s.removeprefix("dropped:") for s in tokens if s.startswith("dropped:")} == (
                dropped
            ), customer
            held_for = [s for s in tokens if s.startswith("held_for:")]
            assert sorted(s.split(":")[1] for s in held_for) == sorted(held)
            count = min(len(held), N_HELD_CAP)
            label = f"{count}+" if count == N_HELD_CAP else str(count)
            assert f"products held:{label}" in tokens


@SETTINGS
@given(holdings())
@example(EVERYTHING)
def test_held_for_counts_the_months_of_the_current_run(h: Holdings) -> None:
    """A product held since the first snapshot is censored; otherwise the bucket is the
    number of months since the run of holding began."""
    built = build(h)
    t = len(h.dates) - 1
    for c in range(len(h.customers)):
        tokens = active(built, t, c)
        for j, product in enumerate(h.products):
            if not h.held[t, c, j]:
                continue
            start = t
            while start > 0 and h.held[start - 1, c, j]:
                start -= 1
            if start == 0:
                bucket = "since first snapshot"
            else:
                months = round(
                    (pd.Timestamp(h.dates[t]) - pd.Timestamp(h.dates[start])).days / 30.44
                )
                bucket = [label for low, label in HELD_FOR_BUCKETS if months >= low][-1]
            assert f"held_for:{product}:{bucket}" in tokens


# --- metrics -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Ranking:
    recommended: np.ndarray  # (n, min(k, products)) product indices, -1 padding at the end
    truth: np.ndarray  # (n, products) bool
    k: int


@st.composite
def rankings(draw: st.DrawFn, min_k: int = 1) -> Ranking:
    n_products = draw(st.integers(1, 8))
    k = draw(st.integers(min_k, 10))
    n = draw(st.integers(1, 5))
    width = min(k, n_products)
    rows = []
    for _ in range(n):
        order = draw(st.permutations(range(n_products)))
        valid = draw(st.integers(0, width))
        rows.append(list(order[:valid]) + [-1] * (width - valid))
    cells = draw(st.lists(st.booleans(), min_size=n * n_products, max_size=n * n_products))
    truth = np.array(cells, dtype=bool).reshape(n, n_products)
    return Ranking(np.array(rows, dtype=np.int64).reshape(n, width), truth, k)


def reference(recommended: list[int], relevant: set[int], k: int) -> dict[str, float]:
    """Textbook definitions, one customer at a time."""
    top = recommended[:k]
    hits = [item >= 0 and item in relevant for item in top]
    found, precision_sum = 0, 0.0
    for rank, hit in enumerate(hits, start=1):
        if hit:
            found += 1
            precision_sum += found / rank
    if not relevant:
        return {"ap": 0.0, "ndcg": 0.0, "mrr": 0.0, "hit@1": 0.0, "hit@3": 0.0}
    dcg = sum(1 / math.log2(rank + 1) for rank, hit in enumerate(hits, start=1) if hit)
    idcg = sum(1 / math.log2(rank + 1) for rank in range(1, min(len(relevant), k) + 1))
    first = next((rank for rank, hit in enumerate(hits, start=1) if hit), None)
    return {
        "ap": precision_sum / min(len(relevant), k),
        "ndcg": dcg / idcg,
        "mrr": 0.0 if first is None else 1 / first,
        "hit@1": float(any(hits[:1])),
        "hit@3": float(any(hits[:3])),
    }


def relevant_of(r: Ranking, i: int) -> set[int]:
    return {int(j) for j in np.flatnonzero(r.truth[i])}


@SETTINGS
@given(rankings())
def test_metrics_agree_with_a_slow_reference(r: Ranking) -> None:
    for k in range(1, r.k + 1):  # cut-offs shorter than the lists, too
        m = per_customer(r.recommended, r.truth, k)
        for i in range(len(r.truth)):
            want = reference(r.recommended[i].tolist(), relevant_of(r, i), k)
            assert math.isclose(m[f"map@{k}"][i], want["ap"], abs_tol=1e-12)
            assert math.isclose(m[f"ndcg@{k}"][i], want["ndcg"], abs_tol=1e-12)
            assert math.isclose(m["mrr"][i], want["mrr"], abs_tol=1e-12)
            assert m["hit@1"][i] == want["hit@1"]
            assert m["hit@3"][i] == want["hit@3"]


@SETTINGS
@given(rankings())
def test_metrics_lie_in_zero_one_and_summaries_are_means(r: Ranking) -> None:
    m = per_customer(r.recommended, r.truth, r.k)
    assert ((m >= 0) & (m <= 1 + 1e-12)).all().all()
    summary = summarise(r.recommended, r.truth, r.k)
    for name in m.columns:
        assert math.isclose(summary[str(name)], float(m[name].mean()), abs_tol=1e-12)
    valid = r.recommended[r.recommended >= 0]
    assert summary["coverage"] == len(set(valid.tolist())) / r.truth.shape[1]


@SETTINGS
@given(rankings())
def test_customers_without_relevant_items_score_zero(r: Ranking) -> None:
    """The module's convention: no relevant item -> AP, NDCG, MRR and hits are 0."""
    truth = np.zeros_like(r.truth)
    m = per_customer(r.recommended, truth, r.k)
    assert (m == 0).all().all()


@SETTINGS
@given(rankings())
def test_a_perfect_ranking_scores_one(r: Ranking) -> None:
    rows = []
    for i in range(len(r.truth)):
        relevant = sorted(relevant_of(r, i), reverse=True)  # relevant first, in any order
        rest = [j for j in range(r.truth.shape[1]) if j not in relevant]
        rows.append((relevant + rest)[: r.recommended.shape[1]])
    m = per_customer(np.array(rows, dtype=np.int64), r.truth, r.k)
    has_relevant = r.truth.any(axis=1)
    for name in (f"map@{r.k}", f"ndcg@{r.k}", "mrr", "hit@1"):
        assert np.allclose(m[name].to_numpy()[has_relevant], 1.0), name


@SETTINGS
@given(rankings(), st.randoms(use_true_random=False))
def test_reordering_irrelevant_items_changes_nothing(r: Ranking, rng: random.Random) -> None:
    """Relevant items keep their positions; irrelevant ones (and padding) are shuffled among
    the other positions, e.g. all below the relevant ones in any order."""
    shuffled = r.recommended.copy()
    for i in range(len(r.truth)):
        row = shuffled[i]
        relevant = np.array([item >= 0 and r.truth[i, item] for item in row], dtype=bool)
        others = row[~relevant].tolist()
        rng.shuffle(others)
        row[~relevant] = others
    before = per_customer(r.recommended, r.truth, r.k)
    after = per_customer(shuffled, r.truth, r.k)
    assert np.allclose(before.to_numpy(), after.to_numpy())


@SETTINGS
@given(rankings(min_k=2), st.data())
def test_hits_and_mrr_never_decrease_with_k(r: Ranking, data: st.DataObject) -> None:
    small = data.draw(st.integers(1, r.k - 1))
    at_small = per_customer(r.recommended, r.truth, small)
    at_k = per_customer(r.recommended, r.truth, r.k)
    assert (at_small["mrr"] <= at_k["mrr"]).all()
    assert (at_small["hit@1"] <= at_small["hit@3"]).all()
    found_small = (at_small["mrr"] > 0).to_numpy()
    assert (found_small <= (at_k["mrr"] > 0).to_numpy()).all()  # hit rate within k
