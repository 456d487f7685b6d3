#!/usr/bin/env bash
# bench/delta.sh — the delta engine (MedFS inline deltas) off against on, in the same run.
#
# Figure: NAND bytes programmed, all causes (data, delta, node, compact, gc, checkpoint,
# padding), per host byte written, over the measured phase (counters from GET /stats before
# and after it; the fill that creates the base blocks is not in it). Reduction = 1 - on/off.
#
#   bench/delta.sh                          # every part, tlc profile
#   PARTS="controlled fio" bench/delta.sh   # a subset of: controlled fio sqlite latency full
#   PROFILE=femu bench/delta.sh             # 4 KiB pages: no padding when a flush cuts a page
#   PLP=on bench/delta.sh                   # power-loss protection: flushes program nothing
#   PCTS="5 14" PARTS=controlled bench/delta.sh  # some of the controlled update sizes
#   COMPRESS=on bench/delta.sh              # ZipNN coding of weight-like blocks too (default
#                                           # off here: it codes some SQLite pages, which are
#                                           # then no delta base, so it blurs what delta does)
#   NANDBOX=/path/to/nandbox bench/delta.sh # a prebuilt binary
#   TRACE_DIR=dir bench/delta.sh            # keep the delta-on SQLite runs' block traces as
#                                           # dir/sq-MODE-on.trace (replay: `nandbox replay`;
#                                           # the stats JSON beside them give the UPDATE
#                                           # phase's first and last record as trace_records)
#
# Parts:
#   controlled  python3-libnbd client: 4,096 blocks (16 MiB) filled with random data and
#               flushed, then UPDATES random blocks rewritten with a contiguous run of P% of
#               their bytes changed (P = 1, 5, 14, 30, 60), a flush every FLUSH_EVERY writes.
#   fio         fio randwrite, bs 4k, QD1 (one I/O buffer), fio's default buffers, over a 64 MiB
#               region fio wrote sequentially first (reported separately: fio rewrites the same
#               buffer, only scrambled a little, which flatters deltas).
#   sqlite      (root) ext4 over nbdfuse + losetup --direct-io=on, the sqlite3 CLI with
#               synchronous=FULL: a table of ROWS rows of ~200 bytes, then TXNS single-row
#               UPDATE transactions of a small integer column of random rows; rollback-journal
#               (DELETE) and WAL modes. Measured: the UPDATE phase. The delta-on run records a
#               block trace, replayed (`nandbox replay`) with delta off and on, PLP off and
#               on: the very same requests under each setting (table 1b).
#   latency     (root) the sqlite WAL workload with --latency virtual and 64 node-cache slots,
#               then LAT_SELECTS random point SELECTs with the page cache dropped (the updates
#               themselves read almost nothing from the device): mean virtual read latency of
#               the SELECTs, delta on / off, and node-cache hit rate and NAND node page reads,
#               score against lru (delta on), at CACHE_SLOTS slots (64 and 8). The delta-on
#               score run records a trace, replayed with delta off and on (and on without the
#               compact cache): the same requests, a host that waits for each reply, no noise.
#   full        python3-libnbd client: a FULL_MIB device with every block written, then
#               FULL_PASSES passes rewriting every block in place with a contiguous run of
#               FULL_PCT% of its bytes changed, in address order and in random order, a flush
#               every 256 writes; NAND/host per pass. A full device is where deltas cost space
#               GC needs: the delta store beyond the inline areas has a budget there (see the
#               `delta` module docs in core/src/ftl/delta.rs).
set -euo pipefail

