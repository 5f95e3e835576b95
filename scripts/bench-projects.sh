#!/usr/bin/env bash
# What many projects cost kv-server: memory per idle project, and
# throughput when the key space is spread over many small projects.
#
#   1. Memory per idle project: a fresh kv-server (--fsync never, default
#      config, open mode: a project exists once a key is written to it);
#      resident memory (VmRSS) before and after writing one key into each
#      of IDLE_PROJECTS projects (`kv-bench run --projects N --keys N
#      --preload`, then 1 s of gets that must all hit), divided by
#      IDLE_PROJECTS. RUNS fresh servers. With KV_SERVER_B set, each run
#      also measures that binary right after (A/B against another build).
#   2. Many small projects: two fresh kv-servers holding MANY_KEYS keys,
#      one in a single project, the other spread over MANY_PROJECTS
#      projects (MANY_KEYS / MANY_PROJECTS keys each); kv SDK get and set,
#      CONCURRENCY in flight on one client, alternating the two servers,
#      RUNS times; medians and the many/one ratio.
#
# Usage:
#   scripts/bench-projects.sh
#   RUNS=5 SECTIONS=1 KV_SERVER_B=../base/target/release/kv-server scripts/bench-projects.sh
#   MANY_KEYS=100000 MANY_PROJECTS=10000 DURATION=2s SECTIONS=2 scripts/bench-projects.sh
#
# Environment (defaults in brackets):
#   IDLE_PROJECTS [20000]     section 1: projects, one key each
#   IDLE_VALUE_BYTES [8]      section 1: value size (encoded google.protobuf.Value)
#   MANY_KEYS [1000000]       section 2: keys on each server
#   MANY_PROJECTS [100000]    section 2: projects of the spread server
#   KEY_BYTES [16]            key length
#   VALUE_BYTES [100]         section 2: value size
#   DURATION [5s]             section 2: measured time of each run
#   WARMUP [1s]               section 2: warm-up before each run
#   RUNS [3]                  repetitions; medians are reported
#   CONCURRENCY [50]          section 2: operations in flight
#   SERVER_WORKERS [1]        tokio workers of kv-server
#   CLIENT_THREADS [1]        tokio workers of kv-bench
#   SECTIONS ["1 2"]          which sections to run
#   KV_SERVER_B [unset]       section 1: a second kv-server binary, measured too
#   OUT_DIR [target/bench-projects/<date>]  result JSON files and logs (kept)
#   NO_BUILD [unset]          set to 1 to skip `cargo build --release`
set -euo pipefail
cd "$(dirname "$0")/.."

IDLE_PROJECTS=${IDLE_PROJECTS:-20000}
IDLE_VALUE_BYTES=${IDLE_VALUE_BYTES:-8}
MANY_KEYS=${MANY_KEYS:-1000000}
MANY_PROJECTS=${MANY_PROJECTS:-100000}
KEY_BYTES=${KEY_BYTES:-16}
VALUE_BYTES=${VALUE_BYTES:-100}
DURATION=${DURATION:-5s}
WARMUP=${WARMUP:-1s}
RUNS=${RUNS:-3}
CONCURRENCY=${CONCURRENCY:-50}
SERVER_WORKERS=${SERVER_WORKERS:-1}
CLIENT_THREADS=${CLIENT_THREADS:-1}
SECTIONS=${SECTIONS:-"1 2"}
KV_SERVER_B=${KV_SERVER_B:-}
OUT_DIR=${OUT_DIR:-target/bench-projects/$(date +%Y%m%d-%H%M%S)}
TARGET_DIR=${CARGO_TARGET_DIR:-target}
# die, free_port, listening_addr, stop.
source scripts/bench-lib.sh

command -v python3 >/dev/null || die "python3 is needed for free ports and the summary"
if [[ ${NO_BUILD:-} != 1 ]]; then
    echo "== building (release)"
    cargo build --release --locked -p kv-server -p kv-bench
fi
BENCH=$TARGET_DIR/release/kv-bench
KV_SERVER=${KV_SERVER:-$TARGET_DIR/release/kv-server}
[[ -x $BENCH && -x $KV_SERVER ]] || die "$BENCH or $KV_SERVER is missing"
[[ -z $KV_SERVER_B || -x $KV_SERVER_B ]] || die "KV_SERVER_B=$KV_SERVER_B is not an executable"

mkdir -p "$OUT_DIR"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/kv-bench-projects.XXXXXX")
PIDS=()
trap cleanup EXIT
trap 'exit 130' INT TERM

wants() {
    [[ " $SECTIONS " == *" $1 "* ]]
}

# start BINARY NAME: a fresh kv-server on a free port; sets ADDR and PID.
start() {
    local log=$WORK/$2.log
    "$1" --listen 127.0.0.1:0 --data-dir "$WORK/$2-data" --fsync never \
        --worker-threads "$SERVER_WORKERS" 2>"$log" &
    PID=$!
    PIDS+=("$PID")
    ADDR=$(listening_addr "$log" "$PID")
}

rss_kb() {
    awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"
}

# load NAME ADDR PROJECTS KEYS VALUE_BYTES: writes KEYS keys spread over
# PROJECTS projects, then 1 s of gets (which must all hit).
load() {
    "$BENCH" run --target sdk --addr "$2" --projects "$3" --keys "$4" --key-bytes "$KEY_BYTES" \
        --value-bytes "$5" --threads "$CLIENT_THREADS" --workload get --preload --concurrency 8 \
        --duration 1s --warmup 0s --json "$OUT_DIR/load-$1.json" >/dev/null 2>"$OUT_DIR/load-$1.log" || {
        cat "$OUT_DIR/load-$1.log" >&2
        die "loading $1 failed"
    }
    python3 - "$OUT_DIR/load-$1.json" "$1" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
if r["misses"] or r["errors"]:
    sys.exit(f"{sys.argv[2]}: {r['misses']} misses, {r['errors']} errors after the load")
PY
}

