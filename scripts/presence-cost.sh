#!/usr/bin/env bash
# What presence costs: two workers of `examples/fanout_bench.rs` on a throw-away redis-server,
# driven by `presence-cost` (tools/switchboard-loadgen):
#   churn  2,000 clients (50 at a time) connect to worker 1, join a room and close; reports the
#          Redis commands per client (INFO commandstats) and both workers' CPU per client
#   room   1,000 clients in one room, spread over both workers; 200 `sendMessageToRoom`
#          messages; reports both workers' CPU per frame delivered and the time to deliver all
#
# Environment:
#   PRESENCE_BIN=path   the server binary (default: target/release/examples/fanout_bench, built)
#   PRESENCE_RUNS=3     runs of each mode
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
RUNS=${PRESENCE_RUNS:-3}
if [[ -z ${PRESENCE_BIN:-} ]]; then
    cargo build --release --quiet --example fanout_bench -p switchboard
    PRESENCE_BIN=$ROOT/target/release/examples/fanout_bench
fi
cargo build --release --quiet -p switchboard-loadgen --bin presence-cost
COST=$ROOT/target/release/presence-cost
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
PIDS=()
cleanup() { for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
REDIS_PORT=$(free_port)
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no >/dev/null &
PIDS+=($!)
until redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1; do sleep 0.1; done
REDIS_URL=redis://127.0.0.1:$REDIS_PORT/

# start_server PORT: starts a worker, waits for READY, prints its pid.
start_server() {
    local log
    log=$(mktemp)
    REDIS_URL=$REDIS_URL WS_PORT=$1 RUST_LOG=warn "$PRESENCE_BIN" >"$log" 2>&1 &
    local pid=$!
    until grep -q READY "$log"; do
        kill -0 "$pid" 2>/dev/null || { cat "$log" >&2; exit 1; }
        sleep 0.1
    done
    echo "$pid"
}

for mode in churn room; do
    for run in $(seq 1 "$RUNS"); do
        redis-cli -p "$REDIS_PORT" flushall >/dev/null
        redis-cli -p "$REDIS_PORT" config resetstat >/dev/null
        P1=$(free_port); P2=$(free_port)
        S1=$(start_server "$P1"); PIDS+=("$S1")
        S2=$(start_server "$P2"); PIDS+=("$S2")
        sleep 1
        echo "== $mode, run $run (load: $(cut -d' ' -f1-3 /proc/loadavg))"
        if [[ $mode == churn ]]; then
            "$COST" churn --url "ws://127.0.0.1:$P1/ws" --pid "$S1" --pid "$S2" --redis "$REDIS_URL" --clients 2000 --concurrency 50
        else
            "$COST" room --url "ws://127.0.0.1:$P1/ws" --url "ws://127.0.0.1:$P2/ws" --pid "$S1" --pid "$S2" --redis "$REDIS_URL" --clients 1000 --messages 200
        fi
        kill "$S1" "$S2"; wait "$S1" "$S2" 2>/dev/null || true
    done
done
