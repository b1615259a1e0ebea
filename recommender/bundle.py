"""Everything needed to score customers, in one object that is saved with the model.

A `ModelBundle` holds the calibrated hybrid model, the product catalog, how value tiers
and segments are derived, and the snapshot it was trained up to. It turns customer
records (known customers or cold-start clients: attributes plus held product ids) into
states and states into ranked, explained offers.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from datetime import date, datetime
from functools import cached_property
from typing import Any

import numpy as np
import pandas as pd

from recommender import columns as C
from recommender.errors import ConfigError
from recommender.models.hybrid import HybridModel
from recommender.ranking import top_k
from recommender.rules import (
    AGE_COLUMNS,
    BIRTH_COLUMNS,
    INCOME_COLUMNS,
    MAX_AGE_YEARS,
    RISK_COLUMNS,
    ClientFacts,
    client_facts,
)
from recommender.state import CENSORED, CustomerState, StateOptions
from recommender.tier import ValueTier, segment_labels

HOLDINGS = "holdings"
DROPPED = "dropped"
AS_OF = "as_of"
EXPECTED_VALUE = "expected_value"
OBJECTIVES = ("propensity", "expected_value")
RECORD_FIELDS = (C.CUSTOMER_ID, HOLDINGS, DROPPED, AS_OF)
# When no feature of the client pushes a product up, it was chosen for what it is.
FALLBACK_REASON = {"propensity": "popular with clients overall",
                   "expected_value": "high value of a sale"}  # fmt: skip
# Plausible values of a record's attributes (`coerce_attributes`): the attributes the
# rules read have known domains; any other number may lie up to SPREAD_SLACK spreads of
# the training data's quantiles beyond them (an income 100 times the top ones is a
# client, 1e308 is not); dates are years before the model's snapshot date.
SPREAD_SLACK = 100.0
NEWBORN_YEARS = 1.0  # a birth date up to a year after the model's snapshot date
DATE_SLACK_YEARS = 10.0  # other dates: this much beyond the training data's, and 0-120
AS_OF_SLACK_YEARS = 10.0  # a record's as_of: within this of the model's snapshot date
DAYS_PER_YEAR = 365.25
# A text attribute sent by a caller: at most this long (a segment, a region, a channel);
# a longer one is no client fact, and would be stored and echoed at any length.
MAX_TEXT_CHARS = 128
# ISO 8601 in its extended form: a date, optionally a time and a UTC offset. Nothing else
# is a date here: pandas also reads "now", "today" and bare numbers (19860101, an epoch).
ISO_DATE = re.compile(
    r"\d{4}-\d{2}-\d{2}"  # 1986-10-01
    r"(?:[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d{1,9})?)?"  # T09:30, T09:30:00.123
    r"(?:Z|[+-]\d{2}(?::?\d{2})?)?)?"  # Z, +02:00, -0500
)
DATE_EXPECTED = "an ISO 8601 date such as 1986-10-01 (or 1986-10-01T09:30:00Z)"


@dataclass(frozen=True)
class AllowedRange:
    """Where an attribute's values must lie: numbers as they are, dates in years before
    the model's snapshot date (0 to 120 for a birth date: an age of 0 to 120); `why`
    goes into the error."""

    low: float
    high: float
    why: str


@dataclass
class ModelBundle:
    model: HybridModel
    products: pd.DataFrame
    tiering: ValueTier
    options: StateOptions
    as_of: pd.Timestamp
    attribute_columns: list[str]
    metadata: dict[str, Any] = field(default_factory=dict)

    @cached_property
    def product_ids(self) -> list[str]:
        """Computed once: every request reads it (the catalog does not change)."""
        return [str(p) for p in self.products[C.PRODUCT_ID]]

    @cached_property
    def margins(self) -> np.ndarray:
        if C.MARGIN not in self.products.columns:
            return np.ones(len(self.products))
        return self.products[C.MARGIN].fillna(0).to_numpy(dtype=float)

    def state_from_frame(self, frame: pd.DataFrame) -> CustomerState:
        """States from records: customer_id, attributes, `holdings` / `dropped` product lists.

        Holding dates are unknown for such records, so every holding counts as held
        since before the records. Unknown product ids are an error naming them.
        """
        n = len(frame)
        held = self._product_matrix(frame.get(HOLDINGS), n)
        dropped = self._product_matrix(frame.get(DROPPED), n) & ~held
        months = np.where(held, CENSORED, 0).astype(np.int16)
        attributes = frame.reindex(columns=self.attribute_columns).reset_index(drop=True)
        as_of = None
        if AS_OF in frame.columns:
            as_of = pd.to_datetime(frame[AS_OF], errors="coerce", format="ISO8601")
            bad = frame[AS_OF].notna() & as_of.isna()
            if bad.any():
                raise ConfigError(f"as_of {_plain(frame[AS_OF][bad].iloc[0])!r} is not a date "
                                  "(expected YYYY-MM-DD)")  # fmt: skip
        dates = np.full(n, np.datetime64(self.as_of, "ns"))
        if as_of is not None:
            dates = np.where(as_of.isna(), dates, as_of.to_numpy(dtype="datetime64[ns]"))
        tier = self.tiering.transform(attributes, held, months)
        segment = segment_labels(attributes, tier, self.options.segment_col)
        ids = frame[C.CUSTOMER_ID].astype(str).to_numpy(dtype=object)
        return CustomerState(ids, dates, held, dropped, months, attributes, tier, segment,
                             self.tiering)  # fmt: skip

    def coerce_attributes(self, frame: pd.DataFrame) -> pd.DataFrame:
        """Attribute values as the model saw them in training: dates as dates, numbers as
        numbers. Unknown attributes, unparsable values and values outside
        `attribute_ranges` (an age of -5, an income of 1e308, a risk tolerance of 99, a
        birth date in 1600 or 9999) are errors naming the attribute, the value and the
        range: such values reach the eligibility and suitability rules and the model's
        encoding as if they were facts. This is the gate of records sent by callers
        (cold starts); the bank's own data is not checked here."""
        kinds = self.attribute_kinds()
        unknown = [c for c in frame.columns if c not in kinds and c not in RECORD_FIELDS]
        if unknown:
            raise ConfigError(
                f"unknown attribute {_shown(unknown[0])}; known: {', '.join(sorted(kinds))}"
            )
        out = frame.copy()
        ranges = self.attribute_ranges()
        for column, kind in kinds.items():
            if column not in out.columns:
                continue
            raw = out[column]
            _check_scalars(f"attribute {column}", kind, raw)
            if kind == "categorical":
                _check_texts(column, raw)
                continue
            parsed: pd.Series
            if kind == "date":
                parsed = _dates(raw)
            else:
                parsed = pd.to_numeric(raw.map(_number_like), errors="coerce").astype(float)
            bad = raw.notna() & parsed.isna()
            if bad.any():
                value = _shown(raw[bad].iloc[0])
                what = (f"a date (YYYY-MM-DD); send {DATE_EXPECTED}" if kind == "date"
                        else "a number; send a number such as 50000.5")  # fmt: skip
                raise ConfigError(f"attribute {column}: {value} is not {what}")
            self._check_range(column, kind, raw, parsed, ranges.get(column))
            out[column] = parsed
        if AS_OF in out.columns:
            out[AS_OF] = self._check_as_of(out[AS_OF])
        return out

    def asserted_facts(self, state: CustomerState) -> ClientFacts:
        """The rules' facts of records a caller sent (cold starts, after
        `coerce_attributes`): strict, so an attribute left out excludes the products whose
        rules read it; a risk level at or below the lowest tolerance this model accepts
        (`attribute_ranges`) is suitable for anyone and needs none."""
        ranges = self.attribute_ranges()
        lowest = min((ranges[c].low for c in RISK_COLUMNS if c in ranges), default=-math.inf)
        return client_facts(state, strict=True, lowest_tolerance=lowest)

    def attribute_ranges(self) -> dict[str, AllowedRange]:
        """The allowed range of each numeric and date attribute: the known domains of the
        attributes the rules read (age, birth date, income, risk tolerance: also the
        catalog's risk levels), and for the others a span around the values the training
        data showed (the quantiles and levels kept in the model's encoding)."""
        seen: dict[str, list[float]] = {}
        for code in getattr(self.model.builder_, "columns_", []):
            values = [*code.edges, *(_level_value(v, code, self.as_of) for v in code.levels)]
            seen.setdefault(code.column, []).extend(v for v in values if math.isfinite(v))
        risk_levels: list[float] = []
        if C.RISK_LEVEL in self.products.columns:
            risk = pd.to_numeric(self.products[C.RISK_LEVEL], errors="coerce")
            risk_levels = [float(v) for v in risk if np.isfinite(v)]
        kinds = self.attribute_kinds().items()
        return {
            column: allowed_range(column, kind, seen=seen.get(column, []), catalog_risk=risk_levels)
            for column, kind in kinds
            if kind != "categorical"
        }

    def _check_range(self, column: str, kind: str, raw: pd.Series, parsed: pd.Series,
                     allowed: AllowedRange | None) -> None:  # fmt: skip
        if kind == "date":
            if allowed is None:
                return
            first, last = self._years_before(allowed.high), self._years_before(allowed.low)
            outside = parsed.notna() & ((parsed < first) | (parsed > last))
            bounds = f"{first.date()} to {last.date()}"
        else:
            low, high = (allowed.low, allowed.high) if allowed else (-math.inf, math.inf)
            finite = np.isfinite(parsed.to_numpy(dtype=float))
            outside = parsed.notna() & (~finite | (parsed < low) | (parsed > high))
            bounds = f"{_number_text(low)} to {_number_text(high)}" if allowed else "finite"
        if outside.any():
            value = _shown(raw[outside].iloc[0])
            why = f" ({allowed.why})" if allowed else ""
            raise ConfigError(f"attribute {column}: {value} is out of range; allowed "
                              f"{bounds}{why}")  # fmt: skip

    def _check_as_of(self, raw: pd.Series) -> pd.Series:
        """`raw` as dates, if each is an ISO 8601 date within range of the model's."""
        _check_scalars(AS_OF, "date", raw)
        parsed = _dates(raw)
        bad = raw.notna() & parsed.isna()
        if bad.any():
            raise ConfigError(f"{AS_OF} {_shown(raw[bad].iloc[0])} is not a date (YYYY-MM-DD); "
                              f"send {DATE_EXPECTED}")  # fmt: skip
        first, last = self._years_before(AS_OF_SLACK_YEARS), self._years_before(-AS_OF_SLACK_YEARS)
        outside = parsed.notna() & ((parsed < first) | (parsed > last))
        if outside.any():
            raise ConfigError(
                f"{AS_OF} {_shown(raw[outside].iloc[0])} is out of range; allowed "
                f"{first.date()} to {last.date()} (within {AS_OF_SLACK_YEARS:g} years of the "
                f"model's snapshot date {self.as_of.date()})"
            )
        return parsed

    def _years_before(self, years: float) -> pd.Timestamp:
        return pd.Timestamp(self.as_of) - pd.Timedelta(days=round(years * DAYS_PER_YEAR))

    def attribute_kinds(self) -> dict[str, str]:
        """numeric | date | categorical, per attribute column the model encodes."""
        kinds: dict[str, str] = dict.fromkeys(self.attribute_columns, "categorical")
        for code in getattr(self.model.builder_, "columns_", []):
            if code.kind in ("numeric", "date"):
                kinds[code.column] = code.kind
        return kinds

    def _product_matrix(self, lists: pd.Series | None, n: int) -> np.ndarray:
        out = np.zeros((n, len(self.product_ids)), dtype=bool)
        if lists is None:
            return out
        index = {p: i for i, p in enumerate(self.product_ids)}
        for row, items in enumerate(lists):
            for item in _as_list(items):
                if item not in index:
                    raise ConfigError(
                        f"unknown product {item!r}; known products: {', '.join(self.product_ids)}"
                    )
                out[row, index[item]] = True
        return out

    def recommend(
        self,
        state: CustomerState,
        k: int = 7,
        objective: str = "propensity",
        explain: bool = True,
        exclude: np.ndarray | None = None,
    ) -> pd.DataFrame:
        """Long table: customer_id, rank, product_id, score, probability, expected_value,
        reason; held (and `exclude`d) products are never offered."""
        if objective not in OBJECTIVES:
            raise ConfigError(f"objective {objective!r}: use {' or '.join(OBJECTIVES)}")
        scores = self.model.score(state)
        probability = self.model.predict_proba(state, scores)
        value = probability * self.margins
        key = scores if objective == "propensity" else value
        blocked = state.held if exclude is None else state.held | exclude
        items, _ = top_k(key, k, blocked)
        rows, ranks = np.nonzero(items >= 0)
        chosen = items[rows, ranks]
        frame = pd.DataFrame({
            C.CUSTOMER_ID: state.customer_ids[rows],
            C.RANK: ranks + 1,
            C.PRODUCT_ID: np.asarray(self.product_ids, dtype=object)[chosen],
            C.SCORE: scores[rows, chosen],
            C.PROBABILITY: probability[rows, chosen],
            EXPECTED_VALUE: value[rows, chosen],
        })  # fmt: skip
        if explain:
            reasons = self.model.reasons(state, items)
            fallback = FALLBACK_REASON[objective]
            frame[C.REASON] = [
                "; ".join(reasons[r][j]) or fallback for r, j in zip(rows, ranks, strict=True)
            ]
        return frame