echo "== setup: $(nproc) cores; kv-server --fsync never --worker-threads $SERVER_WORKERS; kv-bench --threads $CLIENT_THREADS"
echo "   results: $OUT_DIR"

if wants 1; then
    echo "== (1) memory per idle project: $IDLE_PROJECTS projects, one key each (${KEY_BYTES}-byte key, ${IDLE_VALUE_BYTES}-byte value)"
    systems=("a:$KV_SERVER")
    [[ -n $KV_SERVER_B ]] && systems+=("b:$KV_SERVER_B")
    for ((run = 1; run <= RUNS; run++)); do
        for system in "${systems[@]}"; do
            name=${system%%:*}
            start "${system#*:}" "idle-$name-r$run"
            # Let start-up work (the first snapshot, thread stacks) settle.
            sleep 0.5
            before=$(rss_kb "$PID")
            load "idle-$name-r$run" "$ADDR" "$IDLE_PROJECTS" "$IDLE_PROJECTS" "$IDLE_VALUE_BYTES"
            sleep 1
            after=$(rss_kb "$PID")
            stop "$PID"
            python3 - "$OUT_DIR/1-idle-$name-r$run.json" "$IDLE_PROJECTS" "$before" "$after" "${system#*:}" <<'PY'
import json, sys
path, n, before, after, binary = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
r = {"projects": n, "rss_before_kb": before, "rss_after_kb": after, "binary": binary,
     "bytes_per_project": (after - before) * 1024 / n}
json.dump(r, open(path, "w"))
print(f"   run {path.rsplit('-r', 1)[1][:-5]} {binary}: RSS {before / 1024:.1f} -> {after / 1024:.1f} MiB,"
      f" {r['bytes_per_project']:.0f} B/project")
PY
        done
    done
fi

if wants 2; then
    echo "== (2) $MANY_KEYS keys: 1 project vs $MANY_PROJECTS projects, kv SDK, $CONCURRENCY in flight"
    start "$KV_SERVER" many-one
    ONE=$ADDR
    load many-one "$ONE" 1 "$MANY_KEYS" "$VALUE_BYTES"
    start "$KV_SERVER" many-spread
    SPREAD=$ADDR
    load many-spread "$SPREAD" "$MANY_PROJECTS" "$MANY_KEYS" "$VALUE_BYTES"
    for ((run = 1; run <= RUNS; run++)); do
        for op in get set; do
            for system in "one:$ONE:1" "spread:$SPREAD:$MANY_PROJECTS"; do
                IFS=: read -r name host port projects <<<"$system"
                out=$OUT_DIR/2-$op-$name-r$run
                "$BENCH" run --target sdk --addr "$host:$port" --projects "$projects" --keys "$MANY_KEYS" \
                    --key-bytes "$KEY_BYTES" --value-bytes "$VALUE_BYTES" --threads "$CLIENT_THREADS" \
                    --workload "$op" --concurrency "$CONCURRENCY" --duration "$DURATION" --warmup "$WARMUP" \
                    --label "$name" --json "$out.json" >"$out.txt" 2>"$out.log" || {
                    cat "$out.log" >&2
                    die "run $out failed"
                }
                printf '   run %s %-4s %-7s %s\n' "$run" "$op" "$name" "$(sed -n 2p "$out.txt")"
            done
        done
    done
fi

echo
echo "== summary: medians of $RUNS run(s) (each run in brackets)"
python3 - "$OUT_DIR" <<'EOF'
import glob, json, os, statistics, sys
out = sys.argv[1]

def runs(prefix):
    files = sorted(glob.glob(os.path.join(out, prefix + "-r*.json")),
                   key=lambda f: int(f.rsplit("-r", 1)[1].split(".")[0]))
    return [json.load(open(f)) for f in files]

def fmt(values, unit=""):
    return f"{statistics.median(values):.0f}{unit} ({', '.join(f'{v:.0f}' for v in values)})"

idle = {name: runs(f"1-idle-{name}") for name in ("a", "b")}
if idle["a"]:
    print(f"(1) bytes per idle project (ΔRSS / {idle['a'][0]['projects']} projects):")
    for name, rs in idle.items():
        if rs:
            print(f"   {name}: {rs[0]['binary']}: {fmt([r['bytes_per_project'] for r in rs], ' B')}")
    if idle["b"]:
        a = statistics.median(r["bytes_per_project"] for r in idle["a"])
        b = statistics.median(r["bytes_per_project"] for r in idle["b"])
        print(f"   a / b: {a / b:.2f}x")
for op in ("get", "set"):
    one, spread = runs(f"2-{op}-one"), runs(f"2-{op}-spread")
    if one and spread:
        o = [r["ops_per_sec"] for r in one]
        s = [r["ops_per_sec"] for r in spread]
        errors = sum(r["errors"] for r in one + spread)
        note = f"  ({errors} errors!)" if errors else ""
        # Same-run ratios: run i of each, back to back.
        paired = [b / a for a, b in zip(o, s)]
        print(f"(2) {op}: 1 project {fmt(o, ' ops/s')}; {spread[0]['projects']} projects {fmt(s, ' ops/s')};"
              f" many/one {statistics.median(s) / statistics.median(o):.2f}x"
              f" (per run {', '.join(f'{p:.2f}' for p in paired)}){note}")
EOF
echo "results: $OUT_DIR"
