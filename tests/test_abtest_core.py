"""The pure core of A/B testing: experiment definitions and hash assignment, the
statistics of a readout, the contact policy, outcomes read from holdings snapshots and
the readout itself.

Expected values are derived by hand or from scipy directly, never copied from the code's
output; the statistical tests use fixed seeds and acceptance bands wide enough (99.9%)
that a correct implementation practically never fails them.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from scipy.stats.contingency import relative_risk

from recommender.contact import ContactPolicy
from recommender.errors import ConfigError
from recommender.experiment import HOLDOUT, Experiment, Variant
from recommender.outcome import SnapshotOutcomes, derive
from recommender.readout import readout, render
from recommender.significance import clients_needed, rate, sample_ratio, uplift

ROOT = Path(__file__).resolve().parents[1]
T0 = datetime(2026, 1, 1, tzinfo=UTC)
N_IDS = 100_000


def three_arms(salt: str = "salt-1", **overrides: Any) -> Experiment:
    """Variants a, b, c weighted 1, 2, 1, with a 10% holdout."""
    fields: dict[str, Any] = {
        "name": "nbo-q1",
        "salt": salt,
        "variants": (Variant("a"), Variant("b", weight=2.0), Variant("c")),
        "holdout": 0.1,
        "start": T0,
    }
    return Experiment(**{**fields, **overrides})


def two_arms(**overrides: Any) -> Experiment:
    """Variants a and b, equal weights, no holdout, starting at T0."""
    fields: dict[str, Any] = {
        "name": "ab",
        "salt": "s",
        "variants": (Variant("a"), Variant("b")),
        "start": T0,
    }
    return Experiment(**{**fields, **overrides})


@pytest.fixture(scope="module")
def ids() -> list[str]:
    return [f"C{i:07d}" for i in range(N_IDS)]


@pytest.fixture(scope="module")
def assigned(ids: list[str]) -> np.ndarray:
    return three_arms().assign_many(ids)


# --------------------------------------------------------------------------- experiment


def test_assign_many_matches_the_configured_shares(assigned: np.ndarray) -> None:
    experiment = three_arms()
    shares = experiment.shares()
    arms = list(shares)
    assert set(np.unique(assigned)) == set(arms)
    counts = np.array([(assigned == arm).sum() for arm in arms])
    expected = np.array([shares[arm] for arm in arms]) * N_IDS
    assert stats.chisquare(counts, expected).pvalue > 0.001
    # The check has teeth: the same counts are far from an equal split of the variants.
    wrong = np.array([0.3, 0.3, 0.3, 0.1]) * N_IDS
    assert stats.chisquare(counts, wrong).pvalue < 1e-12


def test_assignment_follows_the_documented_hash_rule(ids: list[str], assigned: np.ndarray) -> None:
    """u = first 8 bytes of SHA-256(salt:id) / 2**64; holdout below 0.1, then the
    variants by cumulative weight (1/4, 3/4, 1) of the rescaled u."""

    def by_hand(customer_id: str) -> str:
        digest = hashlib.sha256(f"salt-1:{customer_id}".encode()).digest()
        u = int.from_bytes(digest[:8], "big") / 2**64
        if u < 0.1:
            return HOLDOUT
        v = (u - 0.1) / 0.9
        return "a" if v < 0.25 else "b" if v < 0.75 else "c"

    sample = range(0, N_IDS, 97)
    assert [str(assigned[i]) for i in sample] == [by_hand(ids[i]) for i in sample]


def test_experiments_with_different_salts_split_independently(
    ids: list[str], assigned: np.ndarray
) -> None:
    other = Experiment(
        "pricing", "salt-2", (Variant("x"), Variant("y")), holdout=0.2, start=T0
    ).assign_many(ids)
    table = pd.crosstab(assigned, other).to_numpy()
    assert table.shape == (4, 3)
    assert stats.chi2_contingency(table).pvalue > 0.001
    # With the same salt the hash is the same, so the arms are strongly dependent: a
    # test that ignored the salt would fail the check above.
    same_salt = Experiment(
        "pricing", "salt-1", (Variant("x"), Variant("y")), holdout=0.2, start=T0
    ).assign_many(ids)
    assert stats.chi2_contingency(pd.crosstab(assigned, same_salt).to_numpy()).pvalue < 1e-12


def test_the_same_salt_gives_the_same_assignment(ids: list[str], assigned: np.ndarray) -> None:
    twin = three_arms(name="another-name", description="same salt, same arms")
    assert np.array_equal(twin.assign_many(ids), assigned)
    resalted = three_arms(salt="salt-1b").assign_many(ids)
    # Two independent draws agree with probability sum(share**2) = 0.325.
    agree = float(np.mean(resalted == assigned))
    assert 0.31 < agree < 0.34


def test_assignment_is_sticky_across_calls_and_a_dict_round_trip(ids: list[str]) -> None:
    experiment = three_arms()
    some = ids[:2000]
    first = experiment.assign_many(some)
    assert np.array_equal(experiment.assign_many(some), first)
    rebuilt = Experiment.from_dict(json.loads(json.dumps(experiment.to_dict())))
    assert rebuilt == experiment
    assert np.array_equal(rebuilt.assign_many(some), first)
    assert all(experiment.assign(c) == first[i] for i, c in enumerate(some[:200]))
    assert isinstance(experiment.assign(some[0]), str)


def test_assignment_is_sticky_in_another_process(ids: list[str]) -> None:
    """Another interpreter (with its own str-hash seed) assigns the same arms."""
    experiment = three_arms()
    some = ids[:200]
    script = (
        "import json, sys\n"
        "from recommender.experiment import Experiment\n"
        "raw = json.load(sys.stdin)\n"
        "experiment = Experiment.from_dict(raw['experiment'])\n"
        "print(json.dumps([str(a) for a in experiment.assign_many(raw['ids'])]))\n"
    )
    venv = ROOT / ".venv" / "bin" / "python"
    python = str(venv) if venv.exists() else sys.executable
    payload = json.dumps({"experiment": experiment.to_dict(), "ids": some})
    expected = [str(a) for a in experiment.assign_many(some)]
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        done = subprocess.run(
            [python, "-c", script], input=payload, capture_output=True, text=True,
            cwd=ROOT, env=env, check=True, timeout=60,
        )  # fmt: skip
        assert json.loads(done.stdout) == expected


def test_assign_many_takes_any_iterable() -> None:
    experiment = three_arms()
    assert len(experiment.assign_many([])) == 0
    listed = experiment.assign_many(["C1", "C2", "C3"])
    generated = experiment.assign_many(c for c in ("C1", "C2", "C3"))
    assert list(generated) == list(listed)
    assert [experiment.assign(c) for c in ("C1", "C2", "C3")] == list(listed)


def test_a_single_variant_without_holdout_gets_everyone(ids: list[str]) -> None:
    only = Experiment("solo", "s", (Variant("only"),), start=T0)
    assert set(only.assign_many(ids[:5000])) == {"only"}


def test_default_control_is_the_first_variant_and_shares_sum_to_one() -> None:
    experiment = three_arms()
    assert experiment.control == "a"
    assert experiment.control_name == "a"
    assert experiment.arms == ["a", "b", "c", HOLDOUT]
    shares = experiment.shares()
    # 90% split 1:2:1, and the 10% holdout.
    assert shares == pytest.approx({"a": 0.225, "b": 0.45, "c": 0.225, HOLDOUT: 0.1})
    assert sum(shares.values()) == pytest.approx(1.0)
    explicit = three_arms(control="b")
    assert explicit.control_name == "b"
    plain = two_arms()
    assert plain.arms == ["a", "b"]
    assert plain.shares() == pytest.approx({"a": 0.5, "b": 0.5})
    assert HOLDOUT not in plain.shares()
    assert plain.variant("b") == Variant("b")
    assert plain.variant("zzz") is None


def test_from_dict_fills_defaults_and_parses_iso_times() -> None:
    experiment = Experiment.from_dict({
        "name": "spring",
        "variants": [{"name": "a"}, {"name": "b", "weight": 3}],
        "start": "2026-03-01T00:00Z",
        "end": "2026-04-01T00:00:00",
    })  # fmt: skip
    assert experiment.salt == "spring"  # the salt defaults to the name
    assert experiment.channel == "branch"
    assert experiment.holdout == 0.0
    assert experiment.control == "a"
    assert experiment.start == datetime(2026, 3, 1, tzinfo=UTC)
    assert experiment.end == datetime(2026, 4, 1, tzinfo=UTC)  # no zone given: UTC
    assert experiment.shares() == pytest.approx({"a": 0.25, "b": 0.75})


def variants(*names: str) -> tuple[Variant, ...]:
    return tuple(Variant(n) for n in names)


@pytest.mark.parametrize(
    ("build", "fragment"),
    [
        (lambda: two_arms(variants=variants("a", "a")), "variant names must be unique"),
        (lambda: Variant("a", weight=0), "weight must be a positive number, got 0"),
        (lambda: Variant("a", weight=-1.5), "weight must be a positive number, got -1.5"),
        (lambda: Variant("a", weight=float("nan")), "weight must be a positive number, got nan"),
        (lambda: Variant("a", weight=float("inf")), "weight must be a positive number, got inf"),
        (lambda: Variant("holdout"), "'holdout' is reserved for the holdout share"),
        (lambda: two_arms(holdout=1.0), "holdout is a share in [0, 1), got 1.0"),
        (lambda: two_arms(holdout=1.5), "holdout is a share in [0, 1), got 1.5"),
        (lambda: two_arms(holdout=-0.1), "holdout is a share in [0, 1), got -0.1"),
        (lambda: two_arms(holdout=float("nan")), "holdout is a share in [0, 1)"),
        (lambda: two_arms(control="c"), "control 'c' is not a variant (['a', 'b'])"),
        (lambda: two_arms(end=T0 - timedelta(days=1)), "must be after start"),
        (lambda: two_arms(end=T0), "must be after start"),
        (lambda: two_arms(start=datetime(2026, 1, 1)), "need a time zone"),
        (lambda: two_arms(end=datetime(2026, 2, 1)), "need a time zone"),
        (
            lambda: Variant("pop", policy="popularity", model="champion"),
            "the popularity policy uses no model",
        ),
        (lambda: Variant("a", policy="random"), "policy 'random': use model or popularity"),
        (
            lambda: Variant("a", objective="clicks"),
            "objective 'clicks': use propensity or expected_value",
        ),
        (lambda: Variant("a b"), "variant 'a b': a name is 1-64 letters"),
        (lambda: Variant(""), "a name is 1-64 letters"),
        (lambda: Variant("-a"), "starting with a letter or digit"),
        (lambda: Variant("a" * 65), "a name is 1-64 letters"),
        (lambda: two_arms(name="my exp!"), "experiment 'my exp!': a name is 1-64 letters"),
        (lambda: two_arms(salt=""), "salt must not be empty"),
        (lambda: two_arms(variants=()), "needs at least one variant"),
        (
            lambda: Experiment.from_dict({"name": "x", "variants": [{"name": "a"}], "colour": 1}),
            "unknown field(s) ['colour']",
        ),
        (
            lambda: Experiment.from_dict({"name": "x", "variants": [{"name": "a", "size": 2}]}),
            "experiment variants:",
        ),
        (
            lambda: Experiment.from_dict(
                {"name": "x", "variants": [{"name": "a"}], "start": "yesterday"}
            ),
            "'yesterday' is not an ISO 8601 time",
        ),
        (
            lambda: Experiment.from_dict(
                {"name": "x", "variants": [{"name": "a"}], "end": "2026-02-30"}
            ),
            "'2026-02-30' is not an ISO 8601 time",
        ),
        (
            lambda: Experiment.from_dict(
                {
                    "name": "x",
                    "variants": [{"name": "a"}],
                    "start": "2026-02-01T00:00Z",
                    "end": "2026-01-01T00:00Z",
                }
            ),
            "must be after start",
        ),
    ],
)
def test_invalid_definitions_raise_a_config_error_that_says_why(build: Any, fragment: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(fragment)):
        build()


def test_valid_names_and_policies_are_accepted() -> None:
    Variant("A.b-c_9", weight=0.001, objective="expected_value")
    Variant("pop", policy="popularity")
    Variant("m", model="models:/nbo@champion", objective="propensity")
    two_arms(name="x" * 64, holdout=0.0)
    two_arms(holdout=0.999)


def test_a_naive_stopped_at_is_refused() -> None:
    with pytest.raises(ConfigError, match="time zone"):
        two_arms(stopped_at=datetime(2026, 2, 1))


def test_active_follows_start_end_and_stop() -> None:
    end = T0 + timedelta(days=30)
    experiment = two_arms(end=end)
    tick = timedelta(microseconds=1)
    assert not experiment.active(T0 - tick)
    assert experiment.active(T0)  # start is inclusive
    assert experiment.active(end - tick)
    assert not experiment.active(end)  # end is exclusive
    assert two_arms().active(T0 + timedelta(days=10_000))  # no end: runs until stopped
    stop = T0 + timedelta(days=5)
    stopped = two_arms(end=end, stopped_at=stop)
    assert stopped.active(stop - tick)
    assert not stopped.active(stop)  # stopped at that moment
    assert not stopped.active(stop + timedelta(days=1))
    # A stop planned in the future does not end it early.
    assert two_arms(stopped_at=T0 + timedelta(days=100)).active(T0 + timedelta(days=99))


def test_overlaps_needs_the_same_channel_and_intersecting_windows() -> None:
    day = timedelta(days=1)
    first = two_arms(end=T0 + 10 * day)
    adjacent = two_arms(name="next", start=T0 + 10 * day, end=T0 + 20 * day)
    inside = two_arms(name="inside", start=T0 + 3 * day, end=T0 + 4 * day)
    open_ended = two_arms(name="open", start=T0 + 9 * day)
    after_stop = two_arms(name="late", start=T0 + 5 * day)
    stopped = two_arms(name="stopped", end=T0 + 10 * day, stopped_at=T0 + 5 * day)
    assert not first.overlaps(adjacent) and not adjacent.overlaps(first)  # [s, e) windows
    assert first.overlaps(inside) and inside.overlaps(first)
    assert first.overlaps(open_ended) and open_ended.overlaps(first)
    assert two_arms().overlaps(open_ended)  # both open-ended
    assert first.overlaps(first)
    assert first.overlaps(after_stop)
    assert not stopped.overlaps(after_stop)  # the stop ends its window before the other
    assert not after_stop.overlaps(stopped)
    elsewhere = two_arms(name="web", channel="web", end=T0 + 10 * day)
    assert not first.overlaps(elsewhere) and not elsewhere.overlaps(first)
    assert not two_arms(channel="app").overlaps(two_arms(channel="web"))


# ------------------------------------------------------------------------- significance


@pytest.mark.parametrize(("k", "n"), [(0, 10), (1, 10), (37, 800), (50, 50), (1, 2)])
def test_rate_is_the_share_with_scipys_wilson_interval(k: int, n: int) -> None:
    r = rate(k, n)
    ci = stats.binomtest(k, n).proportion_ci(0.95, method="wilson")
    assert (r.successes, r.trials) == (k, n)
    assert r.rate == pytest.approx(k / n)
    assert r.low == pytest.approx(ci.low, abs=1e-12)
    assert r.high == pytest.approx(ci.high, abs=1e-12)
    assert r.low is not None and r.high is not None
    assert r.low <= k / n <= r.high
    assert r.to_dict() == {"successes": k, "trials": n, "rate": r.rate, "ci_low": r.low,
                           "ci_high": r.high}  # fmt: skip


def test_rate_of_no_trials_is_unknown() -> None:
    r = rate(0, 0)
    assert (r.rate, r.low, r.high) == (None, None, None)
    assert r.trials == 0


def test_uplift_matches_welchs_test_worked_by_hand() -> None:
    """60/1000 vs 45/900: Welch's t on 0/1 outcomes (sample variance n/(n-1) p(1-p))."""
    ka, na, kb, nb = 60, 1000, 45, 900
    pa, pb = ka / na, kb / nb
    va, vb = pa * (1 - pa) / (na - 1), pb * (1 - pb) / (nb - 1)  # s^2 / n per arm
    se = math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / (na - 1) + vb**2 / (nb - 1))
    t = (pa - pb) / se
    half = stats.t.ppf(0.975, df) * se
    result = uplift(rate(ka, na), rate(kb, nb))
    assert result.difference == pytest.approx(0.01)
    assert result.p_value == pytest.approx(2 * stats.t.sf(abs(t), df), rel=1e-9)
    assert result.low == pytest.approx(0.01 - half, rel=1e-9)
    assert result.high == pytest.approx(0.01 + half, rel=1e-9)
    assert result.significant is False  # t is about 0.97
    assert result.relative == pytest.approx(pa / pb - 1)


