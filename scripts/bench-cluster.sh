#!/usr/bin/env bash
# kv's Redis Cluster backend against the same cluster driven directly, with
# one load generator (kv-bench) for both, on this machine.
#
# Starts, on free 127.0.0.1 ports in a temporary directory: a real Redis
# Cluster of 6 redis-server processes (3 masters, 3 replicas; cluster mode,
# --appendonly yes --appendfsync everysec --save ''), joined with
# `redis-cli --cluster create ... --cluster-replicas 1 --cluster-yes`, and
# waits until every node says cluster_state:ok with every slot served,
# every replica's link to its master is up, and every node's CLUSTER NODES
# shows the 3 replicas (a front-end decides its default
# --redis-wait-replicas from one node's view). Then two kv-server
# front-ends (A and B) on it, `--backend redis-cluster --redis-url <every
# node>`, with the default --redis-wait-replicas, checked to be 1 in their
# logs. Preloads the key space twice (plain keys for the direct runs, kv
# project `bench` through front-end A for the kv runs; the whole project
# is one hash slot, so one master), then runs, RUNS times, alternating the
# systems back to back, and prints medians and ratios:
#
#   1. get, set and mixed (MIX) single-key operations, CONCURRENCY in flight:
#      (a) redis-cluster: plain GET/SET through the redis crate's cluster
#          client (one multiplexed connection per node), on the same cluster;
#      (b) kv SDK through front-end A (one connection);
#      (c) kv SDK through both front-ends (`--url http://A,http://B`: the
#          callers spread round-robin, one connection per front-end).
#      Ratios kv 1 front-end / redis-cluster, kv 2 front-ends /
#      redis-cluster, and 2 / 1 front-ends, of the medians and run by run.
#   2. What waiting for a replica costs: kv SDK sets through front-end A
#      (--redis-wait-replicas 1, the default) and through a third front-end
#      W0 started with --redis-wait-replicas 0, alternating.
#   3. kv gets through front-end A by how the calls arrive: the SDK's one
#      Pipeline stream, 4 of them (--connections 4), and unary calls.
#
# Each run also records, over its whole length (warm-up included), the CPU
# each process used (/proc; kv-bench's from the shell's `times`) and the commands the master holding kv's
# project served (INFO commandstats: FCALL, WAIT, GET, SET), so the
# summary says where the cores went and how writes were grouped.
#
# Everything runs on this one machine: the 6 redis-servers, the front-ends
# and kv-bench share its cores, so the figures say what this machine does,
# not what a cluster of separate machines would.
#
# Usage:
#   scripts/bench-cluster.sh
#   KEYS=10000 DURATION=2s WARMUP=500ms RUNS=1 scripts/bench-cluster.sh
#
# Environment (defaults in brackets):
#   KEYS [100000]           key space; preloaded for the gets
#   DURATION [5s]           measured time of each run
#   WARMUP [1s]             warm-up before each run
#   RUNS [3]                repetitions; medians are reported
#   CONCURRENCY [50]        operations in flight
#   VALUE_BYTES [100]       value size
#   MIX [get=80,set=20]     ratios of the mixed workload
#   WORKLOADS ["get set mixed"]  which workloads section 1 runs
#   WAIT_COST [1]           0 skips section 2
#   STREAMS [1]             0 skips section 3
#   SERVER_WORKERS [1]      tokio workers of each kv-server front-end
#   CLIENT_THREADS [1]      tokio workers of kv-bench
#   OUT_DIR [target/bench-cluster/<date>]  result JSON files and logs (kept)
#   NO_BUILD [unset]        set to 1 to skip `cargo build --release`
#
# Redis executes commands on one thread per node. Everything started here
# is stopped on exit, and the cluster's directory is removed (the nodes'
# logs are copied to OUT_DIR first).
set -euo pipefail
cd "$(dirname "$0")/.."