PARTS=${PARTS:-"controlled fio sqlite latency full"}
PROFILE=${PROFILE:-tlc}
PLP=${PLP:-off}
COMPRESS=${COMPRESS:-off}
UPDATES=${UPDATES:-8192}
FLUSH_EVERY=${FLUSH_EVERY:-16}
ROWS=${ROWS:-200000}
TXNS=${TXNS:-20000}
CACHE_SLOTS=${CACHE_SLOTS:-"64 8"}   # node-cache sizes for the score/lru comparison (64 first)
LAT_SELECTS=${LAT_SELECTS:-5000}     # random point SELECTs after the updates (latency part)
FULL_MIB=${FULL_MIB:-64}             # device size of the full part
FULL_PASSES=${FULL_PASSES:-4}
FULL_PCT=${FULL_PCT:-5}
PY=/usr/bin/python3   # Debian's python3 carries the libnbd bindings (module `nbd`)

here=$(cd "$(dirname "$0")/.." && pwd)
need() { command -v "$1" >/dev/null || { echo "bench/delta.sh: $1 is not installed" >&2; exit 1; }; }
for t in curl fio "$PY"; do need "$t"; done
"$PY" -c 'import nbd' 2>/dev/null || { echo "bench/delta.sh: $PY lacks the nbd module (python3-libnbd)" >&2; exit 1; }
if [[ " $PARTS " == *" sqlite "* || " $PARTS " == *" latency "* ]]; then
    for t in sqlite3 nbdfuse fusermount3 losetup mkfs.ext4 mount umount; do need "$t"; done
    [ "$(id -u)" = 0 ] || { echo "bench/delta.sh: the sqlite parts need root (loop devices, mount)" >&2; exit 1; }
fi

if [ -z "${NANDBOX:-}" ]; then
    echo "building nandbox (release)..." >&2
    cargo build --release -q -p nandbox --manifest-path "$here/Cargo.toml"
    NANDBOX=${CARGO_TARGET_DIR:-$here/target}/release/nandbox
fi

free_port() { "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() {
    for _ in $(seq 1 300); do
        "$PY" -c "import socket; socket.create_connection(('127.0.0.1',$1),1)" 2>/dev/null && return 0
        sleep 0.1
    done
    echo "bench/delta.sh: nothing listening on port $1" >&2; exit 1
}

work=$(mktemp -d)
SPID=""
MNT=""; LOOP=""; FUSE=""; FPID=""
detach() {
    [ -n "$MNT" ] && { umount "$MNT" 2>/dev/null || true; MNT=""; }
    [ -n "$LOOP" ] && { losetup -d "$LOOP" 2>/dev/null || true; LOOP=""; }
    [ -n "$FUSE" ] && { fusermount3 -uz "$FUSE" 2>/dev/null || true; FUSE=""; }
    [ -n "$FPID" ] && { kill "$FPID" 2>/dev/null || true; wait "$FPID" 2>/dev/null || true; FPID=""; }
    return 0
}
stop() { [ -n "$SPID" ] && { kill "$SPID" 2>/dev/null || true; wait "$SPID" 2>/dev/null || true; SPID=""; }; return 0; }
cleanup() { detach; stop; rm -rf "$work"; }
trap cleanup EXIT

