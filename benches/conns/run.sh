#!/usr/bin/env bash
# Memory per idle keep-alive connection: sessiongate against a plain nginx reverse proxy in
# front of the same upstream, on this machine, over loopback only. Not part of CI.
#
#   bash benches/conns/run.sh               # 10,000 / 50,000 / 100,000 connections
#   COUNTS="10000" bash benches/conns/run.sh
#
# What runs, all on 127.0.0.1 and stopped on exit:
# - upstream: benches/load's nginx (one worker, a 24-byte body on `/`).
# - nginx-plain: benches/load's nginx-plain with room for every connection and
#   keepalive_timeout 600s (nginx-proxy.conf.in here).
# - sessiongate: the release binary, threads = 1, memory store, RUST_LOG=warn,
#   keepalive_timeout_ms = 600000 (sessiongate.toml.in here).
# - client.py opens N connections, one `GET /` on each read to its end, holds them all idle,
#   and prints the server's VmRSS before and after: (after - before) / N is the memory per
#   idle keep-alive connection. For nginx the worker's VmRSS is read.
#
# Each count runs against a fresh server. A count needs a descriptor limit above it in each
# process (client, nginx worker, sessiongate): the script raises the soft limit to the hard
# one (and the hard one too where it may), and skips a count that still does not fit.

set -euo pipefail

COUNTS=${COUNTS:-"10000 50000 100000"}

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
LOAD="$ROOT/benches/load"

log() { printf '>> %s\n' "$*" >&2; }
die() { printf 'run.sh: %s\n' "$*" >&2; exit 1; }

NGINX=$(command -v nginx || echo /usr/sbin/nginx)
[ -x "$NGINX" ] || die "nginx is required (apt-get install nginx)"
command -v python3 >/dev/null 2>&1 || die "python3 is required"
command -v curl >/dev/null 2>&1 || die "curl is required"

# Descriptors: each process holds one end of every connection, plus upstream connections
# and slack.
max=0
for n in $COUNTS; do [ "$n" -gt "$max" ] && max=$n; done
want=$((max + 2000))
hard=$(ulimit -Hn)
if [ "$hard" != unlimited ] && [ "$hard" -lt "$want" ]; then
    ulimit -Hn "$want" 2>/dev/null || true
fi
ulimit -Sn "$(ulimit -Hn)"
NOFILE=$(ulimit -Sn)
log "descriptor limit: $NOFILE"

log "cargo build --release"
(cd "$ROOT" && cargo build --release --quiet --bin sessiongate)
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release/sessiongate"
[ -x "$BIN" ] || die "no binary at $BIN"

TMP=$(mktemp -d "${TMPDIR:-/tmp}/sessiongate-conns.XXXXXX")
PIDS=()

# stop_pid, cleanup (the EXIT trap), free_port and render.
source "$ROOT/benches/lib.sh"

wait_http() {
    local url=$1
    for _ in $(seq 100); do
        curl -s -o /dev/null --max-time 1 "$url" && return 0
        sleep 0.1
    done
    die "nothing answers on $url"
}

child_of() {
    local c
    for _ in $(seq 50); do
        c=$(pgrep -P "$1" | head -n 1)
        [ -n "$c" ] && { echo "$c"; return 0; }
        sleep 0.1
    done
    die "nginx $1 started no worker"
}


start_nginx() { # start_nginx NAME TEMPLATE KEY=VALUE... ; sets NGINX_MASTER, NGINX_WORKER
    local name=$1 tpl=$2
    shift 2
    render "$tpl" "$TMP/$name.conf" "TMP=$TMP" "$@"
    "$NGINX" -p "$TMP/" -e "$TMP/$name-error.log" -c "$TMP/$name.conf" >"$TMP/$name.out" 2>&1 &
    NGINX_MASTER=$!
    PIDS+=("$NGINX_MASTER")
    NGINX_WORKER=$(child_of "$NGINX_MASTER")
}

SECRET=$("$BIN" gen-secret)

free_port UPSTREAM_PORT
start_nginx upstream "$LOAD/upstream.conf.in" "UPSTREAM_PORT=$UPSTREAM_PORT"
wait_http "http://127.0.0.1:$UPSTREAM_PORT/"

RESULTS="$TMP/results.tsv"
for n in $COUNTS; do
    if [ $((n + 1000)) -gt "$NOFILE" ]; then
        log "skipping $n connections: the descriptor limit ($NOFILE) is too low"
        printf 'skipped\t%s\t-\t-\t-\n' "$n" >>"$RESULTS"
        continue
    fi
    # nginx-plain, fresh.
    free_port PROXY_PORT
    start_nginx "proxy-$n" "$HERE/nginx-proxy.conf.in" "UPSTREAM_PORT=$UPSTREAM_PORT" \
        "PROXY_PORT=$PROXY_PORT" "NOFILE=$NOFILE" "WORKER_CONNECTIONS=$((n + 500))"
    proxy_master=$NGINX_MASTER
    wait_http "http://127.0.0.1:$PROXY_PORT/"
    log "nginx-plain: $n idle connections"
    line=$(python3 "$HERE/client.py" "$PROXY_PORT" "$n" "$NGINX_WORKER") || die "client failed against nginx-plain"
    printf 'nginx-plain\t%s\n' "$line" >>"$RESULTS"
    stop_pid "$proxy_master"

    # sessiongate, fresh.
    free_port GATE_PORT
    free_port GATE_ADMIN
    render "$HERE/sessiongate.toml.in" "$TMP/gate-$n.toml" "PORT=$GATE_PORT" \
        "UPSTREAM_PORT=$UPSTREAM_PORT" "ADMIN_PORT=$GATE_ADMIN" "MAX_CONNECTIONS=$((n + 500))"
    RUST_LOG=warn SESSION_SECRET=$SECRET SESSION_UPSTREAM_SECRET=$SECRET \
        "$BIN" -c "$TMP/gate-$n.toml" >"$TMP/gate-$n.log" 2>&1 &
    gate=$!
    PIDS+=("$gate")
    wait_http "http://127.0.0.1:$GATE_ADMIN/healthz"
    log "sessiongate: $n idle connections"
    line=$(python3 "$HERE/client.py" "$GATE_PORT" "$n" "$gate") || die "client failed against sessiongate"
    printf 'sessiongate\t%s\n' "$line" >>"$RESULTS"
    stop_pid "$gate"
done

echo
REV=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
git -C "$ROOT" diff --quiet HEAD -- src Cargo.toml 2>/dev/null || REV="$REV+local changes"
echo "idle keep-alive connections, $(date -u +%Y-%m-%d), commit $REV, $(nproc) CPUs,"
echo "one GET / on each, then idle; VmRSS of the proxy process (nginx: its worker)."
echo
printf '%-12s %9s %14s %13s %15s\n' proxy conns 'VmRSS before' 'VmRSS after' 'bytes per conn'
while IFS=$'\t' read -r proxy conns before after per; do
    printf '%-12s %9s %11s kB %10s kB %15s\n' "$proxy" "$conns" "$before" "$after" "$per"
done <"$RESULTS"