def _as_list(items: Any) -> list[str]:
    if items is None or (isinstance(items, float) and np.isnan(items)):
        return []
    if isinstance(items, str):
        return [p.strip() for p in items.split(";") if p.strip()]
    return [str(p).strip() for p in items]


def _plain(value: Any) -> Any:
    """Numpy scalars as Python values, for messages."""
    return value.item() if isinstance(value, np.generic) else value


def _dates(raw: pd.Series) -> pd.Series:
    """ISO 8601 dates, with or without a time zone (then converted to UTC, without one:
    comparable with the model's dates); NaT where not such a date. Only texts in ISO 8601
    form (`ISO_DATE`) and date objects are dates: not True (pandas' parser raised a
    TypeError on a column of booleans), not a number, not "now" or "today"."""
    if pd.api.types.is_datetime64_any_dtype(raw):
        parsed = pd.to_datetime(raw, utc=True)
    else:
        text = pd.Series([_iso_text(v) for v in raw], index=raw.index, dtype=object)
        parsed = pd.to_datetime(text, errors="coerce", format="ISO8601", utc=True)
    return parsed.dt.tz_convert(None)


def _iso_text(value: Any) -> str | None:
    """`value` as ISO 8601 text if it is a date (an ISO text or a date object), else None."""
    if isinstance(value, str):
        text = value.strip()
        return text if ISO_DATE.fullmatch(text) else None
    if isinstance(value, datetime | date | np.datetime64) and not pd.isna(value):
        return pd.Timestamp(value).isoformat()
    return None


