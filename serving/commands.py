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
