"""mixq: mixed-precision quantized inference.

The engine is C++ (include/mixq/); this package binds it (``mixq._mixq``) and adds the PyTorch
workflow users know from NNI's ModelSpeedupTensorRT::

    import mixq
    engine = mixq.ModelSpeedup(model, (128, 1, 28, 28), config=calibration_config,
                               calib_data_loader=loader, batchsize=128)
    engine.compress()                        # export to ONNX, calibrate where needed, build
    output, seconds = engine.inference(data)

The lower-level API mirrors the C++ one: Model, Builder, BuildOptions, CalibrationOptions,
CalibrationData, Engine, Context, InferenceResult, BuildReport, compare_engine. Errors are
subclasses of MixqError carrying the engine's message.
"""

try:
    from . import _mixq
except ImportError as error:  # pragma: no cover - depends on how the package was built
    import sys as _sys

    raise ImportError(
        "mixq's compiled module (_mixq) cannot be loaded into Python "
        f"{_sys.version_info.major}.{_sys.version_info.minor} ({_sys.executable}): {error}. "
        "It is built for one interpreter by CMake; rebuild with "
        "-DPython3_EXECUTABLE=<this python> (see python/README.md)."
    ) from error

from ._mixq import (  # noqa: F401  (re-exported)
    BuildOptions,
    BuildReport,
    Builder,
    CalibrationData,
    CalibrationOptions,
    Context,
    CorruptFileError,
    Engine,
    FailedPreconditionError,
    InferenceResult,
    InternalError,
    InvalidArgumentError,
    InvalidDTypeError,
    LayerReport,
    LayerSummary,
    MixqError,
    MixqIOError,
    Model,
    ModelSummary,
    NotFoundError,
    ParseError,
    TensorSpec,
    UnsupportedError,
    __version__,
    calibration_algorithms,
    compare_engine,
    precisions,
)
from .speedup import CalibrateType, ModelSpeedup, ModelSpeedupTensorRT  # noqa: F401
from .qat import QAT_Quantizer, QATQuantizer  # noqa: F401

__all__ = [
    "BuildOptions",
    "BuildReport",
    "Builder",
    "CalibrateType",
    "CalibrationData",
    "CalibrationOptions",
    "Context",
    "CorruptFileError",
    "Engine",
    "FailedPreconditionError",
    "InferenceResult",
    "InternalError",
    "InvalidArgumentError",
    "InvalidDTypeError",
    "LayerReport",
    "LayerSummary",
    "MixqError",
    "MixqIOError",
    "Model",
    "ModelSpeedup",
    "ModelSpeedupTensorRT",
    "ModelSummary",
    "NotFoundError",
    "ParseError",
    "QATQuantizer",
    "QAT_Quantizer",
    "TensorSpec",
    "UnsupportedError",
    "calibration_algorithms",
    "compare_engine",
    "precisions",
]
