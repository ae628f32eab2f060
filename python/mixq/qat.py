"""Quantization-aware training with NNI's QAT_Quantizer interface, for mixq's engine.

    quantizer = mixq.QATQuantizer(model, config_list, optimizer, dummy_input=x)
    quantizer.compress()              # fake quantization, in place; then train as usual
    ...
    calibration_config = quantizer.export_model("model.pth", "calibration.pth")
    engine = mixq.ModelSpeedup(model, input_shape, config=calibration_config)

config_list is NNI's: a list of dicts with ``quant_types`` (subset of "weight", "input",
"output"), ``quant_bits`` (an int or a dict per type), ``op_names`` and/or ``op_types`` (PyTorch
class names such as "Conv2d", "ReLU"; "default" means Conv1d/2d/3d and Linear), ``exclude``,
``quant_dtype`` ("int"/"uint"), ``quant_scheme`` and ``quant_start_step``. As in NNI, the last
entry that selects a module decides its settings (an ``exclude`` entry leaves it unquantized).

What is simulated is what mixq's engine runs:

- bits: 8 is int8 fake quantization, 16 rounds to fp16 and 32 leaves the tensor alone -- the
  meaning the engine gives the bits of a calibration_config. Anything else is an error.
- weights (Conv1d/2d/3d, Linear): symmetric integers in [-127, 127] times a scale per output
  channel ("per_channel_symmetric", the default) or one scale ("per_tensor_symmetric"), taken
  from the current weights at every step.
- activations (a module's input and/or output): per tensor, from a min and max tracked in
  training mode as an exponential moving average (NNI's decay 0.99; the first batch sets them).
  "per_tensor_symmetric" (default) uses the engine's grids for an NNI range: [0, max] in 255
  steps when min >= 0 and quant_dtype is "uint" (the default; ReLU outputs), else the
  integers -128..127 times m / 127 with m = max(|min|, |max|). "per_tensor_affine" uses
  [min, max] with a zero point; the engine reads NNI ranges as symmetric, only the Q/DQ export
  keeps the zero point.
- rounding: straight-through estimator, i.e. the gradient passes unchanged inside the range and
  is zero outside (torch.fake_quantize_*, which torch.onnx exports as Quantize/DequantizeLinear).
- BatchNorm is not folded during training: the engine folds a BatchNorm into the convolution
  before it when it builds. Per-channel symmetric weights give the folded weights the same
  integers (BatchNorm scales whole output channels), so QAT quantizes the conv's own weight,
  and the output quantization of a conv followed by a BatchNorm is applied to the BatchNorm's
  output -- the value the folded conv produces. Finding those pairs takes one forward pass of
  ``dummy_input``, needed when the model has BatchNorm layers.

``quant_start_step`` n: the first n training batches only track ranges. In eval mode ranges
stay as they are and the quantization is on. export_model() leaves int8 weights on their
quantized values, which the engine re-quantizes to the same integers. A module called several
times shares one tracked range (give each call its own module). Works with PyTorch 1.13 and 2.x,
on the CPU and on CUDA.
"""

import inspect
import json
import os
import warnings

import torch
import torch.nn.functional as F

__all__ = ["QATQuantizer", "QAT_Quantizer"]

_TYPES = ("weight", "input", "output")
_KEYS = ("quant_types", "quant_bits", "op_names", "op_types", "exclude", "quant_dtype",
         "quant_scheme", "quant_start_step")
_BITS = (8, 16, 32)
_SCHEMES = ("per_tensor_symmetric", "per_channel_symmetric", "per_tensor_affine",
            "per_channel_affine")
_DEFAULT_OP_TYPES = ["Conv1d", "Conv2d", "Conv3d", "Linear"]  # NNI's "default": weighted layers
_WEIGHTED = (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d, torch.nn.Linear)
_BATCHNORM = (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d, torch.nn.BatchNorm3d)
_EPS = 1e-8
_INPUT_NAMES, _OUTPUT_NAMES = ["actual_input_1"], ["output1"]  # as mixq.ModelSpeedup


# --- config_list --------------------------------------------------------------------------------

def _names(entry, key, where):
    value = entry.get(key)
    if value is None:
        return None
    if isinstance(value, str) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"{where}: {key} must be a list of strings, got {value!r}")
    return list(value)


def _per_type(entry, key, types, default, where):
    """NNI's quant_bits / quant_dtype / quant_scheme: one value for all types or a dict."""
    value = entry.get(key)
    if not isinstance(value, dict):
        return {t: (default[t] if value is None else value) for t in types}
    extra = sorted(set(value) - set(types))
    if extra:
        raise ValueError(f"{where}: {key} names {extra}, which are not in quant_types {types}")
    return {t: value.get(t, default[t]) for t in types}


