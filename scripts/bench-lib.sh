# Helpers the benchmark scripts share; sourced, not run. The caller sets
# BENCH (the kv-bench binary), KEYS, VALUE_BYTES, OUT_DIR and a PIDS array
# of the processes it started.

die() {
    echo "error: $*" >&2
    exit 1
}

# free_port: a port free on 127.0.0.1 now.
free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# listening_addr LOG PID: the address a kv-server (or the reference
# server) logs once it listens; dies if it exits first or takes over 60 s.
listening_addr() {
    local log=$1 pid=$2 i
    for ((i = 0; i < 600; i++)); do
        if grep -q "listening on " "$log" 2>/dev/null; then
            grep -m 1 -o 'listening on [0-9.:]*' "$log" | sed 's/listening on //'
            return
        fi
        kill -0 "$pid" 2>/dev/null || die "server exited; log: $(cat "$log")"
        sleep 0.1
    done
    die "server did not report its address; log: $(cat "$log")"
}

# stop_all: stops every process this script started (PIDS).
stop_all() {
    local pid
    for pid in "${PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
}

# cleanup: the scripts' exit trap: stops what they started and removes
# their scratch directory WORK.
cleanup() {
    stop_all
    rm -rf "$WORK"
}

# stop PID: stops a process this script started and forgets it.
stop() {
    local pid kept=()
    kill "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
    for pid in "${PIDS[@]}"; do
        [[ $pid == "$1" ]] || kept+=("$pid")
    done
    PIDS=("${kept[@]}")
}

# preload NAME ARGS...: writes the key space (then 1 s of gets, which must
# all hit).
preload() {
    local name=$1
    shift
    "$BENCH" run "$@" --keys "$KEYS" --value-bytes "$VALUE_BYTES" --workload get --preload \
        --concurrency 8 --duration 1s --warmup 0s --json "$OUT_DIR/preload-$name.json" \
        >/dev/null 2>"$OUT_DIR/preload-$name.log" || {
        cat "$OUT_DIR/preload-$name.log" >&2
        die "preloading $name failed"
    }
    python3 - "$OUT_DIR/preload-$name.json" "$name" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
note = "" if r["misses"] == 0 and r["errors"] == 0 else f"  WARNING: {r['misses']} misses, {r['errors']} errors after the preload"
print(f"   preloaded {sys.argv[2]}: {r['keys']} keys in {r['preload_s']:.2f} s{note}")
PY
}
