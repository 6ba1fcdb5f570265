"""Train dmq's bundled model: a small DDPM UNet on scikit-learn's handwritten digits.

Fixture maker only (the Rust tests and CI never run Python). Writes models/digits_unet.onnx,
models/digits_float_samples.png and models/train_log.txt.

    python models/train_digits.py [--steps 6000]

The architecture uses what real diffusion UNets use: 3x3 and 1x1 convs, GroupNorm, SiLU, a sinusoidal
timestep embedding with an MLP, residual blocks with a time projection, strided-conv downsampling,
nearest upsampling, skip concatenation and multi-head self-attention. Export follows the diffusers
convention: inputs `sample` (N,1,16,16) and `timestep` (N,) float32, output `noise_pred`; the noise
schedule is diffusers' DDPM default (1000 steps, linear betas 1e-4 .. 0.02).
"""
import argparse
import math
import os
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from sklearn.datasets import load_digits

HERE = os.path.dirname(os.path.abspath(__file__))
T_TRAIN = 1000


def timestep_embedding(t, dim):
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None, :]
    return torch.cat([torch.sin(args), torch.cos(args)], dim=-1)


class ResBlock(nn.Module):
    def __init__(self, cin, cout, tdim, groups=8):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.time_proj = nn.Linear(tdim, cout)
        self.norm2 = nn.GroupNorm(groups, cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.shortcut = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x, temb):
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.time_proj(F.silu(temb))[:, :, None, None]
        h = self.conv2(F.silu(self.norm2(h)))
        return self.shortcut(x) + h


class SelfAttention(nn.Module):
    def __init__(self, ch, heads=2, groups=8):
        super().__init__()
        self.heads = heads
        self.norm = nn.GroupNorm(groups, ch)
        self.to_q = nn.Linear(ch, ch)
        self.to_k = nn.Linear(ch, ch)
        self.to_v = nn.Linear(ch, ch)
        self.to_out = nn.Linear(ch, ch)

    def forward(self, x):
        b, c, h, w = x.shape
        y = self.norm(x).reshape(b, c, h * w).transpose(1, 2)  # (b, hw, c)
        d = c // self.heads

        def split(z):
            return z.reshape(b, h * w, self.heads, d).transpose(1, 2)  # (b, heads, hw, d)

        q, k, v = split(self.to_q(y)), split(self.to_k(y)), split(self.to_v(y))
        att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d), dim=-1)
        o = (att @ v).transpose(1, 2).reshape(b, h * w, c)
        o = self.to_out(o).transpose(1, 2).reshape(b, c, h, w)
        return x + o


class DigitsUNet(nn.Module):
    def __init__(self, ch=(32, 64, 64), tdim=128):
        super().__init__()
        c0, c1, c2 = ch
        self.temb_dim = 32
        self.time_mlp = nn.Sequential(nn.Linear(self.temb_dim, tdim), nn.SiLU(), nn.Linear(tdim, tdim))
        self.conv_in = nn.Conv2d(1, c0, 3, padding=1)
        self.down0 = ResBlock(c0, c0, tdim)
        self.ds0 = nn.Conv2d(c0, c0, 3, stride=2, padding=1)  # 16 -> 8
        self.down1 = ResBlock(c0, c1, tdim)
        self.attn1 = SelfAttention(c1)
        self.ds1 = nn.Conv2d(c1, c1, 3, stride=2, padding=1)  # 8 -> 4
        self.mid1 = ResBlock(c1, c2, tdim)
        self.mid_attn = SelfAttention(c2)
        self.mid2 = ResBlock(c2, c2, tdim)
        self.up1 = ResBlock(c2 + c1, c1, tdim)
        self.up1_attn = SelfAttention(c1)
        self.up0 = ResBlock(c1 + c0, c0, tdim)
        self.norm_out = nn.GroupNorm(8, c0)
        self.conv_out = nn.Conv2d(c0, 1, 3, padding=1)

    def forward(self, sample, timestep):
        temb = self.time_mlp(timestep_embedding(timestep, self.temb_dim))
        h0 = self.down0(self.conv_in(sample), temb)                 # 16x16, c0
        h1 = self.attn1(self.down1(self.ds0(h0), temb))             # 8x8, c1
        m = self.ds1(h1)                                            # 4x4
        m = self.mid2(self.mid_attn(self.mid1(m, temb)), temb)
        u = F.interpolate(m, scale_factor=2.0, mode="nearest")      # 8x8
        u = self.up1_attn(self.up1(torch.cat([u, h1], dim=1), temb))
        u = F.interpolate(u, scale_factor=2.0, mode="nearest")      # 16x16
        u = self.up0(torch.cat([u, h0], dim=1), temb)
        return self.conv_out(F.silu(self.norm_out(u)))


