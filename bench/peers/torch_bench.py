"""Times PyTorch 1.13 on the benchmark models: fp32 eager, or FX int8 with the onednn engine
(prepare_fx / convert_fx, calibrated on the same images as mixq).

Usage: torch_bench.py {resnet18,lenet} {fp32,int8} DATADIR [-n 30] [--warmup 5] [--threads 2] [--out y.npy]
DATADIR is what bench/models/make_models.py wrote (weights <model>.pt, calib_*.npy, bench_*.npy).
Prints {"median_ms", "p10_ms", "p90_ms", "runs", "threads"} as JSON.
"""
import argparse
import json
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "models"))
from make_models import MODELS, load_model  # noqa: E402


def int8_model(model, calib):
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx
    torch.backends.quantized.engine = "onednn"
    prepared = prepare_fx(model, get_default_qconfig_mapping("onednn"), example_inputs=(calib[:1],))
    with torch.no_grad():
        for batch in torch.split(calib, 64):
            prepared(batch)
    return convert_fx(prepared)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("model", choices=sorted(MODELS))
    p.add_argument("precision", choices=["fp32", "int8"])
    p.add_argument("datadir")
    p.add_argument("-n", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    key = MODELS[a.model][1]
    model = load_model(a.model, a.datadir)
    x = torch.from_numpy(np.load(os.path.join(a.datadir, f"bench_{key}.npy")))
    if a.precision == "int8":
        model = int8_model(model, torch.from_numpy(np.load(os.path.join(a.datadir, f"calib_{key}.npy"))))
    times = []
    with torch.no_grad():
        for i in range(a.warmup + a.n):
            t0 = time.perf_counter()
            y = model(x)
            if i >= a.warmup:
                times.append((time.perf_counter() - t0) * 1e3)
    if a.out:
        np.save(a.out, y.numpy())
    q = lambda f: float(np.percentile(times, f, method="nearest"))
    print(json.dumps({"median_ms": q(50), "p10_ms": q(10), "p90_ms": q(90), "runs": a.n, "threads": a.threads}))


if __name__ == "__main__":
    main()
