"""Business rules, read from the product catalog: who may be offered what.

Per (client, product), in this order (the first that applies is the reason given):
- already held;
- eligibility: `min_age` / `max_age`, `segments` (semicolon-separated; empty = all),
  `min_income`;
- suitability: a product's `risk_level` above the client's risk tolerance, when known;
- mutually exclusive families (`family`): a client holding one product of a family is
  not offered another of it; within one list, only the best product of a family appears.
A rule whose client fact is unknown (no age, income or risk tolerance) does not exclude
a client of the bank's own data. Facts a caller asserts (a cold start: `strict` facts) are
different: a caller could leave the age out to get a mortgage offered to a child, so there
an unknown fact excludes every product whose rule reads it ("needs the client's age; send
it"). A bound no client can fail needs no fact (a minimum age of 0, a maximum of 120, a
minimum income of 0, a risk level at or below the lowest tolerance a client can have).
A client's value quoted in a reason is cut short (`quoted`): a reason is shown to officers
and kept in the audit trail, and must not carry a caller's text of any length.
Catalog errors are found when the rule book is built (at start-up), not per request.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from recommender import columns as C
from recommender.errors import ConfigError
from recommender.state import CustomerState
from recommender.tier import UNKNOWN

FAMILY = "family"
AGE_COLUMNS = ("age", "edad")
BIRTH_COLUMNS = ("birth_date", "fecha_nacimiento")
INCOME_COLUMNS = ("income", "renta")
RISK_COLUMNS = ("risk_tolerance",)
HELD = "already held"
MAX_AGE_YEARS = 120.0  # no client is older: a maximum age of 120 excludes nobody
QUOTED_CHARS = 40  # a client's value in a reason: at most this many characters
Check = tuple[np.ndarray, Callable[[int, int], str]]


@dataclass(frozen=True)
class RuleSettings:
    eligibility: bool = True
    suitability: bool = True
    families: bool = True


@dataclass(frozen=True)
class ClientFacts:
    """What the rules need to know of each client (NaN, or the segment `unknown`: not
    known). `strict`: the facts were asserted by a caller (a cold start), so an unknown
    fact excludes the products whose rules read it (see the module docstring);
    `lowest_tolerance`: the lowest risk tolerance a client can have (a product at or
    below it is suitable for anyone and needs no tolerance; -inf: every risk level needs
    one)."""

    age: np.ndarray
    income: np.ndarray
    risk_tolerance: np.ndarray
    segment: np.ndarray
    strict: bool = False
    lowest_tolerance: float = -np.inf

    def take(self, rows: np.ndarray) -> ClientFacts:
        return replace(self, age=self.age[rows], income=self.income[rows],
                       risk_tolerance=self.risk_tolerance[rows],
                       segment=self.segment[rows])  # fmt: skip


def client_facts(
    state: CustomerState, *, strict: bool = False, lowest_tolerance: float = -np.inf
) -> ClientFacts:
    """The rules' facts of `state`'s clients; `strict` for facts a caller asserted (a
    cold start): then an age missing from an `age` column is read from a birth date, and
    unknown facts exclude (see ClientFacts)."""
    return ClientFacts(client_age(state, combine=strict), client_number(state, INCOME_COLUMNS),
                       client_number(state, RISK_COLUMNS), state.segment, strict,
                       lowest_tolerance)  # fmt: skip


@dataclass(frozen=True)
class Decision:
    """`blocked[i, p]` is True when product p may not be offered to client i, because of
    `reason[i][p]`."""

    blocked: np.ndarray
    reasons: list[dict[int, str]]


class RuleBook:
    def __init__(self, products: pd.DataFrame, settings: RuleSettings | None = None,
                 known_segments: set[str] | None = None) -> None:  # fmt: skip
        self.settings = settings or RuleSettings()
        self.ids = [str(p) for p in products[C.PRODUCT_ID]]
        self.names = [str(n) for n in products.get(C.NAME, products[C.PRODUCT_ID])]
        self.min_age = _numbers(products, C.MIN_AGE, -np.inf)
        self.max_age = _numbers(products, C.MAX_AGE, np.inf)
        self.min_income = _numbers(products, C.MIN_INCOME, -np.inf)
        self.risk = _numbers(products, C.RISK_LEVEL, -np.inf)
        self.segments = [_segment_set(v) for v in _texts(products, C.SEGMENTS)]
        self.family = [v or None for v in _texts(products, FAMILY)]
        # Which products' rules can exclude someone, so need the fact when it is unknown
        # and asserted (strict facts); bounds no client can fail need nothing.
        self.needs_age = (self.min_age > 0) | (self.max_age < MAX_AGE_YEARS)
        self.needs_income = self.min_income > 0
        self.needs_segment = np.array([bool(s) for s in self.segments], dtype=bool)
        self._validate(known_segments)

    def _validate(self, known_segments: set[str] | None) -> None:
        for i, pid in enumerate(self.ids):
            if self.min_age[i] > self.max_age[i]:
                raise ConfigError(
                    f"product catalog: {pid} has min_age {self.min_age[i]:g} above max_age "
                    f"{self.max_age[i]:g}; fix the catalog"
                )
            unknown = self.segments[i] - (known_segments or self.segments[i])
            if unknown:
                raise ConfigError(
                    f"product catalog: {pid} allows segments {sorted(unknown)} that no client "
                    f"has (known: {', '.join(sorted(known_segments or []))}); fix the catalog"
                )

    def decide(self, state: CustomerState, facts: ClientFacts | None = None) -> Decision:
        """Blocked products and reasons; `facts` may be precomputed with `client_facts`."""
        n, p = state.held.shape
        reasons: list[dict[int, str]] = [{} for _ in range(n)]
        blocked = np.zeros((n, p), dtype=bool)
        for mask, words in self._checks(state, facts or client_facts(state)):
            new = mask & ~blocked
            for row, product in zip(*np.nonzero(new), strict=True):
                reasons[row][int(product)] = words(int(row), int(product))
            blocked |= new
        return Decision(blocked, reasons)

    def blocked(self, state: CustomerState, facts: ClientFacts | None = None) -> np.ndarray:
        """Only the (clients, products) mask of `decide`, without reasons: for millions."""
        mask = np.zeros(state.held.shape, dtype=bool)
        for rule_mask, _ in self._checks(state, facts or client_facts(state)):
            mask |= rule_mask
        return mask

    def _checks(self, state: CustomerState, facts: ClientFacts) -> Iterator[Check]:
        yield state.held, lambda r, p: HELD
        if self.settings.eligibility:
            age = facts.age
            young = age[:, None] < self.min_age[None, :]
            old = age[:, None] > self.max_age[None, :]
            yield (
                young,
                lambda r, p: (
                    f"eligibility: minimum age {self.min_age[p]:g} (client {np.floor(age[r]):.0f})"
                ),
            )
            yield (
                old,
                lambda r, p: (
                    f"eligibility: maximum age {self.max_age[p]:g} (client {np.floor(age[r]):.0f})"
                ),
            )
            if facts.strict:
                yield self._unknown(np.isnan(age), self.needs_age), self._age_needed
                unknown_segment = np.asarray(facts.segment == UNKNOWN, dtype=bool)
                yield (
                    self._unknown(unknown_segment, self.needs_segment),
                    lambda r, p: (
                        f"eligibility: only for segments {', '.join(sorted(self.segments[p]))} "
                        "needs the client's segment; send it"
                    ),
                )
            allowed = np.array(
                [[not s or seg in s for s in self.segments] for seg in facts.segment]
            )
            yield (
                ~allowed,
                lambda r, p: (
                    f"eligibility: only for segments {', '.join(sorted(self.segments[p]))} "
                    f"(client: {quoted(facts.segment[r])})"
                ),
            )
            income = facts.income
            poor = income[:, None] < self.min_income[None, :]
            yield (
                poor,
                lambda r, p: (
                    f"eligibility: minimum income {self.min_income[p]:,.0f} "
                    f"(client {income[r]:,.0f})"
                ),
            )
            if facts.strict:
                yield (
                    self._unknown(np.isnan(income), self.needs_income),
                    lambda r, p: (
                        f"eligibility: minimum income {self.min_income[p]:,.0f} needs the "
                        "client's income; send it"
                    ),
                )
        if self.settings.suitability:
            tolerance = facts.risk_tolerance
            risky = self.risk[None, :] > tolerance[:, None]
            yield (
                risky,
                lambda r, p: (
                    f"suitability: risk level {self.risk[p]:g} exceeds the client's risk "
                    f"tolerance {tolerance[r]:g}"
                ),
            )
            if facts.strict:
                yield (
                    self._unknown(np.isnan(tolerance), self.risk > facts.lowest_tolerance),
                    lambda r, p: (
                        f"suitability: risk level {self.risk[p]:g} needs the client's risk "
                        "tolerance; send it"
                    ),
                )
        if self.settings.families:
            yield from self._family_checks(state)

    @staticmethod
    def _unknown(unknown: np.ndarray, needs: np.ndarray) -> np.ndarray:
        """(clients, products): the fact is unknown and the product's rule reads it."""
        mask: np.ndarray = np.asarray(unknown, dtype=bool)[:, None] & needs[None, :]
        return mask

    def _age_needed(self, row: int, product: int) -> str:
        low, high = self.min_age[product], self.max_age[product]
        bound = f"minimum age {low:g}" if low > 0 else f"maximum age {high:g}"
        return f"eligibility: {bound} needs the client's age or birth date; send it"

    def _family_checks(self, state: CustomerState) -> Iterator[Check]:
        for family in sorted({f for f in self.family if f}):
            members: np.ndarray = np.array([f == family for f in self.family], dtype=bool)
            held_members = state.held & members[None, :]
            mask = held_members.any(axis=1)[:, None] & members[None, :] & ~state.held
            yield mask, self._family_words(family, np.argmax(held_members, axis=1))

    def _family_words(self, family: str, first_held: np.ndarray) -> Callable[[int, int], str]:
        def words(row: int, product: int) -> str:
            return f"family {family}: already holds {self.names[int(first_held[row])]}"

        return words

    def family_index(self) -> np.ndarray:
        """Family code per product (-1: none), for keeping one per family in a list."""
        labels = sorted({f for f in self.family if f})
        return np.array([labels.index(f) if f else -1 for f in self.family])