def test_relative_uplift_is_scipys_relative_risk_minus_one() -> None:
    result = uplift(rate(90, 1500), rate(60, 1400))
    rr = relative_risk(90, 1500, 60, 1400)
    ci = rr.confidence_interval(0.95)
    assert result.relative == pytest.approx(rr.relative_risk - 1)
    assert result.relative == pytest.approx((90 / 1500) / (60 / 1400) - 1)
    assert result.relative_low == pytest.approx(ci.low - 1)
    assert result.relative_high == pytest.approx(ci.high - 1)
    # Without a success in the control there is no ratio.
    none = uplift(rate(5, 100), rate(0, 100))
    assert (none.relative, none.relative_low, none.relative_high) == (None, None, None)
    assert none.difference == pytest.approx(0.05)


def test_uplift_needs_two_clients_per_arm() -> None:
    for variant, control in ((rate(1, 1), rate(5, 10)), (rate(5, 10), rate(0, 0))):
        result = uplift(variant, control)
        assert result.difference is None and result.p_value is None
        assert result.significant is False


def test_identical_all_zero_arms_show_no_difference() -> None:
    result = uplift(rate(0, 50), rate(0, 50))
    assert (result.difference, result.low, result.high, result.p_value) == (0.0, None, None, 1.0)
    assert result.significant is False


