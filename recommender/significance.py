"""The statistics of an A/B report, all from scipy's tested implementations.

- a rate and its 95% interval: `scipy.stats.binomtest(...).proportion_ci` (Wilson score);
- the uplift of a variant over the control in percentage points, its interval and a
  two-sided p-value: Welch's t-test on the per-client 0/1 outcomes
  (`scipy.stats.ttest_ind(equal_var=False)` and its `confidence_interval`), which for
  samples of this size is the unpooled two-proportion z-test;
- the relative uplift and its interval: `scipy.stats.contingency.relative_risk` (Katz);
- the sample-ratio-mismatch check: `scipy.stats.chisquare` of clients per arm against
  the configured shares.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
from scipy import stats
from scipy.stats.contingency import relative_risk

CONFIDENCE = 0.95
SRM_ALPHA = 0.001  # the customary threshold: a real mismatch, not bad luck


@dataclass(frozen=True)
class Rate:
    successes: int
    trials: int
    rate: float | None
    low: float | None
    high: float | None

    def to_dict(self) -> dict[str, float | int | None]:
        return {"successes": self.successes, "trials": self.trials, "rate": self.rate,
                "ci_low": self.low, "ci_high": self.high}  # fmt: skip


@dataclass(frozen=True)
class Uplift:
    """Variant minus control."""

    difference: float | None  # in rate units (0.01 = one percentage point)
    low: float | None
    high: float | None
    p_value: float | None
    relative: float | None  # variant rate / control rate - 1
    relative_low: float | None
    relative_high: float | None
    significant: bool

    def to_dict(self) -> dict[str, float | bool | None]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class SampleRatio:
    observed: dict[str, int]
    expected: dict[str, float]
    statistic: float | None
    p_value: float | None
    mismatch: bool

    def to_dict(self) -> dict[str, object]:
        return dict(self.__dict__)


def rate(successes: int, trials: int) -> Rate:
    if trials <= 0:
        return Rate(successes, trials, None, None, None)
    ci = stats.binomtest(int(successes), int(trials)).proportion_ci(CONFIDENCE, method="wilson")
    return Rate(int(successes), int(trials), successes / trials, float(ci.low), float(ci.high))


def uplift(variant: Rate, control: Rate, alpha: float = 1 - CONFIDENCE) -> Uplift:
    none = Uplift(None, None, None, None, None, None, None, False)
    if variant.trials < 2 or control.trials < 2:
        return none
    a = _outcomes(variant.successes, variant.trials)
    b = _outcomes(control.successes, control.trials)
    difference = float(a.mean() - b.mean())
    if a.var() == 0 and b.var() == 0:
        # both arms all-0 or all-1: no spread to test on; Fisher's exact test on the 2x2
        # table gives the p-value (3/3 vs 0/3 is p = 0.1, not "significant")
        table = [[variant.successes, variant.trials - variant.successes],
                 [control.successes, control.trials - control.successes]]  # fmt: skip
        p_value = float(stats.fisher_exact(table).pvalue)
        low = high = None
    else:
        with warnings.catch_warnings():
            # an arm where every client converted has no spread; Welch's test is still
            # defined (the other arm's variance), scipy only warns about precision
            warnings.filterwarnings("ignore", "Precision loss", RuntimeWarning)
            test = stats.ttest_ind(a, b, equal_var=False)
            ci = test.confidence_interval(CONFIDENCE)
        low, high, p_value = float(ci.low), float(ci.high), float(test.pvalue)
    rel = rel_low = rel_high = None
    if control.successes > 0 and variant.successes > 0:
        rr = relative_risk(variant.successes, variant.trials, control.successes, control.trials)
        rr_ci = rr.confidence_interval(CONFIDENCE)
        rel = float(rr.relative_risk) - 1
        rel_low, rel_high = float(rr_ci.low) - 1, float(rr_ci.high) - 1
    return Uplift(difference, low, high, p_value, rel, rel_low, rel_high, p_value < alpha)


def sample_ratio(observed: dict[str, int], shares: dict[str, float]) -> SampleRatio:
    """Chi-square of clients per arm against the configured shares."""
    arms = list(shares)
    counts = np.array([observed.get(a, 0) for a in arms], dtype=np.float64)
    total = counts.sum()
    expected = np.array([shares[a] for a in arms]) * total
    seen = {a: int(c) for a, c in zip(arms, counts, strict=True)}
    wanted = dict(zip(arms, expected.tolist(), strict=True))
    if total == 0 or len(arms) < 2:
        return SampleRatio(seen, wanted, None, None, False)
    test = stats.chisquare(counts, expected)
    p_value = float(test.pvalue)
    return SampleRatio(seen, wanted, float(test.statistic), p_value, p_value < SRM_ALPHA)


def clients_needed(control: float, variant: float, power: float = 0.8,
                   alpha: float = 1 - CONFIDENCE) -> int | None:  # fmt: skip
    """Clients per arm for a two-sided test to detect `variant` vs `control` rates with
    the given power (normal approximation, quantiles from scipy.stats.norm)."""
    if not (0 < control < 1 and 0 < variant < 1) or control == variant:
        return None
    z = stats.norm.ppf(1 - alpha / 2) + stats.norm.ppf(power)
    spread = control * (1 - control) + variant * (1 - variant)
    return math.ceil(float(z) ** 2 * spread / (variant - control) ** 2)


def _outcomes(successes: int, trials: int) -> np.ndarray:
    out = np.zeros(trials, dtype=np.float64)
    out[:successes] = 1.0
    return out
