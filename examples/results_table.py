"""The end-to-end results table: each model built with mixq at several precision plans, its
latency at batch 128 and its accuracy on the 10 000 Fashion-MNIST test images.

    python3 examples/results_table.py                    # LeNet (shipped checkpoint), minutes
    python3 examples/results_table.py --model resnet18   # trains ResNet18 first if needed
    python3 examples/results_table.py --model resnet18 --full   # the checkpoint of train.py --full
    python3 examples/results_table.py --backend cuda            # the engines on a GPU

Strategies, as in NNI's table for its TensorRT speedup tool:
  fp32          every layer fp32
  mixed         int8 (PTQ, percentile) except the layers in MIXED_FP32, which stay fp32
  int8 PTQ      every layer int8, ranges calibrated on training images (entropy / percentile)
  int8 QAT      QATQuantizer fine-tunes the fp32 model briefly (train.finetune), its
                calibration_config goes to ModelSpeedup as it is (NNI's workflow); values it has
                no range for (none in LeNet) get calibrated ones (percentile)
  mixed QAT     the QAT model and ranges with the MIXED_FP32 layers in fp32
"""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "passive")  # before libgomp starts: see README note

import argparse  # noqa: E402
import copy  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fashion_mnist  # noqa: E402
import mixq  # noqa: E402
from mixq.qat import QATQuantizer  # noqa: E402
from train import accuracy, finetune, load_model  # noqa: E402

BATCH = 128
# Layers (and the ReLU / pool fused with them) that the mixed plans keep in fp32: LeNet's conv1
# has one input channel, too little work per output for int8 to pay; ResNet18's stem conv
# (3 input channels) and its classifier are the usual precision-sensitive ends.
MIXED_FP32 = {"lenet": ["conv1", "relu1", "pool1"], "resnet18": ["conv1", "relu", "fc"]}
# QAT config_lists (NNI's form): weights and inputs of the weighted layers, outputs of the rest.
QAT_CONFIG = {
    "lenet": [
        {"quant_types": ["weight", "input"], "quant_bits": {"weight": 8, "input": 8},
         "op_types": ["Conv2d", "Linear"]},
        {"quant_types": ["output"], "quant_bits": {"output": 8},
         "op_types": ["ReLU", "MaxPool2d"]},
    ],
    "resnet18": [
        {"quant_types": ["weight", "input", "output"], "quant_bits": 8, "op_types": ["Conv2d"]},
        {"quant_types": ["weight", "input"], "quant_bits": 8, "op_types": ["Linear"]},
        {"quant_types": ["output"], "quant_bits": 8, "op_types": ["ReLU", "AdaptiveAvgPool2d"]},
    ],
}
# model -> (QAT training images, learning rate, batch size, calibration images). QAT uses the
# training images from 10 000 on and calibration those from 20 000 on: images the default
# ResNet18 (trained on the first 5 000) has not seen.
SETTINGS = {"lenet": (5000, 1e-3, 128, 1024), "resnet18": (1024, 1e-4, 64, 512)}
REPEATS = {"lenet": 100, "resnet18": 10}  # timed runs per strategy
TARGETS = {"int8 PTQ": 0.5, "int8 QAT": 0.3, "mixed": 0.2}  # max accuracy loss vs fp32, points


def mixed_config(name, model, base=None):
    """NNI config keeping MIXED_FP32 in fp32; `base` (a QAT calibration_config) for the rest."""
    config = copy.deepcopy(base) if base else {}
    modules = dict(model.named_modules())
    for module in MIXED_FP32[name]:
        entry = config.setdefault(module, {})
        keys = [k for k in entry if k.endswith("_bits")]
        for key in keys or ["weight_bits" if hasattr(modules[module], "weight") else "output_bits"]:
            entry[key] = 32
    return config


def qat_finetune(name, model, x, y, lr, batch_size, workdir, log=print):
    """QAT from the fp32 model: returns (the exported model, its calibration_config)."""
    model = copy.deepcopy(model)
    quantizer = QATQuantizer(model, QAT_CONFIG[name], None, dummy_input=x[:2])
    quantizer.compress()
    start = time.time()
    finetune(model, x, y, lr=lr, batch_size=batch_size)
    log(f"  QAT: {len(x)} images in {time.time() - start:.0f} s")
    model.eval()
    config = quantizer.export_model(os.path.join(workdir, f"{name}_qat.pth"),
                                    os.path.join(workdir, f"{name}_calibration.pth"))
    return model, config


