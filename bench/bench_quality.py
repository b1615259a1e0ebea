"""Recommendation quality (MAP@7) of every model on three data sets, measured in one run.

Each data set is split by its protocol; every model is fitted on the split's training
examples and recommends 7 products to each test client. MAP@7 is the mean of the clients'
AP@7, with a 95% percentile bootstrap interval over clients (the same resampled clients for
every model); differences between two models use a paired bootstrap. "tier A" is the test
clients whose value tier is A.

Models: popularity, segment_popularity, cooccurrence, the oracle (synthetic only), the
plain-LightFM reference (`bench/reference.py`), `hybrid` (`HybridConfig` defaults) and
`hybrid+rerank` (the same with the second-stage re-ranker). A model that fails is reported
as an error row. Fit seconds per model (the reference's: `LightFM.fit` alone, one thread;
the others': the whole `fit`), and each hybrid's fit time as a ratio to the reference's.

Data sets and targets (every verdict is computed from the numbers of this run):
- development, ../shared/data/santander-june2015, temporal, test snapshot 2015-06-28: hybrid
  MAP@7 >= 0.76 and above the plain-LightFM reference by more than the paired interval;
- Zimnat leave-one-out, ../shared/data/zimnat/train.csv: hybrid MAP@7 >= 0.93 (outside
  references: popularity 0.821, co-occurrence 0.874, gradient-boosted 0.926);
- synthetic bank (--customers x 12 months, --seed), temporal: hybrid / oracle >= 0.97,
  overall and for tier A.
For every data set and hybrid variant it also checks tier A MAP@7 >= overall MAP@7.

Writes the numbers as JSON (--out) and the printed markdown tables beside it (`.md`).

    python -m bench.bench_quality [--customers 100000] [--seed 2026] [--resamples 1000]
        [--config FILE] [--out bench/results/quality.json]
        [--skip-dev] [--skip-zimnat] [--skip-synthetic]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bench.reference import plain_lightfm_map
from recommender.bootstrap import bootstrap_interval, paired_difference_interval
from recommender.dataset import BankData, load_bank_data
from recommender.evaluation import baseline_models, oracle_for
from recommender.metrics import per_customer
from recommender.models.base import Recommender
from recommender.models.hybrid import HybridConfig, HybridModel
from recommender.protocol import Split, split
from recommender.synthetic import generate, write_bank
from recommender.wide import import_wide

K = 7
METRIC = f"map@{K}"
LEVEL = 0.95
BOOTSTRAP_SEED = 0
REFERENCE_SEED = 42
MONTHS = 12
DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
DEVELOPMENT = DATA / "santander-june2015"
DEV_TEST_DATE = pd.Timestamp("2015-06-28")
ZIMNAT = DATA / "zimnat" / "train.csv"
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "quality.json"

REFERENCE, HYBRID, RERANK, ORACLE = "plain-lightfm", "hybrid", "hybrid+rerank", "oracle"
VARIANTS = (HYBRID, RERANK)
PAIRS = ((HYBRID, REFERENCE), (RERANK, REFERENCE), (RERANK, HYBRID))
ALL, TIER_A = "all", "tier A"
BLANK = "-"  # a cell with nothing measured
COLUMNS = ("popularity", "segment_popularity", "cooccurrence", ORACLE, REFERENCE, *VARIANTS)
DEV_TARGET, ZIMNAT_TARGET, ORACLE_SHARE_TARGET = 0.76, 0.93, 0.97
# measured outside the project (../shared/data/README.md)
DEV_OUTSIDE = {"popularity": 0.612, "segment_popularity": 0.616, "cooccurrence": 0.609}
DEV_OUTSIDE |= {REFERENCE: 0.741}
ZIMNAT_OUTSIDE = {"popularity": 0.821, "cooccurrence": 0.874, "gradient-boosted": 0.926}

Fit = Callable[[Split], tuple[np.ndarray, float]]  # -> (recommended items, fit seconds)
Result = dict[str, Any]


@dataclass(frozen=True)
class Run:
    """One model's recommendations for the test clients, or the error that stopped it."""

    name: str
    items: np.ndarray | None
    fit_seconds: float | None
    error: str | None = None


