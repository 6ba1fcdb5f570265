#!/usr/bin/env bash
# The whole test suite: the no_std build of the runtime, then every workspace test (release mode:
# the end-to-end tests compile and sample the bundled model).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/check-nostd.sh
cargo test --workspace --release
