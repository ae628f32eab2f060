"""Turns what bench/run.sh measured into one table per model; prints it and writes it as markdown,
with the machine, to CACHE/results.md.

Usage: report.py CACHE ITERATIONS THREADS CALIBRATION_ALGORITHM
Reads CACHE/results/*.json (timings, peak, mixq inspect) and CACHE/outputs/*.npy (outputs on the
bench input, for the SQNR against the mixq fp32 engine).
"""
import datetime
import json
import os
import platform
import sys

import numpy as np

BATCH = 128
# row key, label, which peak applies
ROWS = [
    ("mixq-fp32", "mixq fp32", "fp32"),
    ("mixq-int8", "mixq int8 ({algo} calibration)", "int8"),
    ("mixq-int8-qdq-w7", "mixq int8 from the Q/DQ model (7-bit weights)", "int8"),
    ("mixq-mixed", "mixq mixed: conv1 fp32, rest int8 (plans/lenet_mixed.json)", "mixed"),
    ("ort-fp32", "ONNX Runtime fp32", "fp32"),
    ("ort-int8-qdq-w7", "ONNX Runtime int8, Q/DQ model, 7-bit weights", "int8"),
    ("ort-int8-qdq-w8", "ONNX Runtime int8, Q/DQ model, 8-bit weights", "int8"),
    ("torch-fp32", "PyTorch fp32 eager", "fp32"),
    ("torch-int8", "PyTorch FX int8 (onednn engine)", "int8"),
]
MODELS = [("resnet18", "CIFAR ResNet18, 3x32x32"), ("lenet", "MNIST LeNet, 1x28x28"),
          ("lenet-avx2", "MNIST LeNet, mixq with oneDNN limited to AVX2 (ONEDNN_MAX_CPU_ISA=AVX2: no VNNI, "
                         "7-bit weights), as on the CPUs without VNNI the issue describes")]


def load(path):
    with open(path) as f:
        return json.load(f)


def sqnr(y, ref):
    err = float(((y.astype(np.float64) - ref) ** 2).sum())
    return "exact" if err == 0 else f"{10 * np.log10(float((ref.astype(np.float64) ** 2).sum()) / err):.1f}"


def best_peak(runs):
    """The higher of each peak over the runs (a busy machine only ever lowers a peak)."""
    best = dict(runs[0])
    for r in runs[1:]:
        for k, v in r.items():
            if k.endswith("_gmacs") and v > best.get(k, 0):
                best[k] = v
                if k == "int8_peak_gmacs":
                    best["int8_peak_kernel"] = r["int8_peak_kernel"]
    return best


def mixed_peak(inspect, peak):
    """Peak of a mixed engine: its MACs at the fp32 peak where fp32, the int8 peak where int8."""
    macs = {"int8": 0, "fp32": 0}
    for layer in inspect["layers"]:
        macs["int8" if layer["precision"] == "int8" else "fp32"] += layer["macs"]
    seconds = macs["fp32"] / peak["fp32_peak_gmacs"] + macs["int8"] / peak["int8_peak_gmacs"]
    return sum(macs.values()) / seconds


def table(cache, model, peak, algo):
    res = os.path.join(cache, "results")
    gmac = load(os.path.join(res, f"{model}_model.json"))["total"]["macs"] * BATCH / 1e9
    ref = np.load(os.path.join(cache, "outputs", f"{model}__mixq-fp32.npy"))
    rows = [["plan / peer", "median ms", "p10–p90 ms", "speedup", "GMAC/s", "% of peak", "SQNR dB"]]
    base, overhead, over_peak = None, [], False
    for key, label, kind in ROWS:
        path = os.path.join(res, f"{model}__{key}.json")
        if not os.path.exists(path):
            continue
        r = load(path)
        if "compute_ms_median" in r:  # mixq bench
            med, p10, p90 = r["compute_ms_median"], r["compute_ms_p10"], r["compute_ms_p90"]
            overhead.append(r["end_to_end_ms_median"] - med)
        else:
            med, p10, p90 = r["median_ms"], r["p10_ms"], r["p90_ms"]
        base = base or med
        rate = gmac / (med / 1e3)
        if kind == "mixed":
            top = mixed_peak(load(os.path.join(res, f"{model}__{key}.inspect.json")), peak)
        else:
            top = peak[f"{kind}_peak_gmacs"]
        out = os.path.join(cache, "outputs", f"{model}__{key}.npy")
        q = "—" if key == "mixq-fp32" or not os.path.exists(out) else sqnr(np.load(out), ref)
        over_peak = over_peak or rate > 1.1 * top  # the peak kernel itself is a few % off
        rows.append([label.format(algo=algo), f"{med:.2f}", f"{p10:.2f}–{p90:.2f}", f"{base / med:.2f}×", f"{rate:.1f}",
                     f"{100 * rate / top:.0f}%", q])
    return gmac, markdown(rows), max(overhead, default=0), over_peak


