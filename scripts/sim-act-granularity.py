"""Float simulation (ONNX Runtime, QuantizeLinear/DequantizeLinear pairs) of what finer activation
scales could buy an int8 graph, on the two trained epsilon-prediction DDPMs in the repository.

Not used by tests or CI: it answers a design question for the quality issue with a measurement.
Every 4-D activation the runtime would write (convolutions, GroupNorm and SiLU outputs, residual
adds, concatenations, attention products) is fake-quantized to int8 with min-max ranges taken on 8
calibration inputs at the same t; convolution weights are fake-quantized to 8 bits per output
channel. Three variants of the activation scales, output SQNR against float on 8 other inputs:

  per-tensor   one scale and zero point per tensor (what dmq's int8 streams do)
  smoothquant  SiLU outputs that feed convolutions migrated SmoothQuant-style (alpha 0.5): each
               channel divided by s_c = r_c^0.5 / w_c^0.5 and the convolution's input channel
               multiplied by it before its weights are quantized; everything else per tensor
  per-channel  every tensor with its own scale and zero point per channel (an upper bound: the
               runtime's GroupNorm, LUTs and adds could not consume this without new kernels)

Inputs are forward-process samples x_t = sqrt(abar) x0 + sqrt(1 - abar) eps with x0 from the data
each model was trained on (scikit-learn's digits, 16x16; patches of its two sample photographs).

  python scripts/sim-act-granularity.py            # both models, t = 1, 101, 981
Run from the repository root. Needs numpy, onnx, onnxruntime, torch, diffusers, scikit-learn.
"""
import sys

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper, shape_inference

sys.path.insert(0, "tests/fixtures")

BETAS = np.linspace(1e-4, 0.02, 1000)
ABAR = np.cumprod(1 - BETAS)


def digits_data():
    import torch
    import torch.nn.functional as F
    from sklearn.datasets import load_digits

    x = torch.tensor(load_digits().images, dtype=torch.float32)[:, None] / 16.0
    return (F.interpolate(x, size=(16, 16), mode="bilinear", align_corners=False) * 2 - 1).numpy()


def patch_data():
    from make_patches_ddpm_fixture import patches
    from sklearn.datasets import load_sample_images

    return patches(load_sample_images().images)


MODELS = [
    ("models/digits_unet.onnx", digits_data, np.float32),
    ("tests/fixtures/patches_ddpm.onnx", patch_data, np.int64),
]


def sqnr(x, y):
    return 10 * np.log10((x**2).sum() / ((x - y) ** 2).sum())


