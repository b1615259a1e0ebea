"""Reasons in words: the features that pushed a product up for a customer.

A hybrid score is exactly a sum of per-feature contributions plus the product's base
(`HybridModel.contributions`); the largest positive contributions become short reasons
such as "holds a payroll account", "segment: top" or "recently closed direct debit".
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import numpy as np
import scipy.sparse as sp

AGE_COLUMNS = {"birth_date": "age", "birth_year": "born", "fecha_nacimiento": "age"}
TENURE_COLUMNS = {"join_date": "client for", "fecha_alta": "client for"}
CHUNK = 20_000
HELD_FOR_WORDS = {"3-11m": "for 3-11 months", "12m+": "for a year or more"}
_RANGE = re.compile(r"^\[(?P<a>[^,]+), (?P<b>[^)]+)\)(?P<unit>.*)$")


def with_article(name: str) -> str:
    return f"{'an' if name[:1].lower() in 'aeiou' else 'a'} {name}"


def _value_words(value: str) -> str:
    """'[24.1, 32.2) years ago' -> '24-32 years'; '<5' -> 'under 5'; '>=5' -> '5 or more'."""
    years = value.endswith(" years ago")
    core = value.removesuffix(" years ago")
    unit = " years" if years else ""
    if core in ("(missing)", "(other)"):
        return "unknown" if core == "(missing)" else "other"
    match = _RANGE.match(core)
    if match:
        a, b = (_short_number(match["a"]), _short_number(match["b"]))
        return f"{a}-{b}{unit}"
    if core.startswith(">="):
        return f"{_short_number(core[2:])}{unit} or more"
    if core.startswith("<"):
        return f"under {_short_number(core[1:])}{unit}"
    return core


def _short_number(text: str) -> str:
    try:
        number = float(text)
    except ValueError:
        return text
    return f"{number:,.0f}" if abs(number) >= 10 else f"{number:.3g}"


def describe(token: str, names: Mapping[str, str]) -> str:
    """Words for one feature token; `names` maps product ids to product names."""
    kind, _, rest = token.partition(":")
    if kind == "held" and "&" not in rest:
        return f"holds {with_article(names.get(rest, rest))}"
    if kind == "dropped":
        return f"recently closed {names.get(rest, rest)}"
    if kind == "held_for":
        product, _, bucket = rest.rpartition(":")
        name = names.get(product, product)
        if bucket == "0-2m":
            return f"opened {with_article(name)} in the last 3 months"
        since = HELD_FOR_WORDS.get(bucket, "since before our records")
        return f"has held {with_article(name)} {since}"
    if kind == "holds exactly":
        held = [names.get(p, p) for p in rest.split("+")] if rest != "(nothing)" else []
        return "holds only " + " and ".join(held) if held else "holds no products yet"
    if kind == "products held":
        return f"holds {rest} product{'' if rest == '1' else 's'}"
    if kind == "tier":
        return f"value tier {rest}"
    temporal = _temporal_words(kind, rest, names)
    if temporal is not None:
        return temporal
    column, _, value = token.partition("=")
    if column in AGE_COLUMNS and "years ago" in value:
        return f"{AGE_COLUMNS[column]} {_value_words(value)}"
    if column in TENURE_COLUMNS and "years ago" in value:
        return f"{TENURE_COLUMNS[column]} {_value_words(value)}"
    return f"{column.replace('_', ' ')}: {_value_words(value)}"


def _ago(label: str) -> str:
    """'0m' -> 'this month', '2m' -> '2 months ago', '3-5m' -> '3-5 months ago'."""
    core = label.replace("m", "")
    if core == "0":
        return "this month"
    if core.endswith("+"):
        return f"{core[:-1]} or more months ago"
    return f"{core} month{'' if core == '1' else 's'} ago"


def _temporal_words(kind: str, rest: str, names: Mapping[str, str]) -> str | None:
    """Words for the time-carrying tokens of `temporal`, None for any other token."""
    product, _, detail = rest.rpartition(":")
    name = with_article(names.get(product, product))
    if kind == "held_ago":
        return f"held {name} {_ago(detail + 'm')}"
    if kind == "added":
        return f"opened {name} {_ago(detail)}"
    if kind == "closed":
        return f"closed {name} {_ago(detail)}"
    if kind in ("adds", "drops"):
        verb = "opened" if kind == "adds" else "closed"
        times = "once" if detail == "1" else "twice or more"
        return f"{verb} {name} {times} before"
    if kind in ("adds total", "drops total"):
        verb = "opened" if kind == "adds total" else "closed"
        return f"{verb} {rest} product{'' if rest == '1' else 's'} on record"
    if kind == "held_before":
        return f"had {with_article(names.get(rest, rest))} before"
    if kind == "month":
        return f"offer month: {rest}"
    if kind.endswith(" vs segment"):
        column = kind.removesuffix(" vs segment").replace("_", " ")
        return (
            f"{column} {rest} the segment's typical"
            if rest != "typical"
            else (f"{column} typical for the segment")
        )
    return None


def _uninformative(token: str) -> bool:
    """Missing or 'other' values are no reason to offer anything."""
    return token.endswith("(missing)") or token.endswith("(other)")


def vocabulary_words(
    vocabulary: list[str], names: Mapping[str, str]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Words for every feature, which features are never a reason, and each feature's
    topic (an attribute has two tokens, a level and a range: one reason is enough)."""
    words = np.array([describe(token, names) for token in vocabulary], dtype=object)
    useless = np.array([_uninformative(token) for token in vocabulary], dtype=bool)
    topics = np.array([_topic(token) for token in vocabulary], dtype=object)
    return words, useless, topics


