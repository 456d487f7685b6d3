#!/usr/bin/env bash
# The whole test suite, from a fresh Debian machine with the Rust toolchain: installs what the
# tests need (Debian packages, rustup targets), then runs the checks, the tests and the embedded
# self-test. Nothing skips: a missing tool is installed here or the run fails.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

# Debian packages the end-to-end tests drive. python3-libnbd gives Debian's python3 the `nbd`
# module that nbdsh needs.
packages=(fio libnbd-bin python3-libnbd nbdkit fuse3 e2fsprogs sqlite3 qemu-utils zstd
          qemu-system-arm util-linux)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
  step "installing ${missing[*]}"
  sudo_cmd=()
  [ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
  "${sudo_cmd[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq "${missing[@]}" >/dev/null
fi

step "rustup targets and components"
rustup target add thumbv7em-none-eabihf riscv32imac-unknown-none-elf >/dev/null
rustup component add rustfmt clippy >/dev/null

step "cargo fmt --check"
cargo fmt --all -- --check

step "docs/FORMAT.md is assembled from docs/format/"
scripts/format-doc.sh >/dev/null
git diff --exit-code -- docs/FORMAT.md || { echo "run scripts/format-doc.sh and commit docs/FORMAT.md"; exit 1; }

step "clippy (all targets, warnings are errors)"
cargo clippy --workspace --all-targets --profile ci -- -D warnings

step "no_std core for thumbv7em-none-eabihf and riscv32imac-unknown-none-elf"
cargo build -p nandbox-core --target thumbv7em-none-eabihf
cargo build -p nandbox-core --target riscv32imac-unknown-none-elf

step "tests (release with debug assertions: the ci profile)"
cargo build --profile ci -p nandbox
cargo test --profile ci --workspace

step "embedded self-test under qemu-system-arm"
firmware-sim/embedded/run-qemu.sh

step "fuzz every cargo-fuzz target for ${FUZZ_SECONDS:-30} s (nightly)"
scripts/fuzz.sh "${FUZZ_SECONDS:-30}"