def test_three_of_three_against_none_of_three_is_not_significant() -> None:
    fisher = stats.fisher_exact([[3, 0], [0, 3]]).pvalue  # 0.1: no evidence at 5%
    result = uplift(rate(3, 3), rate(0, 3))
    assert fisher > 0.05
    assert result.p_value == pytest.approx(fisher)
    assert result.significant is False


def test_an_arm_where_everyone_converted_raises_no_warning() -> None:
    result = uplift(rate(2, 2), rate(1, 3))
    # Welch with a zero-variance arm: t = (1 - 1/3) / sqrt(1/3 / 3), df = 2.
    t = (2 / 3) / math.sqrt((1 / 3) / 3)
    assert result.p_value == pytest.approx(2 * stats.t.sf(t, 2))


@pytest.fixture(scope="module")
def aa_runs() -> list[Any]:
    """2,000 A/A experiments: 2,000 clients per arm, true rate 5% in both."""
    rng = np.random.default_rng(20260101)
    n = 2000
    draws = rng.binomial(n, 0.05, size=(2000, 2))
    return [uplift(rate(int(a), n), rate(int(b), n)) for a, b in draws]


def band(runs: int, p: float) -> tuple[float, float]:
    """The 99.9% acceptance band of a Binomial(runs, p) count."""
    return float(stats.binom.ppf(0.0005, runs, p)), float(stats.binom.ppf(0.9995, runs, p))


