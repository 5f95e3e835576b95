#!/usr/bin/env bash
# kv against Redis (and etcd, when installed) on this machine, with one load
# generator (kv-bench) for every system.
#
# Starts, on free 127.0.0.1 ports: kv-server (--fsync never), the bare tonic
# reference server (kv-bench reference-server), an in-memory redis-server
# (--save '' --appendonly no); for the durable comparison kv-server
# (--fsync always), redis-server (--appendonly yes --appendfsync always) and
# etcd if `etcd` is on PATH. Preloads every key of the key space into each
# system its gets read, then runs the matrix, RUNS times, alternating the
# systems back to back, and prints medians and ratios:
#
#   1. kv SDK get and set, CONCURRENCY in flight on 1 connection, vs Redis
#      multiplexed (one connection, CONCURRENCY in flight).
#   2. Unary get and set against kv-server vs the same unary calls against
#      the reference server: what kv-server's work costs over bare gRPC.
#   3. Serial gets (concurrency 1): p50 latency, kv SDK vs Redis.
#   4. Durable sets, CONCURRENCY in flight: kv --fsync always vs Redis
#      appendfsync always, and vs etcd puts.
#   5. get-many / set-many of BATCH keys: keys/s, kv SDK vs Redis pipelines
#      of BATCH commands.
#   6. Gets/s against concurrency (SWEEP) for kv SDK, kv unary, Redis
#      multiplexed and Redis with one connection per task; drawn into CHART.
#   7. Memory per entry: a fresh kv-server and a fresh in-memory Redis,
#      resident memory (VmRSS) before and after writing KEYS keys, divided
#      by KEYS; for Redis also INFO memory's used_memory.
#   8. Restart: kv-server holding KEYS keys is stopped with SIGTERM and
#      started again on its data directory, RUNS times: wall time from spawn
#      until it accepts connections (it recovers before it listens; a Get of
#      a preloaded key is then checked), and the recovery time it logs.
#   9. Expiry lag: `kv-bench expiry` writes KEYS keys whose deadlines are
#      spread over EXPIRY_SPREAD_MS after EXPIRY_TTL_MS, and measures how
#      long after its deadline each key's EXPIRED event arrives; then once
#      more with every key due at the same instant.
#  10. Latency at half of peak: kv SDK and Redis multiplexed get and set,
#      CONCURRENCY tasks; a closed-loop run finds the peak ops/s, then an
#      open-loop run at half of it reports p50/p99/p999. Run it with
#      PIN_CORES=1 so the load generator has a core of its own.
#  11. The worst call of a long mixed run: kv SDK, CONCURRENCY tasks, 50%
#      get, 40% set (70% of them with a MIXED_TTL_MS TTL), 10% delete over
#      MIXED_KEYS keys for MIXED_DURATION, against kv-server --fsync always
#      snapshotting every MIXED_SNAPSHOT_BYTES of log; reports p50 to max,
#      the snapshots taken, and the calls slower than MIXED_SLOW_MS with
#      when they started (to line them up with the server's log).
#
# Usage:
#   scripts/bench-vs-redis.sh
#   KEYS=10000 DURATION=2s WARMUP=500ms RUNS=1 SECTIONS="1 3" scripts/bench-vs-redis.sh
#   KEYS=20000 DURATION=2s WARMUP=500ms RUNS=1 SECTIONS="7 8 9 10" scripts/bench-vs-redis.sh
#
# Environment (defaults in brackets):
#   KEYS [1000000]            key space; every system is preloaded with it
#   DURATION [10s]            measured time of each run
#   WARMUP [2s]               warm-up before each run
#   RUNS [3]                  repetitions; medians are reported
#   CONCURRENCY [50]          operations in flight for sections 1, 2, 4, 5
#   BATCH [16]                keys per get-many/set-many (Redis pipeline depth)
#   VALUE_BYTES [100]         value size
#   SERVER_WORKERS [1]        tokio workers of kv-server and the reference server
#   CLIENT_THREADS [1]        tokio workers of kv-bench
#   SWEEP ["1 2 4 8 16 32 64 128"]  concurrencies of section 6
#   SECTIONS ["1 2 3 4 5 6 7 8 9 10"]  which sections to run (11 only when named)
#   PIN_CORES [unset]         set to 1 to run every server on CPU 0 and
#                             kv-bench on CPU 1 (taskset), and section 10's
#                             open loop with --precise-start
#   MIXED_DURATION [180s], MIXED_KEYS [20000], MIXED_TTL_MS [2000],
#   MIXED_SNAPSHOT_BYTES [16777216], MIXED_SLOW_MS [20]: section 11
#   EXPIRY_TTL_MS [20000]     section 9: earliest deadline, ms after writing starts
#   EXPIRY_SPREAD_MS [20000]  section 9: deadlines spread over this many ms
#   EXPIRY_TIMEOUT [120s]     section 9: wait past the last deadline for stragglers
#   EXPIRY_SERVER_ARGS [""]   section 9: extra kv-server flags, e.g.
#                             "--watch-history-events 100000" when the server
#                             cuts the watch off
#   CHART [docs/throughput-vs-concurrency.png]  the chart section 6 draws
#   OUT_DIR [target/bench-vs-redis/<date>]      result JSON files and logs (kept)
#   NO_BUILD [unset]          set to 1 to skip `cargo build --release`
#
# Redis executes commands on one thread whatever the settings; etcd runs with
# Go's defaults (all cores). Everything started here is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."

