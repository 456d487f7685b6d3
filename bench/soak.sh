#!/usr/bin/env bash
# bench/soak.sh — soak test under load: 4 fio clients (ioengine=nbd, verify=crc32c, randrw) on an
# image-backed nandbox for SOAK_SECONDS (default 600), background GC active, a kill -9 and a
# restart with --image midway. Reports verification errors (must be 0), GC activity, and the
# server's resident memory (VmRSS) at start and end of each server life: "start" is sampled a
# quarter into the first churn of that life (node cache and buffers warm), "end" after the last
# load; growth over the restarted server's life must be < 5%. The cold RSS is printed too.
#
#   bench/soak.sh                  # 10 minutes
#   SOAK_SECONDS=60 bench/soak.sh  # CI length
#
# What is verified, honestly:
#   phase 1  churn (40% of the time): 4 clients, each on its own 40 MiB region, random 8 KiB
#            reads and writes; every write is read back and checked by fio (verify_backlog).
#   phase 2  seal: each client rewrites its whole region sequentially with a verify header
#            (crc32c, offset, seed) and ends with a flush (end_fsync): this is the flushed state.
#   phase 3  kill: a fifth client writes random data to a separate scratch region; after a few
#            seconds of it, the server is killed with SIGKILL mid-write. Nothing in the sealed
#            regions is in flight, so DESIGN.md's guarantee says they must read back exactly.
#   phase 4  restart with --image, then verify_only over the 4 sealed regions: every block must
#            carry its phase-2 header and checksum.
#   phase 5  churn again (40% of the time) on the restarted server, verified as in phase 1.
# The scratch region's unflushed writes are not checked: the guarantee allows either version.
set -euo pipefail

SOAK_SECONDS=${SOAK_SECONDS:-600}
SIZE_MIB=${SIZE_MIB:-256}   # export size
REGION_MIB=${REGION_MIB:-40} # per client; 4 regions + the scratch region fit in the export
EXTRA=${EXTRA:-}            # extra `nandbox serve` options

here=$(cd "$(dirname "$0")/.." && pwd)
for tool in fio python3 cargo; do
    command -v "$tool" >/dev/null || { echo "bench/soak.sh: $tool is not installed" >&2; exit 1; }
done
fio --enghelp 2>/dev/null | grep -qx $'\tnbd' || { echo "bench/soak.sh: fio lacks the nbd engine" >&2; exit 1; }

echo "building nandbox (release)..." >&2
cargo build --release -q -p nandbox --manifest-path "$here/Cargo.toml"
target=${CARGO_TARGET_DIR:-$here/target}
nandbox=$target/release/nandbox

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() {
    for _ in $(seq 1 600); do
        python3 -c "import socket; socket.create_connection(('127.0.0.1',$1),1)" 2>/dev/null && return 0
        sleep 0.1
    done
    echo "bench/soak.sh: nothing listening on port $1" >&2; exit 1
}
rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }
# Samples the server's RSS after $1 seconds into file $2 (while a load runs).
rss_later() { (sleep "$1"; rss_kib "$server_pid" >"$2") & }