@dataclass(frozen=True)
class DataSet:
    key: str
    title: str  # may name {customers} and {seed} (the command-line options)
    source: Path | None  # a file or folder the data set needs; skipped when missing
    outside: dict[str, float]  # MAP@7 measured outside the project
    checks: Callable[[Result], list[Result]]


# --- fitting ---------------------------------------------------------------------------


def fitted_items(model: Recommender, the_split: Split) -> tuple[np.ndarray, float]:
    start = time.perf_counter()
    model.fit(the_split.train, the_split.cube.data.products)
    seconds = time.perf_counter() - start
    items, _ = model.recommend(the_split.test.state, K)
    return items, seconds


def hybrid_items(config: HybridConfig, rerank: bool, the_split: Split) -> tuple[np.ndarray, float]:
    return fitted_items(HybridModel(replace(config, rerank=rerank)), the_split)


def reference_items(the_split: Split) -> tuple[np.ndarray, float]:
    run = plain_lightfm_map(the_split, k=K, seed=REFERENCE_SEED)
    return run.items, run.fit_seconds


def contenders(the_split: Split, data: BankData, config: HybridConfig) -> dict[str, Fit]:
    oracle = oracle_for(the_split, data)
    fixed = [*baseline_models(), *([oracle] if oracle else [])]
    fits: dict[str, Fit] = {m.name: partial(fitted_items, m) for m in fixed}
    fits[REFERENCE] = reference_items
    fits[HYBRID] = partial(hybrid_items, config, False)
    fits[RERANK] = partial(hybrid_items, config, True)
    return fits


def run_one(label: str, name: str, fit: Fit, the_split: Split) -> Run:
    print(f"[{label}] {name}: fitting", flush=True)
    start = time.perf_counter()
    try:
        items, seconds = fit(the_split)
    except Exception as error:  # one failing model is an error row, not a failed benchmark
        message = f"{type(error).__name__}: {error}"
        seconds = time.perf_counter() - start
        print(f"[{label}] {name}: FAILED after {seconds:.1f} s: {message}", flush=True)
        return Run(name, None, None, message)
    total = time.perf_counter() - start
    print(f"[{label}] {name}: fit {seconds:.1f} s ({total:.1f} s with recommending)", flush=True)
    return Run(name, items, seconds)


# --- statistics ------------------------------------------------------------------------


def interval(values: np.ndarray, resamples: int) -> Result | None:
    if len(values) == 0:
        return None
    mean, low, high = bootstrap_interval(
        values, n_resamples=resamples, level=LEVEL, seed=BOOTSTRAP_SEED
    )
    return {"mean": mean, "low": low, "high": high}


def difference(a: np.ndarray, b: np.ndarray, resamples: int) -> Result | None:
    if len(a) == 0:
        return None
    mean, low, high = paired_difference_interval(
        a, b, n_resamples=resamples, level=LEVEL, seed=BOOTSTRAP_SEED
    )
    return {"mean": mean, "low": low, "high": high}


def model_entry(run: Run, ap: dict[str, np.ndarray], tier_a: np.ndarray, n: int) -> Result:
    entry: Result = {"fit_seconds": run.fit_seconds, "error": run.error, ALL: None, TIER_A: None}
    if run.name in ap:
        entry[ALL] = interval(ap[run.name], n)
        entry[TIER_A] = interval(ap[run.name][tier_a], n)
    return entry


def differences(ap: dict[str, np.ndarray], tier_a: np.ndarray, n: int) -> Result:
    """Paired differences a - b over the same clients, for each pair that ran."""
    out: Result = {}
    for a, b in PAIRS:
        if a in ap and b in ap:
            out[f"{a} - {b}"] = {
                ALL: difference(ap[a], ap[b], n),
                TIER_A: difference(ap[a][tier_a], ap[b][tier_a], n),
            }
    return out