def test_aa_experiments_are_significant_about_five_percent_of_the_time(
    aa_runs: list[Any],
) -> None:
    low, high = band(len(aa_runs), 0.05)
    hits = sum(r.significant for r in aa_runs)
    assert low <= hits <= high, (hits, low, high)
    assert all(r.p_value is not None and (r.p_value < 0.05) == r.significant for r in aa_runs)


def test_the_difference_interval_covers_zero_about_95_percent_of_the_time(
    aa_runs: list[Any],
) -> None:
    low, high = band(len(aa_runs), 0.95)
    covered = sum(r.low <= 0.0 <= r.high for r in aa_runs)
    assert low <= covered <= high, (covered, low, high)
    # Coverage and significance are the same decision for this test.
    assert all((r.low <= 0.0 <= r.high) != r.significant for r in aa_runs)


def test_a_real_difference_is_found_with_the_right_sign() -> None:
    """5% vs 8% at 3,000 per arm: z = 0.03 / sqrt(.05*.95/3000 + .08*.92/3000) = 4.7, so
    the power is about 99.8%."""
    rng = np.random.default_rng(7)
    n = 3000
    control = rng.binomial(n, 0.05, size=300)
    variant = rng.binomial(n, 0.08, size=300)
    runs = [uplift(rate(int(v), n), rate(int(c), n)) for v, c in zip(variant, control, strict=True)]
    assert np.mean([r.significant for r in runs]) > 0.95
    assert all(r.difference is not None and r.difference > 0 for r in runs if r.significant)
    assert np.mean([r.difference for r in runs]) == pytest.approx(0.03, abs=0.002)
    flipped = uplift(rate(int(control[0]), n), rate(int(variant[0]), n))
    assert flipped.difference == pytest.approx(-runs[0].difference)  # type: ignore[operator]


def test_exact_shares_are_no_sample_ratio_mismatch() -> None:
    result = sample_ratio({"a": 250, "b": 500, "c": 250}, {"a": 0.25, "b": 0.5, "c": 0.25})
    assert result.statistic == pytest.approx(0.0)
    assert result.p_value == pytest.approx(1.0)
    assert result.mismatch is False
    assert result.expected == pytest.approx({"a": 250.0, "b": 500.0, "c": 250.0})


