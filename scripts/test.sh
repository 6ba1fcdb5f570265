#!/usr/bin/env bash
# The whole test suite: installs the cross toolchain packages if missing (idempotent), proves the
# runtime builds without std, then runs every workspace test in release mode (the end-to-end tests
# compile and sample the bundled model).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-cross.sh
bash scripts/check-nostd.sh
cargo test --workspace --release
