#!/usr/bin/env bash
# bench/qstore.sh — storage ratio, INT8-load bytes and speed of `nandbox qstore` on the BF16 and
# FP16 fixtures, against the alternatives measured in the same run.
#
#   bench/qstore.sh                 # 5 rounds, best time of each
#   ROUNDS=9 bench/qstore.sh
#   FIXTURES=/path/to/fixtures bench/qstore.sh
#
# For each fixture MODEL (the high-precision model) the INT8 model is what
# `nandbox qstore extract --precision int8` writes: per 2-D tensor NAME an I8 tensor NAME and an
# F32 tensor NAME.SCB, other tensors as they were (the bitsandbytes convention). "Both" means
# the two safetensors files, whole. Ratios are (both raw bytes) / (stored bytes), higher is
# better; the goal is >= 2.25 on BF16 and >= 1.7 on FP16, and never below 1.
#
#   both raw        MODEL + INT8 model as they are
#   both zstd -19   each file through `zstd -19 -T1`, sizes summed
#   both ZipNN      each file through `nandbox zipnn compress`, sizes summed
#   qstore          one `nandbox qstore pack` file
#
# INT8 load: the bytes `extract --precision int8 --report-bytes-read` read, as a share of the
# .qst file (goal <= 55%), printed beside the order-0 entropy of the INT8 values themselves: an
# INT8 load must read at least about that much, so on BF16 (where the whole .qst is ~10.6 bits a
# weight and the INT8 values ~7.2) no file meeting the 2.25 ratio can meet 55%. Speeds: MB/s of high-precision input (MODEL bytes) for pack and for
# extract --precision high, wall clock of the whole command, best of ROUNDS, with 1 thread and
# with all cores.
set -euo pipefail

ROUNDS=${ROUNDS:-5}
here=$(cd "$(dirname "$0")/.." && pwd)
FIXTURES=${FIXTURES:-$here/../shared/fixtures}
for tool in zstd python3 cargo; do
    command -v "$tool" >/dev/null || { echo "bench/qstore.sh: $tool is not installed" >&2; exit 1; }
done
[ -d "$FIXTURES" ] || { echo "bench/qstore.sh: no fixtures at $FIXTURES" >&2; exit 1; }

echo "building nandbox (release)..." >&2
cargo build --release -q -p nandbox --manifest-path "$here/Cargo.toml"
target=${CARGO_TARGET_DIR:-$here/target}

NANDBOX=$target/release/nandbox FIXTURES=$FIXTURES ROUNDS=$ROUNDS python3 - <<'EOF'
import json, math, os, re, shutil, struct, subprocess, tempfile, time
from collections import Counter