def _check_scalars(label: str, kind: str, raw: pd.Series) -> None:
    """One value per attribute: a list or an object (a nested record) is refused by name,
    and so is true/false for a date or a text (for a number: `_number_like`)."""
    for value in raw:
        if isinstance(value, list | tuple | dict | set | np.ndarray):
            what = "an object" if isinstance(value, dict) else "a list"
            raise ConfigError(f"{label}: {what} is not a value; send one value "
                              f"({_expected(kind)}), or null when it is unknown")  # fmt: skip
        if isinstance(value, bool | np.bool_) and kind != "numeric":
            raise ConfigError(f"{label}: {value} is not "
                              f"{'a date' if kind == 'date' else 'a text'}; send "
                              f"{_expected(kind)}")  # fmt: skip


def _check_texts(column: str, raw: pd.Series) -> None:
    """A categorical value: a text (or a number, read as its text) of at most
    MAX_TEXT_CHARS. A value the training data never showed is no error: the model
    encodes it as `(other)`, as it does a rare value of its training data."""
    for value in raw:
        if isinstance(value, str) and len(value) > MAX_TEXT_CHARS:
            raise ConfigError(f"attribute {column}: a text of {len(value):,} characters; send "
                              f"at most {MAX_TEXT_CHARS}")  # fmt: skip


