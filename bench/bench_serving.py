"""Serving speed with 1,000,000 clients loaded, measured with wrk against the real server.

Reference measured in the same run: the trivial endpoint of the same app (`/healthz`).
Targets: `/v1/recommendations` (k=3, explain on, audit on) reaches >= 60% of the
trivial endpoint's throughput at 16 connections with p99 <= 2x its p99; at 1 connection
p99 < 5 ms; resident memory < 2 GB. Needs `wrk` (Debian package `wrk`).

    python -m bench.bench_serving [--customers 1000000] [--seconds 15]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from recommender.models.hybrid import HybridConfig
from recommender.synthetic import generate, write_bank
from serving.keys import add_key
from training.train import train

LUA = """
math.randomseed(os.time())
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["X-API-Key"] = "{key}"
request = function()
  local id = string.format("C%07d", math.random(1, {customers}))
  return wrk.format(nil, "/v1/recommendations",
    nil, '{{"customer_id": "' .. id .. '", "k": 3, "explain": true}}')
end
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wrk(url: str, connections: int, seconds: int, script: Path | None = None) -> dict[str, float]:
    command = [
        "wrk",
        f"-c{connections}",
        f"-t{min(connections, 2)}",
        f"-d{seconds}s",
        "--latency",
        url,
    ]
    if script:
        command[1:1] = ["-s", str(script)]
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)", out)
    assert p99 is not None, out
    scale = {"us": 1e-3, "ms": 1.0, "s": 1e3}[p99.group(2)]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {
        "rps": rate,
        "p99_ms": float(p99.group(1)) * scale,
        "non_2xx": float(errors.group(1)) if errors else 0.0,
    }


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def prepare(
    root: Path, customers: int, events_url: str | None = None
) -> tuple[dict[str, str], str]:
    """A model trained on a small bank, a bank of `customers` to serve, an officer key;
    returns the service's environment and the key."""
    write_bank(generate(50_000, 4, seed=2), root / "small")
    uri = f"sqlite:///{root}/mlflow.db"
    train(root / "small", config=HybridConfig(epochs=5), tracking_uri=uri)
    write_bank(generate(customers, 3, seed=1), root / "bank")
    key = add_key(root / "keys.json", "bench", "officer")
    env = {
        **os.environ,
        "RECOMMENDER_DATA_DIR": str(root / "bank"),
        "RECOMMENDER_TRACKING_URI": uri,
        "RECOMMENDER_API_KEYS_FILE": str(root / "keys.json"),
        "RECOMMENDER_EVENTS_URL": events_url or f"sqlite:///{root}/events.db",
        "RECOMMENDER_LOCAL_MODEL_DIR": str(root / "models"),
        "RECOMMENDER_SPILL_DIR": str(root / "spill"),
        "RECOMMENDER_POLL_SECONDS": "0",
        # Capacity is measured with one key at full speed: per-key limits would measure
        # the limits, not the service.
        "RECOMMENDER_RATE_LIMIT_PER_MINUTE": "0",
        "RECOMMENDER_RATE_LIMIT_CONCURRENCY": "0",
    }
    return env, key


def start_server(env: dict[str, str], port: int, workers: int = 1,
                 log: Path | None = None) -> subprocess.Popen[bytes]:  # fmt: skip
    """`recommender serve` in a subprocess, once `/readyz` answers (up to 15 minutes)."""
    server = subprocess.Popen(
        [sys.executable, "-m", "recommender", "serve", "--port", str(port),
         "--workers", str(workers)],
        env=env, stdout=subprocess.DEVNULL,
        stderr=log.open("wb") if log else subprocess.DEVNULL,
    )  # fmt: skip
    for _ in range(1800):
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    server.kill()
    raise RuntimeError("the server did not become ready")


def main() -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--customers", type=int, default=1_000_000)
    parser.add_argument("--seconds", type=int, default=15)
    parser.add_argument(
        "--events-url", default=None, help="event store (default: SQLite in the run's temp dir)"
    )
    args = parser.parse_args([] if __name__ != "__main__" else None)
    if shutil.which("wrk") is None:
        print("bench_serving: wrk is not installed (apt-get install wrk); skipped")
        return {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        os.chdir(root)
        env, key = prepare(root, args.customers, args.events_url)
        port = free_port()
        server = start_server(env, port)
        try:
            script = root / "offers.lua"
            script.write_text(LUA.format(key=key, customers=args.customers))
            base = f"http://127.0.0.1:{port}"
            memory_start = rss_mb(server.pid)
            wrk(f"{base}/healthz", 4, 3)  # warm-up
            wrk(base, 4, 3, script)
            trivial16 = wrk(f"{base}/healthz", 16, args.seconds)
            offers16 = wrk(base, 16, args.seconds, script)
            trivial1 = wrk(f"{base}/healthz", 1, args.seconds)
            offers1 = wrk(base, 1, args.seconds, script)
            memory_end = rss_mb(server.pid)
        finally:
            server.terminate()
            server.wait(30)
    ratio = offers16["rps"] / trivial16["rps"]
    p99_ratio = offers16["p99_ms"] / trivial16["p99_ms"]
    checks = {
        "throughput >= 60% of /healthz at 16 connections": ratio >= 0.6,
        "p99 <= 2x /healthz p99 at 16 connections": p99_ratio <= 2.0,
        "p99 < 5 ms at 1 connection": offers1["p99_ms"] < 5.0,
        "resident memory < 2 GB": memory_end < 2048,
        "no errors": offers16["non_2xx"] == 0 and offers1["non_2xx"] == 0,
    }
    print(f"serving: {args.customers:,} clients loaded; /v1/recommendations k=3 explain+audit")
    print("| endpoint | connections | requests/s | p99 ms |\n|---|---:|---:|---:|")
    for name, result, c in (
        ("/healthz", trivial16, 16),
        ("/v1/recommendations", offers16, 16),
        ("/healthz", trivial1, 1),
        ("/v1/recommendations", offers1, 1),
    ):
        print(f"| {name} | {c} | {result['rps']:,.0f} | {result['p99_ms']:.2f} |")
    print(
        f"throughput ratio {ratio:.2f}, p99 ratio {p99_ratio:.2f}; resident memory "
        f"{memory_start:,.0f} MB after start, {memory_end:,.0f} MB at the end"
    )
    for name, ok in checks.items():
        print(f"{name}: {'OK' if ok else 'NOT MET'}")
    return {
        "trivial16": trivial16,
        "offers16": offers16,
        "trivial1": trivial1,
        "offers1": offers1,
        "rss_mb": memory_end,
        "checks": checks,
    }


if __name__ == "__main__":
    main()
