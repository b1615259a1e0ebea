"""History on record: exact bits, months and counts on a tiny cube; it travels with states.

The cube used here (and by test_temporal) has two customers, two products and five
month-end snapshots; held[t, customer, product]:

    snapshot      2024-01-31  02-29  03-31  04-30  05-31
    a  sav            1        1      0      0      1     held, dropped at t2, re-added t4
    a  card           0        1      1      1      1     added at t1
    b  sav            0        0      0      0      0     never
    b  card           1        0      1      0      0     dropped t1, re-added t2, dropped t3
"""

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from recommender.dataset import BankData
from recommender.features import FeatureBuilder, FeatureOptions
from recommender.history import MAX_LAGS, NEVER, History
from recommender.protocol import held_product_examples, leave_one_out_split
from recommender.state import CustomerState, HoldingsCube
from tests.helpers import bank

DATES = ["2024-01-31", "2024-02-29", "2024-03-31", "2024-04-30", "2024-05-31"]
SAV, CARD = 0, 1
PATTERN = {
    ("a", "sav"): [1, 1, 0, 0, 1],
    ("a", "card"): [0, 1, 1, 1, 1],
    ("b", "sav"): [0, 0, 0, 0, 0],
    ("b", "card"): [1, 0, 1, 0, 0],
}


def held_cube() -> np.ndarray:
    """held[t, c, p] of the table above (customers a, b; products sav, card)."""
    held = np.zeros((5, 2, 2), dtype=bool)
    for (customer, product), bits in PATTERN.items():
        held[:, "ab".index(customer), ["sav", "card"].index(product)] = bits
    return held


def dates() -> list[pd.Timestamp]:
    return [pd.Timestamp(d) for d in DATES]


def two_customer_bank() -> BankData:
    rows = [
        (customer, product, DATES[t])
        for (customer, product), bits in PATTERN.items()
        for t, bit in enumerate(bits)
        if bit
    ]
    return bank(rows, products=["sav", "card"])


def two_customer_cube() -> HoldingsCube:
    return HoldingsCube.from_data(two_customer_bank())


