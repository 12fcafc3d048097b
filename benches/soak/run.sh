#!/usr/bin/env bash
# Soak test (not CI): sessiongate with a Redis store under mixed session traffic while
# Redis is killed and restarted every minute. Loopback only; everything it starts is
# stopped on exit.
#
#   bash benches/soak/run.sh [--minutes N] [--threads T] [--sessions-per-thread K] [--no-build]
#                            [--two-proxies [--local-cache N]]
#
# - builds the release binary (cargo build --release --bin sessiongate);
# - redis-server on a free 127.0.0.1 port, data dir in a temp dir, --appendonly yes
#   --appendfsync always, so every write Redis acknowledged survives a kill -9;
# - upstream.py (python3 http.server): /login sets {"user","n":0}, /update bumps n with
#   X-Session-Update, /logout destroys, / just echoes the session it saw;
# - sessiongate: [store] kind = "redis", timeout_ms = 300, on_error = "fail";
# - client.py: T threads x K sessions for N minutes (one request in flight per session),
#   checking that every acknowledged (200) update is visible to the next request;
# - every 60 s: kill -9 redis-server, wait 2 s, start it again on the same port and dir;
# - --two-proxies: two sessiongate processes on the one Redis, both with
#   store.local_cache = N (default 10000, 0 = off), and the client alternating its
#   requests between them, so every check also holds across proxies and their caches.
#
# Report: requests, results by status, sessions lost (must be 0), sessiongate RSS at
# start and end, and sessiongate's own metrics. Exit status 1 when a session was lost or
# resurrected, or a process died.

set -euo pipefail

MINUTES=10
THREADS=16
PER_THREAD=32
BUILD=1
TWO=0
LOCAL_CACHE=10000
while [ $# -gt 0 ]; do
    case "$1" in
        --minutes) MINUTES=$2; shift 2 ;;
        --threads) THREADS=$2; shift 2 ;;
        --sessions-per-thread) PER_THREAD=$2; shift 2 ;;
        --no-build) BUILD=0; shift ;;
        --two-proxies) TWO=1; shift ;;
        --local-cache) LOCAL_CACHE=$2; shift 2 ;;
        -h|--help) sed -n '2,26p' "$0"; exit 0 ;;
        *) echo "run.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
[[ "$MINUTES" =~ ^[0-9]+(\.[0-9]+)?$ ]] || { echo "run.sh: --minutes takes a number" >&2; exit 2; }

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
log() { printf '>> %s %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { printf 'run.sh: %s\n' "$*" >&2; exit 1; }

for tool in redis-server redis-cli python3 curl; do
    command -v "$tool" >/dev/null 2>&1 || die "$tool is required (apt-get install redis-server python3 curl)"
done

if [ "$BUILD" = 1 ]; then
    log "cargo build --release --bin sessiongate"
    (cd "$ROOT" && cargo build --release --quiet --bin sessiongate)
fi
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release/sessiongate"
[ -x "$BIN" ] || die "no binary at $BIN"

# --- process bookkeeping ------------------------------------------------------------------

TMP=$(mktemp -d "${TMPDIR:-/tmp}/sessiongate-soak.XXXXXX")
REDIS_PID=""
UP_PID=""
GATE_PID=""
GATE2_PID=""
LOOP_PID=""
CLIENT_PID=""

stop_pid() {  # stop_pid PID [SIGNAL]: signal, wait up to 5 s, then SIGKILL.
    local pid=$1 sig=${2:-TERM} i
    [ -n "$pid" ] || return 0
    kill -"$sig" "$pid" 2>/dev/null || return 0
    for i in $(seq 50); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
}

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    stop_pid "$CLIENT_PID"
    stop_pid "$LOOP_PID"
    stop_pid "$GATE_PID"
    stop_pid "$GATE2_PID"
    stop_pid "$UP_PID"
    [ -f "$TMP/redis.pid" ] && stop_pid "$(cat "$TMP/redis.pid")"
    stop_pid "$REDIS_PID"
    if [ "${KEEP_TMP:-0}" = 1 ]; then log "kept $TMP"; else rm -rf "$TMP"; fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

wait_for() {  # wait_for SECONDS WHAT CMD...: poll CMD until it succeeds.
    local deadline=$(( $(date +%s) + $1 )) what=$2
    shift 2
    until "$@" >/dev/null 2>&1; do
        [ "$(date +%s)" -lt "$deadline" ] || die "timed out waiting for $what"
        sleep 0.1
    done
}

rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }

REDIS_PORT=$(free_port)
UP_PORT=$(free_port)
GATE_PORT=$(free_port)
ADMIN_PORT=$(free_port)
GATE2_PORT=$(free_port)
ADMIN2_PORT=$(free_port)
mkdir -p "$TMP/redis"

