"""Sustained mixed load against `recommender serve --workers 2`, over real HTTP with wrk.

1. The maximum: wrk with 16 connections, no pause, the mixed script, 30 s.
2. The steady run: the same mix for `--minutes` (default 10) at about 70% of that maximum
   (each connection pauses between requests so that together they send 72% of it).

The mix: 70% recommendations (k=3, explain on), 5% batches of 10 clients, 15% feedback
on an offer a previous response made (accepted or declined), 10% client views. Reported:
requests/s, p50/p99 latency, errors (non-2xx and socket errors: must be 0), resident
memory of the server (master and workers) at the start and the end of the steady run
(growth must stay under 10%), and, after a graceful stop, that the event store holds one
audit row per decision served, one exposure row per offer served and one feedback row
per feedback recorded.

    python -m bench.bench_load [--customers 200000] [--minutes 10]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.bench_serving import free_port, prepare, start_server

LUA = r"""
local customers = @customers@
local pause = @pause@
local pending = {}
counts = {recs = 0, batch = 0, batch_items = 0, feedback = 0, recorded = 0,
                 views = 0, offers = 0, bad = 0}
local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  math.randomseed(os.time() + math.floor(os.clock() * 1000000) + @seed@)
end

local function id()
  return string.format("C%07d", math.random(1, customers))
end

