"""Training overhead: the hybrid model's fit must take <= 1.25x a bare `LightFM.fit`.

Reported against a reference measured in the same run: one `LightFM.fit` on exactly the
matrices the model builds (user features, interactions, sample weights, item features;
built outside the timer), with the same hyperparameters, epochs and one thread. The
hybrid is fitted as one member on one thread, so the ratio is what its feature building,
bookkeeping and checks cost on top of LightFM.

`--scale-curve` fits the default configuration (a member per view on all cores) on banks of
100k, 300k and 1M customers and prints how fit time grows with the data.

    python -m bench.bench_training [--customers 100000] [--months 12] [--epochs 30]
    python -m bench.bench_training --scale-curve
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from lightfm import LightFM

from recommender.dataset import load_bank_data
from recommender.features import FeatureBuilder
from recommender.models.hybrid import HybridConfig, HybridModel, _interactions
from recommender.protocol import Examples, refit_examples
from recommender.synthetic import generate, write_bank

TARGET_RATIO = 1.25
SCALE_CUSTOMERS = (100_000, 300_000, 1_000_000)


def bank_examples(customers: int, months: int) -> tuple[Examples, pd.DataFrame]:
    """Refit examples of a synthetic bank read back from its files, and its catalog."""
    with tempfile.TemporaryDirectory() as tmp:
        write_bank(generate(customers, months, seed=1), Path(tmp) / "bank")
        data = load_bank_data(Path(tmp) / "bank")
        return refit_examples(data, "auto"), data.products


def timed_fit(
    config: HybridConfig, examples: Examples, products: pd.DataFrame
) -> tuple[float, HybridModel]:
    start = time.perf_counter()
    model = HybridModel(config).fit(examples, products)
    return time.perf_counter() - start, model


def input_costs(model: HybridModel, examples: Examples, cfg: HybridConfig) -> dict[str, float]:
    """Seconds the hybrid spends building LightFM's inputs, measured apart."""
    start = time.perf_counter()
    FeatureBuilder(cfg.features).fit(examples.state, model.builder_.product_ids_)
    model._user_features(examples.state, cfg)
    built = time.perf_counter()
    _interactions(examples, cfg.held_not_negative, cfg.recency_half_life)
    return {"features_s": built - start, "interactions_s": time.perf_counter() - built}


def lightfm_floor(model: HybridModel, examples: Examples, cfg: HybridConfig) -> float:
    """Seconds for one bare LightFM fit on the model's own matrices (built untimed)."""
    users = model._user_features(examples.state, cfg)
    interactions, weights = _interactions(examples, cfg.held_not_negative, cfg.recency_half_life)
    bare = LightFM(no_components=cfg.no_components, loss=cfg.loss,
                   learning_rate=cfg.learning_rate, user_alpha=cfg.user_alpha,
                   item_alpha=cfg.item_alpha, max_sampled=cfg.max_sampled,
                   random_state=np.random.RandomState(cfg.random_state))  # fmt: skip
    start = time.perf_counter()
    bare.fit(interactions, user_features=users, item_features=model.item_features_,
             sample_weight=weights, epochs=cfg.epochs, num_threads=1)  # fmt: skip
    return time.perf_counter() - start


def overhead(customers: int, months: int, epochs: int, repeats: int) -> dict[str, float]:
    """Best of `repeats` hybrid fits against best of as many bare fits, interleaved."""
    examples, products = bank_examples(customers, months)
    # one member on one view and one thread: the bare fit below is exactly that member
    cfg = HybridConfig(ensemble=1, num_threads=1, epochs=epochs, coarse_view=False)
    fits, floors = [], []
    for _ in range(max(repeats, 1)):
        fit_s, model = timed_fit(cfg, examples, products)
        fits.append(fit_s)
        floors.append(lightfm_floor(model, examples, cfg))
    fit_s, floor_s = min(fits), min(floors)
    parts = input_costs(model, examples, cfg)
    ratio = fit_s / floor_s
    verdict = "OK" if ratio <= TARGET_RATIO else "TOO SLOW"
    print(f"training: {customers:,} customers x {months} months, {len(examples):,} examples, "
          f"{epochs} epochs: hybrid fit {fit_s:.1f} s vs bare LightFM.fit {floor_s:.1f} s "
          f"= {ratio:.2f}x (target <= {TARGET_RATIO}x: {verdict}; best of {repeats})")  # fmt: skip
    print("| step | seconds |\n|---|---:|")
    print(f"| HybridModel.fit (1 member, 1 thread) | {fit_s:.2f} |")
    print(f"| bare LightFM.fit, same matrices | {floor_s:.2f} |")
    print(f"| FeatureBuilder fit + transform (measured apart) | {parts['features_s']:.2f} |")
    print(f"| interactions + weights (measured apart) | {parts['interactions_s']:.2f} |")
    return {"customers": customers, "months": months, "epochs": epochs,
            "examples": len(examples), "features": len(model.vocabulary_),
            "fit_s": fit_s, "floor_s": floor_s, **parts, "ratio_to_floor": ratio,
            "target_ratio": TARGET_RATIO}  # fmt: skip


def scale_curve(months: int) -> list[dict[str, Any]]:
    """Default-config fit time for growing banks, as a markdown table."""
    cfg = HybridConfig()
    rows = []
    for customers in SCALE_CUSTOMERS:
        examples, products = bank_examples(customers, months)
        fit_s, model = timed_fit(cfg, examples, products)
        rows.append({"customers": customers, "examples": len(examples),
                     "features": len(model.vocabulary_), "fit_s": fit_s,
                     "examples_per_s": len(examples) / fit_s})  # fmt: skip
        del examples, model
    threads = cfg.num_threads or "all"
    views = 2 if cfg.coarse_view else 1
    print(f"scale curve: default hybrid ({cfg.ensemble} member(s) x {views} views, "
          f"{threads} threads, {cfg.epochs} epochs), {months} months")  # fmt: skip
    print("| customers | training examples | features | fit s | examples/s |")
    print("|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['customers']:,} | {r['examples']:,} | {r['features']:,} "
              f"| {r['fit_s']:.1f} | {r['examples_per_s']:,.0f} |")  # fmt: skip
    return rows


def main() -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--customers", type=int, default=100_000)
    parser.add_argument("--months", type=int, default=12)
    parser.add_argument("--epochs", type=int, default=HybridConfig().epochs)
    parser.add_argument("--repeats", type=int, default=2, help="best of n for fit vs floor")
    parser.add_argument("--scale-curve", action="store_true", help="also fit 100k/300k/1M")
    args = parser.parse_args([] if __name__ != "__main__" else None)
    result: dict[str, Any] = overhead(args.customers, args.months, args.epochs, args.repeats)
    if args.scale_curve:
        result["scale_curve"] = scale_curve(args.months)
    return result


if __name__ == "__main__":
    main()
