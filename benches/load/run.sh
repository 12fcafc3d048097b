#!/usr/bin/env bash
# Load benchmark: sessiongate against a plain nginx reverse proxy in front of the same
# upstream, on this machine, over loopback only. Not part of CI.
#
#   bash benches/load/run.sh
#
# Knobs (environment): ROUNDS=3 DURATION=10 (seconds per run) CONNS=32 WARMUP=2
# PRELOAD=1000000 (sessions for the RSS test; 0 skips it) REDIS=1 (0 skips the Redis row)
# BIN= (the sessiongate binary; default: the release build of this checkout)
# SCENARIOS="S1 S2 S3" (the memory-store rows against nginx-plain; "" runs only the Redis rows)
# BASELINE_BIN= (another sessiongate binary: adds an S2 Redis row "baseline+redis" run with it,
# interleaved with this build's, and prints the CPU difference per request).
# REDIS_LOCAL_CACHE=0 (N > 0 adds an S2 Redis row, sessiongate+redis-cache, with
# store.local_cache = N, interleaved with the other Redis rows; the other rows are unchanged).
# THREADS=1 (server.threads of every sessiongate) RUNTIME=per-core (server.runtime; several,
# e.g. RUNTIME="per-core work-stealing": the first is the "sessiongate" rows', each other adds
# rows "rt-<runtime>" in every scenario and an S2 Redis row "sessiongate+redis@<runtime>",
# interleaved with the others, with the paired CPU difference to "sessiongate"; BASELINE_BIN
# runs with its own default runtime). SERVER_CPU=0 LOAD_CPU=1 (taskset lists: with THREADS > 1,
# e.g. SERVER_CPU=0,1 lets the threads run on two CPUs, sharing them with wrk).
# REDIS_CPU= (taskset list of redis-server; default SERVER_CPU, the proxy's CPU. REDIS_CPU=1
# puts it beside wrk instead, as Redis on a host of its own takes nothing from the proxy's.)
# RATE= (requests per second: every measured run is `oha -q RATE --latency-correction`
# with CONNS connections instead of wrk at saturation, so CPU per request and p99 compare
# at one fixed load; needs oha, `cargo install oha`. Warm-up and preload still use wrk.)
#
# What runs, all on 127.0.0.1 and stopped on exit:
# - upstream: nginx, one worker; `/` and `/login` (which answers `X-Session-Set:
#   {"userId":1}`) return a 24-byte body.
# - nginx-plain: nginx, one worker, proxy_pass with proxy_http_version 1.1, a keep-alive
#   upstream pool, X-Forwarded-*, and access_log off.
# - sessiongate: the release binary, threads = THREADS (1), memory store, RUST_LOG=warn, so it
#   writes no access log either (the same choice as nginx-plain).
# - wrk -t1 -cCONNS --latency (or oha, with RATE) is pinned to CPU 1; every server is pinned
#   to CPU 0 (redis-server too, unless REDIS_CPU).
#
# Scenarios: S1 anonymous GET /; S2 GET / with a valid session cookie (nginx-plain gets the
# same Cookie header and passes it on); S3 GET /login, a new session on every request
# (through nginx-plain the upstream's header just passes through). An S2 row "sg-required":
# sessiongate with `/` behind a `session = "required"` route (and CSRF on, the default); an
# S2 row "sg-users": sessiongate with `session.user_field = "userId"` (SPEC §13); and
# with BASELINE_BIN, "baseline" rows of that binary in every scenario; the report gives each
# one's paired CPU difference. They run interleaved,
# ROUNDS times, and the table shows the median of the rounds. CPU µs/req is the proxy
# process's utime+stime delta (/proc/PID/stat) over the requests wrk completed, 'user' its
# utime part; the upstream's CPU is not included (it is the same work for both proxies).
#
# Then the memory test: a fresh sessiongate, S2 with 1,000 sessions in the store, then
# preloaded (through /login-100b, ~100 bytes of data each) to PRELOAD sessions: VmRSS
# and S2 again. And, when redis-server is installed, an S2 row with `[store] kind = "redis"`
# (CPU there is sessiongate + redis-server), run round by round with "sessiongate+memory",
# the same build on the memory store, which each Redis row's req/s is compared with.

# The figures of the last measured run, and what the profile says about them, are in
# benches/load/README.md. With both servers on CPU 0, req/s is roughly 1 / (proxy CPU +
# upstream CPU), so the req/s ratio understates the proxy's own CPU ratio; CPU us/req is
# the steadier figure on a machine shared with other work.