KEYS=${KEYS:-1000000}
DURATION=${DURATION:-10s}
WARMUP=${WARMUP:-2s}
RUNS=${RUNS:-3}
CONCURRENCY=${CONCURRENCY:-50}
BATCH=${BATCH:-16}
VALUE_BYTES=${VALUE_BYTES:-100}
SERVER_WORKERS=${SERVER_WORKERS:-1}
CLIENT_THREADS=${CLIENT_THREADS:-1}
SWEEP=${SWEEP:-"1 2 4 8 16 32 64 128"}
SECTIONS=${SECTIONS:-"1 2 3 4 5 6 7 8 9 10"}
EXPIRY_TTL_MS=${EXPIRY_TTL_MS:-20000}
EXPIRY_SPREAD_MS=${EXPIRY_SPREAD_MS:-20000}
EXPIRY_TIMEOUT=${EXPIRY_TIMEOUT:-120s}
EXPIRY_SERVER_ARGS=${EXPIRY_SERVER_ARGS:-}
MIXED_DURATION=${MIXED_DURATION:-180s}
MIXED_KEYS=${MIXED_KEYS:-20000}
MIXED_TTL_MS=${MIXED_TTL_MS:-2000}
MIXED_SNAPSHOT_BYTES=${MIXED_SNAPSHOT_BYTES:-16777216}
MIXED_SLOW_MS=${MIXED_SLOW_MS:-20}
CHART=${CHART:-docs/throughput-vs-concurrency.png}
OUT_DIR=${OUT_DIR:-target/bench-vs-redis/$(date +%Y%m%d-%H%M%S)}
TARGET_DIR=${CARGO_TARGET_DIR:-target}
# die, free_port, listening_addr, stop, preload.
source scripts/bench-lib.sh

command -v redis-server >/dev/null || die "redis-server is not on PATH (Debian: apt-get install redis-server)"
command -v redis-cli >/dev/null || die "redis-cli is not on PATH (Debian: apt-get install redis-tools)"
command -v python3 >/dev/null || die "python3 is needed for free ports and the summary"

if [[ ${NO_BUILD:-} != 1 ]]; then
    echo "== building (release)"
    cargo build --release -p kv-server -p kv-bench
fi
BENCH=$TARGET_DIR/release/kv-bench
KV_SERVER=$TARGET_DIR/release/kv-server
[[ -x $BENCH && -x $KV_SERVER ]] || die "$BENCH or $KV_SERVER is missing"
# With PIN_CORES=1 the servers share CPU 0 and the load generator has CPU 1.
# Open-loop runs then also start each operation on time to the µs
# (kv-bench --precise-start spins its core through the last millisecond).
SERVER_PIN=()
BENCH_PIN=()
PRECISE=()
if [[ ${PIN_CORES:-} == 1 ]]; then
    command -v taskset >/dev/null || die "PIN_CORES=1 needs taskset (Debian: util-linux)"
    SERVER_PIN=(taskset -c 0)
    BENCH_PIN=(taskset -c 1)
    PRECISE=(--precise-start)
fi

mkdir -p "$OUT_DIR"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/kv-bench-vs-redis.XXXXXX")
PIDS=()

trap cleanup EXIT
trap 'exit 130' INT TERM

# start_kv NAME FSYNC [FLAGS...]: kv-server on a free port, data in
# $WORK/NAME-data; sets KV_ADDR.
start_kv() {
    local name=$1 fsync=$2 log=$WORK/$1.log
    shift 2
    local workers=(--worker-threads "$SERVER_WORKERS")
    "${SERVER_PIN[@]}" "$KV_SERVER" --listen 127.0.0.1:0 --data-dir "$WORK/$name-data" --fsync "$fsync" \
        "${workers[@]}" "$@" 2>"$log" &
    PIDS+=($!)
    KV_ADDR=$(listening_addr "$log" $!)
    echo "   $name: kv-server --fsync $fsync --worker-threads $SERVER_WORKERS $*${*:+ }on $KV_ADDR"
}

start_reference() {
    local log=$WORK/reference.log
    "${SERVER_PIN[@]}" "$BENCH" reference-server --addr 127.0.0.1:0 --workers "$SERVER_WORKERS" 2>"$log" &
    PIDS+=($!)
    REF_ADDR=$(listening_addr "$log" $!)
    echo "   reference: kv-bench reference-server --workers $SERVER_WORKERS on $REF_ADDR"
}

