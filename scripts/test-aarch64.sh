#!/usr/bin/env bash
# ARM tests without a board: cross-builds dmq-runtime's tests and dmq-board for aarch64 Linux with
# Debian's rustc, runs them under qemu as a Raspberry Pi 4 core (cortex-a72: NEON, no dotprod) and a
# Pi 5 / Jetson Orin class core (cortex-a76: NEON + dotprod), and checks that sampling the bundled model
# gives the same bytes (checksum) as the x86 host, both as a Linux binary and as the bare-metal qemu virt image
# (boards/qemu-virt). A Pi 4 core that executed SDOT would die with SIGILL.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-cross.sh
TARGET=aarch64-unknown-linux-gnu
CROSS_DIR=target/cross
QEMU="qemu-aarch64 -L /usr/aarch64-linux-gnu"

# host side: the compiler and the host board binary
cargo build -q --release -p dmq-compiler -p dmq-board
mkdir -p "$CROSS_DIR"
MODEL="$CROSS_DIR/digits_unet.dmq"
./target/release/dmqc compile models/digits_unet.onnx -o "$MODEL" --no-baseline --eval-samples 1 --calib-samples 4 >/dev/null
host=$(./target/release/dmq-board sample "$MODEL" --seed 7 --steps 12 --checksum 2>/dev/null | grep '^checksum:')
echo "host x86_64 ($(./target/release/dmq-board info | grep -o "Scalar\|Avx512Vnni\|AvxVnni\|Avx2" | head -1) tier): $host"

# cross side
export RUSTC=/usr/bin/rustc CARGO_TARGET_DIR="$CROSS_DIR"
cargo build -q --release --target $TARGET -p dmq-board
BOARD="$CROSS_DIR/$TARGET/release/dmq-board"
sdots=$(aarch64-linux-gnu-objdump -d "$BOARD" | grep -c "sdot" || true)
if [ "$sdots" -eq 0 ]; then
  echo "FAIL: the aarch64 binary has no SDOT (dotprod tier missing)"; exit 1
fi
echo "aarch64 dmq-board: $sdots SDOT instruction(s) (dotprod tier) beside the Armv8.0 NEON tier"
status=0
for cpu in cortex-a72 cortex-a76; do
  # SIMD tiers against the scalar kernels on random shapes, on the emulated core (dmq-board selftest:
  # this qemu-user never runs a second guest thread -- even spawn + join hangs -- so libtest's harness
  # cannot run here, the property test lives in the board binary, and `--threads` is checked on the
  # host: tests/tests/bundled_model.rs)
  timeout 600 $QEMU -cpu $cpu "$BOARD" selftest --cases 300 || { echo "FAIL: selftest on $cpu"; status=1; }
  out=$($QEMU -cpu $cpu "$BOARD" sample "$MODEL" --seed 7 --steps 12 --checksum 2>"$CROSS_DIR/$cpu.log" | grep '^checksum:') || { echo "FAIL: dmq-board died on $cpu"; cat "$CROSS_DIR/$cpu.log"; status=1; continue; }
  tier=$(grep -o 'kernel tier [A-Za-z]*' "$CROSS_DIR/$cpu.log")
  echo "$cpu: $out ($tier)"
  [ "$out" = "$host" ] || { echo "FAIL: $cpu output differs from the host"; status=1; }
  case "$cpu" in
    cortex-a72) [ "$tier" = "kernel tier Neon" ] || { echo "FAIL: cortex-a72 must run the Neon tier"; status=1; } ;;
    cortex-a76) [ "$tier" = "kernel tier NeonDot" ] || { echo "FAIL: cortex-a76 must run the NeonDot tier"; status=1; } ;;
  esac
done
# bare metal: the same model embedded in the qemu virt image (no std, no allocator), both cores
unset RUSTC CARGO_TARGET_DIR
for cpu in cortex-a72 cortex-a76; do
  out=$(DMQ_QEMU_TIMEOUT=600 bash boards/qemu-virt/run.sh "$MODEL" --seed 7 --steps 12 --cpu $cpu 2>&1) || { echo "FAIL: bare-metal image on $cpu"; echo "$out"; status=1; continue; }
  sum=$(echo "$out" | grep '^checksum:' || true)
  echo "bare metal (qemu virt, $cpu): $sum ($(echo "$out" | grep -o 'kernel tier [A-Za-z]*'); $(echo "$out" | grep '^cycles per step' | cut -d';' -f1))"
  [ "$sum" = "$host" ] || { echo "FAIL: bare-metal $cpu output differs from the host"; echo "$out"; status=1; }
done
bash scripts/kernel-evidence.sh "$BOARD" || status=1
[ $status -eq 0 ] && echo "aarch64: byte-identical to the host on cortex-a72 (Neon) and cortex-a76 (NeonDot), Linux and bare metal"
exit $status