def load_data():
    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32)[:, None] / 16.0  # (n,1,8,8) in [0,1]
    x = F.interpolate(x, size=(16, 16), mode="bilinear", align_corners=False)
    return x * 2.0 - 1.0


def ddim_sample(model, n, steps, seed, alphas_cumprod):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 16, 16, generator=g)
    ratio = T_TRAIN // steps
    ts = [i * ratio + 1 for i in range(steps)][::-1]  # diffusers "leading" spacing, steps_offset=1
    for i, t in enumerate(ts):
        prev = t - ratio
        a_t = alphas_cumprod[t]
        a_prev = alphas_cumprod[prev] if prev >= 0 else torch.tensor(1.0)
        eps = model(x, torch.full((n,), float(t)))
        x0 = (x - (1 - a_t).sqrt() * eps) / a_t.sqrt()
        x = a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps
    return x


def save_grid(x, path, cols=8):
    from PIL import Image
    x = ((x.clamp(-1, 1) + 1) * 127.5).round().byte().numpy()[:, 0]
    n = x.shape[0]
    rows = (n + cols - 1) // cols
    grid = np.zeros((rows * 18, cols * 18), dtype=np.uint8)
    for i in range(n):
        r, c = divmod(i, cols)
        grid[r * 18 + 1:r * 18 + 17, c * 18 + 1:c * 18 + 17] = x[i]
    Image.fromarray(grid).resize((cols * 18 * 4, rows * 18 * 4), Image.NEAREST).save(path)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=6000)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    torch.set_num_threads(2)

    data = load_data()
    betas = torch.linspace(1e-4, 0.02, T_TRAIN, dtype=torch.float64)
    alphas_cumprod = torch.cumprod(1 - betas, 0).float()

    model = DigitsUNet()
    params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=args.steps, pct_start=0.05)
    ema = DigitsUNet()
    ema.load_state_dict(model.state_dict())
    for p in ema.parameters():
        p.requires_grad_(False)

    log = []
    t0 = time.time()
    for step in range(args.steps):
        idx = torch.randint(0, data.shape[0], (args.batch,))
        x0 = data[idx]
        t = torch.randint(0, T_TRAIN, (args.batch,))
        noise = torch.randn_like(x0)
        a = alphas_cumprod[t][:, None, None, None]
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
        loss = F.mse_loss(model(xt, t.float()), noise)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        with torch.no_grad():
            decay = min(0.999, (1 + step) / (10 + step))
            for pe, pm in zip(ema.parameters(), model.parameters()):
                pe.mul_(decay).add_(pm, alpha=1 - decay)
        if step % 200 == 0 or step == args.steps - 1:
            line = f"step {step:5d} loss {loss.item():.4f} elapsed {time.time() - t0:7.1f}s"
            print(line, flush=True)
            log.append(line)
    train_s = time.time() - t0

    ema.eval()
    with torch.no_grad():
        samples = ddim_sample(ema, 32, 50, 1234, alphas_cumprod)
    save_grid(samples, os.path.join(HERE, "digits_float_samples.png"))

    onnx_path = os.path.join(HERE, "digits_unet.onnx")
    dummy = (torch.randn(1, 1, 16, 16), torch.tensor([500.0]))
    torch.onnx.export(ema, dummy, onnx_path, input_names=["sample", "timestep"], output_names=["noise_pred"],
                      dynamic_axes={"sample": {0: "batch"}, "timestep": {0: "batch"}, "noise_pred": {0: "batch"}},
                      opset_version=17, dynamo=False)
    with open(os.path.join(HERE, "train_log.txt"), "w") as f:
        f.write(f"parameters {params}\nsteps {args.steps} batch {args.batch}\n")
        f.write(f"training wall time {train_s:.1f}s on {torch.get_num_threads()} CPU threads\n")
        f.write(f"torch {torch.__version__}\n")
        f.write("\n".join(log) + "\n")
    print(f"params {params}, trained in {train_s:.1f}s, wrote {onnx_path} ({os.path.getsize(onnx_path)} bytes)")


if __name__ == "__main__":
    main()