def _check_type_settings(t, bits, dtype, scheme, where):
    if isinstance(bits, bool) or not isinstance(bits, int) or bits not in _BITS:
        raise ValueError(f"{where}: quant_bits for '{t}' is {bits!r}; mixq runs 8 (int8), "
                         "16 (fp16) or 32 (fp32) bits")
    if dtype not in ("int", "uint"):
        raise ValueError(f"{where}: quant_dtype for '{t}' is {dtype!r}; valid: 'int', 'uint'")
    if scheme not in _SCHEMES:
        raise ValueError(f"{where}: quant_scheme for '{t}' is {scheme!r}; valid: {list(_SCHEMES)}")
    if t == "weight" and (dtype != "int" or scheme.endswith("affine")):
        raise ValueError(f"{where}: mixq's engine quantizes weights as symmetric signed integers; "
                         f"use quant_dtype 'int' and quant_scheme 'per_channel_symmetric' or "
                         f"'per_tensor_symmetric' for weights (got {dtype!r}, {scheme!r}); give "
                         "dicts per type for different activation settings")
    if t != "weight" and scheme.startswith("per_channel"):
        raise ValueError(f"{where}: activations ('{t}') are quantized per tensor; use "
                         "'per_tensor_symmetric' or 'per_tensor_affine' for them (dicts per type "
                         "allow a per-channel weight scheme next to them)")


def parse_config_list(model, config_list):
    """{module name: {"weight"/"input"/"output": (bits, dtype, scheme), "start_step": n}} for
    the modules config_list quantizes; ValueError for anything it cannot honour."""
    if not isinstance(config_list, (list, tuple)):
        raise ValueError(f"config_list must be a list of dicts, got {type(config_list).__name__}")
    modules = {n: m for n, m in model.named_modules() if n}
    settings, unknown = {}, []
    for i, entry in enumerate(config_list):
        where = f"config_list[{i}]"
        if not isinstance(entry, dict):
            raise ValueError(f"{where} must be a dict, got {type(entry).__name__}")
        bad = sorted(set(entry) - set(_KEYS))
        if bad:
            raise ValueError(f"{where}: unknown key(s) {bad}; known keys: {list(_KEYS)}")
        names, op_types = _names(entry, "op_names", where), _names(entry, "op_types", where)
        if names is None and op_types is None:
            raise ValueError(f"{where} selects no module: give op_names and/or op_types")
        unknown += [n for n in names or [] if n not in modules and n not in unknown]
        if op_types is not None:
            op_types = [t for o in op_types for t in (_DEFAULT_OP_TYPES if o == "default" else [o])]
            bad = [t for t in op_types if not isinstance(getattr(torch.nn, t, None), type)]
            if bad:
                raise ValueError(f"{where}: op_types {bad} are not torch.nn module classes "
                                 "(e.g. 'Conv2d', 'Linear', 'ReLU', 'MaxPool2d', 'default')")
        selected = [n for n, m in modules.items()
                    if (names is None or n in names)
                    and (op_types is None or type(m).__name__ in op_types)]
        if entry.get("exclude", False):
            for n in selected:
                settings.pop(n, None)
            continue
        types = entry.get("quant_types")
        if (not isinstance(types, (list, tuple)) or not types
                or any(t not in _TYPES for t in types) or len(set(types)) != len(types)):
            raise ValueError(f"{where}: quant_types must be a non-empty list of distinct "
                             f"{list(_TYPES)}, got {types!r}")
        bits = _per_type(entry, "quant_bits", types, dict.fromkeys(_TYPES, 8), where)
        dtype = _per_type(entry, "quant_dtype", types,
                          {"weight": "int", "input": "uint", "output": "uint"}, where)
        scheme = _per_type(entry, "quant_scheme", types,
                           {"weight": "per_channel_symmetric", "input": "per_tensor_symmetric",
                            "output": "per_tensor_symmetric"}, where)
        start = entry.get("quant_start_step", 0)
        if isinstance(start, bool) or not isinstance(start, int) or start < 0:
            raise ValueError(f"{where}: quant_start_step must be an int >= 0, got {start!r}")
        spec = {"start_step": start}
        for t in types:
            _check_type_settings(t, bits[t], dtype[t], scheme[t], where)
            spec[t] = (bits[t], dtype[t], scheme[t])
        for n in selected:
            if "weight" in types and not isinstance(modules[n], _WEIGHTED):
                raise ValueError(f"{where}: module '{n}' ({type(modules[n]).__name__}) has no "
                                 "weight mixq quantizes (Conv1d/2d/3d, Linear)")
            settings[n] = spec
    if unknown:
        raise ValueError(f"config_list names module(s) the model does not have: {unknown}; "
                         f"its modules include {list(modules)[:12]}")
    return {n: settings[n] for n in modules if n in settings}  # in the model's order


