#!/usr/bin/env bash
# Builds the firmware self-test image (release) and boots it on QEMU's mps2-an386 (Cortex-M4F),
# then prints the footprint report of it and of the core-only size probe (src/bin/probe.rs). Exits with the self-test's status: 0 only if every check
# passed; non-zero on a failed check, a panic, a fault, or the time limit.
#
# Needs: qemu-system-arm (Debian: apt-get install qemu-system-arm), python3, and the Rust target
# (rustup target add thumbv7em-none-eabihf). Honours CARGO_TARGET_DIR; QEMU_TIMEOUT (seconds,
# default 300) bounds the run.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
timeout_s="${QEMU_TIMEOUT:-300}"

if ! command -v qemu-system-arm >/dev/null; then
    echo "run-qemu.sh: qemu-system-arm not found; install it (apt-get install qemu-system-arm)" >&2
    exit 2
fi

# Cargo reads .cargo/config.toml (target, linker script) from the working directory, so build
# from inside the crate.
cd "$here"
cargo build --release
target_dir="${CARGO_TARGET_DIR:-$here/target}"
case "$target_dir" in /*) ;; *) target_dir="$here/$target_dir" ;; esac
elf="$target_dir/thumbv7em-none-eabihf/release/nandbox-embedded"
probe="$target_dir/thumbv7em-none-eabihf/release/probe"
log="$target_dir/selftest-qemu.log"

echo "run-qemu.sh: booting $elf on mps2-an386 (limit ${timeout_s}s)"
set +e
timeout --kill-after=10 "$timeout_s" \
    qemu-system-arm -M mps2-an386 -cpu cortex-m4 -nographic -monitor none -serial none \
    -semihosting-config enable=on,target=native -kernel "$elf" | tee "$log"
status=${PIPESTATUS[0]}
# The size probe calls each core operation once; it prints its stack peak and must succeed too.
timeout --kill-after=10 "$timeout_s" \
    qemu-system-arm -M mps2-an386 -cpu cortex-m4 -nographic -monitor none -serial none \
    -semihosting-config enable=on,target=native -kernel "$probe" | tee -a "$log"
probe_status=${PIPESTATUS[0]}
set -e
if [ "$status" -eq 124 ] || [ "$status" -eq 137 ] || [ "$probe_status" -eq 124 ]; then
    echo "run-qemu.sh: an image did not finish within ${timeout_s}s" >&2
fi
if [ "$probe_status" -ne 0 ]; then
    echo "run-qemu.sh: the size probe failed (status $probe_status)" >&2
    [ "$status" -ne 0 ] || status=$probe_status
fi

# The probe image calls only the core's API: its size is what the core costs in flash.
bash "$here/footprint.sh" --log "$log" "$elf" "$probe" || true
echo "run-qemu.sh: self-test exit status $status"
exit "$status"
