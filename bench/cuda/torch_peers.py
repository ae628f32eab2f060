"""mixq's cuda engines against PyTorch, in one process on one GPU, batch 128 (the CUDA issue's
peers): PyTorch fp32 eager, fp16 channels_last eager, fp16 channels_last replayed as a CUDA graph,
and torch.compile (fp16 channels_last; inductor's default mode, and "reduce-overhead", which
replays CUDA graphs).

    torch_peers.py MODELS ENGINES [--models resnet18,lenet] [--batch 128] [-n 200] [--warmup 20]
                   [--no-compile] [--out results.md] [--json results.json]

MODELS:  what bench/models/make_models.py writes (weights <model>.pth, bench_*.npy, ONNX files)
ENGINES: the engines bench/cuda/gpu_bench.sh built (<model>__cuda-<plan>.mixq)

Time: device time of one forward pass, the median over n runs after the warm-up. Each run sits
between two CUDA events on the stream its work runs on: for mixq this is what
Context.infer(...).timing["compute_ms"] reports (events around the replayed CUDA graph); for
PyTorch the events are recorded around the module call (eager runs include the gaps where the GPU
waits for Python to launch the next kernel, as users of eager mode get them). mixq is also timed
end to end: host input, copies and output included, and with the input already on the GPU
(a CUDA tensor in, a CUDA tensor out).
Accuracy check: each engine's output against PyTorch fp32 (SQNR in dB, top-1 agreement).
"""
import argparse
import copy
import glob
import json
import os
import statistics
import sys
import time

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "models"))
from make_models import MODELS, load_model  # noqa: E402

import mixq  # noqa: E402


def cuda_times(fn, n, warmup):
    """Device ms of fn() per call: events on the current stream around each call."""
    stream = torch.cuda.current_stream()
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(n):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record(stream)
        fn()
        end.record(stream)
        end.synchronize()
        times.append(start.elapsed_time(end))
    return times


def graph_replay(module, x):
    """A callable replaying module(x) as one CUDA graph (static input and output)."""
    static_x = x.clone()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            module(static_x)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_y = module(static_x)
    return graph.replay, static_y


def summary(times):
    q = statistics.quantiles(times, n=10)
    return {"median_ms": statistics.median(times), "p10_ms": q[0], "p90_ms": q[-1],
            "runs": len(times)}


def sqnr_db(got, ref):
    got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
    noise = np.sum((got - ref) ** 2)
    return float("inf") if noise == 0 else float(10 * np.log10(np.sum(ref ** 2) / noise))


def peers(name, model, x, n, warmup, compile_modes, log):
    """PyTorch rows: {label: summary}, and the fp32 output."""
    rows = {}
    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    fp32 = model.cuda().eval()
    with torch.inference_mode():
        ref = fp32(x).float().cpu().numpy()
        rows["PyTorch fp32 eager"] = summary(cuda_times(lambda: fp32(x), n, warmup))
        fp16 = copy.deepcopy(fp32).half().to(memory_format=torch.channels_last)
        x16 = x.half().contiguous(memory_format=torch.channels_last)
        rows["PyTorch fp16 channels_last eager"] = summary(cuda_times(lambda: fp16(x16), n, warmup))
        replay, _ = graph_replay(fp16, x16)
        rows["PyTorch fp16 channels_last CUDA graph"] = summary(cuda_times(replay, n, warmup))
    for mode in compile_modes:
        label = f"torch.compile fp16 ({mode})"
        try:
            start = time.time()
            compiled = torch.compile(fp16, mode=mode)
            with torch.inference_mode():
                for _ in range(3):
                    compiled(x16)
                torch.cuda.synchronize()
                log(f"  {label}: compiled in {time.time() - start:.0f} s")
                rows[label] = summary(cuda_times(lambda: compiled(x16), n, warmup))
        except Exception as error:  # a peer that fails is reported, not fatal
            log(f"  {label}: failed: {str(error).splitlines()[0][:200]}")
    return rows, ref