# start_redis NAME ARGS...: redis-server on a free port; sets REDIS_ADDR.
start_redis() {
    local name=$1 port i
    shift
    port=$(free_port)
    "${SERVER_PIN[@]}" redis-server --port "$port" --bind 127.0.0.1 "$@" >"$WORK/$name.log" 2>&1 &
    PIDS+=($!)
    for ((i = 0; i < 100; i++)); do
        [[ $(redis-cli -p "$port" ping 2>/dev/null) == PONG ]] && break
        sleep 0.1
    done
    [[ $(redis-cli -p "$port" ping 2>/dev/null) == PONG ]] || die "$name did not start: $(cat "$WORK/$name.log")"
    REDIS_ADDR=127.0.0.1:$port
    echo "   $name: redis-server $(printf '%q ' "$@")on $REDIS_ADDR"
}

start_etcd() {
    local client peer
    client=$(free_port)
    peer=$(free_port)
    "${SERVER_PIN[@]}" etcd --name bench --data-dir "$WORK/etcd-data" \
        --listen-client-urls "http://127.0.0.1:$client" --advertise-client-urls "http://127.0.0.1:$client" \
        --listen-peer-urls "http://127.0.0.1:$peer" --initial-advertise-peer-urls "http://127.0.0.1:$peer" \
        --initial-cluster "bench=http://127.0.0.1:$peer" >"$WORK/etcd.log" 2>&1 &
    PIDS+=($!)
    ETCD_ADDR=127.0.0.1:$client
    echo "   etcd: $(etcd --version | sed -n 1p) on $ETCD_ADDR"
}

# Microseconds since the epoch, without forking (bash 5's EPOCHREALTIME;
# the separator follows the locale).
now_us() {
    echo "${EPOCHREALTIME//[.,]/}"
}

# rss_kb PID: resident memory of a process, in KiB.
rss_kb() {
    awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"
}

# used_memory PORT: Redis's own count of the bytes it allocated.
used_memory() {
    redis-cli -p "$1" info memory | tr -d '\r' | awk -F: '/^used_memory:/ { print $2 }'
}

# json FILE KEY=VALUE...: writes a flat JSON object (numbers where the
# value is one, strings otherwise).
json() {
    python3 - "$@" <<'EOF'
import json, sys
def value(v):
    for kind in (int, float):
        try:
            return kind(v)
        except ValueError:
            pass
    return v
json.dump({k: value(v) for k, v in (a.split("=", 1) for a in sys.argv[2:])}, open(sys.argv[1], "w"))
EOF
}

COMMON=(--keys "$KEYS" --value-bytes "$VALUE_BYTES" --threads "$CLIENT_THREADS"
    --duration "$DURATION" --warmup "$WARMUP")

# bench NAME LABEL ARGS...: one measured run into $OUT_DIR/NAME.json; prints
# its table row.
bench() {
    local name=$1 label=$2
    shift 2
    if ! "${BENCH_PIN[@]}" "$BENCH" run "${COMMON[@]}" "$@" --label "$label" --json "$OUT_DIR/$name.json" \
        >"$OUT_DIR/$name.txt" 2>"$OUT_DIR/$name.log"; then
        cat "$OUT_DIR/$name.log" >&2
        die "run $name failed"
    fi
    if [[ -z ${HEADER_SHOWN:-} ]]; then
        printf '   %-28s %s\n' "run" "$(sed -n 1p "$OUT_DIR/$name.txt")"
        HEADER_SHOWN=1
    fi
    printf '   %-28s %s\n' "$name" "$(sed -n 2p "$OUT_DIR/$name.txt")"
}

# wants N...: whether any of sections N... is to run.
wants() {
    local n
    for n in "$@"; do
        [[ " $SECTIONS " == *" $n "* ]] && return 0
    done
    return 1
}

echo "== setup: $(nproc) cores; KEYS=$KEYS VALUE_BYTES=$VALUE_BYTES DURATION=$DURATION WARMUP=$WARMUP RUNS=$RUNS"
echo "   server workers: $SERVER_WORKERS (kv-server, reference); Redis: one command thread; client threads: $CLIENT_THREADS"
if [[ ${PIN_CORES:-} == 1 ]]; then
    echo "   pinned: every server on CPU 0, kv-bench on CPU 1"
fi
echo "   $(redis-server --version)"
echo "   results: $OUT_DIR"
# The shared servers, for the sections that use them (4 and 7 to 9 start
# their own).
if wants 1 2 3 5 6 10; then
    start_kv kv never
    KV=$KV_ADDR
fi
if wants 2; then
    start_reference
    REF=$REF_ADDR
fi
if wants 1 3 5 6 10; then
    start_redis redis --save '' --appendonly no
    REDIS=$REDIS_ADDR
fi
if wants 1 2 3 5 6 10; then
    preload kv --target sdk --addr "$KV"
fi
if wants 2; then
    preload reference --target unary --addr "$REF"
fi
if wants 1 3 5 6 10; then
    preload redis --target redis --addr "$REDIS"
