#!/usr/bin/env python3
"""dmq against ONNX Runtime f32 on the same CPU: mean latency per evaluation, best round of each.

    python3 scripts/bench-vs-onnxruntime.py [--onnx MODEL.onnx --dmq MODEL.dmq] [--threads T]
                                            [--rounds R] [--runs N]

Without --onnx/--dmq it measures a 128x128 diffusers UNet2DModel with random weights (block channels
32, 64, 96, 192; attention in the two lowest levels; about 8.7 G multiply-accumulates in its convs
and linears), exported to target/bench/unet128.onnx and compiled with dmqc (about ten minutes, once).
Each round runs ONNX Runtime (CPUExecutionProvider, T intra-op threads) and then `dmq-board bench`
(T threads) with the same extra inputs (each draws its own latent; values do not change the work).
dmq's figure is the mean step over the sampler's own timesteps in sampling order (`dmq-board bench`:
a model whose last steps run int16 op streams pays for them as a generation does); ONNX Runtime's is
its mean evaluation. The ratio is dmq's best round over ONNX Runtime's best round, and every round's
ratio is printed too, because a shared machine's noise is larger than the difference. (Until
2026-12-03 both sides took their fastest single evaluation, which for dmq was its fastest op stream.)
Optional Python (numpy, onnxruntime; torch and diffusers to make the default model); no test needs it.
"""
import argparse, os, re, subprocess, sys, time

import numpy as np
import onnxruntime as ort

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "target", "bench")


def make_unet128(path):
    import torch
    from diffusers import UNet2DModel

    torch.manual_seed(0)
    m = UNet2DModel(sample_size=128, in_channels=3, out_channels=3, layers_per_block=2,
                    block_out_channels=(32, 64, 96, 192),
                    down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
                    up_block_types=("AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
                    attention_head_dim=32, norm_num_groups=32).eval()

    class Eps(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, sample, timestep):
            return self.m(sample, timestep).sample

    x, t = torch.randn(1, 3, 128, 128), torch.tensor([500])
    torch.onnx.export(Eps(m), (x, t), path, input_names=["sample", "timestep"],
                      output_names=["noise_pred"], opset_version=17, dynamo=False)


def run(cmd):
    return subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, text=True).stdout


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--onnx")
    ap.add_argument("--dmq")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--runs", type=int, default=0, help="evaluations per round (default: about 2 s worth)")
    a = ap.parse_args()
    os.makedirs(BENCH, exist_ok=True)
    if not a.onnx:
        a.onnx, a.dmq = os.path.join(BENCH, "unet128.onnx"), os.path.join(BENCH, "unet128.dmq")
        if not os.path.exists(a.onnx):
            print("exporting the 128x128 UNet ...", file=sys.stderr)
            make_unet128(a.onnx)
    if not a.dmq:
        sys.exit("--dmq is needed with --onnx")
    run(["cargo", "build", "-q", "--release", "-p", "dmq-compiler", "-p", "dmq-board"])
    if not os.path.exists(a.dmq):
        print("compiling with dmqc (calibration on 2 trajectories of 10 steps) ...", file=sys.stderr)
        run(["target/release/dmqc", "compile", a.onnx, "-o", a.dmq, "--steps", "10", "--calib-samples", "2",
             "--eval-samples", "1", "--no-baseline", "--floor-db", "0", "--protect", "none",
             "--calib-source", "forward"])

    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = a.threads, 1
    sess = ort.InferenceSession(a.onnx, so, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    feeds, flags = {}, []
    for i in sess.get_inputs():
        shape = [d if isinstance(d, int) else 1 for d in i.shape]
        if "int" in i.type:
            feeds[i.name] = np.full(shape, 500, dtype=np.int64)
        elif "time" in i.name.lower() or len(shape) <= 1:
            feeds[i.name] = np.full(shape, 500.0, dtype=np.float32)
        else:
            feeds[i.name] = rng.standard_normal(shape).astype(np.float32)
            path = os.path.join(BENCH, f"input-{i.name}.npy")
            np.save(path, feeds[i.name])
            flags += ["--input", f"{i.name}={path}"]
    for _ in range(3):
        sess.run(None, feeds)
    t0 = time.perf_counter()
    sess.run(None, feeds)
    runs = a.runs or max(3, min(200, int(2.0 / max(time.perf_counter() - t0, 1e-4))))

    rows = []
    del sess  # its worker threads spin after a run: each round has its own session, gone before dmq runs
    for r in range(a.rounds):
        sess = ort.InferenceSession(a.onnx, so, providers=["CPUExecutionProvider"])
        for _ in range(3):
            sess.run(None, feeds)
        ts = []
        for _ in range(runs):
            t0 = time.perf_counter()
            sess.run(None, feeds)
            ts.append(time.perf_counter() - t0)
        ort_mean = 1e3 * sum(ts) / len(ts)
        del sess
        out = run(["target/release/dmq-board", "bench", a.dmq, "--runs", str(runs), "--threads", str(a.threads)] + flags)
        dmq_mean = float(re.search(r"mean ([0-9.]+) ms", out).group(1))
        tier = (re.search(r"kernel tier (\w+)", out) or [None, "?"])[1]
        rows.append((ort_mean, dmq_mean))
        print(f"round {r + 1}: ONNX Runtime f32 {ort_mean:.3f} ms, dmq {dmq_mean:.3f} ms, ratio {dmq_mean / ort_mean:.3f}")
    o, d = min(x[0] for x in rows), min(x[1] for x in rows)
    print(f"{os.path.basename(a.onnx)}, {a.threads} thread(s), dmq tier {tier}, {runs} evaluations x {a.rounds} rounds: "
          f"ONNX Runtime f32 {o:.3f} ms, dmq {d:.3f} ms, ratio {d / o:.3f} (mean step, best round against best round)")


if __name__ == "__main__":
    main()
