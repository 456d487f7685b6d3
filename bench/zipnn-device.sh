#!/usr/bin/env bash
# bench/zipnn-device.sh — coded blocks in the device (issue 5): NAND bytes programmed to store
# each fixture's tensor payload on a fresh device, `--compress on` against `--compress off`, in
# the same run.
#
#   bench/zipnn-device.sh                   # tlc profile (16 KiB pages of four slots)
#   PROFILE=femu bench/zipnn-device.sh      # 4 KiB pages
#   NANDBOX=/path/to/nandbox bench/zipnn-device.sh
#   FIXTURES=/path/to/fixtures bench/zipnn-device.sh
#
# For each payload (the bytes after a safetensors header, zero-padded to whole 4 KiB blocks) and
# each setting: a fresh `nandbox serve --size 64MiB`, GET /stats, the payload written at offset 0
# by python3-libnbd in 1 MiB writes and flushed, GET /stats again. Printed per run: NAND bytes
# programmed over the write (all causes; and data + padding alone) per payload byte, the blocks
# coded and the bytes saved as the device counts them. The issue's goal: BF16, compress on, all
# causes, <= 0.70.
#
# Part 2 (skip with UPDATES=none): a checkpoint rewritten after a fine-tuning step. The payload
# is written and flushed, then written again with the low mantissa bits (BF16 and FP16: the low
# 4 bits of the low byte; FP32: the low byte) of a fraction of its elements changed, and
# flushed. Printed: NAND bytes programmed by the second write per payload byte, with compress on
# and delta off (each block coded whole again) against compress on and delta on (kept as
# deltas over the coded blocks, plane-coded where smaller: ZipNN's delta mode), and the deltas
# the device kept. UPDATES lists the fractions in percent (default "1 5 10 20").
set -euo pipefail
PROFILE=${PROFILE:-tlc}
PY=/usr/bin/python3   # Debian's python3 carries the libnbd bindings (module `nbd`)
here=$(cd "$(dirname "$0")/.." && pwd)
FIXTURES=${FIXTURES:-$here/../shared/fixtures}
command -v curl >/dev/null || { echo "bench/zipnn-device.sh: curl is not installed" >&2; exit 1; }
"$PY" -c 'import nbd' 2>/dev/null || { echo "bench/zipnn-device.sh: $PY lacks the nbd module (python3-libnbd)" >&2; exit 1; }
[ -d "$FIXTURES" ] || { echo "bench/zipnn-device.sh: no fixtures at $FIXTURES" >&2; exit 1; }
if [ -z "${NANDBOX:-}" ]; then
    echo "building nandbox (release)..." >&2
    cargo build --release -q -p nandbox --manifest-path "$here/Cargo.toml"
    NANDBOX=${CARGO_TARGET_DIR:-$here/target}/release/nandbox