fi

C=$CONCURRENCY
for ((run = 1; run <= RUNS; run++)); do
    if wants 1; then
        echo "== (1) kv SDK vs Redis multiplexed, $C in flight, 1 connection: run $run of $RUNS"
        for op in get set; do
            bench "1-$op-sdk-r$run" "kv SDK" --target sdk --addr "$KV" --workload $op --concurrency "$C"
            bench "1-$op-redis-r$run" "Redis multiplexed" --target redis --addr "$REDIS" --workload $op --concurrency "$C"
        done
    fi
    if wants 2; then
        echo "== (2) unary calls, kv-server vs reference server, $C in flight: run $run of $RUNS"
        for op in get set; do
            bench "2-$op-kv-r$run" "kv unary" --target unary --addr "$KV" --workload $op --concurrency "$C"
            bench "2-$op-ref-r$run" "reference unary" --target unary --addr "$REF" --workload $op --concurrency "$C"
        done
    fi
    if wants 3; then
        echo "== (3) serial gets: run $run of $RUNS"
        bench "3-get-sdk-r$run" "kv SDK" --target sdk --addr "$KV" --workload get --concurrency 1
        bench "3-get-redis-r$run" "Redis" --target redis --addr "$REDIS" --workload get --concurrency 1
    fi
    if wants 5; then
        echo "== (5) batches of $BATCH keys, $C in flight: run $run of $RUNS"
        for op in get-many set-many; do
            bench "5-$op-sdk-r$run" "kv SDK" --target sdk --addr "$KV" --workload $op --batch "$BATCH" --concurrency "$C"
            bench "5-$op-redis-r$run" "Redis pipelined" --target redis --addr "$REDIS" --workload $op --batch "$BATCH" --concurrency "$C"
        done
    fi
done

if wants 4; then
    echo "== (4) durable sets, $C in flight"
    start_kv kv-durable always
    KV_DURABLE=$KV_ADDR
    KV_DURABLE_PID=${PIDS[-1]}
    start_redis redis-durable --save '' --appendonly yes --appendfsync always --dir "$WORK"
    REDIS_DURABLE=$REDIS_ADDR
    REDIS_DURABLE_PID=${PIDS[-1]}
    ETCD=""
    if command -v etcd >/dev/null; then
        start_etcd
        ETCD=$ETCD_ADDR
        ETCD_PID=${PIDS[-1]}
        # The member answers once it has elected itself: wait for a short
        # run without errors.
        for ((i = 0; i < 50; i++)); do
            if "$BENCH" run --target etcd --addr "$ETCD" --workload get --keys 1 --key-bytes 2 \
                --concurrency 1 --duration 100ms --warmup 0s --json "$WORK/etcd-ready.json" \
                >/dev/null 2>&1 &&
                python3 -c 'import json, sys; sys.exit(json.load(open(sys.argv[1]))["errors"] != 0)' \
                    "$WORK/etcd-ready.json"; then
                break
            fi
            sleep 0.2
        done
    else
        echo "   etcd is not on PATH: skipping etcd"
    fi
    for ((run = 1; run <= RUNS; run++)); do
        echo "   run $run of $RUNS"
        bench "4-set-kv-r$run" "kv SDK fsync always" --target sdk --addr "$KV_DURABLE" --workload set --concurrency "$C"
        bench "4-set-redis-r$run" "Redis appendfsync always" --target redis --addr "$REDIS_DURABLE" --workload set --concurrency "$C"
        if [[ -n $ETCD ]]; then
            bench "4-set-etcd-r$run" "etcd" --target etcd --addr "$ETCD" --workload set --concurrency "$C"
        fi
    done
    stop "$KV_DURABLE_PID"
    stop "$REDIS_DURABLE_PID"
    if [[ -n $ETCD ]]; then
        stop "$ETCD_PID"
    fi
fi

if wants 6; then
    echo "== (6) gets/s against concurrency: $SWEEP"
    for ((run = 1; run <= RUNS; run++)); do
        for c in $SWEEP; do
            bench "6-sdk-c$c-r$run" "kv SDK (1 connection)" --target sdk --addr "$KV" --workload get --concurrency "$c"
            bench "6-unary-c$c-r$run" "kv unary (1 connection)" --target unary --addr "$KV" --workload get --concurrency "$c"
            bench "6-redis-mux-c$c-r$run" "Redis multiplexed" --target redis --addr "$REDIS" --workload get --concurrency "$c"
            bench "6-redis-conn-c$c-r$run" "Redis, a connection per task" --target redis --addr "$REDIS" \
                --workload get --concurrency "$c" --redis-mode connections --connections "$c"
        done
    done
    mkdir -p "$(dirname "$CHART")"
    # In legend order: kv first.
    inputs=""
    for system in sdk unary redis-mux redis-conn; do
        for ((run = 1; run <= RUNS; run++)); do
            for c in $SWEEP; do
                inputs+="${inputs:+,}$OUT_DIR/6-$system-c$c-r$run.json"
            done
        done
    done
    "$BENCH" chart --input "$inputs" --out "$CHART" \
        --title "Gets/s vs concurrency ($(nproc) cores, $KEYS keys, ${VALUE_BYTES}-byte values, median of $RUNS)"
