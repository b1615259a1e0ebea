#!/usr/bin/env bash
# Smoke test of the built image (IMAGE, default nbo-api), run with buildah
# (--isolation chroot, the host's network), as the image's unprivileged user: generate a
# small bank, train, create keys, start the image's CMD, then from the host check /readyz
# (and its details with a key), one recommendation with reasons, its audit row in the
# SQLite event store, the HEALTHCHECK command, that the server does not run as root and
# that the image holds no compiler. Reports the image size and the time to ready.
# Volumes as in the README: the bank at /data/bank (its parent mounted here, because
# demo-data writes next to it and renames), the keys in /config, state in
# /var/lib/nbo (events.db, mlflow.db, the local model copy), host directories here.
set -euo pipefail
IMAGE="${IMAGE:-nbo-api}"
PORT="${SMOKE_PORT:-18765}"
CUSTOMERS="${SMOKE_CUSTOMERS:-2000}"
MONTHS="${SMOKE_MONTHS:-6}"
READY_TIMEOUT="${SMOKE_READY_TIMEOUT:-180}"

step() { printf '\n== %s\n' "$*"; }
fail() { echo "FAIL: $*" >&2; exit 1; }
# One entry of the image's (Docker-format) config: a JSON list as lines, else the value.
cfg() {
    buildah inspect --type image "$IMAGE" | python3 -c '
import json, sys
v = (json.load(sys.stdin)["Docker"]["config"] or {}).get(sys.argv[1])
if isinstance(v, dict):
    v = v.get("Test")
    assert v and v[0] == "CMD", v
    v = v[1:]
print("\n".join(v) if isinstance(v, list) else (v or ""))' "$1"
}

buildah inspect --type image "$IMAGE" >/dev/null 2>&1 || fail "no image $IMAGE (make image)"
RUN_USER="$(cfg User)"
[ -n "$RUN_USER" ] && [ "$RUN_USER" != root ] && [ "$RUN_USER" != 0 ] \
    || fail "the image's USER is '${RUN_USER:-unset}', not an unprivileged user"
work="$(mktemp -d /tmp/nbo-image-test.XXXXXX)"
ctr="nbo-image-test-$$"
server=""
if curl -s -o /dev/null "http://127.0.0.1:$PORT/healthz"; then
    fail "something already listens on port $PORT (SMOKE_PORT=... to choose another)"
fi
# The Python processes under the `buildah run` of the server (the server and its workers;
# buildah's own process is root on the host and is not in the image), into pids.
server_pids() {
    pids=()
    [ -n "$server" ] || return 0
    declare -A tree=(["$server"]=1)
    for _ in 1 2 3 4 5 6; do
        for p in /proc/[0-9]*; do
            ppid="$(awk '/^PPid:/ {print $2}' "$p/status" 2>/dev/null || true)"
            [ -n "$ppid" ] && [ -n "${tree[$ppid]:-}" ] && tree[${p#/proc/}]=1
        done
    done
    for pid in "${!tree[@]}"; do
        case "$(cat "/proc/$pid/comm" 2>/dev/null || true)" in
            python*|recommender*|uvicorn*) pids+=("$pid") ;;
        esac
    done
}
# SIGTERM to the server itself: buildah does not pass it on.
cleanup() {
    if [ -n "$server" ] && kill -0 "$server" 2>/dev/null; then
        server_pids
        [ "${#pids[@]}" -eq 0 ] || kill -TERM "${pids[@]}" 2>/dev/null || true
        sleep 1; kill -TERM "$server" 2>/dev/null || true
        for _ in $(seq 20); do kill -0 "$server" 2>/dev/null || break; sleep 0.5; done
    fi
    buildah rm "$ctr" >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT
buildah from --name "$ctr" "$IMAGE" >/dev/null
uid="$(buildah run --isolation chroot --user "$RUN_USER" "$ctr" -- id -u)"
[ "$uid" != 0 ] || fail "USER $RUN_USER is uid 0"
mkdir -p "$work/data" "$work/config" "$work/state"
chown -R "$uid" "$work"
run() {
    buildah run --isolation chroot --network host --user "$RUN_USER" \
        -v "$work/data:/data" -v "$work/config:/config" -v "$work/state:/var/lib/nbo" \
        -e "PORT=$PORT" "$ctr" -- "$@"
}

step "no compiler in the image"
run sh -c 'for c in gcc cc g++ c++ clang; do if command -v $c; then exit 1; fi; done' \
    || fail "a compiler is on the PATH"
echo "ok: gcc, cc, g++, c++, clang absent"

step "demo data ($CUSTOMERS customers, $MONTHS months) and training, as $RUN_USER (uid $uid)"
t0=$(date +%s)
run recommender demo-data /data/bank --customers "$CUSTOMERS" --months "$MONTHS" --seed 7 >/dev/null
run recommender train /data/bank --report /var/lib/nbo/report.json | tail -n 5
echo "data + training: $(( $(date +%s) - t0 )) s"
run recommender keys add --file /config/api_keys.json --id smoke-officer --role officer >"$work/officer.key"
key="$(tr -d '[:space:]' <"$work/officer.key")"
[ -n "$key" ] || fail "no key created"

step "serve: the image's CMD on port $PORT"
mapfile -t cmd < <(cfg Cmd)
echo "CMD: ${cmd[*]}"
t0=$(date +%s.%N)
(exec buildah run --isolation chroot --network host --user "$RUN_USER" \
    -v "$work/data:/data" -v "$work/config:/config" -v "$work/state:/var/lib/nbo" \
    -e "PORT=$PORT" "$ctr" -- "${cmd[@]}") >"$work/serve.log" 2>&1 &
server=$!
code=""
for _ in $(seq "$READY_TIMEOUT"); do
    code="$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$PORT/readyz" || true)"
    [ "$code" = 200 ] && break
    kill -0 "$server" 2>/dev/null || { cat "$work/serve.log"; fail "the server exited"; }
    sleep 1
done
[ "$code" = 200 ] || { tail -n 30 "$work/serve.log"; fail "/readyz is $code after ${READY_TIMEOUT}s"; }
ready_s="$(python3 -c "import time; print(f'{time.time() - $t0:.1f}')")"
echo "ok: /readyz 200 after ${ready_s} s"

step "/readyz details (with a key)"
curl -sf -H "X-API-Key: $key" "http://127.0.0.1:$PORT/readyz" >"$work/readyz.json"
python3 - "$work/readyz.json" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
assert d["ready"] is True, d
assert d["customers"] > 0 and d["event_store"]["up"], d
print("ok:", json.dumps({k: d.get(k) for k in ("ready", "model", "customers", "as_of", "degraded", "event_store")}))
PY

step "one recommendation with reasons"
customer="${SMOKE_CUSTOMER:-C0000001}"
curl -sf -X POST "http://127.0.0.1:$PORT/v1/recommendations" -H "X-API-Key: $key" \
    -H 'content-type: application/json' -d "{\"customer_id\": \"$customer\", \"k\": 3}" \
    >"$work/reco.json" || fail "POST /v1/recommendations failed"
request_id="$(python3 - "$work/reco.json" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
recs = d["recommendations"]
assert recs and all(r["reasons"] for r in recs), d
print(f"ok: model {d['model']['name']} v{d['model']['version']}", file=sys.stderr)
for r in recs:
    print(f"  {r['rank']}. {r['product_id']} p={r['probability']:.3f}: {r['reasons'][0]}", file=sys.stderr)
print(d["request_id"])
PY
)"

