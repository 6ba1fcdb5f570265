#!/usr/bin/env bash
# Proves dmq-runtime is no_std: builds it for bare-metal aarch64 with Debian's rustc and build-std=core.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x /usr/bin/rustc ]; then
  echo "check-nostd: /usr/bin/rustc missing; run scripts/install-cross.sh first" >&2
  exit 1
fi
RUSTC_BOOTSTRAP=1 RUSTC=/usr/bin/rustc CARGO_TARGET_DIR=target/nostd \
  cargo build -q -Z build-std=core --target aarch64-unknown-none -p dmq-runtime --release
echo "check-nostd: dmq-runtime builds for aarch64-unknown-none (no_std, no alloc)"
