#!/usr/bin/env bash
# Fan-out benchmark: the framework's `examples/fanout_bench.rs` against the hand-written
# `baseline-server` (tools/switchboard-loadgen), driven by `loadgen`.
#
# Starts a throw-away redis-server on a free port (no persistence), builds everything in
# release mode, and for each scenario runs each server fresh (so peak RSS and memory per
# connection belong to that scenario alone):
#   burst       1000 clients x 2000 messages of ~100 bytes, published as fast as Redis takes
#               them (no window, no pacing): the case that cuts healthy clients when a
#               server cannot tell "briefly behind" from "stalled"
#   throughput  1000 clients x 2000 messages, as fast as the window allows
#   latency     100 clients x 5000 messages at 1000 msg/s
#   idle        5000 idle connections: server memory per connection
#   churn       1000 clients x 1000 messages at 500 msg/s while 100 extra clients keep
#               connecting and disconnecting (the counted clients must see no loss)
# then writes a Markdown table (with framework/baseline ratio rows) to stdout and to
# target/bench-results.md.
#
# Environment:
#   BENCH_SCALE=0.1        multiply client and message counts (default 1)
#   BENCH_PAYLOAD=128      payload bytes per message
#   BENCH_SCENARIOS="..."  subset of: burst throughput latency idle churn
#   BENCH_PIN=1            pin each server to core 0 and loadgen to the other cores (taskset),
#                          so that a server has one core of its own (default 1 when taskset exists)
#   BENCH_SERVERS="..."    subset of: framework baseline
#   BENCH_OUT=path.md      where the table goes (default target/bench-results.md)
#   BENCH_FRAMEWORK_BIN=.. an already built server to use as "framework" (skips its build)
#   CARGO_TARGET_DIR       honoured for the build and the binaries
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

SCALE=${BENCH_SCALE:-1}
PAYLOAD=${BENCH_PAYLOAD:-128}
SCENARIOS=${BENCH_SCENARIOS:-burst throughput latency idle churn}
PIN=${BENCH_PIN:-$(command -v taskset >/dev/null && [[ $(nproc) -ge 2 ]] && echo 1 || echo 0)}
SERVER_CPUS=0
LOADGEN_CPUS=1-$(( $(nproc) - 1 ))
# pinned CPUS COMMAND...: becomes COMMAND (exec, so `$!` of `pinned ... &` is its pid), on CPUS
# when pinning is on. Only ever called in the background.
pinned() {
    local cpus=$1; shift
    if [[ $PIN == 1 ]]; then exec taskset -c "$cpus" "$@"; else exec "$@"; fi
}
SERVERS=${BENCH_SERVERS:-framework baseline}
OUT=${BENCH_OUT:-$ROOT/target/bench-results.md}
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
BIN_DIR=$TARGET_DIR/release
LOG_DIR=$(dirname "$OUT")/bench-logs
RESULTS=$LOG_DIR/results.jsonl

