"""The training procedure, free of any tracking: evaluate, calibrate, refit, bundle.

1. split the data with the protocol; fit every baseline and the hybrid on the training
   examples; report them side by side on the test examples;
2. fit the probability calibrator on held-out scores of the evaluated hybrid;
3. refit the hybrid on all examples (the newest acquisitions included) and attach the
   calibrator, so the bundle scores with the newest data.
`training/` logs the result to MLflow; nothing here talks to a server.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from recommender.bundle import ModelBundle
from recommender.dataset import BankData
from recommender.errors import ModelFitError
from recommender.evaluation import (
    ModelResult,
    baseline_models,
    oracle_for,
    per_product_hit_rate,
    report,
    run_models,
)
from recommender.models.hybrid import HybridConfig, HybridModel
from recommender.probability import fit_calibrator
from recommender.protocol import Split, refit_examples, resolve, split
from recommender.state import CustomerState, HoldingsCube, StateOptions

Progress = Callable[[str], None]


@dataclass(frozen=True)
class PipelineResult:
    report: dict[str, Any]
    latest: CustomerState  # every customer at the newest snapshot
    bundle: ModelBundle
    split: Split
    results: list[ModelResult]
    hit_rates: dict[str, dict[str, float]]
    calibration: dict[str, float]


def evaluate_hybrid(
    data: BankData,
    protocol: str,
    config: HybridConfig,
    k: int = 7,
    options: StateOptions | None = None,
    progress: Progress | None = None,
) -> tuple[Split, list[ModelResult], HybridModel]:
    """The protocol's split with the hybrid and every baseline fitted and run."""
    the_split = split(data, protocol, options=options)
    hybrid = HybridModel(config)
    models = [hybrid, *baseline_models()]
    oracle = oracle_for(the_split, data)
    models += [oracle] if oracle else []
    return the_split, run_models(the_split, models, k, progress), hybrid


def run_pipeline(
    data: BankData,
    protocol: str = "auto",
    config: HybridConfig | None = None,
    k: int = 7,
    options: StateOptions | None = None,
    progress: Progress | None = None,
) -> PipelineResult:
    config = config or HybridConfig()
    options = options or StateOptions()
    the_split, results, hybrid = evaluate_hybrid(data, protocol, config, k, options, progress)
    the_report = report(the_split, results, k)
    held_out = the_split.calibration
    if progress:
        progress("calibrating")
    calibrator, quality = fit_calibrator(
        hybrid.score(held_out.state), held_out.state.held, held_out.targets
    )
    the_report["calibration"] = quality
    if progress:
        progress("refitting on all data")
    cube = HoldingsCube.from_data(data)  # built once: refit examples and the newest states
    final = HybridModel(config).fit(refit_examples(data, protocol, options, cube), data.products)
    final.calibrate(calibrator)
    latest = cube.state_at(len(cube.dates) - 1, options)
    _check_finite(final, latest)
    assert latest.tiering is not None  # state_at always sets it
    bundle = ModelBundle(
        model=final,
        products=data.products,
        tiering=latest.tiering,
        options=options,
        as_of=cube.dates[-1],
        attribute_columns=data.attribute_columns,
        metadata={"protocol": resolve(protocol, data), "k": k},
    )
    hit_rates = {r.name: per_product_hit_rate(the_split, r, data.product_ids) for r in results}
    return PipelineResult(the_report, latest, bundle, the_split, results, hit_rates, quality)


def _check_finite(model: HybridModel, state: CustomerState) -> None:
    """Nothing with NaN or infinite scores leaves the pipeline."""
    rows = np.random.default_rng(0).permutation(len(state))[:10_000]
    scores = model.score(state.take(np.sort(rows)))
    if not np.isfinite(scores).all():
        raise ModelFitError(
            "the refitted hybrid produced NaN or infinite scores; lower "
            "learning_rate or raise user_alpha/item_alpha"
        )
