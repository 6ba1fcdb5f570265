#!/usr/bin/env bash
# Writes the models the hostile-file suite mutates (runtime/tests/data/*.dmq): the tiny fixture UNet,
# the class-conditional UNet with a folded time path (class-label lookup, invariant ops, time
# table), and the denoising-diffusion-pytorch UNet (RmsNorm, linear attention). Run after a format change; `cargo test -p dmq-runtime --features std --test hostile` checks
# that they load, and the compiler test `hostile_fixtures_are_current` that they are what dmqc makes.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build -q --release -p dmq-compiler
out=runtime/tests/data
mkdir -p "$out"
./target/release/dmqc compile tests/fixtures/tiny_unet.onnx -o "$out/tiny.dmq" \
  --steps 5 --calib-samples 2 --eval-samples 1 --no-baseline --calib-source forward >/dev/null
./target/release/dmqc compile tests/fixtures/unet2d_class.onnx -o "$out/class_fold.dmq" \
  --steps 5 --calib-samples 2 --eval-samples 1 --no-baseline --protect none --calib-source forward \
  --calib class_labels=uniform:0,9 --fold-time-path >/dev/null
./target/release/dmqc compile tests/fixtures/ddp_unet.onnx -o "$out/ddp.dmq" \
  --steps 5 --calib-samples 2 --eval-samples 1 --no-baseline --calib-source forward >/dev/null
ls -l "$out"
