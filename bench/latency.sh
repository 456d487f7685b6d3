#!/usr/bin/env bash
# bench/latency.sh — does `nandbox serve --latency real` show the flash's speed?
#
# Two checks against the model, read from the device's own /stats (profile timings and dies):
#   1. fio 4k random write QD32 on a fresh device reaches the write bound
#      dies x page size / program time (the write buffer lets every die program at once);
#   2. fio 4k random read QD1 latency is the read time plus the channel transfer of the page.
# Both must land within ±15%. nbdkit's memory plugin runs the same fio jobs in the same run:
# it shows the host's ceiling for writes (the bound must be below it to be measurable) and the
# loopback NBD transport's own latency, which fio adds to any device's.
#
#   bench/latency.sh                      # tlc; write check on 1 and 2 dies; 10 s per run
#   DIES="1 2 4" RUNTIME=20 bench/latency.sh
#
# tlc has 32 dies, a 580 MB/s write bound that no loopback NBD client on a small machine
# reaches; DIES (default "1 2") lists the `serve --dies` values of the write check, so the flash,
# not the host, is the bottleneck and the bound is seen to scale with the dies. The read check
# uses the profile's own dies (QD1 keeps one busy at a time anyway).
set -euo pipefail

DIES=${DIES:-1 2}
RUNTIME=${RUNTIME:-10}
PROFILE=tlc

here=$(cd "$(dirname "$0")/.." && pwd)
for tool in fio nbdkit python3 cargo curl; do
    command -v "$tool" >/dev/null || { echo "bench/latency.sh: $tool is not installed" >&2; exit 1; }
done
fio --enghelp 2>/dev/null | grep -qx $'\tnbd' || { echo "bench/latency.sh: fio lacks the nbd engine" >&2; exit 1; }

echo "building nandbox (release)..." >&2
cargo build --release -q -p nandbox --manifest-path "$here/Cargo.toml"
target=${CARGO_TARGET_DIR:-$here/target}
nandbox=$target/release/nandbox

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() {
    for _ in $(seq 1 300); do
        python3 -c "import socket,sys; socket.create_connection(('127.0.0.1',$1),1)" 2>/dev/null && return 0
        sleep 0.1
    done
    echo "bench/latency.sh: nothing listening on port $1" >&2; exit 1
}

work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

# fio JOBNAME URI RW IODEPTH SIZE -> JSON file
run_fio() {
    local out="$work/$1.json"
    fio --name="$1" --ioengine=nbd --uri="$2" --rw="$3" --bs=4k --iodepth="$4" --size="$5" \
        --time_based --runtime="$RUNTIME" --ramp_time=1 --randrepeat=0 --lat_percentiles=1 \
        --output-format=json --output="$out" >/dev/null
    echo "$out"
}
fill() { # URI SIZE: sequential 1M writes, so reads hit flash
    fio --name=fill --ioengine=nbd --uri="$1" --rw=write --bs=1M --iodepth=8 --size="$2" \
        --output="$work/fill-$RANDOM.txt" >/dev/null
}
start_nandbox() { # NAME ARGS... ; sets nbd_port_NAME and ctl_port_NAME
    local name=$1; shift
    local p c
    p=$(free_port); c=$(free_port)
    "$nandbox" serve --listen "127.0.0.1:$p" --control "127.0.0.1:$c" "$@" >"$work/$name.log" 2>&1 &
    pids+=($!)
    wait_port "$p"
    printf -v "nbd_port_$name" '%s' "$p"
    printf -v "ctl_port_$name" '%s' "$c"
}

# --- reads: real latency on the profile's own dies; 64 MiB written first ----------------------
start_nandbox reads --profile "$PROFILE" --latency real --size 1GiB
# The same device with no latency model: the host's own floor (NBD, threads, FTL) for a read.
start_nandbox floor --profile "$PROFILE" --latency off --size 1GiB
kit_port=$(free_port)
nbdkit -f -i 127.0.0.1 -p "$kit_port" memory size=1G >"$work/nbdkit.log" 2>&1 &
pids+=($!)
wait_port "$kit_port"
echo "filling 64 MiB for the read check..." >&2
fill "nbd://127.0.0.1:$nbd_port_reads" 64M
fill "nbd://127.0.0.1:$nbd_port_floor" 64M
fill "nbd://127.0.0.1:$kit_port" 64M
echo "4k random read QD1, ${RUNTIME} s each..." >&2
r_nandbox=$(run_fio randread-nandbox "nbd://127.0.0.1:$nbd_port_reads" randread 1 64M)
r_kit=$(run_fio randread-nbdkit "nbd://127.0.0.1:$kit_port" randread 1 64M)
r_floor=$(run_fio randread-floor "nbd://127.0.0.1:$nbd_port_floor" randread 1 64M)
curl -sf "http://127.0.0.1:$ctl_port_reads/stats" >"$work/reads-stats.json"

