"""Exports torchvision models (weights=None, fixed seed, randomised BatchNorm statistics so BN
folding is exercised) with Debian's PyTorch, plus an input and PyTorch's fp32 output for each.

Usage: export_torchvision.py OUTDIR      writes OUTDIR/<name>/{model.onnx,input_*.npy,output_*.npy}
Skips models already exported. Each model is exported with dynamic batch and checked at two
batch sizes where that is cheap.
"""
import inspect
import os
import sys

import numpy as np
import torch
import torchvision

torch.set_num_threads(max(1, os.cpu_count() or 1))
OUT = sys.argv[1]

# name, constructor, opset, input size, batch sizes to record
MODELS = [
    ("resnet18", lambda: torchvision.models.resnet18(weights=None), 13, 224, [1, 2]),
    ("mobilenet_v2", lambda: torchvision.models.mobilenet_v2(weights=None), 17, 224, [1, 2]),
    ("vgg11", lambda: torchvision.models.vgg11(weights=None), 13, 224, [1]),
    ("squeezenet1_1", lambda: torchvision.models.squeezenet1_1(weights=None), 17, 224, [1, 3]),
    ("shufflenet_v2_x1_0", lambda: torchvision.models.shufflenet_v2_x1_0(weights=None), 17, 224, [1, 2]),
    ("googlenet", lambda: torchvision.models.googlenet(weights=None, aux_logits=False,
                                                      init_weights=True), 13, 224, [1]),
]


def randomise_batchnorm(model, gen):
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            c = m.num_features
            m.running_mean.copy_(torch.randn(c, generator=gen) * 0.1)
            m.running_var.copy_(torch.rand(c, generator=gen) * 0.5 + 0.75)
            m.weight.data.copy_(torch.rand(c, generator=gen) * 0.5 + 0.75)
            m.bias.data.copy_(torch.randn(c, generator=gen) * 0.1)


def main():
    only = set(sys.argv[2:])
    for name, make, opset, size, batches in MODELS:
        if only and name not in only:
            continue
        folder = os.path.join(OUT, name)
        done = os.path.join(folder, "done")
        if os.path.exists(done):
            continue
        os.makedirs(folder, exist_ok=True)
        torch.manual_seed(0)
        model = make().eval()
        gen = torch.Generator().manual_seed(1)
        with torch.no_grad():
            randomise_batchnorm(model, gen)
        example = torch.randn(1, 3, size, size, generator=gen)
        extra = {}
        if "dynamo" in inspect.signature(torch.onnx.export).parameters:
            extra["dynamo"] = False  # the TorchScript exporter, as PyTorch 1.13 has
        torch.onnx.export(model, example, os.path.join(folder, "model.onnx"), opset_version=opset,
                          input_names=["input"], output_names=["output"],
                          dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}}, **extra)
        with torch.no_grad():
            for b in batches:
                x = torch.randn(b, 3, size, size, generator=gen)
                y = model(x)
                np.save(os.path.join(folder, f"input_b{b}.npy"), x.numpy())
                np.save(os.path.join(folder, f"output_b{b}.npy"), y.numpy())
        open(done, "w").close()
        print(f"exported {name} (opset {opset})", flush=True)


if __name__ == "__main__":
    main()