def fit_ratios(runs: dict[str, Run]) -> Result:
    reference = runs[REFERENCE].fit_seconds
    out: Result = {}
    for name in VARIANTS:
        seconds = runs[name].fit_seconds
        if reference and seconds is not None:
            out[f"{name} / {REFERENCE}"] = seconds / reference
    return out


def notes(runs: dict[str, Run]) -> list[str]:
    hybrid, rerank = runs[HYBRID].items, runs[RERANK].items
    if hybrid is not None and rerank is not None and np.array_equal(hybrid, rerank):
        return [
            f"{RERANK} recommends exactly the {HYBRID}'s lists: the second stage changed nothing"
        ]
    return []


def measured(the_split: Split, runs: dict[str, Run], resamples: int) -> Result:
    truth, tier_a = the_split.test.targets, the_split.test.state.tier == "A"
    ap = {
        name: per_customer(run.items, truth, K)[METRIC].to_numpy()
        for name, run in runs.items()
        if run.items is not None
    }
    return {
        "protocol": the_split.protocol,
        "test_date": the_split.test_date.date().isoformat(),
        "n_train_examples": len(the_split.train),
        "n_clients": len(truth),
        "n_tier_a": int(tier_a.sum()),
        "models": {name: model_entry(run, ap, tier_a, resamples) for name, run in runs.items()},
        "differences": differences(ap, tier_a, resamples),
        "fit_ratios": fit_ratios(runs),
        "notes": notes(runs),
    }


# --- targets ---------------------------------------------------------------------------


def mean_of(result: Result, name: str, scope: str = ALL) -> float | None:
    entry = result["models"].get(name, {}).get(scope)
    return None if entry is None else float(entry["mean"])


def check(text: str, ok: bool | None) -> Result:
    return {"check": text, "ok": ok}


def map_target(result: Result, name: str, target: float) -> Result:
    value = mean_of(result, name)
    if value is None:
        return check(f"{name} MAP@7 >= {target}", None)
    return check(f"{name} MAP@7 {value:.4f} >= {target}", value >= target)


def above_reference(result: Result, name: str) -> Result:
    diff = result["differences"].get(f"{name} - {REFERENCE}", {}).get(ALL)
    if diff is None:
        return check(f"{name} above {REFERENCE} beyond the interval", None)
    text = f"{name} - {REFERENCE} = {span(diff, signed=True)}, interval above 0"
    return check(text, diff["low"] > 0)


def oracle_share(result: Result, name: str, scope: str) -> Result:
    value, oracle = mean_of(result, name, scope), mean_of(result, ORACLE, scope)
    if value is None or not oracle:
        return check(f"{name} / oracle, {scope} >= {ORACLE_SHARE_TARGET:.0%}", None)
    share = value / oracle
    text = f"{name} / oracle, {scope}: {value:.4f} / {oracle:.4f} = {share:.1%}"
    return check(f"{text} >= {ORACLE_SHARE_TARGET:.0%}", share >= ORACLE_SHARE_TARGET)


def tier_a_vs_all(result: Result, name: str) -> Result:
    overall, tier_a = mean_of(result, name), mean_of(result, name, TIER_A)
    if overall is None or tier_a is None:
        return check(f"{name} tier A >= overall", None)
    return check(f"{name} tier A {tier_a:.4f} >= overall {overall:.4f}", tier_a >= overall)


def dev_checks(result: Result) -> list[Result]:
    return [
        c for v in VARIANTS for c in (map_target(result, v, DEV_TARGET), above_reference(result, v))
    ]


def zimnat_checks(result: Result) -> list[Result]:
    return [map_target(result, v, ZIMNAT_TARGET) for v in VARIANTS]


def synthetic_checks(result: Result) -> list[Result]:
    return [oracle_share(result, v, scope) for v in VARIANTS for scope in (ALL, TIER_A)]


