#!/usr/bin/env bash
# The whole test suite: installs the cross toolchain packages if missing (idempotent), proves the
# runtime builds without std, then runs every workspace test in release mode (the end-to-end tests
# compile and sample the bundled model). Ends with one line summing all test results.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-cross.sh
bash scripts/check-nostd.sh
mkdir -p target
cargo test --workspace --release --no-fail-fast 2>&1 | tee target/test-output.log
awk '/^test result:/ { p += $4; f += $6 } END { printf "tests: %d passed, %d failed\n", p, f; exit (f > 0 || p == 0) }' target/test-output.log
