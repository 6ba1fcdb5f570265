#!/usr/bin/env bash
# Proves dmq-runtime and dmq-harness are no_std: builds them for bare-metal aarch64 and Cortex-M with
# Debian's rustc and build-std=core.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x /usr/bin/rustc ]; then
  echo "check-nostd: /usr/bin/rustc missing; run scripts/install-cross.sh first" >&2
  exit 1
fi
# bare-metal Cortex-A and a Cortex-M7/M4F target: the runtime and the board harness, core only
for target in aarch64-unknown-none thumbv7em-none-eabihf; do
  RUSTC_BOOTSTRAP=1 RUSTC=/usr/bin/rustc CARGO_TARGET_DIR=target/nostd \
    cargo build -q -Z build-std=core --target $target -p dmq-runtime -p dmq-harness --release
  echo "check-nostd: dmq-runtime and dmq-harness build for $target (no_std, no alloc)"
done
