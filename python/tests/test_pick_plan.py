"""bench/cuda/pick_plan.py: the plan picked from per-layer times (synthetic profiles)."""

import json
import os
import subprocess
import sys

import pytest

SCRIPT = os.path.join(os.path.dirname(__file__), "..", "..", "bench", "cuda", "pick_plan.py")


def profile(tmp_path, precision, times, reformat_ms=0.004, fallback=None):
    """A `mixq bench --profile --json` document: modules -> ms at `precision` (a layer listed in
    `fallback` ran at that precision instead)."""
    layers = [{"name": "input/converted", "op": "Reformat", "module": "", "precision": precision,
               "ms_median": reformat_ms}]
    for module, ms in times.items():
        ran = (fallback or {}).get(module, precision)
        layers.append({"name": f"/{module}/Conv", "op": "FusedConv", "module": module,
                       "precision": ran, "ms_median": ms})
        layers.append({"name": f"/{module}/view", "op": "Flatten", "module": module,
                       "precision": ran, "ms_median": 0.0})
    path = tmp_path / f"{precision}.json"
    path.write_text(json.dumps({"engine": f"{precision}.mixq", "layers": layers}))
    return str(path)


def resolved(plan, modules):
    """Module -> precision the plan gives it (its entry, else the default)."""
    chosen = {e["match"]: e["precision"] for e in plan["layers"]}
    return {m: chosen.get(m, plan["default_precision"]) for m in modules}


MODULES = ["conv1", "layer1.0.conv1", "layer1.0.conv2", "fc"]


def pick(*paths, extra=()):
    out = subprocess.run([sys.executable, SCRIPT, *paths, *extra], capture_output=True, text=True)
    return out.returncode, (json.loads(out.stdout) if out.returncode == 0 else None), out.stderr


def test_groups_keep_one_precision_and_switches_cost(tmp_path):
    fp16 = profile(tmp_path, "fp16", {"conv1": 0.040, "layer1.0.conv1": 0.030,
                                      "layer1.0.conv2": 0.030, "fc": 0.010})
    int8 = profile(tmp_path, "int8", {"conv1": 0.100, "layer1.0.conv1": 0.020,
                                      "layer1.0.conv2": 0.045, "fc": 0.030})
    rc, plan, log = pick(fp16, int8)
    assert rc == 0, log
    # layer1 as a group: fp16 0.060 vs int8 0.065 -> fp16; everything fp16, nothing listed
    assert plan["default_precision"] == "fp16" and plan["layers"] == []
    int8 = profile(tmp_path, "int8", {"conv1": 0.100, "layer1.0.conv1": 0.010,
                                      "layer1.0.conv2": 0.020, "fc": 0.030})
    rc, plan, log = pick(fp16, int8, extra=["--switch-ms", "0.005"])
    assert rc == 0, log
    # layer1 in int8 saves 0.030, two switches cost 0.010
    assert resolved(plan, MODULES) == {"conv1": "fp16", "layer1.0.conv1": "int8",
                                       "layer1.0.conv2": "int8", "fc": "fp16"}
    rc, plan, _ = pick(fp16, int8, extra=["--switch-ms", "0.020"])
    # the switches now cost more than the gain
    assert set(resolved(plan, MODULES).values()) == {"fp16"}


def test_fallbacks_are_no_candidates(tmp_path):
    fp16 = profile(tmp_path, "fp16", {"conv1": 0.040, "conv2": 0.040})
    # conv1 "ran int8" only in name: it fell back to fp32 there, so int8 is no choice for it
    int8 = profile(tmp_path, "int8", {"conv1": 0.001, "conv2": 0.010},
                   fallback={"conv1": "fp32"})
    rc, plan, log = pick(fp16, int8, extra=["--switch-ms", "0"])
    assert rc == 0, log
    assert resolved(plan, ["conv1", "conv2"]) == {"conv1": "fp32", "conv2": "int8"}


def test_profiles_without_layer_times_are_refused(tmp_path):
    path = tmp_path / "plain.json"
    path.write_text(json.dumps({"engine": "x.mixq", "compute_ms_median": 1.0}))
    rc, _, log = pick(str(path))
    assert rc != 0 and "--profile --json" in log


if __name__ == "__main__":
    sys.exit(pytest.main([__file__]))


def test_a_small_predicted_gain_keeps_the_uniform_plan(tmp_path):
    fp16 = profile(tmp_path, "fp16", {"conv1": 0.040, "layer1.0.conv1": 0.030,
                                      "layer1.0.conv2": 0.030, "fc": 0.010})
    # layer1 in int8 saves 0.004 of 0.110 (3.6%) before the switch; with it, 1.8%
    int8 = profile(tmp_path, "int8", {"conv1": 0.100, "layer1.0.conv1": 0.028,
                                      "layer1.0.conv2": 0.028, "fc": 0.030})
    rc, plan, log = pick(fp16, int8, extra=["--switch-ms", "0.001"])
    assert rc == 0, log
    assert plan["default_precision"] == "fp16" and plan["layers"] == []
    assert "uniform fp16" in log
    rc, plan, log = pick(fp16, int8, extra=["--switch-ms", "0.001", "--min-gain", "0"])
    assert rc == 0, log
    assert resolved(plan, MODULES)["layer1.0.conv1"] == "int8"


def test_absorbed_reformats_make_a_switch_cost_the_cheapest_step(tmp_path):
    # No profile has a Reformat that did work (the backend absorbed them): a switch costs the
    # cheapest step seen, 0.010 here, more than the 0.008 that layer1 in int8 would save.
    fp16 = profile(tmp_path, "fp16", {"conv1": 0.040, "layer1.0.conv1": 0.030,
                                      "layer1.0.conv2": 0.030, "fc": 0.010}, reformat_ms=0.0)
    int8 = profile(tmp_path, "int8", {"conv1": 0.100, "layer1.0.conv1": 0.026,
                                      "layer1.0.conv2": 0.026, "fc": 0.030}, reformat_ms=0.0)
    rc, plan, log = pick(fp16, int8, extra=["--min-gain", "0"])
    assert rc == 0, log
    assert "switch cost 10.0 us" in log
    assert set(resolved(plan, MODULES).values()) == {"fp16"}


def test_a_layer_absorbed_into_its_neighbour_costs_nothing_there(tmp_path):
    # The int8 engine chained fc2 into fc1's step: fc2 is missing from its profile. It must count
    # as free at int8 (not as "no int8 candidate") and keep fc1's precision.
    fp16 = profile(tmp_path, "fp16", {"conv1": 0.015, "fc1": 0.009, "fc2": 0.006})
    int8 = profile(tmp_path, "int8", {"conv1": 0.016, "fc1": 0.009})
    rc, plan, log = pick(fp16, int8, extra=["--switch-ms", "0.001", "--min-gain", "0"])
    assert rc == 0, log
    # fc1+fc2: int8 0.009 against fp16 0.015; conv1 stays fp16 (0.001 saved, one switch 0.001)
    got = resolved(plan, ["conv1", "fc1", "fc2"])
    assert got["fc1"] == "int8" and got["fc2"] == "int8", (got, log)
    assert "in fc1's step" in log