# serve NAME SIZE ARGS... : starts a device; sets PORT and CPORT.
serve() {
    local name=$1 size=$2; shift 2
    PORT=$(free_port); CPORT=$(free_port)
    "$NANDBOX" serve --listen "127.0.0.1:$PORT" --control "127.0.0.1:$CPORT" --size "$size" \
        --profile "$PROFILE" --plp "$PLP" --compress "$COMPRESS" "$@" >"$work/$name.log" 2>&1 &
    SPID=$!
    wait_port "$PORT"; wait_port "$CPORT"
}
snap() { curl -sf "http://127.0.0.1:$CPORT/stats" >"$1"; }
# figure BEFORE AFTER : NAND program bytes / host write bytes over the phase, and the detail.
figure() {
    "$PY" - "$1" "$2" <<'EOF'
import json, sys
a, b = (json.load(open(p)) for p in sys.argv[1:3])
host = b["host_write_bytes"] - a["host_write_bytes"]
causes = ["data", "delta", "node", "compact", "gc", "checkpoint", "padding"]
d = {c: b["nand_program_bytes"][c] - a["nand_program_bytes"][c] for c in causes}
tot = sum(d.values())
dl = {k: b["delta"][k] - a["delta"].get(k, 0) for k in ("inlined", "too_large", "refused", "full_pages_rebuilt", "compact_pages_written", "restored_at_idle")} if "delta" in b else {}
writes = b["host_writes"] - a["host_writes"]
# Without power-loss protection every flush programs at least one whole page: no setting of the
# delta engine can take NAND/host below this floor.
flushes = b["host_flushes"] - a["host_flushes"]
floor = flushes * b["device"]["page_bytes"] / host if host and not b["device"]["plp"] else 0
print(f"{tot / host if host else 0:.3f}\t" + " ".join(f"{c}={d[c] / host if host else 0:.2f}" for c in causes)
      + f" [writes={writes} flushes={flushes} flush_floor={floor:.2f} " + " ".join(f"{k}={v}" for k, v in dl.items()) + "]")
EOF
}
ratio() { "$PY" -c "import sys; off,on=float(sys.argv[1]),float(sys.argv[2]); print(f'{(1-on/off)*100:.1f}%' if off else '-')" "$1" "$2"; }

# --- (2) controlled updates ------------------------------------------------------------------
controlled() {
    cat >"$work/controlled.py" <<'EOF'
import nbd, random, sys, json, urllib.request
uri, cport, pct, updates, flush_every = sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
BLOCKS, BS = 4096, 4096
rng = random.Random(42)
h = nbd.NBD(); h.connect_uri(uri)
blocks = [bytearray(rng.randbytes(BS)) for _ in range(BLOCKS)]
for i in range(0, BLOCKS, 256):
    h.pwrite(b"".join(blocks[i:i + 256]), i * BS)
h.flush()
def stats(path):
    open(path, "wb").write(urllib.request.urlopen(f"http://127.0.0.1:{cport}/stats").read())
stats(sys.argv[6])
n = max(1, int(BS * pct / 100))
for k in range(updates):
    b = rng.randrange(BLOCKS)
    at = rng.randrange(BS - n + 1)
    blk = blocks[b]
    blk[at:at + n] = bytes(x ^ (1 + rng.randrange(255)) for x in blk[at:at + n])
    h.pwrite(bytes(blk), b * BS)
    if (k + 1) % flush_every == 0:
        h.flush()
h.flush()
for b in rng.sample(range(BLOCKS), 256):   # spot check: the device returns what was written
    assert h.pread(BS, b * BS) == bytes(blocks[b]), b
stats(sys.argv[7])
h.shutdown()
EOF
    echo "## (2) controlled updates: $UPDATES random 4 KiB rewrites of 4,096 blocks, P% of bytes changed (one contiguous run), flush every $FLUSH_EVERY; profile $PROFILE"
    printf "changed\tNAND/host off\tNAND/host on\treduction\tdetail on (per host byte)\n"
    for pct in ${PCTS:-1 5 14 30 60}; do
        local f=()
        for d in off on; do
            serve "ctl-$pct-$d" 64MiB --delta "$d"
            "$PY" "$work/controlled.py" "nbd://127.0.0.1:$PORT" "$CPORT" "$pct" "$UPDATES" "$FLUSH_EVERY" \
                "$work/c-$pct-$d-a.json" "$work/c-$pct-$d-b.json"
            stop
            f+=("$(figure "$work/c-$pct-$d-a.json" "$work/c-$pct-$d-b.json")")
        done
        printf "%s%%\t%s\t%s\t%s\t%s\n" "$pct" "${f[0]%%$'\t'*}" "${f[1]%%$'\t'*}" \
            "$(ratio "${f[0]%%$'\t'*}" "${f[1]%%$'\t'*}")" "${f[1]#*$'\t'}"
    done
    echo
}

