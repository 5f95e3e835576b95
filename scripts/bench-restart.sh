#!/usr/bin/env bash
# Restart of kv-server with KEYS entries in one project: spawn -> serving
# (the first accepted connection) and spawn -> every ordered key index
# ready (the server's "ordered key indexes built" line; Lists of the
# project wait until then), RUNS restarts of one data directory.
#
#   MODE=log       the data directory holds a log only (one preload)
#   MODE=snapshot  a snapshot of every key plus a log tail: the key space
#                  is written twice, which makes the log twice the live
#                  data and starts a snapshot, whose end the script waits
#                  for before stopping the server
#
# The binaries are $CARGO_TARGET_DIR/release/{kv-server,kv-bench} (build
# them first: cargo build --release -p kv-server -p kv-bench --locked);
# for an A/B run the script once per target directory, alternating.
#
#   MODE=snapshot KEYS=1000000 RUNS=3 scripts/bench-restart.sh
#   CARGO_TARGET_DIR=../base/target MODE=snapshot KEYS=1000000 RUNS=3 scripts/bench-restart.sh
#
# Prints one line per restart and writes them as JSON to OUT_DIR.
set -euo pipefail
cd "$(dirname "$0")/.."

KEYS=${KEYS:-1000000}
RUNS=${RUNS:-3}
MODE=${MODE:-snapshot}
VALUE_BYTES=${VALUE_BYTES:-100}
SERVER_WORKERS=${SERVER_WORKERS:-1}
TARGET_DIR=${CARGO_TARGET_DIR:-target}
OUT_DIR=${OUT_DIR:-target/bench-restart/$(date +%Y%m%d-%H%M%S)-$MODE}
BENCH=$TARGET_DIR/release/kv-bench
KV_SERVER=$TARGET_DIR/release/kv-server
# die, free_port, listening_addr, stop, preload.
source scripts/bench-lib.sh

[[ $MODE == log || $MODE == snapshot ]] || die "MODE is log or snapshot, not $MODE"
[[ -x $BENCH && -x $KV_SERVER ]] || die "$BENCH or $KV_SERVER is missing"
command -v python3 >/dev/null || die "python3 is needed for ports and timestamps"
mkdir -p "$OUT_DIR"
WORK=$(mktemp -d)
PIDS=()
trap cleanup EXIT
DATA=$WORK/data

now_us() {
    echo "${EPOCHREALTIME//[.,]/}"
}

# cpu_ms PID: CPU time (user + system, all threads, ended ones included)
# the process has used, in ms: less at the mercy of other load on the
# machine than wall time.
TICK=$(getconf CLK_TCK)
cpu_ms() {
    awk -v tick="$TICK" '{ print int(($14 + $15) * 1000 / tick) }' "/proc/$1/stat"
}

# us_of LINE: the microseconds since the epoch of a log line's timestamp.
us_of() {
    python3 -c 'import sys, datetime
t = sys.argv[1].split()[0].rstrip("Z")
d = datetime.datetime.fromisoformat(t).replace(tzinfo=datetime.timezone.utc)
print(int(d.timestamp() * 1_000_000))' "$1"
}

log=$WORK/load.log
"$KV_SERVER" --listen 127.0.0.1:0 --data-dir "$DATA" --fsync never --worker-threads "$SERVER_WORKERS" 2>"$log" &
PIDS+=($!)
pid=$!
addr=$(listening_addr "$log" "$pid")
echo "== $MODE: $KV_SERVER, $KEYS keys of 16 B with $VALUE_BYTES B values"
preload load --target sdk --addr "$addr"
if [[ $MODE == snapshot ]]; then
    preload load-again --target sdk --addr "$addr"
    for ((i = 0; i < 1200; i++)); do
        grep -q "snapshot written" "$log" && break
        sleep 0.1
    done
    grep -q "snapshot written" "$log" || die "no snapshot within 2 minutes: $(cat "$log")"
fi
stop "$pid"

for ((run = 1; run <= RUNS; run++)); do
    port=$(free_port)
    log=$WORK/restart-$run.log
    t=$(now_us)
    "$KV_SERVER" --listen "127.0.0.1:$port" --data-dir "$DATA" --fsync never \
        --worker-threads "$SERVER_WORKERS" 2>"$log" &
    pid=$!
    PIDS+=("$pid")
    until (: <>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do
        kill -0 "$pid" 2>/dev/null || die "kv-server exited on restart: $(cat "$log")"
        (($(now_us) - t < 600000000)) || die "kv-server did not serve within 10 minutes"
        sleep 0.005
    done
    serving_ms=$((($(now_us) - t) / 1000))
    serving_cpu=$(cpu_ms "$pid")
    for ((i = 0; i < 6000; i++)); do
        grep -q "ordered key indexes built" "$log" && break
        sleep 0.01
    done
    built=$(grep -m 1 "ordered key indexes built" "$log" || die "no index built: $(cat "$log")")
    ready_ms=$((($(us_of "$built") - t) / 1000))
    ready_cpu=$(cpu_ms "$pid")
    line=$(grep -m 1 ' recovered' "$log")
    field() { grep -o " $1=[0-9]*" <<<"$line" | cut -d= -f2; }
    printf '   run %d of %d: spawn -> serving %d ms (%d ms CPU), -> indexes ready %d ms (%d ms CPU); recovery %s ms,' \
        "$run" "$RUNS" "$serving_ms" "$serving_cpu" "$ready_ms" "$ready_cpu" "$(field took_ms)"
    printf ' %s snapshot entries, %s log records, %s keys, presorted %s, history skipped %s\n' \
        "$(field snapshot_entries)" "$(field records)" "$(field keys)" \
        "$(field index_presorted_keys || echo -)" "$(field history_skipped || echo -)"
    printf '{"mode":"%s","run":%d,"serving_ms":%d,"serving_cpu_ms":%d,"ready_ms":%d,"ready_cpu_ms":%d,"recovered_ms":%s,"keys":%s}\n' \
        "$MODE" "$run" "$serving_ms" "$serving_cpu" "$ready_ms" "$ready_cpu" "$(field took_ms)" "$(field keys)" >"$OUT_DIR/restart-r$run.json"
    stop "$pid"
done
