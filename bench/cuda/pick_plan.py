"""A per-layer precision plan picked from measured layer times, as TensorRT picks among the
precisions a build allows: each group of weighted layers (convolutions, linear layers) gets the
precision whose kernels ran fastest for it in the uniform engines' profiles, unless the reformats
that a change of precision costs at its boundaries eat the gain.

    pick_plan.py PROFILE.json [PROFILE.json ...] [--switch-ms X] [--calib-algo entropy] > plan.json

Each PROFILE is `mixq bench ENGINE --profile --json` of one engine built at one precision
(e.g. fp16, int8, fp8) for the same model. Layers are grouped by the first part of their module
name (conv1, layer1, layer2, ..., fc): a group changes precision as a whole, so residual blocks
keep one format and their fused residual adds. A group's candidates are the precisions every one
of its layers really ran at (a layer that fell back in the int8 engine is no int8 candidate). A
layer absent from one engine's profile ran inside the previous layer's step there (two chained
int8 linear layers): it costs nothing at that precision and joins the previous layer's group. The
choice minimises, over the groups in execution order, the sum of layer times plus one reformat
(--switch-ms, default: the median Reformat step that did work in the profiles) wherever
consecutive groups differ in precision.
Where no profile has a Reformat that did work (the backend absorbed them into the layers), a
switch costs at least one more step: the cheapest step of the profiles. A mixed plan is kept only
where its prediction beats the fastest uniform engine's weighted layers by --min-gain (default 3%,
the run-to-run spread of whole-engine medians on the lent GPUs): a prediction cannot see the
fusions a switch of precision breaks (a pool or an input conversion absorbed into a convolution
needs both at one precision), so a smaller predicted gain measured as a loss. Otherwise the plan
is that uniform precision.
The plan (mixq's native format) sets the precision chosen most often as the default and lists
the other layers; the choice, the times and the predicted totals go to stderr.
"""
import argparse
import json
import statistics
import sys

WEIGHTED = {"FusedConv", "FusedGemm"}