log() { printf '[bench] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# n * SCALE rounded, at least MIN (default 1).
scaled() { awk -v n="$1" -v s="$SCALE" -v m="${2:-1}" 'BEGIN { v = int(n * s + 0.5); if (v < m) v = m; print v }'; }

# ---------------------------------------------------------------------------------------------
# Cleanup: whatever this script started is stopped, by pid, whatever the exit path.
REDIS_PID=""
SERVER_PID=""
LOADGEN_PID=""
stop_pid() {
    local pid=$1
    [[ -n $pid ]] || return 0
    kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; return 0; }
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        log "pid $pid ignored SIGTERM for 10 s: killing it"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
}
cleanup() {
    local status=$?
    trap - EXIT INT TERM
    stop_pid "$LOADGEN_PID"
    stop_pid "$SERVER_PID"
    stop_pid "$REDIS_PID"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# A TCP port on 127.0.0.1 that nothing listens on, below the ephemeral range (so that no
# client connection, of loadgen or anyone else, holds it as its local port).
free_port() {
    local low=32768 port
    read -r low _ </proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || true
    ((low > 11000)) || low=61000
    for _ in $(seq 1 100); do
        port=$((10000 + RANDOM % (low - 10000)))
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            echo "$port"
            return 0
        fi
    done
    die "no free port found"
}

# ---------------------------------------------------------------------------------------------
mkdir -p "$LOG_DIR"
: >"$RESULTS"
NOTES=()

# Many connections need many descriptors (loadgen raises its own soft limit too).
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
NEED_FDS=$(( $(scaled 5000) + 512 ))
if [[ $(ulimit -n) != unlimited && $(ulimit -n) -lt $NEED_FDS ]]; then
    log "warning: open-files limit $(ulimit -n) < $NEED_FDS: the idle scenario may fail"
fi

if ! command -v redis-server >/dev/null; then
    log "redis-server missing: installing it"
    if [[ $(id -u) -eq 0 ]]; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
    else
        sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
    fi
fi

log "building (release)"
cargo build --release -p switchboard-loadgen --bins
FRAMEWORK_BIN=${BENCH_FRAMEWORK_BIN:-}
if [[ " $SERVERS " == *" framework "* && -z $FRAMEWORK_BIN ]]; then
    if [[ -f examples/fanout_bench.rs ]]; then
        if cargo build --release -p switchboard --example fanout_bench; then
            FRAMEWORK_BIN=$BIN_DIR/examples/fanout_bench
        else
            NOTES+=("The framework example examples/fanout_bench.rs failed to build: framework rows skipped.")
        fi
    else
        NOTES+=("examples/fanout_bench.rs does not exist yet: framework rows skipped.")
    fi
fi
LOADGEN=$BIN_DIR/loadgen
BASELINE_BIN=$BIN_DIR/baseline-server

REDIS_PORT=$(free_port)
REDIS_URL=redis://127.0.0.1:$REDIS_PORT/
pinned "$LOADGEN_CPUS" redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no \
    --protected-mode yes --daemonize no --logfile "$LOG_DIR/redis.log" &
REDIS_PID=$!
for _ in $(seq 1 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$REDIS_PORT") 2>/dev/null; then break; fi
    kill -0 "$REDIS_PID" 2>/dev/null || die "redis-server exited; see $LOG_DIR/redis.log"
    sleep 0.1
done
log "redis-server pid $REDIS_PID on port $REDIS_PORT"

# start_server NAME BINARY LOG: starts it, waits for READY; sets SERVER_PID and SERVER_PORT.
# A server that exits before READY (say, its port was taken meanwhile) gets two more tries.
start_server() {
    local name=$1 bin=$2 logfile=$3
    for attempt in 1 2 3; do
        SERVER_PORT=$(free_port)
        REDIS_URL=$REDIS_URL WS_PORT=$SERVER_PORT pinned "$SERVER_CPUS" "$bin" >"$logfile" 2>&1 &
        SERVER_PID=$!
        for _ in $(seq 1 300); do
            grep -q READY "$logfile" 2>/dev/null && return 0
            kill -0 "$SERVER_PID" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$SERVER_PID" 2>/dev/null; then
            log "$name printed no READY within 30 s"
            stop_pid "$SERVER_PID"; SERVER_PID=""
            return 1
        fi
        wait "$SERVER_PID" 2>/dev/null || true
        SERVER_PID=""
        log "$name exited before READY (attempt $attempt):"; tail -n 5 "$logfile" >&2
    done
    return 1
}

# run NAME BINARY SCENARIO LOADGEN-ARGS...: fresh server, one loadgen run, RESULT collected.
run() {
    local name=$1 bin=$2 scenario=$3; shift 3
    local logfile=$LOG_DIR/$name-$scenario
    log "== $name / $scenario: $*"
    if ! start_server "$name" "$bin" "$logfile.server.log"; then
        NOTES+=("$name / $scenario: the server did not start (see $logfile.server.log).")
        return 0
    fi
    # In the background, so that a signal to this script is handled at once (`wait` returns).
    pinned "$LOADGEN_CPUS" "$LOADGEN" --port "$SERVER_PORT" --redis-url "$REDIS_URL" --server-pid "$SERVER_PID" \
        --server-name "$name" --scenario "$scenario" "$@" >"$logfile.log" 2>&1 &
    LOADGEN_PID=$!
    local status=0
    wait "$LOADGEN_PID" || status=$?
    LOADGEN_PID=""
    if ((status == 0)); then
        grep -v '^RESULT ' "$logfile.log" >&2 || true
        grep '^RESULT ' "$logfile.log" >>"$RESULTS" || NOTES+=("$name / $scenario: no RESULT line.")
    else
        tail -n 20 "$logfile.log" >&2
        NOTES+=("$name / $scenario: loadgen failed (see $logfile.log).")
    fi
    stop_pid "$SERVER_PID"
    SERVER_PID=""
}

for scenario in $SCENARIOS; do
    case $scenario in
        burst) args=(--clients "$(scaled 1000)" --messages "$(scaled 2000)" --payload 100 --rate 0 --window 0 --pipeline 256) ;;
        throughput) args=(--clients "$(scaled 1000)" --messages "$(scaled 2000)" --payload "$PAYLOAD" --rate 0) ;;
        latency) args=(--clients "$(scaled 100 10)" --messages "$(scaled 5000 100)" --payload "$PAYLOAD" --rate 1000) ;;
        idle) args=(--idle --clients "$(scaled 5000 10)") ;;
        # Paced, so that publishing lasts long enough (~2 s) for the churn to overlap it.
        churn) args=(--clients "$(scaled 1000)" --messages "$(scaled 1000 250)" --payload "$PAYLOAD" --rate 500 --churn "$(scaled 100 10)") ;;
        *) die "unknown scenario $scenario (burst throughput latency idle churn)" ;;
    esac
    for server in $SERVERS; do
        case $server in
            framework) if [[ -n $FRAMEWORK_BIN ]]; then run framework "$FRAMEWORK_BIN" "$scenario" "${args[@]}"; fi ;;
            baseline) run baseline "$BASELINE_BIN" "$scenario" "${args[@]}" ;;
            *) die "unknown server $server (framework baseline)" ;;
        esac
    done
done

{
    echo "# Fan-out benchmark"
    echo
    echo "$(date -u '+%Y-%m-%d %H:%M UTC'), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')," \
        "$(nproc) cores, BENCH_SCALE=$SCALE, payload $PAYLOAD B."
    echo "Latencies in ms; server RSS is the peak (VmHWM) for load runs and the RSS with every"
    echo "connection open for idle runs; ⚠ marks runs where loadgen used more CPU than the server."
    echo
    "$LOADGEN" --report "$RESULTS"
    if ((${#NOTES[@]})); then
        echo
        for note in "${NOTES[@]}"; do echo "- $note"; done
    fi
} >"$OUT.tmp"
mv "$OUT.tmp" "$OUT"
cat "$OUT"
log "table written to $OUT (logs in $LOG_DIR)"