set -euo pipefail

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10}
CONNS=${CONNS:-32}
WARMUP=${WARMUP:-2}
PRELOAD=${PRELOAD:-1000000}
REDIS=${REDIS:-1}
SCENARIOS=${SCENARIOS-S1 S2 S3}
REDIS_LOCAL_CACHE=${REDIS_LOCAL_CACHE:-0}
[[ "$REDIS_LOCAL_CACHE" =~ ^[0-9]+$ ]] || { echo "run.sh: REDIS_LOCAL_CACHE takes a number" >&2; exit 2; }
THREADS=${THREADS:-1}
[[ "$THREADS" =~ ^[0-9]+$ ]] || { echo "run.sh: THREADS takes a number" >&2; exit 2; }
read -r -a RUNTIMES <<<"${RUNTIME:-per-core}"
[ ${#RUNTIMES[@]} -gt 0 ] || { echo "run.sh: RUNTIME takes per-core and/or work-stealing" >&2; exit 2; }
for r in "${RUNTIMES[@]}"; do
    case $r in per-core | work-stealing) ;; *) echo "run.sh: RUNTIME takes per-core and/or work-stealing, not $r" >&2; exit 2 ;; esac
done
SERVER_CPU=${SERVER_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
REDIS_CPU=${REDIS_CPU:-$SERVER_CPU}
RATE=${RATE:-}
[[ "$RATE" =~ ^[0-9]*$ ]] || { echo "run.sh: RATE takes a number of requests per second" >&2; exit 2; }

LOAD_DESC="wrk -t1 -c$CONNS"
[ -z "$RATE" ] || LOAD_DESC="oha -c$CONNS at a fixed $RATE req/s (latency corrected)"

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)

log() { printf '>> %s\n' "$*" >&2; }
die() { printf 'run.sh: %s\n' "$*" >&2; exit 1; }

# --- tools -----------------------------------------------------------------------------