def load(paths):
    profiles = []
    for path in paths:
        with open(path) as f:
            j = json.load(f)
        if "layers" not in j:
            sys.exit(f"error: {path} has no per-layer times: run `mixq bench ... --profile --json`")
        profiles.append(j)
    return profiles


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("profiles", nargs="+")
    p.add_argument("--switch-ms", type=float, default=None)
    p.add_argument("--calib-algo", default="entropy")
    p.add_argument("--min-gain", type=float, default=0.03)
    a = p.parse_args()
    profiles = load(a.profiles)

    # Per weighted layer (by module, in the first profile's order): precision -> ms.
    order, times = [], {}
    reformats = []
    for prof in profiles:
        for layer in prof["layers"]:
            if layer["op"] == "Reformat":
                reformats.append(layer["ms_median"])
            if layer["op"] not in WEIGHTED or not layer["module"]:
                continue
            key = layer["module"]
            if key not in times:
                order.append(key)
                times[key] = {}
            prev = times[key].get(layer["precision"])
            if prev is None or layer["ms_median"] < prev:
                times[key][layer["precision"]] = layer["ms_median"]
    if not order:
        sys.exit("error: the profiles list no convolution or linear layer with a module name")
    # A layer missing from an engine's profile ran inside its neighbour's step there (the CUDA
    # backend chains two int8 linear layers into one kernel): free at that precision, and tied to
    # the neighbour's precision (the chain needs both at it).
    absorbed = set()
    for prof in profiles:
        present = {layer["module"] for layer in prof["layers"] if layer["op"] in WEIGHTED}
        precs = [layer["precision"] for layer in prof["layers"] if layer["op"] in WEIGHTED]
        main_pr = max(set(precs), key=lambda pr: (precs.count(pr), pr)) if precs else None
        for key in order[1:]:
            if key not in present and main_pr is not None:
                absorbed.add(key)
                times[key][main_pr] = 0.0
    worked = [ms for ms in reformats if ms > 0]  # views (no kernel) report 0
    steps = [layer["ms_median"] for prof in profiles for layer in prof["layers"]
             if layer["ms_median"] > 0]
    switch = a.switch_ms if a.switch_ms is not None else (
        statistics.median(worked) if worked else min(steps))

    groups, group_of, group_name = [], {}, {}
    for key in order:
        g = group_name[order[order.index(key) - 1]] if key in absorbed else key.split(".")[0]
        group_name[key] = g
        if g not in group_of:
            group_of[g] = []
            groups.append(g)
        group_of[g].append(key)
    group_times = {}
    for g in groups:
        common = set.intersection(*(set(times[k]) for k in group_of[g]))
        group_times[g] = {pr: sum(times[k][pr] for k in group_of[g]) for pr in common}
        if not group_times[g]:
            sys.exit(f"error: the layers of {g} ran at no common precision in these profiles")

    # Viterbi over the chain of groups: cost = layer times + switch cost at precision changes.
    best = {pr: (ms, [pr]) for pr, ms in group_times[groups[0]].items()}
    for g in groups[1:]:
        nxt = {}
        for pr, ms in group_times[g].items():
            cands = [(c + ms + (switch if prev != pr else 0.0), path + [pr])
                     for prev, (c, path) in best.items()]
            nxt[pr] = min(cands, key=lambda t: t[0])
        best = nxt
    total, group_choice = min(best.values(), key=lambda t: t[0])
    # The fastest uniform engine, by its weighted layers (what the prediction sums too).
    uniform = {}
    for prof in profiles:
        precs = {layer["precision"] for layer in prof["layers"] if layer["op"] in WEIGHTED}
        ms = sum(layer["ms_median"] for layer in prof["layers"] if layer["op"] in WEIGHTED)
        # The engine's precision: the one most of its weighted layers ran at.
        main_pr = max(precs, key=lambda pr: (sum(
            1 for layer in prof["layers"] if layer["op"] in WEIGHTED and layer["precision"] == pr),
            pr))
        if all(main_pr in group_times[g] for g in groups):
            uniform[main_pr] = min(ms, uniform.get(main_pr, ms))
    kept_uniform = None
    if len(set(group_choice)) > 1 and uniform:
        pr, ms = min(uniform.items(), key=lambda t: t[1])
        if total > ms * (1.0 - a.min_gain):
            kept_uniform, total, group_choice = pr, ms, [pr] * len(groups)
    chosen = dict(zip(groups, group_choice))
    choice = [chosen[group_name[key]] for key in order]

    counts = {}
    for pr in choice:
        counts[pr] = counts.get(pr, 0) + 1
    default = max(counts, key=lambda pr: (counts[pr], pr))
    plan = {
        "default_precision": default,
        "allow_fallback": True,
        "calibration": {"algorithm": a.calib_algo},
        "layers": [{"match": key, "precision": pr} for key, pr in zip(order, choice)
                   if pr != default],
    }
    json.dump(plan, sys.stdout, indent=1)
    print()

    log = sys.stderr
    precisions = sorted({pr for t in times.values() for pr in t})
    print(f"switch cost {switch * 1e3:.1f} us; layer times in us:", file=log)
    print(f"{'layer':<28}" + "".join(f"{pr:>9}" for pr in precisions) + "   chosen", file=log)
    for key, pr in zip(order, choice):
        cells = "".join(f"{times[key][q] * 1e3:9.1f}" if q in times[key] else f"{'-':>9}"
                        for q in precisions)
        note = f"  (in {group_name[key]}'s step where 0.0)" if key in absorbed else ""
        print(f"{key:<28}{cells}   {pr}{note}", file=log)
    for prof in profiles:
        ms = sum(layer["ms_median"] for layer in prof["layers"] if layer["op"] in WEIGHTED)
        print(f"weighted layers of {prof['engine']}: {ms * 1e3:.1f} us", file=log)
    if kept_uniform:
        print(f"a mixed plan predicts less than {a.min_gain:.0%} gain over uniform {kept_uniform}: "
              f"uniform {kept_uniform} ({total * 1e3:.1f} us)", file=log)
    else:
        print(f"chosen plan, predicted: {total * 1e3:.1f} us (layer times + switches)", file=log)


if __name__ == "__main__":
    main()