fi

if wants 7; then
    echo "== (7) memory per entry: $KEYS keys of $VALUE_BYTES bytes, fresh servers"
    start_kv kv-mem never
    KV_MEM=$KV_ADDR
    KV_MEM_PID=${PIDS[-1]}
    start_redis redis-mem --save '' --appendonly no
    REDIS_MEM=$REDIS_ADDR
    REDIS_MEM_PID=${PIDS[-1]}
    kv_before=$(rss_kb "$KV_MEM_PID")
    redis_before=$(rss_kb "$REDIS_MEM_PID")
    used_before=$(used_memory "${REDIS_MEM##*:}")
    preload kv-mem --target sdk --addr "$KV_MEM"
    preload redis-mem --target redis --addr "$REDIS_MEM"
    # Let background work (snapshots, index builds, lazy frees) settle.
    sleep 1
    kv_after=$(rss_kb "$KV_MEM_PID")
    redis_after=$(rss_kb "$REDIS_MEM_PID")
    used_after=$(used_memory "${REDIS_MEM##*:}")
    json "$OUT_DIR/7-memory.json" keys="$KEYS" value_bytes="$VALUE_BYTES" \
        kv_rss_before_kb="$kv_before" kv_rss_after_kb="$kv_after" \
        redis_rss_before_kb="$redis_before" redis_rss_after_kb="$redis_after" \
        redis_used_memory_before="$used_before" redis_used_memory_after="$used_after"
    python3 - "$OUT_DIR/7-memory.json" <<'EOF'
import json, sys
m = json.load(open(sys.argv[1]))
kv = (m["kv_rss_after_kb"] - m["kv_rss_before_kb"]) * 1024 / m["keys"]
redis = (m["redis_rss_after_kb"] - m["redis_rss_before_kb"]) * 1024 / m["keys"]
used = (m["redis_used_memory_after"] - m["redis_used_memory_before"]) / m["keys"]
print(f"   kv-server: RSS {m['kv_rss_before_kb'] / 1024:.1f} -> {m['kv_rss_after_kb'] / 1024:.1f} MiB, {kv:.0f} B/entry")
print(f"   Redis:     RSS {m['redis_rss_before_kb'] / 1024:.1f} -> {m['redis_rss_after_kb'] / 1024:.1f} MiB, {redis:.0f} B/entry"
      f" (used_memory {used:.0f} B/entry)")
EOF
    stop "$KV_MEM_PID"
    stop "$REDIS_MEM_PID"
fi

