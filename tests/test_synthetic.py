"""The synthetic bank: deterministic, calibrated to Santander, with learnable dynamics."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from recommender import columns as C
from recommender.catalog import penetration_table
from recommender.dataset import load_bank_data
from recommender.synthetic import SEGMENT_NAMES, generate, write_bank
from tests.helpers import shared_data

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "calibration"


@pytest.fixture(scope="module")
def big() -> object:
    return generate(120_000, 4, seed=5)


def test_same_seed_same_bank_other_seed_other_bank() -> None:
    a, b, c = generate(3000, 3, seed=1), generate(3000, 3, seed=1), generate(3000, 3, seed=2)
    assert np.array_equal(a.held, b.held) and np.array_equal(a.truth, b.truth)
    pd.testing.assert_frame_equal(a.customers, b.customers)
    assert not np.array_equal(a.held, c.held)


def test_penetration_per_segment_matches_calibration(big: object) -> None:
    table = penetration_table()
    segments = big.customers[C.SEGMENT].to_numpy()  # type: ignore[attr-defined]
    checked = 0
    for t in (0, -1):
        held = big.held[t]  # type: ignore[attr-defined]
        for segment in SEGMENT_NAMES[:3]:
            share = held[segments == segment].mean(axis=0)
            for p, pid in enumerate(big.product_ids):  # type: ignore[attr-defined]
                target = table.loc[pid, segment]
                if table.loc[pid, "all"] > 0.01 and target > 0.01:
                    assert share[p] == pytest.approx(target, rel=0.25), (segment, pid)
                    checked += 1
    assert checked > 40


def test_segment_shares_and_ages_are_realistic(big: object) -> None:
    customers = big.customers  # type: ignore[attr-defined]
    shares = customers[C.SEGMENT].value_counts(normalize=True)
    assert shares["top"] == pytest.approx(0.038, abs=0.004)
    assert shares["student"] == pytest.approx(0.375, abs=0.01)
    age = (pd.Timestamp("2026-07-31") - customers["birth_date"]).dt.days / 365.25
    assert age[customers[C.SEGMENT] == "student"].median() == pytest.approx(24, abs=1.5)
    assert age[customers[C.SEGMENT] == "top"].median() == pytest.approx(53, abs=2)
    assert customers["risk_tolerance"].isna().mean() == pytest.approx(0.12, abs=0.01)


def test_monthly_dynamics_acquire_drop_and_reacquire(big: object) -> None:
    held = big.held  # type: ignore[attr-defined]
    assert all(0.03 <= r <= 0.05 for r in big.acquisition_rate)  # type: ignore[attr-defined]
    dropped = held[1] & ~held[2]
    reacquired = dropped & held[3]
    assert dropped.sum() > 1000 and reacquired.sum() > 10


def test_acquisitions_depend_on_holdings(big: object) -> None:
    ids = big.product_ids  # type: ignore[attr-defined]
    payroll, pensions = ids.index("ind_nomina_ult1"), ids.index("ind_nom_pens_ult1")
    held, truth = big.held[-2], big.truth  # type: ignore[attr-defined]
    with_payroll = truth[held[:, payroll] & ~held[:, pensions], pensions].mean()
    without = truth[~held[:, payroll] & ~held[:, pensions], pensions].mean()
    assert with_payroll > 5 * without
    assert (truth[held] == 0).all()


def test_written_directory_meets_the_contract(tmp_path: Path) -> None:
    bank = generate(2000, 3, seed=3)
    write_bank(bank, tmp_path / "bank")
    data = load_bank_data(tmp_path / "bank")
    assert len(data.snapshots) == 3 and len(data.product_ids) == 24
    assert len(data.holdings) == int(bank.held.sum())
    truth = pd.read_parquet(tmp_path / "bank" / C.TRUTH_DIR / C.TRUTH_FILE)
    assert len(truth) == 2000 * 24
    assert truth[C.PROBABILITY].between(0, 1).all()


def test_packaged_calibration_equals_shared_data() -> None:
    shared_data("calibration")
    packaged = Path(__file__).resolve().parents[1] / "recommender" / "calibration"
    for path in SHARED.glob("*.csv"):
        assert (packaged / path.name).read_bytes() == path.read_bytes()


def test_a_csv_bank_keeps_its_dates_as_dates(tmp_path: Path) -> None:
    """CSV dates are written YYYY-MM-DD, so they load as dates (not as free text with a
    time of day, which would make every birth date its own category)."""
    bank = generate(300, 2, seed=4)
    write_bank(bank, tmp_path / "csv", "csv")
    write_bank(bank, tmp_path / "parquet")
    first = (tmp_path / "csv" / "customers.csv").read_text().splitlines()[1]
    assert "00:00:00" not in first
    from_csv = load_bank_data(tmp_path / "csv").customers
    from_parquet = load_bank_data(tmp_path / "parquet").customers
    for column in ("birth_date", "join_date"):
        assert pd.api.types.is_datetime64_any_dtype(from_csv[column]), column
        assert from_csv[column].equals(from_parquet[column])