def markdown(rows):
    """A markdown table, padded so that it also reads well in a terminal; numbers right-aligned."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    line = lambda r: "| " + " | ".join(c.ljust(w) if i == 0 else c.rjust(w)
                                       for i, (c, w) in enumerate(zip(r, widths))) + " |"
    rule = "| " + " | ".join("-" * w if i == 0 else "-" * (w - 1) + ":" for i, w in enumerate(widths)) + " |"
    return [line(rows[0]), rule] + [line(r) for r in rows[1:]]


def machine(cache, peak, iterations, threads):
    res = os.path.join(cache, "results")
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    isa_path = os.path.join(res, "onednn_isa.txt")
    isa = open(isa_path).read().strip().split("isa:")[-1] if os.path.exists(isa_path) else "?"
    target = load(os.path.join(res, "resnet18__mixq-fp32.inspect.json")).get("target", "?")
    peaks = ", ".join(f"{k.removesuffix('_gmacs')} {v:.1f}" for k, v in peak.items()
                      if k.endswith("_gmacs") and not k.endswith("peak_gmacs"))
    return [f"- date: {datetime.date.today()}",
            f"- CPU: {cpu}, {os.cpu_count()} logical CPUs; {platform.system()} {platform.release()}",
            f"- oneDNN ISA: {isa}; mixq engine target: `{target}`",
            f"- peaks with {peak['threads']} threads (register-only kernels, GMAC/s): {peaks}; "
            f"fp32 rows use {peak['fp32_peak_gmacs']:.1f}, int8 rows {peak['int8_peak_gmacs']:.1f} "
            f"({peak['int8_peak_kernel']}), mixed rows the two weighted by the engine's MACs",
            f"- batch {BATCH}, {threads} threads, {iterations} timed runs after warm-up, the same "
            "Fashion-MNIST test images for every row"]


NOTES = """Times per batch: mixq, the engine's compute time (`mixq bench`; its end-to-end time,
with input checks, conversions and copies, was at most {overhead:.2f} ms more per batch in this
run); ONNX Runtime, one `session.run` from Node; PyTorch, one call of the module. Speedup: over
mixq fp32. SQNR: the row's output against the mixq fp32 engine's, on the bench input."""


def main():
    cache, iterations, threads, algo = sys.argv[1:5]
    peak = best_peak([load(os.path.join(cache, "results", f"peak_{w}.json")) for w in ("first", "last")])
    md = ["# Benchmarks", ""] + machine(cache, peak, iterations, threads) + [""]
    overhead, busy = 0, False
    for model, title in MODELS:
        if not os.path.exists(os.path.join(cache, "results", f"{model}__mixq-fp32.json")):
            continue
        model_peak = peak
        if model.endswith("avx2"):  # the AVX2 kernels' peaks apply
            model_peak = dict(peak, fp32_peak_gmacs=peak.get("fp32_avx2_fma_gmacs", peak["fp32_peak_gmacs"]),
                              int8_peak_gmacs=peak.get("int8_avx2_gmacs", peak["int8_peak_gmacs"]))
        gmac, lines, extra, over_peak = table(cache, model, model_peak, algo)
        overhead, busy = max(overhead, extra), busy or over_peak
        md += [f"## {title} ({gmac:.2f} GMAC per batch of {BATCH})", ""] + lines + [""]
    md += [NOTES.format(overhead=overhead).replace("\n", " "), ""]
    if busy:
        md += ["**Warning: some rows exceed 110% of the peak, so the peak kernel ran while the machine "
               "was busy: these timings are not trustworthy; rerun on a quiet machine.**", ""]
    text = "\n".join(md)
    print(text)
    with open(os.path.join(cache, "results.md"), "w") as f:
        f.write(text)
    print(f"(written to {os.path.join(cache, 'results.md')})", file=sys.stderr)


if __name__ == "__main__":
    main()