def assert_same(a: History, b: History) -> None:
    for name in ("past", "depth", "since_add", "since_drop", "adds", "drops"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name


def test_history_at_the_last_snapshot_is_exact() -> None:
    h = History.from_cube(held_cube(), dates(), 4)
    # bit l-1 = held l snapshots before t4: a/sav held at t1, t0 -> bits 2, 3 -> 0b1100
    assert h.past.tolist() == [[0b1100, 0b0111], [0, 0b1010]]
    assert h.depth.tolist() == [4, 4]
    # a/sav re-added at t4 itself: 0 months; a/card added 2024-02-29: 92 days = 3 months;
    # b/card last added 2024-03-31: 61 days = 2 months
    assert h.since_add.tolist() == [[0, 3], [NEVER, 2]]
    # a/sav dropped 2024-03-31 (2 months); b/card last dropped 2024-04-30 (31 days: 1 month)
    assert h.since_drop.tolist() == [[2, NEVER], [NEVER, 1]]
    # held at the first snapshot is not an acquisition (it happened before the record)
    assert h.adds.tolist() == [[1, 1], [0, 1]]
    assert h.drops.tolist() == [[1, 0], [0, 2]]


def test_history_one_snapshot_in() -> None:
    h = History.from_cube(held_cube(), dates(), 1)
    assert h.past.tolist() == [[1, 0], [0, 1]]
    assert h.depth.tolist() == [1, 1]
    assert h.since_add.tolist() == [[NEVER, 0], [NEVER, NEVER]]
    assert h.since_drop.tolist() == [[NEVER, NEVER], [NEVER, 0]]
    assert h.adds.tolist() == [[0, 1], [0, 0]]
    assert h.drops.tolist() == [[0, 0], [0, 1]]


def test_first_snapshot_has_no_past() -> None:
    h = History.from_cube(held_cube(), dates(), 0)
    assert h.depth.tolist() == [0, 0]
    assert h.past.tolist() == [[0, 0], [0, 0]]
    assert h.since_add.tolist() == [[NEVER, NEVER]] * 2
    assert h.since_drop.tolist() == [[NEVER, NEVER]] * 2
    assert h.adds.tolist() == [[0, 0]] * 2 and h.drops.tolist() == [[0, 0]] * 2
    assert not h.held_before().any()
    assert_same(h, History.empty(2, 2))


def test_held_ago_reads_the_bits_and_stops_at_the_record() -> None:
    h = History.from_cube(held_cube(), dates(), 4)
    assert h.held_ago(1).tolist() == [[False, True], [False, False]]
    assert h.held_ago(2).tolist() == [[False, True], [False, True]]
    assert h.held_ago(3).tolist() == [[True, True], [False, False]]
    assert h.held_ago(4).tolist() == [[True, False], [False, True]]
    assert not h.held_ago(5).any()  # before the first snapshot: not on record
    assert not h.held_ago(MAX_LAGS).any()


@pytest.mark.parametrize("lag", [0, -1, MAX_LAGS + 1])
def test_held_ago_outside_the_bits_raises(lag: int) -> None:
    h = History.from_cube(held_cube(), dates(), 4)
    with pytest.raises(ValueError, match=f"lag must be in 1..{MAX_LAGS} \\(got {lag}\\)"):
        h.held_ago(lag)


def test_held_before_means_any_earlier_snapshot() -> None:
    assert History.from_cube(held_cube(), dates(), 4).held_before().tolist() == [
        [True, True],
        [False, True],
    ]
    # at t1 a/card has no earlier holding (it was acquired at t1)
    assert History.from_cube(held_cube(), dates(), 1).held_before().tolist() == [
        [True, False],
        [False, True],
    ]


def test_a_drop_older_than_the_bits_still_counts_as_held_before() -> None:
    months = list(pd.date_range("2020-01-31", periods=35, freq="ME"))
    held = np.zeros((35, 1, 1), dtype=bool)
    held[0] = True  # held at the first snapshot only, dropped 2020-02-29
    h = History.from_cube(held, months, 34)
    assert h.past.tolist() == [[0]]  # the 32 bits cover t2..t33 only
    assert h.drops.tolist() == [[1]] and h.held_before().tolist() == [[True]]
    # 2020-02-29 -> 2022-11-30 is 1005 days: round(1005 / 30.44) = 33 months
    assert h.since_drop.tolist() == [[33]] and h.depth.tolist() == [34]


def test_all_32_bits_are_kept() -> None:
    months = list(pd.date_range("2020-01-31", periods=40, freq="ME"))
    held = np.ones((40, 1, 1), dtype=bool)
    h = History.from_cube(held, months, 39)
    assert h.past.tolist() == [[2**32 - 1]]
    assert h.held_ago(MAX_LAGS).tolist() == [[True]]
    assert h.adds.tolist() == [[0]] and h.since_add.tolist() == [[NEVER]]


def test_without_erases_only_the_named_product_of_each_row() -> None:
    h = History.from_cube(held_cube(), dates(), 4)
    out = h.without(np.array([SAV, CARD]))  # row a loses sav, row b loses card
    assert out.past.tolist() == [[0, 0b0111], [0, 0]]
    assert out.since_add.tolist() == [[NEVER, 3], [NEVER, NEVER]]
    assert out.since_drop.tolist() == [[NEVER, NEVER], [NEVER, NEVER]]
    assert out.adds.tolist() == [[0, 1], [0, 0]]
    assert out.drops.tolist() == [[0, 0], [0, 0]]
    assert out.depth.tolist() == [4, 4]  # the record itself is as long as before
    assert out.held_before().tolist() == [[False, True], [False, False]]
    assert_same(h, History.from_cube(held_cube(), dates(), 4))  # the original is untouched


def test_take_and_concat_round_trip() -> None:
    h = History.from_cube(held_cube(), dates(), 4)
    a, b = h.take(np.array([0])), h.take(np.array([1]))
    assert len(a) == 1 and a.past.tolist() == [[0b1100, 0b0111]]
    assert_same(History.concat([a, b]), h)
    assert_same(History.concat([b, a]), h.take(np.array([1, 0])))


def test_empty_history() -> None:
    h = History.empty(3, 2)
    assert len(h) == 3 and h.depth.tolist() == [0, 0, 0]
    assert h.since_add.tolist() == [[NEVER, NEVER]] * 3
    assert not h.held_ago(1).any() and not h.held_before().any()


def test_the_cube_from_files_matches_the_table() -> None:
    cube = two_customer_cube()
    assert cube.customer_ids.tolist() == ["a", "b"]
    assert np.array_equal(cube.held, held_cube())


def test_state_at_carries_the_history_of_its_snapshot() -> None:
    cube = two_customer_cube()
    for t in range(5):
        state = cube.state_at(t)
        assert state.history is not None
        assert_same(state.history, History.from_cube(held_cube(), dates(), t))
        assert_same(state.past, state.history)


def test_a_state_without_history_has_an_empty_past() -> None:
    state = two_customer_cube().state_at(4)
    cold = replace(state, history=None)
    assert_same(cold.past, History.empty(2, 2))
    assert cold.take(np.array([1])).history is None
    assert cold.without(np.array([0, 0])).history is None


def test_state_take_without_and_concat_carry_the_history() -> None:
    state = two_customer_cube().state_at(4)
    full = History.from_cube(held_cube(), dates(), 4)
    b = state.take(np.array([1]))
    assert b.past.past.tolist() == [[0, 0b1010]]
    hidden = state.without(np.array([SAV, CARD]))
    assert_same(hidden.past, full.without(np.array([SAV, CARD])))
    assert_same(CustomerState.concat([state.take(np.array([0])), b]).past, full)


def test_concat_with_a_state_without_history_gives_it_an_empty_past() -> None:
    state = two_customer_cube().state_at(4)
    cold = replace(state, history=None)
    both = CustomerState.concat([state.take(np.array([0])), cold.take(np.array([1]))])
    assert both.past.depth.tolist() == [4, 0]
    assert both.past.past.tolist() == [[0b1100, 0b0111], [0, 0]]
    assert both.past.since_add.tolist() == [[0, 3], [NEVER, NEVER]]


ALL_TIME = FeatureOptions(
    attributes=False,
    tier=False,
    held_set=False,
    lags=4,
    since_add=True,
    since_drop=True,
    counts=True,
    held_before=True,
)


def tokens(builder: FeatureBuilder, state: CustomerState) -> list[set[str]]:
    x = builder.transform(state)
    return [{builder.vocabulary_[j] for j in x[row].indices} for row in range(len(state))]


def test_a_hidden_holding_leaves_no_token() -> None:
    """Leave-one-out examples: the hidden product must look never held, or the features
    would give the answer away."""
    state = two_customer_cube().state_at(4)
    examples = held_product_examples(state)  # a holds sav and card: one example each
    assert examples.state.customer_ids.tolist() == ["a", "a"]
    assert examples.targets.tolist() == [[True, False], [False, True]]
    builder = FeatureBuilder(ALL_TIME).fit(state, ["sav", "card"])
    hide_sav, hide_card = tokens(builder, examples.state)
    assert hide_sav == {
        "held:card",
        "held_for:card:3-11m",
        "held_ago:card:1",
        "held_ago:card:2",
        "held_ago:card:3",
        "added:card:3-5m",
        "adds:card:1",
        "adds total:1",  # sav's re-add is hidden with it
        "drops total:0",
    }
    assert hide_card == {
        "held:sav",
        "held_for:sav:0-2m",
        "held_ago:sav:3",
        "held_ago:sav:4",
        "added:sav:0m",
        "closed:sav:2m",
        "adds:sav:1",
        "drops:sav:1",
        "adds total:1",
        "drops total:1",
    }


def test_leave_one_out_test_queries_show_nothing_of_the_hidden_product() -> None:
    s = leave_one_out_split(two_customer_bank(), holdout=1.0)
    assert s.test.state.customer_ids.tolist() == ["a"]  # b holds nothing at the last snapshot
    hidden = int(np.flatnonzero(s.test.targets[0])[0])
    product = ["sav", "card"][hidden]
    builder = FeatureBuilder(ALL_TIME).fit(s.cube.state_at(4), ["sav", "card"])
    (row,) = tokens(builder, s.test.state)
    assert not [t for t in row if f":{product}" in t]
    assert s.test.state.past.adds[0, hidden] == 0
    assert not s.test.state.past.held_before()[0, hidden]
