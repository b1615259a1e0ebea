import numpy as np
import pytest

from recommender.metrics import coverage, per_customer, summarise
from recommender.ranking import top_k


def truth_of(rows: list[list[int]], n_products: int = 6) -> np.ndarray:
    truth = np.zeros((len(rows), n_products), dtype=bool)
    for i, items in enumerate(rows):
        truth[i, items] = True
    return truth


def test_average_precision_by_hand() -> None:
    recommended = np.array([[0, 1, 2], [3, 4, 5], [5, 0, 1]])
    truth = truth_of([[0, 2], [1], [0, 1, 3, 4]])
    m = per_customer(recommended, truth, k=3)
    # row 0: hits at ranks 1 and 3 -> (1/1 + 2/3) / min(2, 3)
    assert m["map@3"][0] == pytest.approx((1 + 2 / 3) / 2)
    assert m["map@3"][1] == 0.0
    # row 2: hits at ranks 2 and 3 -> (1/2 + 2/3) / min(4, 3)
    assert m["map@3"][2] == pytest.approx((1 / 2 + 2 / 3) / 3)


def test_ndcg_hits_and_mrr_by_hand() -> None:
    recommended = np.array([[0, 1, 2], [3, 4, 5], [5, 0, 1]])
    truth = truth_of([[0, 2], [1], [0]])
    m = per_customer(recommended, truth, k=3)
    dcg = 1 / np.log2(2) + 1 / np.log2(4)
    idcg = 1 / np.log2(2) + 1 / np.log2(3)
    assert m["ndcg@3"][0] == pytest.approx(dcg / idcg)
    assert m["ndcg@3"][2] == pytest.approx((1 / np.log2(3)) / 1.0)
    assert list(m["hit@1"]) == [1.0, 0.0, 0.0]
    assert list(m["hit@3"]) == [1.0, 0.0, 1.0]
    assert list(m["mrr"]) == pytest.approx([1.0, 0.0, 0.5])


def test_padding_never_hits_and_k_cuts_the_list() -> None:
    recommended = np.array([[-1, -1, 0]])
    truth = truth_of([[0]])
    assert per_customer(recommended, truth, k=2)["map@2"][0] == 0.0
    assert per_customer(recommended, truth, k=3)["map@3"][0] == pytest.approx(1 / 3)


def test_summary_means_and_coverage() -> None:
    recommended = np.array([[0, 1], [0, 2]])
    truth = truth_of([[0], [2]], n_products=4)
    s = summarise(recommended, truth, k=2)
    assert s["map@2"] == pytest.approx((1 + 0.5) / 2)
    assert s["coverage"] == pytest.approx(3 / 4)
    assert coverage(np.array([[-1, -1]]), 4) == 0.0


def test_top_k_excludes_orders_and_pads() -> None:
    scores = np.array([[0.1, 0.9, 0.5, 0.5], [1.0, 2.0, 3.0, 4.0]])
    exclude = np.array([[False, True, False, False], [True, True, True, False]])
    items, values = top_k(scores, 3, exclude)
    assert items.tolist() == [[2, 3, 0], [3, -1, -1]]  # tie 0.5/0.5 -> lower index first
    assert values[1, 0] == 4.0 and np.isneginf(values[1, 1])