def test_a_51_49_split_of_200000_is_a_sample_ratio_mismatch() -> None:
    """102,000 vs 98,000 against 100,000 each: chi2 = 2 * 2000**2 / 100000 = 80 on one
    degree of freedom, p = 3.7e-19."""
    result = sample_ratio({"a": 102_000, "b": 98_000}, {"a": 0.5, "b": 0.5})
    assert result.statistic == pytest.approx(80.0)
    assert result.p_value == pytest.approx(stats.chi2.sf(80.0, 1), rel=1e-6)
    assert result.p_value < 1e-18
    assert result.mismatch is True
    # ... while 50.1 / 49.9 of 2,000 (chi2 = 0.016) is just luck.
    assert sample_ratio({"a": 1002, "b": 998}, {"a": 0.5, "b": 0.5}).mismatch is False


def test_a_missing_arm_counts_as_zero_clients() -> None:
    shares = {"a": 0.45, "b": 0.45, HOLDOUT: 0.1}
    result = sample_ratio({"a": 450, "b": 450}, shares)
    assert result.observed == {"a": 450, "b": 450, HOLDOUT: 0}
    assert result.expected == pytest.approx({"a": 405.0, "b": 405.0, HOLDOUT: 90.0})
    # chi2 = 45^2/405 * 2 + 90 = 100 on two degrees of freedom.
    assert result.statistic == pytest.approx(100.0)
    assert result.mismatch is True


def test_sample_ratio_needs_clients_and_two_arms() -> None:
    empty = sample_ratio({}, {"a": 0.5, "b": 0.5})
    assert (empty.statistic, empty.p_value, empty.mismatch) == (None, None, False)
    single = sample_ratio({"a": 10}, {"a": 1.0})
    assert (single.p_value, single.mismatch) == (None, False)


def test_clients_needed_follows_the_normal_approximation() -> None:
    assert clients_needed(0.05, 0.05) is None
    assert clients_needed(0.0, 0.05) is None
    assert clients_needed(0.05, 1.0) is None
    z = stats.norm.ppf(0.975) + stats.norm.ppf(0.8)  # 1.960 + 0.842
    by_hand = math.ceil(z**2 * (0.05 * 0.95 + 0.08 * 0.92) / 0.03**2)
    assert clients_needed(0.05, 0.08) == by_hand
    assert 1000 < by_hand < 1100  # 7.849 * 0.1211 / 0.0009 = 1,056.1
    sizes = [clients_needed(0.05, 0.05 + d) for d in (0.04, 0.02, 0.01, 0.005)]
    assert all(s is not None for s in sizes)
    assert sizes == sorted(sizes)  # type: ignore[type-var]
    assert len(set(sizes)) == len(sizes)
    assert clients_needed(0.05, 0.08, power=0.9) > by_hand  # type: ignore[operator]


def test_clients_needed_gives_about_80_percent_power() -> None:
    n = clients_needed(0.05, 0.08)
    assert n is not None
    rng = np.random.default_rng(11)
    control = rng.binomial(n, 0.05, size=400)
    variant = rng.binomial(n, 0.08, size=400)
    found = np.mean([
        uplift(rate(int(v), n), rate(int(c), n)).significant
        for v, c in zip(variant, control, strict=True)
    ])  # fmt: skip
    assert 0.7 <= found <= 0.9, found


# ------------------------------------------------------------------------------ contact


def test_a_reached_cap_blocks_every_product() -> None:
    policy = ContactPolicy(decline_days=30, max_offers=3, window_days=7)
    for made in (3, 10):
        allowed, blocked = policy.apply(made, set(), ["acc", "card", "fund"])
        assert allowed == 0
        assert set(blocked) == {0, 1, 2}
        for why in blocked.values():
            assert why.startswith("contact policy:")
            assert f"{made} offers" in why and "limit 3" in why and "7 days" in why


def test_a_partial_cap_leaves_the_rest_and_blocks_declines() -> None:
    policy = ContactPolicy(decline_days=30, max_offers=6)
    allowed, blocked = policy.apply(2, {"card", "loan"}, ["acc", "card", "fund"])
    assert allowed == 4
    assert list(blocked) == [1]  # loan was declined but is not offered here
    assert blocked[1].startswith("contact policy:")
    assert "declined" in blocked[1] and "30 days" in blocked[1]
    assert policy.apply(0, set(), ["acc"]) == (6, {})


def test_declines_are_ignored_when_decline_days_is_zero() -> None:
    policy = ContactPolicy(decline_days=0, max_offers=6)
    assert policy.apply(1, {"card"}, ["acc", "card"]) == (5, {})


def test_max_offers_zero_means_no_cap() -> None:
    policy = ContactPolicy(decline_days=30, max_offers=0)
    allowed, blocked = policy.apply(1000, {"card"}, ["acc", "card"])
    assert allowed is None
    assert list(blocked) == [1]
    assert policy.enabled
    assert not ContactPolicy(decline_days=0, max_offers=0).enabled
    assert ContactPolicy(decline_days=0, max_offers=0).apply(99, {"acc"}, ["acc"]) == (None, {})


# ------------------------------------------------------------------------------ outcome


def at(text: str) -> datetime:
    """A UTC time from 'YYYY-MM-DD HH:MM'."""
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def exposures_frame(rows: list[tuple[str, str, str, str]]) -> pd.DataFrame:
    """(request_id, customer_id, product_id, 'YYYY-MM-DD HH:MM' UTC) rows."""
    return pd.DataFrame(
        [(r, c, p, at(t)) for r, c, p, t in rows],
        columns=["request_id", "customer_id", "product_id", "created_at"],
    )