KEYS=${KEYS:-100000}
DURATION=${DURATION:-5s}
WARMUP=${WARMUP:-1s}
RUNS=${RUNS:-3}
CONCURRENCY=${CONCURRENCY:-50}
VALUE_BYTES=${VALUE_BYTES:-100}
MIX=${MIX:-get=80,set=20}
WORKLOADS=${WORKLOADS:-"get set mixed"}
WAIT_COST=${WAIT_COST:-1}
STREAMS=${STREAMS:-1}
SERVER_WORKERS=${SERVER_WORKERS:-1}
CLIENT_THREADS=${CLIENT_THREADS:-1}
OUT_DIR=${OUT_DIR:-target/bench-cluster/$(date +%Y%m%d-%H%M%S)}
TARGET_DIR=${CARGO_TARGET_DIR:-target}
# die, free_port, listening_addr, stop, preload.
source scripts/bench-lib.sh
NODES=6

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

mkdir -p "$OUT_DIR"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/kv-bench-cluster.XXXXXX")
PIDS=()
PORTS=()
NODE_PIDS=()

# bench-lib.sh's cleanup, keeping the nodes' logs.
cleanup() {
    local port
    stop_all
    for port in "${PORTS[@]}"; do
        cp "$WORK/node-$port/redis.log" "$OUT_DIR/redis-$port.log" 2>/dev/null || true
    done
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# cluster_ports N: N distinct free loopback ports whose cluster bus ports
# (port + 10000) are free too.
cluster_ports() {
    python3 - "$1" <<'EOF'
import socket, sys
def free(port):
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", port))
        return True
    except OSError:
        return False
    finally:
        s.close()
ports = []
while len(ports) < int(sys.argv[1]):
    s = socket.socket(); s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]; s.close()
    taken = {p for q in ports for p in (q, q + 10000)}
    if port + 10000 < 65536 and port not in taken and port + 10000 not in taken and free(port + 10000):
        ports.append(port)
print(" ".join(map(str, ports)))
EOF
}

# info_field PORT SECTION FIELD: one field of a node's INFO (or CLUSTER INFO
# when SECTION is "cluster-info").
info_field() {
    local reply
    if [[ $2 == cluster-info ]]; then
        reply=$(redis-cli -p "$1" cluster info 2>/dev/null) || return 0
    else
        reply=$(redis-cli -p "$1" info "$2" 2>/dev/null) || return 0
    fi
    tr -d '\r' <<<"$reply" | awk -F: -v f="$3" '$1 == f { print $2 }'
}

# What is wrong with the cluster now (empty when every node says
# cluster_state:ok with all slots served and knows all nodes, there are 3
# masters, and every replica's link is up).
cluster_problem() {
    local port masters=0 replicas=0
    for port in "${PORTS[@]}"; do
        [[ $(info_field "$port" cluster-info cluster_state) == ok ]] ||
            { echo "127.0.0.1:$port: cluster_state is not ok"; return; }
        [[ $(info_field "$port" cluster-info cluster_slots_ok) == 16384 ]] ||
            { echo "127.0.0.1:$port: not every slot is ok"; return; }
        [[ $(info_field "$port" cluster-info cluster_known_nodes) == "$NODES" ]] ||
            { echo "127.0.0.1:$port: does not know all $NODES nodes yet"; return; }
        case $(info_field "$port" replication role) in
        master) masters=$((masters + 1)) ;;
        slave)
            replicas=$((replicas + 1))
            [[ $(info_field "$port" replication master_link_status) == up ]] ||
                { echo "127.0.0.1:$port: replica link is not up"; return; }
            ;;
        *) echo "127.0.0.1:$port: no role"; return ;;
        esac
    done
    ((masters == NODES / 2 && replicas == NODES / 2)) || { echo "$masters masters and $replicas replicas"; return; }
    # Every node's view must show the replicas as replicas too: right after
    # `--cluster create` gossip still lists them as masters without slots
    # for a few seconds, and a front-end starting then (it asks one node's
    # CLUSTER NODES) would find no replica and default to
    # --redis-wait-replicas 0.
    for port in "${PORTS[@]}"; do
        replicas=$(redis-cli -p "$port" cluster nodes 2>/dev/null | awk '$3 ~ /slave/' | wc -l)
        ((replicas == NODES / 2)) || { echo "127.0.0.1:$port: sees $replicas replicas in CLUSTER NODES"; return; }
    done
}