start_redis() {
    # The pid of the background job is redis-server itself (no shell in between).
    redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --protected-mode yes \
        --dir "$TMP/redis" --appendonly yes --appendfsync always --save "" \
        --daemonize no --logfile "$TMP/redis.log" &
    echo $! > "$TMP/redis.pid"
    # redis-cli exits 0 on error replies too (LOADING while the AOF is replayed).
    wait_for 20 "redis-server on $REDIS_PORT" redis_ready
}

redis_ready() { [ "$(redis-cli -p "$REDIS_PORT" ping 2>/dev/null)" = PONG ]; }

SECRET=$(python3 -c 'import secrets; print(secrets.token_urlsafe(48))')
UPSTREAM_SECRET=$(python3 -c 'import secrets; print(secrets.token_urlsafe(48))')

log "redis-server on 127.0.0.1:$REDIS_PORT (appendonly, appendfsync always)"
start_redis
REDIS_PID=$(cat "$TMP/redis.pid")

log "upstream on 127.0.0.1:$UP_PORT"
SESSION_UPSTREAM_SECRET=$UPSTREAM_SECRET python3 "$HERE/upstream.py" "$UP_PORT" \
    > "$TMP/upstream.log" 2>&1 &
UP_PID=$!
wait_for 20 "upstream" curl -sf "http://127.0.0.1:$UP_PORT/"

cat > "$TMP/soak.toml" <<TOML
[server]
listen = "127.0.0.1:$GATE_PORT"
upstream = "http://127.0.0.1:$UP_PORT"
admin_listen = "127.0.0.1:$ADMIN_PORT"
threads = 2
upstream_timeout_ms = 5000

[cookie]
secure = false

[store]
kind = "redis"
url = "redis://127.0.0.1:$REDIS_PORT"
timeout_ms = 300
on_error = "fail"
TOML
if [ "$TWO" = 1 ]; then
    echo "local_cache = $LOCAL_CACHE" >> "$TMP/soak.toml"
    sed -e "s/127.0.0.1:$GATE_PORT/127.0.0.1:$GATE2_PORT/" \
        -e "s/127.0.0.1:$ADMIN_PORT/127.0.0.1:$ADMIN2_PORT/" "$TMP/soak.toml" > "$TMP/soak2.toml"
fi

log "sessiongate on 127.0.0.1:$GATE_PORT (admin $ADMIN_PORT)"
SESSION_SECRET=$SECRET SESSION_UPSTREAM_SECRET=$UPSTREAM_SECRET RUST_LOG=warn NO_COLOR=1 \
    "$BIN" -c "$TMP/soak.toml" > "$TMP/sessiongate.log" 2>&1 &
GATE_PID=$!
wait_for 20 "sessiongate /readyz" curl -sf "http://127.0.0.1:$ADMIN_PORT/readyz"
RSS_START=$(rss_kb "$GATE_PID")
CLIENT_PORTS=(--port "$GATE_PORT")
if [ "$TWO" = 1 ]; then
    log "second sessiongate on 127.0.0.1:$GATE2_PORT (admin $ADMIN2_PORT); local_cache = $LOCAL_CACHE on both"
    SESSION_SECRET=$SECRET SESSION_UPSTREAM_SECRET=$UPSTREAM_SECRET RUST_LOG=warn NO_COLOR=1 \
        "$BIN" -c "$TMP/soak2.toml" > "$TMP/sessiongate2.log" 2>&1 &
    GATE2_PID=$!
    wait_for 20 "second sessiongate /readyz" curl -sf "http://127.0.0.1:$ADMIN2_PORT/readyz"
    CLIENT_PORTS+=(--port2 "$GATE2_PORT")
fi

SECONDS_TOTAL=$(python3 -c "print(int(float('$MINUTES') * 60))")
END=$(( $(date +%s) + SECONDS_TOTAL ))

# Redis restarts: every 60 s, kill -9 and start again on the same port and data dir.
restart_loop() {
    local n=0 pid
    while :; do
        sleep 60 &
        wait $!
        [ "$(date +%s)" -lt $(( END - 5 )) ] || break
        n=$((n + 1))
        pid=$(cat "$TMP/redis.pid")
        echo "$(date +%H:%M:%S) restart $n: kill -9 $pid" >> "$TMP/restarts.log"
        kill -KILL "$pid" 2>/dev/null || true
        while kill -0 "$pid" 2>/dev/null; do sleep 0.05; done
        sleep 2
        start_redis
        echo "$(date +%H:%M:%S) restart $n: up again ($(redis-cli -p "$REDIS_PORT" dbsize) keys)" >> "$TMP/restarts.log"
    done
}
restart_loop 2>> "$TMP/restarts.log" &
LOOP_PID=$!