def client_age(state: CustomerState, *, combine: bool = False) -> np.ndarray:
    """Age in years at the state's date: an `age` column, else a birth date; NaN if unknown.
    `combine`: per client, the first of these columns that holds a value (a cold start
    sends a birth date to a model that also has an `age` column, left empty)."""
    a = state.attributes
    ages = np.full(len(state), np.nan)
    for column in AGE_COLUMNS:
        if column in a.columns:
            found = pd.to_numeric(a[column], errors="coerce").to_numpy(dtype=float)
            if not combine:
                return found
            ages = np.where(np.isnan(ages), found, ages)
    for column in BIRTH_COLUMNS:
        if column in a.columns and pd.api.types.is_datetime64_any_dtype(a[column]):
            born = a[column].to_numpy(dtype="datetime64[ns]")
            days = (state.as_of.astype("datetime64[ns]") - born).astype("timedelta64[D]")
            found = np.where(np.isnat(born), np.nan, days.astype(float) / 365.25)
            if not combine:
                return found
            ages = np.where(np.isnan(ages), found, ages)
    return ages


def quoted(value: object, limit: int = QUOTED_CHARS) -> str:
    """A client's value for a reason, cut to `limit` characters (the last three: ...)."""
    text = str(value)
    return text if len(text) <= limit else f"{text[: limit - 3]}..."


def client_number(state: CustomerState, names: tuple[str, ...]) -> np.ndarray:
    for column in names:
        if column in state.attributes.columns:
            return pd.to_numeric(state.attributes[column], errors="coerce").to_numpy(dtype=float)
    return np.full(len(state), np.nan)


def _numbers(products: pd.DataFrame, column: str, default: float) -> np.ndarray:
    if column not in products.columns:
        return np.full(len(products), default)
    values = pd.to_numeric(products[column], errors="coerce").to_numpy(dtype=float)
    return np.where(np.isnan(values), default, values)


def _texts(products: pd.DataFrame, column: str) -> list[str]:
    if column not in products.columns:
        return [""] * len(products)
    return [str(v).strip() if pd.notna(v) else "" for v in products[column]]


def _segment_set(text: str) -> set[str]:
    return {s.strip() for s in text.replace(",", ";").split(";") if s.strip()}
