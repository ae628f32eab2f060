"""ModelSpeedup: NNI's ModelSpeedupTensorRT workflow on mixq engines.

    engine = mixq.ModelSpeedup(model, (128, 1, 28, 28), config=calibration_config,
                               calib_data_loader=loader, batchsize=128)
    engine.compress()                         # export, calibrate where needed, build
    output, seconds = engine.inference(data)  # data on the host, any batch up to batchsize
    engine.export_quantized_model("model.mixq")
    engine.load_quantized_model("model.mixq")

An NNI script runs after changing its import: NNI's keywords keep their names and meanings
(``extra_layer_bits``, ``strict_datatype``, ``calibrate_type``, ``calib_data_loader``,
``calibration_cache``, ``batchsize``, ``onnx_path``, ``input_names``, ``output_names``), and a
TensorRT-only keyword that means nothing here is accepted with a warning naming it.

All engine work happens in C++ (mixq._mixq); this module converts the PyTorch side: export to
ONNX, collect calibration batches, map NNI's names to mixq's options.
"""

import json
import os
import statistics
import warnings

from . import _mixq
from .export import check_module_names, export_onnx, input_shapes, module_layer_map

__all__ = ["ModelSpeedup", "ModelSpeedupTensorRT", "CalibrateType"]


class CalibrateType:
    """NNI's calibration algorithm names (TensorRT's CalibrationAlgoType) plus mixq's own.

    TensorRT's entropy calibrators (ENTROPY, ENTROPY2) map to mixq's "entropy" (KL divergence),
    MINMAX to "minmax", LEGACY (a percentile with a regression cutoff) to "percentile"."""

    LEGACY = "legacy"
    ENTROPY = "entropy"
    ENTROPY2 = "entropy2"
    MINMAX = "minmax"
    PERCENTILE = "percentile"
    MSE = "mse"


# NNI / TensorRT algorithm names (lower case, without "_calibration" / "calibration_algo_type.")
# -> mixq's names.
_CALIBRATION_ALGORITHMS = {
    "entropy": "entropy",
    "entropy2": "entropy",
    "entropy_2": "entropy",
    "kl": "entropy",
    "minmax": "minmax",
    "min_max": "minmax",
    "max": "minmax",
    "percentile": "percentile",
    "legacy": "percentile",
    "mse": "mse",
}

# Precision of the layers a config does not name, from NNI's extra_layer_bits.
_BITS_TO_PRECISION = {32: "fp32", 16: "fp16", 8: "int8"}

# Keywords of NNI's ModelSpeedupTensorRT and of TensorRT builders that mean nothing to mixq:
# accepted, reported with a warning, never dropped silently.
_MEANINGLESS_KEYWORDS = {
    "max_workspace_size": "mixq plans its own memory (the report's peak_memory_bytes)",
    "workspace_size": "mixq plans its own memory (the report's peak_memory_bytes)",
    "fp16_mode": "precisions come from `config` and `extra_layer_bits`",
    "int8_mode": "precisions come from `config` and `extra_layer_bits`",
    "explicit_batch": "mixq engines always have an explicit, dynamic batch",
    "max_batch_size": "the engine's maximum batch is `batchsize`",
    "dla_core": "there is no DLA",
    "gpu_id": "the backend is chosen with `backend`",
    "device": "the backend is chosen with `backend`",
    "logger": "mixq reports through exceptions, warnings and report()",
    "verbose": "mixq reports through exceptions, warnings and report()",
}

# Other names NNI uses for keywords mixq also has.
_KEYWORD_ALIASES = {
    "extra_layer_bit": "extra_layer_bits",  # NNI 2.0-2.3
    "calibrate_data": "calib_data",  # NNI's docstring name
    "strict_type_constraints": "strict_datatype",  # TensorRT's name
}

_NATIVE_PLAN_KEYS = {"layers", "default_precision", "allow_fallback", "calibration"}

def _torch():
    import torch

    return torch


def _is_torch_tensor(x):
    torch = _torch()
    return isinstance(x, torch.Tensor)