work=$(mktemp -d)
# fio saves verify state files in the current directory: keep them out of the checkout.
cd "$work"
server_pid=
cleanup() {
    [ -n "$server_pid" ] && kill -9 "$server_pid" 2>/dev/null || true
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

port=$(free_port)
control=127.0.0.1:$(free_port)
image=$work/soak.img
start_server() {
    # shellcheck disable=SC2086
    "$nandbox" serve --listen "127.0.0.1:$port" --control "$control" --size "${SIZE_MIB}MiB" \
        --image "$image" $EXTRA >>"$work/nandbox.log" 2>&1 &
    server_pid=$!
    wait_port "$port"
}
gc_stats() {
    python3 - "$control" <<'PY'
import json, sys, urllib.request
s = json.load(urllib.request.urlopen(f"http://{sys.argv[1]}/stats", timeout=10))
def find(d, path=""):
    for k, v in d.items():
        p = f"{path}.{k}" if path else k
        if isinstance(v, dict):
            yield from find(v, p)
        elif "gc" in p.lower() and isinstance(v, (int, float)):
            yield p, v
print(" ".join(f"{k}={v}" for k, v in find(s)))
PY
}

uri=nbd://127.0.0.1:$port
region=$((REGION_MIB << 20))
scratch_off=$((4 * region))
churn_s=$((SOAK_SECONDS * 2 / 5))
[ "$churn_s" -ge 5 ] || churn_s=5
verify_errors=0

# fio's verify failures: the JSON's per-job error, plus "verify:" lines in its log.
count_errors() { # json log -> errors
    python3 - "$1" "$2" <<'PY'
import json, sys, re
errs = 0
try:
    for j in json.load(open(sys.argv[1]))["jobs"]:
        errs += 1 if j.get("error", 0) else 0
except Exception as e:
    print(f"bench/soak.sh: unreadable fio output {sys.argv[1]}: {e}", file=sys.stderr)
    errs += 1
log = open(sys.argv[2]).read()
errs += len(re.findall(r"verify: bad|bad magic header|crc32c: verify failed", log))
print(errs)
PY
}

fio_clients() { # name extra-args... ; runs 4 jobs, one per region, and counts errors
    local name=$1; shift
    local rc=0
    fio --name="$name" --ioengine=nbd --uri="$uri" --numjobs=4 --group_reporting=0 \
        --size="$region" --offset_increment="$region" --bs=8k --iodepth=8 \
        --verify=crc32c --verify_fatal=0 --randrepeat=0 \
        --output-format=json --output="$work/$name.json" "$@" >"$work/$name.log" 2>&1 || rc=$?
    local e
    e=$(count_errors "$work/$name.json" "$work/$name.log")
    [ "$rc" -eq 0 ] || { echo "  fio exited with $rc (see below)"; tail -5 "$work/$name.log"; e=$((e + 1)); }
    echo "  $name: verification errors $e"
    verify_errors=$((verify_errors + e))
}

echo "== nandbox soak: ${SOAK_SECONDS}s, ${SIZE_MIB} MiB image-backed export, 4 clients x ${REGION_MIB} MiB"
start_server
life1_pid=$server_pid
sleep 1
rss1_cold=$(rss_kib "$server_pid")

echo "phase 1: churn ${churn_s}s (randrw 50/50, verify_backlog)"
rss_later $((churn_s / 4)) "$work/rss1_start"
fio_clients churn1 --rw=randrw --rwmixread=50 --time_based --runtime="$churn_s" \
    --verify_backlog=256 --do_verify=1
echo "  gc: $(gc_stats)"

echo "phase 2: seal each region (sequential write with verify headers, then flush)"
fio_clients seal --rw=write --do_verify=0 --end_fsync=1 --randseed=4242

echo "phase 3: scratch writes in flight, then kill -9"
fio --name=scratch --ioengine=nbd --uri="$uri" --rw=randwrite --bs=64k --iodepth=16 \
    --offset="$scratch_off" --size=$((16 << 20)) --time_based --runtime=60 \
    >"$work/scratch.log" 2>&1 &
scratch_fio=$!
sleep 3
rss1_end=$(rss_kib "$server_pid")
kill -9 "$server_pid"
wait "$server_pid" 2>/dev/null || true
wait "$scratch_fio" 2>/dev/null || true
echo "  killed pid $life1_pid with SIGKILL during scratch writes"

echo "phase 4: restart with --image, verify_only the sealed regions"
start_server
sleep 1
rss2_cold=$(rss_kib "$server_pid")
fio_clients reverify --rw=write --verify_only --randseed=4242
verified=$(python3 -c "import json; print(sum(j['read']['io_bytes'] for j in json.load(open('$work/reverify.json'))['jobs']) >> 20)")
echo "  verify_only read back ${verified} MiB of sealed data"
[ "$verified" -ge $((4 * REGION_MIB)) ] || { echo "  verify_only read less than the sealed regions"; verify_errors=$((verify_errors + 1)); }

echo "phase 5: churn ${churn_s}s on the restarted server"
rss_later $((churn_s / 4)) "$work/rss2_start"
fio_clients churn2 --rw=randrw --rwmixread=50 --time_based --runtime="$churn_s" \
    --verify_backlog=256 --do_verify=1
rss2_end=$(rss_kib "$server_pid")
echo "  gc: $(gc_stats)"

echo "phase 6: control - one sealed block overwritten; verify_only must now fail"
fio --name=seal0 --ioengine=nbd --uri="$uri" --size="$region" --bs=8k --rw=write \
    --verify=crc32c --do_verify=0 --end_fsync=1 --randseed=4242 >"$work/seal0.log" 2>&1
fio --name=spoil --ioengine=nbd --uri="$uri" --offset=$((region / 2)) --size=8k --bs=8k \
    --rw=write --zero_buffers >"$work/spoil.log" 2>&1
fio --name=seal0 --ioengine=nbd --uri="$uri" --size="$region" --bs=8k --rw=write \
    --verify=crc32c --verify_only --verify_fatal=0 --randseed=4242 \
    --output-format=json --output="$work/control.json" >"$work/control.log" 2>&1 || true
control=$(count_errors "$work/control.json" "$work/control.log")
echo "  verify_only on the spoiled region: $control error(s) (must be > 0)"
rss1_start=$(cat "$work/rss1_start")
rss2_start=$(cat "$work/rss2_start")

growth() { python3 -c "print(f'{($2-$1)*100/$1:+.2f}%')" ; }
echo
echo "== results"
echo "verification errors: $verify_errors"
echo "cold RSS (idle after start): life 1 ${rss1_cold} KiB, life 2 ${rss2_cold} KiB"
echo "server life 1 RSS: start ${rss1_start} KiB, before kill -9 ${rss1_end} KiB ($(growth "$rss1_start" "$rss1_end"))"
echo "server life 2 RSS: start ${rss2_start} KiB, end ${rss2_end} KiB ($(growth "$rss2_start" "$rss2_end"))"
ok=1
[ "$control" -gt 0 ] || { echo "FAIL: the control corruption went unnoticed: verification is vacuous"; ok=0; }
[ "$verify_errors" -eq 0 ] || { echo "FAIL: verification errors"; ok=0; }
python3 -c "import sys; sys.exit(0 if $rss2_end <= $rss2_start * 1.05 else 1)" \
    || { echo "FAIL: RSS grew 5% or more over the restarted server's life"; ok=0; }
[ "$ok" -eq 1 ] && echo "PASS"
[ "$ok" -eq 1 ]