start_cluster() {
    local port i problem addrs=()
    read -r -a PORTS <<<"$(cluster_ports "$NODES")"
    for port in "${PORTS[@]}"; do
        mkdir -p "$WORK/node-$port"
        # --repl-diskless-sync-delay 0: a replica's first sync starts at
        # once instead of after 5 s.
        (cd "$WORK/node-$port" && exec redis-server --port "$port" --bind 127.0.0.1 \
            --cluster-enabled yes --cluster-config-file nodes.conf \
            --appendonly yes --appendfsync everysec --save '' \
            --repl-diskless-sync-delay 0 --dir . --logfile redis.log) &
        PIDS+=($!)
        NODE_PIDS+=($!)
        addrs+=("127.0.0.1:$port")
    done
    for port in "${PORTS[@]}"; do
        for ((i = 0; i < 100; i++)); do
            [[ $(redis-cli -p "$port" ping 2>/dev/null) == PONG ]] && break
            sleep 0.1
        done
        [[ $(redis-cli -p "$port" ping 2>/dev/null) == PONG ]] ||
            die "redis-server on $port did not start: $(tail -n 20 "$WORK/node-$port/redis.log")"
    done
    redis-cli --cluster create "${addrs[@]}" --cluster-replicas 1 --cluster-yes \
        >"$OUT_DIR/cluster-create.log" 2>&1 || die "redis-cli --cluster create failed: $(cat "$OUT_DIR/cluster-create.log")"
    local start=$SECONDS
    for ((i = 0; i < 600; i++)); do
        problem=$(cluster_problem)
        [[ -z $problem ]] && break
        sleep 0.1
    done
    [[ -z $problem ]] || die "the cluster did not settle within 60 s: $problem"
    SEEDS=$(printf 'redis://%s,' "${addrs[@]}")
    SEEDS=${SEEDS%,}
    echo "   cluster: ${#PORTS[@]} nodes (3 masters, 3 replicas) on ${addrs[*]}; AOF everysec;" \
        "settled $((SECONDS - start)) s after create"
}

# start_frontend NAME [FLAGS...]: a kv-server front-end on the cluster;
# sets FE_ADDR.
start_frontend() {
    local name=$1 log=$OUT_DIR/frontend-$1.log port
    shift
    port=$(free_port)
    "$KV_SERVER" --backend redis-cluster --redis-url "$SEEDS" --listen "127.0.0.1:$port" \
        --worker-threads "$SERVER_WORKERS" "$@" 2>"$log" &
    PIDS+=($!)
    FE_ADDR=$(listening_addr "$log" $!)
    echo "   front-end $name: kv-server --backend redis-cluster --worker-threads $SERVER_WORKERS $*${*:+ }on $FE_ADDR"
}

# CPU accounting: the processes watched (name and pid), sampled before and
# after each run from /proc (utime + stime of each, and the machine's busy
# and total ticks), so every run also says where the cores went.
CPU_NAMES=()
CPU_PIDS=()
watch_cpu() {
    CPU_NAMES+=("$1")
    CPU_PIDS+=("$2")
}

# One line: machine busy ticks, machine total ticks, then name=ticks for
# every watched process (comm has no spaces here, so fields 14 and 15 are
# utime and stime).
cpu_sample() {
    local i line=""
    read -r _ user nice system idle iowait irq softirq steal _ </proc/stat
    line="$((user + nice + system + irq + softirq + steal)) $((user + nice + system + idle + iowait + irq + softirq + steal))"
    for i in "${!CPU_PIDS[@]}"; do
        line+=" ${CPU_NAMES[i]}=$(awk '{ print $14 + $15 }' "/proc/${CPU_PIDS[i]}/stat" 2>/dev/null || echo 0)"
    done
    echo "$line"
}

