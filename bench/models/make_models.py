"""Models and data for the benchmarks (Debian's PyTorch, onnx and numpy only).

Usage: make_models.py OUTDIR

Writes into OUTDIR:
  resnet18.onnx, lenet.onnx           fp32, opset 13, dynamic batch, input "input", output "output",
                                      BatchNormalization kept (exported in eval mode without
                                      constant folding, so node names keep their module scope)
  {resnet18,lenet}_qdq_w{7,8}.onnx    the same with Q/DQ nodes placed as ONNX Runtime's quantizer
                                      places them (QDQ format): uint8 asymmetric activations on the
                                      inputs and outputs of every Conv/Gemm and around the residual
                                      Add, Relu folded into the preceding range, BN folded, weights
                                      symmetric int8 per output channel (7-bit: [-63, 63]; 8-bit:
                                      [-127, 127]), int32 bias
  calib_{lenet,resnet}.npy            512 Fashion-MNIST training images, normalised
  bench_{lenet,resnet}.npy            128 Fashion-MNIST test images (the benchmark input)
  resnet18.pth, lenet.pth             the weights when examples/checkpoints/ has no trained ones
                                      (examples/train.py makes those): a fixed seed, randomised
                                      BatchNorm statistics
The models are those of examples/models.py.
The images are read as examples/fashion_mnist.py reads them: scaled to [0, 1], normalised (mean
0.2860, std 0.3530); for ResNet18 padded to 32x32 with black and repeated to 3 channels.
"""
import importlib.util
import inspect
import os
import sys

import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper
from torch import nn



# --- the models: examples/models.py, the repository's one definition of them ----------------------
HERE = os.path.dirname(os.path.abspath(__file__))
EXAMPLES = os.path.join(HERE, "..", "..", "examples")


