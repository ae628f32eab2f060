"""QATQuantizer: NNI's config_list, the fake quantization it simulates, export to NNI's
calibration_config and to Q/DQ ONNX, and the accuracy of QAT / PTQ engines on Fashion-MNIST."""

import json
import os
import sys

import pytest

torch = pytest.importorskip("torch")
import torch.nn as nn  # noqa: E402

import mixq  # noqa: E402
from mixq import qat  # noqa: E402
from mixq.qat import QATQuantizer  # noqa: E402

EXAMPLES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "examples")
sys.path.insert(0, EXAMPLES)
import fashion_mnist  # noqa: E402
from models import LeNet  # noqa: E402

torch.set_num_threads(2)

LENET_CONFIG = [
    {"quant_types": ["weight", "input"], "quant_bits": {"weight": 8, "input": 8},
     "op_types": ["Conv2d", "Linear"]},
    {"quant_types": ["output"], "quant_bits": {"output": 8}, "op_types": ["ReLU", "MaxPool2d"]},
]


class ConvBN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.relu = nn.ReLU()
        self.fc = nn.Linear(8 * 8 * 8, 4)

    def forward(self, x):
        return self.fc(torch.flatten(self.relu(self.bn(self.conv(x))), 1))


def lenet(seed=0):
    torch.manual_seed(seed)
    return LeNet()


def observe(model, batches=4, seed=0):
    """Training-mode forward passes, which update the tracked ranges."""
    g = torch.Generator().manual_seed(seed)
    model.train()
    with torch.no_grad():
        for _ in range(batches):
            model(torch.randn(8, 1, 28, 28, generator=g))
    return model.eval()


# --- config_list ---------------------------------------------------------------------------------

def test_config_list_selects_modules_like_nni():
    model = lenet()
    settings = qat.parse_config_list(model, [
        {"quant_types": ["weight"], "quant_bits": 8, "op_types": ["default"]},
        {"quant_types": ["input", "weight"], "quant_bits": {"input": 8, "weight": 16},
         "op_names": ["fc2"], "quant_scheme": {"weight": "per_tensor_symmetric"}},
        {"quant_types": ["output"], "op_names": ["relu1"], "quant_dtype": "int",
         "quant_start_step": 3},
        {"exclude": True, "op_names": ["conv2"]},
    ])
    assert list(settings) == ["conv1", "relu1", "fc1", "fc2"]  # model order; conv2 excluded
    assert settings["conv1"]["weight"] == (8, "int", "per_channel_symmetric")
    assert settings["fc2"]["weight"] == (16, "int", "per_tensor_symmetric")  # last entry wins
    assert settings["fc2"]["input"] == (8, "uint", "per_tensor_symmetric")
    assert settings["relu1"] == {"start_step": 3, "output": (8, "int", "per_tensor_symmetric")}


@pytest.mark.parametrize("config, message", [
    ([{"quant_types": ["weight"], "op_names": ["conv1", "conv9", "fc"]}], "conv9"),
    ([{"quant_types": ["weight"], "op_names": ["conv1"], "quant_bit": 8}], "unknown key"),
    ([{"quant_types": ["weight"], "op_types": ["Conv2D"]}], "Conv2D"),
    ([{"quant_types": ["weights"], "op_names": ["conv1"]}], "quant_types"),
    ([{"quant_types": ["weight"]}], "selects no module"),
    ([{"quant_types": ["weight"], "op_names": ["relu1"]}], "has no weight"),
    ([{"quant_types": ["weight"], "op_names": ["conv1"], "quant_scheme": "per_tensor_affine"}],
     "symmetric"),
    ([{"quant_types": ["output"], "op_names": ["relu1"],
       "quant_scheme": "per_channel_symmetric"}], "per tensor"),
    ([{"quant_types": ["output"], "op_names": ["relu1"], "quant_dtype": "int8"}], "quant_dtype"),
    ([{"quant_types": ["input"], "op_names": ["fc1"], "quant_bits": {"output": 8}}],
     "not in quant_types"),
    ({"quant_types": ["weight"], "op_names": ["conv1"]}, "list"),
])
def test_config_list_errors(config, message):
    with pytest.raises(ValueError, match=message):
        QATQuantizer(lenet(), config, None)


def test_unknown_module_names_are_all_listed():
    with pytest.raises(ValueError) as error:
        QATQuantizer(lenet(), [{"quant_types": ["weight"], "op_names": ["conv1", "cnv2"]},
                               {"quant_types": ["output"], "op_names": ["relu9"]}], None)
    assert "'cnv2'" in str(error.value) and "'relu9'" in str(error.value)