# --- (3) fio randwrite -----------------------------------------------------------------------
fio_part() {
    echo "## (3) fio randwrite 4k QD1, default buffers, over a 64 MiB region first written sequentially by fio (4k QD1); 64 MiB of random writes; profile $PROFILE"
    printf "delta\tNAND/host\tdetail (per host byte)\n"
    local f=()
    for d in off on; do
        serve "fio-$d" 256MiB --delta "$d"
        fio --name=fill --ioengine=nbd --uri="nbd://127.0.0.1:$PORT" --rw=write --bs=4k --iodepth=1 \
            --size=64M --output="$work/fio-fill-$d.txt" >/dev/null
        snap "$work/f-$d-a.json"
        fio --name=rw --ioengine=nbd --uri="nbd://127.0.0.1:$PORT" --rw=randwrite --bs=4k --iodepth=1 \
            --size=64M --io_size=64M --randrepeat=1 --output="$work/fio-$d.txt" >/dev/null
        snap "$work/f-$d-b.json"
        stop
        f+=("$(figure "$work/f-$d-a.json" "$work/f-$d-b.json")")
        printf "%s\t%s\n" "$d" "${f[-1]}"
    done
    echo "reduction: $(ratio "${f[0]%%$'\t'*}" "${f[1]%%$'\t'*}")"
    echo
}

# --- (1) SQLite on ext4 ----------------------------------------------------------------------
# attach SIZE : ext4 on the running device, mounted at $MNT.
attach() {
    FUSE=$work/fuse; mkdir -p "$FUSE"
    nbdfuse "$FUSE" "nbd://127.0.0.1:$PORT" >"$work/nbdfuse.log" 2>&1 &
    FPID=$!
    for _ in $(seq 1 300); do [ -e "$FUSE/nbd" ] && [ "$(stat -c %s "$FUSE/nbd")" = "$1" ] && break; sleep 0.1; done
    LOOP=$(losetup --direct-io=on --find --show "$FUSE/nbd")
    mkfs.ext4 -q -F "$LOOP"
    MNT=$work/mnt; mkdir -p "$MNT"
    mount "$LOOP" "$MNT"
}

# sqlite_run NAME MODE SERVE-ARGS... : prints "figure<TAB>detail"; leaves stats in $work/NAME-*.json
sqlite_run() {
    local name=$1 mode=$2; shift 2
    local size=$((512 << 20))
    [ -n "${RECORD:-}" ] && set -- "$@" --trace "$work/$name.trace"
    serve "$name" "$size" "$@"
    attach "$size"
    local db=$MNT/bench.db
    sqlite3 "$db" >/dev/null <<EOF
PRAGMA journal_mode=$mode;
PRAGMA synchronous=FULL;
CREATE TABLE t(id INTEGER PRIMARY KEY, small INTEGER, pad TEXT);
WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < $ROWS)
INSERT INTO t SELECT x, 0, hex(randomblob(96)) FROM c;
EOF
    sync
    "$PY" - "$ROWS" "$TXNS" "$mode" >"$work/updates.sql" <<'EOF'
import random, sys
rows, txns, mode = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
rng = random.Random(7)
print(f"PRAGMA journal_mode={mode};\nPRAGMA synchronous=FULL;")
for _ in range(txns):
    print(f"UPDATE t SET small = small + 1 WHERE id = {rng.randrange(1, rows + 1)};")
EOF
    snap "$work/$name-a.json"
    sqlite3 "$db" <"$work/updates.sql" >/dev/null
    snap "$work/$name-b.json"
    local sum
    sum=$(sqlite3 "$db" "SELECT sum(small) FROM t;")
    [ "$sum" = "$TXNS" ] || { echo "bench/delta.sh: $name: sum(small) = $sum, expected $TXNS" >&2; exit 1; }
    if [ "${SELECTS:-0}" -gt 0 ]; then
        # A read phase: random point queries with the page cache dropped and a small SQLite
        # cache, so they reach the device (the UPDATE phase reads almost nothing from it).
        "$PY" - "$ROWS" "$SELECTS" >"$work/selects.sql" <<'EOF'
