"""Quality of the hybrid against every baseline, measured in one run.

- Zimnat leave-one-out (../shared/data/zimnat/train.csv; protocol and reference values in
  ../shared/data/README.md): target hybrid MAP@7 >= 0.93, above popularity (0.821),
  co-occurrence (0.874) and the gradient-boosted reference (0.926).
- Synthetic bank (200,000 customers x 12 months, temporal): target hybrid MAP@7 >= 95% of
  the oracle and >= 15% above the best baseline, overall and for tier A.

    python -m bench.bench_quality [--customers 200000] [--config FILE] [--skip-zimnat]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from recommender.dataset import load_bank_data
from recommender.evaluation import report
from recommender.models.hybrid import HybridConfig
from recommender.pipeline import evaluate_hybrid
from recommender.synthetic import generate, write_bank
from recommender.wide import import_wide

ZIMNAT = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "zimnat" / "train.csv"
REFERENCE = {"popularity": 0.821, "cooccurrence": 0.874, "gradient-boosted": 0.926}
BASELINES = ("popularity", "segment_popularity", "cooccurrence")


def evaluate(directory: Path, config: HybridConfig) -> dict[str, Any]:
    data = load_bank_data(directory)
    the_split, results, _ = evaluate_hybrid(data, "auto", config)
    return report(the_split, results, 7)


def zimnat(config: HybridConfig, tmp: Path) -> dict[str, float]:
    import_wide(ZIMNAT, tmp / "zimnat", "ID", "P5DA:ECY3", snapshot_date="2020-01-01")
    start = time.perf_counter()
    result = evaluate(tmp / "zimnat", config)
    maps = {m: v["map@7"] for m, v in result["models"].items()}
    print(f"\nZimnat leave-one-out, {result['n_customers_evaluated']:,} held-out customers "
          f"({time.perf_counter() - start:.0f} s)")  # fmt: skip
    print("| model | MAP@7 | reference |\n|---|---|---|")
    for name, value in maps.items():
        print(f"| {name} | {value:.4f} | {REFERENCE.get(name, '')} |")
    print(f"| gradient-boosted (outside) | - | {REFERENCE['gradient-boosted']} |")
    verdict = "OK" if maps["hybrid"] >= 0.93 else "BELOW TARGET"
    print(f"hybrid {maps['hybrid']:.4f} vs target 0.93: {verdict}")
    return maps


def synthetic(config: HybridConfig, customers: int, tmp: Path) -> dict[str, Any]:
    write_bank(generate(customers, 12, seed=7), tmp / "bank")
    start = time.perf_counter()
    result = evaluate(tmp / "bank", config)
    out: dict[str, Any] = {}
    print(f"\nSynthetic bank {customers:,} x 12 months, temporal, "
          f"{result['n_customers_evaluated']:,} customers with an acquisition "
          f"({time.perf_counter() - start:.0f} s)")  # fmt: skip
    print("| scope | hybrid | oracle | best baseline | hybrid/oracle | hybrid/best baseline |")
    print("|---|---|---|---|---|---|")
    for scope, models in (("all", result["models"]), *((f"tier {t}", m) for t, m in
                                                        result["tiers"].items())):  # fmt: skip
        hybrid, oracle = models["hybrid"]["map@7"], models["oracle"]["map@7"]
        best_name = max(BASELINES, key=lambda b: models[b]["map@7"])
        best = models[best_name]["map@7"]
        out[scope] = {
            "hybrid": hybrid,
            "oracle": oracle,
            "best_baseline": best_name,
            "best": best,
            "of_oracle": hybrid / oracle,
            "over_best": hybrid / best - 1,
        }
        print(f"| {scope} | {hybrid:.4f} | {oracle:.4f} | {best:.4f} ({best_name}) | "
              f"{hybrid / oracle:.1%} | {hybrid / best - 1:+.1%} |")  # fmt: skip
    for scope in ("all", "tier A"):
        ok = out[scope]["of_oracle"] >= 0.95 and out[scope]["over_best"] >= 0.15
        print(f"{scope}: >= 95% of oracle and >= 15% over best baseline: "
              f"{'OK' if ok else 'BELOW TARGET'}")  # fmt: skip
    return out


def main() -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--customers", type=int, default=200_000)
    parser.add_argument("--config", type=Path, default=None, help="JSON hybrid options")
    parser.add_argument("--skip-zimnat", action="store_true")
    args = parser.parse_args([] if __name__ != "__main__" else None)
    values = json.loads(args.config.read_text()) if args.config else {}
    config = HybridConfig.from_dict(values)
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        if not args.skip_zimnat and ZIMNAT.exists():
            results["zimnat"] = zimnat(config, Path(tmp))
        results["synthetic"] = synthetic(config, args.customers, Path(tmp))
    return results


if __name__ == "__main__":
    main()
