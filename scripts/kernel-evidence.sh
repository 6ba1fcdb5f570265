#!/usr/bin/env bash
# Inner-loop evidence without a board: disassembles the aarch64 dmq-board binary, finds the hot loop of each
# register-blocked micro-kernel (the innermost loop whose body holds the most multiplies) and prints its
# instruction mix and multiply-accumulates per instruction (over every instance of a generic kernel). Run after scripts/test-aarch64.sh (or give BIN).
# With DUMP=DIR it also writes each loop's body (without its branches) to DIR/<kernel>.s for llvm-mca
# (scripts/arm-evidence.sh does).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN="${1:-target/cross/aarch64-unknown-linux-gnu/release/dmq-board}"
[ -f "$BIN" ] || { echo "kernel-evidence: $BIN missing; run scripts/test-aarch64.sh first" >&2; exit 1; }
for kernel in tile_neon tile_sdot tile_i16 tile_i16_dot; do
  aarch64-linux-gnu-objdump -d --no-show-raw-insn "$BIN" |
    awk -v k="$kernel" -v dump="${DUMP:-}" '
      function hex(s,   i, v) { v = 0; s = tolower(s); for (i = 1; i <= length(s); i++) v = v * 16 + index("0123456789abcdef", substr(s, i, 1)) - 1; return v }
      $0 ~ ("[0-9]+" k "17h[0-9a-f]+E>:$") { infn = 1; next }
      infn && /^$/ { infn = 0 }
      infn && /^ *[0-9a-f]+:/ {
        addr = hex(substr($1, 1, length($1) - 1)); op = $2
        n++; A[n] = addr; O[n] = op; W[n] = ($3 ~ /\.4s/) ? 4 : 8
        line = $0; sub(/^ *[0-9a-f]+:[ \t]*/, "", line); sub(/[ \t]*\/\/.*$/, "", line); L[n] = line
        if (op ~ /^b\./ && NF >= 3) {
          tgt = hex($3)
          if (tgt < addr) { nb++; BA[nb] = addr; BT[nb] = tgt }
        }
      }
      END {
        best = 0
        for (b = 1; b <= nb; b++) {
          # innermost loops only: no other loop (backward branch and its target) inside
          inner = 1
          for (c = 1; c <= nb; c++) if (c != b && BT[c] >= BT[b] && BA[c] < BA[b]) inner = 0
          if (!inner) continue
          ins = 0; sdot = 0; smull = 0; ld = 0; mm = 0
          for (i = 1; i <= n; i++) if (A[i] >= BT[b] && A[i] <= BA[b]) {
            ins++
            if (O[i] == "sdot") sdot++
            if (O[i] ~ /^sm(ull|lal)2?$/) { smull++; mm += W[i] }
            if (O[i] ~ /^ld/) ld++
          }
          macs = sdot * 16 + mm
          if (macs > best || (macs == best && ins < bi)) { best = macs; bi = ins; bs = sdot; bm = smull; bl = ld; bb = b }
        }
        if (best == 0) { printf "%-15s inner loop not found (inlined?)\n", k; exit 1 }
        if (dump != "") {
          f = dump "/" k ".s"
          printf "" > f
          # branches inside the body are left out (llvm-mca has no labels; they do not change its cycles much)
          for (i = 1; i <= n; i++) if (A[i] >= BT[bb] && A[i] < BA[bb] && O[i] !~ /^(b|b\..*|cbn?z|tbn?z)$/) print L[i] >> f
          printf "# %d MACs per iteration\n", best >> f
        }
        printf "%-15s inner loop: %2d instructions (%d loads, %d SDOT, %d SMULL/SMLAL(2)) -> %3d MACs: %.2f MAC/instruction\n", k, bi, bl, bs, bm, best, best / bi
      }'
done