def clients_frame(rows: list[tuple[str, str]]) -> pd.DataFrame:
    return pd.DataFrame([(c, at(t)) for c, t in rows], columns=["customer_id", "created_at"])


def holdings_frame(rows: list[tuple[str, str, str]]) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=["customer_id", "product_id", "snapshot_date"])
    frame["snapshot_date"] = pd.to_datetime(frame["snapshot_date"])
    return frame


def test_a_product_acquired_inside_the_window_converts() -> None:
    out = derive(
        exposures_frame([("r1", "c1", "card", "2026-01-10 15:00")]),
        clients_frame([("c1", "2026-01-10 15:00")]),
        holdings_frame(
            [("c1", "acc", "2026-01-01"), ("c1", "acc", "2026-02-01"), ("c1", "card", "2026-02-01")]
        ),
        window_days=30,
    )
    assert out.converted_offers == {("r1", "card")}
    assert out.acquired_clients == {"c1"}
    assert out.observed_clients == {"c1"}


def test_a_product_held_before_the_offer_does_not_convert() -> None:
    holdings = holdings_frame([
        ("c1", "card", "2026-01-01"), ("c1", "card", "2026-02-01"),
        ("c2", "card", "2026-01-01"), ("c2", "card", "2026-02-01"),
    ])  # fmt: skip
    out = derive(
        exposures_frame([("r1", "c1", "card", "2026-01-10 09:00"),
                         ("r2", "c2", "card", "2026-01-01 09:00")]),  # offered on a snapshot day
        clients_frame([("c1", "2026-01-10 09:00"), ("c2", "2026-01-01 09:00")]),
        holdings,
        window_days=40,
    )  # fmt: skip
    assert out.converted_offers == set()
    assert out.acquired_clients == set()
    assert out.observed_clients == {"c1", "c2"}


def test_only_the_latest_snapshot_before_the_offer_counts_as_held() -> None:
    """Card held in December, dropped by January, held again in February: a new card."""
    out = derive(
        exposures_frame([("r1", "c1", "card", "2026-01-10 09:00")]),
        clients_frame([("c1", "2026-01-10 09:00")]),
        holdings_frame(
            [
                ("c1", "card", "2025-12-01"),
                ("c1", "acc", "2025-12-01"),
                ("c1", "acc", "2026-01-01"),
                ("c1", "acc", "2026-02-01"),
                ("c1", "card", "2026-02-01"),
            ]
        ),
        window_days=30,
    )
    assert out.converted_offers == {("r1", "card")}
    assert out.acquired_clients == {"c1"}


def test_a_product_acquired_after_the_window_does_not_convert() -> None:
    exposures = exposures_frame([("r1", "c1", "card", "2026-01-10 15:00")])
    clients = clients_frame([("c1", "2026-01-10 15:00")])
    holdings = holdings_frame(
        [
            ("c1", "acc", "2026-01-01"),
            ("c1", "acc", "2026-02-01"),
            ("c1", "acc", "2026-03-01"),
            ("c1", "card", "2026-03-01"),
        ]
    )
    out = derive(exposures, clients, holdings, window_days=30)  # window (Jan 10, Feb 9]
    assert out.converted_offers == set()
    assert out.acquired_clients == set()
    assert out.observed_clients == {"c1"}  # the Feb 1 snapshot is in the window
    # With a window reaching March 1 (exactly 50 days: the end is inclusive) it converts.
    wide = derive(exposures, clients, holdings, window_days=50)
    assert wide.converted_offers == {("r1", "card")}
    assert wide.acquired_clients == {"c1"}
    assert derive(exposures, clients, holdings, window_days=49).converted_offers == set()


def test_a_client_whose_window_has_no_snapshot_is_not_observed() -> None:
    out = derive(
        exposures_frame([("r1", "c1", "card", "2026-02-10 12:00")]),
        clients_frame([("c1", "2026-02-10 12:00"), ("c2", "2026-01-10 12:00")]),
        holdings_frame(
            [("c1", "acc", "2026-02-01"), ("c1", "card", "2026-04-01"), ("c2", "acc", "2026-02-01")]
        ),
        window_days=30,  # (Feb 10, Mar 12]: no snapshot for anyone
    )
    assert out.converted_offers == set()
    assert out.observed_clients == {"c2"}
    assert "c1" not in out.acquired_clients


def test_a_holdout_client_is_compared_on_any_product() -> None:
    """h1 (no offer) takes a loan; h2 changes nothing; x is not in the experiment."""
    out = derive(
        exposures_frame([("r1", "c1", "card", "2026-01-10 15:00")]),
        clients_frame(
            [("c1", "2026-01-10 15:00"), ("h1", "2026-01-12 08:00"), ("h2", "2026-01-12 08:00")]
        ),
        holdings_frame(
            [
                ("c1", "acc", "2026-01-01"),
                ("c1", "acc", "2026-02-01"),
                ("h1", "acc", "2026-01-01"),
                ("h1", "acc", "2026-02-01"),
                ("h1", "loan", "2026-02-01"),
                ("h2", "acc", "2026-01-01"),
                ("h2", "acc", "2026-02-01"),
                ("x", "acc", "2026-01-01"),
                ("x", "acc", "2026-02-01"),
                ("x", "card", "2026-02-01"),
            ]
        ),
        window_days=30,
    )
    assert out.acquired_clients == {"h1"}
    assert out.observed_clients == {"c1", "h1", "h2"}
    assert out.converted_offers == set()


# ------------------------------------------------------------------------------ readout