def mixq_rows(name, engines_dir, x, ref, n, warmup, log):
    rows = {}
    host = x.cpu().numpy()
    labels = ref.argmax(1)
    for path in sorted(glob.glob(os.path.join(engines_dir, f"{name}__cuda-*.mixq"))):
        plan = os.path.basename(path)[len(name) + len("__cuda-"):-len(".mixq")]
        engine = mixq.Engine.load(path)
        ctx = engine.create_context()
        for _ in range(warmup):
            ctx.infer(host)
        compute, total = [], []
        for _ in range(n):
            start = time.perf_counter()
            r = ctx.infer(host)
            total.append((time.perf_counter() - start) * 1e3)
            compute.append(r.timing["compute_ms"])
        out = r["output"]
        # the input already on the GPU, the output left there
        y = torch.empty(out.shape, device="cuda")
        for _ in range(warmup):
            ctx.infer(x, outputs=y)
        device_total = []
        for _ in range(n):
            start = time.perf_counter()
            ctx.infer(x, outputs=y)
            device_total.append((time.perf_counter() - start) * 1e3)
        # The same engine on device-resident data must give what it gives on host data.
        device_vs_host = float(np.abs(y.cpu().numpy() - out).max())
        if device_vs_host:
            log(f"  mixq {plan}: GPU-resident I/O differs from host I/O by {device_vs_host:.3g}")
        row = summary(compute)
        row.update(end_to_end_ms=statistics.median(total),
                   device_io_end_to_end_ms=statistics.median(device_total),
                   device_vs_host_max_diff=device_vs_host,
                   sqnr_db=sqnr_db(out, ref), top1_agreement=float(np.mean(out.argmax(1) == labels)),
                   average_bits=engine.report.average_bits_by_macs)
        rows[f"mixq {plan}"] = row
        log(f"  mixq {plan}: {row['median_ms']:.4f} ms, SQNR {row['sqnr_db']:.1f} dB")
    return rows


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("models_dir")
    p.add_argument("engines_dir")
    p.add_argument("--models", default="resnet18,lenet")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("-n", type=int, default=200)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--no-compile", action="store_true")
    p.add_argument("--out")
    p.add_argument("--json")
    a = p.parse_args()

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    gpu = torch.cuda.get_device_name()
    lines = [f"# mixq vs PyTorch, one process, {gpu}, batch {a.batch}",
             "",
             f"PyTorch {torch.__version__}, cuDNN {torch.backends.cudnn.version()}, mixq "
             f"{mixq.__version__}; device time per forward pass, median of {a.n} runs after "
             f"{a.warmup} warm-up runs (CUDA events around each run).", ""]
    everything = {}
    compile_modes = [] if a.no_compile else ["default", "reduce-overhead"]
    for name in a.models.split(","):
        key = MODELS[name][1]
        x = torch.from_numpy(np.load(os.path.join(a.models_dir, f"bench_{key}.npy")))[:a.batch]
        x = x.cuda().contiguous()
        log(f"{name}: PyTorch")
        model = load_model(name, a.models_dir)
        rows, ref = peers(name, model, x, a.n, a.warmup, compile_modes, log)
        log(f"{name}: mixq")
        rows.update(mixq_rows(name, a.engines_dir, x, ref, a.n, a.warmup, log))
        everything[name] = rows
        graph16 = rows["PyTorch fp16 channels_last CUDA graph"]["median_ms"]
        eager32 = rows["PyTorch fp32 eager"]["median_ms"]
        fastest_peer = min(v["median_ms"] for k, v in rows.items() if not k.startswith("mixq"))
        lines += [f"## {name}", "",
                  "| engine | device ms (median) | p10 | p90 | x vs torch fp16 graph "
                  "| x vs torch fp32 eager | x vs fastest PyTorch | end to end ms (host / GPU I/O) "
                  "| SQNR dB vs fp32 | top-1 agree |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for label, r in rows.items():
            e2e = (f"{r['end_to_end_ms']:.3f} / {r['device_io_end_to_end_ms']:.3f}"
                   if "end_to_end_ms" in r else "")
            acc = (f"{r['sqnr_db']:.1f} | {100 * r['top1_agreement']:.1f}%"
                   if "sqnr_db" in r else " | ")
            lines.append(f"| {label} | {r['median_ms']:.4f} | {r['p10_ms']:.4f} | {r['p90_ms']:.4f} "
                         f"| {graph16 / r['median_ms']:.2f} | {eager32 / r['median_ms']:.2f} "
                         f"| {fastest_peer / r['median_ms']:.2f} | {e2e} | {acc} |")
        lines.append("")
    text = "\n".join(lines)
    print(text)
    if a.out:
        with open(a.out, "w") as f:
            f.write(text + "\n")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"gpu": gpu, "batch": a.batch, "rows": everything}, f, indent=1)


if __name__ == "__main__":
    main()