import random, sys
rows, n = int(sys.argv[1]), int(sys.argv[2])
rng = random.Random(11)
print("PRAGMA cache_size=16;")
for _ in range(n):
    print(f"SELECT small FROM t WHERE id = {rng.randrange(1, rows + 1)};")
EOF
        sync
        echo 3 >/proc/sys/vm/drop_caches
        snap "$work/$name-c.json"
        sqlite3 "$db" <"$work/selects.sql" >/dev/null
        snap "$work/$name-d.json"
    fi
    detach
    stop
    figure "$work/$name-a.json" "$work/$name-b.json"
}

# replay_figure NAME ARGS... : replays $work/NAME.trace (recorded by the delta-on run) with ARGS,
# measured over the UPDATE phase (the records between the run's two snapshots).
replay_figure() {
    local name=$1; shift
    local a b
    a=$("$PY" -c "import json,sys; print(json.load(open(sys.argv[1]))['trace_records'])" "$work/$name-a.json")
    b=$("$PY" -c "import json,sys; print(json.load(open(sys.argv[1]))['trace_records'])" "$work/$name-b.json")
    "$NANDBOX" replay "$work/$name.trace" --profile "$PROFILE" --compress "$COMPRESS" "$@" \
        --snapshot "$a=$work/$name-ra.json" --snapshot "$b=$work/$name-rb.json" >/dev/null
    figure "$work/$name-ra.json" "$work/$name-rb.json"
}

sqlite_part() {
    echo "## (1) SQLite on ext4 (nbdfuse + loop, direct I/O), synchronous=FULL, $ROWS rows of ~200 bytes, $TXNS single-row UPDATE transactions; profile $PROFILE"
    printf "journal\tNAND/host off\tNAND/host on\treduction\tdetail off | on (per host byte)\n"
    for mode in DELETE WAL; do
        local off on
        off=$(sqlite_run "sq-$mode-off" "$mode" --delta off)
        on=$(RECORD=1 sqlite_run "sq-$mode-on" "$mode" --delta on)
        printf "%s\t%s\t%s\t%s\t%s | %s\n" "$mode" "${off%%$'\t'*}" "${on%%$'\t'*}" \
            "$(ratio "${off%%$'\t'*}" "${on%%$'\t'*}")" "${off#*$'\t'}" "${on#*$'\t'}"
    done
    echo
    # The delta-on runs' traces, replayed: the very same requests with delta off and on, with
    # power-loss protection off and on (a flush then programs nothing: see README, padding).
    echo "## (1b) the same SQLite requests replayed (nandbox replay of the delta-on run's trace); profile $PROFILE"
    printf "journal\tplp\tNAND/host off\tNAND/host on\treduction\tdetail on (per host byte)\n"
    for mode in DELETE WAL; do
        for plp in off on; do
            local off on
            off=$(replay_figure "sq-$mode-on" --plp "$plp" --delta off)
            on=$(replay_figure "sq-$mode-on" --plp "$plp" --delta on)
            printf "%s\t%s\t%s\t%s\t%s\t%s\n" "$mode" "$plp" "${off%%$'\t'*}" "${on%%$'\t'*}" \
                "$(ratio "${off%%$'\t'*}" "${on%%$'\t'*}")" "${on#*$'\t'}"
        done
        if [ -n "${TRACE_DIR:-}" ]; then
            mv "$work/sq-$mode-on.trace" "$work/sq-$mode-on-a.json" "$work/sq-$mode-on-b.json" "$TRACE_DIR/"
        else
            rm -f "$work/sq-$mode-on.trace"
        fi
    done
    echo
}

