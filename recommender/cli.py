"""The `recommender` command line. Errors a user can fix print one line and exit 2."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import pandas as pd
import typer
from pydantic import ValidationError
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from recommender.errors import ConfigError, RecommenderError, redact

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
    rehearsal: Annotated[
        bool,
        typer.Option(
            help="Also write the true probabilities of the month after the last snapshot "
            "(truth/next_month_probability.parquet), which `ab simulate` draws from."
        ),
    ] = False,
) -> None:
    """Generate a realistic synthetic bank (calibrated to Santander) with its ground truth."""
    from recommender.synthetic import generate, write_bank

    if fmt not in ("parquet", "csv"):
        raise ConfigError(f"--format {fmt!r}: use parquet or csv")
    _date(end_date, "--end-date")
    with progress_bar() as bar:
        task = bar.add_task("simulating months", total=months)
        bank = generate(customers, months, seed, end_date,
                        progress=lambda n: bar.advance(task, n), next_month=rehearsal)  # fmt: skip
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


def _register_edges() -> None:
    """Commands of the edges (MLflow, the service) attach themselves to `app`."""
    import serving.commands  # noqa: F401
    import training.commands  # noqa: F401


def main(argv: list[str] | None = None) -> None:
    """Entry point: one line on stderr and exit status 2 for errors a user can fix.

    Usage errors are reported by Typer itself (exit status 2).
    """
    try:
        _register_edges()
        app(args=argv)
    except RecommenderError as exc:
        console.print(f"error: {redact(str(exc))}", markup=False, highlight=False,
                      soft_wrap=True)  # fmt: skip
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
            f"internal error: {type(exc).__name__}: {redact(str(exc))} "
            "(rerun with RECOMMENDER_DEBUG=1 for a traceback and report it)",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
        sys.exit(1)
