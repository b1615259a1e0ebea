"""Builders for small literal bank data sets used across tests."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from recommender import columns as C
from recommender.dataset import BankData, load_bank_data


def bank(
    holdings: list[tuple[str, str, str]],
    customers: dict[str, dict[str, object]] | None = None,
    products: list[str] | None = None,
) -> BankData:
    """BankData from (customer, product, date) rows, validated like a real directory."""
    frame = pd.DataFrame(holdings, columns=[C.CUSTOMER_ID, C.PRODUCT_ID, C.SNAPSHOT_DATE])
    ids = sorted({h[0] for h in holdings} | set(customers or {}))
    attrs = pd.DataFrame([{C.CUSTOMER_ID: c, **(customers or {}).get(c, {})} for c in ids])
    if len(attrs.columns) == 1:
        attrs["segment"] = "individual"
    prods = pd.DataFrame({C.PRODUCT_ID: products or sorted({h[1] for h in holdings})})
    return write_and_load(attrs, frame, prods, Path(_tmpdir()))


def synthetic_bank(directory: Path, customers: int, months: int, seed: int) -> BankData:
    """A small synthetic bank written to `directory` and loaded like a real one."""
    from recommender.synthetic import generate, write_bank

    write_bank(generate(customers, months, seed=seed), directory)
    return load_bank_data(directory)


def write_and_load(
    customers: pd.DataFrame, holdings: pd.DataFrame, products: pd.DataFrame, directory: Path
) -> BankData:
    directory.mkdir(parents=True, exist_ok=True)
    customers.to_csv(directory / "customers.csv", index=False)
    holdings.to_csv(directory / "holdings.csv", index=False)
    products.to_csv(directory / "products.csv", index=False)
    return load_bank_data(directory)


def _tmpdir() -> str:
    import tempfile

    return tempfile.mkdtemp(prefix="bank-")


SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def shared_data(*parts: str) -> Path:
    """A path under ../shared/data; skipped locally when absent, a failure on CI."""
    import os

    import pytest

    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        message = f"{path} is absent (the real data of ../shared/data; see its README)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path