@pytest.mark.parametrize("bits", [4, 7, 64, 8.0, "8", True, None])
def test_bad_bits(bits):
    with pytest.raises(ValueError, match="quant_bits"):
        QATQuantizer(lenet(), [{"quant_types": ["weight"], "op_names": ["conv1"],
                                "quant_bits": bits if bits is not None else {"weight": None}}],
                     None)


# --- fake quantization ----------------------------------------------------------------------

def test_weight_fake_quant_is_per_channel_quantize_dequantize():
    w = torch.randn(6, 3, 5, 5) * torch.linspace(0.1, 3, 6).view(6, 1, 1, 1)
    scale = w.abs().flatten(1).amax(1) / 127
    s = scale.view(6, 1, 1, 1)
    expected = torch.clamp(torch.round(w / s), -127, 127) * s
    got = qat.fake_quantize_weight(w, 8, "per_channel_symmetric")
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
    ref = torch.quantize_per_channel(w, scale.double(), torch.zeros(6, dtype=torch.long), 0,
                                     torch.qint8).dequantize()
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-6)
    per_tensor = qat.fake_quantize_weight(w, 8, "per_tensor_symmetric")
    s = w.abs().max() / 127
    torch.testing.assert_close(per_tensor, torch.round(w / s) * s, rtol=0, atol=1e-6)
    assert torch.equal(qat.fake_quantize_weight(w, 32, "per_channel_symmetric"), w)
    assert torch.equal(qat.fake_quantize_weight(w, 16, "per_channel_symmetric"), w.half().float())


@pytest.mark.parametrize("lo, hi, dtype, scheme", [
    (0.0, 6.0, "uint", "per_tensor_symmetric"),     # ReLU output: [0, 6] in 255 steps
    (-1.5, 4.0, "uint", "per_tensor_symmetric"),    # signed: symmetric, 127 steps a side
    (0.0, 6.0, "int", "per_tensor_symmetric"),      # signed grid even for non-negative values
    (-1.5, 4.0, "uint", "per_tensor_affine"),       # [min, max] with a zero point
    (-1.5, 4.0, "int", "per_tensor_affine"),
])
def test_activation_fake_quant_is_quantize_dequantize(lo, hi, dtype, scheme):
    obs = qat.ActivationObserver(8, dtype, scheme, decay=0.99)
    x = torch.linspace(lo, hi, 1001)
    y = obs(x, track=True, quantize=True)
    assert (obs.min, obs.max) == pytest.approx((lo, hi))
    if scheme == "per_tensor_symmetric":
        if dtype == "uint" and lo >= 0:
            scale, qmin, qmax, zero = hi / 255, 0, 255, 0
        else:
            scale, qmin, qmax, zero = max(-lo, hi) / 127, -128, 127, 0
    else:
        scale = (hi - lo) / 255
        qmin = 0 if dtype == "uint" else -128
        zero, qmax = qmin + round(-lo / scale), qmin + 255
    assert obs.qparams() == pytest.approx((scale, zero, qmin, qmax))
    expected = (torch.clamp(torch.round(x / scale) + zero, qmin, qmax) - zero) * scale
    torch.testing.assert_close(y, expected, rtol=0, atol=1e-6)
    qtype = torch.quint8 if qmin == 0 else torch.qint8
    torch.testing.assert_close(y, torch.quantize_per_tensor(x, scale, zero, qtype).dequantize(),
                               rtol=0, atol=1e-6)


def test_straight_through_gradient_inside_the_range_only():
    obs = qat.ActivationObserver(8, "uint", "per_tensor_symmetric", decay=0.99)
    obs(torch.tensor([-1.0, 1.0]), track=True, quantize=False)  # range [-1, 1]
    x = torch.tensor([-3.0, -0.9, -0.3337, 0.0, 0.5, 0.999, 1.5], requires_grad=True)
    obs(x, track=False, quantize=True).sum().backward()
    assert x.grad.tolist() == [0, 1, 1, 1, 1, 1, 0]
    w = torch.randn(4, 3, requires_grad=True)
    qat.fake_quantize_weight(w, 8, "per_channel_symmetric").pow(2).sum().backward()
    torch.testing.assert_close(w.grad, 2 * qat.fake_quantize_weight(w.detach(), 8,
                                                                   "per_channel_symmetric"))


def test_ema_tracking():
    obs = qat.ActivationObserver(8, "uint", "per_tensor_symmetric", decay=0.99)
    obs(torch.tensor([-2.0, 4.0]), track=True, quantize=True)  # the first batch sets the range
    assert (obs.min, obs.max) == (-2.0, 4.0)
    obs(torch.tensor([0.0, 14.0]), track=True, quantize=True)
    assert obs.min == pytest.approx(0.99 * -2.0 + 0.01 * 0.0)
    assert obs.max == pytest.approx(0.99 * 4.0 + 0.01 * 14.0)
    obs(torch.tensor([-100.0, 100.0]), track=False, quantize=True)  # eval mode: no update
    assert obs.max == pytest.approx(4.1)