function request()
  local r = math.random()
  local headers = {["Content-Type"] = "application/json", ["X-API-Key"] = "@key@"}
  if r < 0.15 and #pending > 0 then
    local item = table.remove(pending, math.random(#pending))
    local outcome = "declined"
    if math.random() < 0.3 then outcome = "accepted" end
    return wrk.format("POST", "/v1/feedback", headers, string.format(
      '{"request_id": "%s", "product_id": "%s", "outcome": "%s"}', item[1], item[2], outcome))
  elseif r < 0.25 then
    return wrk.format("GET", "/v1/customers/" .. id(), headers)
  elseif r < 0.30 then
    local items = {}
    local first = math.random(0, customers - 1)  -- ten different clients (one per batch)
    for i = 1, 10 do
      items[i] = string.format('{"customer_id": "C%07d", "k": 3, "explain": true}',
                               (first + i) % customers + 1)
    end
    return wrk.format("POST", "/v1/recommendations/batch", headers,
      '{"requests": [' .. table.concat(items, ",") .. ']}')
  end
  return wrk.format("POST", "/v1/recommendations", headers,
    string.format('{"customer_id": "%s", "k": 3, "explain": true}', id()))
end

local function count(body, pattern)
  local n = 0
  for _ in string.gmatch(body, pattern) do n = n + 1 end
  return n
end

function response(status, headers, body)
  if status ~= 200 then
    counts.bad = counts.bad + 1
    return
  end
  -- several connections share this state: tell the kind from the answer, not the ask
  local kind = "recs"
  if string.sub(body, 1, 11) == '{"results":' then kind = "batch"
  elseif string.sub(body, 1, 10) == '{"status":' then kind = "feedback"
  elseif string.find(body, '"holdings":', 1, true) then kind = "view" end
  if kind == "recs" then
    counts.recs = counts.recs + 1
    counts.offers = counts.offers + count(body, '"rank":')
    local rid = string.match(body, '"request_id":"(%x+)"')
    local pid = string.match(body, '"product_id":"([%w_]+)","name"')
    if rid and pid and #pending < 1000 then table.insert(pending, {rid, pid}) end
  elseif kind == "batch" then
    counts.batch = counts.batch + 1
    counts.batch_items = counts.batch_items + count(body, '"request_id":')
    counts.offers = counts.offers + count(body, '"rank":')
  elseif kind == "feedback" then
    counts.feedback = counts.feedback + 1
    counts.recorded = counts.recorded + count(body, '"status":"recorded"')
  elseif kind == "view" then
    counts.views = counts.views + 1
  end
end

function delay()
  return pause
end

function done(summary, latency, requests)
  local total = {}
  for _, t in ipairs(threads) do
    local c = t:get("counts")
    for k, v in pairs(c) do total[k] = (total[k] or 0) + v end
  end
  for k, v in pairs(total) do io.write(string.format("COUNT %s %d\n", k, v)) end
  io.write(string.format("P50 %f\nP99 %f\n", latency:percentile(50) / 1000,
                         latency:percentile(99) / 1000))
end
"""


def wrk(url: str, script: Path, seconds: int, connections: int = 16) -> dict[str, Any]:
    run = subprocess.run(
        ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "-s", str(script), url],
        capture_output=True, text=True,
    )  # fmt: skip
    if run.returncode != 0:
        raise RuntimeError(f"wrk failed: {run.stdout[-2000:]} {run.stderr[-2000:]}")
    out = run.stdout
    result: dict[str, Any] = {
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),  # type: ignore[union-attr]
        "p50_ms": float(re.search(r"P50 ([\d.]+)", out).group(1)),  # type: ignore[union-attr]
        "p99_ms": float(re.search(r"P99 ([\d.]+)", out).group(1)),  # type: ignore[union-attr]
        "requests": int(re.search(r"(\d+) requests in", out).group(1)),  # type: ignore[union-attr]
    }
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    result["socket_errors"] = sum(int(g) for g in errors.groups()) if errors else 0
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    result["non_2xx"] = int(non2xx.group(1)) if non2xx else 0
    result["counts"] = {k: int(v) for k, v in re.findall(r"COUNT (\w+) (\d+)", out)}
    return result


def script(root: Path, key: str, customers: int, pause_ms: int, seed: int) -> Path:
    path = root / f"mix-{pause_ms}.lua"
    text = LUA
    for name, value in (("customers", customers), ("pause", pause_ms), ("key", key),
                        ("seed", seed)):  # fmt: skip
        text = text.replace(f"@{name}@", str(value))
    path.write_text(text)
    return path


def tree_rss_mb(pid: int) -> float:
    """Resident memory of a process and its children (the uvicorn master and workers)."""
    total = 0
    for proc in [pid, *_children(pid)]:
        try:
            for line in Path(f"/proc/{proc}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except FileNotFoundError:
            continue
    return total / 1024


def _children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    kids = [int(p) for p in out.split()]
    return kids + [g for k in kids for g in _children(k)]


def main() -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--customers", type=int, default=200_000)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--share", type=float, default=0.72, help="of the maximum")
    args = parser.parse_args([] if __name__ != "__main__" else None)
    if shutil.which("wrk") is None:
        print("bench_load: wrk is not installed (apt-get install wrk); skipped")
        return {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        os.chdir(root)
        env, key = prepare(root, args.customers)
        events = Path(env["RECOMMENDER_EVENTS_URL"].removeprefix("sqlite:///"))
        port = free_port()
        server = start_server(env, port, workers=2, log=root / "serve.log")
        base = f"http://127.0.0.1:{port}"
        try:
            time.sleep(5)  # both workers up
            warm = wrk(base, script(root, key, args.customers, 0, 1), 5)
            runs_before = [warm["counts"]]
            peak = wrk(base, script(root, key, args.customers, 0, 2), 30)
            target = args.share * peak["rps"]
            pause = max(1, round(1000 * 16 / target - peak["p50_ms"]))
            for seed in (4, 5):  # latency falls with the load: calibrate the pause
                trial = wrk(base, script(root, key, args.customers, pause, seed), 15)
                runs_before.append(trial["counts"])
                latency = max(0.0, 1000 * 16 / trial["rps"] - pause)
                pause = max(1, round(1000 * 16 / target - latency))
            memory_start = tree_rss_mb(server.pid)
            steady = wrk(base, script(root, key, args.customers, pause, 3),
                         round(args.minutes * 60))  # fmt: skip
            memory_end = tree_rss_mb(server.pid)
        finally:
            server.send_signal(signal.SIGTERM)  # graceful: the queue is flushed
            server.wait(120)
        with sqlite3.connect(events) as db:
            decisions = db.execute("SELECT COUNT(*) FROM decisions").fetchone()[0]
            exposures = db.execute("SELECT COUNT(*) FROM offers").fetchone()[0]
            feedback = db.execute("SELECT COUNT(*) FROM feedback").fetchone()[0]
    runs = [*runs_before, peak["counts"], steady["counts"]]
    c = {k: sum(r.get(k, 0) for r in runs) for k in set().union(*runs)}
    served = c.get("recs", 0) + c.get("batch_items", 0)
    # wrk stops with up to 16 requests in flight per run: the server may have decided (and
    # recorded) them without wrk reading the answer; at most 10 decisions each (a batch)
    slack = len(runs) * 16 * 10
    ratio = steady["rps"] / peak["rps"]
    growth = memory_end / memory_start - 1
    errors = steady["non_2xx"] + steady["socket_errors"]
    checks = {
        "steady rate >= 70% of the maximum": ratio >= 0.70,
        "no errors": errors == 0,
        "memory growth < 10%": growth < 0.10,
        "one audit row per decision served": served <= decisions <= served + slack,
        "one exposure row per offer served": c.get("offers", 0)
        <= exposures
        <= c.get("offers", 0) + 3 * slack,
        "one feedback row per feedback recorded": c.get("recorded", 0)
        <= feedback
        <= c.get("recorded", 0) + len(runs) * 16,
    }
    print(f"load: {args.customers:,} clients, recommender serve --workers 2, wrk 16 connections")
    print(f"maximum: {peak['rps']:,.0f} requests/s (p50 {peak['p50_ms']:.1f} ms, "
          f"p99 {peak['p99_ms']:.1f} ms)")  # fmt: skip
    print(f"steady {args.minutes:g} min: {steady['rps']:,.0f} requests/s = {ratio:.0%} of the "
          f"maximum; p50 {steady['p50_ms']:.1f} ms, p99 {steady['p99_ms']:.1f} ms; "
          f"{steady['requests']:,} requests, {errors} errors")  # fmt: skip
    print(f"mix: {steady['counts']}")
    print(f"resident memory {memory_start:,.0f} MB -> {memory_end:,.0f} MB ({growth:+.1%})")
    print(f"event store (warm-up and maximum runs included): {decisions:,} decisions for "
          f"{served:,} served, {exposures:,} exposures for {c.get('offers', 0):,} offers, "
          f"{feedback:,} feedback rows for {c.get('recorded', 0):,} recorded")  # fmt: skip
    for name, ok in checks.items():
        print(f"{name}: {'OK' if ok else 'NOT MET'}")
    return {"peak": peak, "steady": steady, "checks": checks}


if __name__ == "__main__":
    main()