need_apt=()
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need_apt+=(nginx)
command -v wrk >/dev/null 2>&1 || need_apt+=(wrk)
command -v curl >/dev/null 2>&1 || need_apt+=(curl)
if [ ${#need_apt[@]} -gt 0 ]; then
    log "installing ${need_apt[*]} with apt-get"
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO=sudo
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
command -v taskset >/dev/null 2>&1 || die "taskset (util-linux) is required"
[ -z "$RATE" ] || command -v oha >/dev/null 2>&1 || die "RATE needs oha (cargo install oha)"
[ "$(nproc)" -ge 2 ] || die "needs at least 2 CPUs (servers on CPU $SERVER_CPU, wrk on CPU $LOAD_CPU)"
CLK_TCK=$(getconf CLK_TCK)

log "cargo build --release"
(cd "$ROOT" && cargo build --release --quiet)
BIN="${BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release/sessiongate}"
[ -x "$BIN" ] || die "no binary at $BIN"

# --- process bookkeeping ---------------------------------------------------------------

TMP=$(mktemp -d "${TMPDIR:-/tmp}/sessiongate-load.XXXXXX")
PIDS=()

# stop_pid, cleanup (the EXIT trap), free_port and render.
source "$ROOT/benches/lib.sh"

# Waits (bounded) until http://127.0.0.1:PORT/PATH answers.
wait_http() {
    local port=$1 path=${2:-/}
    for _ in $(seq 100); do
        curl -s -o /dev/null --max-time 1 "http://127.0.0.1:$port$path" && return 0
        sleep 0.1
    done
    die "nothing answers on 127.0.0.1:$port"
}

# The only child of PID (nginx's worker), waiting for it to exist.
child_of() {
    local c
    for _ in $(seq 50); do
        c=$(cat "/proc/$1/task/$1/children" 2>/dev/null | awk '{print $1}')
        [ -n "$c" ] || c=$(pgrep -P "$1" | head -n 1)
        [ -n "$c" ] && { echo "$c"; return 0; }
        sleep 0.1
    done
    die "nginx $1 started no worker"
}


start_nginx() { # start_nginx NAME TEMPLATE KEY=VALUE... ; sets NGINX_MASTER, NGINX_WORKER
    local name=$1 tpl=$2
    shift 2
    render "$tpl" "$TMP/$name.conf" "TMP=$TMP" "$@"
    taskset -c "$SERVER_CPU" "$NGINX" -p "$TMP/" -e "$TMP/$name-error.log" -c "$TMP/$name.conf" \
        >"$TMP/$name.out" 2>&1 &
    NGINX_MASTER=$!
    PIDS+=("$NGINX_MASTER")
    NGINX_WORKER=$(child_of "$NGINX_MASTER")
}

SECRET=$("$BIN" gen-secret)
UPSTREAM_SECRET=$("$BIN" gen-secret)

# start_gate NAME PORT ADMIN_PORT STORE_LINES (\n between lines) [BINARY] [RUNTIME]; sets
# GATE_PID. RUNTIME defaults to the first of $RUNTIME; "" leaves server.runtime unset (the
# binary's default, for BASELINE_BIN, which may not know the key).
start_gate() {
    local name=$1 port=$2 admin=$3 store=$4 bin=${5:-$BIN} runtime=${6-${RUNTIMES[0]}} runtime_line=""
    [ -n "$runtime" ] && runtime_line="runtime = \"$runtime\""
    render "$HERE/sessiongate.toml.in" "$TMP/$name.toml" "PORT=$port" \
        "UPSTREAM_PORT=$UPSTREAM_PORT" "ADMIN_PORT=$admin" "STORE=$store" \
        "THREADS=$THREADS" "RUNTIME_LINE=$runtime_line"
    RUST_LOG=warn SESSION_SECRET=$SECRET SESSION_UPSTREAM_SECRET=$UPSTREAM_SECRET \
        taskset -c "$SERVER_CPU" "$bin" -c "$TMP/$name.toml" >"$TMP/$name.log" 2>&1 &
    GATE_PID=$!
    PIDS+=("$GATE_PID")
    for _ in $(seq 100); do
        curl -s -o /dev/null --max-time 1 "http://127.0.0.1:$admin/healthz" && return 0
        kill -0 "$GATE_PID" 2>/dev/null || break
        sleep 0.1
    done
    log "sessiongate ($name) did not start: $(tail -n 3 "$TMP/$name.log")"
    return 1
}

cpu_ticks() { # "USER TOTAL": utime and utime+stime of the given PIDs, in clock ticks
    local pid user=0 total=0 u s
    for pid in "$@"; do
        # Fields after the ")" of the command name: utime is field 12, stime 13 there.
        read -r u s < <(sed 's/^.*) //' "/proc/$pid/stat" | awk '{print $12, $13}')
        user=$((user + u))
        total=$((total + u + s))
    done
    echo "$user $total"
}

us_per_req() { # us_per_req TICKS REQUESTS -> CPU microseconds per request
    awk -v d="$1" -v hz="$CLK_TCK" -v r="$2" 'BEGIN { printf "%.2f", (r > 0) ? d / hz * 1e6 / r : 0 }'
}

rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }

# try_cookie PORT PATH: the session cookie (NAME=VALUE) that sessiongate on PORT sets for
# PATH, after checking that it is live (a GET / with it is 200 and sets no cookie).
try_cookie() {
    local port=$1 path=$2 c
    c=$(curl -s -o /dev/null -D - --max-time 5 "http://127.0.0.1:$port$path" |
        awk 'tolower($1) == "set-cookie:" { split($2, a, ";"); print a[1]; exit }')
    [ -n "$c" ] || return 1
    curl -s -o /dev/null -D "$TMP/check.txt" --max-time 5 -H "Cookie: $c" "http://127.0.0.1:$port/" || return 1
    head -n 1 "$TMP/check.txt" | grep -q ' 200' || return 1
    ! grep -qi '^set-cookie:' "$TMP/check.txt" || return 1
    echo "$c"
}

login_cookie() {
    try_cookie "$1" "${2:-/login}" || die "no live session cookie from 127.0.0.1:$1${2:-/login}"
}

# --- one measured run ------------------------------------------------------------------

RESULTS="$TMP/results.tsv" # scenario target round rps p50_us p99_us cpu_us errors user_us

to_us() { # wrk latency text (123.45us, 1.23ms, 1.02s) -> microseconds
    awk -v v="$1" 'BEGIN {
        n = v + 0
        if (v ~ /us$/) print n; else if (v ~ /ms$/) print n * 1000;
        else if (v ~ /m$/) print n * 60000000; else print n * 1000000 }'
}

