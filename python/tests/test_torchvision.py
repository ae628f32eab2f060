"""Export round trips for the torchvision models of the foundation issue through ModelSpeedup:
PyTorch -> ONNX (module names kept) -> mixq engine on the CPU, fp32, against PyTorch itself;
and module names resolving to layers on a real network."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")

import mixq  # noqa: E402

torch.set_num_threads(2)

MODELS = {
    "resnet18": lambda: torchvision.models.resnet18(weights=None),
    "mobilenet_v2": lambda: torchvision.models.mobilenet_v2(weights=None),
    "squeezenet1_1": lambda: torchvision.models.squeezenet1_1(weights=None),
    "shufflenet_v2_x1_0": lambda: torchvision.models.shufflenet_v2_x1_0(weights=None),
    "googlenet": lambda: torchvision.models.googlenet(weights=None, aux_logits=False, init_weights=True),
    "vgg11": lambda: torchvision.models.vgg11(weights=None),
}


def randomise_batchnorm(model):
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                c = m.num_features
                m.running_mean.copy_(torch.randn(c, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(c, generator=g) * 0.5 + 0.75)


@pytest.mark.parametrize("name", list(MODELS))
def test_fp32_round_trip_matches_pytorch(name, tmp_path):
    torch.manual_seed(0)
    model = MODELS[name]().eval()
    randomise_batchnorm(model)
    x = torch.randn(2, 3, 224, 224)
    engine = mixq.ModelSpeedup(model, (2, 3, 224, 224), batchsize=2,
                               onnx_path=str(tmp_path / f"{name}.onnx"))
    engine.compress()
    out, seconds = engine.inference(x)
    with torch.no_grad():
        ref = model(x)
    out = torch.as_tensor(np.asarray(out)).reshape(ref.shape)
    err = float((out - ref).abs().max() / ref.abs().max())
    assert err < 1e-4, f"{name}: max error {err:.2e} relative to max |output|"
    assert seconds > 0
    # Engine file round trip: the reloaded engine gives the same output.
    engine.export_quantized_model(str(tmp_path / f"{name}.mixq"))
    engine.load_quantized_model(str(tmp_path / f"{name}.mixq"))
    again, _ = engine.inference(x)
    assert np.array_equal(np.asarray(again), np.asarray(out.numpy()).reshape(np.asarray(again).shape))


def test_module_names_select_layers_of_resnet18(tmp_path):
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval()
    config = {name: {"weight_bits": 8} for name in ("layer1.0.conv1", "layer2.0.downsample.0", "fc")}
    calib = torch.randn(8, 3, 64, 64)
    engine = mixq.ModelSpeedup(model, (4, 3, 64, 64), config=config, calib_data=calib, batchsize=4,
                               onnx_path=str(tmp_path / "resnet18.onnx"))
    engine.compress()
    layers = engine.report()["layers"]
    int8 = {layer["module"] for layer in layers if layer["precision"] == "int8" and layer["module"]}
    assert {"layer1.0.conv1", "layer2.0.downsample.0", "fc"} <= int8
    weighted = [layer for layer in layers if layer["op"] in ("FusedConv", "FusedGemm")]
    assert sum(layer["precision"] == "int8" for layer in weighted) == 3
