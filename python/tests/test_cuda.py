"""The cuda backend from Python: host and device data, CUDA tensors in and out, "auto". The GPU
tests skip on machines without a CUDA device (or without the cuda backend)."""

import numpy as np
import pytest

from conftest import INPUT_SHAPE, MAX_BATCH, sample, sqnr_db, torch

import mixq
from mixq.export import export_onnx


def test_auto_backend_builds_where_it_can(lenet):
    s = mixq.ModelSpeedup(lenet, INPUT_SHAPE, batchsize=MAX_BATCH, backend="auto").compress()
    report = s.report()
    assert report["backend"] == ("cuda" if torch.cuda.is_available() and _cuda_builds() else "cpu")
    x = sample(4, seed=3)
    out, seconds = s.inference(x)
    with torch.no_grad():
        np.testing.assert_allclose(out.numpy(), lenet(x).numpy(), rtol=1e-2, atol=1e-2)
    assert seconds > 0


def _cuda_builds():
    try:
        mixq.Builder(mixq.ModelSpeedup(torch.nn.Linear(4, 2), (1, 4)).export_onnx()).set_options(
            backend="cuda").build()
        return True
    except mixq.MixqError:
        return False


requires_gpu = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="skipped: no CUDA device")


@pytest.fixture(scope="module")
def gpu_speedups(lenet, calib_tensor):
    if not _cuda_builds():
        pytest.skip("skipped: this build of mixq has no usable cuda backend")
    # deterministic: the tests compare runs bit for bit
    fp16 = mixq.ModelSpeedup(lenet, INPUT_SHAPE, batchsize=MAX_BATCH, backend="cuda",
                             config={"default_precision": "fp16", "layers": []},
                             deterministic=True).compress()
    int8 = mixq.ModelSpeedup(lenet, INPUT_SHAPE, batchsize=MAX_BATCH, backend="cuda",
                             extra_layer_bits=8, strict_datatype=False,
                             calib_data=calib_tensor, deterministic=True).compress()
    return {"fp16": fp16, "int8": int8}


@requires_gpu
@pytest.mark.parametrize("plan", ["fp16", "int8"])
def test_cuda_tensors_stay_on_the_gpu(gpu_speedups, lenet, plan):
    s = gpu_speedups[plan]
    assert s.report()["backend"] == "cuda"
    x = sample(MAX_BATCH, seed=11)
    host_out, _ = s.inference(x)
    assert host_out.device.type == "cpu"
    # a CUDA tensor made by pending work on PyTorch's stream: the engine waits for it
    xd = (x.cuda() * 2 - x.cuda()).contiguous()
    dev_out, seconds = s.inference(xd)
    assert dev_out.device == xd.device and seconds > 0
    np.testing.assert_array_equal(dev_out.cpu().numpy(), host_out.numpy())
    with torch.no_grad():
        ref = lenet(x).numpy()
    assert sqnr_db(host_out.numpy(), ref) > (30 if plan == "fp16" else 15)
    # smaller batches, and chunks above the maximum
    part, _ = s.inference(xd[:5])
    np.testing.assert_array_equal(part.cpu().numpy(), host_out.numpy()[:5])
    big = torch.cat([xd, xd[:3]])
    joined, _ = s.inference(big, split_batches=True)
    assert joined.device == xd.device and joined.shape == (MAX_BATCH + 3, 10)


@requires_gpu
def test_context_with_device_outputs_and_errors(gpu_speedups):
    s = gpu_speedups["fp16"]
    ctx = s.engine.create_context()
    x = sample(4, seed=12)
    expected = ctx.infer(x)["output1"]
    out = torch.empty(4, 10, device="cuda")
    result = ctx.infer(x.cuda(), outputs={"output1": out})
    assert result["output1"] is out
    np.testing.assert_array_equal(out.cpu().numpy(), expected)
    with pytest.raises(mixq.InvalidArgumentError, match="not contiguous.*contiguous\\(\\)"):
        ctx.infer(x.cuda().transpose(2, 3))
    with pytest.raises(mixq.InvalidDTypeError, match="float64"):
        ctx.infer(x.cuda().double())
    with pytest.raises(mixq.InvalidArgumentError, match="has shape"):
        ctx.infer(x.cuda(), outputs=torch.empty(5, 10, device="cuda"))


class _OnStream:
    """A device array whose producer is `stream` (its __cuda_array_interface__ says so)."""

    def __init__(self, tensor, stream):
        self.tensor = tensor
        self.__cuda_array_interface__ = dict(tensor.__cuda_array_interface__, stream=stream)


@requires_gpu
def test_device_inputs_from_two_streams_are_refused():
    if not _cuda_builds():
        pytest.skip("skipped: this build of mixq has no usable cuda backend")

    class Sum(torch.nn.Module):
        def forward(self, x, z):
            return x + z

    data = export_onnx(Sum(), [(1, 8), (1, 8)], input_names=("x", "z"),
                            output_names=("y",))
    engine = mixq.Builder(mixq.Model.from_bytes(data)).set_options(
        backend="cuda", max_batch=4).build()
    ctx = engine.create_context()
    x, z = torch.randn(4, 8, device="cuda"), torch.randn(4, 8, device="cuda")
    first, second = torch.cuda.Stream(), torch.cuda.Stream()
    with pytest.raises(mixq.InvalidArgumentError,
                       match="'z'.*another CUDA stream than the other device inputs"):
        ctx.infer({"x": _OnStream(x, first.cuda_stream), "z": _OnStream(z, second.cuda_stream)})
    # one producer stream for both: the engine waits for it and adds
    torch.cuda.synchronize()
    got = ctx.infer({"x": _OnStream(x, first.cuda_stream), "z": _OnStream(z, first.cuda_stream)})
    y = got["y"]
    y = y.cpu().numpy() if isinstance(y, torch.Tensor) else np.asarray(y)
    np.testing.assert_allclose(y, (x + z).cpu().numpy(), rtol=1e-6)
