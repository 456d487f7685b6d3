#!/usr/bin/env bash
# bench/zipnn.sh — ratio and single-thread speed of `nandbox zipnn` against `zstd -3` (and the
# zipnn Python package when it is importable) on the fixtures' tensor payloads, in the same run.
#
#   bench/zipnn.sh                 # 7 rounds, best time of each (in-proc: and the median)
#   ROUNDS=15 bench/zipnn.sh
#   FIXTURES=/path/to/fixtures bench/zipnn.sh
#
# Each payload (the bytes after a safetensors header) is written to a temporary file and coded
# file-to-file by each tool with one thread: `nandbox zipnn compress --dtype D --threads 1`,
# `zstd -3 -T1`. Times are wall clock of the whole command (process start and page-cache I/O
# included, the same for both); the best of ROUNDS is kept. Printed: ratio (compressed /
# original, lower is better), MB/s (original bytes), and nandbox's speed over zstd's.
#
# The zipnn package is timed in-process (Python calls on a buffer, no file I/O), so nandbox is
# also timed that way, by `zipnn-inproc` (benches/src/bin): the "in-proc" rows compare with
# zipnn like for like, the file rows with zstd.
set -euo pipefail

ROUNDS=${ROUNDS:-7}
here=$(cd "$(dirname "$0")/.." && pwd)
FIXTURES=${FIXTURES:-$here/../shared/fixtures}
for tool in zstd python3 cargo; do
    command -v "$tool" >/dev/null || { echo "bench/zipnn.sh: $tool is not installed" >&2; exit 1; }
done
[ -d "$FIXTURES" ] || { echo "bench/zipnn.sh: no fixtures at $FIXTURES" >&2; exit 1; }

echo "building nandbox (release)..." >&2
cargo build --release -q -p nandbox -p nandbox-bench --bin nandbox --bin zipnn-inproc \
    --manifest-path "$here/Cargo.toml"
target=${CARGO_TARGET_DIR:-$here/target}

INPROC=$target/release/zipnn-inproc NANDBOX=$target/release/nandbox FIXTURES=$FIXTURES ROUNDS=$ROUNDS python3 - <<'EOF'
import os, resource, shutil, statistics, struct, subprocess, sys, tempfile, time