# --- fake quantization --------------------------------------------------------------------------

def _fp16(x):
    """Rounds to fp16 in the forward pass, identity gradient."""
    return x + (x.half().float() - x).detach()


def activation_qparams(lo, hi, bits, dtype, scheme):
    """(scale, zero_point, qmin, qmax) of an activation tracked in [lo, hi], as the engine
    derives them from an NNI range (per_tensor_symmetric) or with a zero point (affine)."""
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    levels, half = 2 ** bits - 1, 2 ** (bits - 1)
    if scheme == "per_tensor_affine":
        scale = max((hi - lo) / levels, _EPS)
        qmin = 0 if dtype == "uint" else -half
        return scale, qmin + min(max(round(-lo / scale), 0), levels), qmin, qmin + levels
    if dtype == "uint" and lo >= 0:
        return max(hi / levels, _EPS), 0, 0, levels
    return max(max(-lo, hi) / (half - 1), _EPS), 0, -half, half - 1


def weight_scale(w, bits, scheme):
    """Symmetric scale(s) of a weight: max |w| / 127 per output channel or per tensor."""
    qmax = 2 ** (bits - 1) - 1
    w = w.detach()
    amax = w.abs().flatten(1).amax(1) if scheme == "per_channel_symmetric" else w.abs().max()
    return (amax.reshape(-1) / qmax).clamp(min=_EPS).float()


def fake_quantize_weight(w, bits, scheme, scale=None):
    """The weight on its symmetric integer grid (fp16 for 16 bits, unchanged for 32)."""
    if bits == 32:
        return w
    if bits == 16:
        return _fp16(w)
    half = 2 ** (bits - 1)
    if scale is None:
        scale = weight_scale(w, bits, scheme)
    zero = torch.zeros(scale.numel(), dtype=torch.int32, device=w.device)
    if scheme == "per_tensor_symmetric":
        return torch.fake_quantize_per_tensor_affine(w, scale.to(w.device), zero, -half, half - 1)
    return torch.fake_quantize_per_channel_affine(w, scale.to(w.device), zero, 0, -half, half - 1)


class ActivationObserver:
    """The EMA-tracked range of one activation and its fake quantization."""

    def __init__(self, bits, dtype, scheme, decay):
        self.bits, self.dtype, self.scheme, self.decay = bits, dtype, scheme, decay
        self.min = self.max = None  # Python floats once a batch was seen

    def update(self, x):
        lo, hi = x.detach().min().item(), x.detach().max().item()
        if self.min is None:
            self.min, self.max = lo, hi
        else:
            self.min = self.decay * self.min + (1 - self.decay) * lo
            self.max = self.decay * self.max + (1 - self.decay) * hi

    def qparams(self):
        return activation_qparams(self.min, self.max, self.bits, self.dtype, self.scheme)

    def __call__(self, x, track, quantize):
        if self.bits == 32 or not torch.is_tensor(x) or not x.is_floating_point():
            return x
        if self.bits == 16:
            return _fp16(x) if quantize else x
        if track or self.min is None:
            self.update(x)
        if not quantize:
            return x
        scale, zero_point, qmin, qmax = self.qparams()
        # float32 / int32 tensors: torch.onnx writes Python floats as float64 constants
        scale = torch.tensor([scale], dtype=torch.float32, device=x.device)
        zero_point = torch.tensor([zero_point], dtype=torch.int32, device=x.device)
        return torch.fake_quantize_per_tensor_affine(x, scale, zero_point, qmin, qmax)


# --- the quantizer ------------------------------------------------------------------------------