if wants 8; then
    echo "== (8) restart with $KEYS keys: SIGTERM, then spawn until serving, $RUNS time(s)"
    start_kv kv-restart never
    KV_RESTART_PID=${PIDS[-1]}
    preload kv-restart --target sdk --addr "$KV_ADDR"
    for ((run = 1; run <= RUNS; run++)); do
        t=$(now_us)
        stop "$KV_RESTART_PID"
        stop_ms=$((($(now_us) - t) / 1000))
        port=$(free_port)
        log=$WORK/kv-restart-r$run.log
        t=$(now_us)
        "$KV_SERVER" --listen "127.0.0.1:$port" --data-dir "$WORK/kv-restart-data" --fsync never \
            --worker-threads "$SERVER_WORKERS" 2>"$log" &
        KV_RESTART_PID=$!
        PIDS+=("$KV_RESTART_PID")
        # kv-server recovers before it listens: the first accepted
        # connection is the first moment it serves. A connect attempt in a
        # subshell costs about a millisecond; polling every 5 ms.
        until (: <>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do
            kill -0 "$KV_RESTART_PID" 2>/dev/null || die "kv-server exited on restart: $(cat "$log")"
            (($(now_us) - t < 600000000)) || die "kv-server did not serve within 10 minutes: $(cat "$log")"
            sleep 0.005
        done
        serving_ms=$((($(now_us) - t) / 1000))
        # One Get of a preloaded key (k000000000000000, key 0 of the
        # preload) must find it.
        "$BENCH" run --target sdk --addr "127.0.0.1:$port" --workload get --keys 1 --key-bytes 16 \
            --concurrency 1 --duration 100ms --warmup 0s --json "$OUT_DIR/8-get-r$run.json" \
            >/dev/null 2>"$OUT_DIR/8-get-r$run.log" || die "no Get after the restart: $(cat "$OUT_DIR/8-get-r$run.log")"
        line=$(grep -m 1 ' recovered' "$log" || true)
        # ` keys=` and not `index_deferred_keys=`: fields follow a space.
        field() { grep -o " $1=[0-9]*" <<<"$line" | cut -d= -f2; }
        json "$OUT_DIR/8-restart-r$run.json" keys="$(field keys)" serving_ms="$serving_ms" \
            recovered_ms="$(field took_ms)" index_ms="$(field index_ms)" stop_ms="$stop_ms" \
            get_misses="$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["misses"])' "$OUT_DIR/8-get-r$run.json")"
        python3 - "$OUT_DIR/8-restart-r$run.json" "$run" "$RUNS" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
warn = "" if r["get_misses"] == 0 else "  WARNING: the preloaded key was not found"
print(f"   run {sys.argv[2]} of {sys.argv[3]}: stop {r['stop_ms']} ms; spawn -> serving {r['serving_ms']} ms,"
      f" recovery (server log) {r['recovered_ms']} ms of which index {r['index_ms']} ms, {r['keys']} keys{warn}")
EOF
    done
    stop "$KV_RESTART_PID"
fi

if wants 9; then
    echo "== (9) expiry lag: $KEYS keys, deadlines ${EXPIRY_TTL_MS} ms + [0, ${EXPIRY_SPREAD_MS}] ms after writing starts"
    # Word splitting of EXPIRY_SERVER_ARGS is intended: it holds flags.
    # shellcheck disable=SC2086
    start_kv kv-expiry never $EXPIRY_SERVER_ARGS
    KV_EXPIRY=$KV_ADDR
    KV_EXPIRY_PID=${PIDS[-1]}
    for case in "spread:$EXPIRY_SPREAD_MS" "once:0"; do
        name=9-expiry-${case%%:*}
        spread=${case#*:}
        if "$BENCH" expiry --url "$KV_EXPIRY" --keys "$KEYS" --ttl-ms "$EXPIRY_TTL_MS" --spread-ms "$spread" \
            --value-bytes "$VALUE_BYTES" --timeout "$EXPIRY_TIMEOUT" --label "$name" \
            --json "$OUT_DIR/$name.json" >"$OUT_DIR/$name.txt" 2>"$OUT_DIR/$name.log"; then
            if [[ -z ${EXPIRY_HEADER_SHOWN:-} ]]; then
                printf '   %-20s %s\n' "run" "$(sed -n 1p "$OUT_DIR/$name.txt")"
                EXPIRY_HEADER_SHOWN=1
            fi
            printf '   %-20s %s\n' "$name" "$(sed -n 2p "$OUT_DIR/$name.txt")"
            # The log also holds the progress line (rewritten with \r).
            grep -o 'warning: .*' "$OUT_DIR/$name.log" | sed 's/^/   /' || true
        else
            # A failed run (typically a watch the server cut off) is a
            # result too: reported, and the script goes on.
            message=$(grep -o -m 1 'error: .*' "$OUT_DIR/$name.log" || tail -n 1 "$OUT_DIR/$name.log")
            echo "   $name: FAILED: $message"
            json "$OUT_DIR/$name.json" error="$message" spread_ms="$spread"
        fi
    done
    stop "$KV_EXPIRY_PID"
fi

if wants 10; then
    echo "== (10) latency at half of the peak rate, $C tasks"
    for ((run = 1; run <= RUNS; run++)); do
        echo "   run $run of $RUNS"
        for op in get set; do
            for system in sdk redis; do
                if [[ $system == sdk ]]; then
                    target=(--target sdk --addr "$KV")
                    label="kv SDK"
                else
                    target=(--target redis --addr "$REDIS")
                    label="Redis multiplexed"
                fi
                bench "10-$op-$system-peak-r$run" "$label" "${target[@]}" --workload $op --concurrency "$C"
                rate=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["ops_per_sec"] / 2)' \
                    "$OUT_DIR/10-$op-$system-peak-r$run.json")
                bench "10-$op-$system-half-r$run" "$label" "${target[@]}" --workload $op --concurrency "$C" \
                    --rate "$rate" "${PRECISE[@]}"
            done
        done
    done
fi

if wants 11; then
    echo "== (11) mixed run of $MIXED_DURATION, --fsync always, a snapshot every $MIXED_SNAPSHOT_BYTES bytes of log: $RUNS run(s)"
    for ((run = 1; run <= RUNS; run++)); do
        start_kv "kv-mixed-r$run" always --snapshot-min-log-bytes "$MIXED_SNAPSHOT_BYTES"
        KV_MIXED_PID=${PIDS[-1]}
        name=11-mixed-r$run
        if ! "${BENCH_PIN[@]}" "$BENCH" run --target sdk --addr "$KV_ADDR" --workload mixed \
            --mix get=50,set=40,delete=10 --ttl-share 0.7 --ttl-ms "$MIXED_TTL_MS" --keys "$MIXED_KEYS" \
            --value-bytes "$VALUE_BYTES" --threads "$CLIENT_THREADS" --concurrency "$C" --preload \
            --duration "$MIXED_DURATION" --warmup "$WARMUP" --slow-ms "$MIXED_SLOW_MS" --label "$name" \
            --json "$OUT_DIR/$name.json" >"$OUT_DIR/$name.txt" 2>"$OUT_DIR/$name.log"; then
            cat "$OUT_DIR/$name.log" >&2
            die "run $name failed"
        fi
        stop "$KV_MIXED_PID"
        snapshots=$(grep -c 'snapshot written' "$WORK/kv-mixed-r$run.log" || true)
        cp "$WORK/kv-mixed-r$run.log" "$OUT_DIR/$name-server.log"
        python3 - "$OUT_DIR/$name.json" "$snapshots" <<'EOF'
import json, sys
path, snapshots = sys.argv[1], int(sys.argv[2])
result = json.load(open(path))
result["snapshots"] = snapshots
json.dump(result, open(path, "w"))
EOF
        sed 's/^/   /' "$OUT_DIR/$name.txt"
        echo "   snapshots: $snapshots (server log: $OUT_DIR/$name-server.log)"
    done
fi

echo
echo "== summary: medians of $RUNS run(s) (each run in brackets)"
python3 - "$OUT_DIR" "$SWEEP" "$C" "$BATCH" <<'EOF'
import glob, json, os, statistics, sys

out, sweep, conc, batch = sys.argv[1], sys.argv[2].split(), sys.argv[3], sys.argv[4]

def runs(prefix):
    files = sorted(glob.glob(os.path.join(out, prefix + "-r*.json")),
                   key=lambda f: int(f.rsplit("-r", 1)[1].split(".")[0]))
    return [json.load(open(f)) for f in files]

def metric(result, name):
    value = result
    for part in name.split("."):
        value = value[part]
    return float(value)

def fmt(x):
    return f"{x / 1000:.1f}k" if x >= 10000 else f"{x:.0f}"

rows = []
def compare(title, name, a, b, a_name, b_name, lower_is_better=False):
    ra, rb = runs(a), runs(b)
    if not ra or not rb:
        return
    va = [metric(r, name) for r in ra]
    vb = [metric(r, name) for r in rb]
    ma, mb = statistics.median(va), statistics.median(vb)
    errors = sum(r["errors"] for r in ra + rb)
    note = f"  ({errors} errors!)" if errors else ""
    ratio = ma / mb if mb else float("nan")
    rows.append((title, name.replace("latency_us.", "") + (" (lower is better)" if lower_is_better else ""),
                 f"{a_name} {fmt(ma)} ({', '.join(fmt(v) for v in va)})",
                 f"{b_name} {fmt(mb)} ({', '.join(fmt(v) for v in vb)})",
                 f"{ratio:.2f}x{note}"))

for op in ["get", "set"]:
    compare(f"(1) {op}, {conc} in flight", "ops_per_sec", f"1-{op}-sdk", f"1-{op}-redis", "kv SDK", "Redis mux")
for op in ["get", "set"]:
    compare(f"(2) unary {op}, {conc} in flight", "ops_per_sec", f"2-{op}-kv", f"2-{op}-ref", "kv-server", "reference")
compare("(3) serial get", "latency_us.p50", "3-get-sdk", "3-get-redis", "kv SDK", "Redis", lower_is_better=True)
compare("(3) serial get", "ops_per_sec", "3-get-sdk", "3-get-redis", "kv SDK", "Redis")
compare(f"(4) durable set, {conc} in flight", "ops_per_sec", "4-set-kv", "4-set-redis", "kv always", "Redis always")
compare(f"(4) durable set, {conc} in flight", "ops_per_sec", "4-set-kv", "4-set-etcd", "kv always", "etcd")
for op in ["get-many", "set-many"]:
    compare(f"(5) {op} of {batch}, {conc} in flight", "keys_per_sec", f"5-{op}-sdk", f"5-{op}-redis", "kv SDK", "Redis pipe")
for op in ["get", "set"]:
    compare(f"(10) {op} at half of peak", "latency_us.p99", f"10-{op}-sdk-half", f"10-{op}-redis-half",
            "kv SDK", "Redis mux", lower_is_better=True)

def table(headers, rows):
    widths = [max(len(str(r[i])) for r in rows + [headers]) for i in range(len(headers))]
    for r in [headers] + rows:
        print("  ".join(str(v).ljust(w) for v, w in zip(r, widths)).rstrip())

if rows:
    table(("comparison", "metric", "A: median (runs)", "B: median (runs)", "A/B"), rows)

# The sweep: gets/s of each system at each concurrency.
systems = [("sdk", "kv SDK"), ("unary", "kv unary"), ("redis-mux", "Redis mux"), ("redis-conn", "Redis conns")]
sweep_rows = []
for c in sweep:
    medians = {}
    for key, _ in systems:
        found = runs(f"6-{key}-c{c}")
        if found:
            medians[key] = statistics.median(r["ops_per_sec"] for r in found)
    if medians:
        cells = [fmt(medians[k]) if k in medians else "-" for k, _ in systems]
        ratio = (f"{medians['sdk'] / medians['redis-mux']:.2f}x"
                 if medians.get("redis-mux") and "sdk" in medians else "-")
        sweep_rows.append((c, *cells, ratio))
if sweep_rows:
    print()
    print("(6) gets/s by concurrency, medians:")
    table(("concurrency", *(name for _, name in systems), "kv SDK / Redis mux"), sweep_rows)

memory = os.path.join(out, "7-memory.json")
if os.path.exists(memory):
    m = json.load(open(memory))
    kv = (m["kv_rss_after_kb"] - m["kv_rss_before_kb"]) * 1024 / m["keys"]
    redis = (m["redis_rss_after_kb"] - m["redis_rss_before_kb"]) * 1024 / m["keys"]
    used = (m["redis_used_memory_after"] - m["redis_used_memory_before"]) / m["keys"]
    print()
    print(f"(7) memory per entry, {m['keys']} keys of {m['value_bytes']} bytes (ΔRSS / keys):")
    table(("system", "RSS before MiB", "RSS after MiB", "B/entry"), [
        ("kv-server", f"{m['kv_rss_before_kb'] / 1024:.1f}", f"{m['kv_rss_after_kb'] / 1024:.1f}", f"{kv:.0f}"),
        ("Redis", f"{m['redis_rss_before_kb'] / 1024:.1f}", f"{m['redis_rss_after_kb'] / 1024:.1f}", f"{redis:.0f}"),
        ("Redis used_memory", "-", "-", f"{used:.0f}"),
    ])
    print(f"kv / Redis (RSS): {kv / redis:.2f}x" if redis > 0 else "kv / Redis: -")

restarts = runs("8-restart")
if restarts:
    def med(name):
        values = [r[name] for r in restarts if isinstance(r.get(name), (int, float))]
        return (f"{statistics.median(values):.0f} ({', '.join(str(v) for v in values)})"
                if values else "-")
    print()
    print(f"(8) restart with {restarts[0].get('keys', '?')} keys, ms, medians (runs):")
    table(("spawn -> serving", "recovery (logged)", "index (logged)", "SIGTERM -> exit"),
          [(med("serving_ms"), med("recovered_ms"), med("index_ms"), med("stop_ms"))])
    misses = sum(r.get("get_misses", 0) for r in restarts)
    if misses:
        print(f"WARNING: {misses} Get(s) of a preloaded key missed after a restart")

expiry_rows = []
for case, title in [("spread", "spread deadlines"), ("once", "all due at once")]:
    path = os.path.join(out, f"9-expiry-{case}.json")
    if not os.path.exists(path):
        continue
    r = json.load(open(path))
    if "error" in r:
        expiry_rows.append((title, r["spread_ms"], "-", "-", "-", "-", "-", "FAILED: " + r["error"]))
        continue
    lag = r["lag_ms"]
    expiry_rows.append((title, r["spread_ms"], f"{r['expired']}/{r['keys']}", r["missing"],
                        lag["p50"], lag["p99"], lag["max"], f"{r['written_in_s']:.1f}"))
if expiry_rows:
    print()
    print("(9) expiry lag, ms after the deadline (target: p99 <= 1000):")
    table(("case", "spread ms", "expired", "missing", "p50", "p99", "max", "written in s"), expiry_rows)

half_rows = []
for op in ["get", "set"]:
    for key, name in [("sdk", "kv SDK"), ("redis", "Redis mux")]:
        peak, half = runs(f"10-{op}-{key}-peak"), runs(f"10-{op}-{key}-half")
        if not peak or not half:
            continue
        m = lambda rs, f: statistics.median(metric(r, f) for r in rs)
        errors = sum(r["errors"] for r in peak + half)
        half_rows.append((op, name, fmt(m(peak, "ops_per_sec")), fmt(m(half, "rate")),
                          fmt(m(half, "ops_per_sec")), f"{m(half, 'latency_us.p50'):.0f}",
                          f"{m(half, 'latency_us.p99'):.0f}", f"{m(half, 'latency_us.p999'):.0f}",
                          errors or ""))
mixed = runs("11-mixed")
if mixed:
    print()
    print("(11) mixed run, --fsync always, µs (target: max <= 50000):")
    table(("run", "ops/s", "p50", "p99", "p999", "max", "snapshots", "slow calls", "errors"),
          [(i + 1, fmt(r["ops_per_sec"]), r["latency_us"]["p50"], r["latency_us"]["p99"],
            r["latency_us"]["p999"], r["latency_us"]["max"], r.get("snapshots", "-"),
            (r.get("slow") or {}).get("count", "-"), r["errors"]) for i, r in enumerate(mixed)])

if half_rows:
    print()
    print(f"(10) open loop at half of the closed-loop peak, {conc} tasks, medians, µs:")
    table(("op", "system", "peak ops/s", "asked ops/s", "achieved", "p50", "p99", "p999", "errors"), half_rows)
EOF
if wants 6; then
    echo "chart: $CHART"
fi
echo "results: $OUT_DIR"