# run_wrk SCENARIO TARGET ROUND PORT PATH COOKIE PIDS...
run_wrk() {
    local scenario=$1 target=$2 round=$3 port=$4 path=$5 cookie=$6
    shift 6
    local out="$TMP/wrk-$scenario-$target-$round.txt" hdr=() user0 before user1 after
    [ -n "$cookie" ] && hdr=(-H "Cookie: $cookie")
    local rps reqs p50 p99 errors
    if [ -n "$RATE" ]; then
        read -r user0 before < <(cpu_ticks "$@")
        taskset -c "$LOAD_CPU" oha --no-tui --output-format json -z "${DURATION}s" -c "$CONNS" \
            -q "$RATE" --latency-correction "${hdr[@]}" "http://127.0.0.1:$port$path" \
            >"$out" 2>"$out.err" || die "oha failed: $(cat "$out.err")"
        read -r user1 after < <(cpu_ticks "$@")
        # requests/s, requests answered, p50 and p99 in us, requests not answered 2xx/3xx.
        read -r rps reqs p50 p99 errors < <(python3 - "$out" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
codes = {int(k): v for k, v in r.get("statusCodeDistribution", {}).items()}
answered = sum(codes.values())
# Requests still in flight when the run ends are "aborted due to deadline": not errors.
errs = r.get("errorDistribution", {})
bad = sum(v for k, v in codes.items() if k >= 400) + sum(v for k, v in errs.items() if "deadline" not in k)
lat = r["latencyPercentiles"]
print("%.1f" % r["summary"]["requestsPerSec"], answered, lat["p50"] * 1e6, lat["p99"] * 1e6, bad)
PY
        )
    else
        read -r user0 before < <(cpu_ticks "$@")
        taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency "${hdr[@]}" \
            "http://127.0.0.1:$port$path" >"$out" 2>&1 || die "wrk failed: $(cat "$out")"
        read -r user1 after < <(cpu_ticks "$@")
        rps=$(awk '/^Requests\/sec:/ {print $2}' "$out")
        reqs=$(awk '/requests in/ {print $1}' "$out")
        p50=$(to_us "$(awk '$1 == "50%" {print $2}' "$out")")
        p99=$(to_us "$(awk '$1 == "99%" {print $2}' "$out")")
        errors=$(awk '/Non-2xx or 3xx/ {n += $NF} /Socket errors/ {
            for (i = 1; i <= NF; i++) if ($i ~ /^[0-9]+,?$/) n += $i } END {print n + 0}' "$out")
    fi
    local cpu_us user_us
    cpu_us=$(us_per_req $((after - before)) "$reqs")
    user_us=$(us_per_req $((user1 - user0)) "$reqs")
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$scenario" "$target" "$round" "$rps" "$p50" \
        "$p99" "$cpu_us" "$errors" "$user_us" >>"$RESULTS"
    log "$(printf '%-3s %-18s round %s: %9s req/s  p50 %8.0f us  p99 %8.0f us  %7s CPU us/req (user %s)  errors %s  load %s' \
        "$scenario" "$target" "$round" "$rps" "$p50" "$p99" "$cpu_us" "$user_us" "$errors" "$(cut -d' ' -f1 /proc/loadavg)")"
}

warm() { # warm PORT PATH COOKIE
    local hdr=()
    [ -n "$3" ] && hdr=(-H "Cookie: $3")
    taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNS" -d"${WARMUP}s" "${hdr[@]}" \
        "http://127.0.0.1:$1$2" >/dev/null 2>&1 || true
}

# create_sessions PORT ADMIN_PORT PATH TOTAL: logins through sessiongate until its
# sessions_created_total reaches TOTAL, in wrk runs of at most 10 s (wrk's thread:stop()
# ends the requests but not the run, so each run is sized to what is left), 300 s at most.
create_sessions() {
    local port=$1 admin=$2 path=$3 total=$4 have left secs t0
    t0=$(date +%s)
    while :; do
        have=$(sessions_created "$admin")
        left=$((total - ${have:-0}))
        [ "$left" -gt 0 ] || return 0
        [ $(( $(date +%s) - t0 )) -lt 300 ] || die "preload: only $have of $total sessions after 300 s"
        secs=$(( left / 15000 + 1 ))
        [ "$secs" -le 10 ] || secs=10
        taskset -c "$LOAD_CPU" wrk -t1 -c64 -d"${secs}s" -s "$HERE/preload.lua" \
            "http://127.0.0.1:$port$path" -- "$left" >"$TMP/preload.txt" 2>&1 ||
            die "preload failed: $(cat "$TMP/preload.txt")"
    done
}

sessions_created() { # from the admin listener's /metrics
    curl -s --max-time 5 "http://127.0.0.1:$1/metrics" |
        awk '$1 == "sessiongate_sessions_created_total" {print $2}'
}

# --- start -----------------------------------------------------------------------------

free_port UPSTREAM_PORT
free_port PROXY_PORT
free_port GATE_PORT
free_port GATE_ADMIN

start_nginx upstream "$HERE/upstream.conf.in" "UPSTREAM_PORT=$UPSTREAM_PORT"
wait_http "$UPSTREAM_PORT" /
start_nginx proxy "$HERE/nginx-proxy.conf.in" "UPSTREAM_PORT=$UPSTREAM_PORT" "PROXY_PORT=$PROXY_PORT"
PROXY_WORKER=$NGINX_WORKER
wait_http "$PROXY_PORT" /
start_gate gate "$GATE_PORT" "$GATE_ADMIN" 'kind = "memory"' || die "sessiongate did not start"
GATE_MAIN=$GATE_PID

COOKIE=$(login_cookie "$GATE_PORT")