def test_compress_tracks_in_training_mode_and_quantizes():
    model = lenet()
    quantizer = QATQuantizer(model, LENET_CONFIG, None, ema_decay=0.5)
    quantizer.compress()
    x = torch.randn(4, 1, 28, 28)
    model.train()
    model(x)
    assert quantizer.steps == 1
    obs = quantizer.observers["conv1", "input"]
    assert (obs.min, obs.max) == (x.min().item(), x.max().item())
    model.eval()
    model(x * 10)  # eval: ranges stay
    assert (obs.min, obs.max) == (x.min().item(), x.max().item())
    # conv1 sees its quantized input and quantized weights
    seen = {}
    h = model.conv1.register_forward_hook(lambda m, i, o: seen.update(x=i[0], y=o))
    with torch.no_grad():
        model(x)
    h.remove()
    xq = obs(x, track=False, quantize=True)
    torch.testing.assert_close(seen["x"], xq)
    w = qat.fake_quantize_weight(model.conv1.weight, 8, "per_channel_symmetric")
    torch.testing.assert_close(seen["y"], nn.functional.conv2d(xq, w, model.conv1.bias))


def test_quant_start_step():
    model = lenet()
    config = [{"quant_types": ["output"], "op_names": ["relu1"], "quant_start_step": 2}]
    quantizer = QATQuantizer(model, config, None)
    quantizer.compress()
    out = {}
    model.relu1.register_forward_hook(lambda m, i, o: out.update(y=o))
    x = torch.randn(2, 1, 28, 28)
    model.train()
    for step in range(3):
        model(x)
        quantized = not torch.equal(out["y"], torch.relu(model.conv1(x)))
        assert quantized == (step >= 2), step


def test_batchnorm_needs_dummy_input_and_moves_conv_output_quantization():
    config = [{"quant_types": ["weight", "input", "output"], "op_types": ["Conv2d"]}]
    with pytest.raises(ValueError, match="dummy_input"):
        QATQuantizer(ConvBN(), config, None).compress()
    model = ConvBN()
    x = torch.randn(4, 3, 8, 8)
    quantizer = QATQuantizer(model, config, None, dummy_input=x)
    quantizer.compress()
    model.train()
    model(x)
    bn_out = model.bn(model.conv(x))  # the conv's output after folding is the BN's output
    obs = quantizer.observers["conv", "output"]
    assert obs.min == pytest.approx(bn_out.min().item(), abs=1e-5)


# --- export ---------------------------------------------------------------------------------------

def test_export_model_writes_every_key(tmp_path):
    model = lenet()
    config = [{"quant_types": ["weight", "input", "output"], "quant_bits": 8,
               "op_names": ["conv1", "fc1"]},
              {"quant_types": ["output"], "quant_bits": 8, "op_types": ["ReLU"]},
              {"quant_types": ["weight"], "quant_bits": 16, "op_names": ["fc2"]}]
    quantizer = QATQuantizer(model, config, None)
    quantizer.compress()
    observe(model)
    calibration = quantizer.export_model(tmp_path / "model.pth", tmp_path / "calibration.pth")
    assert set(calibration) == {"conv1", "relu1", "relu2", "fc1", "relu3", "fc2"}
    assert set(calibration["conv1"]) == {"weight_bits", "input_bits", "output_bits",
                                         "tracked_min_input", "tracked_max_input",
                                         "tracked_min_output", "tracked_max_output"}
    assert calibration["relu1"].keys() == {"output_bits", "tracked_min_output",
                                           "tracked_max_output"}
    assert calibration["fc2"] == {"weight_bits": 16}
    obs = quantizer.observers["conv1", "input"]
    assert calibration["conv1"]["tracked_min_input"] == obs.min
    assert torch.load(tmp_path / "calibration.pth") == calibration
    with open(tmp_path / "calibration.json") as f:
        assert json.load(f) == calibration
    # the fake quantization is gone, the saved weights are the quantized ones
    assert "forward" not in vars(model.conv1) and not model.relu1._forward_hooks
    state = torch.load(tmp_path / "model.pth")
    torch.testing.assert_close(state["conv1.weight"], qat.fake_quantize_weight(
        state["conv1.weight"], 8, "per_channel_symmetric"), rtol=0, atol=0)
    assert set(state) == set(lenet().state_dict())