def _example(name):
    spec = importlib.util.spec_from_file_location(f"examples_{name}", os.path.join(EXAMPLES, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


NETS, FMNIST = _example("models"), _example("fashion_mnist")  # FMNIST: the data, as examples/ reads it
MODELS = {"resnet18": (NETS.ResNet18, "resnet"), "lenet": (NETS.LeNet, "lenet")}  # -> input kind


def checkpoint(name, outdir):
    """examples/checkpoints/<name>.pth (trained by examples/train.py) when present, else
    OUTDIR/<name>.pth (written from a fixed seed by load_model when absent)."""
    trained = os.path.join(EXAMPLES, "checkpoints", f"{name}.pth")
    return trained if os.path.exists(trained) else os.path.join(outdir, f"{name}.pth")


def load_model(name, outdir):
    torch.manual_seed(0)
    model = MODELS[name][0]()
    path = checkpoint(name, outdir)
    if os.path.exists(path):
        model.load_state_dict(torch.load(path, map_location="cpu"))
    else:  # untrained: random BatchNorm statistics, so that folding them is exercised
        gen = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for m in model.modules():
                if isinstance(m, nn.BatchNorm2d):
                    c = m.num_features
                    m.running_mean.copy_(torch.randn(c, generator=gen) * 0.1)
                    m.running_var.copy_(torch.rand(c, generator=gen) * 0.5 + 0.75)
                    m.weight.copy_(torch.rand(c, generator=gen) * 0.5 + 0.75)
                    m.bias.copy_(torch.randn(c, generator=gen) * 0.1)
        torch.save(model.state_dict(), path)
    return model.eval()


# --- Q/DQ models -----------------------------------------------------------------------------------
def module_of(node_name):
    """'/layer1/layer1.0/relu_1/Relu' -> ('layer1.0.relu', 1); '/fc/Gemm' -> ('fc', 0)."""
    scope = node_name.split("/")[1:-1]  # torch writes a Sequential's child as "<seq>.<index>"
    path = ".".join(s for s, nxt in zip(scope, scope[1:] + [""]) if not nxt.startswith(s + "."))
    head, _, call = path.rpartition("_")
    return (head, int(call)) if call.isdigit() else (path, 0)


def activation_ranges(model, calib):
    """(min, max) of every call of every leaf module over the calibration images."""
    stats, calls = {}, {}

    def hook(name):
        def f(mod, inp, out):
            k = calls.get(name, 0)
            calls[name] = k + 1
            lo, hi = out.min().item(), out.max().item()
            old = stats.get((name, k), (lo, hi))
            stats[(name, k)] = (min(lo, old[0]), max(hi, old[1]))
        return f

    leaves = [(n, m) for n, m in model.named_modules() if not list(m.children())]
    handles = [m.register_forward_hook(hook(n)) for n, m in leaves]
    with torch.no_grad():
        for batch in np.array_split(calib, 8):
            calls.clear()
            model(torch.from_numpy(batch))
    for h in handles:
        h.remove()
    return stats


def qparams(lo, hi):
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    scale = (hi - lo) / 255 if hi > lo else 1.0
    return np.float32(scale), np.uint8(np.clip(round(-lo / scale), 0, 255))


def make_qdq(fp32_path, model, calib, wbits, out_path):
    """ORT-style QDQ model from the fp32 graph: fold BN into Conv, fold Relu after Conv/Gemm/Add
    into the output's range, Q/DQ on every Conv/Gemm input and output and on Add's inputs/output."""
    g = onnx.load(fp32_path)
    graph = g.graph
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    # torch.onnx shares equal initializers through Identity nodes: resolve those to constants.
    for n in [n for n in graph.node if n.op_type == "Identity" and n.input[0] in inits]:
        inits[n.output[0]] = inits[n.input[0]]
        graph.node.remove(n)
    stats = activation_ranges(model, calib)
    nodes = list(graph.node)
    consumers = lambda t: [n for n in nodes if t in n.input]
    producer = lambda t: next((n for n in nodes if t in n.output), None)

    def rename_input(old, new):
        for n in nodes:
            n.input[:] = [new if i == old else i for i in n.input]

    # fold BatchNormalization into the Conv before it and Relu after Conv/Gemm/Add into the range
    # of the output: range_owner maps a tensor to the node whose module's output range it has
    range_owner = {}
    for bn in [n for n in nodes if n.op_type == "BatchNormalization"]:
        conv = producer(bn.input[0])
        gamma, beta, mean, var = (inits[i] for i in bn.input[1:5])
        eps = next((a.f for a in bn.attribute if a.name == "epsilon"), 1e-5)
        k = gamma / np.sqrt(var + eps)
        inits[conv.input[1]] = (inits[conv.input[1]] * k[:, None, None, None]).astype(np.float32)
        bias = (inits[conv.input[2]] if len(conv.input) > 2 else 0) * k + beta - mean * k
        inits[conv.name + ".bias"] = bias.astype(np.float32)
        conv.input[:] = [conv.input[0], conv.input[1], conv.name + ".bias"]
        conv.output[0] = bn.output[0]
        range_owner[bn.output[0]] = bn.name
        nodes.remove(bn)
    for relu in [n for n in nodes if n.op_type == "Relu"]:
        src = producer(relu.input[0])
        if src is not None and src.op_type in ("Conv", "Gemm", "Add") and len(consumers(relu.input[0])) == 1:
            src.output[0] = relu.output[0]
            range_owner[relu.output[0]] = relu.name
            nodes.remove(relu)

    def tensor_qparams(t):
        p = producer(t)
        if p is None:
            return qparams(float(calib.min()), float(calib.max()))
        if p.op_type in ("MaxPool", "Flatten", "Reshape"):
            return tensor_qparams(p.input[0])  # ORT keeps the input's scale through these
        owner = range_owner.get(t, p.name)
        lo, hi = stats[module_of(owner)]
        return qparams(lo, hi)

    # activations to quantise: inputs and outputs of Conv/Gemm, inputs and output of Add
    to_quantise = []
    for n in nodes:
        if n.op_type in ("Conv", "Gemm"):
            to_quantise += [n.input[0], n.output[0]]
        elif n.op_type == "Add":
            to_quantise += list(n.input) + [n.output[0]]
    qp = {t: tensor_qparams(t) for t in to_quantise}  # before the graph changes
    new_nodes, new_inits = [], []
    graph_outputs = {o.name for o in graph.output}
    for t, (scale, zp) in qp.items():
        src = t
        if t in graph_outputs:  # the DQ writes the graph output; the producer writes t_fp32
            src = t + "_fp32"
            producer(t).output[0] = src
        new_inits += [numpy_helper.from_array(np.array(scale), t + "_scale"),
                      numpy_helper.from_array(np.array(zp), t + "_zero_point")]
        q = helper.make_node("QuantizeLinear", [src, t + "_scale", t + "_zero_point"], [t + "_q"], t + "_QuantizeLinear")
        dq = helper.make_node("DequantizeLinear", [t + "_q", t + "_scale", t + "_zero_point"],
                              [t if src != t else t + "_dq"], t + "_DequantizeLinear")
        if src == t:
            rename_input(t, t + "_dq")
            q.input[0] = t
        new_nodes += [q, dq]

    # weights: symmetric int8 per output channel; bias int32 with scale input_scale * weight_scale
    qmax = 2 ** (wbits - 1) - 1
    for n in [n for n in nodes if n.op_type in ("Conv", "Gemm")]:
        w = inits.pop(n.input[1])
        wscale = np.maximum(np.abs(w.reshape(w.shape[0], -1)).max(1), 1e-12) / qmax
        wq = np.clip(np.round(w / wscale.reshape(-1, *[1] * (w.ndim - 1))), -qmax, qmax).astype(np.int8)
        wn = n.input[1]
        new_inits += [numpy_helper.from_array(wq, wn + "_quantized"),
                      numpy_helper.from_array(wscale.astype(np.float32), wn + "_scale"),
                      numpy_helper.from_array(np.zeros(len(wscale), np.int8), wn + "_zero_point")]
        new_nodes.append(helper.make_node("DequantizeLinear", [wn + "_quantized", wn + "_scale", wn + "_zero_point"],
                                          [wn + "_dq"], wn + "_DequantizeLinear", axis=0))
        n.input[1] = wn + "_dq"
        if len(n.input) > 2:
            b = inits.pop(n.input[2])
            xscale = qp[n.input[0].removesuffix("_dq")][0]
            bscale = (xscale * wscale).astype(np.float32)
            bn = n.input[2]
            new_inits += [numpy_helper.from_array(np.round(b / bscale).astype(np.int32), bn + "_quantized"),
                          numpy_helper.from_array(bscale, bn + "_scale"),
                          numpy_helper.from_array(np.zeros(len(bscale), np.int32), bn + "_zero_point")]
            new_nodes.append(helper.make_node("DequantizeLinear", [bn + "_quantized", bn + "_scale", bn + "_zero_point"],
                                              [bn + "_dq"], bn + "_DequantizeLinear", axis=0))
            n.input[2] = bn + "_dq"

    del graph.node[:]
    graph.node.extend(new_nodes + nodes)
    del graph.initializer[:]
    graph.initializer.extend([numpy_helper.from_array(v, k) for k, v in inits.items()] + new_inits)
    del graph.value_info[:]
    sorted_graph(graph)
    onnx.checker.check_model(g)
    onnx.save(g, out_path)


def sorted_graph(graph):
    """Topological order (the Q/DQ nodes were appended out of order)."""
    ready = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    pending, order = list(graph.node), []
    while pending:
        progress = [n for n in pending if all(i in ready for i in n.input)]
        if not progress:
            raise RuntimeError("graph has a cycle or a dangling input")
        for n in progress:
            order.append(n)
            ready.update(n.output)
            pending.remove(n)
    del graph.node[:]
    graph.node.extend(order)


# --- a small numpy interpreter for the check (onnx 1.12 has no reference evaluator) ----------------
def run_onnx(path, x):
    g = onnx.load(path).graph
    env = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    env[g.input[0].name] = x
    for n in g.node:
        a = {at.name: helper.get_attribute_value(at) for at in n.attribute}
        i = [env[t] if t else None for t in n.input]
        if n.op_type == "Conv":
            y = conv2d(i[0], i[1], a.get("strides", [1, 1])[0], a.get("pads", [0] * 4)[0])
            y = y + (i[2].reshape(1, -1, 1, 1) if len(i) > 2 else 0)
        elif n.op_type == "BatchNormalization":
            k = i[1] / np.sqrt(i[4] + a.get("epsilon", 1e-5))
            y = (i[0] - i[3].reshape(1, -1, 1, 1)) * k.reshape(1, -1, 1, 1) + i[2].reshape(1, -1, 1, 1)
        elif n.op_type == "Relu":
            y = np.maximum(i[0], 0)
        elif n.op_type in ("Identity", "Dropout"):
            y = i[0]
        elif n.op_type == "Add":
            y = i[0] + i[1]
        elif n.op_type == "MaxPool":
            s = a["strides"][0]
            N, C, H, W = i[0].shape
            y = i[0][:, :, :H // s * s, :W // s * s].reshape(N, C, H // s, s, W // s, s).max((3, 5))
        elif n.op_type == "GlobalAveragePool":
            y = i[0].mean((2, 3), keepdims=True)
        elif n.op_type == "Flatten":
            y = i[0].reshape(i[0].shape[0], -1)
        elif n.op_type == "Gemm":
            y = i[0] @ (i[1].T if a.get("transB") else i[1]) + i[2]
        elif n.op_type in ("QuantizeLinear", "DequantizeLinear"):
            shape = [1] * i[0].ndim
            if i[1].ndim:
                shape[a.get("axis", 1)] = -1
            s, z = i[1].reshape(shape), i[2].reshape(shape)
            if n.op_type == "DequantizeLinear":
                y = (i[0].astype(np.float32) - z.astype(np.float32)) * s
            else:
                y = np.clip(np.rint(i[0] / s) + z, 0, 255).astype(np.uint8)
        else:
            raise NotImplementedError(n.op_type)
        env[n.output[0]] = y.astype(y.dtype if y.dtype == np.uint8 else np.float32)
    return env[g.output[0].name]


def conv2d(x, w, stride, pad):
    x = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    N, C, H, W = x.shape
    O, _, kh, kw = w.shape
    oh, ow = (H - kh) // stride + 1, (W - kw) // stride + 1
    s = x.strides
    cols = np.lib.stride_tricks.as_strided(x, (N, C, kh, kw, oh, ow),
                                           (s[0], s[1], s[2], s[3], s[2] * stride, s[3] * stride))
    return np.tensordot(w, cols, axes=([1, 2, 3], [1, 2, 3])).transpose(1, 0, 2, 3)


# --- main ------------------------------------------------------------------------------------------
def main():
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    torch.set_num_threads(2)
    data = {}
    for name, (_, key) in MODELS.items():
        calib = FMNIST.dataset("train", name, 512)[0].numpy()
        test = FMNIST.dataset("test", name, 128)[0].numpy()
        np.save(f"{out}/calib_{key}.npy", calib)
        np.save(f"{out}/bench_{key}.npy", test)
        data[key] = calib, test

    for name, (_, key) in MODELS.items():
        model = load_model(name, out)
        calib, test = data[key]
        path = f"{out}/{name}.onnx"
        # PyTorch >= 2.5 has a dynamo exporter (the default from 2.9); the TorchScript one keeps
        # the module-scoped node names the plans match.
        legacy = ({"dynamo": False}
                  if "dynamo" in inspect.signature(torch.onnx.export).parameters else {})
        torch.onnx.export(model, torch.from_numpy(calib[:2]), path, opset_version=13,
                          input_names=["input"], output_names=["output"],
                          dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
                          training=torch.onnx.TrainingMode.PRESERVE, do_constant_folding=False,
                          **legacy)
        x = test[:4]
        with torch.no_grad():
            ref = model(torch.from_numpy(x)).numpy()
        y = run_onnx(path, x)
        print(f"{name}.onnx (weights {os.path.relpath(checkpoint(name, out))}): max |onnx - torch| = "
              f"{np.abs(y - ref).max():.2e}, output range [{ref.min():.3g}, {ref.max():.3g}]")
        for bits in (7, 8):
            qpath = f"{out}/{name}_qdq_w{bits}.onnx"
            make_qdq(path, model, calib, bits, qpath)
            yq = run_onnx(qpath, x)
            print(f"{os.path.basename(qpath)}: max |qdq - fp32| = {np.abs(yq - y).max():.3g}, "
                  f"SQNR {10 * np.log10((y ** 2).sum() / ((yq - y) ** 2).sum()):.1f} dB")


if __name__ == "__main__":
    main()
