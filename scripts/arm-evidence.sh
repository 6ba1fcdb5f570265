#!/usr/bin/env bash
# The whole step on ARM, measured without a board. Cross-builds dmq-board for aarch64 Linux, runs one
# evaluation of a model (default: the bundled model, `dmqc compile` defaults) under qemu as a Pi 4 core
# (cortex-a72, NEON tier) and a Pi 5 / Orin class core (cortex-a76, dotprod tier) with qemu's execution
# trace, and counts the executed instructions with ../shared/tools/qemu-icount.py (set QEMU_ICOUNT to
# its path elsewhere). It reports
#   - the whole process for one evaluation (load, checksums, input files included) and its top functions;
#   - one evaluation alone: the trace of a batch of two (two latents, two timesteps of the same bucket)
#     minus the trace of one, which leaves the start-up and the load out;
#   - MACs per executed instruction for both, with the model's multiply-accumulates per evaluation
#     (`dmqc inspect --target`);
#   - llvm-mca (Debian's `llvm` package) cycles of each micro-kernel's hot loop on both cores (the loops
#     as scripts/kernel-evidence.sh finds them in the binary).
# Needs the cross toolchain (scripts/install-cross.sh), python3 (the counting tool) and llvm-mca; not
# part of the test suite. A trace of one evaluation of the bundled model is about 0.5 GB in /tmp and
# is deleted after counting. Output: target/arm-evidence/summary.txt (also printed).
#   usage: scripts/arm-evidence.sh [MODEL.dmq]
set -euo pipefail
cd "$(dirname "$0")/.."
ICOUNT="${QEMU_ICOUNT:-../shared/tools/qemu-icount.py}"
[ -f "$ICOUNT" ] || { echo "arm-evidence: $ICOUNT not found (set QEMU_ICOUNT)" >&2; exit 1; }
command -v llvm-mca >/dev/null || { echo "arm-evidence: llvm-mca missing (apt-get install llvm)" >&2; exit 1; }
bash scripts/install-cross.sh
OUT=target/arm-evidence
mkdir -p "$OUT"
cargo build -q --release -p dmq-compiler
MODEL="${1:-$OUT/digits_unet.dmq}"
if [ -z "${1:-}" ]; then
  ./target/release/dmqc compile models/digits_unet.onnx -o "$MODEL" >/dev/null
fi
(
  export RUSTC=/usr/bin/rustc CARGO_TARGET_DIR=target/cross
  cargo build -q --release --target aarch64-unknown-linux-gnu -p dmq-board
)
BOARD=target/cross/aarch64-unknown-linux-gnu/release/dmq-board
QEMU="qemu-aarch64 -L /usr/aarch64-linux-gnu"

# the model's latent and timestep, and its multiply-accumulates per evaluation
info=$(./target/release/dmqc inspect --target pi5 "$MODEL")
latent=$(echo "$info" | awk '$1 == "latent" { print; exit }')
lname=$(echo "$latent" | sed -E 's/^ *latent +"([^"]*)".*/\1/')
lshape=$(echo "$latent" | sed -E 's/.*f32\[([0-9x]+)\].*/\1/')
tname=$(echo "$info" | awk '$1 == "timestep" { print; exit }' | sed -E 's/^ *timestep +"([^"]*)".*/\1/')
macs=$(echo "$info" | sed -nE 's/.*\(([0-9]+) exactly.*/\1/p' | head -1)
[ -n "$macs" ] && [ -n "$lname" ] || { echo "arm-evidence: cannot read the model's inputs or MACs from dmqc inspect" >&2; exit 1; }
if echo "$info" | grep -q '^  extra input'; then
  echo "arm-evidence: the model has extra inputs; only latent + timestep models are supported here" >&2; exit 1