def latencies(speedups, x, repeats, warmup=5, rounds=5):
    """Median compute and end-to-end times (ms) of each engine for batch x: `repeats` timed
    runs per engine after `warmup` runs, taken in `rounds` interleaved rounds so that a change
    in the machine's load affects every engine alike."""
    compute = {k: [] for k in speedups}
    total = {k: [] for k in speedups}
    for s in speedups.values():
        for _ in range(warmup):
            s.context.infer(x)
    for r in range(rounds):
        for k, s in speedups.items():
            for _ in range(r * repeats // rounds, (r + 1) * repeats // rounds):
                timing = s.context.infer(x).timing
                compute[k].append(timing["compute_ms"])
                total[k].append(timing["end_to_end_ms"])
    return {k: (statistics.median(compute[k]), statistics.median(total[k])) for k in speedups}


BACKEND = "cpu"  # --backend


def build(model, shape, log, **kwargs):
    speedup = mixq.ModelSpeedup(model, (BATCH,) + shape, batchsize=BATCH, backend=BACKEND,
                                **kwargs)
    start = time.time()
    speedup.compress()
    log(f"  built in {time.time() - start:.1f} s")
    return speedup


def run_model(name, full=False, repeats=None, test_limit=None, log=print):
    """Rows of the table for one model: dicts with strategy, bits, latency, accuracy."""
    qat_images, lr, qat_batch, calib_images = SETTINGS[name]
    shape = fashion_mnist.INPUT_SHAPES[name]
    model = load_model(name, full, log=log)
    x_test, y_test = fashion_mnist.dataset("test", name, test_limit)
    x_train, y_train = fashion_mnist.dataset("train", name, 20000 + calib_images)
    calib = list(torch.split(x_train[20000:], BATCH))
    x_qat, y_qat = x_train[10000:10000 + qat_images], y_train[10000:10000 + qat_images]
    # Layers no int8 kernel runs (on the GPU: convolutions with channels not a multiple of 4,
    # like LeNet's conv1) fall back to a higher precision; the table lists every fallback.
    ptq = dict(extra_layer_bits=8, calib_data_loader=calib, calib_algo="percentile",
               strict_datatype=False)
    fp32_layers = "fp32: " + ", ".join(MIXED_FP32[name])

    log(f"{name}: building the engines")
    engines = {"fp32": (build(model, shape, log), "")}
    engines["mixed (PTQ percentile)"] = (
        build(model, shape, log, config=mixed_config(name, model), **ptq), fp32_layers)
    for algo in ("entropy", "percentile"):
        engines[f"int8 PTQ {algo}"] = (build(model, shape, log, **dict(ptq, calib_algo=algo)), "")
    with tempfile.TemporaryDirectory() as workdir:
        qat_model, config = qat_finetune(name, model, x_qat, y_qat, lr, qat_batch, workdir, log)
    engines["int8 QAT"] = (build(qat_model, shape, log, config=config, **ptq),
                           f"fine-tuned on {qat_images} images")
    engines["mixed QAT"] = (
        build(qat_model, shape, log, config=mixed_config(name, qat_model, config), **ptq),
        fp32_layers)

    rows = []
    for strategy, (speedup, note) in engines.items():
        acc = accuracy(lambda xb: speedup.inference(xb)[0], x_test, y_test, BATCH)
        report = speedup.report()
        rows.append(dict(model=name, strategy=strategy, note=note, accuracy=acc,
                         bits_params=report["average_bits_by_params"],
                         bits_macs=report["average_bits_by_macs"],
                         fallbacks=report["fallbacks"], test_images=len(x_test)))
        log(f"  {strategy:<22} accuracy {acc:6.2f}%")
    if repeats is None:
        repeats = REPEATS[name]
    times = latencies({k: s for k, (s, _) in engines.items()}, x_test[:BATCH], repeats)
    for row in rows:
        row["latency_ms"], row["end_to_end_ms"] = times[row["strategy"]]
        row["repeats"] = repeats
    return rows


def machine():
    if BACKEND == "cuda":
        return f"{torch.cuda.get_device_name()} (GPU)" if torch.cuda.is_available() else "a GPU"
    cpu = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return cpu


def table(rows, threads):
    lines = []
    for name in dict.fromkeys(r["model"] for r in rows):
        mine = [r for r in rows if r["model"] == name]
        fp32 = next(r for r in mine if r["strategy"] == "fp32")
        lines.append(f"\n{name}: Fashion-MNIST, {mine[0]['test_images']} test images, latency "
                     f"over {mine[0]['repeats']} runs")
        lines.append(f"| {'strategy':<22} | avg bits (params / MACs) | latency ms | speedup "
                     f"| accuracy | vs fp32 |")
        lines.append(f"|{'-' * 24}|{'-' * 26}|{'-' * 12}|{'-' * 9}|{'-' * 10}|{'-' * 9}|")
        for r in mine:
            bits = f"{r['bits_params']:.2f} / {r['bits_macs']:.2f}"
            lines.append(f"| {r['strategy']:<22} | {bits:<24} | {r['latency_ms']:10.2f} "
                         f"| {fp32['latency_ms'] / r['latency_ms']:6.2f}x | {r['accuracy']:7.2f}% "
                         f"| {r['accuracy'] - fp32['accuracy']:+7.2f} |")
        lines.append("")
        for strategy, limit in TARGETS.items():
            for r in mine:
                if r["strategy"].startswith(strategy):
                    loss = fp32["accuracy"] - r["accuracy"]
                    verdict = "met" if loss <= limit else "MISSED"
                    lines.append(f"  target {strategy}: within {limit} points of fp32 -- "
                                 f"{r['strategy']}: {loss:+.2f} points lost, {verdict}")
        by = {r["strategy"]: r for r in mine}
        for mixed, int8 in (("mixed (PTQ percentile)", "int8 PTQ percentile"),
                            ("mixed QAT", "int8 QAT")):
            m, i = by[mixed], by[int8]
            lines.append(f"  {mixed} vs uniform plans: latency {m['latency_ms']:.2f} ms vs fp32 "
                         f"{fp32['latency_ms']:.2f} / {int8} {i['latency_ms']:.2f}; accuracy "
                         f"{m['accuracy']:.2f}% vs {int8} {i['accuracy']:.2f}%")
        for r in mine:
            if r["fallbacks"]:
                lines.append(f"  {r['strategy']}: fallbacks {r['fallbacks']}")
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    lines.append(
        f"\nMachine: {machine()}, {os.cpu_count()} CPUs, load average {load} at the end; "
        f"{threads} thread(s), OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}; PyTorch "
        f"{torch.__version__}; mixq {mixq.__version__}, backend {BACKEND}.\n"
        f"Latency: the median of the engine's compute time (Context.infer(...).timing"
        f"['compute_ms']: the layers' execution, without input checks and conversions) over "
        f"the runs given above of one batch of {BATCH} test images per engine, after 5 "
        f"warm-up runs; the engines are timed in 5 interleaved rounds so that load changes hit "
        f"them alike. Speedup: fp32 latency / latency. Accuracy: top-1 on the test images, run "
        f"through the engine in batches of {BATCH}. Average bits: each layer's precision in "
        f"bits, weighted by its parameters / by its multiply-accumulates (the build report).")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=["lenet", "resnet18", "all"], default="lenet")
    parser.add_argument("--full", action="store_true", help="use the *-full.pth checkpoints")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed runs per strategy (default: 100 for LeNet, 10 for ResNet18)")
    parser.add_argument("--test-limit", type=int, default=None,
                        help="evaluate on the first N test images (default: all 10 000)")
    parser.add_argument("--json", help="also write the rows to this JSON file")
    parser.add_argument("--backend", choices=["cpu", "cuda"], default="cpu",
                        help="where the engines run (QAT fine-tuning stays on the CPU)")
    args = parser.parse_args()
    global BACKEND
    BACKEND = args.backend
    torch.set_num_threads(args.threads)
    rows = []
    for name in (["lenet", "resnet18"] if args.model == "all" else [args.model]):
        rows += run_model(name, args.full, args.repeats, args.test_limit)
    print(table(rows, args.threads))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