def _expected(kind: str) -> str:
    if kind == "date":
        return DATE_EXPECTED
    if kind == "numeric":
        return "a number"
    return f"a text of at most {MAX_TEXT_CHARS} characters"


def _number_like(value: Any) -> Any:
    """True/False are not numbers (an income of True is a mistake, not 1); an integer
    too large for a float is infinite (out of any range), not an overflow error."""
    if isinstance(value, bool | np.bool_):
        return None
    if isinstance(value, int):
        try:
            return float(value)
        except OverflowError:
            return math.inf if value > 0 else -math.inf
    return value


def _shown(value: Any) -> str:
    """A caller's value for a message: its repr, cut short (a 400-digit number)."""
    text = repr(_plain(value))
    return text if len(text) <= 40 else f"{text[:37]}..."


def _number_text(value: float) -> str:
    if math.isfinite(value) and abs(value) < 1e15 and (abs(value) >= 1000 or value == int(value)):
        return f"{value:,.0f}"
    return f"{value:.6g}"


def _rounded(value: float, *, up: bool) -> float:
    """`value` to three significant digits, away from the range's inside (a bound that
    reads well in a message and is the one checked)."""
    if value == 0 or not math.isfinite(value):
        return value
    scale = 10.0 ** (math.floor(math.log10(abs(value))) - 2)
    return (math.ceil(value / scale) if up else math.floor(value / scale)) * scale


