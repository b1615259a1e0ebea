"""Synthetic bank generation speed: 1,000,000 customers x 12 months must take < 120 s.

Reported against a reference measured in the same run: the bare numpy floor of the same
simulation (drawing the random numbers every month needs and one matrix product per
month), so the ratio says how much the generator's bookkeeping costs.

    python -m bench.bench_generator [--customers 1000000] [--months 12]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from recommender.synthetic import generate, write_bank

TARGET_SECONDS = 120.0


def numpy_floor(n: int, months: int, n_products: int = 24) -> float:
    rng = np.random.default_rng(0)
    start = time.perf_counter()
    held = rng.random((n, n_products), dtype=np.float32) < 0.05
    weights = rng.normal(size=(n_products, n_products)).astype(np.float32)
    for _ in range(months - 1):
        logits = held.astype(np.float32) @ weights
        u = rng.random((n, n_products), dtype=np.float32)
        held = (u < 1 / (1 + np.exp(-logits))) | held
    return time.perf_counter() - start


def main() -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--customers", type=int, default=1_000_000)
    parser.add_argument("--months", type=int, default=12)
    args = parser.parse_args([] if __name__ != "__main__" else None)
    floor = numpy_floor(args.customers, args.months)
    start = time.perf_counter()
    bank = generate(args.customers, args.months, seed=1)
    simulated = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as tmp:
        write_bank(bank, Path(tmp) / "bank")
    total = time.perf_counter() - start
    result = {"customers": args.customers, "months": args.months, "simulate_s": simulated,
              "total_s": total, "numpy_floor_s": floor, "ratio_to_floor": total / floor,
              "target_s": TARGET_SECONDS}  # fmt: skip
    verdict = "OK" if total < TARGET_SECONDS else "TOO SLOW"
    print(f"generator: {args.customers:,} customers x {args.months} months in {total:.1f} s "
          f"(simulate {simulated:.1f} s; numpy floor {floor:.1f} s; ratio {total / floor:.1f}x; "
          f"target < {TARGET_SECONDS:.0f} s: {verdict})")  # fmt: skip
    return result


if __name__ == "__main__":
    main()
