#!/usr/bin/env bash
# Builds the bare-metal image with MODEL.dmq embedded and runs it on qemu-system-aarch64 -M virt.
# usage: boards/qemu-virt/run.sh MODEL.dmq [--seed S] [--steps N] [--sampler ddim|ddpm|euler|consistency] [--cpu CPU]
# Prints the UART output: cycles per denoising step and `checksum: <hex>` (same as dmq-board sample --checksum).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
[ $# -ge 1 ] || { sed -n 3,4p "$0"; exit 2; }
model="$(realpath "$1")"; shift
seed=0; steps=""; sampler=""; cpu=cortex-a72
while [ $# -gt 0 ]; do
  case "$1" in
    --seed) seed="$2"; shift 2 ;;
    --steps) steps="$2"; shift 2 ;;
    --sampler) sampler="$2"; shift 2 ;;
    --cpu) cpu="$2"; shift 2 ;;
    *) echo "run.sh: unknown option $1" >&2; exit 2 ;;
  esac
done
[ -f "$model" ] || { echo "run.sh: no such model: $model" >&2; exit 2; }
[ -x /usr/bin/rustc ] || { echo "run.sh: /usr/bin/rustc missing; run scripts/install-cross.sh" >&2; exit 2; }
cd "$here"
# Debian's rustc and its library sources build `core` for the bare-metal target; binutils links.
DMQ_MODEL="$model" DMQ_SEED="$seed" DMQ_STEPS="$steps" DMQ_SAMPLER="$sampler" \
RUSTC_BOOTSTRAP=1 RUSTC=/usr/bin/rustc CARGO_TARGET_DIR="$here/target" \
RUSTFLAGS="-C linker=aarch64-linux-gnu-ld" \
  cargo build -q --release -Z build-std=core -Z build-std-features=compiler-builtins-mem \
  --target aarch64-unknown-none
image="$here/target/aarch64-unknown-none/release/dmq-qemu-virt"
timeout "${DMQ_QEMU_TIMEOUT:-1200}" qemu-system-aarch64 -M virt -cpu "$cpu" -m 256M -nographic -nic none \
  -kernel "$image"