nandbox, fixtures, rounds = os.environ["NANDBOX"], os.environ["FIXTURES"], int(os.environ["ROUNDS"])
inproc = os.environ["INPROC"]
work = tempfile.mkdtemp(prefix="nandbox-zipnn-bench-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)

try:
    import zipnn  # optional: pulls torch, so it is often absent
except Exception:
    zipnn = None

def best(cmd):
    """Best wall time and best CPU time (user + system of the child) over the rounds. CPU time
    is steadier than wall time on a shared machine, so both are reported."""
    wall = cpu = float("inf")
    for _ in range(rounds):
        r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        wall = min(wall, time.perf_counter() - t0)
        r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = min(cpu, (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime))
    return wall, max(cpu, 1e-6)

def same(a, b):
    with open(a, "rb") as x, open(b, "rb") as y:
        return x.read() == y.read()

rows = []
try:
    for name, dtype, zdtype in [("minilm-l0l5-bf16.safetensors", "bf16", "bfloat16"),
                                ("minilm-l0l5-f16.safetensors", "fp16", "float16"),
                                ("minilm-l0l5-f32.safetensors", "fp32", "float32")]:
        raw = open(os.path.join(fixtures, name), "rb").read()
        n = struct.unpack("<Q", raw[:8])[0]
        payload = raw[8 + n:]
        src = os.path.join(work, dtype + ".bin")
        open(src, "wb").write(payload)
        size = len(payload)

        def run(comp, decomp, z, back):
            (cw, cc), (dw, dc) = best(comp), best(decomp)
            assert same(src, back), f"{comp[0]} round trip differs"
            return (os.path.getsize(z) / size, size / cw / 1e6, size / dw / 1e6,
                    size / cc / 1e6, size / dc / 1e6)

        z, back = src + ".nbzn", src + ".back"
        nb = run([nandbox, "zipnn", "compress", src, z, "--dtype", dtype, "--threads", "1"],
                 [nandbox, "zipnn", "decompress", z, back, "--threads", "1"], z, back)
        z, back = src + ".zst", src + ".zback"
        zs = run(["zstd", "-3", "-T1", "-q", "-f", src, "-o", z],
                 ["zstd", "-d", "-T1", "-q", "-f", z, "-o", back], z, back)

        # In-process runs are short (milliseconds), so they get more rounds.
        ip = tuple(float(x) for x in subprocess.run(
            [inproc, src, dtype, str(5 * rounds)], check=True, capture_output=True,
            text=True).stdout.split())

        zp = None
        if zipnn is not None:
            try:
                coder = zipnn.ZipNN(input_format="byte", bytearray_dtype=zdtype, threads=1)
                # zipnn 0.5.4 may modify its input buffer while compressing (its BF16 and FP32
                # round trips then differ), so each round gets a fresh bytearray, made outside
                # the timed region.
                # Best wall and best CPU time; process-wide, since zipnn codes on worker threads.
                min_c = min_d = float("inf")
                cpus_c, cpus_d = [], []
                for _ in range(5 * rounds):
                    buf = bytearray(payload)
                    t0, c0 = time.perf_counter(), time.process_time()
                    c = coder.compress(buf)
                    min_c = min(min_c, time.perf_counter() - t0)
                    cpus_c.append(time.process_time() - c0)
                for _ in range(5 * rounds):
                    t0, c0 = time.perf_counter(), time.process_time()
                    d = coder.decompress(c)
                    min_d = min(min_d, time.perf_counter() - t0)
                    cpus_d.append(time.process_time() - c0)
                if bytes(d) != payload:
                    raise ValueError("its round trip differs from the input")
                mb = lambda t: size / max(t, 1e-6) / 1e6
                zp = (len(c) / size, size / min_c / 1e6, size / min_d / 1e6,
                      mb(min(cpus_c)), mb(min(cpus_d)), mb(statistics.median(cpus_c)),
                      mb(statistics.median(cpus_d)))
            except Exception as e:  # report, do not hide
                print(f"zipnn package failed on {dtype}: {e}", file=sys.stderr)
        rows.append((dtype, size, nb, zs, ip, zp))
finally:
    shutil.rmtree(work, ignore_errors=True)

print("MB/s of original bytes; wall = best wall-clock time; cpu = best CPU time: of the whole")
print("process for file rows, of the coding thread for nb inproc, of the Python process (its")
print("coding threads included) for zipnn")
print("(in-proc rows: also the median CPU time of the rounds)")
print(f"{'dtype':5} {'bytes':>9} | {'codec':9} {'ratio':>7} | {'comp wall':>9} {'decomp wall':>11} | {'comp cpu':>8} {'decomp cpu':>10} | {'comp med':>8} {'decomp med':>10}")
for dtype, size, nb, zs, ip, zp in rows:
    for label, r in [("nandbox", nb), ("zstd -3", zs), ("nb inproc", ip), ("zipnn", zp)]:
        if r is None:
            continue
        cpu = f"{r[3]:8.0f} {r[4]:10.0f}" if r[3] else f"{'':8} {'':10}"
        med = f" | {r[5]:8.0f} {r[6]:10.0f}" if len(r) > 5 else ""
        print(f"{dtype:5} {size:9d} | {label:9} {r[0]:7.4f} | {r[1]:9.0f} {r[2]:11.0f} | {cpu}{med}")
    print(f"{dtype:5} {'':9} | nandbox/zstd: ratio {nb[0]/zs[0]:.3f}x; speed wall {nb[1]/zs[1]:.2f}x comp,"
          f" {nb[2]/zs[2]:.2f}x decomp; cpu {nb[3]/zs[3]:.2f}x comp, {nb[4]/zs[4]:.2f}x decomp"
          + (f"; in-proc vs zipnn: wall {ip[1]/zp[1]:.2f}x comp, {ip[2]/zp[2]:.2f}x decomp,"
             f" cpu {ip[3]/zp[3]:.2f}x comp, {ip[4]/zp[4]:.2f}x decomp,"
             f" median cpu {ip[5]/zp[5]:.2f}x comp, {ip[6]/zp[6]:.2f}x decomp" if zp else ""))
if zipnn is None:
    print("(zipnn package not importable: `pip install zipnn` to compare; it pulls torch)")
EOF