step "audit row in the event store"
found=""
for _ in $(seq 30); do
    found="$(python3 - "$work/state/events.db" "$request_id" <<'PY'
import sqlite3, sys
con = sqlite3.connect(f"file:{sys.argv[1]}?mode=ro", uri=True)
d = con.execute("select customer_id, key_id, k from decisions where request_id = ?", (sys.argv[2],)).fetchone()
n = con.execute("select count(*) from offers where request_id = ?", (sys.argv[2],)).fetchone()[0]
print(f"decision {d} with {n} offers" if d and n else "")
PY
)" || true
    [ -n "$found" ] && break
    sleep 1
done
[ -n "$found" ] || fail "no audit row for request $request_id in events.db"
echo "ok: $request_id: $found"

step "HEALTHCHECK command"
mapfile -t hc < <(cfg Healthcheck)
[ "${#hc[@]}" -gt 0 ] || fail "the image has no HEALTHCHECK (built in OCI format?)"
run "${hc[@]}" || fail "the HEALTHCHECK command failed"
echo "ok: HEALTHCHECK exits 0"

step "the server does not run as root"
server_pids
[ "${#pids[@]}" -gt 0 ] || fail "no server process found"
for p in "${pids[@]}"; do
    u="$(awk '/^Uid:/ {print $2}' "/proc/$p/status")"
    [ "$u" != 0 ] || fail "process $p runs as root: $(tr '\0' ' ' <"/proc/$p/cmdline")"
done
echo "ok: ${#pids[@]} server process(es) (WORKERS=$(cfg Env | sed -n 's/^WORKERS=//p')), uids: $(for p in "${pids[@]}"; do awk '/^Uid:/ {printf "%s ", $2}' "/proc/$p/status"; done)"

step "stop (SIGTERM to the server's main process, as docker stop does)"
main=""
for p in "${pids[@]}"; do
    pp="$(awk '/^PPid:/ {print $2}' "/proc/$p/status")"
    case " ${pids[*]} " in *" $pp "*) ;; *) main="$p" ;; esac
done
kill -TERM "$main"
for _ in $(seq 30); do kill -0 "$server" 2>/dev/null || break; sleep 0.5; done
kill -0 "$server" 2>/dev/null && fail "the server did not stop within 15 s of SIGTERM"
server=""
echo "ok: stopped"

size="$(buildah images --format '{{.Size}}' "$IMAGE" | head -n 1)"
printf '\nimage-test passed: image %s, size %s, ready in %s s\n' "$IMAGE" "$size" "$ready_s"
