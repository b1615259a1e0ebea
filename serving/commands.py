"""`recommender keys add | serve`: the service side of the command line."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from recommender.cli import app

keys_app = typer.Typer(help="API keys of the service (stored as SHA-256 hashes).",
                       no_args_is_help=True)  # fmt: skip
app.add_typer(keys_app, name="keys")


@keys_app.command("add")
def keys_add(
    key_id: Annotated[str, typer.Option("--id", help="Name of the key, e.g. the app using it.")],
    role: Annotated[str, typer.Option(help="officer, analyst or admin.")],
    file: Annotated[Path, typer.Option(help="Keys file.")] = Path("api_keys.json"),
    channel: Annotated[
        list[str] | None,
        typer.Option(help="A channel the key may ask for (repeat it); default: every channel."),
    ] = None,
    no_cold_start: Annotated[
        bool,
        typer.Option(
            "--no-cold-start", help="The key may not send cold-start requests (`customer`)."
        ),
    ] = False,
) -> None:
    """Create an API key; it is printed once and only its hash is stored (the file is
    written atomically, readable by its owner only)."""
    from serving.keys import add_key

    key = add_key(file, key_id, role, channels=channel or None, cold_start=not no_cold_start)
    limits = (f", channels {', '.join(sorted(set(channel)))}" if channel else "") + (
        ", no cold starts" if no_cold_start else "")  # fmt: skip
    typer.echo(f"added {role} key {key_id!r}{limits} to {file}; keep it now, it is not stored:",
               err=True)  # fmt: skip
    typer.echo(key)


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port.")] = 8000,
    workers: Annotated[int, typer.Option(min=1, max=64, help="Worker processes.")] = 1,
    limit_concurrency: Annotated[
        int,
        typer.Option(
            min=1,
            help="Requests in flight per worker; beyond, 503. /healthz and /readyz are "
            "exempt, and idle connections take no slot.",
        ),
    ] = 256,
    limit_connections: Annotated[
        int,
        typer.Option(
            min=1,
            help="Open connections per worker; beyond, new ones are closed at once. Cap "
            "connections per client in the reverse proxy.",
        ),
    ] = 1024,
    header_timeout: Annotated[
        float,
        typer.Option(
            min=0.1,
            help="Seconds a client has to send a request's headers (from connecting, or "
            "from the request's first byte on a kept-alive connection); beyond, 408 and "
            "the connection is closed.",
        ),
    ] = 10.0,
    body_timeout: Annotated[
        float,
        typer.Option(
            min=0.1,
            help="Seconds a client has to send a request's body once its headers are in; "
            "beyond, 408 and closed.",
        ),
    ] = 30.0,
    max_header_bytes: Annotated[
        int,
        typer.Option(min=1024, help="Request line and headers, in bytes; beyond, 431 and closed."),
    ] = 32 * 1024,
    max_headers: Annotated[
        int, typer.Option(min=1, help="Header fields per request; beyond, 431 and closed.")
    ] = 100,
    keep_alive: Annotated[
        int, typer.Option(min=1, help="Seconds an idle kept-alive connection stays open.")
    ] = 5,
) -> None:
    """Start the next-best-offer API (settings from RECOMMENDER_* variables or .env)."""
    from serving.keys import read_keys
    from serving.settings import ServiceSettings
    from serving.transport import EdgeLimits, run

    # validate before forking workers: a bad setting or keys file is one clear line
    read_keys(ServiceSettings().api_keys_file)
    limits = EdgeLimits(
        max_header_bytes=max_header_bytes,
        max_headers=max_headers,
        header_timeout=header_timeout,
        body_timeout=body_timeout,
        max_requests=limit_concurrency,
        max_connections=limit_connections,
    )
    run("serving.app:app_from_env", host=host, port=port, workers=workers, limits=limits,
        timeout_keep_alive=keep_alive)  # fmt: skip


ab_app = typer.Typer(help="A/B experiments: readouts and rehearsals.", no_args_is_help=True)
app.add_typer(ab_app, name="ab")


def _settings_default(name: str) -> str:
    """A service setting (RECOMMENDER_* or .env), so the CLI reads what the service uses."""
    from serving.settings import ServiceSettings

    return str(getattr(ServiceSettings(), name))


@ab_app.command("report")
def ab_report(
    experiment: Annotated[str, typer.Option(help="Experiment name.")],
    data: Annotated[
        Path | None,
        typer.Option(
            help="Data directory with holdings snapshots after the offers; "
            "conversions are then derived from them too."
        ),
    ] = None,
    window_days: Annotated[
        int, typer.Option(min=1, max=365, help="Days after an offer a conversion counts.")
    ] = 30,
    events: Annotated[
        str | None, typer.Option(help="Event store URL (default: the service's).")
    ] = None,
    out: Annotated[Path, typer.Option(help="Where the JSON and PNG go.")] = Path("ab-reports"),
    tracking_uri: Annotated[str | None, typer.Option(help="MLflow tracking URI.")] = None,
    no_mlflow: Annotated[bool, typer.Option("--no-mlflow", help="Do not log to MLflow.")] = False,
) -> None:
    """Per variant: clients, exposures, acceptance, conversions with 95% intervals,
    uplift vs control with p-value, and a sample-ratio check; JSON, PNG and an MLflow run."""
    from recommender.readout import render
    from training.abreport import experiment_report

    report = experiment_report(experiment, events or _settings_default("events_url"), data,
                               window_days, out, tracking_uri, not no_mlflow)  # fmt: skip
    typer.echo(render(report))
    files = report["files"]
    run = report.get("mlflow_run_id")
    typer.echo(
        f"\nwrote {files['json']} and {files['png']}" + (f"; MLflow run {run}" if run else "")
    )


@ab_app.command("simulate")
def ab_simulate(
    experiment: Annotated[str, typer.Option(help="A running experiment (rehearse a fresh one).")],
    customers: Annotated[int, typer.Option(min=10, help="Clients to send.")] = 10_000,
    seed: Annotated[int, typer.Option(help="Random seed (clients and their decisions).")] = 7,
    url: Annotated[str, typer.Option(help="The running service.")] = "http://127.0.0.1:8000",
    key_file: Annotated[Path, typer.Option(help="File holding an officer API key.")] = Path(
        "demo/officer.key"
    ),
    data: Annotated[
        Path | None, typer.Option(help="The bank the service serves (generated with --rehearsal).")
    ] = None,
    events: Annotated[
        str | None, typer.Option(help="Event store URL (default: the service's).")
    ] = None,
    out: Annotated[Path, typer.Option(help="Where outcomes and the report go.")] = Path(
        "ab-reports"
    ),
    lift: Annotated[
        float, typer.Option(min=1.0, help="How much an offer raises the chance.")
    ] = 3.0,
    k: Annotated[int, typer.Option(min=1, max=24, help="Offers per client.")] = 3,
    window_days: Annotated[int, typer.Option(min=1, max=365)] = 30,
    tracking_uri: Annotated[str | None, typer.Option(help="MLflow tracking URI.")] = None,
) -> None:
    """Drive the running service with synthetic clients whose decisions follow the
    generator's true probabilities, then print the experiment's report."""
    from recommender.cli import progress_bar
    from recommender.errors import ConfigError
    from recommender.readout import render
    from serving.events import EventStore
    from serving.rehearsal import Behaviour, simulate
    from training.abreport import experiment_report

    events_url = events or _settings_default("events_url")
    store = EventStore(events_url)
    try:
        found = store.experiment(experiment)
    finally:
        store.close()
    if found is None:
        raise ConfigError(f"no experiment named {experiment!r} in {events_url}; create it with "
                          "POST /v1/experiments (admin key)")  # fmt: skip
    if not key_file.exists():
        raise ConfigError(f"{key_file}: no such key file; create an officer key with "
                          "`recommender keys add --role officer` and pass --key-file")  # fmt: skip
    data_dir = data or Path(_settings_default("data_dir"))
    outcome_dir = out / f"{experiment}-outcomes"
    with progress_bar() as bar:
        task = bar.add_task("simulating clients", total=customers)
        counts = simulate(url, key_file.read_text().strip(), data_dir, found.channel, customers,
                          seed, outcome_dir, behaviour=Behaviour(lift=lift), k=k,
                          progress=lambda n: bar.advance(task, n))  # fmt: skip
    typer.echo(
        f"sent {counts['requests']:,} clients: {counts['offers']:,} offers, "
        f"{counts['accepted']:,} accepted, {counts['converted']:,} converted; outcome "
        f"snapshot {counts['outcome_snapshot']} in {outcome_dir}"
    )
    report = experiment_report(experiment, events_url, outcome_dir, window_days, out, tracking_uri)
    typer.echo(render(report))
    typer.echo(f"\nwrote {report['files']['json']} and {report['files']['png']}")