class Sim:
    def __init__(self, path, data, tdtype):
        self.path, self.data, self.tdtype = path, data, tdtype
        g = shape_inference.infer_shapes(onnx.load(path)).graph
        rank = {vi.name: len(vi.type.tensor_type.shape.dim) for vi in g.value_info}
        prod = {o: n for n in g.node for o in n.output}
        kinds = ("Conv", "Add", "Mul", "Concat", "MatMul", "Softmax")
        # GroupNorm's inner Mul is not a tensor the runtime writes
        self.acts = [
            n.output[0]
            for n in g.node
            if n.op_type in kinds
            and rank.get(n.output[0]) == 4
            and not ("norm" in n.output[0] and n.op_type == "Mul")
        ]
        users = {}
        for n in g.node:
            for i in n.input:
                users.setdefault(i, []).append(n)
        self.users = users

        def silu(n):
            if n.op_type != "Mul" or len(n.input) != 2:
                return False
            return any(
                prod.get(n.input[i]) is not None
                and prod[n.input[i]].op_type == "Sigmoid"
                and prod[n.input[i]].input[0] == n.input[1 - i]
                for i in (0, 1)
            )

        self.silu = [
            n.output[0]
            for n in g.node
            if silu(n)
            and n.output[0] in self.acts
            and any(u.op_type == "Conv" for u in users.get(n.output[0], []))
        ]

    def inputs(self, t, seed, n=8):
        rng = np.random.default_rng(seed)
        x0 = self.data[rng.choice(len(self.data), n)]
        eps = rng.standard_normal(x0.shape).astype(np.float32)
        return (np.sqrt(ABAR[t]) * x0 + np.sqrt(1 - ABAR[t]) * eps).astype(np.float32)

    def run(self, model, xs, t):
        s = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        tt = np.array([t], dtype=self.tdtype)
        r = [s.run(None, {"sample": x[None], "timestep": tt}) for x in xs]
        return [np.concatenate([a[j] for a in r]) for j in range(len(r[0]))]

    def calibrate(self, t):
        m = onnx.load(self.path)
        del m.graph.output[:]
        for a in self.acts:
            m.graph.output.append(helper.make_tensor_value_info(a, TensorProto.FLOAT, None))
        return dict(zip(self.acts, self.run(m, self.inputs(t, 11), t)))

    def build(self, cal, mode):
        m = onnx.load(self.path)
        g = m.graph
        inits = {i.name: i for i in g.initializer}
        folds = {}
        for a in self.acts:
            v = cal[a]
            kw = {"axis": 1}
            if mode == "per-channel":
                lo = np.minimum(v.min(axis=(0, 2, 3)), 0)
                hi = np.maximum(v.max(axis=(0, 2, 3)), 0)
                sc = np.maximum((hi - lo) / 255, 1e-8).astype(np.float32)
                zp = np.clip(np.round(-128 - lo / sc), -128, 127).astype(np.int8)
            elif mode == "smoothquant" and a in self.silu:
                r = np.abs(v).max(axis=(0, 2, 3))
                convs = [u for u in self.users[a] if u.op_type == "Conv"]
                w = np.max(
                    [np.abs(numpy_helper.to_array(inits[u.input[1]])).max(axis=(0, 2, 3)) for u in convs],
                    axis=0,
                )
                s = np.sqrt(np.maximum(r, 1e-6)) / np.sqrt(np.maximum(w, 1e-6))
                s = s / s.max()
                xp = v / s[None, :, None, None]
                lo, hi = min(xp.min(), 0), max(xp.max(), 0)
                step = max((hi - lo) / 255, 1e-8)
                z = int(np.clip(np.round(-128 - lo / step), -128, 127))
                sc = (step * s).astype(np.float32)
                zp = np.full(len(s), z, np.int8)
                folds[a] = s
            else:
                lo, hi = min(v.min(), 0), max(v.max(), 0)
                step = max((hi - lo) / 255, 1e-8)
                sc = np.array(step, np.float32)
                zp = np.array(int(np.clip(np.round(-128 - lo / step), -128, 127)), np.int8)
                kw = {}
            g.initializer.extend([numpy_helper.from_array(sc, a + "_s"), numpy_helper.from_array(zp, a + "_z")])
            for n in g.node:
                for k, i in enumerate(n.input):
                    if i == a:
                        n.input[k] = a + "_fq"
            g.node.extend(
                [
                    helper.make_node("QuantizeLinear", [a, a + "_s", a + "_z"], [a + "_q"], **kw),
                    helper.make_node("DequantizeLinear", [a + "_q", a + "_s", a + "_z"], [a + "_fq"], **kw),
                ]
            )
        for n in g.node:
            if n.op_type == "Conv" and n.input[1] in inits:
                w = numpy_helper.to_array(inits[n.input[1]]).astype(np.float64)
                src = n.input[0][:-3] if n.input[0].endswith("_fq") else n.input[0]
                f = folds.get(src)
                f = f[None, :, None, None] if f is not None else 1.0
                wf = w * f
                step = np.maximum(np.abs(wf).reshape(w.shape[0], -1).max(1) / 127, 1e-12)[:, None, None, None]
                wq = np.clip(np.round(wf / step), -127, 127) * step / f
                inits[n.input[1]].CopyFrom(numpy_helper.from_array(wq.astype(np.float32), n.input[1]))
        # the new nodes were appended: put them back in an order ONNX accepts
        ready = {i.name for i in g.initializer} | {i.name for i in g.input}
        todo, order = list(g.node), []
        while todo:
            rest = []
            for n in todo:
                if all(i == "" or i in ready for i in n.input):
                    order.append(n)
                    ready.update(n.output)
                else:
                    rest.append(n)
            if len(rest) == len(todo):
                raise SystemExit("graph has a cycle")
            todo = rest
        del g.node[:]
        g.node.extend(order)
        return m


def main():
    for path, data, tdtype in MODELS:
        sim = Sim(path, data(), tdtype)
        print(f"{path}: {len(sim.acts)} activations, {len(sim.silu)} SiLU outputs feeding convolutions")
        for t in (1, 101, 981):
            cal = sim.calibrate(t)
            xs = sim.inputs(t, 22)
            ref = sim.run(onnx.load(path), xs, t)[0]
            row = [f"{sqnr(ref, sim.run(sim.build(cal, mode), xs, t)[0]):6.2f}" for mode in ("per-tensor", "smoothquant", "per-channel")]
            print(f"  t = {t:3d}: per-tensor {row[0]} dB, smoothquant {row[1]} dB, per-channel {row[2]} dB")


if __name__ == "__main__":
    main()
