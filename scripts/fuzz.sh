#!/usr/bin/env bash
# Runs every cargo-fuzz target for SECONDS (default 30) each, from seed corpora made from real
# runs (fuzz/examples/seeds.rs: fixture weights through the codecs, a used FTL image, power-cut
# workloads). Installs cargo-fuzz when it is missing. Exits non-zero on the first crash, leaving
# the reproducer in fuzz/artifacts/<target>/.
#
# Usage: scripts/fuzz.sh [SECONDS] [TARGET...]
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${1:-30}

# fuzz/regressions/<target>/ holds inputs that once failed; every run replays them first.
shift || true
fixtures=${NANDBOX_FIXTURES:-$(cd .. && pwd)/shared/fixtures}

if ! rustup toolchain list | grep -q '^nightly'; then
  echo "==> installing the nightly toolchain (cargo-fuzz needs it)"
  rustup toolchain install nightly --profile minimal
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
  echo "==> installing cargo-fuzz"
  cargo install --locked cargo-fuzz
fi

# Seeds are regenerated each run (they are deterministic); what the fuzzer adds to the corpus
# directories is kept between runs.
cargo run --quiet --release --manifest-path fuzz/Cargo.toml --example seeds -- \
  "$fixtures" fuzz/corpus

targets=("$@")
if ((${#targets[@]} == 0)); then
  mapfile -t targets < <(cd fuzz && cargo +nightly fuzz list)
fi

cd fuzz
cargo +nightly fuzz build -O
for t in "${targets[@]}"; do
  if compgen -G "regressions/$t/*" >/dev/null; then
    echo "==> replay regressions/$t"
    cargo +nightly fuzz run -O "$t" regressions/"$t"/* 2>&1 | tail -n 3
  fi
  echo "==> fuzz $t for ${seconds}s"
  # -rss_limit_mb bounds memory: a decoder that allocates from a claimed length fails here.
  # image_mount's raw-image seed is a whole dump, so its inputs may be that long.
  cargo +nightly fuzz run -O "$t" "corpus/$t" -- \
    -max_total_time="$seconds" -rss_limit_mb=2048 -max_len=800000 -timeout=20 \
    -print_final_stats=1 2>&1 | grep -E 'Done|stat::number_of_executed_units|stat::peak_rss|ERROR|panicked|SUMMARY|artifact' || true
  if compgen -G "artifacts/$t/crash-*" >/dev/null || compgen -G "artifacts/$t/oom-*" >/dev/null \
     || compgen -G "artifacts/$t/timeout-*" >/dev/null; then
    echo "fuzz target $t found a failing input: $(ls artifacts/"$t")" >&2
    exit 1
  fi
done