# --- markdown --------------------------------------------------------------------------


def span(entry: Result | None, signed: bool = False) -> str:
    if entry is None:
        return BLANK
    f = "+.4f" if signed else ".4f"
    return f"{entry['mean']:{f}} [{entry['low']:{f}}, {entry['high']:{f}}]"


def verdict(ok: bool | None) -> str:
    return {True: "OK", False: "BELOW TARGET", None: "NOT MEASURED"}[ok]


def model_rows(result: Result) -> list[str]:
    outside = result["outside"]
    rows = []
    for name, m in result["models"].items():
        extra = str(outside.get(name, ""))
        if m["error"]:
            message = m["error"].splitlines()[0].replace("|", "/")
            rows.append(f"| {name} | error: {message} | - | - | {extra} |")
            continue
        rows.append(
            f"| {name} | {span(m[ALL])} | {span(m[TIER_A])} | {m['fit_seconds']:.1f} | {extra} |"
        )
    rows += [f"| {n} (outside) | - | - | - | {v} |" for n, v in outside.items() if n not in COLUMNS]
    return rows


def dataset_markdown(key: str, result: Result) -> list[str]:
    return [
        f"### {key}: {result['title']}",
        f"{result['protocol']}, test {result['test_date']}: {result['n_clients']:,} test "
        f"clients ({result['n_tier_a']:,} tier A), {result['n_train_examples']:,} training "
        f"examples; MAP@7 [{LEVEL:.0%} bootstrap interval over clients]",
        "",
        "| model | MAP@7 | tier A MAP@7 | fit s | outside reference |",
        "|---|---|---|---|---|",
        *model_rows(result),
        "",
        "| paired difference | all | tier A |",
        "|---|---|---|",
        *(
            f"| {pair} | {span(d[ALL], True)} | {span(d[TIER_A], True)} |"
            for pair, d in result["differences"].items()
        ),
        "",
        *(f"- fit time {pair}: {ratio:.2f}x" for pair, ratio in result["fit_ratios"].items()),
        *(f"- note: {note}" for note in result["notes"]),
        *(f"- {c['check']}: {verdict(c['ok'])}" for c in result["checks"]),
        "",
    ]


def summary_markdown(results: dict[str, Result]) -> list[str]:
    lines = [
        "### MAP@7 summary (hybrid variants with 95% interval)",
        "",
        f"| data | {' | '.join(COLUMNS)} |",
        f"|---|{'---|' * len(COLUMNS)}",
    ]
    for key, result in results.items():
        for scope in (ALL, TIER_A):
            cells = [summary_cell(result, name, scope) for name in COLUMNS]
            lines.append(f"| {key}, {scope} | {' | '.join(cells)} |")
    return [*lines, ""]


def summary_cell(result: Result, name: str, scope: str) -> str:
    model = result["models"].get(name)
    if model is None:
        return BLANK
    if model["error"]:
        return "error"
    if name in VARIANTS or model[scope] is None:
        return span(model[scope])
    return f"{model[scope]['mean']:.4f}"


# --- data sets -------------------------------------------------------------------------

DEV_SET = DataSet(
    "development", "Santander clients, June 2015", DEVELOPMENT, DEV_OUTSIDE, dev_checks
)
ZIMNAT_SET = DataSet("zimnat", "Zimnat insurance", ZIMNAT, ZIMNAT_OUTSIDE, zimnat_checks)
SYNTHETIC_SET = DataSet(
    "synthetic",
    f"synthetic bank, {{customers:,}} customers x {MONTHS} months, seed {{seed}}",
    None,
    {},
    synthetic_checks,
)


def load_development(_: Path, __: argparse.Namespace) -> tuple[BankData, Split]:
    data = load_bank_data(DEVELOPMENT)
    return data, split(data, "temporal", DEV_TEST_DATE)