def readout_experiment() -> Experiment:
    return Experiment(
        "nbo-readout", "s", (Variant("a"), Variant("b", model="7", objective="expected_value")),
        holdout=0.2, start=T0,
    )  # fmt: skip


DECISIONS = pd.DataFrame(
    [
        ("r1", "c1", "a", "nbo", "1"), ("r2", "c1", "a", "nbo", "1"),
        ("r3", "c2", "a", "nbo", "1"), ("r4", "c3", "a", "nbo", "2"),
        ("r5", "c4", "b", "nbo", "7"), ("r6", "c5", "b", "nbo", "7"),
        ("r9", "c6", "b", "nbo", "7"), ("r7", "h1", HOLDOUT, None, None),
        ("r8", "h2", HOLDOUT, None, None),
    ],
    columns=["request_id", "customer_id", "variant", "model_name", "model_version"],
).assign(created_at=T0)  # fmt: skip

EXPOSURES = pd.DataFrame(
    [
        ("r1", "c1", "card", "a"), ("r1", "c1", "fund", "a"), ("r2", "c1", "loan", "a"),
        ("r3", "c2", "card", "a"), ("r4", "c3", "fund", "a"),
        ("r5", "c4", "card", "b"), ("r5", "c4", "loan", "b"), ("r6", "c5", "fund", "b"),
        ("r9", "c6", "acc", "b"),
    ],
    columns=["request_id", "customer_id", "product_id", "variant"],
)  # fmt: skip

FEEDBACK = pd.DataFrame(
    [
        ("r1", "card", "accepted"), ("r1", "fund", "declined"), ("r3", "card", "converted"),
        ("r5", "card", "accepted"), ("r5", "card", "converted"), ("r6", "fund", "converted"),
        ("r99", "card", "converted"),  # not an exposure of this experiment
    ],
    columns=["request_id", "product_id", "outcome"],
)  # fmt: skip


def test_readout_counts_each_arm_by_hand() -> None:
    report = readout(readout_experiment(), DECISIONS, EXPOSURES, FEEDBACK)
    arms = report["arms"]
    assert list(arms) == ["a", "b", HOLDOUT]
    a, b, h = arms["a"], arms["b"], arms[HOLDOUT]
    # a: clients c1 c2 c3; 5 offers, accepted r1/card and r3/card (converted); c2 converted.
    assert (a["clients"], a["requests"], a["exposures"]) == (3, 4, 5)
    assert (a["acceptance"]["successes"], a["acceptance"]["trials"]) == (2, 5)
    assert (a["conversion"]["successes"], a["conversion"]["trials"]) == (1, 3)
    assert a["offer_conversions"] == 1
    assert sorted(a["models"]) == ["nbo/1", "nbo/2"]
    assert (a["policy"], a["objective"]) == ("model", None)
    # b: clients c4 c5 c6; 4 offers, r5/card (accepted then converted: counted once) and
    # r6/fund accepted; c4 and c5 converted.
    assert (b["clients"], b["requests"], b["exposures"]) == (3, 3, 4)
    assert (b["acceptance"]["successes"], b["acceptance"]["trials"]) == (2, 4)
    assert (b["conversion"]["successes"], b["conversion"]["trials"]) == (2, 3)
    assert b["offer_conversions"] == 2
    assert (b["models"], b["objective"]) == (["nbo/7"], "expected_value")
    # holdout: two clients, offered nothing.
    assert (h["clients"], h["exposures"], h["models"], h["policy"]) == (2, 0, [], None)
    assert h["acceptance"]["rate"] is None
    assert (h["conversion"]["successes"], h["conversion"]["trials"]) == (0, 2)
    assert "any_conversion" not in a
    assert a["acceptance"]["rate"] == pytest.approx(0.4)
    assert report["clients_total"] == 8
    assert report["outcomes_from_snapshots"] is False
    assert report["treated_vs_holdout"] is None
    assert report["experiment"]["name"] == "nbo-readout"


def test_readout_compares_each_variant_with_the_control() -> None:
    report = readout(readout_experiment(), DECISIONS, EXPOSURES, FEEDBACK)
    (comparison,) = report["comparisons"]
    assert (comparison["variant"], comparison["control"], comparison["metric"]) == (
        "b", "a", "conversion"
    )  # fmt: skip
    assert comparison["variant_rate"] == pytest.approx(2 / 3)
    assert comparison["control_rate"] == pytest.approx(1 / 3)
    assert comparison["difference"] == pytest.approx(1 / 3)
    assert comparison["relative"] == pytest.approx(1.0)  # twice the control's rate
    assert comparison["clients"] == {"b": 3, "a": 3}
    # Welch's t-test on b = [1, 1, 0] against a = [1, 0, 0], straight from scipy.
    expected = stats.ttest_ind([1.0, 1.0, 0.0], [1.0, 0.0, 0.0], equal_var=False)
    assert comparison["p_value"] == pytest.approx(expected.pvalue)
    assert comparison["significant"] is False
    # (z_.975 + z_.8)^2 * (2/9 + 2/9) / (1/3)^2 = 4 * 7.85 = 31.4 -> 32 clients per arm.
    z = stats.norm.ppf(0.975) + stats.norm.ppf(0.8)
    assert comparison["clients_needed_per_arm_80pct_power"] == math.ceil(4 * z**2) == 32
    ratio = report["sample_ratio"]
    assert ratio["observed"] == {"a": 3, "b": 3, HOLDOUT: 2}
    assert ratio["expected"] == pytest.approx({"a": 3.2, "b": 3.2, HOLDOUT: 1.6})
    assert ratio["mismatch"] is False


