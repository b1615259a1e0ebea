"""The `recommender` command line. Errors a user can fix print one line and exit 2."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import pandas as pd
import typer
from pydantic import ValidationError
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

from recommender.errors import ConfigError, RecommenderError

app = typer.Typer(
    help="Next-best-offer recommender for a bank's relationship officers.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
console = Console(stderr=True)
EXIT_USER_ERROR = 2


def progress_bar() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        console=console,
        transient=False,
        disable=not console.is_terminal,
    )


def _date(value: str | None, option: str) -> pd.Timestamp | None:
    if value is None:
        return None
    try:
        return pd.Timestamp(value).normalize()
    except ValueError as exc:
        raise ConfigError(f"{option} {value!r} is not a date (expected YYYY-MM-DD)") from exc


@app.command("demo-data")
def demo_data(
    out_dir: Annotated[Path, typer.Argument(help="Directory to write the bank data into.")],
    customers: Annotated[int, typer.Option(min=100, help="Number of customers.")] = 50_000,
    months: Annotated[int, typer.Option(min=1, max=120, help="Monthly snapshots.")] = 12,
    seed: Annotated[int, typer.Option(help="Random seed (same seed, same data).")] = 7,
    end_date: Annotated[str, typer.Option(help="Last month-end snapshot.")] = "2026-10-31",
    fmt: Annotated[str, typer.Option("--format", help="parquet or csv.")] = "parquet",
) -> None:
    """Generate a realistic synthetic bank (calibrated to Santander) with its ground truth."""
    from recommender.synthetic import generate, write_bank

    if fmt not in ("parquet", "csv"):
        raise ConfigError(f"--format {fmt!r}: use parquet or csv")
    _date(end_date, "--end-date")
    with progress_bar() as bar:
        task = bar.add_task("simulating months", total=months)
        bank = generate(customers, months, seed, end_date, progress=lambda n: bar.advance(task, n))
        task = bar.add_task("writing files", total=1)
        files = write_bank(bank, out_dir, fmt)
        bar.advance(task)
    rates = bank.acquisition_rate
    mean_rate = sum(rates) / len(rates) if rates else 0.0
    typer.echo(
        f"wrote {len(files)} files to {out_dir}: {customers:,} customers, "
        f"{months} snapshots, {mean_rate:.1%} acquire a product per month"
    )


@app.command("import-wide")
def import_wide_command(
    csv: Annotated[Path, typer.Argument(help="Wide CSV: one row per customer (and month).")],
    out_dir: Annotated[Path, typer.Argument(help="Bank data directory to write.")],
    customer_col: Annotated[str, typer.Option(help="Column with the customer id.")],
    product_cols: Annotated[
        str,
        typer.Option(
            help="Product columns, comma-separated: names, globs (ind_*_ult1), FIRST:LAST."
        ),
    ],
    date_col: Annotated[str | None, typer.Option(help="Column with the snapshot date.")] = None,
    snapshot_date: Annotated[
        str | None, typer.Option(help="Snapshot date for single-snapshot files (YYYY-MM-DD).")
    ] = None,
    fmt: Annotated[str, typer.Option("--format", help="parquet or csv.")] = "parquet",
) -> None:
    """Import a wide 0/1 product file (e.g. Santander, Zimnat) into a bank data directory."""
    from recommender.wide import import_wide

    summary = import_wide(csv, out_dir, customer_col, product_cols, date_col, snapshot_date, fmt)
    typer.echo(
        f"wrote {out_dir}: {summary.customers:,} customers, {summary.holdings:,} "
        f"holdings, {summary.products} products, snapshots {', '.join(summary.snapshots)}"
    )


def print_report(report: dict[str, Any]) -> None:
    k = report["k"]
    table = Table(
        title=f"{report['protocol']} evaluation at {report['test_date']}: "
        f"{report['n_customers_evaluated']:,} customers"
    )
    metrics = [f"map@{k}", f"ndcg@{k}", "hit@1", "hit@3", "mrr", "coverage"]
    table.add_column("model")
    for metric in metrics:
        table.add_column(metric, justify="right")
    for tier in report["tiers"]:
        table.add_column(f"map@{k} tier {tier}", justify="right")
    for name, values in report["models"].items():
        tiers = [
            report["tiers"][t].get(name, {}).get(f"map@{k}", float("nan")) for t in report["tiers"]
        ]
        table.add_row(name, *[f"{values[m]:.4f}" for m in metrics], *[f"{v:.4f}" for v in tiers])
    Console(width=max(Console().width, 150)).print(table)


@app.command()
def evaluate(
    data_dir: Annotated[Path, typer.Argument(help="Bank data directory.")],
    protocol: Annotated[str, typer.Option(help="auto, temporal or leave-one-out.")] = "auto",
    k: Annotated[int, typer.Option(min=1, max=100, help="Length of each recommendation list.")] = 7,
    test_date: Annotated[str | None, typer.Option(help="Test snapshot (default: last).")] = None,
    report: Annotated[Path | None, typer.Option(help="Write the JSON report here.")] = None,
    value_col: Annotated[str | None, typer.Option(help="Customer value column for tiers.")] = None,
    segment_col: Annotated[str | None, typer.Option(help="Segment column.")] = None,
) -> None:
    """Evaluate the baselines (and the oracle on synthetic data) with an honest protocol."""
    from recommender.dataset import load_bank_data
    from recommender.evaluation import baseline_models, oracle_for, run_models
    from recommender.evaluation import report as make_report
    from recommender.protocol import split
    from recommender.state import StateOptions

    options = StateOptions(value_col=value_col, segment_col=segment_col)
    with progress_bar() as bar:
        task = bar.add_task("loading data", total=None)
        data = load_bank_data(data_dir)
        bar.update(task, description="building examples")
        the_split = split(data, protocol, _date(test_date, "--test-date"), options)
        models = baseline_models()
        oracle = oracle_for(the_split, data)
        models += [oracle] if oracle else []
        bar.update(task, total=len(models), completed=0, description="models")
        results = run_models(
            the_split, models, k, progress=lambda name: bar.update(task, description=name)
        )
        bar.update(task, completed=len(models), description="done")
    result = make_report(the_split, results, k)
    print_report(result)
    if report is not None:
        report.parent.mkdir(parents=True, exist_ok=True)
        report.write_text(json.dumps(result, indent=2))
        typer.echo(f"report written to {report}")


def _advance_message(bar: Progress, task: TaskID) -> Callable[[str], None]:
    def update(message: str) -> None:
        bar.update(task, description=message, advance=1)

    return update


@app.command()
def train(
    data_dir: Annotated[Path, typer.Argument(help="Bank data directory.")],
    protocol: Annotated[str, typer.Option(help="auto, temporal or leave-one-out.")] = "auto",
    config: Annotated[
        Path | None,
        typer.Option(
            help="JSON hybrid options (default: models/hybrid_config.json from `tune`, if any)."
        ),
    ] = None,
    experiment: Annotated[str, typer.Option(help="MLflow experiment.")] = "next-best-offer",
    tracking_uri: Annotated[
        str | None,
        typer.Option(help="MLflow tracking URI (default: MLFLOW_TRACKING_URI or ./mlflow.db)."),
    ] = None,
    report: Annotated[Path | None, typer.Option(help="Write the JSON report here.")] = None,
    model_name: Annotated[str, typer.Option(help="Registered model name.")] = (
        "cross-sell-recommender"
    ),
    k: Annotated[int, typer.Option(min=1, max=100, help="Length of recommendation lists.")] = 7,
) -> None:
    """Evaluate the hybrid against the baselines, refit on all data, log and register it."""
    from training.tracking import quiet_mlflow
    from training.train import train as run_training

    quiet_mlflow()
    from training.train import write_report
    from training.tune import load_config

    hybrid_config, source = load_config(config)
    typer.echo(f"hybrid options: {source or 'defaults'}", err=True)
    with progress_bar() as bar:
        task = bar.add_task("loading data", total=9)
        outcome = run_training(
            data_dir,
            protocol,
            hybrid_config,
            experiment,
            tracking_uri,
            model_name,
            k,
            progress=_advance_message(bar, task),
        )
        bar.update(task, completed=9, description="done")
    print_report(outcome.report)
    cal = outcome.report["calibration"]
    typer.echo(f"calibration on held-out customers: brier {cal['brier']:.5f}, ECE {cal['ece']:.5f}")
    if report is not None:
        write_report(outcome.report, report)
        typer.echo(f"report written to {report}")
    typer.echo(f"MLflow run {outcome.run_id} at {outcome.tracking_uri}")
    typer.echo(f"registered {outcome.model_name} version {outcome.version} as @{outcome.alias}")
    typer.echo(f"see it: mlflow ui --backend-store-uri {outcome.tracking_uri}")


@app.command()
def promote(
    version: Annotated[
        str | None, typer.Option(help="Version to promote (default: @challenger).")
    ] = None,
    force: Annotated[
        bool, typer.Option(help="Promote even if MAP@k is lower or not comparable.")
    ] = False,
    model_name: Annotated[str, typer.Option(help="Registered model name.")] = (
        "cross-sell-recommender"
    ),
    tracking_uri: Annotated[str | None, typer.Option(help="MLflow tracking URI.")] = None,
) -> None:
    """Move @champion to the challenger if its MAP@k on the same data is at least as good."""
    from training.tracking import quiet_mlflow

    quiet_mlflow()
    from training.registry import promote as run_promotion
    from training.tracking import configure

    configure(tracking_uri)
    result = run_promotion(model_name, version, force)
    before = f"v{result.previous} ({result.champion_map:.4f})" if result.previous else "none"
    typer.echo(
        f"{result.name}: @champion is now v{result.version} (MAP@k "
        f"{result.challenger_map:.4f}); previous champion {before}"
    )


@app.command()
def score(
    data_dir: Annotated[Path, typer.Argument(help="Bank data directory.")],
    out: Annotated[Path, typer.Option(help="Output file, .csv or .parquet.")],
    model: Annotated[str, typer.Option(help="Model URI.")] = (
        "models:/cross-sell-recommender@champion"
    ),
    k: Annotated[int, typer.Option(min=1, max=100, help="Offers per customer.")] = 7,
    as_of: Annotated[str | None, typer.Option(help="Snapshot to score (default: latest).")] = None,
    tier: Annotated[str | None, typer.Option(help="Only this value tier (A, B or C).")] = None,
    objective: Annotated[str, typer.Option(help="propensity or expected_value.")] = "propensity",
    explain: Annotated[bool, typer.Option(help="Add reasons in words.")] = True,
    tracking_uri: Annotated[str | None, typer.Option(help="MLflow tracking URI.")] = None,
) -> None:
    """Batch next-best-offer for every customer of a data directory."""
    from training.tracking import quiet_mlflow

    quiet_mlflow()
    from training.scoring import load_bundle, score_directory, write_scores

    with progress_bar() as bar:
        task = bar.add_task("loading model", total=None)
        bundle = load_bundle(model, tracking_uri)
        bar.update(task, description="loading data")
        frame = score_directory(
            data_dir,
            bundle,
            k,
            _date(as_of, "--as-of"),
            tier,
            objective,
            explain,
            advance=lambda n: bar.update(task, advance=n),
            start=lambda n: bar.update(task, total=n, completed=0, description="scoring"),
        )
        write_scores(frame, out)
    typer.echo(
        f"wrote {len(frame):,} offers for {frame['customer_id'].nunique():,} customers to {out}"
    )


@app.command()
def tune(
    data_dir: Annotated[Path, typer.Argument(help="Bank data directory.")],
    trials: Annotated[int, typer.Option(min=1, help="Optuna trials.")] = 20,
    protocol: Annotated[str, typer.Option(help="auto, temporal or leave-one-out.")] = "auto",
    experiment: Annotated[str, typer.Option(help="MLflow experiment.")] = "next-best-offer",
    tracking_uri: Annotated[str | None, typer.Option(help="MLflow tracking URI.")] = None,
    out: Annotated[Path, typer.Option(help="Where to store the best options for `train`.")] = (
        Path("models/hybrid_config.json")
    ),
    seed: Annotated[int, typer.Option(help="Sampler seed.")] = 0,
) -> None:
    """Search hybrid hyperparameters on a validation split (never the test snapshot)."""
    from training.tracking import quiet_mlflow
    from training.tune import tune as run_tuning

    quiet_mlflow()

    with progress_bar() as bar:
        task = bar.add_task("trials", total=trials)

        def on_trial(number: int, value: float, best: float) -> None:
            bar.update(
                task, advance=1, description=f"trial {number}: {value:.4f} (best {best:.4f})"
            )

        outcome = run_tuning(
            data_dir,
            trials,
            protocol,
            None,
            experiment,
            tracking_uri,
            out,
            seed=seed,
            on_trial=on_trial,
        )
    typer.echo(f"validation MAP@7: defaults {outcome.default_map:.4f}, best {outcome.best_map:.4f}")
    typer.echo(json.dumps(outcome.best.to_dict(), indent=2))
    typer.echo(f"best options written to {outcome.path} (used by `recommender train`)")


keys_app = typer.Typer(help="API keys of the service (stored as SHA-256 hashes).",
                       no_args_is_help=True)  # fmt: skip
app.add_typer(keys_app, name="keys")


@keys_app.command("add")
def keys_add(
    key_id: Annotated[str, typer.Option("--id", help="Name of the key, e.g. the app using it.")],
    role: Annotated[str, typer.Option(help="officer, analyst or admin.")],
    file: Annotated[Path, typer.Option(help="Keys file.")] = Path("api_keys.json"),
) -> None:
    """Create an API key; it is printed once and only its hash is stored."""
    from serving.keys import add_key

    key = add_key(file, key_id, role)
    typer.echo(f"added {role} key {key_id!r} to {file}; keep it now, it is not stored:", err=True)
    typer.echo(key)


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port.")] = 8000,
    workers: Annotated[int, typer.Option(min=1, max=64, help="Worker processes.")] = 1,
) -> None:
    """Start the next-best-offer API (settings from RECOMMENDER_* variables or .env)."""
    import uvicorn

    from serving.settings import ServiceSettings

    ServiceSettings()  # validate before forking workers: a bad setting is one clear line
    uvicorn.run("serving.app:app_from_env", factory=True, host=host, port=port,
                workers=workers, log_level="info", access_log=False)  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    """Entry point: one line on stderr and exit status 2 for errors a user can fix.

    Usage errors are reported by Typer itself (exit status 2).
    """
    try:
        app(args=argv)
    except RecommenderError as exc:
        console.print(f"error: {exc}", markup=False, highlight=False, soft_wrap=True)
        sys.exit(EXIT_USER_ERROR)
    except ValidationError as exc:  # settings
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ())) or "settings"
        console.print(f"error: setting {where}: {first.get('msg')}", markup=False,
                      highlight=False, soft_wrap=True)  # fmt: skip
        sys.exit(EXIT_USER_ERROR)
    except Exception as exc:
        if os.environ.get("RECOMMENDER_DEBUG"):
            raise
        console.print(
            f"internal error: {type(exc).__name__}: {exc} "
            "(rerun with RECOMMENDER_DEBUG=1 for a traceback and report it)",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
        sys.exit(1)