def test_engine_reads_the_exported_config(tmp_path):
    model = lenet()
    quantizer = QATQuantizer(model, LENET_CONFIG, None)
    quantizer.compress()
    observe(model)
    calibration = quantizer.export_model(tmp_path / "model.pth", tmp_path / "calibration.pth")
    for config in (calibration, str(tmp_path / "calibration.json")):
        engine = mixq.ModelSpeedup(model, (8, 1, 28, 28), config=config, batchsize=8)
        engine.compress()  # no calibration data: every range comes from QAT
        layers = {l["module"]: l["precision"] for l in engine.report()["layers"] if l["module"]}
        assert layers == dict.fromkeys(["conv1", "pool1", "conv2", "pool2", "fc1", "fc2"], "int8")
        x = torch.randn(8, 1, 28, 28)
        out, seconds = engine.inference(x)
        with torch.no_grad():
            ref = model(x)
        assert seconds > 0 and (out - ref).abs().max() < 0.1 * ref.abs().max()


def test_qdq_onnx_export_builds_int8_without_calibration(tmp_path):
    onnx = pytest.importorskip("onnx")
    model = lenet()
    quantizer = QATQuantizer(model, LENET_CONFIG, None)
    quantizer.compress()
    observe(model)
    path = tmp_path / "lenet_qdq.onnx"
    quantizer.export_qdq_onnx(path, (1, 1, 28, 28))
    ops = [n.op_type for n in onnx.load(str(path)).graph.node]
    assert ops.count("QuantizeLinear") == ops.count("DequantizeLinear") == 4 + 5 + 4
    assert quantizer._handles  # still compressed: training can go on
    engine = mixq.Builder(mixq.Model.load(str(path))).set_options(max_batch=8).build()
    precisions = {l["module"]: l["precision"] for l in engine.report.to_dict()["layers"]
                  if l["module"]}
    assert set(precisions.values()) == {"int8"}
    x = torch.randn(8, 1, 28, 28)
    got = engine.create_context().infer(x, as_torch=True).outputs["output1"]
    with torch.no_grad():
        ref = model.eval()(x)  # the fake-quantized model
    assert (got - ref).abs().max() < 0.02 * ref.abs().max()


# --- accuracy on Fashion-MNIST ------------------------------------------------------------------

needs_data = pytest.mark.skipif(
    not os.path.exists(os.path.join(fashion_mnist.DATA_DIR, "t10k-images-idx3-ubyte.gz")),
    reason="Debian's dataset-fashion-mnist is not installed")


@pytest.fixture(scope="module")
def trained():
    """LeNet trained 1 epoch on 10 000 images; 2 000 test images; its fp32 engine accuracy."""
    from train import accuracy, finetune, train

    x, y = fashion_mnist.dataset("train", "lenet", 12000)
    x_test, y_test = fashion_mnist.dataset("test", "lenet", 2000)
    model = lenet()
    train(model, x[:10000], y[:10000], epochs=1, lr=1e-3, batch_size=64, log=None)
    model.eval()
    calib = list(torch.split(x[-1024:], 128))

    def engine_accuracy(m, **kwargs):
        s = mixq.ModelSpeedup(m, (128, 1, 28, 28), batchsize=128, **kwargs)
        s.compress()
        return accuracy(lambda xb: s.inference(xb)[0], x_test, y_test, 128)

    fp32 = engine_accuracy(model)
    return dict(model=model, x=x[:5000], y=y[:5000], calib=calib, fp32=fp32,
                engine_accuracy=engine_accuracy, finetune=finetune)


@needs_data
@pytest.mark.parametrize("algo", ["percentile", "entropy"])
def test_ptq_accuracy_target(trained, algo):
    acc = trained["engine_accuracy"](trained["model"], extra_layer_bits=8,
                                     calib_data_loader=trained["calib"], calib_algo=algo)
    assert acc >= trained["fp32"] - 0.5, (acc, trained["fp32"])


@needs_data
def test_qat_accuracy_target(trained, tmp_path):
    import copy

    model = copy.deepcopy(trained["model"])
    quantizer = QATQuantizer(model, LENET_CONFIG, None)
    quantizer.compress()
    trained["finetune"](model, trained["x"], trained["y"], lr=1e-3, batch_size=128)
    calibration = quantizer.export_model(tmp_path / "qat.pth")
    acc = trained["engine_accuracy"](model, config=calibration)
    assert acc >= trained["fp32"] - 0.3, (acc, trained["fp32"])
    # mixed: conv1 and what follows it up to conv2 in fp32, the rest from QAT
    mixed = dict(calibration, conv1={"weight_bits": 32}, relu1=dict(calibration["relu1"],
                 output_bits=32), pool1=dict(calibration["pool1"], output_bits=32))
    acc = trained["engine_accuracy"](model, config=mixed)
    assert acc >= trained["fp32"] - 0.2, (acc, trained["fp32"])
