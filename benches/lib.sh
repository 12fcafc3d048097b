# Shell functions the benchmark scripts share (sourced, not run). The caller sets TMP (a
# scratch directory) and PIDS (an array), and defines die.

# stop_pid PID: SIGTERM, up to 10 s to exit, then SIGKILL.
stop_pid() {
    local pid=$1
    kill -TERM "$pid" 2>/dev/null || return 0
    for _ in $(seq 100); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

# Stops every process in PIDS and removes TMP; installed as the EXIT trap.
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do
        stop_pid "$pid"
    done
    rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# free_port VAR: a TCP port on 127.0.0.1 that nothing listens on and that this script has
# not handed out yet. (Sets VAR rather than printing: a $(...) subshell would lose the list.)
# Ports come from below the kernel's ephemeral range, so that no outgoing connection of the
# benchmark itself (wrk, the proxies' upstream pools) can be holding the port when we bind.
USED_PORTS=" "
EPHEMERAL_LOW=$(awk '{print $1}' /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || echo 32768)
[ "$EPHEMERAL_LOW" -gt 12000 ] || EPHEMERAL_LOW=32768
free_port() {
    local p
    for _ in $(seq 200); do
        p=$((10000 + RANDOM % (EPHEMERAL_LOW - 10000)))
        case "$USED_PORTS" in *" $p "*) continue ;; esac
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
            USED_PORTS+="$p "
            printf -v "$1" '%s' "$p"
            return 0
        fi
    done
    die "no free port found"
}

# render TEMPLATE OUT KEY=VALUE...: TEMPLATE with every @KEY@ replaced by VALUE.
render() {
    local in=$1 out=$2 expr=() kv
    shift 2
    for kv in "$@"; do
        expr+=(-e "s|@${kv%%=*}@|${kv#*=}|g")
    done
    sed "${expr[@]}" "$in" >"$out"
}