log "client: $THREADS threads x $PER_THREAD sessions for $MINUTES min; Redis restarts every 60 s"
RSS_SAMPLES="$RSS_START"
python3 "$HERE/client.py" "${CLIENT_PORTS[@]}" --seconds "$SECONDS_TOTAL" \
    --threads "$THREADS" --sessions-per-thread "$PER_THREAD" --out "$TMP/client.json" &
CLIENT_PID=$!
while kill -0 "$CLIENT_PID" 2>/dev/null; do
    [ "$(date +%s)" -lt $(( END + 90 )) ] || die "client did not finish in time"
    sleep 5
    if [ $(( ($(date +%s) - END + SECONDS_TOTAL) % 60 )) -lt 5 ]; then
        RSS_SAMPLES="$RSS_SAMPLES $(rss_kb "$GATE_PID")"
    fi
done
wait "$CLIENT_PID" || die "client failed"
CLIENT_PID=""
stop_pid "$LOOP_PID"; LOOP_PID=""

ALIVE=yes
kill -0 "$GATE_PID" 2>/dev/null || ALIVE=no
if [ "$TWO" = 1 ]; then
    kill -0 "$GATE2_PID" 2>/dev/null || ALIVE=no
    curl -sf "http://127.0.0.1:$ADMIN2_PORT/metrics" > "$TMP/metrics2.txt" || true
fi
RSS_END=$(rss_kb "$GATE_PID")
sleep 5
RSS_IDLE=$(rss_kb "$GATE_PID")
curl -sf "http://127.0.0.1:$ADMIN_PORT/metrics" > "$TMP/metrics.txt" || true
HEALTHZ=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$ADMIN_PORT/healthz" || true)
KEYS=$(redis-cli -p "$REDIS_PORT" dbsize 2>/dev/null || echo "?")
RESTARTS=$(grep -c 'restart .*: kill -9' "$TMP/restarts.log" 2>/dev/null || true)

python3 - "$TMP/client.json" <<PY
import json, sys
r = json.load(open(sys.argv[1]))
c = r["checks"]
print()
print("==== sessiongate soak report ====")
print(f"duration            {r['seconds']} s ($MINUTES min requested), {r['sessions']} sessions, $THREADS client threads")
print(f"redis restarts      ${RESTARTS:-0} (kill -9, 2 s down, appendfsync always)")
print(f"total requests      {r['requests']}  ({r['requests'] / max(r['seconds'], 1):.0f}/s)")
print(f"by status           {r['by_status']}")
print(f"acknowledged checks {c.get('verified', 0)} verified")
print(f"sessions lost       {c.get('lost', 0)}")
print(f"resurrected         {c.get('resurrected', 0)}")
print(f"applied, not acked  {c.get('applied_unack', 0)} (write landed, answer was 5xx/timeout: allowed)")
print(f"unexpected          {c.get('unexpected', 0)}")
for e in r["examples"]:
    print("  ", e)
print(f"sessiongate RSS     start $RSS_START kB, end $RSS_END kB, 5 s idle after $RSS_IDLE kB")
print(f"RSS per minute (kB) $RSS_SAMPLES")
print(f"sessiongate alive   $ALIVE, /healthz $HEALTHZ; redis keys at end $KEYS")
PY
echo "sessiongate metrics:"
grep -E '^sessiongate_(requests_total|session_lookups_total|sessions_created_total|sessions_destroyed_total|upstream_errors_total)' \
    "$TMP/metrics.txt" | sed 's/^/  /' || true
if [ "$TWO" = 1 ]; then
    for m in "$TMP/metrics.txt" "$TMP/metrics2.txt"; do
        echo "$(basename "$m" .txt) read path:"
        grep -E '^sessiongate_(local_cache_[a-z]+_total|session_touches_total)' "$m" | sed 's/^/  /' || true
    done
fi
echo "sessiongate log: $(wc -l < "$TMP/sessiongate.log") lines at RUST_LOG=warn; most frequent:"
sed -E 's/\x1b\[[0-9;]*m//g; s/^[^ ]+ +//; s/[0-9]+(\.[0-9]+)?(ms|s|µs)?/N/g' "$TMP/sessiongate.log" | cut -c1-160 \
    | sort | uniq -c | sort -rn | head -8 | sed 's/^/  /'
echo "redis restarts:"
grep '^[0-9].* restart ' "$TMP/restarts.log" 2>/dev/null | sed 's/^/  /' || true

LOST=$(python3 -c "import json; c = json.load(open('$TMP/client.json'))['checks']; print(c.get('lost', 0) + c.get('resurrected', 0))")
[ "$ALIVE" = yes ] || die "sessiongate died (see the log above)"
[ "$LOST" = 0 ] || die "$LOST sessions lost or resurrected"
