#!/usr/bin/env bash
# Footprint report of the firmware images: each ELF's .text, .rodata, .data and .bss (read from
# the section headers, so no cross binutils are needed), flash and RAM totals, flash bytes by
# component (from the symbol table; with LTO, code inlined into a caller counts for the caller),
# and the self-test's own measurements (peak stack by paint, RAM the core's structures take),
# taken from the log of a QEMU run.
#
# Usage: footprint.sh [--log SELFTEST.log] IMAGE.elf...    (run-qemu.sh calls it after the run)
set -euo pipefail

log=""
if [ "${1:-}" = "--log" ]; then
    log="$2"
    shift 2
fi
[ $# -ge 1 ] || { echo "usage: footprint.sh [--log SELFTEST.log] IMAGE.elf..." >&2; exit 2; }

python3 - "$@" <<'PY'
import struct, sys

def sections_and_symbols(path):
    """Minimal ELF32 little-endian reader: section names/sizes and sized symbols."""
    with open(path, "rb") as f:
        elf = f.read()
    if elf[:4] != b"\x7fELF" or elf[4] != 1 or elf[5] != 1:
        sys.exit("footprint.sh: not a 32-bit little-endian ELF: " + path)
    shoff, = struct.unpack_from("<I", elf, 0x20)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", elf, 0x2E)
    # name, type, flags, addr, offset, size, link
    hdrs = [struct.unpack_from("<IIIIIII", elf, shoff + i * shentsize) for i in range(shnum)]
    def cstr(table, off):
        start = hdrs[table][4] + off
        return elf[start:elf.index(b"\0", start)].decode(errors="replace")
    names = [cstr(shstrndx, h[0]) for h in hdrs]
    sections = {names[i]: h[5] for i, h in enumerate(hdrs)}
    symbols = []
    for i, h in enumerate(hdrs):
        if h[1] != 2:  # SHT_SYMTAB
            continue
        for at in range(h[4], h[4] + h[5], 16):
            st_name, _value, size, info, _other, shndx = struct.unpack_from("<IIIBBH", elf, at)
            if size == 0 or shndx == 0 or shndx >= len(names) or (info & 0xF) not in (1, 2):
                continue
            symbols.append((names[shndx], size, cstr(h[6], st_name)))
    return sections, symbols

def component(name):
    # Rust legacy mangling keeps path segments as <len><ident>, so substrings identify crates.
    # The board's NAND first: its trait impls name nandbox_core's Nand too.
    if "ram_nand" in name:
        return "RAM NAND (board)"
    if name.startswith(".L"):
        return "anonymous constants (strings, panic locations)"
    if "nandbox_core" in name:
        for key, label in (("5codec", "core: codec (zipnn, rANS)"), ("3ftl", "core: FTL"),
                           ("6format", "core: on-flash formats"), ("4nand", "core: nand")):
            if key in name:
                return label
        return "core: other"
    for key, label in (("crc32fast", "crc32fast (incl. 16 KiB table)"), ("bitvec", "bitvec"),
                       ("compiler_builtins", "compiler_builtins (memcpy, u64 div)"),
                       ("nandbox_embedded", "self-test harness"),
                       ("probe", "probe main"), ("cortex_m", "cortex-m runtime, semihosting"),
                       ("4core3fmt", "Rust core: fmt"), ("4core", "Rust core: other")):
        if key in name:
            return label
    return "other / unattributed"

rows = [
    (".vector_table", "flash", "exception vectors"),
    (".text", "flash", "code"),
    (".rodata", "flash", "constants, tables, strings"),
    (".data", "flash+RAM", "initialised statics (copied to RAM at boot)"),
    (".bss", "RAM", "zeroed statics: FTL tables, codec tables (firmware state)"),
    (".uninit", "RAM", "uninitialised statics"),
    (".nand_array", "PSRAM", "the simulated NAND medium (not firmware state)"),
    (".testbench", "PSRAM", "self-test sample and read-back buffers (not firmware state)"),
]
for path in sys.argv[1:]:
    sections, symbols = sections_and_symbols(path)
    size = lambda s: sections.get(s, 0)
    print("footprint of %s" % path)
    print("  %-14s %10s  %-9s  %s" % ("section", "bytes", "memory", "what"))
    for sec, mem, what in rows:
        print("  %-14s %10d  %-9s  %s" % (sec, size(sec), mem, what))
    flash = size(".vector_table") + size(".text") + size(".rodata") + size(".data")
    ram = size(".data") + size(".bss") + size(".uninit")
    print("  %-14s %10d  (vector table + .text + .rodata + .data)" % ("flash total", flash))
    print("  %-14s %10d  (.data + .bss + .uninit; stack below)" % ("static RAM", ram))
    by = {}
    for sec, sz, name in symbols:
        if sec in (".text", ".rodata"):
            key = component(name)
            t, r = by.get(key, (0, 0))
            by[key] = (t + sz, r) if sec == ".text" else (t, r + sz)
    print("  flash by component (symbol sizes; inlined code counts for its caller):")
    print("    %-48s %8s %8s" % ("component", ".text", ".rodata"))
    for key, (t, r) in sorted(by.items(), key=lambda kv: -(kv[1][0] + kv[1][1])):
        print("    %-48s %8d %8d" % (key, t, r))
PY

if [ -n "$log" ] && [ -f "$log" ]; then
    echo "self-test measurements (from $log):"
    grep '^footprint:' "$log" | sed 's/^footprint: /  /' || echo "  (no footprint lines: did the self-test run to its end?)"
fi