def load_zimnat(tmp: Path, _: argparse.Namespace) -> tuple[BankData, Split]:
    import_wide(ZIMNAT, tmp / "zimnat", "ID", "P5DA:ECY3", snapshot_date="2020-01-01")
    data = load_bank_data(tmp / "zimnat")
    return data, split(data, "auto")


def load_synthetic(tmp: Path, args: argparse.Namespace) -> tuple[BankData, Split]:
    write_bank(generate(args.customers, MONTHS, seed=args.seed), tmp / "bank")
    data = load_bank_data(tmp / "bank")
    return data, split(data, "auto")


Loader = Callable[[Path, argparse.Namespace], tuple[BankData, Split]]


def selected(args: argparse.Namespace) -> list[tuple[DataSet, Loader]]:
    """The data sets not skipped on the command line whose files exist."""
    wanted = [
        (DEV_SET, load_development, args.skip_dev),
        (ZIMNAT_SET, load_zimnat, args.skip_zimnat),
        (SYNTHETIC_SET, load_synthetic, args.skip_synthetic),
    ]
    chosen = []
    for spec, load, skip in wanted:
        if not skip and spec.source is not None and not spec.source.exists():
            print(f"[{spec.key}] skipped: {spec.source} not found")
        elif not skip:
            chosen.append((spec, load))
    return chosen


def measure(
    spec: DataSet, load: Loader, config: HybridConfig, tmp: Path, args: argparse.Namespace
) -> Result:
    """Every model fitted, run and scored on one data set."""
    start = time.perf_counter()
    data, the_split = load(tmp, args)
    print(f"[{spec.key}] data loaded and split in {time.perf_counter() - start:.1f} s", flush=True)
    fits = contenders(the_split, data, config)
    runs = {name: run_one(spec.key, name, fit, the_split) for name, fit in fits.items()}
    result = measured(the_split, runs, args.resamples)
    result["title"] = spec.title.format(customers=args.customers, seed=args.seed)
    result["outside"] = spec.outside
    result["checks"] = spec.checks(result) + [tier_a_vs_all(result, v) for v in VARIANTS]
    result["seconds"] = time.perf_counter() - start
    return result


# --- command line ----------------------------------------------------------------------


def hybrid_config(path: Path | None) -> HybridConfig:
    """The project defaults with the options of the JSON file (for both hybrid variants;
    `rerank` is set by the variant)."""
    return HybridConfig.from_dict(json.loads(path.read_text()) if path else {})


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--customers", type=int, default=100_000, help="synthetic bank size")
    parser.add_argument("--seed", type=int, default=2026, help="synthetic bank seed")
    parser.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples")
    parser.add_argument("--config", type=Path, default=None, help="JSON hybrid options")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON results file")
    parser.add_argument("--skip-dev", action="store_true")
    parser.add_argument("--skip-zimnat", action="store_true")
    parser.add_argument("--skip-synthetic", action="store_true")
    return parser.parse_args([] if __name__ != "__main__" else None)


def write(out: Path, results: Result, markdown: list[str]) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    out.with_suffix(".md").write_text("\n".join(markdown))
    print(f"wrote {out} and {out.with_suffix('.md')}")


def main() -> Result:
    args = parse_args()
    config = hybrid_config(args.config)
    datasets: dict[str, Result] = {}
    markdown: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        for spec, load in selected(args):
            datasets[spec.key] = measure(spec, load, config, Path(tmp), args)
            section = dataset_markdown(spec.key, datasets[spec.key])
            print("\n" + "\n".join(section), flush=True)
            markdown += section
    summary = summary_markdown(datasets)
    print("\n".join(summary))
    markdown += summary
    results: Result = {
        "k": K,
        "level": LEVEL,
        "resamples": args.resamples,
        "synthetic": {"customers": args.customers, "months": MONTHS, "seed": args.seed},
        "hybrid_config": config.to_dict(),
        "datasets": datasets,
    }
    write(args.out, results, markdown)
    return results


if __name__ == "__main__":
    main()
