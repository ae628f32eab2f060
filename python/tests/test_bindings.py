"""The bindings themselves: Model, Builder, Engine, Context, tensors in and out, errors."""

import threading

import numpy as np
import pytest

from conftest import MAX_BATCH, sample, torch

import mixq


@pytest.fixture(scope="module")
def model(fp32_speedup):
    return fp32_speedup.onnx_model


@pytest.fixture(scope="module")
def engine(fp32_speedup):
    return fp32_speedup.engine


@pytest.fixture()
def x():
    return sample(4, seed=7).numpy()


def test_model_summary_and_reference(model, lenet, x):
    assert [i.name for i in model.inputs] == ["actual_input_1"]
    assert model.inputs[0].shape == (-1, 1, 28, 28) and model.inputs[0].dtype == "float32"
    summary = model.summary()
    modules = {layer.module for layer in summary.layers}
    assert {"conv1", "conv2", "fc1", "fc2", "fc3"} <= modules
    assert summary.layers[0].name == "/conv1/Conv"
    assert summary.total_params == sum(p.numel() for p in lenet.parameters())
    assert summary.to_dict()["layers"][0]["module"] == "conv1"
    out = model.run_reference(x)
    with torch.no_grad():
        ref = lenet(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(out["output1"], ref, rtol=1e-4, atol=1e-5)
    every = model.run_reference({"actual_input_1": x}, keep_intermediates=True)
    assert "/relu1/Relu_output_0" in every and every["/relu1/Relu_output_0"].shape == (4, 6, 24, 24)
    assert isinstance(model.run_reference(x, as_torch=True)["output1"], torch.Tensor)
    rnd = model.random_inputs(3, seed=1)
    assert rnd["actual_input_1"].shape == (3, 1, 28, 28)


def test_builder_options_and_engine_bytes(model, x, tmp_path):
    options = mixq.BuildOptions(default_precision="fp32", max_batch=8,
                                calibration=mixq.CalibrationOptions(algorithm="minmax"))
    assert options.calibration.algorithm == "minmax" and options.max_batch == 8
    options.calibration.percentile = 99.9
    assert options.calibration.percentile == 99.9
    with pytest.raises(mixq.InvalidArgumentError, match="'int4' is not one of"):
        options.default_precision = "int4"
    with pytest.raises(ValueError, match="calibration algorithm 'kl2'"):
        mixq.CalibrationOptions(algorithm="kl2")
    builder = mixq.Builder(model).set_options(options, allow_fallback=True)
    engine = builder.build()
    assert engine.max_batch == 8 and engine.report.max_batch == 8
    assert [o.name for o in engine.outputs] == ["output1"]
    data = engine.serialize()
    assert isinstance(data, bytes) and data[:8] == b"MIXQENGN"
    again = mixq.Engine.from_bytes(data)
    # where a load's time went: each layer's rebuilding (none for the engine built here)
    assert all(l.load_seconds == 0 for l in engine.report.layers)
    assert sum(l.load_seconds for l in again.report.layers) > 0
    assert "load_seconds" in again.report.layers[0].to_dict()
    a = engine.create_context().infer(x)["output1"]
    b = again.create_context().infer(x)["output1"]
    np.testing.assert_array_equal(a, b)
    path = tmp_path / "e.mixq"
    engine.save(path)
    np.testing.assert_array_equal(mixq.Engine.load(str(path)).create_context().infer(x)["output1"], a)
    with pytest.raises(mixq.CorruptFileError, match="truncated"):
        mixq.Engine.from_bytes(data[: len(data) // 2])
    with pytest.raises(mixq.InvalidArgumentError, match="unknown build option 'max_batchsize'"):
        builder.set_options(max_batchsize=3)


def test_builder_plans_and_calibration(model, calib_tensor, tmp_path):
    builder = mixq.Builder(model)
    builder.set_plan_json({"layers": [{"match": "conv*", "precision": "int8"}]})
    with pytest.raises(mixq.FailedPreconditionError, match="no range"):
        builder.build()
    calib = [{"actual_input_1": calib_tensor[:32].numpy()}, calib_tensor[32:]]  # dict or array
    engine = builder.set_calibration_data(calib).set_options(calib_algo="percentile",
                                                             percentile=99.9).build()
    runs = {l.module: l.precision for l in engine.report.layers if l.module}
    assert runs["conv1"] == "int8" and runs["conv2"] == "int8" and runs["fc1"] == "fp32"
    # where the build's time went: its phases, and each layer's preparation
    phases = [name for name, _ in engine.report.phase_seconds]
    assert phases == ["planning", "calibration engine", "calibration", "kernels", "execution plan"]
    assert all(l.build_seconds > 0 for l in engine.report.layers)
    assert engine.report.to_dict()["phase_seconds"] == engine.report.phase_seconds
    # calibration data from a file, a plan from a file
    np.save(tmp_path / "calib.npy", calib_tensor.numpy())
    (tmp_path / "plan.json").write_text('{"conv1": {"weight_bits": 8}}')
    b2 = mixq.Builder(model)
    b2.set_plan_file(tmp_path / "plan.json").set_calibration_data(str(tmp_path / "calib.npy"))
    report = b2.build().report
    assert [l.precision for l in report.layers if l.module == "conv1"] == ["int8"]
    data = mixq.CalibrationData.from_path(tmp_path / "calib.npy")
    assert data.sample_count == len(calib_tensor) and len(data) == 1
    with pytest.raises(mixq.NotFoundError):
        mixq.CalibrationData.from_path(tmp_path / "missing.npy")
    with pytest.raises(mixq.ParseError):
        mixq.Builder(model).set_plan_json("{not json").build()
    with pytest.raises(mixq.NotFoundError, match="conv7"):
        mixq.Builder(model).set_plan_json({"conv7": {"weight_bits": 8}}).build()


def test_context_outputs_timing_profiling_capture(engine, x):
    ctx = engine.create_context()
    result = ctx.infer(x)
    assert list(result) == ["output1"] and "output1" in result and len(result) == 1
    assert result["output1"].shape == (4, 10) and result["output1"].dtype == np.float32
    assert set(result.timing) == {"compute_ms", "end_to_end_ms"}
    assert 0 < result.timing["compute_ms"] <= result.timing["end_to_end_ms"]
    assert result.layers == [] and result.captured == {}
    with pytest.raises(KeyError, match="outputs are output1"):
        result["nope"]
    ctx.profiling = True
    ctx.capture(["/relu1/Relu_output_0"])
    r = ctx.infer({"actual_input_1": torch.from_numpy(x)}, as_torch=True)
    assert isinstance(r["output1"], torch.Tensor)
    assert [l["name"] for l in r.layers] == [l.name for l in engine.report.layers]
    assert all(l["ms"] >= 0 and l["precision"] == "fp32" for l in r.layers)
    assert list(r.captured) == ["/relu1/Relu_output_0"]
    np.testing.assert_array_equal(r["output1"].numpy(), result["output1"])
    # any batch from 1 to the maximum, as a list or a single array
    for n in (1, 3, MAX_BATCH):
        assert ctx.infer([sample(n, 1).numpy()])["output1"].shape == (n, 10)


def test_inputs_are_borrowed_and_outputs_independent(engine, x):
    ctx = engine.create_context()
    first = ctx.infer(x)["output1"]
    second = ctx.infer(x + 1)["output1"]
    assert not np.shares_memory(first, second)
    assert not np.array_equal(first, second)
    # read-only arrays are fine (nothing writes into inputs)
    ro = x.copy()
    ro.setflags(write=False)
    np.testing.assert_array_equal(ctx.infer(ro)["output1"], first)


@pytest.mark.parametrize("kind", ["numpy", "torch"])
def test_bad_inputs_raise_clear_errors(engine, x, kind):
    ctx = engine.create_context()
    conv = (lambda a: a) if kind == "numpy" else torch.from_numpy

    with pytest.raises(mixq.InvalidArgumentError, match=r"shape \[4,1,20,28\]; the engine expects \[N,1,28,28\] \(N: batch 1 to 16\)"):
        ctx.infer(conv(np.zeros((4, 1, 20, 28), np.float32)))
    hint = "astype\\(numpy.float32\\)" if kind == "numpy" else "\\.float\\(\\)"
    with pytest.raises(mixq.InvalidDTypeError, match="float64.*" + hint):
        ctx.infer(conv(x.astype(np.float64)))
    with pytest.raises(TypeError):  # InvalidDTypeError is a TypeError too
        ctx.infer(conv(x.astype(np.float64)))
    hint = "numpy.ascontiguousarray" if kind == "numpy" else "\\.contiguous\\(\\)"
    with pytest.raises(mixq.InvalidArgumentError, match="contiguous.*" + hint):
        ctx.infer(conv(x).transpose(2, 3) if kind == "torch" else x.transpose(0, 1, 3, 2))
    with pytest.raises(ValueError, match=f"batch size {MAX_BATCH + 1} is outside 1..{MAX_BATCH}"):
        ctx.infer(conv(sample(MAX_BATCH + 1, 2).numpy()))
    with pytest.raises(mixq.InvalidDTypeError, match="int16"):
        ctx.infer(conv(x.astype(np.int16)))
    with pytest.raises(mixq.InvalidArgumentError, match="has dtype i32; the engine expects f32"):
        ctx.infer(conv(x.astype(np.int32)))
    with pytest.raises(mixq.NotFoundError, match="no input named 'image'"):
        ctx.infer({"image": conv(x)})
    with pytest.raises(KeyError):
        ctx.infer({"image": conv(x)})


def test_non_array_inputs(engine):
    ctx = engine.create_context()
    with pytest.raises(mixq.InvalidArgumentError, match="is a list; give a numpy.ndarray"):
        ctx.infer({"actual_input_1": [[1.0, 2.0]]})
    with pytest.raises(mixq.InvalidArgumentError, match="sequence of 2 tensors"):
        ctx.infer([np.zeros((1, 1, 28, 28), np.float32)] * 2)
    with pytest.raises(mixq.InvalidArgumentError, match="NaN"):
        ctx.infer(np.full((1, 1, 28, 28), np.nan, np.float32))


def test_tensor_on_another_device(engine):
    ctx = engine.create_context()
    meta = torch.empty(2, 1, 28, 28, device="meta")  # a non-CPU device available everywhere
    with pytest.raises(mixq.InvalidArgumentError,
                       match="on meta, but the engine runs on the CPU: move the tensor with .cpu()"):
        ctx.infer(meta)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_tensor_with_cpu_engine(engine):
    ctx = engine.create_context()
    with pytest.raises(mixq.InvalidArgumentError,
                       match="on cuda:0, but the engine runs on the CPU: move the tensor with .cpu()"):
        ctx.infer(torch.zeros(2, 1, 28, 28, device="cuda"))


class FakeDeviceArray:
    """Any device array a library hands over through __cuda_array_interface__ (CuPy, Numba)."""

    __cuda_array_interface__ = {"shape": (2, 1, 28, 28), "typestr": "<f4", "data": (1 << 40, False),
                                "version": 3, "strides": None, "stream": None}


def test_device_array_with_cpu_engine(engine):
    with pytest.raises(mixq.InvalidArgumentError,
                       match="is a device array .*FakeDeviceArray.*the engine runs on the CPU"):
        engine.create_context().infer(FakeDeviceArray())


@pytest.mark.parametrize("kind", ["numpy", "torch"])
def test_outputs_written_in_place(engine, x, kind):
    ctx = engine.create_context()
    expected = ctx.infer(x)["output1"]
    out = np.full((4, 10), np.nan, np.float32)
    given = out if kind == "numpy" else torch.from_numpy(out)
    result = ctx.infer(x, outputs={"output1": given})
    assert result["output1"] is given
    np.testing.assert_array_equal(out, expected)
    # a list in output order, or one array, as for the inputs
    out[:] = 0
    assert ctx.infer(x, outputs=[given])["output1"] is given
    np.testing.assert_array_equal(out, expected)


def test_bad_outputs_raise_clear_errors(engine, x):
    ctx = engine.create_context()
    with pytest.raises(mixq.InvalidArgumentError, match=r"output 'output1' has shape \[3,10\]; "
                                                        r"the output at batch 4 has shape \[4,10\]"):
        ctx.infer(x, outputs=np.zeros((3, 10), np.float32))
    with pytest.raises(mixq.InvalidArgumentError, match="output 'output1' is f16; the output is f32"):
        ctx.infer(x, outputs=np.zeros((4, 10), np.float16))
    ro = np.zeros((4, 10), np.float32)
    ro.setflags(write=False)
    with pytest.raises(mixq.InvalidArgumentError, match="output 'output1' is a read-only array"):
        ctx.infer(x, outputs=ro)
    with pytest.raises(mixq.InvalidArgumentError, match="not C-contiguous"):
        ctx.infer(x, outputs=np.zeros((10, 4), np.float32).T)
    with pytest.raises(mixq.NotFoundError, match="no output named 'logits'"):
        ctx.infer(x, outputs={"logits": np.zeros((4, 10), np.float32)})
    with pytest.raises(mixq.InvalidArgumentError, match="requires grad"):
        ctx.infer(x, outputs=torch.zeros(4, 10, requires_grad=True))
    with pytest.raises(mixq.InvalidArgumentError, match="is a device array"):
        ctx.infer(x, outputs=FakeDeviceArray())
    assert ctx.infer(x)["output1"].shape == (4, 10)


def test_requires_grad_tensor_is_accepted(engine, lenet, x):
    t = torch.from_numpy(x).requires_grad_(True)
    out = engine.create_context().infer(t)["output1"]
    with torch.no_grad():
        np.testing.assert_allclose(out, lenet(torch.from_numpy(x)).numpy(), rtol=1e-4, atol=1e-5)


def test_two_threads_two_contexts_identical_results(int8_speedup):
    engine = int8_speedup.engine
    inputs = [sample(MAX_BATCH, seed=100 + i).numpy() for i in range(4)]
    expected = [engine.create_context().infer(a)["output1"] for a in inputs]
    results, errors = {}, []

    def worker(tid):
        try:
            ctx = engine.create_context()
            for rep in range(5):
                for i, a in enumerate(inputs):
                    results[(tid, rep, i)] = ctx.infer(a)["output1"]
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert len(results) == 2 * 5 * len(inputs)
    for (tid, rep, i), out in results.items():
        np.testing.assert_array_equal(out, expected[i])


def test_gil_released_during_inference(model):
    # A slow engine (reference kernels) so one call lasts a while; a Python thread counting
    # meanwhile can only advance if the call released the GIL.
    engine = mixq.Builder(model).set_options(backend="reference", max_batch=64).build()
    ctx = engine.create_context()
    data = sample(64, seed=3).numpy()
    ctx.infer(data)  # warm up (batch plan)
    counter = [0]
    stop = threading.Event()

    def count():
        while not stop.is_set():
            counter[0] += 1

    t = threading.Thread(target=count)
    t.start()
    try:
        advanced = []
        for _ in range(3):
            before = counter[0]
            ctx.infer(data)
            advanced.append(counter[0] - before)
    finally:
        stop.set()
        t.join()
    assert max(advanced) > 1000, advanced


def test_compare_engine(model, int8_speedup, x):
    rows = mixq.compare_engine(model, int8_speedup.engine, x)
    assert rows and rows[-1]["output"] == "output1"
    assert {"layer", "output", "op", "module", "precision", "sqnr_db", "max_abs_error",
            "max_abs_reference", "elements"} <= set(rows[0])
    assert all(r["precision"] == "int8" for r in rows if r["module"].startswith(("conv", "fc")))
    assert all(r["sqnr_db"] > 20 for r in rows)


def test_deterministic_build_option(model, x):
    options = mixq.BuildOptions(max_batch=4)
    assert options.deterministic is False
    options.deterministic = True
    engine = mixq.Builder(model).set_options(options).build()
    again = mixq.Builder(model).set_options(max_batch=4, deterministic=True).build()
    a = engine.create_context().infer(x)["output1"]
    np.testing.assert_array_equal(a, engine.create_context().infer(x)["output1"])
    np.testing.assert_array_equal(a, again.create_context().infer(x)["output1"])
    with pytest.raises(mixq.InvalidArgumentError, match="unknown build option 'determinstic'"):
        mixq.Builder(model).set_options(determinstic=True)