# More rows, interleaved with the two above: in S2, "sg-required", this build with `/`
# behind a `session = "required"` route (CSRF on, as by default), the cost of a protected
# path, and "sg-users", with the per-user index on (`session.user_field`); and in every scenario, with BASELINE_BIN, "baseline", that binary (memory store).
declare -A T_PORT=([nginx-plain]=$PROXY_PORT [sessiongate]=$GATE_PORT)
declare -A T_PID=([nginx-plain]=$PROXY_WORKER [sessiongate]=$GATE_MAIN)
declare -A T_COOKIE=([nginx-plain]=$COOKIE [sessiongate]=$COOKIE)
S2_EXTRA=()
ALL_EXTRA=()
add_target() { # add_target LIST NAME STORE_AND_ROUTE_LINES [BINARY] [RUNTIME]
    local -n list=$1
    shift
    local port admin
    free_port port
    free_port admin
    start_gate "gate-$1" "$port" "$admin" "$2" "${3:-$BIN}" "${4-${RUNTIMES[0]}}" ||
        die "sessiongate ($1) did not start"
    T_PORT[$1]=$port
    T_PID[$1]=$GATE_PID
    T_COOKIE[$1]=$(login_cookie "$port")
    list+=("$1")
    warm "$port" / "${T_COOKIE[$1]}"
}
if [[ " $SCENARIOS " == *" S2 "* ]]; then
    add_target S2_EXTRA sg-required 'kind = "memory"\n\n[[route]]\nprefix = "/"\nsession = "required"\n\n[[route]]\nprefix = "/login"'
    add_target S2_EXTRA sg-users 'kind = "memory"\n\n[session]\nuser_field = "userId"'
fi
if [ -n "$SCENARIOS" ] && [ -n "${BASELINE_BIN:-}" ]; then
    add_target ALL_EXTRA baseline 'kind = "memory"' "$BASELINE_BIN" ""
fi
# RUNTIME's other values: this build with that server.runtime, in every scenario.
if [ -n "$SCENARIOS" ]; then
    for r in "${RUNTIMES[@]:1}"; do
        add_target ALL_EXTRA "rt-$r" 'kind = "memory"' "$BIN" "$r"
    done
fi

log "machine: $(nproc) CPUs, $(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)"
log "upstream :$UPSTREAM_PORT  nginx-plain :$PROXY_PORT  sessiongate :$GATE_PORT (pid $GATE_MAIN)"
log "rounds $ROUNDS x ${DURATION}s, $LOAD_DESC, servers on CPU $SERVER_CPU, load on CPU $LOAD_CPU, redis-server on CPU $REDIS_CPU"
log "sessiongate: threads = $THREADS, runtime = ${RUNTIMES[0]}${RUNTIMES[1]:+ (and ${RUNTIMES[*]:1})}"

for t in "$PROXY_PORT" "$GATE_PORT"; do
    warm "$t" / ""
    warm "$t" / "$COOKIE"
done

