"""`recommender train | promote | score | tune`: the MLflow side of the command line."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import Progress, TaskID

from recommender.cli import _date, app, print_report, progress_bar
from recommender.errors import redact


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
    typer.echo(f"MLflow run {outcome.run_id} at {redact(outcome.tracking_uri)}")
    typer.echo(f"registered {outcome.model_name} version {outcome.version} as @{outcome.alias}")
    typer.echo(f"see it: mlflow ui --backend-store-uri {redact(outcome.tracking_uri)}")


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
    rules: Annotated[bool, typer.Option(help="Apply the catalog's business rules.")] = True,
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
            rules,
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
