#!/usr/bin/env bash
# The whole test suite: installs the cross toolchain packages if missing (idempotent), proves the
# runtime builds without std, checks the code's size limits, runs every workspace test in release
# mode (the end-to-end tests compile and sample the bundled model), then the hostile-file suite with
# overflow checks on. Ends with one line summing all test results.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-cross.sh
bash scripts/check-nostd.sh
bash scripts/check-sizes.sh
mkdir -p target
cargo test --workspace --release --no-fail-fast 2>&1 | tee target/test-output.log
# hostile files: 150 000 mutated models with overflow checks and debug assertions on
DMQ_HOSTILE_CASES=25000 cargo test --profile hostile -p dmq-runtime --features std --test hostile \
  -- --nocapture 2>&1 | tee -a target/test-output.log
awk '/^test result:/ { p += $4; f += $6 } END { printf "tests: %d passed, %d failed\n", p, f; exit (f > 0 || p == 0) }' target/test-output.log
