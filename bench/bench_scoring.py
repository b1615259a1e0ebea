"""Batch next-best-offer scoring: 1,000,000 customers x 24 products, top 7, must take < 60 s.

End to end means what a nightly batch does: read the data directory, build the holdings
cube and every customer's state at the last snapshot, encode features, score, take the
top 7 with held products excluded, and compute calibrated probabilities (no reasons).
The model is a real pipeline bundle fitted beforehand on a small bank with few epochs
(quality is irrelevant here; fitting is not measured).

Reported against a reference measured in the same run: the bare numpy floor on the same
embeddings (one sparse-dense product, one dense product, masking, argpartition), given the
feature matrix for free. The model path (feature encoding + scoring + top-k) should stay
within 3x of it.

    python -m bench.bench_scoring [--customers 1000000] [--months 3]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from recommender.bundle import ModelBundle
from recommender.dataset import load_bank_data
from recommender.models.hybrid import HybridConfig
from recommender.pipeline import run_pipeline
from recommender.ranking import top_k
from recommender.state import CustomerState, HoldingsCube
from recommender.synthetic import generate, write_bank

TARGET_SECONDS = 60.0
TARGET_RATIO = 3.0
K = 7
FIT_CUSTOMERS = 50_000


def fitted_bundle(customers: int, epochs: int) -> ModelBundle:
    """A calibrated bundle from the real pipeline on a small 3-month bank."""
    bank = generate(customers, 3, seed=2)
    with tempfile.TemporaryDirectory() as tmp:
        write_bank(bank, Path(tmp) / "bank")
        data = load_bank_data(Path(tmp) / "bank")
        return run_pipeline(data, config=HybridConfig(epochs=epochs)).bundle


def numpy_floor(
    x: sp.csr_matrix, bundle: ModelBundle, held: np.ndarray
) -> tuple[float, np.ndarray]:
    """Seconds for the bare top-k on the model's own embeddings, and the items it picks."""
    model = bundle.model
    start = time.perf_counter()
    u = x @ model.user_embeddings_
    s = u @ model.item_repr_.T + model.item_bias_
    s[held] = -np.inf
    best = np.argpartition(-s, K, axis=1)[:, :K]
    order = np.argsort(-np.take_along_axis(s, best, axis=1), axis=1)
    items = np.take_along_axis(best, order, axis=1)
    return time.perf_counter() - start, items


def score_end_to_end(
    directory: Path, bundle: ModelBundle
) -> tuple[dict[str, float], CustomerState]:
    """Seconds per step from reading the files to calibrated top-k, and the state scored."""
    model = bundle.model
    marks = [time.perf_counter()]
    data = load_bank_data(directory)
    marks.append(time.perf_counter())
    cube = HoldingsCube.from_data(data)
    marks.append(time.perf_counter())
    state = cube.state_at(len(cube.dates) - 1, bundle.options)
    marks.append(time.perf_counter())
    scores = model.score(state)
    marks.append(time.perf_counter())
    top_k(scores, K, state.held)
    marks.append(time.perf_counter())
    model.predict_proba(state, scores)
    marks.append(time.perf_counter())
    steps = ("load_s", "cube_s", "state_s", "score_s", "top_k_s", "proba_s")
    timings = {name: b - a for name, a, b in zip(steps, marks, marks[1:], strict=False)}
    timings["end_to_end_s"] = marks[-1] - marks[0]
    return timings, state


def model_path(bundle: ModelBundle, state: CustomerState) -> tuple[float, np.ndarray]:
    """Seconds for what the floor does plus feature encoding: score and top-k."""
    start = time.perf_counter()
    items, _ = top_k(bundle.model.score(state), K, state.held)
    return time.perf_counter() - start, items


def features(bundle: ModelBundle, state: CustomerState) -> tuple[float, sp.csr_matrix]:
    start = time.perf_counter()
    x = bundle.model._user_features(state, bundle.model.config or HybridConfig())
    return time.perf_counter() - start, x


def best_of(repeats: int, bundle: ModelBundle, state: CustomerState) -> dict[str, float]:
    """Best seconds of the model path, its features and the floor, interleaved."""
    runs = []
    for _ in range(repeats):
        model_s, model_items = model_path(bundle, state)
        transform_s, x = features(bundle, state)
        floor_s, floor_items = numpy_floor(x, bundle, state.held)
        agreement = float(np.mean(model_items == floor_items))
        runs.append((model_s, transform_s, floor_s, agreement))
    model_s, transform_s, floor_s, agreement = (min(column) for column in zip(*runs, strict=True))
    return {"model_s": model_s, "transform_s": transform_s, "numpy_floor_s": floor_s,
            "agreement": agreement}  # fmt: skip


def _print_table(rows: list[tuple[str, float]]) -> None:
    print("| step | seconds |\n|---|---:|")
    for name, seconds in rows:
        print(f"| {name} | {seconds:.2f} |")


def main() -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--customers", type=int, default=1_000_000)
    parser.add_argument("--months", type=int, default=3)
    parser.add_argument("--fit-customers", type=int, default=FIT_CUSTOMERS)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3, help="best of n for model vs floor")
    args = parser.parse_args([] if __name__ != "__main__" else None)
    bundle = fitted_bundle(args.fit_customers, args.epochs)
    with tempfile.TemporaryDirectory() as tmp:
        write_bank(generate(args.customers, args.months, seed=1), Path(tmp) / "bank")
        t, state = score_end_to_end(Path(tmp) / "bank", bundle)
    b = best_of(args.repeats, bundle, state)
    ratio = b["model_s"] / b["numpy_floor_s"]
    result = {"customers": args.customers, **t, **b, "ratio_to_floor": ratio,
              "target_s": TARGET_SECONDS, "target_ratio": TARGET_RATIO}  # fmt: skip
    fast = "OK" if ratio <= TARGET_RATIO else "TOO SLOW"
    verdict = "OK" if t["end_to_end_s"] < TARGET_SECONDS else "TOO SLOW"
    print(f"scoring: {args.customers:,} customers x {len(bundle.product_ids)} products, top {K}, "
          f"end to end {t['end_to_end_s']:.1f} s (target < {TARGET_SECONDS:.0f} s: {verdict}); "
          f"model {b['model_s']:.2f} s vs numpy floor {b['numpy_floor_s']:.2f} s = {ratio:.1f}x "
          f"(target <= {TARGET_RATIO:.0f}x: {fast})")  # fmt: skip
    _print_table([
        ("load_bank_data", t["load_s"]),
        ("HoldingsCube.from_data", t["cube_s"]),
        ("state_at(last)", t["state_s"]),
        ("model.score (features + products)", t["score_s"]),
        ("top_k with held excluded", t["top_k_s"]),
        ("predict_proba (calibrated)", t["proba_s"]),
        ("end to end", t["end_to_end_s"]),
        (f"best of {args.repeats}: model score + top_k", b["model_s"]),
        (f"best of {args.repeats}: of which features", b["transform_s"]),
        (f"best of {args.repeats}: numpy floor", b["numpy_floor_s"]),
    ])  # fmt: skip
    print(f"top-{K} items identical to the floor's: {b['agreement']:.2%}")
    return result


if __name__ == "__main__":
    main()