def _host(x, what, warn_device=True):
    """A CPU, detached torch tensor (NNI recommends host data; others are moved with a
    warning), or `x` unchanged when it is not a torch tensor."""
    if _is_torch_tensor(x):
        if x.device.type != "cpu":
            if warn_device:
                warnings.warn(
                    f"{what} is on {x.device}; mixq's {what} belongs on the host (CPU), moving it "
                    "there (as NNI does) costs a copy: keep the data on the CPU",
                    stacklevel=4,
                )
            x = x.cpu()
        if x.requires_grad:
            x = x.detach()
    return x


def _jsonable(value, where="config"):
    """Plain JSON values: numpy / torch scalars become Python numbers."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v, f"{where}[{k!r}]") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v, where) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if callable(getattr(value, "item", None)):  # numpy scalars, 0-d arrays, 1-element tensors
        try:
            item = value.item()
        except (ValueError, RuntimeError):
            item = None
        if isinstance(item, (bool, int, float)):
            return item
    raise _mixq.InvalidArgumentError(
        f"{where}: {value!r} ({type(value).__name__}) is not a JSON value (numbers, strings, "
        "lists and dicts)"
    )


def _calibration_algorithm(calib_algo, calibrate_type):
    """mixq's algorithm name from calib_algo / calibrate_type (NNI's or mixq's names, or a
    TensorRT CalibrationAlgoType), or None when neither is given."""
    chosen = []
    for keyword, value in (("calib_algo", calib_algo), ("calibrate_type", calibrate_type)):
        if value is None:
            continue
        raw = value if isinstance(value, str) else getattr(value, "name", str(value))
        key = raw.strip().lower().split(".")[-1]
        for affix in ("_calibration", "calibration_"):
            key = key.replace(affix, "")
        if key not in _CALIBRATION_ALGORITHMS:
            valid = sorted(set(_CALIBRATION_ALGORITHMS) | {"entropy_calibration_2"})
            raise _mixq.InvalidArgumentError(
                f"{keyword}={value!r} is not a calibration algorithm; valid: "
                + ", ".join(valid)
                + " (TensorRT's CalibrationAlgoType values and mixq.CalibrateType work too)"
            )
        if key == "legacy":
            warnings.warn(
                f"{keyword}={value!r}: TensorRT's legacy calibrator has no exact equivalent; "
                "using mixq's 'percentile' algorithm",
                stacklevel=4,
            )
        chosen.append((keyword, value, _CALIBRATION_ALGORITHMS[key]))
    if len(chosen) == 2 and chosen[0][2] != chosen[1][2]:
        raise _mixq.InvalidArgumentError(
            f"calib_algo={chosen[0][1]!r} and calibrate_type={chosen[1][1]!r} disagree "
            f"({chosen[0][2]} vs {chosen[1][2]}): give one of them"
        )
    return chosen[0][2] if chosen else None


class ModelSpeedup:
    """Builds a mixq engine from a PyTorch model and a per-layer precision plan and runs it,
    mirroring NNI's ModelSpeedupTensorRT (the alias ``ModelSpeedupTensorRT`` works too).

    Parameters
    ----------
    model : torch.nn.Module
        The model to speed up (exported to ONNX in eval mode; its mode is restored).
    input_shape : tuple
        Shape of the input given to torch.onnx.export, batch first, e.g. (128, 1, 28, 28); a list
        of shapes for a model with several inputs. The batch axis is exported as dynamic.
    config : dict or str, optional
        NNI's calibration_config ({module name: {"weight_bits": 8, "output_bits": 8,
        "tracked_min_input": ...}}, as NNI's QAT_Quantizer.export_model returns it) or a native
        mixq plan (docs/precision-plan.md); a dict, its JSON text or a JSON file. Module names
        are checked against model.named_modules(): unknown names raise mixq.NotFoundError (a
        KeyError) listing them.
    onnx_path : str, optional
        Where to also write the exported ONNX model (NNI's default was "default_model.onnx";
        here nothing is written unless a path is given).
    extra_layer_bits : int
        NNI's precision of the layers `config` does not name: 32 -> fp32, 16 -> fp16, 8 -> int8.
    strict_datatype : bool
        NNI's "constrain layer bits to the numbers in config" (TensorRT's strict types). Here:
        True (default) makes a layer that no kernel runs at its precision a build error; False
        lets it fall back to the nearest higher precision, reported per layer in report().
        ``allow_fallback`` says the same thing directly and wins when both are given.
    calib_data_loader : iterable, optional
        Calibration batches: a torch DataLoader or any iterable of tensors / arrays, of
        (input, label) tuples, or of dicts {input name: tensor}. Needed when int8 layers have no
        ranges in `config`.
    calib_data : tensor, array, list or path, optional
        Calibration data at once: one tensor/array of samples (batch first), a list of batches,
        or a path to an .npy/.npz file or a folder of them.
    calibration_cache : str, optional
        A file where the calibrated ranges are stored and reused when model, data and options
        match.
    calib_algo, calibrate_type : str, optional
        The calibration algorithm: "percentile" (default, 99.99), "entropy", "minmax", "mse", or NNI's /
        TensorRT's names ("entropy2", CalibrateType.MINMAX, trt.CalibrationAlgoType values).
    batchsize : int
        The largest batch the engine runs (inference takes any batch from 1 to it); also the
        calibration batch unless ``calib_batch`` is given.
    input_names, output_names : list of str
        ONNX names of the inputs and outputs (NNI's defaults).
    backend : str
        "cpu" (default), "reference", "cuda" or "auto" (cuda where built, else cpu).
    allow_fallback : bool, optional
        See strict_datatype.

    Keyword-only extras: opset_version (13), percentile (99.99, for "percentile"), calib_batch,
    calib_samples (at most this many calibration samples), progress (a progress bar while
    calibrating), dynamic_batch (True), deterministic (False: the fastest kernels, which on a GPU
    may differ in the last bits from run to run; True: only kernels that give the same bits on
    every run).
    """

    def __init__(
        self,
        model,
        input_shape,
        config=None,
        onnx_path=None,
        extra_layer_bits=32,
        strict_datatype=True,
        calib_data_loader=None,
        calib_data=None,
        calibration_cache=None,
        calib_algo=None,
        calibrate_type=None,
        batchsize=128,
        input_names=["actual_input_1"],  # noqa: B006 - NNI's default, copied below
        output_names=["output1"],  # noqa: B006
        backend="cpu",
        allow_fallback=None,
        *,
        opset_version=13,
        percentile=None,
        calib_batch=None,
        calib_samples=None,
        progress=False,
        dynamic_batch=True,
        deterministic=False,
        **kwargs,
    ):
        given = {}
        for name, value in kwargs.items():
            if name in _KEYWORD_ALIASES:
                given[_KEYWORD_ALIASES[name]] = value
            elif name in _MEANINGLESS_KEYWORDS:
                warnings.warn(
                    f"ModelSpeedup: keyword '{name}' means nothing to mixq and is ignored "
                    f"({_MEANINGLESS_KEYWORDS[name]})",
                    stacklevel=2,
                )
            else:
                raise TypeError(
                    f"ModelSpeedup() got an unexpected keyword argument '{name}'; see "
                    "help(mixq.ModelSpeedup) for the keywords it takes"
                )
        if "extra_layer_bits" in given:
            extra_layer_bits = given["extra_layer_bits"]
        if "calib_data" in given:
            if calib_data is not None:
                raise _mixq.InvalidArgumentError("give calib_data or calibrate_data, not both")
            calib_data = given["calib_data"]
        if "strict_datatype" in given:
            strict_datatype = given["strict_datatype"]

        if extra_layer_bits not in _BITS_TO_PRECISION:
            raise _mixq.InvalidArgumentError(
                f"extra_layer_bits={extra_layer_bits!r} must be 32 (fp32), 16 (fp16) or 8 (int8)"
            )
        if isinstance(batchsize, bool) or not isinstance(batchsize, int) or batchsize < 1:
            raise _mixq.InvalidArgumentError(f"batchsize must be a positive int, got {batchsize!r}")
        if calib_data_loader is not None and calib_data is not None:
            raise _mixq.InvalidArgumentError("give calib_data_loader or calib_data, not both")
        strict_datatype = bool(strict_datatype)
        if allow_fallback is None:
            allow_fallback = not strict_datatype
        if backend not in ("cpu", "reference", "cuda", "auto"):
            raise _mixq.InvalidArgumentError(
                f"backend={backend!r} is not one of 'cpu', 'reference', 'cuda', 'auto'"
            )

        self.model = model
        self.input_shape = input_shapes(input_shape)
        self.config = config
        self.onnx_path = onnx_path
        self.extra_layer_bits = extra_layer_bits
        self.strict_datatype = strict_datatype
        self.allow_fallback = bool(allow_fallback)
        self.calib_data_loader = calib_data_loader
        self.calib_data = calib_data
        self.calibration_cache = calibration_cache
        self.calib_algo = _calibration_algorithm(calib_algo, calibrate_type)
        self.calibrate_type = calibrate_type
        self.batchsize = batchsize
        self.input_names = list(input_names)
        self.output_names = list(output_names)
        self.backend = backend
        self.opset_version = opset_version
        self.percentile = percentile
        self.calib_batch = calib_batch
        self.calib_samples = calib_samples
        self.progress = progress
        self.dynamic_batch = dynamic_batch
        self.deterministic = bool(deterministic)
        if len(self.input_names) != len(self.input_shape):
            raise _mixq.InvalidArgumentError(
                f"{len(self.input_shape)} input shape(s) but input_names={self.input_names}: "
                "give one name per input"
            )

        self.engine = None  # mixq.Engine once built or loaded
        self.context = None  # the mixq.Context inference() uses
        self.onnx_model = None  # the fp32 mixq.Model the engine was built from
        self.layer_map = {}  # module name -> ONNX layer names
        self._plan = None  # the config as a dict

    # --- building -------------------------------------------------------------------------------

    def _plan_dict(self):
        config = self.config
        if config is None:
            return None
        if isinstance(config, (str, os.PathLike)):
            text = str(config)
            if not text.lstrip().startswith("{"):
                try:
                    with open(config, encoding="utf-8") as f:
                        text = f.read()
                except FileNotFoundError as error:
                    raise _mixq.NotFoundError(f"config file '{config}' does not exist") from error
            try:
                config = json.loads(text)
            except json.JSONDecodeError as error:
                raise _mixq.ParseError(f"config is not valid JSON: {error}") from error
        if not isinstance(config, dict):
            raise _mixq.InvalidArgumentError(
                "config must be NNI's calibration_config (a dict keyed by module name), a native "
                f"mixq plan (a dict), its JSON text or a JSON file; got {type(config).__name__}"
            )
        return _jsonable(config)

    @staticmethod
    def _is_native(plan):
        return any(k in _NATIVE_PLAN_KEYS for k in plan)

    def _calibration_batches(self):
        """A list of batches for Builder.set_calibration_data, a path, or None."""
        if self.calib_data is not None:
            data = self.calib_data
            if isinstance(data, (str, os.PathLike)):
                return os.fspath(data)
            if isinstance(data, (list, tuple)):
                return [self._calibration_item(x, i) for i, x in enumerate(data)]
            return [self._calibration_item(data, 0)]
        if self.calib_data_loader is None:
            return None
        batches = [self._calibration_item(x, i) for i, x in enumerate(self.calib_data_loader)]
        if not batches:
            raise _mixq.InvalidArgumentError("calib_data_loader yielded no batches")
        return batches

    def _calibration_item(self, item, index):
        where = f"calibration batch {index}"
        if isinstance(item, dict):
            batch = {k: v for k, v in item.items() if k in self.input_names}
            if not batch:
                if len(self.input_names) == 1 and len(item) == 1:
                    batch = {self.input_names[0]: next(iter(item.values()))}
                else:
                    raise _mixq.InvalidArgumentError(
                        f"{where} is a dict with keys {sorted(map(str, item))}, none of which is "
                        f"an input name ({self.input_names})"
                    )
            return {k: _host(v, "calibration data", index == 0) for k, v in batch.items()}
        if isinstance(item, (list, tuple)):
            if not item:
                raise _mixq.InvalidArgumentError(f"{where} is empty")
            if len(self.input_names) > 1 and len(item) >= len(self.input_names):
                return {
                    n: _host(v, "calibration data", index == 0)
                    for n, v in zip(self.input_names, item)
                }
            # (input, label, ...) as a DataLoader over a labelled dataset yields it
            return self._calibration_item(item[0], index)
        x = _host(item, "calibration data", index == 0)
        if len(self.input_names) == 1:
            return {self.input_names[0]: x}
        raise _mixq.InvalidArgumentError(
            f"{where} is one tensor, but the model has inputs {self.input_names}: give dicts or "
            "tuples with one tensor per input"
        )

    def _options(self, backend):
        options = dict(
            backend=backend,
            default_precision=_BITS_TO_PRECISION[self.extra_layer_bits],
            allow_fallback=self.allow_fallback,
            deterministic=self.deterministic,
            max_batch=self.batchsize,
            calib_batch=self.calib_batch or self.batchsize,
            progress=self.progress,
        )
        if self.calib_algo is not None:
            options["calib_algo"] = self.calib_algo
        if self.percentile is not None:
            options["percentile"] = self.percentile
        if self.calib_samples is not None:
            options["calib_samples"] = self.calib_samples
        if self.calibration_cache is not None:
            options["calib_cache"] = os.fspath(self.calibration_cache)
        return options

    def export_onnx(self):
        """Exports the model to ONNX (and onnx_path when set), loads it as the fp32
        mixq.Model and records the module -> layer map. compress() calls it."""
        data = export_onnx(
            self.model,
            self.input_shape,
            input_names=self.input_names,
            output_names=self.output_names,
            opset_version=self.opset_version,
            dynamic_batch=self.dynamic_batch,
            path=self.onnx_path,
        )
        source = self.onnx_path or f"torch export of {type(self.model).__name__}"
        self.onnx_model = _mixq.Model.from_bytes(data, source)
        self.layer_map = module_layer_map(self.onnx_model)
        return self.onnx_model

    def compress(self):
        """Exports the model, checks the config's module names, calibrates where int8 layers
        need ranges and builds the engine."""
        plan = self._plan_dict()
        if plan is not None and not self._is_native(plan):
            check_module_names(self.model, plan.keys())
        self._plan = plan
        self.export_onnx()
        calibration = self._calibration_batches()
        backends = ["cuda", "cpu"] if self.backend == "auto" else [self.backend]
        for i, backend in enumerate(backends):
            builder = _mixq.Builder(self.onnx_model)
            builder.set_options(**self._options(backend))
            if plan is not None:
                builder.set_plan_json(plan, "config")
            if calibration is not None:
                builder.set_calibration_data(calibration)
            try:
                self.engine = builder.build()
                break
            except (_mixq.NotFoundError, _mixq.UnsupportedError) as error:
                unavailable = ("unknown backend" in str(error)
                               or "the cuda backend is not available" in str(error)
                               or "the cuda backend cannot start" in str(error))
                if i + 1 < len(backends) and unavailable:
                    continue  # "auto": no CUDA backend in this build, or no GPU here
                if not isinstance(error, _mixq.NotFoundError):
                    raise
                hint = self._layerless_modules_hint(plan)
                if hint:
                    raise _mixq.NotFoundError(f"{error}. {hint}") from error
                raise
        self.context = self.engine.create_context()
        return self

    def _layerless_modules_hint(self, plan):
        """Why modules the config names have no layer (BatchNorm folded, Dropout removed)."""
        if plan is None or self._is_native(plan):
            return ""
        modules = dict(self.model.named_modules())
        layerless = [k for k in plan if k in modules and k not in self.layer_map]
        if not layerless:
            return ""
        described = ", ".join(f"'{k}' ({type(modules[k]).__name__})" for k in layerless)
        return (
            f"The model has module{'s' if len(layerless) > 1 else ''} {described} but no layer "
            "of its own after loading: BatchNorm is folded into the convolution or linear layer "
            "before it, Dropout and Identity are removed. Give such settings to the layer they "
            "were folded into, or leave them out"
        )

    # --- running --------------------------------------------------------------------------------

    def _require_engine(self, what):
        if self.engine is None:
            raise _mixq.FailedPreconditionError(
                f"{what} needs an engine: call compress() or load_quantized_model() first"
            )

    def _on_gpu(self):
        return self.engine is not None and self.engine.report.backend == "cuda"

    def _inputs(self, data):
        """Inputs for Context.infer. A cuda engine reads CUDA tensors where they are (no host
        round trip); a CPU engine gets them moved with a warning (NNI's behaviour). Everything
        else goes to the engine, which checks it."""
        if self._on_gpu():
            def prepare(v):
                return v.detach() if _is_torch_tensor(v) and v.requires_grad else v
        else:
            def prepare(v):
                return _host(v, "inference data")
        if isinstance(data, dict):
            return {k: prepare(v) for k, v in data.items()}
        if isinstance(data, (list, tuple)):
            return [prepare(v) for v in data]
        return prepare(data)

    def _device_outputs(self, inputs, batch):
        """Output tensors on the inputs' GPU when a cuda engine gets CUDA tensors (the result
        then stays there), else None (host outputs)."""
        if not self._on_gpu():
            return None
        values = inputs.values() if isinstance(inputs, dict) else (
            inputs if isinstance(inputs, (list, tuple)) else [inputs])
        device = next((v.device for v in values
                       if _is_torch_tensor(v) and v.device.type == "cuda"), None)
        if device is None:
            return None
        torch = _torch()
        dtypes = {"float32": torch.float32, "float16": torch.float16, "int8": torch.int8,
                  "uint8": torch.uint8, "int32": torch.int32, "int64": torch.int64,
                  "bool": torch.bool}
        outputs = {}
        for spec in self.engine.outputs:
            if spec.dtype not in dtypes:
                return None  # an output type torch cannot hold on the device: host outputs
            shape = [batch if d < 0 else d for d in spec.shape]
            outputs[spec.name] = torch.empty(shape, dtype=dtypes[spec.dtype], device=device)
        return outputs

    @staticmethod
    def _batch_of(inputs):
        if isinstance(inputs, dict):
            first = next(iter(inputs.values()), None)
        elif isinstance(inputs, (list, tuple)):
            first = inputs[0] if inputs else None
        else:
            first = inputs
        shape = getattr(first, "shape", None)
        return int(shape[0]) if shape is not None and len(shape) > 0 else None

    def _outputs(self, result):
        outputs = [result.outputs[spec.name] for spec in self.engine.outputs]
        return outputs[0] if len(outputs) == 1 else tuple(outputs)

    def inference(self, test_data, reset_context=False, split_batches=False):
        """Runs `test_data` (a CPU torch tensor or numpy array, batch first; a dict or list for
        several inputs) and returns (output, seconds): the output as a torch tensor (a tuple of
        them for several outputs) and the end-to-end time of the call in seconds, as the
        engine measures it (input checks, conversions and compute).

        A cuda engine also takes CUDA tensors: they are read on the GPU, after the work queued
        on PyTorch's current stream, and the outputs come back as CUDA tensors on that GPU, so
        the data never makes a host round trip. (A CPU engine moves CUDA tensors to the host,
        with a warning, as NNI did.)

        Any batch from 1 to batchsize runs as one call. A larger batch is an error unless
        split_batches=True, which runs it in chunks of batchsize (as NNI 2.x did) and returns the
        concatenated output and the summed time. reset_context=True starts a fresh context."""
        self._require_engine("inference()")
        if self.context is None or reset_context:
            self.context = self.engine.create_context()
        inputs = self._inputs(test_data)
        batch = self._batch_of(inputs)
        max_batch = self.engine.max_batch
        if batch is not None and batch > max_batch:
            if not split_batches:
                raise _mixq.InvalidArgumentError(
                    f"batch size {batch} is above the engine's maximum batch {max_batch} "
                    f"(batchsize={max_batch}): build with a larger batchsize, or pass "
                    "split_batches=True to run it in chunks of the maximum batch"
                )
            return self._inference_split(inputs, batch, max_batch)
        outputs = self._device_outputs(inputs, batch if batch is not None else 1)
        result = self.context.infer(inputs, as_torch=True, outputs=outputs)
        return self._outputs(result), result.timing["end_to_end_ms"] / 1e3

    def _inference_split(self, inputs, batch, max_batch):
        torch = _torch()
        chunks, seconds = [], 0.0
        for start in range(0, batch, max_batch):
            if isinstance(inputs, dict):
                part = {k: v[start:start + max_batch] for k, v in inputs.items()}
            elif isinstance(inputs, (list, tuple)):
                part = [v[start:start + max_batch] for v in inputs]
            else:
                part = inputs[start:start + max_batch]
            rows = self._batch_of(part)
            result = self.context.infer(part, as_torch=True,
                                        outputs=self._device_outputs(part, rows))
            chunks.append([result.outputs[s.name] for s in self.engine.outputs])
            seconds += result.timing["end_to_end_ms"] / 1e3
        outputs = [torch.cat([c[i] for c in chunks]) for i in range(len(chunks[0]))]
        return (outputs[0] if len(outputs) == 1 else tuple(outputs)), seconds

    # --- engine files ---------------------------------------------------------------------------

    def export_quantized_model(self, path):
        """Writes the engine (layers, precisions, packed weights, ranges) to `path`."""
        self._require_engine("export_quantized_model()")
        self.engine.save(os.fspath(path))

    def load_quantized_model(self, path):
        """Loads an engine written by export_quantized_model (or `mixq build`)."""
        self.engine = _mixq.Engine.load(os.fspath(path))
        self.context = self.engine.create_context()
        self.batchsize = self.engine.max_batch
        return self

    # --- reports --------------------------------------------------------------------------------

    def report(self):
        """The build report as a dict: per layer the precision requested and the precision that
        runs ("precision"), the implementation and any fallback reason; the fallbacks; the plan
        notes (config entries read but derived by mixq itself, such as NNI's integer grid); the
        average bits by parameters and by MACs; backend, target, memory."""
        self._require_engine("report()")
        return self.engine.report.to_dict()

    def profile(self, data, iterations=10, warmup=2):
        """Time per layer: [{'name', 'op', 'precision', 'ms' (median over `iterations` runs),
        'share'}] in engine order, on a separate profiling context."""
        self._require_engine("profile()")
        if iterations < 1 or warmup < 0:
            raise _mixq.InvalidArgumentError("iterations must be >= 1 and warmup >= 0")
        inputs = self._inputs(data)
        context = self.engine.create_context()
        for _ in range(warmup):
            context.infer(inputs)
        context.profiling = True
        times, order = {}, []
        for _ in range(iterations):
            result = context.infer(inputs)
            if not order:
                order = result.layers
            for layer in result.layers:
                times.setdefault(layer["name"], []).append(layer["ms"])
        rows = []
        for layer in order:
            rows.append(dict(layer, ms=statistics.median(times[layer["name"]])))
        total = sum(r["ms"] for r in rows) or 1.0
        for r in rows:
            r["share"] = r["ms"] / total
        return rows

    def compare(self, data):
        """Per-layer error of the engine against the fp32 model on `data` (like `mixq compare`):
        [{'layer', 'output', 'op', 'module', 'precision', 'sqnr_db', 'max_abs_error',
        'max_abs_reference', 'elements'}] in engine order."""
        self._require_engine("compare()")
        if self.onnx_model is None:
            if self.model is None:
                raise _mixq.FailedPreconditionError(
                    "compare() needs the fp32 model: give the torch model to ModelSpeedup"
                )
            self.export_onnx()
        return _mixq.compare_engine(self.onnx_model, self.engine, self._inputs(data))


#: NNI's name for ModelSpeedup.
ModelSpeedupTensorRT = ModelSpeedup
