"""The bank's product catalog: the 24 Santander products with business attributes.

Names come from the Santander Product Recommendation data; categories, risk levels (1-5),
margins (yearly value of a sale, EUR) and eligibility are a plausible retail-bank set-up.
Penetration targets come from `recommender/calibration/` (a copy of
`shared/data/calibration`, statistics of the real 2016-03 Santander snapshot).
"""

from __future__ import annotations

from importlib import resources

import pandas as pd

from recommender import columns as C

FAMILY = "family"

# product_id, name, category, risk_level, margin, min_age, max_age, segments, min_income, family
_ROWS: list[tuple[str, str, str, int, float, float, float, str, float, str]] = [
    ("ind_ahor_fin_ult1", "saving account", "accounts", 1, 40, 18, 120, "", 0, ""),
    ("ind_aval_fin_ult1", "guarantees", "credit", 3, 300, 18, 120, "top", 0, ""),
    ("ind_cco_fin_ult1", "current account", "accounts", 1, 60, 0, 120, "", 0, "main account"),
    ("ind_cder_fin_ult1", "derivada account", "investments", 5, 250, 18, 120, "", 0, ""),
    ("ind_cno_fin_ult1", "payroll account", "accounts", 1, 120, 16, 120, "", 0, ""),
    ("ind_ctju_fin_ult1", "junior account", "accounts", 1, 30, 0, 17, "", 0, "main account"),
    (
        "ind_ctma_fin_ult1",
        "mas particular account",
        "accounts",
        1,
        90,
        18,
        120,
        "",
        0,
        "main account",
    ),
    ("ind_ctop_fin_ult1", "particular account", "accounts", 1, 80, 18, 120, "", 0, "main account"),
    (
        "ind_ctpp_fin_ult1",
        "particular plus account",
        "accounts",
        2,
        150,
        18,
        120,
        "",
        30000,
        "main account",
    ),
    ("ind_deco_fin_ult1", "short-term deposits", "deposits", 1, 50, 18, 120, "", 0, ""),
    ("ind_deme_fin_ult1", "medium-term deposits", "deposits", 2, 80, 18, 120, "", 0, ""),
    ("ind_dela_fin_ult1", "long-term deposits", "deposits", 2, 150, 18, 120, "", 0, ""),
    ("ind_ecue_fin_ult1", "e-account", "accounts", 1, 50, 16, 120, "", 0, ""),
    ("ind_fond_fin_ult1", "funds", "investments", 4, 400, 18, 120, "", 0, ""),
    ("ind_hip_fin_ult1", "mortgage", "loans", 3, 1500, 21, 70, "", 25000, ""),
    ("ind_plan_fin_ult1", "pension plan", "investments", 3, 350, 18, 67, "", 0, ""),
    ("ind_pres_fin_ult1", "loans", "loans", 3, 500, 18, 75, "", 12000, ""),
    ("ind_reca_fin_ult1", "taxes", "services", 1, 30, 18, 120, "", 0, ""),
    ("ind_tjcr_fin_ult1", "credit card", "cards", 3, 200, 18, 120, "", 10000, ""),
    ("ind_valo_fin_ult1", "securities", "investments", 5, 450, 18, 120, "", 0, ""),
    ("ind_viv_fin_ult1", "home account", "accounts", 1, 60, 18, 120, "", 0, ""),
    ("ind_nomina_ult1", "payroll", "payroll", 1, 150, 16, 120, "", 0, ""),
    ("ind_nom_pens_ult1", "pensions", "payroll", 1, 150, 16, 120, "", 0, ""),
    ("ind_recibo_ult1", "direct debit", "services", 1, 40, 18, 120, "", 0, ""),
]

_COLUMNS = [
    C.PRODUCT_ID,
    C.NAME,
    C.CATEGORY,
    C.RISK_LEVEL,
    C.MARGIN,
    C.MIN_AGE,
    C.MAX_AGE,
    C.SEGMENTS,
    C.MIN_INCOME,
    FAMILY,
]


def bank_catalog() -> pd.DataFrame:
    """The 24-product catalog, one row per product, in a fixed order."""
    frame = pd.DataFrame(_ROWS, columns=_COLUMNS)
    for column in (C.PRODUCT_ID, C.NAME, C.CATEGORY, C.SEGMENTS, FAMILY):
        frame[column] = frame[column].astype(object)
    return frame


def _calibration(name: str) -> pd.DataFrame:
    with resources.files("recommender.calibration").joinpath(name).open() as handle:
        return pd.read_csv(handle)


def penetration_table() -> pd.DataFrame:
    """Share of customers holding each product, overall and per segment, indexed by id."""
    frame = _calibration("santander_2016-03_penetration_by_segment.csv")
    return frame.rename(columns={"product_column": C.PRODUCT_ID}).set_index(C.PRODUCT_ID)


def segment_table() -> pd.DataFrame:
    """Per segment: share, age and income quantiles, tenure, products held."""
    frame = _calibration("santander_2016-03_segments.csv")
    frame["seg"] = frame["seg"].replace({"unknown": "other"})
    return frame.set_index("seg")