def test_readout_with_snapshot_outcomes_compares_treated_with_holdout() -> None:
    snapshots = SnapshotOutcomes(
        converted_offers={("r4", "fund")},
        acquired_clients={"c3", "c4", "h1", "stranger"},
        observed_clients={"c1", "c2", "c3", "c4", "c6", "h1", "h2"},  # not c5 (yet)
    )
    report = readout(readout_experiment(), DECISIONS, EXPOSURES, FEEDBACK, snapshots)
    arms = report["arms"]
    # a: c2 from feedback, c3 from the snapshots.
    assert (arms["a"]["conversion"]["successes"], arms["a"]["conversion"]["trials"]) == (2, 3)
    assert arms["a"]["offer_conversions"] == 2
    # b: c4 converted; c5 converted by feedback too, but its window has no snapshot yet,
    # so with snapshot outcomes it is not counted either way (same clients as any_conversion)
    assert (arms["b"]["conversion"]["successes"], arms["b"]["conversion"]["trials"]) == (1, 2)
    anyc = {arm: (a["any_conversion"]["successes"], a["any_conversion"]["trials"])
            for arm, a in arms.items()}  # fmt: skip
    assert anyc == {"a": (1, 3), "b": (1, 2), HOLDOUT: (1, 2)}
    metrics = [(c["variant"], c["control"], c["metric"]) for c in report["comparisons"]]
    assert metrics == [("b", "a", "conversion"), ("b", "a", "any_conversion")]
    assert all(c["p_value"] is not None for c in report["comparisons"])
    treated = report["treated_vs_holdout"]
    assert treated is not None
    assert (treated["variant"], treated["control"], treated["metric"]) == (
        "treated", HOLDOUT, "any_conversion"
    )  # fmt: skip
    assert treated["clients"] == {"treated": 5, HOLDOUT: 2}
    assert treated["variant_rate"] == pytest.approx(0.4)  # (1 + 1) / (3 + 2)
    assert treated["control_rate"] == pytest.approx(0.5)
    assert treated["difference"] == pytest.approx(-0.1)
    assert treated["p_value"] == pytest.approx(
        stats.ttest_ind([1.0, 1.0, 0.0, 0.0, 0.0], [1.0, 0.0], equal_var=False).pvalue
    )
    assert report["outcomes_from_snapshots"] is True
    text = render(report)
    assert "treated vs holdout on any_conversion" in text
    assert "b vs a on any_conversion" in text


def test_no_holdout_means_no_treated_comparison_even_with_snapshots() -> None:
    experiment = Experiment("ab", "s", (Variant("a"), Variant("b")), start=T0)
    decisions = DECISIONS[DECISIONS["variant"] != HOLDOUT]
    snapshots = SnapshotOutcomes(set(), {"c1"}, {"c1", "c4"})
    report = readout(experiment, decisions, EXPOSURES, FEEDBACK, snapshots)
    assert report["treated_vs_holdout"] is None
    assert HOLDOUT not in report["arms"]


def split(a_clients: int, b_clients: int) -> dict[str, Any]:
    """The readout of a two-arm, equal-weight experiment with these clients per arm."""
    experiment = Experiment("split", "s", (Variant("a"), Variant("b")), start=T0)
    arms = ["a"] * a_clients + ["b"] * b_clients
    decisions = pd.DataFrame({
        "request_id": [f"r{i}" for i in range(len(arms))],
        "customer_id": [f"c{i}" for i in range(len(arms))],
        "variant": arms, "model_name": "nbo", "model_version": "1", "created_at": T0,
    })  # fmt: skip
    exposures = pd.DataFrame(columns=["request_id", "customer_id", "product_id", "variant"])
    feedback = pd.DataFrame(columns=["request_id", "product_id", "outcome"])
    return readout(experiment, decisions, exposures, feedback)


def test_render_shouts_about_a_sample_ratio_mismatch() -> None:
    report = split(900, 100)
    # chi2 = 2 * 400**2 / 500 = 640: far past any threshold.
    assert report["sample_ratio"]["statistic"] == pytest.approx(640.0)
    assert report["sample_ratio"]["mismatch"] is True
    text = render(report)
    assert "SAMPLE RATIO MISMATCH" in text
    assert "do not trust this readout" in text
    assert "sample ratio OK" not in text


def test_render_says_the_sample_ratio_is_ok_for_a_fair_split() -> None:
    report = split(510, 490)  # chi2 = 0.4, p = 0.53
    assert report["sample_ratio"]["mismatch"] is False
    text = render(report)
    assert "sample ratio OK" in text
    assert "MISMATCH" not in text
    assert text.splitlines()[0].startswith("experiment split (channel branch, control a")
    assert "a vs b" not in text and "b vs a on conversion" in text


def test_render_shows_each_arm_and_comparison() -> None:
    text = render(readout(readout_experiment(), DECISIONS, EXPOSURES, FEEDBACK))
    rows: dict[str, str] = {}
    for line in text.splitlines()[1:]:  # the first line naming an arm is its table row
        if line.strip():
            rows.setdefault(line.split()[0], line)
    assert rows["a"].split()[1:3] == ["3", "5"]  # clients, exposures
    assert rows["b"].split()[1:3] == ["3", "4"]
    assert rows[HOLDOUT].split()[1:3] == ["2", "0"]
    assert "40.00%" in rows["a"]  # 2 of 5 offers accepted
    assert "b vs a on conversion: +33.33 pp" in text
    assert "holdout 20%" in text