# cpu_json FILE BEFORE AFTER TIMES_BEFORE TIMES_AFTER: each watched
# process's and kv-bench's share of one core (100 = one core busy) over the
# run (warm-up included), and the machine's busy share from /proc/stat
# (kept in the JSON only: with many short bursts between idle periods this
# VM's tick-based count came out below the processes' own sum).
cpu_json() {
    python3 - "$@" "$(nproc)" <<'PY'
import json, os, re, sys
path, before, after = sys.argv[1], sys.argv[2].split(), sys.argv[3].split()
def children(f):
    # `times`, second line: the reaped children's user and system time.
    line = open(f).read().splitlines()[1]
    return sum(int(m) * 60 + float(s) for m, s in re.findall(r"(\d+)m([\d.]+)s", line))
bench_s = children(sys.argv[5]) - children(sys.argv[4])
cores = int(sys.argv[6])
busy, total = int(after[0]) - int(before[0]), int(after[1]) - int(before[1])
b = dict(f.split("=") for f in before[2:])
a = dict(f.split("=") for f in after[2:])
# total counts every core's ticks: per-core-seconds of the window.
window = total / cores if total else 1
out = {"machine_busy_pct": 100 * cores * busy / total if total else 0, "cores": cores,
       "window_s": window / os.sysconf("SC_CLK_TCK")}
for name in a:
    out[name] = 100 * (float(a[name]) - float(b.get(name, 0))) / window
out["kv-bench"] = 100 * bench_s / out["window_s"]
json.dump(out, open(path, "w"))
PY
}

# Command counts on the master holding kv's project (KV_MASTER_PORT), from
# INFO commandstats: FCALL (calls, µs inside Redis), WAIT and GET/SET calls.
# Per kv write group a front-end sends FCALL kv_snapshot, FCALL kv_apply,
# WAIT and FCALL kv_confirm (no WAIT or confirm when it waits for no
# replica); a group that lost a race with the other front-end is read and
# applied again (2 more FCALLs). So on a set run with wait 1, WAIT calls
# count the groups and (FCALLs - 3 WAITs) / 2 the repeated evaluations.
redis_sample() {
    [[ -n ${KV_MASTER_PORT:-} ]] || return 0
    redis-cli -p "$KV_MASTER_PORT" info commandstats | tr -d '\r' |
        awk -F'[:,=]' '/^cmdstat_(fcall|wait|get|set):/ { printf "%s_calls=%s %s_usec=%s ", $1, $3, $1, $5 }'
}

# redis_json FILE BEFORE AFTER: the differences, as JSON.
redis_json() {
    python3 - "$@" <<'PY'
import json, sys
parse = lambda s: {k: float(v) for k, v in (f.split("=") for f in s.split())}
b, a = parse(sys.argv[2]), parse(sys.argv[3])
json.dump({k.replace("cmdstat_", ""): a[k] - b.get(k, 0) for k in a}, open(sys.argv[1], "w"))
PY
}

COMMON=(--keys "$KEYS" --value-bytes "$VALUE_BYTES" --threads "$CLIENT_THREADS"
    --duration "$DURATION" --warmup "$WARMUP" --concurrency "$CONCURRENCY")

# bench NAME LABEL ARGS...: one measured run into $OUT_DIR/NAME.json; prints
# its table row.
bench() {
    local name=$1 label=$2 before after redis_before
    shift 2
    before=$(cpu_sample)
    redis_before=$(redis_sample)
    # The shell's reaped children's CPU just around kv-bench (`times` is a
    # builtin: no other child runs in between) is kv-bench's CPU.
    times >"$WORK/times-before"
    if ! "$BENCH" run "${COMMON[@]}" "$@" --label "$label" --json "$OUT_DIR/$name.json" \
        >"$OUT_DIR/$name.txt" 2>"$OUT_DIR/$name.log"; then
        cat "$OUT_DIR/$name.log" >&2
        die "run $name failed"
    fi
    times >"$WORK/times-after"
    after=$(cpu_sample)
    cpu_json "$OUT_DIR/$name.cpu.json" "$before" "$after" "$WORK/times-before" "$WORK/times-after"
    redis_json "$OUT_DIR/$name.redis.json" "$redis_before" "$(redis_sample)"
    if [[ -z ${HEADER_SHOWN:-} ]]; then
        printf '   %-18s %s\n' "run" "$(sed -n 1p "$OUT_DIR/$name.txt")"
        HEADER_SHOWN=1
    fi
    printf '   %-18s %s\n' "$name" "$(sed -n 2p "$OUT_DIR/$name.txt")"
}

