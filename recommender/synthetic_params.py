"""Parameters of the synthetic bank: who acquires what, and why.

Kept apart from the simulation so the behavioural assumptions can be read in one place.
Products are referred to by short names (`ind_cno_fin_ult1` -> `cno`).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

# Age quantile knots (cumulative share, age) per segment; individuals include ~1.5% minors
# (junior accounts), the calibration table gives p10 / median / p90.
AGE_KNOTS: dict[str, tuple[list[float], list[float]]] = {
    "top": ([0, 0.1, 0.5, 0.9, 1], [25, 41, 53, 75, 95]),
    "individual": ([0, 0.015, 0.1, 0.5, 0.9, 1], [3, 17.9, 34, 47, 70, 100]),
    "student": ([0, 0.1, 0.5, 0.9, 1], [17, 21, 24, 29, 40]),
    "other": ([0, 0.1, 0.5, 0.9, 1], [18, 26, 43, 73, 95]),
}
CHANNELS = ("KHE", "KAT", "KFC", "RED")  # KHE: the digital channel
REGIONS = (
    "MADRID",
    "BARCELONA",
    "VALENCIA",
    "SEVILLA",
    "MALAGA",
    "ZARAGOZA",
    "MURCIA",
    "ALICANTE",
    "CORUNA",
    "BIZKAIA",
    "ASTURIAS",
    "CADIZ",
)

FEATURES = (
    "minor",
    "young",
    "age_z",
    "senior",
    "prime",
    "midlife",
    "income_z",
    "risk",
    "digital",
    "tenure_z",
)

# Drivers first: the first snapshot is drawn in this order, each product conditioned on
# the ones before it.
HOLDING_ORDER = (
    [f"ind_{s}_fin_ult1" for s in ("cco", "ctju", "ctop", "ctpp", "ctma", "cno")]
    + ["ind_nomina_ult1", "ind_nom_pens_ult1", "ind_recibo_ult1"]
    + [
        f"ind_{s}_fin_ult1"
        for s in (
            "reca",
            "ecue",
            "tjcr",
            "dela",
            "deme",
            "deco",
            "fond",
            "valo",
            "plan",
            "hip",
            "viv",
            "pres",
            "cder",
            "aval",
            "ahor",
        )
    ]
)

_EFFECTS: dict[str, dict[str, float]] = {
    "cco": {"young": 0.5, "tenure_z": -0.3},
    "ctju": {"minor": 7.0, "young": 1.0},
    "cno": {"minor": -5.0, "income_z": 0.3, "prime": 0.4},
    "nomina": {"minor": -5.0, "prime": 0.8, "senior": -1.5},
    "nom_pens": {"minor": -5.0, "senior": 1.5, "prime": 0.3},
    "recibo": {"income_z": 0.3, "young": -0.4, "tenure_z": 0.3},
    "reca": {"income_z": 0.6, "age_z": 0.3, "young": -0.5},
    "ecue": {"digital": 1.2, "young": 0.6, "age_z": -0.4},
    "tjcr": {"income_z": 0.6, "young": 0.4, "minor": -5.0},
    "dela": {"age_z": 0.7, "income_z": 0.5, "risk": -0.4},
    "deco": {"age_z": 0.5, "risk": -0.4},
    "deme": {"age_z": 0.5, "risk": -0.3, "income_z": 0.3},
    "fond": {"income_z": 0.8, "risk": 0.7, "age_z": 0.3},
    "valo": {"income_z": 0.8, "risk": 0.9},
    "plan": {"prime": 0.8, "income_z": 0.5, "senior": -2.5, "minor": -5.0},
    "hip": {"midlife": 1.2, "income_z": 0.5, "senior": -3.0, "minor": -6.0},
    "pres": {"income_z": -0.3, "young": 0.4, "minor": -5.0},
    "cder": {"risk": 1.2, "income_z": 0.5},
    "ctpp": {"income_z": 0.7, "age_z": 0.2},
    "ctma": {"income_z": 0.3, "midlife": 0.3},
    "ctop": {"age_z": 0.3, "young": -0.3},
    "viv": {"midlife": 0.5},
    "aval": {"income_z": 0.6},
    "ahor": {"senior": 0.5},
}

# Holding q changes the log-odds of acquiring p by _AFFINITY[q][p].
_ACCOUNTS = ("cco", "ctop", "ctpp", "ctma")
_AFFINITY: dict[str, dict[str, float]] = {
    "nomina": {"nom_pens": 3.0, "cno": 1.5, "recibo": 1.0, "tjcr": 0.4},
    "nom_pens": {"nomina": 3.0, "cno": 0.8},
    "cno": {"nomina": 1.5, "nom_pens": 1.2, "recibo": 0.6},
    "recibo": {"reca": 0.8, "tjcr": 0.4},
    "reca": {"recibo": 0.5},
    "ecue": {"tjcr": 0.8},
    "tjcr": {"ecue": 0.5, "pres": 0.4},
    "fond": {"valo": 1.0, "plan": 0.4},
    "valo": {"fond": 1.0, "cder": 0.8},
    "dela": {"fond": 0.6, "deme": 0.5},
    "deme": {"deco": 0.5},
    "hip": {"viv": 1.0, "recibo": 0.6},
    "ctpp": {"fond": 0.5, "dela": 0.3},
    "plan": {"fond": 0.4},
    **{a: {b: -1.0 for b in _ACCOUNTS if b != a} | {"ecue": 0.3} for a in _ACCOUNTS},
}

_LATENT = {
    "investor": ("fond", "valo", "dela", "deme", "plan", "cder", "ctpp"),
    "transactional": ("recibo", "reca", "tjcr", "ecue", "nomina", "nom_pens"),
}

_CHURN = {
    "cco": 0.012,
    "nomina": 0.09,
    "nom_pens": 0.09,
    "recibo": 0.05,
    "reca": 0.04,
    "tjcr": 0.04,
    "ecue": 0.03,
    "cno": 0.035,
    "deco": 0.08,
    "deme": 0.06,
    "dela": 0.03,
    "ctju": 0.03,
    "cder": 0.06,
}
_DEFAULT_CHURN = 0.025
# Attribute effects are scaled so that who the client is matters about as much as what
# they hold: with 1.0 the oracle beats co-occurrence by ~20%, with 1.8 by ~30%.
EFFECT_SCALE = 1.8
_REACQUIRE = {"nomina": 2.5, "nom_pens": 2.5, "recibo": 1.5, "tjcr": 1.0}
_DEFAULT_REACQUIRE = 1.0


def short_name(product_id: str) -> str:
    return product_id.removeprefix("ind_").removesuffix("_ult1").removesuffix("_fin")


def covariates(customers: pd.DataFrame, as_of: pd.Timestamp) -> np.ndarray:
    """(customers, FEATURES) matrix of the attribute signals used by `_EFFECTS`."""
    age = ((as_of - customers["birth_date"]).dt.days / 365.25).to_numpy()
    tenure = ((as_of - customers["join_date"]).dt.days / 30.44).to_numpy()
    income_z = (np.log(customers["income"].to_numpy(float)) - np.log(100_000)) / 0.5
    risk = np.nan_to_num(customers["risk_tolerance"].to_numpy(float) - 3.0)
    columns = {
        "minor": age < 18,
        "young": age < 26,
        "age_z": np.clip((age - 45) / 15, -2, 2.5),
        "senior": age >= 67,
        "prime": (age >= 40) & (age < 65),
        "midlife": (age >= 28) & (age < 46),
        "income_z": np.clip(income_z, -3, 3),
        "risk": risk,
        "digital": (customers["channel"] == "KHE").to_numpy(),
        "tenure_z": np.clip((tenure - 100) / 80, -1.5, 3),
    }
    return np.column_stack([np.asarray(columns[f], dtype=float) for f in FEATURES])


def attribute_effects(product_ids: list[str]) -> np.ndarray:
    """(FEATURES, products) coefficients."""
    out = np.zeros((len(FEATURES), len(product_ids)))
    for p, pid in enumerate(product_ids):
        for feature, coef in _EFFECTS.get(short_name(pid), {}).items():
            out[FEATURES.index(feature), p] = coef * EFFECT_SCALE
    return out


def product_affinities(product_ids: list[str]) -> np.ndarray:
    """(products, products): effect of holding row on acquiring column."""
    short = [short_name(p) for p in product_ids]
    out = np.zeros((len(short), len(short)), dtype=np.float32)
    for q, name in enumerate(short):
        for target, coef in _AFFINITY.get(name, {}).items():
            out[q, short.index(target)] = coef
    return out


def latent_loadings(product_ids: list[str]) -> np.ndarray:
    """(2, products): unobserved tastes that correlate the first snapshot's holdings."""
    short = [short_name(p) for p in product_ids]
    out = np.zeros((2, len(short)), dtype=np.float32)
    for k, names in enumerate(_LATENT.values()):
        for name in names:
            out[k, short.index(name)] = 0.8
    return out


def churn_rates(product_ids: list[str]) -> np.ndarray:
    return np.array(
        [_CHURN.get(short_name(p), _DEFAULT_CHURN) for p in product_ids], dtype=np.float32
    )


def reacquire_boost(product_ids: list[str]) -> np.ndarray:
    values = [_REACQUIRE.get(short_name(p), _DEFAULT_REACQUIRE) for p in product_ids]
    return np.array(values, dtype=np.float32)