for round in $(seq "$ROUNDS"); do
    # Alternate which proxy goes first, so neither always follows the other.
    if [ $((round % 2)) -eq 1 ]; then order="nginx-plain sessiongate"; else order="sessiongate nginx-plain"; fi
    for scenario in $SCENARIOS; do
        case $scenario in
            S1) path=/ cookie="" ;;
            S2) path=/ cookie=$COOKIE ;;
            S3) path=/login cookie="" ;;
        esac
        targets=($order)
        extra=("${ALL_EXTRA[@]}")
        [ "$scenario" = S2 ] && extra+=("${S2_EXTRA[@]}")
        if [ ${#extra[@]} -gt 0 ]; then
            # Rotate the whole list each round, so no target always runs first.
            all=(nginx-plain sessiongate "${extra[@]}")
            targets=()
            for i in "${!all[@]}"; do targets+=("${all[$(( (i + round) % ${#all[@]} ))]}"); done
        fi
        for target in "${targets[@]}"; do
            [ -z "$cookie" ] || cookie=${T_COOKIE[$target]}
            run_wrk "$scenario" "$target" "$round" "${T_PORT[$target]}" "$path" "$cookie" "${T_PID[$target]}"
        done
    done
done
log "sessiongate after S3: $(sessions_created "$GATE_ADMIN") sessions created, VmRSS $(rss_kb "$GATE_MAIN") kB"
stop_pid "$GATE_MAIN"
for t in "${S2_EXTRA[@]}" "${ALL_EXTRA[@]}"; do stop_pid "${T_PID[$t]}"; done

# --- Redis -----------------------------------------------------------------------------

REDIS_NOTE=""
if [ "$REDIS" != 1 ] || ! command -v redis-server >/dev/null 2>&1; then
    REDIS_NOTE="S2-redis: skipped (redis-server not installed, or REDIS=0)"
else
    free_port REDIS_PORT
    taskset -c "$REDIS_CPU" redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --save '' \
        --appendonly no --daemonize no --dir "$TMP" >"$TMP/redis.log" 2>&1 &
    REDIS_PID=$!
    PIDS+=("$REDIS_PID")
    for _ in $(seq 50); do
        (exec 3<>"/dev/tcp/127.0.0.1/$REDIS_PORT") 2>/dev/null && break
        sleep 0.1
    done
    # One sessiongate per variant on the same redis-server, interleaved round by round:
    # "sessiongate+redis" is $BIN; with BASELINE_BIN set, "baseline+redis" is that binary
    # (e.g. an older commit's release build), so a change's cost is measured in one run;
    # with REDIS_LOCAL_CACHE=N, "sessiongate+redis-cache" is $BIN with store.local_cache = N.
    # With more than one RUNTIME, "sessiongate+redis@<runtime>" is $BIN with each other one.
    # "sessiongate+memory" is $BIN on the memory store, run in the same rounds, so that
    # each Redis row's ratio to the memory store compares runs minutes apart at most
    # (this machine's speed drifts over a whole run; see the paired ratios in the report).
    redis_store="kind = \"redis\"\\nurl = \"redis://127.0.0.1:$REDIS_PORT\"\\nrequire_on_start = true"
    variants=("sessiongate+redis|$BIN|sg|$redis_store|${RUNTIMES[0]}")
    variants+=("sessiongate+memory|$BIN|mem|kind = \"memory\"|${RUNTIMES[0]}")
    [ -n "${BASELINE_BIN:-}" ] && variants+=("baseline+redis|$BASELINE_BIN|base|$redis_store|")
    [ "$REDIS_LOCAL_CACHE" -gt 0 ] &&
        variants+=("sessiongate+redis-cache|$BIN|cache|$redis_store\\nlocal_cache = $REDIS_LOCAL_CACHE|${RUNTIMES[0]}")
    for r in "${RUNTIMES[@]:1}"; do variants+=("sessiongate+redis@$r|$BIN|rt-$r|$redis_store|$r"); done
    running=()
    for v in "${variants[@]}"; do
        IFS='|' read -r vname vbin vns vstore vruntime <<<"$v"
        [ -x "$vbin" ] || die "no binary at $vbin"
        free_port VPORT
        free_port VADMIN
        if start_gate "gate-$vns" "$VPORT" "$VADMIN" "$vstore" "$vbin" "$vruntime"; then
            vpid=$GATE_PID
            if vcookie=$(try_cookie "$VPORT" /login); then
                warm "$VPORT" / "$vcookie"
                running+=("$vname|$VPORT|$vcookie|$vpid")
            else
                stop_pid "$vpid"
            fi
        fi
        if [ ${#running[@]} -eq 0 ] || [ "${running[-1]%%|*}" != "$vname" ]; then
            REDIS_NOTE+="S2 $vname: skipped (redis store not available) "
            [ -f "$TMP/gate-$vns.log" ] && log "gate-$vns said: $(tail -n 3 "$TMP/gate-$vns.log")"
        fi
    done
    for round in $(seq "$ROUNDS"); do
        n=${#running[@]}
        for i in $(seq 0 $((n - 1))); do
            # Rotate the order each round, so no variant always runs first.
            IFS='|' read -r vname vport vcookie vpid <<<"${running[$(( (i + round) % n ))]}"
            run_wrk S2 "$vname" "$round" "$vport" / "$vcookie" "$vpid" "$REDIS_PID"
        done
    done
    for v in "${running[@]}"; do stop_pid "${v##*|}"; done
    stop_pid "$REDIS_PID"
fi

# --- memory: 1,000 sessions vs PRELOAD sessions ----------------------------------------

RSS_NOTE=""
if [ "$PRELOAD" -gt 0 ]; then
    free_port MGATE_PORT
    free_port MGATE_ADMIN
    start_gate gate-mem "$MGATE_PORT" "$MGATE_ADMIN" 'kind = "memory"' || die "sessiongate did not start"
    MGATE=$GATE_PID
    rss0=$(rss_kb "$MGATE")
    create_sessions "$MGATE_PORT" "$MGATE_ADMIN" /login-100b 999
    MCOOKIE=$(login_cookie "$MGATE_PORT" /login-100b)
    n1=$(sessions_created "$MGATE_ADMIN")
    rss1=$(rss_kb "$MGATE")
    warm "$MGATE_PORT" / "$MCOOKIE"
    for round in $(seq "$ROUNDS"); do
        run_wrk S2 "sg-${n1}-sessions" "$round" "$MGATE_PORT" / "$MCOOKIE" "$MGATE"
    done
    log "preloading $PRELOAD sessions of ~100 B (bounded to 300 s)"
    t0=$(date +%s)
    create_sessions "$MGATE_PORT" "$MGATE_ADMIN" /login-100b $((PRELOAD - 1))
    MCOOKIE=$(login_cookie "$MGATE_PORT" /login-100b)
    n2=$(sessions_created "$MGATE_ADMIN")
    rss2=$(rss_kb "$MGATE")
    log "created $n2 sessions in $(( $(date +%s) - t0 )) s; VmRSS ${rss2} kB"
    warm "$MGATE_PORT" / "$MCOOKIE"
    for round in $(seq "$ROUNDS"); do
        run_wrk S2 "sg-${n2}-sessions" "$round" "$MGATE_PORT" / "$MCOOKIE" "$MGATE"
    done
    rss3=$(rss_kb "$MGATE")
    RSS_NOTE=$(printf 'VmRSS: empty %d kB; %d sessions %d kB; %d sessions %d kB (%.0f MB; %.0f bytes/session over the empty process); after S2 %d kB' \
        "$rss0" "$n1" "$rss1" "$n2" "$rss2" "$(awk -v k="$rss2" 'BEGIN{print k/1024}')" \
        "$(awk -v a="$rss2" -v b="$rss0" -v n="$n2" 'BEGIN{print (a-b)*1024/n}')" "$rss3")
    stop_pid "$MGATE"
fi

# --- report ----------------------------------------------------------------------------

median() { sort -g | awk '{a[NR] = $1} END { if (NR == 0) print 0; else if (NR % 2) print a[(NR + 1) / 2]; else print (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }
col() { # col SCENARIO TARGET FIELD -> median over rounds
    awk -F'\t' -v s="$1" -v t="$2" -v f="$3" '$1 == s && $2 == t {print $f}' "$RESULTS" | median
}

echo
REV=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
git -C "$ROOT" diff --quiet HEAD -- src Cargo.toml 2>/dev/null || REV="$REV+local changes"
echo "sessiongate load benchmark, $(date -u +%Y-%m-%d), commit $REV, $(nproc) CPUs ($(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)),"
echo "median of $ROUNDS rounds x ${DURATION}s, $LOAD_DESC on CPU $LOAD_CPU, servers on CPU $SERVER_CPU, redis-server on CPU $REDIS_CPU, no access logs."
echo "sessiongate threads = $THREADS, runtime = ${RUNTIMES[0]}; rt-<runtime> rows: the same build with that server.runtime."
echo "CPU us/req is the proxy process only, 'user' its user-space part (the rest is the kernel's)."
echo "'vs nginx' = sessiongate / nginx-plain (req/s, p99, CPU)."
echo
printf '%-9s %-22s %10s %9s %9s %9s %7s %8s %8s %8s %6s\n' scenario target 'req/s' 'p50 ms' 'p99 ms' 'CPU us' 'user' 'x req/s' 'x p99' 'x CPU' errors
awk -F'\t' '{print $1 "\t" $2}' "$RESULTS" | awk '!seen[$0]++' | while IFS=$'\t' read -r s t; do
    rps=$(col "$s" "$t" 4); p50=$(col "$s" "$t" 5); p99=$(col "$s" "$t" 6); cpu=$(col "$s" "$t" 7)
    user=$(col "$s" "$t" 9)
    errs=$(awk -F'\t' -v s="$s" -v t="$t" '$1 == s && $2 == t {n += $8} END {print n + 0}' "$RESULTS")
    base=nginx-plain
    case $t in sg-*) base=$(awk -F'\t' '$1 == "S2" && $2 ~ /^sg-/ {print $2; exit}' "$RESULTS") ;; esac
    has_base=$(awk -F'\t' -v s="$s" -v t="$base" '$1 == s && $2 == t {n++} END {print n + 0}' "$RESULTS")
    if [ "$t" = "$base" ] || [ "$has_base" -eq 0 ]; then
        xr="-" xp="-" xc="-"
    else
        xr=$(awk -v a="$rps" -v b="$(col "$s" "$base" 4)" 'BEGIN {printf "%.2f", a / b}')
        xp=$(awk -v a="$p99" -v b="$(col "$s" "$base" 6)" 'BEGIN {printf "%.2f", a / b}')
        xc=$(awk -v a="$cpu" -v b="$(col "$s" "$base" 7)" 'BEGIN {printf "%.2f", (b > 0) ? a / b : 0}')
    fi
    printf '%-9s %-22s %10.0f %9.3f %9.3f %9.1f %7.1f %8s %8s %8s %6s\n' "$s" "$t" "$rps" \
        "$(awk -v v="$p50" 'BEGIN{print v/1000}')" "$(awk -v v="$p99" 'BEGIN{print v/1000}')" \
        "$cpu" "$user" "$xr" "$xp" "$xc" "$errs"
done
echo
echo "(sg-N-sessions rows: one fresh sessiongate, S2 with N sessions in the memory store; their"
echo " 'x' columns compare with the first such row. S2 via redis rows: CPU is sessiongate + redis-server.)"
[ -n "$RSS_NOTE" ] && echo "$RSS_NOTE"
[ -n "$REDIS_NOTE" ] && echo "$REDIS_NOTE"

# Issue 5's targets, from the medians above.
ratio() { # ratio SCENARIO TARGET BASE FIELD
    awk -v a="$(col "$1" "$2" "$4")" -v b="$(col "$1" "$3" "$4")" 'BEGIN {printf "%.2f", (b > 0) ? a / b : 0}'
}
check() { # check LABEL VALUE OP LIMIT
    local ok
    ok=$(awk -v v="$2" -v l="$4" -v op="$3" 'BEGIN {print (op == ">=" ? v >= l : v <= l) ? "ok" : "MISSED"}')
    printf '  %-44s %8s %s %-6s %s\n' "$1" "$2" "$3" "$4" "$ok"
}
echo
echo "targets:"
has() { awk -F'\t' -v s="$1" -v t="$2" '$1 == s && $2 == t {n++} END {exit n == 0}' "$RESULTS"; }
has S1 sessiongate && check "S1 req/s vs nginx-plain" "$(ratio S1 sessiongate nginx-plain 4)" ">=" 1.0
if has S2 sessiongate; then
    check "S2 req/s vs nginx-plain" "$(ratio S2 sessiongate nginx-plain 4)" ">=" 1.0
    check "S2 CPU us/req vs nginx-plain" "$(ratio S2 sessiongate nginx-plain 7)" "<=" 1.0
    check "S2 p99 vs nginx-plain" "$(ratio S2 sessiongate nginx-plain 6)" "<=" 1.2
fi
has S3 sessiongate && check "S3 req/s vs nginx-plain" "$(ratio S3 sessiongate nginx-plain 4)" ">=" 0.9
round_ratio() { # round_ratio SCENARIO A B: req/s of A over B, round by round, then the median
    awk -F'\t' -v s="$1" -v a="$2" -v b="$3" '$1 == s && $2 == a {x[$3] = $4}
        $1 == s && $2 == b {y[$3] = $4}
        END {for (r in x) if ((r in y) && y[r] > 0) print x[r] / y[r]}' "$RESULTS" | median |
        awk '{printf "%.2f", $1}'
}
# Issue 16's targets: each Redis row against the memory-store row of the same rounds.
for t in sessiongate+redis sessiongate+redis-cache; do
    has S2 "$t" && has S2 sessiongate+memory || continue
    limit=0.85
    [ "$t" = sessiongate+redis-cache ] && limit=0.95
    check "S2 req/s, $t vs memory (same rounds)" "$(round_ratio S2 "$t" sessiongate+memory)" ">=" "$limit"
done
paired() { # paired SCENARIO LABEL A B: CPU us/req of A minus B, round by round, then the median
    has "$1" "$3" && has "$1" "$4" || return 0
    local d
    d=$(awk -F'\t' -v s="$1" -v a="$3" -v b="$4" '$1 == s && $2 == a {x[$3] = $7}
        $1 == s && $2 == b {y[$3] = $7}
        END {for (r in x) if (r in y) print x[r] - y[r]}' "$RESULTS" | median)
    printf '  %-44s %+8.2f us (median of per-round differences; medians %s and %s)\n' \
        "$2" "$d" "$(col "$1" "$3" 7)" "$(col "$1" "$4" 7)"
}
paired S2 "S2 CPU/req, required route - plain" sg-required sessiongate
paired S2 "S2 CPU/req, user_field set - unset" sg-users sessiongate
for s in S1 S2 S3; do
    paired "$s" "$s CPU/req, this build - baseline" sessiongate baseline
done
paired S2 "S2 redis CPU/req, this build - baseline" sessiongate+redis baseline+redis
for r in "${RUNTIMES[@]:1}"; do
    for s in S1 S2 S3; do
        paired "$s" "$s CPU/req, $r - ${RUNTIMES[0]}" "rt-$r" sessiongate
    done
    paired S2 "S2 redis CPU/req, $r - ${RUNTIMES[0]}" "sessiongate+redis@$r" sessiongate+redis
done
if [ -n "${rss2:-}" ]; then
    check "VmRSS MB with $n2 sessions" "$(awk -v k="$rss2" 'BEGIN {printf "%.0f", k / 1024}')" "<=" 400
    check "S2 p99 with $n2 vs $n1 sessions" "$(ratio S2 "sg-${n2}-sessions" "sg-${n1}-sessions" 6)" "<=" 1.1
fi
exit 0
