"""Column names and file names of the bank data contract, defined once."""

from typing import Final

CUSTOMER_ID: Final = "customer_id"
PRODUCT_ID: Final = "product_id"
SNAPSHOT_DATE: Final = "snapshot_date"
SCORE: Final = "score"
RANK: Final = "rank"
PROBABILITY: Final = "probability"
REASON: Final = "reason"

# Optional catalog columns.
NAME: Final = "name"
CATEGORY: Final = "category"
RISK_LEVEL: Final = "risk_level"
MARGIN: Final = "margin"
MIN_AGE: Final = "min_age"
MAX_AGE: Final = "max_age"
SEGMENTS: Final = "segments"
MIN_INCOME: Final = "min_income"

# Well-known customer attributes (all optional).
SEGMENT: Final = "segment"
TIER: Final = "tier"

CUSTOMERS: Final = "customers"
HOLDINGS: Final = "holdings"
PRODUCTS: Final = "products"
TABLE_EXTENSIONS: Final = (".parquet", ".csv")

TRUTH_DIR: Final = "truth"
TRUTH_FILE: Final = "acquisition_probability.parquet"
NEXT_TRUTH_FILE: Final = "next_month_probability.parquet"  # for A/B rehearsals

TIERS: Final = ("A", "B", "C")