def _topic(token: str) -> str:
    if "=" in token and ":" not in token.split("=", 1)[0]:
        return token.split("=", 1)[0]
    return token


def top_reasons(
    contributions: sp.csr_matrix,
    words: np.ndarray,
    useless: np.ndarray,
    topics: np.ndarray,
    n: int = 3,
) -> list[list[str]]:
    """For each row, words for the `n` largest positive contributions on distinct topics."""
    out: list[list[str]] = []
    for start in range(0, contributions.shape[0], CHUNK):
        dense = contributions[start : start + CHUNK].toarray()
        dense[:, useless] = 0.0
        top = np.argsort(-dense, axis=1, kind="stable")[:, : 2 * n]
        positive = np.take_along_axis(dense, top, axis=1) > 0
        out += [_distinct(t[p], words, topics, n) for t, p in zip(top, positive, strict=True)]
    return out


def row_reasons(
    x: sp.csr_matrix,
    per_feature: np.ndarray,
    products: np.ndarray,
    words: np.ndarray,
    useless: np.ndarray,
    topics: np.ndarray,
    n: int = 3,
) -> list[list[str]]:
    """What `top_reasons` gives for `x`'s rows and `products` (one per row), computed on
    each row's non-zero features only: no matrix is built, so it is the quick way for a
    few rows (one request). Same order: largest contribution first, ties by feature."""
    out: list[list[str]] = []
    for row in range(x.shape[0]):
        lo, hi = x.indptr[row], x.indptr[row + 1]
        features = x.indices[lo:hi]
        values = x.data[lo:hi] * per_feature[features, products[row]]
        values[useless[features]] = 0.0
        order = np.lexsort((features, -values))[: 2 * n]
        order = order[values[order] > 0]
        out.append(_distinct(features[order], words, topics, n))
    return out


def _distinct(features: np.ndarray, words: np.ndarray, topics: np.ndarray, n: int) -> list[str]:
    chosen: list[str] = []
    seen: set[str] = set()
    for j in features:
        if topics[j] not in seen:
            seen.add(topics[j])
            chosen.append(words[j])
            if len(chosen) == n:
                break
    return chosen