fi
free_port() { "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
work=$(mktemp -d)
SPID=""
stop() { [ -n "$SPID" ] && { kill "$SPID" 2>/dev/null || true; wait "$SPID" 2>/dev/null || true; SPID=""; }; }
trap 'stop; rm -rf "$work"' EXIT

start_server() { # args: extra serve flags
    PORT=$(free_port); CPORT=$(free_port)
    "$NANDBOX" serve --listen "127.0.0.1:$PORT" --control "127.0.0.1:$CPORT" --size 64MiB \
        --profile "$PROFILE" "$@" >"$work/serve.log" 2>&1 &
    SPID=$!
    for _ in $(seq 1 300); do
        curl -sf "http://127.0.0.1:$CPORT/stats" >"$work/before.json" 2>/dev/null && return 0
        sleep 0.1
    done
    echo "bench/zipnn-device.sh: nandbox did not start:" >&2; cat "$work/serve.log" >&2; exit 1
}

printf "%-6s %-8s %12s %10s %12s %8s %12s\n" dtype compress payload nand/pay data/pay coded saved
for spec in bf16:minilm-l0l5-bf16.safetensors fp16:minilm-l0l5-f16.safetensors fp32:minilm-l0l5-f32.safetensors; do
    dtype=${spec%%:*}; file=$FIXTURES/${spec#*:}
    for mode in off on; do
        start_server --compress "$mode"
        "$PY" - "$file" "$PORT" <<'PYEOF'
import json, struct, sys, nbd
path, port = sys.argv[1], int(sys.argv[2])
b = open(path, "rb").read()
n = struct.unpack("<Q", b[:8])[0]
p = b[8 + n:]
p += bytes(-len(p) % 4096)
h = nbd.NBD()
h.connect_tcp("127.0.0.1", str(port))
for off in range(0, len(p), 1 << 20):
    h.pwrite(p[off:off + (1 << 20)], off)
h.flush()
h.shutdown()
PYEOF
        curl -sf "http://127.0.0.1:$CPORT/stats" >"$work/after.json"
        stop
        "$PY" - "$work/before.json" "$work/after.json" "$file" "$dtype" "$mode" <<'PYEOF'
import json, struct, sys
a, b = json.load(open(sys.argv[1])), json.load(open(sys.argv[2]))
raw = open(sys.argv[3], "rb").read()
n = struct.unpack("<Q", raw[:8])[0]
pay = len(raw) - 8 - n
pay += -pay % 4096
d = lambda k: b["nand_program_bytes"][k] - a["nand_program_bytes"][k]
total, data = d("total"), d("data") + d("padding")
z = b["zipnn"]
print(f"{sys.argv[4]:<6} {sys.argv[5]:<8} {pay:>12} {total / pay:>10.4f} {data / pay:>12.4f} "
      f"{z['blocks_coded']:>8} {z['bytes_saved']:>12}")
PYEOF
    done
done

UPDATES=${UPDATES:-1 5 10 20}
[ "$UPDATES" = none ] && exit 0
echo
echo "checkpoint rewritten after a fine-tuning step (compress on; NAND bytes of the second write per payload byte)"
printf "%-6s %8s %12s %12s %8s %10s\n" dtype changed delta-off delta-on on/off deltas
for spec in bf16:minilm-l0l5-bf16.safetensors fp16:minilm-l0l5-f16.safetensors fp32:minilm-l0l5-f32.safetensors; do
    dtype=${spec%%:*}; file=$FIXTURES/${spec#*:}
    for pct in $UPDATES; do
        declare -A res=()
        for mode in off on; do
            start_server --compress on --delta "$mode"
            "$PY" - "$file" "$PORT" "$CPORT" "$dtype" "$pct" "$work/mid.json" <<'PYEOF'
import random, struct, sys, urllib.request, nbd
path, port, cport, dtype, pct, mid = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], float(sys.argv[5]), sys.argv[6]
b = open(path, "rb").read()
n = struct.unpack("<Q", b[:8])[0]
p = bytearray(b[8 + n:])
p += bytes(-len(p) % 4096)
h = nbd.NBD()
h.connect_tcp("127.0.0.1", str(port))
def write_all(buf):
    for off in range(0, len(buf), 1 << 20):
        h.pwrite(bytes(buf[off:off + (1 << 20)]), off)
    h.flush()
write_all(p)
open(mid, "wb").write(urllib.request.urlopen(f"http://127.0.0.1:{cport}/stats").read())
# A fine-tuning step: pct% of the elements get new low mantissa bits (seeded: the same update
# for both settings).
size, mask = (4, 0xFF) if dtype == "fp32" else (2, 0x0F)
rng = random.Random(7)
elems = len(p) // size
for i in rng.sample(range(elems), int(elems * pct / 100)):
    p[i * size] = (p[i * size] & ~mask & 0xFF) | (rng.getrandbits(8) & mask)
write_all(p)
h.shutdown()
PYEOF
            curl -sf "http://127.0.0.1:$CPORT/stats" >"$work/after.json"
            stop
            res[$mode]=$("$PY" - "$work/mid.json" "$work/after.json" "$file" <<'PYEOF'
import json, struct, sys
a, b = json.load(open(sys.argv[1])), json.load(open(sys.argv[2]))
raw = open(sys.argv[3], "rb").read()
n = struct.unpack("<Q", raw[:8])[0]
pay = len(raw) - 8 - n
pay += -pay % 4096
total = b["nand_program_bytes"]["total"] - a["nand_program_bytes"]["total"]
inl = b["delta"]["inlined"] - a["delta"]["inlined"]
print(f"{total / pay:.4f} {inl}")
PYEOF
)
        done
        read -r off _ <<<"${res[off]}"
        read -r on deltas <<<"${res[on]}"
        printf "%-6s %7s%% %12s %12s %8s %10s\n" "$dtype" "$pct" "$off" "$on" \
            "$("$PY" -c "print(f'{$on / $off:.3f}')")" "$deltas"
    done
done
