"""Manual check (not part of the test suite; needs Python with torch, diffusers, onnx, onnxruntime,
onnxscript): a Stable-Diffusion-shaped diffusers UNet2DConditionModel at small width — the default
block types (three cross-attention down blocks), two layers per block, linear projections, 77 text
tokens, 2.5 M random parameters, 10-14 MB of ONNX, too large to commit — exported with both
exporters, compiled by `dmqc compile` with default flags plus `--calib` for the text embedding and
`--calib-source forward` (random weights: the model's own trajectories drift), run
through the runtime (`dmqc run`) and compared with ONNX Runtime at three timesteps.

    cargo build --release -p dmq-compiler
    python scripts/check_sd_like.py [WORK_DIR]      # about 12 minutes per export on 2 cores
"""
import glob
import os
import subprocess
import sys

import numpy as np
import onnxruntime as ort
import torch
from diffusers import UNet2DConditionModel

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests", "fixtures"))
from make_condition_fixture import Wrapped  # noqa: E402

DMQC = os.path.join(ROOT, "target", "release", "dmqc")


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else "/tmp/dmq-sd-like"
    os.makedirs(out, exist_ok=True)
    torch.manual_seed(4)
    m = UNet2DConditionModel(sample_size=16, in_channels=4, out_channels=4, layers_per_block=2,
                             block_out_channels=(32, 32, 64, 64), cross_attention_dim=64,
                             attention_head_dim=8, norm_num_groups=8, use_linear_projection=True).eval()
    x, e = torch.randn(1, 4, 16, 16), torch.randn(1, 77, 64)
    np.save(f"{out}/x.npy", x.numpy())
    np.save(f"{out}/text.npy", e.numpy())
    names = ["sample", "timestep", "encoder_hidden_states"]
    for dynamo in (False, True):
        tag = "dynamo" if dynamo else "torchscript"
        onnx_path = f"{out}/{tag}.onnx"
        kw = dict(input_names=names, output_names=["out"], opset_version=18 if dynamo else 17,
                  dynamo=dynamo)
        if dynamo:
            kw["external_data"] = False
        torch.onnx.export(Wrapped(m), (x, torch.tensor([500.0]), e), onnx_path, **kw)
        sess = ort.InferenceSession(onnx_path)
        dmq = f"{out}/{tag}.dmq"
        subprocess.run([DMQC, "compile", onnx_path, "-o", dmq, "--calib",
                        "encoder_hidden_states=normal:0,1", "--calib-source", "forward"], check=True)
        for t in (50, 500, 950):
            np.save(f"{out}/t.npy", np.array([t], dtype=np.float32))
            ref = sess.run(None, {"sample": x.numpy(), "timestep": np.array([t], dtype=np.float32),
                                  "encoder_hidden_states": e.numpy()})[0]
            run_dir = f"{out}/run_{tag}_{t}"
            subprocess.run([DMQC, "run", dmq, "--input", f"sample={out}/x.npy", "--input",
                            f"timestep={out}/t.npy", "--input",
                            f"encoder_hidden_states={out}/text.npy", "-o", run_dir],
                           check=True, stdout=subprocess.DEVNULL)
            y = np.load(glob.glob(f"{run_dir}/*.npy")[0])
            sqnr = 10 * np.log10((ref ** 2).sum() / ((ref - y) ** 2).sum())
            print(f"{tag} t={t}: {sqnr:.2f} dB against ONNX Runtime")


if __name__ == "__main__":
    main()