echo "== setup: $(nproc) cores, shared by every process below; KEYS=$KEYS VALUE_BYTES=$VALUE_BYTES" \
    "DURATION=$DURATION WARMUP=$WARMUP RUNS=$RUNS CONCURRENCY=$CONCURRENCY"
echo "   front-end workers: $SERVER_WORKERS each; client threads: $CLIENT_THREADS; $(redis-server --version | cut -d' ' -f1-3)"
echo "   results: $OUT_DIR"
start_cluster
# Every key of kv project `bench` carries the hash tag {bench}: one slot.
slot=$(redis-cli -p "${PORTS[0]}" cluster keyslot bench | tr -d '\r')
owner=$(redis-cli -p "${PORTS[0]}" cluster nodes | tr -d '\r' | awk -v s="$slot" '
    $3 ~ /master/ { for (i = 9; i <= NF; i++) { n = split($i, r, "-"); lo = r[1]; hi = (n == 2 ? r[2] : r[1]);
        if (s + 0 >= lo + 0 && s + 0 <= hi + 0) { sub(/@.*/, "", $2); print $2 } } }')
echo "   kv project bench: slot $slot, on master $owner (all its keys; the direct runs' keys spread over 3 masters)"
KV_MASTER_PORT=${owner##*:}
for i in "${!PORTS[@]}"; do
    if [[ 127.0.0.1:${PORTS[i]} == "$owner" ]]; then
        watch_cpu redis-kv-master "${NODE_PIDS[i]}"
    elif [[ $(info_field "${PORTS[i]}" replication role) == master ]]; then
        watch_cpu "redis-master-${PORTS[i]}" "${NODE_PIDS[i]}"
    else
        watch_cpu "redis-replica-${PORTS[i]}" "${NODE_PIDS[i]}"
    fi
done
start_frontend A
FE_A=$FE_ADDR
watch_cpu frontend-A "${PIDS[-1]}"
start_frontend B
FE_B=$FE_ADDR
watch_cpu frontend-B "${PIDS[-1]}"
for fe in A B; do
    waits=$(grep -m 1 -o 'wait_replicas=[0-9]*' "$OUT_DIR/frontend-$fe.log" | cut -d= -f2 || true)
    [[ $waits == 1 ]] || die "front-end $fe waits for ${waits:-?} replicas, not 1 (the default with replicas)"
done
echo "   front-ends A and B: --redis-wait-replicas defaulted to 1 (logged wait_replicas=1)"

RC=(--target redis-cluster --url "$SEEDS")
KV1=(--target sdk --url "http://$FE_A")
KV2=(--target sdk --url "http://$FE_A,http://$FE_B")
preload redis-cluster "${RC[@]}"
preload kv "${KV1[@]}"

# aof_rewrites PORT: background AOF rewrites the node has logged so far.
aof_rewrites() {
    grep -c 'Background append only file rewriting started' "$WORK/node-$1/redis.log" || true
}
declare -A REWRITES_BEFORE
for port in "${PORTS[@]}"; do
    REWRITES_BEFORE[$port]=$(aof_rewrites "$port")
done

for ((run = 1; run <= RUNS; run++)); do
    echo "== (1) redis-cluster direct vs kv through 1 and 2 front-ends, $CONCURRENCY in flight: run $run of $RUNS"
    for op in $WORKLOADS; do
        args=(--workload "$op")
        [[ $op == mixed ]] && args+=(--mix "$MIX")
        bench "$op-rc-r$run" "redis-cluster direct" "${RC[@]}" "${args[@]}"
        bench "$op-kv1-r$run" "kv SDK, 1 front-end" "${KV1[@]}" "${args[@]}"
        bench "$op-kv2-r$run" "kv SDK, 2 front-ends" "${KV2[@]}" "${args[@]}"
    done
done

if [[ $WAIT_COST == 1 ]]; then
    echo "== (2) kv SDK sets through one front-end: --redis-wait-replicas 1 (A) vs 0 (W0)"
    start_frontend W0 --redis-wait-replicas 0
    FE_W0=$FE_ADDR
    FE_W0_PID=${PIDS[-1]}
    watch_cpu frontend-W0 "$FE_W0_PID"
    grep -q 'wait_replicas=0' "$OUT_DIR/frontend-W0.log" || die "front-end W0 does not log wait_replicas=0"
    for ((run = 1; run <= RUNS; run++)); do
        echo "   run $run of $RUNS"
        bench "wait1-r$run" "kv SDK set, wait 1" --target sdk --url "http://$FE_A" --workload set
        bench "wait0-r$run" "kv SDK set, wait 0" --target sdk --url "http://$FE_W0" --workload set
    done
    stop "$FE_W0_PID"
fi

if [[ $STREAMS == 1 ]]; then
    echo "== (3) kv gets through front-end A by how the calls arrive: 1 SDK stream, 4 SDK streams, unary calls"
    for ((run = 1; run <= RUNS; run++)); do
        echo "   run $run of $RUNS"
        bench "reads-sdk1-r$run" "kv SDK get, 1 connection" "${KV1[@]}" --workload get
        bench "reads-sdk4-r$run" "kv SDK get, 4 connections" "${KV1[@]}" --workload get --connections 4
        bench "reads-unary-r$run" "kv unary get, 1 connection" --target unary --url "http://$FE_A" --workload get
    done
fi

echo
echo "== front-end warnings (besides open mode) and Redis background rewrites during the runs"
for log in "$OUT_DIR"/frontend-*.log; do
    n=$(grep -E 'WARN|ERROR' "$log" | grep -c -v 'open mode' || true)
    echo "   $(basename "$log" .log): $n warning/error line(s)"
    grep -E 'WARN|ERROR' "$log" | grep -v 'open mode' | sed -E 's/^[^ ]+ +//' | sort | uniq -c | sort -rn |
        head -n 5 | sed 's/^/      /' || true
done
for port in "${PORTS[@]}"; do
    n=$(($(aof_rewrites "$port") - REWRITES_BEFORE[$port]))
    role=$(info_field "$port" replication role)
    used=$(info_field "$port" memory used_memory_human)
    keys=$(redis-cli -p "$port" dbsize | tr -d '\r')
    echo "   127.0.0.1:$port ($role): $n AOF rewrite(s) during the runs; $keys keys, used_memory $used"
done

echo
echo "== summary: medians of $RUNS run(s) (each run in brackets)"
python3 - "$OUT_DIR" "$WORKLOADS" "$CONCURRENCY" "$MIX" <<'EOF'
import glob, json, os, re, statistics, sys

out, workloads, conc, mix = sys.argv[1], sys.argv[2].split(), sys.argv[3], sys.argv[4]

def files(prefix, suffix):
    """prefix-r<N><suffix>, in run order."""
    found = (f for f in glob.glob(os.path.join(out, f"{prefix}-r*{suffix}"))
             if re.fullmatch(r"\d+", os.path.basename(f)[len(prefix) + 2:-len(suffix)]))
    return [json.load(open(f)) for f in sorted(found, key=lambda f: int(os.path.basename(f)[len(prefix) + 2:-len(suffix)]))]

def runs(prefix):
    return files(prefix, ".json")

def fmt(x):
    return f"{x / 1000:.1f}k" if x >= 10000 else f"{x:.0f}"

def table(headers, rows):
    widths = [max(len(str(r[i])) for r in rows + [headers]) for i in range(len(headers))]
    for r in [headers] + rows:
        print("  ".join(str(v).ljust(w) for v, w in zip(r, widths)).rstrip())

def errors(rs):
    kinds = {}
    for r in rs:
        for k, n in r.get("errors_by_kind", {}).items():
            kinds[k] = kinds.get(k, 0) + n
    return ", ".join(f"{k} {n}" for k, n in sorted(kinds.items())) or "0"

def cell(rs):
    ops = [r["ops_per_sec"] for r in rs]
    p50 = statistics.median(r["latency_us"]["p50"] for r in rs)
    p99 = statistics.median(r["latency_us"]["p99"] for r in rs)
    return (f"{fmt(statistics.median(ops))} ({', '.join(fmt(v) for v in ops)})", f"{p50:.0f}", f"{p99:.0f}",
            errors(rs), sum(r["misses"] for r in rs))

def ratio(a, b):
    """Ratio of the medians, then the ratio run by run (same run)."""
    if not a or not b:
        return "-"
    ma = statistics.median(r["ops_per_sec"] for r in a)
    mb = statistics.median(r["ops_per_sec"] for r in b)
    each = [x["ops_per_sec"] / y["ops_per_sec"] for x, y in zip(a, b) if y["ops_per_sec"]]
    return f"{ma / mb:.2f}x ({', '.join(f'{v:.2f}' for v in each)})" if mb else "-"

systems = [("rc", "redis-cluster direct"), ("kv1", "kv SDK, 1 front-end"), ("kv2", "kv SDK, 2 front-ends")]
rows, ratios = [], []
for op in workloads:
    name = f"mixed {mix}" if op == "mixed" else op
    found = {key: runs(f"{op}-{key}") for key, _ in systems}
    for key, label in systems:
        if found[key]:
            rows.append((name, label, *cell(found[key])))
    ratios.append((name, ratio(found["kv1"], found["rc"]), ratio(found["kv2"], found["rc"]),
                   ratio(found["kv2"], found["kv1"])))
if rows:
    print(f"(1) {conc} in flight; latency in µs (medians of the runs' p50 and p99):")
    table(("workload", "system", "ops/s median (runs)", "p50", "p99", "errors", "misses"), rows)
    print()
    print("ratios of the medians (run by run, same run):")
    table(("workload", "kv 1 FE / redis-cluster", "kv 2 FE / redis-cluster", "kv 2 FE / 1 FE"), ratios)

w1, w0 = runs("wait1"), runs("wait0")
if w1 and w0:
    print()
    print(f"(2) kv SDK sets through one front-end, {conc} in flight:")
    table(("--redis-wait-replicas", "ops/s median (runs)", "p50", "p99", "errors", "misses"),
          [("1 (default)", *cell(w1)), ("0", *cell(w0))])
    print(f"wait 1 / wait 0: {ratio(w1, w0)}")

streams = [("reads-sdk1", "SDK, 1 stream"), ("reads-sdk4", "SDK, 4 streams (--connections 4)"),
           ("reads-unary", "unary calls, 1 connection")]
stream_rows = [(label, *cell(runs(key))) for key, label in streams if runs(key)]
if stream_rows:
    print()
    print(f"(3) kv gets through one front-end, {conc} in flight, by how calls reach it:")
    table(("calls", "ops/s median (runs)", "p50", "p99", "errors", "misses"), stream_rows)
    if runs("reads-sdk1"):
        print(f"4 streams / 1 stream: {ratio(runs('reads-sdk4'), runs('reads-sdk1'))};"
              f" unary / 1 stream: {ratio(runs('reads-unary'), runs('reads-sdk1'))}")

def cpu(prefix):
    return files(prefix, ".cpu.json")

def cpu_row(samples):
    """Medians over the runs, in % of one core: every process started here
    together (of cores * 100), kv-bench, the front-ends, the master holding
    kv's project, the other masters, the replicas."""
    def med(f):
        return statistics.median(f(c) for c in samples)
    def total(c, pred):
        return sum(v for k, v in c.items() if pred(k))
    cores = samples[0]["cores"]
    everything = lambda c: total(c, lambda k: k.startswith(("frontend-", "redis-")) or k == "kv-bench")
    return (f"{med(everything):.0f} of {cores * 100}",
            f"{med(lambda c: c.get('kv-bench', 0)):.0f}",
            f"{med(lambda c: total(c, lambda k: k.startswith('frontend-'))):.0f}",
            f"{med(lambda c: c.get('redis-kv-master', 0)):.0f}",
            f"{med(lambda c: total(c, lambda k: k.startswith('redis-master-'))):.0f}",
            f"{med(lambda c: total(c, lambda k: k.startswith('redis-replica-'))):.0f}")

cpu_rows = []
for op in workloads:
    name = f"mixed {mix}" if op == "mixed" else op
    for key, label in systems:
        samples = cpu(f"{op}-{key}")
        if samples:
            cpu_rows.append((name, label, *cpu_row(samples)))
for key, label in [("wait1", "kv set, wait 1"), ("wait0", "kv set, wait 0"),
                   ("reads-sdk1", "kv get, 1 stream"), ("reads-sdk4", "kv get, 4 streams"),
                   ("reads-unary", "kv get, unary")]:
    samples = cpu(key)
    if samples:
        cpu_rows.append(("get" if key.startswith("reads") else "set", label, *cpu_row(samples)))
if cpu_rows:
    print()
    print("CPU over each run (warm-up included), medians; % of one core (100 = one core busy):")
    table(("workload", "system", "all processes", "kv-bench", "front-ends", "kv's master",
           "other 2 masters", "3 replicas"), cpu_rows)

ratios_of_mix = dict(part.split("=") for part in mix.split(","))
set_share = float(ratios_of_mix.get("set", 0)) / sum(float(v) for v in ratios_of_mix.values())

def side(prefix):
    return files(prefix, ".redis.json")

def redis_row(op, key, ops):
    """Commands on kv's master over each run, medians: µs per FCALL (or per
    GET/SET for the direct runs) inside Redis; WAITs/s (groups/s); writes
    per group; repeated evaluations per group (set runs waiting for 1)."""
    rs, cs = side(f"{op}-{key}" if key else op), cpu(f"{op}-{key}" if key else op)
    if not rs:
        return None
    med = statistics.median
    if key == "rc":
        cmds = {"get": ["get"], "set": ["set"]}.get(op, ["get", "set"])
        per = " / ".join(
            f"{med(r.get(c + '_usec', 0) / r[c + '_calls'] for r in rs if r.get(c + '_calls')):.1f} per {c.upper()}"
            for c in cmds)
        return (per, "-", "-", "-")
    calls = [r for r in rs if r.get("fcall_calls")]
    if not calls:
        return None
    per = med(r["fcall_usec"] / r["fcall_calls"] for r in calls)
    waits = [(r.get("wait_calls", 0), c["window_s"]) for r, c in zip(rs, cs)]
    if not any(w for w, _ in waits):
        return (f"{per:.1f} per FCALL", "-", "-", "-")
    groups = med(w / s for w, s in waits)
    share = {"set": 1.0, "wait1": 1.0, "wait0": 1.0, "mixed": set_share}.get(op, 0)
    size = f"~{med(o['ops_per_sec'] for o in ops) * share / groups:.0f}" if share and groups else "-"
    repeats = (f"{med((r['fcall_calls'] - 3 * r['wait_calls']) / (2 * r['wait_calls']) for r in rs if r.get('wait_calls')):.2f}"
               if op in ("set", "wait1") else "-")
    return (f"{per:.1f} per FCALL", f"{groups:.0f}", size, repeats)

redis_rows = []
for op in workloads:
    name = f"mixed {mix}" if op == "mixed" else op
    for key, label in systems:
        row = redis_row(op, key, runs(f"{op}-{key}"))
        if row:
            redis_rows.append((name, label, *row))
for key, label in [("wait1", "kv set, wait 1"), ("wait0", "kv set, wait 0")]:
    row = redis_row(key, None, runs(key))
    if row:
        redis_rows.append(("set", label, *row))
if redis_rows:
    print()
    print("On the master holding kv's project, over each run, medians (writes per group estimated from the"
          " client's ops/s; repeats: (FCALLs - 3 WAITs) / 2 WAITs, set runs waiting for 1 replica):")
    table(("workload", "system", "µs inside Redis", "WAITs/s = groups/s", "writes per group",
           "repeats per group"), redis_rows)
EOF
echo "results: $OUT_DIR"