fi
python3 - "$OUT" "$lshape" <<'EOF'
import math, struct, sys
out, shape = sys.argv[1], [int(d) for d in sys.argv[2].split("x")]
def write(path, shape, vals):
    dims = ", ".join(map(str, shape)) + ("," if len(shape) == 1 else "")
    hdr = "{'descr': '<f4', 'fortran_order': False, 'shape': (%s), }" % dims
    hdr += " " * (63 - (10 + len(hdr)) % 64) + "\n"
    with open(path, "wb") as f:
        f.write(b"\x93NUMPY\x01\x00" + struct.pack("<H", len(hdr)) + hdr.encode())
        f.write(struct.pack("<%df" % len(vals), *vals))
n = math.prod(shape[1:])
x = [math.sin(0.37 * i) * 1.3 for i in range(2 * n)]
write(f"{out}/latent1.npy", [1] + shape[1:], x[:n])
write(f"{out}/latent2.npy", [2] + shape[1:], x)
write(f"{out}/t1.npy", [1], [500.0])
write(f"{out}/t2.npy", [2], [500.0, 480.0])
EOF

count() { # cpu evals -> executed instructions; the one-eval run keeps the top functions
  local trace=/tmp/dmq-arm-evidence.$$.log
  local inputs="--input $lname=$OUT/latent$2.npy"
  [ -n "$tname" ] && inputs="$inputs --input $tname=$OUT/t$2.npy"
  $QEMU -cpu "$1" -d in_asm,exec,nochain -D $trace "$BOARD" run "$MODEL" $inputs -o "$OUT/out-$1-$2" >/dev/null
  python3 "$ICOUNT" $trace --macs $(( macs * $2 )) > "$OUT/icount-$1-$2.txt"
  rm -f $trace
  awk '/^executed instructions/ { print $3; exit }' "$OUT/icount-$1-$2.txt" | tr -d ','
}

{
  echo "model: $MODEL, $macs multiply-accumulates per evaluation (dmqc inspect)"
  for cpu in cortex-a72 cortex-a76; do
    one=$(count $cpu 1)
    two=$(count $cpu 2)
    echo
    echo "$cpu ($($QEMU -cpu $cpu "$BOARD" info | sed 's/kernel tier: /tier /'))"
    awk -v one="$one" -v two="$two" -v m="$macs" 'BEGIN {
      printf "  whole process, one evaluation: %d instructions, %.2f MAC/instruction\n", one, m / one
      printf "  one evaluation alone (two minus one): %d instructions, %.2f MAC/instruction\n", two - one, m / (two - one)
    }'
    echo "  top functions of the whole process (qemu-icount):"
    sed -n '3,14p' "$OUT/icount-$cpu-1.txt" | sed 's/^/  /'
  done
  echo
  echo "hot loops (llvm-mca, 100 iterations of each loop body as the binary has it):"
  mkdir -p "$OUT/loops"
  DUMP="$OUT/loops" bash scripts/kernel-evidence.sh "$BOARD" | sed 's/^/  /'
  for cpu in cortex-a72 cortex-a76; do
    # the kernels each core runs: the Armv8.0 tiles on the Pi 4 core, the dotprod ones on the Pi 5 core
    case $cpu in cortex-a72) kernels="tile_neon tile_i16" ;; *) kernels="tile_sdot tile_i16_dot" ;; esac
    for k in $kernels; do
      f="$OUT/loops/$k.s"
      m=$(sed -nE 's/^# ([0-9]+) MACs per iteration/\1/p' "$f")
      llvm-mca -mtriple=aarch64 -mcpu=$cpu -iterations=100 "$f" 2>/dev/null |
        awk -v cpu=$cpu -v k=$k -v m="$m" '/^Total Cycles:/ { c = $3 / 100 } /^IPC:/ { ipc = $2 }
          END { printf "  %-11s %-13s %6.1f cycles per iteration, IPC %.2f, %5.2f MAC/cycle\n", cpu, k, c, ipc, m / c }'
    done
  done
} | tee "$OUT/summary.txt"