latency_part() {
    echo "## SQLite WAL with --latency virtual, then $LAT_SELECTS random point SELECTs with the page cache dropped; profile $PROFILE"
    export SELECTS=$LAT_SELECTS
    sqlite_run lat-off WAL --latency virtual --node-cache-slots 64 --node-cache score --delta off >/dev/null
    for n in $CACHE_SLOTS; do
        if [ "$n" = 64 ]; then
            RECORD=1 sqlite_run "lat-score-$n" WAL --latency virtual --node-cache-slots "$n" --node-cache score --delta on >/dev/null
        else
            sqlite_run "lat-score-$n" WAL --latency virtual --node-cache-slots "$n" --node-cache score --delta on >/dev/null
        fi
        sqlite_run "lat-lru-$n" WAL --latency virtual --node-cache-slots "$n" --node-cache lru --delta on >/dev/null
    done
    unset SELECTS
    if [ -n "${TRACE_DIR:-}" ]; then
        for f in "$work"/lat-*.trace "$work"/lat-*-?.json; do [ -e "$f" ] && cp "$f" "$TRACE_DIR/"; done
    fi
    # The same SELECTs replayed: snapshots at the trace records where the live run took c and d.
    local c d
    c=$("$PY" -c "import json,sys; print(json.load(open(sys.argv[1]))['trace_records'])" "$work/lat-score-64-c.json")
    d=$("$PY" -c "import json,sys; print(json.load(open(sys.argv[1]))['trace_records'])" "$work/lat-score-64-d.json")
    for v in "off --delta off" "on --delta on" "on-nocc --delta on --compact-cache-slots 0"; do
        # shellcheck disable=SC2086
        set -- $v
        local tag=$1; shift
        "$NANDBOX" replay "$work/lat-score-64.trace" --profile "$PROFILE" --compress "$COMPRESS" \
            --plp "$PLP" --latency virtual --node-cache-slots 64 --node-cache score "$@" \
            --snapshot "$c=$work/rp-$tag-c.json" --snapshot "$d=$work/rp-$tag-d.json" >/dev/null
    done
    rm -f "$work/lat-score-64.trace"
    "$PY" - "$work" $CACHE_SLOTS <<'EOF'
import json, sys
w = sys.argv[1]
def load(n, at="b"):
    return json.load(open(f"{w}/{n}-{at}.json"))
def phase(n):
    # Mean and count of the reads between snapshots c and d (the SELECT phase).
    c, d = load(n, "c")["latency"], load(n, "d")["latency"]
    k = d["reads"] - c["reads"]
    return ((d["read_mean_ns"] * d["reads"] - c["read_mean_ns"] * c["reads"]) / k if k else 0, k)
(m_off, k_off), (m_on, k_on) = phase("lat-off"), phase("lat-score-64")
print(f"64 slots, score: mean virtual read latency of the SELECTs: delta off {m_off/1000:.1f} us ({k_off} reads), on {m_on/1000:.1f} us ({k_on} reads), on/off = {m_on / m_off if m_off else 0:.3f}")
(r_off, _), (r_on, _), (r_nc, _) = phase("rp-off"), phase("rp-on"), phase("rp-on-nocc")
def cc(n):
    c, d = load(n, "c"), load(n, "d")
    k = d["host_reads"] - c["host_reads"]
    return (d["nand_read_pages"] - c["nand_read_pages"]) / k if k else 0
print(f"the same SELECTs replayed from the delta-on run's trace: delta off {r_off/1000:.1f} us, on {r_on/1000:.1f} us, on/off = {r_on / r_off if r_off else 0:.3f}; on without the compact cache {r_nc/1000:.1f} us, {r_nc / r_off if r_off else 0:.3f}")
print(f"NAND reads per host read in the SELECTs (replayed): off {cc('rp-off'):.3f}, on {cc('rp-on'):.3f}, on without the compact cache {cc('rp-on-nocc'):.3f}")
off, on = load("lat-off"), load("lat-score-64")
print(f"up to the end of the updates (few reads reach the device): mean off {off['latency']['read_mean_ns']/1000:.1f} us ({off['latency']['reads']} reads), on {on['latency']['read_mean_ns']/1000:.1f} us ({on['latency']['reads']} reads)")
print(f"NAND reads per host read (whole run): off {load('lat-off', 'd')['nand_reads_per_host_read']:.3f}, on {load('lat-score-64', 'd')['nand_reads_per_host_read']:.3f}")
print("slots\tpolicy\thit rate\tnode-page NAND reads\tNAND reads per host read")
for n in sys.argv[2:]:
    for pol in ("score", "lru"):
        s = load(f"lat-{pol}-{n}", "d")
        print(f"{n}\t{pol}\t{s['node_cache_hit_rate']:.4f}\t{s['nand_read_pages_by_cause']['node']}\t{s['nand_reads_per_host_read']:.3f}")
EOF
    echo
}