nandbox, fixtures, rounds = os.environ["NANDBOX"], os.environ["FIXTURES"], int(os.environ["ROUNDS"])
work = tempfile.mkdtemp(prefix="nandbox-qstore-bench-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)

def run(cmd):
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout

def best(cmd):
    t = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        t = min(t, time.perf_counter() - t0)
    return t

def int8_entropy_bytes(path):
    """Order-0 entropy, in bytes, of the I8 tensors of an INT8 model (each tensor its own
    statistics): no coding of the INT8 values without a richer model can be smaller."""
    f = open(path, "rb").read()
    n = struct.unpack("<Q", f[:8])[0]
    h = json.loads(f[8:8 + n])
    bits = 0.0
    for k, v in h.items():
        if k == "__metadata__" or v["dtype"] != "I8":
            continue
        a, b = v["data_offsets"]
        c = Counter(f[8 + n + a:8 + n + b])
        t = b - a
        bits += -sum(x * math.log2(x / t) for x in c.values())
    return bits / 8

def size(p):
    return os.path.getsize(p)

def same(a, b):
    with open(a, "rb") as x, open(b, "rb") as y:
        return x.read() == y.read()

goals = {"bf16": 2.25, "f16": 1.7}
rows = []
try:
    for dt in ["bf16", "f16"]:
        model = os.path.join(fixtures, f"minilm-l0l5-{dt}.safetensors")
        qst = os.path.join(work, f"{dt}.qst")
        high = os.path.join(work, f"{dt}.high.safetensors")
        int8 = os.path.join(work, f"{dt}.int8.safetensors")
        run([nandbox, "qstore", "pack", model, qst])
        run([nandbox, "qstore", "extract", qst, "--precision", "high", "-o", high])
        if not same(model, high):
            raise SystemExit(f"{dt}: extract --precision high is not byte-identical")
        out = run([nandbox, "qstore", "extract", qst, "--precision", "int8", "-o", int8, "--report-bytes-read"])
        read = int(re.search(r"bytes read: (\d+) of (\d+)", out).group(1))
        raw = size(model) + size(int8)
        zs = 0
        for f in (model, int8):
            z = f + ".zst"
            subprocess.run(["zstd", "-19", "-T1", "-q", "-f", f, "-o", z], check=True)
            zs += size(z)
        zn = 0
        for f in (model, int8):
            z = f + ".nbzn"
            run([nandbox, "zipnn", "compress", f, z, "--threads", "1"])
            zn += size(z)
        q = size(qst)
        mb = size(model) / 1e6
        speeds = {}
        for th in ["1", str(os.cpu_count() or 1)]:
            speeds[("pack", th)] = mb / best([nandbox, "qstore", "pack", model, qst, "--threads", th])
            speeds[("high", th)] = mb / best([nandbox, "qstore", "extract", qst, "--precision", "high", "-o", high, "--threads", th])
            speeds[("int8", th)] = mb / best([nandbox, "qstore", "extract", qst, "--precision", "int8", "-o", int8, "--threads", th])
        rows.append((dt, size(model), size(int8), raw, zs, zn, q, read, speeds, int8_entropy_bytes(int8)))
finally:
    shutil.rmtree(work, ignore_errors=True)

print(f"\nqstore on the fixtures (both = high-precision model + INT8 model; ratio = both raw / stored)\n")
print(f"| fixture | model B | INT8 model B | both raw | both zstd -19 | both ZipNN | qstore .qst | INT8 load reads |")
print(f"|---|---|---|---|---|---|---|---|")
for dt, m, i, raw, zs, zn, q, read, _, _ in rows:
    print(f"| {dt} | {m:,} | {i:,} | {raw:,} (1.000) | {zs:,} ({raw/zs:.3f}) | {zn:,} ({raw/zn:.3f}) "
          f"| {q:,} (**{raw/q:.3f}**, goal {goals[dt]}) | {read:,} ({100*read/q:.1f}% of .qst, goal <= 55%) |")
print()
print("| fixture | threads | pack MB/s | extract high MB/s | extract int8 MB/s (of model bytes) |")
print("|---|---|---|---|---|")
for dt, *_, speeds, _ in rows:
    for th in sorted({t for _, t in speeds}, key=int):
        print(f"| {dt} | {th} | {speeds[('pack', th)]:.1f} | {speeds[('high', th)]:.1f} | {speeds[('int8', th)]:.1f} |")
print()
for dt, m, i, raw, zs, zn, q, read, _, ent in rows:
    print(f"{dt}: the INT8 values' order-0 entropy alone is {ent:,.0f} bytes = {100*ent/q:.1f}% of the .qst "
          f"(and {100*ent/(raw/goals[dt]):.1f}% of the largest .qst meeting the ratio goal)")
for dt, m, i, raw, zs, zn, q, read, _, _ in rows:
    verdict = []
    verdict.append(("ratio", raw / q >= goals[dt]))
    verdict.append(("never worse than raw", q <= raw))
    verdict.append(("INT8 load <= 55%", read <= 0.55 * q))
    print(f"{dt}: " + ", ".join(f"{name}: {'met' if ok else 'NOT met'}" for name, ok in verdict))
EOF
