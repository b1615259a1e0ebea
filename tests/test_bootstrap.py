import numpy as np
import pytest

from recommender import bootstrap
from recommender.bootstrap import bootstrap_interval, paired_difference_interval


def test_constant_values_give_a_zero_width_interval_at_the_constant() -> None:
    mean, low, high = bootstrap_interval(np.full(50, 0.25), n_resamples=200)
    assert (mean, low, high) == (0.25, 0.25, 0.25)


def test_interval_contains_the_mean() -> None:
    values = np.random.default_rng(1).random(300)
    mean, low, high = bootstrap_interval(values)
    assert mean == pytest.approx(values.mean())
    assert low < mean < high


def test_interval_matches_the_normal_approximation_on_a_large_sample() -> None:
    # 0/1 outcomes with p = 0.3: the mean's standard error is sqrt(0.3 * 0.7 / n)
    n = 10_000
    values = np.zeros(n)
    values[: 3 * n // 10] = 1.0
    _, low, high = bootstrap_interval(values, n_resamples=2000)
    half_width = 1.96 * np.sqrt(0.3 * 0.7 / n)
    assert low == pytest.approx(0.3 - half_width, abs=0.002)
    assert high == pytest.approx(0.3 + half_width, abs=0.002)


def test_larger_sample_gives_a_narrower_interval() -> None:
    rng = np.random.default_rng(2)
    _, low_small, high_small = bootstrap_interval(rng.random(50))
    _, low_large, high_large = bootstrap_interval(rng.random(5000))
    assert high_large - low_large < (high_small - low_small) / 5


def test_lower_level_gives_a_narrower_interval() -> None:
    values = np.random.default_rng(3).random(200)
    _, low_95, high_95 = bootstrap_interval(values, level=0.95)
    _, low_50, high_50 = bootstrap_interval(values, level=0.5)
    assert low_95 < low_50 < high_50 < high_95


def test_seeded_runs_are_identical_and_seeds_differ() -> None:
    values = np.random.default_rng(4).random(100)
    assert bootstrap_interval(values, seed=5) == bootstrap_interval(values, seed=5)
    assert bootstrap_interval(values, seed=5) != bootstrap_interval(values, seed=6)


def test_chunking_does_not_change_the_result(monkeypatch: pytest.MonkeyPatch) -> None:
    values = np.random.default_rng(5).random(1000)
    whole = bootstrap_interval(values, n_resamples=300)
    monkeypatch.setattr(bootstrap, "MAX_CHUNK_ELEMENTS", 7 * 1000)  # 7 resamples per chunk
    assert bootstrap_interval(values, n_resamples=300) == whole


def test_paired_difference_of_identical_arrays_is_zero() -> None:
    a = np.random.default_rng(6).random(100)
    assert paired_difference_interval(a, a.copy()) == (0.0, 0.0, 0.0)


def test_paired_difference_resamples_the_same_clients() -> None:
    # b is a shifted by exactly 0.5 per client: only a paired bootstrap sees no spread
    a = np.random.default_rng(7).random(100)
    assert paired_difference_interval(a + 0.5, a) == pytest.approx((0.5, 0.5, 0.5))
    _, low, high = bootstrap_interval(a + 0.5)
    assert high - low > 0.05


def test_paired_difference_of_shifted_noise_contains_the_shift() -> None:
    rng = np.random.default_rng(8)
    a = rng.random(500)
    b = a - 0.1 + rng.normal(0, 0.05, 500)
    mean, low, high = paired_difference_interval(a, b, seed=1)
    assert mean == pytest.approx(float(np.mean(a - b)))
    assert low < 0.1 < high
    assert high - low < 0.02


@pytest.mark.parametrize("level", [0.0, 1.0, -0.5, 95])
def test_level_outside_zero_one_is_refused(level: float) -> None:
    with pytest.raises(ValueError, match=r"level must be strictly between 0 and 1"):
        bootstrap_interval(np.ones(10), level=level)
    with pytest.raises(ValueError, match=r"level must be strictly between 0 and 1"):
        paired_difference_interval(np.ones(10), np.ones(10), level=level)


def test_bad_inputs_are_refused_with_the_fix() -> None:
    with pytest.raises(ValueError, match=r"n_resamples must be at least 1"):
        bootstrap_interval(np.ones(10), n_resamples=0)
    with pytest.raises(ValueError, match=r"non-empty 1-D array.*shape \(0,\)"):
        bootstrap_interval(np.array([]))
    with pytest.raises(ValueError, match=r"1-D array.*shape \(2, 2\)"):
        bootstrap_interval(np.ones((2, 2)))
    with pytest.raises(ValueError, match=r"NaN or infinite"):
        bootstrap_interval(np.array([1.0, np.nan]))
    with pytest.raises(ValueError, match=r"same order \(got 3 and 4 values\)"):
        paired_difference_interval(np.ones(3), np.ones(4))
