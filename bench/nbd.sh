#!/usr/bin/env bash
# bench/nbd.sh — fio (ioengine=nbd, TCP on loopback) against `nandbox serve` and `nbdkit memory`
# of the same size, in the same run, alternating which goes first, ROUNDS rounds; prints the
# median of each workload per server and the ratio nandbox / nbdkit (higher is better for nandbox).
#
#   bench/nbd.sh                    # 1 GiB devices, 3 rounds, 10 s per run
#   SIZE=512M ROUNDS=5 RUNTIME=20 bench/nbd.sh
#   EXTRA="--profile femu" bench/nbd.sh   # extra `nandbox serve` options
#   NANDBOX_BIN=/tmp/nandbox-main bench/nbd.sh   # a prebuilt binary (before/after comparisons)
#
# Workloads: 4k random write QD32, 4k random read QD32, 1M sequential write QD8, 1M sequential
# read QD8. Both devices are filled once with a sequential write first, so reads return data.
set -euo pipefail

SIZE=${SIZE:-1G}          # device size (fio and nbdkit syntax: 1G, 512M)
ROUNDS=${ROUNDS:-3}
RUNTIME=${RUNTIME:-10}    # seconds per fio run (plus 1 s ramp)
EXTRA=${EXTRA:-}

here=$(cd "$(dirname "$0")/.." && pwd)
for tool in fio nbdkit python3 cargo; do
    command -v "$tool" >/dev/null || { echo "bench/nbd.sh: $tool is not installed" >&2; exit 1; }
done
fio --enghelp 2>/dev/null | grep -qx $'\tnbd' || { echo "bench/nbd.sh: fio lacks the nbd engine" >&2; exit 1; }

if [ -n "${NANDBOX_BIN:-}" ]; then
    nandbox=$NANDBOX_BIN
else
    echo "building nandbox (release)..." >&2
    cargo build --release -q -p nandbox --manifest-path "$here/Cargo.toml"
    target=${CARGO_TARGET_DIR:-$here/target}
    nandbox=$target/release/nandbox
fi

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() {
    for _ in $(seq 1 300); do
        python3 -c "import socket,sys; socket.create_connection(('127.0.0.1',$1),1)" 2>/dev/null && return 0
        sleep 0.1
    done
    echo "bench/nbd.sh: nothing listening on port $1" >&2; exit 1
}

work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

size_bytes=$(python3 -c "s='$SIZE'.upper(); m={'K':1<<10,'M':1<<20,'G':1<<30}; print(int(s[:-1])*m[s[-1]] if s[-1] in m else int(s))")

p_nandbox=$(free_port)
# shellcheck disable=SC2086
"$nandbox" serve --listen "127.0.0.1:$p_nandbox" --control none --size "$size_bytes" $EXTRA \
    >"$work/nandbox.log" 2>&1 &
pids+=($!)
p_nbdkit=$(free_port)
nbdkit -f -i 127.0.0.1 -p "$p_nbdkit" memory "size=$size_bytes" >"$work/nbdkit.log" 2>&1 &
pids+=($!)
wait_port "$p_nandbox"
wait_port "$p_nbdkit"

declare -A uri=([nandbox]="nbd://127.0.0.1:$p_nandbox" [nbdkit]="nbd://127.0.0.1:$p_nbdkit")
# name: rw bs iodepth metric
workloads=(
    "randwrite-4k-qd32:randwrite:4k:32:iops"
    "randread-4k-qd32:randread:4k:32:iops"
    "seqwrite-1m-qd8:write:1M:8:bw"
    "seqread-1m-qd8:read:1M:8:bw"
)

run_fio() { # server rw bs iodepth runtime -> fio JSON file path
    local out="$work/$1-$2-$3-$RANDOM.json"
    fio --name=bench --ioengine=nbd --uri="${uri[$1]}" --rw="$2" --bs="$3" --iodepth="$4" \
        --size="$size_bytes" --time_based --runtime="$5" --ramp_time=1 --randrepeat=0 \
        --output-format=json --output="$out" >/dev/null
    echo "$out"
}

echo "filling both devices..." >&2
for s in nandbox nbdkit; do
    fio --name=fill --ioengine=nbd --uri="${uri[$s]}" --rw=write --bs=1M --iodepth=8 \
        --size="$size_bytes" --output="$work/fill-$s.txt" >/dev/null
done

results="$work/results.tsv"
: >"$results"
for round in $(seq 1 "$ROUNDS"); do
    if (( round % 2 )); then order=(nandbox nbdkit); else order=(nbdkit nandbox); fi
    for w in "${workloads[@]}"; do
        IFS=: read -r name rw bs qd metric <<<"$w"
        for s in "${order[@]}"; do
            f=$(run_fio "$s" "$rw" "$bs" "$qd" "$RUNTIME")
            v=$(python3 - "$f" "$rw" "$metric" <<'PY'
import json, sys
job = json.load(open(sys.argv[1]))["jobs"][0]
side = job["read" if "read" in sys.argv[2] else "write"]
assert job["error"] == 0, job["error"]
print(side["iops"] if sys.argv[3] == "iops" else side["bw"] / 1024.0)
PY
)
            printf '%s\t%s\t%s\t%s\n' "$round" "$name" "$s" "$v" >>"$results"
            echo "round $round  $name  $s: $v" >&2
        done
    done
done

python3 - "$results" "$SIZE" "$ROUNDS" "$RUNTIME" <<'PY'
import statistics, sys
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1])]
names = []
vals = {}
for _, name, server, v in rows:
    if name not in names:
        names.append(name)
    vals.setdefault((name, server), []).append(float(v))
print(f"fio ioengine=nbd over TCP loopback, {sys.argv[2]} devices, {sys.argv[3]} rounds x {sys.argv[4]} s, medians")
print(f"{'workload':<20} {'unit':<6} {'nandbox':>12} {'nbdkit memory':>14} {'ratio':>7}")
for name in names:
    unit = "IOPS" if "4k" in name else "MiB/s"
    a = statistics.median(vals[(name, "nandbox")])
    b = statistics.median(vals[(name, "nbdkit")])
    print(f"{name:<20} {unit:<6} {a:>12.0f} {b:>14.0f} {a / b:>6.2f}x")
PY
