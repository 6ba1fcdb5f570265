"""Float simulation (ONNX Runtime) of what per-group 4-bit weight scales could buy over dmq's
per-output-channel scales, on the two trained epsilon-prediction DDPMs in the repository.

Not used by tests or CI: it answers a design question for the quality issue with a measurement.
Every convolution weight and every constant MatMul/Gemm weight is fake-quantized, symmetric, with
nearest rounding (no GPTQ), codes in [-7, 7] at 4 bits and [-127, 127] at 8 bits, each scale chosen
as dmq chooses a row's: the clipping ratio that minimises the squared error:

  w8 channel    8 bits, one scale per output channel (dmq's W8)
  w4 channel    4 bits, one scale per output channel (dmq's W4 scales)
  w4 group G    4 bits, one scale per output channel and per run of G weights along its depth
                (input channels x kernel taps, in ONNX order): what a per-group kernel would run

Two columns per variant, output SQNR against float on 8 forward-process inputs per t: the weights
alone (activations float), and the weights with int8 activations, one min-max scale per tensor
taken on 8 other inputs at the same t (`sim-act-granularity.py`'s per-tensor quantizers: close to
what dmq's int8 streams run, without its int16 tensors).

  python scripts/sim-w4-groups.py            # both models, t = 1, 101, 501, 981
Run from the repository root. Needs numpy, onnx, onnxruntime, torch, scikit-learn.
"""
import importlib.util
import os

import numpy as np
import onnx
from onnx import numpy_helper

_spec = importlib.util.spec_from_file_location(
    "sim_act", os.path.join(os.path.dirname(os.path.abspath(__file__)), "sim-act-granularity.py")
)
sim_act = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(sim_act)

VARIANTS = [("w8 channel", 8, 0), ("w4 channel", 4, 0), ("w4 group 64", 4, 64), ("w4 group 32", 4, 32), ("w4 group 16", 4, 16)]


def fake_quant(w, bits, group, depth_axis):
    """`w` fake-quantized per output channel (all axes but `depth_axis` of a MatMul weight, axis 0 of
    a convolution) and, with `group`, per run of `group` weights along the depth."""
    if depth_axis == 0:  # MatMul [K, N]: output channels are columns
        return fake_quant(w.T, bits, group, 1).T
    rows = w.reshape(w.shape[0], -1).astype(np.float64)
    k = rows.shape[1]
    g = group if group else k
    pad = (-k) % g
    r = np.pad(rows, ((0, 0), (0, pad))).reshape(rows.shape[0], -1, g)
    qmax = 2 ** (bits - 1) - 1
    top = np.maximum(np.abs(r).max(axis=2, keepdims=True), 1e-12)
    best, err = None, None
    # dmq's clipping search: each row's (here: each group's) scale minimises the squared rounding
    # and clipping error over clipping ratios (1.0, plain min-max, is one of them)
    for ratio in np.linspace(0.2, 1.0, 81):
        step = top * ratio / qmax
        q = np.clip(np.round(r / step), -qmax, qmax) * step
        e = ((q - r) ** 2).sum(axis=2, keepdims=True)
        if best is None:
            best, err = q, e
        else:
            better = e < err
            best, err = np.where(better, q, best), np.minimum(e, err)
    return best.reshape(rows.shape[0], -1)[:, :k].reshape(w.shape).astype(np.float32)


def quantize_weights(m, orig, bits, group):
    """Replaces `m`'s constant Conv and MatMul/Gemm weights by the fake-quantized weights of `orig`
    (the unquantized model with the same initializer names)."""
    src = {i.name: numpy_helper.to_array(i) for i in orig.graph.initializer}
    inits = {i.name: i for i in m.graph.initializer}
    for n in m.graph.node:
        if n.op_type == "Conv" and n.input[1] in src:
            w = fake_quant(src[n.input[1]], bits, group, 1)
        elif n.op_type in ("MatMul", "Gemm") and len(n.input) > 1 and n.input[1] in src and src[n.input[1]].ndim == 2:
            trans = n.op_type == "Gemm" and any(a.name == "transB" and a.i == 1 for a in n.attribute)
            w = fake_quant(src[n.input[1]], bits, group, 1 if trans else 0)
        else:
            continue
        inits[n.input[1]].CopyFrom(numpy_helper.from_array(w, n.input[1]))
    return m


def main():
    for path, data, tdtype in sim_act.MODELS:
        sim = sim_act.Sim(path, data(), tdtype)
        orig = onnx.load(path)
        print(f"{path}: SQNR against float, weights alone / with per-tensor int8 activations")
        for t in (1, 101, 501, 981):
            cal = sim.calibrate(t)
            xs = sim.inputs(t, 22)
            ref = sim.run(orig, xs, t)[0]
            cells = []
            for name, bits, group in VARIANTS:
                alone = sim.run(quantize_weights(onnx.load(path), orig, bits, group), xs, t)[0]
                acts = sim.run(quantize_weights(sim.build(cal, "per-tensor"), orig, bits, group), xs, t)[0]
                cells.append(f"{name} {sim_act.sqnr(ref, alone):5.1f} / {sim_act.sqnr(ref, acts):5.1f}")
            print(f"  t = {t:3d}: " + ", ".join(cells))


if __name__ == "__main__":
    main()