full_part() {
    cat >"$work/full.py" <<'EOF'
import nbd, random, sys, urllib.request
uri, cport, pct, passes, blocks, order, out = sys.argv[1:8]
pct, passes, blocks, BS = float(pct), int(passes), int(blocks), 4096
rng = random.Random(7)
h = nbd.NBD(); h.connect_uri(uri)
data = [bytearray(rng.randbytes(BS)) for _ in range(blocks)]
for i in range(0, blocks, 256):
    h.pwrite(b"".join(data[i:i + 256]), i * BS)
h.flush()
def stats(path):
    open(path, "wb").write(urllib.request.urlopen(f"http://127.0.0.1:{cport}/stats").read())
stats(f"{out}-0.json")
n = max(1, int(BS * pct / 100))
for p in range(passes):
    seq = list(range(blocks))
    if order == "random":
        rng.shuffle(seq)
    for k, b in enumerate(seq):
        at = rng.randrange(BS - n + 1)
        data[b][at:at + n] = bytes(x ^ (1 + rng.randrange(255)) for x in data[b][at:at + n])
        h.pwrite(bytes(data[b]), b * BS)
        if (k + 1) % 256 == 0:
            h.flush()
    h.flush()
    stats(f"{out}-{p + 1}.json")
for b in rng.sample(range(blocks), 256):   # spot check: the device returns what was written
    assert h.pread(BS, b * BS) == bytes(data[b]), b
h.shutdown()
EOF
    echo "## full device: ${FULL_MIB} MiB, every block written, then $FULL_PASSES passes rewriting every block in place with a run of $FULL_PCT% changed; NAND/host per pass; profile $PROFILE"
    printf "order\tdelta\tper pass\n"
    for order in address random; do
        for d in off on; do
            serve "full-$order-$d" "${FULL_MIB}MiB" --delta "$d"
            "$PY" "$work/full.py" "nbd://127.0.0.1:$PORT" "$CPORT" "$FULL_PCT" "$FULL_PASSES" \
                $((FULL_MIB * 256)) "$order" "$work/full-$order-$d"
            stop
            local row=""
            for i in $(seq 1 "$FULL_PASSES"); do
                row+="$(figure "$work/full-$order-$d-$((i - 1)).json" "$work/full-$order-$d-$i.json" | cut -f1)  "
            done
            printf "%s\t%s\t%s\n" "$order" "$d" "$row"
        done
    done
    echo
}

echo "# bench/delta.sh  $(date -u +%FT%TZ)  profile=$PROFILE  plp=$PLP  compress=$COMPRESS  nandbox=$NANDBOX"
echo
for p in $PARTS; do
    case $p in
        controlled) controlled ;;
        fio) fio_part ;;
        sqlite) sqlite_part ;;
        latency) latency_part ;;
        full) full_part ;;
        *) echo "bench/delta.sh: unknown part $p" >&2; exit 1 ;;
    esac
done