# --- writes: a fresh 2 GiB device per dies count -----------------------------------------------
# Random writes over its first 256 MiB: the device never runs out of erased blocks in a run (no
# GC) and the mapping of the region fits the node cache, so NAND writes are the host's (WAF ~1)
# and the bound in host bytes is the bound in NAND bytes.
w_runs=()
for dies in $DIES; do
    start_nandbox "writes$dies" --profile "$PROFILE" --latency real --dies "$dies" --size 2GiB
    echo "4k random write QD32 on $dies dies, ${RUNTIME} s..." >&2
    port_var="nbd_port_writes$dies"; ctl_var="ctl_port_writes$dies"
    f=$(run_fio "randwrite-nandbox-$dies" "nbd://127.0.0.1:${!port_var}" randwrite 32 256M)
    curl -sf "http://127.0.0.1:${!ctl_var}/stats" >"$work/writes-$dies-stats.json"
    kill "${pids[-1]}"
    w_runs+=("$dies:$f")
done
echo "4k random write QD32 on nbdkit memory, ${RUNTIME} s..." >&2
w_kit=$(run_fio randwrite-nbdkit "nbd://127.0.0.1:$kit_port" randwrite 32 256M)

python3 - "$work" "$r_nandbox" "$r_kit" "$w_kit" "$RUNTIME" "$r_floor" "${w_runs[@]}" <<'PY'
import json, sys
work, r_nb, r_kit, w_kit, runtime, r_floor = sys.argv[1:7]
w_runs = [a.split(":", 1) for a in sys.argv[7:]]

def job(path, side):
    j = json.load(open(path))["jobs"][0]
    assert j["error"] == 0, (path, j["error"])
    return j[side]

def p50_us(side):
    return side["lat_ns"]["percentile"]["50.000000"] / 1000

reads = json.load(open(f"{work}/reads-stats.json"))
d = reads["device"]
spare = d["page_bytes"] // 4096 * 64
transfer_us = (d["page_bytes"] + spare) / d["channel_mb_s"]
read_model_us = d["read_ns"] / 1000 + transfer_us

rn, rk, rf = job(r_nb, "read"), job(r_kit, "read"), job(r_floor, "read")
wk = job(w_kit, "write")
read_p50 = p50_us(rn)
read_mean = rn["lat_ns"]["mean"] / 1000
transport_p50 = p50_us(rk)

rows = []
def row(name, model, measured, unit, judged):
    ratio = measured / model
    ok = abs(ratio - 1) <= 0.15
    rows.append((name, model, measured, unit, ratio, ("PASS" if ok else "FAIL") if judged else "-"))
    return ok

print(f"nandbox --latency real, profile {d['profile']}: read {d['read_ns']/1000:.0f} us, "
      f"program {d['program_ns']/1000:.0f} us, {d['page_bytes']} B pages + {spare} B spare, "
      f"channels {d['channel_mb_s']} MB/s; fio ioengine=nbd, loopback TCP, {runtime} s per run")
print(f"write bound = dies x {d['page_bytes']} B / {d['program_ns']/1000:.0f} us; "
      f"read model = {d['read_ns']/1000:.0f} us read + {transfer_us:.1f} us transfer = "
      f"{read_model_us:.1f} us")
print()
ok_w = True
notes = []
for dies, path in w_runs:
    st = json.load(open(f"{work}/writes-{dies}-stats.json"))
    w = st["device"]
    bound = w["dies"] * w["page_bytes"] / (w["program_ns"] / 1000)  # bytes per us = MB/s
    mb_s = job(path, "write")["bw_bytes"] / 1e6
    plural = "s" if w["dies"] > 1 else ""
    ok_w &= row(f"4k randwrite QD32, {w['dies']} die{plural}", bound, mb_s, "MB/s", True)
    notes.append(f"{w['dies']} dies: WAF {st['waf']:.3f}, modelled write mean "
                 f"{st['latency']['write_mean_ns']/1000:.0f} us, {bound*1e6/4096:.0f} IOPS bound")
ok_r = row("4k randread QD1 p50", read_model_us, read_p50, "us", True)
ok_d = row("  minus transport", read_model_us, read_p50 - transport_p50, "us", True)
row("4k randread QD1 mean", read_model_us, read_mean, "us", False)
print(f"{'check':<26} {'model':>9} {'measured':>9} {'unit':<5} {'ratio':>6}  within ±15%")
for name, model, measured, unit, ratio, verdict in rows:
    print(f"{name:<26} {model:>9.1f} {measured:>9.1f} {unit:<5} {ratio:>6.2f}  {verdict}")
print()
print(f"same run, nbdkit memory: 4k randwrite QD32 {wk['bw_bytes']/1e6:.1f} MB/s (the host's "
      f"ceiling); 4k randread QD1 p50 {transport_p50:.1f} us (loopback NBD transport, subtracted above)")
print(f"same run, nandbox --latency off: 4k randread QD1 p50 {p50_us(rf):.1f} us (the host's own "
      f"floor for a nandbox read: NBD reader, firmware and writer threads, FTL)")
print(f"device's own accounting: modelled read mean {reads['latency']['read_mean_ns']/1000:.1f} us "
      f"over {reads['latency']['reads']} reads; " + "; ".join(notes))
print("latency = fio total latency (submission to completion); p50 is judged, as the mean "
      "carries the scheduling stalls of a shared machine")
sys.exit(0 if ok_w and (ok_r or ok_d) else 1)
PY