def _level_value(level: str, code: Any, as_of: pd.Timestamp) -> float:
    """A level of a numeric or date column in range units (NaN for text levels)."""
    if code.kind == "date" or (code.kind == "categorical" and _is_date(level)):
        try:
            days = (pd.Timestamp(as_of) - pd.Timestamp(level)).days
        except (ValueError, TypeError):
            return math.nan
        return days / DAYS_PER_YEAR
    try:
        return float(level)
    except ValueError:
        return math.nan


def _is_date(text: str) -> bool:
    return len(text) == 10 and text[4] == "-" and text[7] == "-"


def allowed_range(
    column: str, kind: str, *, seen: list[float], catalog_risk: list[float]
) -> AllowedRange:
    """The range of one attribute (see AllowedRange): a known domain, else the training
    data's span widened."""
    lo, hi = (min(seen), max(seen)) if seen else (0.0, 0.0)
    if kind == "date":
        if column in BIRTH_COLUMNS:
            return AllowedRange(-NEWBORN_YEARS, MAX_AGE_YEARS,
                                f"an age of 0 to {MAX_AGE_YEARS:g} years at the model's "
                                "snapshot date")  # fmt: skip
        return AllowedRange(min(lo, 0.0) - DATE_SLACK_YEARS,
                            max(hi, MAX_AGE_YEARS) + DATE_SLACK_YEARS,
                            "the training data's dates, widened")  # fmt: skip
    if column in AGE_COLUMNS:
        return AllowedRange(0.0, MAX_AGE_YEARS, "an age in years")
    if column in RISK_COLUMNS and (seen or catalog_risk):
        scale = seen + catalog_risk
        return AllowedRange(min(scale), max(scale),
                            "the risk scale of the training data and the catalog")  # fmt: skip
    if not seen:
        return AllowedRange(-math.inf, math.inf, "any finite number")
    # The quantiles do not show the training data's extremes (a balance may be negative
    # below its 5% quantile), so only a known domain (income) fixes the sign.
    width = max(hi - lo, abs(lo), abs(hi), 1.0)
    low = 0.0 if column in INCOME_COLUMNS else _rounded(lo - SPREAD_SLACK * width, up=False)
    high = _rounded(hi + SPREAD_SLACK * width, up=True)
    sign = "an income is not negative; " if low == 0 else ""
    return AllowedRange(low, high, f"{sign}from the training data: within {SPREAD_SLACK:g} "
                                   "times the spread of its values")  # fmt: skip
