#!/usr/bin/env bash
# Footprint report of the firmware image: the ELF's .text, .rodata, .data and .bss (read from
# the section headers, so no cross binutils are needed), what that costs in flash and RAM, and
# the self-test's own measurements (peak stack by paint, RAM the core's structures take), taken
# from the log of a QEMU run.
#
# Usage: footprint.sh IMAGE.elf [SELFTEST.log]    (run-qemu.sh calls it after the run)
set -euo pipefail

elf="${1:?usage: footprint.sh IMAGE.elf [SELFTEST.log]}"
log="${2:-}"

python3 - "$elf" <<'PY'
import struct, sys

# Minimal ELF32 little-endian section-header reader: names and sizes are all we need.
with open(sys.argv[1], "rb") as f:
    elf = f.read()
if elf[:4] != b"\x7fELF" or elf[4] != 1 or elf[5] != 1:
    sys.exit("footprint.sh: not a 32-bit little-endian ELF: " + sys.argv[1])
shoff, = struct.unpack_from("<I", elf, 0x20)
shentsize, shnum, shstrndx = struct.unpack_from("<HHH", elf, 0x2E)
def header(i):
    # name, type, flags, addr, offset, size
    return struct.unpack_from("<IIIIII", elf, shoff + i * shentsize)
strtab = header(shstrndx)
def name(off):
    start = strtab[4] + off
    return elf[start:elf.index(b"\0", start)].decode()
sections = {}
for i in range(shnum):
    n, _typ, _flags, addr, _off, size = header(i)
    sections[name(n)] = (addr, size)

def size(s):
    return sections.get(s, (0, 0))[1]

rows = [
    (".vector_table", "flash", "exception vectors"),
    (".text", "flash", "code"),
    (".rodata", "flash", "constants, tables, strings"),
    (".data", "flash+RAM", "initialised statics (copied to RAM at boot)"),
    (".bss", "RAM", "zeroed statics: firmware state, memory lent to the FTL"),
    (".uninit", "RAM", "uninitialised statics"),
    (".nand_array", "PSRAM", "the simulated NAND medium (not firmware state)"),
    (".testbench", "PSRAM", "the self-test's sample and read-back buffers (not firmware state)"),
]
print("footprint of %s" % sys.argv[1])
print("  %-14s %10s  %-9s  %s" % ("section", "bytes", "memory", "what"))
for sec, mem, what in rows:
    print("  %-14s %10d  %-9s  %s" % (sec, size(sec), mem, what))
flash = size(".vector_table") + size(".text") + size(".rodata") + size(".data")
ram = size(".data") + size(".bss") + size(".uninit")
print("  %-14s %10d  (vector table + .text + .rodata + .data)" % ("flash total", flash))
print("  %-14s %10d  (.data + .bss + .uninit; stack below)" % ("static RAM", ram))
PY

if [ -n "$log" ] && [ -f "$log" ]; then
    grep '^footprint:' "$log" | sed 's/^footprint: /  /' || echo "  (no footprint lines in $log: did the self-test run to its end?)"
fi