class QATQuantizer:
    """NNI's QAT_Quantizer(model, config_list, optimizer, dummy_input) for mixq (see the module
    docstring for what is simulated). The optimizer is not needed (steps are counted as
    training-mode forward passes of the model) and is kept for NNI's signature."""

    def __init__(self, model, config_list, optimizer=None, dummy_input=None, ema_decay=0.99):
        if not 0 <= ema_decay < 1:
            raise ValueError(f"ema_decay must be in [0, 1), got {ema_decay!r}")
        self.bound_model = model
        self.config_list = config_list
        self.optimizer = optimizer
        self.dummy_input = dummy_input
        self.settings = parse_config_list(model, config_list)
        self.steps = 0  # training-mode forward passes since compress()
        self.observers = {}  # (module name, "input" / "output") -> ActivationObserver
        for name, spec in self.settings.items():
            for t in ("input", "output"):
                if t in spec:
                    self.observers[name, t] = ActivationObserver(*spec[t], ema_decay)
        self._handles, self._forwards = [], []
        self._bn_after = None  # conv name -> the BatchNorm module its output goes through

    # compress / remove the simulation

    def compress(self):
        """Inserts the fake quantization (in place) and returns the model."""
        if self._handles:
            raise RuntimeError("compress() was already called")
        if self._bn_after is None:
            self._bn_after = self._find_conv_bn()
        self._install(export=False)
        return self.bound_model

    def _active(self, name, module):
        return not module.training or self.steps > self.settings[name]["start_step"]

    def _install(self, export):
        modules = dict(self.bound_model.named_modules())
        frozen = {}
        if export:  # constant parameters, so that the ONNX graph holds plain Q/DQ nodes
            frozen = {n: weight_scale(modules[n].weight, *s["weight"][::2])
                      for n, s in self.settings.items() if "weight" in s and s["weight"][0] == 8}

        def count(module, args):
            if module.training:
                self.steps += 1

        self._handles.append(self.bound_model.register_forward_pre_hook(count))
        for name, spec in self.settings.items():
            module = modules[name]
            if export:  # Q/DQ nodes hold int8 only: fp16 / fp32 layers are exported in fp32
                spec = {t: s for t, s in spec.items() if t == "start_step" or s[0] == 8}
            if "weight" in spec:
                module.forward = self._weight_forward(name, module, frozen.get(name), export)
                self._forwards.append(module)
            if "input" in spec:
                obs = self.observers[name, "input"]

                def pre_hook(m, args, name=name, module=module, obs=obs):
                    on = export or self._active(name, module)
                    x = obs(args[0], module.training and not export, on)
                    return (x,) + tuple(args[1:])

                self._handles.append(module.register_forward_pre_hook(pre_hook))
            if "output" in spec:
                obs = self.observers[name, "output"]
                target = self._bn_after.get(name, module)

                def hook(m, args, out, name=name, module=module, obs=obs):
                    return obs(out, module.training and not export,
                               export or self._active(name, module))

                self._handles.append(target.register_forward_hook(hook))

    def _weight_forward(self, name, module, scale, export):
        bits, _, scheme = self.settings[name]["weight"]

        def forward(x):
            w = module.weight
            if export or self._active(name, module):
                w = fake_quantize_weight(w, bits, scheme, scale)
            if isinstance(module, torch.nn.Linear):
                return F.linear(x, w, module.bias)
            return module._conv_forward(x, w, module.bias)

        return forward

    def _uninstall(self):
        for h in self._handles:
            h.remove()
        for m in self._forwards:
            del m.forward  # back to the class's forward
        self._handles, self._forwards = [], []

    def _find_conv_bn(self):
        """{conv name: BatchNorm module} for quantized conv outputs that go into a BatchNorm,
        from one forward pass of dummy_input."""
        modules = dict(self.bound_model.named_modules())
        convs = [n for n, s in self.settings.items()
                 if "output" in s and isinstance(modules[n], _WEIGHTED)]
        if not convs or not any(isinstance(m, _BATCHNORM) for m in modules.values()):
            return {}
        if self.dummy_input is None:
            raise ValueError(
                "the model has BatchNorm layers and config_list quantizes the output of "
                f"{convs[:4]}: pass dummy_input, so that QATQuantizer finds the Conv->BatchNorm "
                "pairs the engine folds (their quantized output is the BatchNorm's output)")
        produced, pairs = {}, {}  # id(conv output) -> (conv name, output); conv name -> BN

        def conv_hook(module, args, out, name):
            produced[id(out)] = (name, out)  # holding `out` keeps its id unique

        def bn_hook(module, args):
            if id(args[0]) in produced:
                pairs.setdefault(produced[id(args[0])][0], module)

        handles = [modules[n].register_forward_hook(
            lambda m, i, o, n=n: conv_hook(m, i, o, n)) for n in convs]
        handles += [m.register_forward_pre_hook(bn_hook)
                    for m in modules.values() if isinstance(m, _BATCHNORM)]
        was_training = self.bound_model.training
        try:
            self.bound_model.eval()
            with torch.no_grad():
                x = self.dummy_input
                self.bound_model(*x) if isinstance(x, tuple) else self.bound_model(x)
        finally:
            self.bound_model.train(was_training)
            for h in handles:
                h.remove()
        return pairs

    # export

    def calibration_config(self):
        """NNI's calibration_config from the current state: {module name: {"weight_bits",
        "input_bits", "output_bits", "tracked_min_input", "tracked_max_input",
        "tracked_min_output", "tracked_max_output"}} with the keys each module's types need."""
        config = {}
        for name, spec in self.settings.items():
            entry = {}
            if "weight" in spec:
                entry["weight_bits"] = spec["weight"][0]
            for t in ("input", "output"):
                if t not in spec:
                    continue
                entry[f"{t}_bits"] = spec[t][0]
                obs = self.observers[name, t]
                if spec[t][0] != 8:
                    continue
                if obs.min is None:
                    raise RuntimeError(f"module '{name}' never ran while its {t} was observed: "
                                       "no tracked range (train or run the model first)")
                if not all(map(lambda v: abs(v) < float("inf"), (obs.min, obs.max))):
                    raise RuntimeError(f"module '{name}': tracked {t} range [{obs.min}, "
                                       f"{obs.max}] is not finite")
                entry[f"tracked_min_{t}"] = float(obs.min)
                entry[f"tracked_max_{t}"] = float(obs.max)
            config[name] = entry
        return config

    def export_model(self, model_path, calibration_path=None, onnx_path=None, input_shape=None,
                     device=None):
        """Removes the fake quantization, leaving int8 weights on their quantized values (the
        engine re-quantizes them to the same integers), saves the state_dict to model_path and
        returns the calibration_config. calibration_path gets it with torch.save (as NNI) and as
        JSON next to it (same name, .json); onnx_path gets the fp32 model as ONNX."""
        config = self.calibration_config()
        modules = dict(self.bound_model.named_modules())
        self._uninstall()
        with torch.no_grad():
            for name, spec in self.settings.items():
                if "weight" in spec:
                    w = modules[name].weight
                    w.copy_(fake_quantize_weight(w, spec["weight"][0], spec["weight"][2]))
        torch.save(self.bound_model.state_dict(), model_path)
        if calibration_path is not None:
            root, ext = os.path.splitext(os.fspath(calibration_path))
            if ext != ".json":
                torch.save(config, calibration_path)
            with open(root + ".json", "w") as f:
                json.dump(config, f, indent=1)
        if onnx_path is not None:
            self._onnx_export(onnx_path, input_shape, device)
        return config

    def export_qdq_onnx(self, path, input_shape, device=None, opset_version=13):
        """Writes the model as ONNX with QuantizeLinear/DequantizeLinear pairs holding the
        learned scales (fp16 layers are exported in fp32); mixq builds int8 layers from it
        without calibration. Works before and after export_model()."""
        was_compressed = bool(self._handles)
        self._uninstall()
        if self._bn_after is None:
            self._bn_after = self._find_conv_bn()
        for name, t in self.observers:
            if self.settings[name][t][0] == 8 and self.observers[name, t].min is None:
                raise RuntimeError(f"module '{name}' has no tracked {t} range: train first")
        self._install(export=True)
        try:
            self._onnx_export(path, input_shape, device, opset_version)
        finally:
            self._uninstall()
            if was_compressed:
                self._install(export=False)

    def _onnx_export(self, path, input_shape, device=None, opset_version=13):
        if input_shape is None:
            raise ValueError("an ONNX export needs input_shape, e.g. (1, 1, 28, 28)")
        model = self.bound_model
        if device is None:
            device = next(model.parameters()).device
        kwargs = {}
        if "dynamo" in inspect.signature(torch.onnx.export).parameters:
            kwargs["dynamo"] = False  # torch >= 2.5: the TorchScript exporter
        steps, was_training = self.steps, model.training
        model.eval()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", torch.jit.TracerWarning)  # constant qparams
                torch.onnx.export(
                    model, torch.randn(*input_shape, device=device), os.fspath(path),
                    opset_version=opset_version, do_constant_folding=False,
                    input_names=_INPUT_NAMES, output_names=_OUTPUT_NAMES,
                    dynamic_axes={_INPUT_NAMES[0]: {0: "batch"}, _OUTPUT_NAMES[0]: {0: "batch"}},
                    **kwargs)
        finally:
            model.train(was_training)
            self.steps = steps


#: NNI's name.
QAT_Quantizer = QATQuantizer
