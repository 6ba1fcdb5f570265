"""Manual check (not part of the test suite; needs Python with torch, diffusers, onnx, onnxruntime):
an SD-1.5-sized UNet end to end. diffusers' UNet2DConditionModel with the Stable Diffusion 1.5
configuration (860 M parameters, 64x64x4 latents, 77x768 text embeddings) and random weights,
exported by the TorchScript exporter (opset 17; over 2 GB, so one external data file per tensor),
compiled by `dmqc compile` under /usr/bin/time (wall time and peak RSS of dmqc), run through the
runtime (`dmqc run`) against ONNX Runtime at three timesteps, and timed per step with
`dmq-board bench` against ONNX Runtime f32 on one thread.

    cargo build --release -p dmq-compiler -p dmq-board
    python scripts/check_sd15.py [WORK_DIR] [-- extra dmqc compile flags]

Needs about 20 GB of disk (the ONNX export, 3.4 GB, is written once and reused) and, for dmqc,
under 16 GB of RAM. Random weights: calibration uses `--calib-source forward`.
"""
import glob
import json
import os
import re
import subprocess
import sys
import time

import numpy as np
import onnxruntime as ort

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DMQC = os.path.join(ROOT, "target", "release", "dmqc")
BOARD = os.path.join(ROOT, "target", "release", "dmq-board")
NAMES = ["sample", "timestep", "encoder_hidden_states"]


def export(out):
    import torch
    from diffusers import UNet2DConditionModel

    sys.path.insert(0, os.path.join(ROOT, "tests", "fixtures"))
    from make_condition_fixture import Wrapped

    torch.manual_seed(15)
    m = UNet2DConditionModel(sample_size=64, cross_attention_dim=768).eval()  # the SD 1.5 config
    print(f"parameters: {sum(p.numel() for p in m.parameters()) / 1e6:.1f} M", flush=True)
    x, e = torch.randn(1, 4, 64, 64), torch.randn(1, 77, 768)
    np.save(f"{out}/x.npy", x.numpy())
    np.save(f"{out}/text.npy", e.numpy())
    with torch.no_grad():
        torch.onnx.export(Wrapped(m), (x, torch.tensor([500.0]), e), f"{out}/unet.onnx",
                          input_names=NAMES, output_names=["out"], opset_version=17, dynamo=False)


def sh(cmd, **kw):
    print("$", " ".join(cmd), flush=True)
    return subprocess.run(cmd, check=True, **kw)


def main():
    args = sys.argv[1:]
    extra = args[args.index("--") + 1:] if "--" in args else []
    args = args[:args.index("--")] if "--" in args else args
    out = args[0] if args else "/tmp/dmq-sd15"
    os.makedirs(out, exist_ok=True)
    onnx_path = f"{out}/unet.onnx"
    if not os.path.exists(onnx_path):
        export(out)
    dmq = f"{out}/sd15.dmq"
    t0 = time.time()
    r = sh(["/usr/bin/time", "-v", DMQC, "compile", onnx_path, "-o", dmq, "--report",
            f"{out}/report.json", "--calib", "encoder_hidden_states=normal:0,1",
            "--calib-source", "forward"] + extra, capture_output=True, text=True)
    wall = time.time() - t0
    print(r.stdout)
    rss_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", r.stderr).group(1))
    rep = json.load(open(f"{out}/report.json"))
    x, e = np.load(f"{out}/x.npy"), np.load(f"{out}/text.npy")
    o = ort.SessionOptions()
    o.intra_op_num_threads = 1
    sess = ort.InferenceSession(onnx_path, o)
    dbs, ort_s = [], []
    for t in (50, 500, 950):
        ts = np.array([t], dtype=np.float32)
        np.save(f"{out}/t.npy", ts)
        t1 = time.time()
        ref = sess.run(None, {"sample": x, "timestep": ts, "encoder_hidden_states": e})[0]
        ort_s.append(time.time() - t1)
        run_dir = f"{out}/run_{t}"
        sh([DMQC, "run", dmq, "--input", f"sample={out}/x.npy", "--input", f"timestep={out}/t.npy",
            "--input", f"encoder_hidden_states={out}/text.npy", "-o", run_dir],
           stdout=subprocess.DEVNULL)
        y = np.load(glob.glob(f"{run_dir}/*.npy")[0])
        dbs.append(10 * np.log10((ref ** 2).sum() / ((ref - y) ** 2).sum()))
    bench = sh([BOARD, "bench", dmq, "--runs", "3", "--input", f"encoder_hidden_states={out}/text.npy"],
               capture_output=True, text=True).stdout
    print(bench)
    print(f"compile: {wall / 60:.1f} min wall, dmqc peak RSS {rss_kb / 2**20:.2f} GiB")
    # dmqc counts the .onnx file and every external data file it names
    print(f".dmq {rep['dmq_bytes']} bytes = {rep['size_ratio']:.3f} x the ONNX files' "
          f"{rep['onnx_bytes']} bytes; arena {rep['arena_bytes']} bytes")
    print("SQNR against ONNX Runtime: " + ", ".join(
        f"t={t} {db:.2f} dB" for t, db in zip((50, 500, 950), dbs)))
    print(f"ONNX Runtime f32, 1 thread: {min(ort_s):.2f} s per evaluation (best of 3 timesteps)")


if __name__ == "__main__":
    main()
