"""The PyTorch front end: nn.Module -> ONNX (torch.onnx.export) and module names -> layers.

mixq's ONNX importer recovers each layer's PyTorch module from the scoped names torch.onnx gives
nodes ("/layer1/layer1.0/conv1/Conv") and initializers ("layer1.0.conv1.weight"), so the export
only has to keep those names intact: eval mode (no training-only ops), do_constant_folding=False
(folding renames parameters) and TorchScript-based export (torch 2.x's dynamo exporter names
nodes differently). No tagging of modules is needed.
"""

import inspect
import io
import re
import warnings

__all__ = ["export_onnx", "module_layer_map", "check_module_names", "input_shapes"]


def _torch():
    try:
        import torch
    except ImportError as error:  # pragma: no cover
        raise ImportError("this part of mixq needs PyTorch (Debian: python3-torch)") from error
    return torch


def _errors():
    from . import _mixq

    return _mixq


def input_shapes(input_shape):
    """One shape (a tuple of ints) or several (a sequence of them) -> a list of tuples."""
    if (
        isinstance(input_shape, (list, tuple))
        and input_shape
        and all(isinstance(d, (list, tuple)) for d in input_shape)
    ):
        shapes = [tuple(int(x) for x in s) for s in input_shape]
    else:
        try:
            if isinstance(input_shape, (str, bytes)):
                raise TypeError("a string")
            shapes = [tuple(int(x) for x in input_shape)]
        except (TypeError, ValueError) as error:
            raise _errors().InvalidArgumentError(
                f"input_shape must be a tuple of ints such as (128, 1, 28, 28) or a list of them "
                f"for a model with several inputs, got {input_shape!r}"
            ) from error
    for s in shapes:
        if not s or any(d < 1 for d in s):
            raise _errors().InvalidArgumentError(
                f"input_shape {s} must have a batch dimension and positive sizes, e.g. (128, 1, 28, 28)"
            )
    return shapes


def _model_device(model):
    for p in model.parameters():
        return p.device
    for b in model.buffers():
        return b.device
    return _torch().device("cpu")


def export_onnx(
    model,
    input_shape,
    *,
    input_names=("input",),
    output_names=("output",),
    opset_version=13,
    dynamic_batch=True,
    dummy_inputs=None,
    path=None,
):
    """Exports `model` to ONNX and returns the serialized model (bytes); also writes it to `path`
    when given. The model is exported in eval mode (its mode is restored afterwards) with a
    dynamic batch axis on every named input and output."""
    torch = _torch()
    shapes = input_shapes(input_shape)
    input_names = list(input_names)
    output_names = list(output_names)
    if len(input_names) != len(shapes):
        raise ValueError(
            f"{len(shapes)} input shape(s) but {len(input_names)} input name(s) {input_names}: "
            "give one name per input"
        )
    device = _model_device(model)
    if dummy_inputs is None:
        generator = torch.Generator().manual_seed(0)
        dummy_inputs = tuple(torch.randn(s, generator=generator).to(device) for s in shapes)
    elif not isinstance(dummy_inputs, tuple):
        dummy_inputs = (dummy_inputs,)
    dynamic_axes = None
    if dynamic_batch:
        dynamic_axes = {name: {0: "batch"} for name in input_names + output_names}
    kwargs = dict(
        export_params=True,
        opset_version=opset_version,
        do_constant_folding=False,
        input_names=input_names,
        output_names=output_names,
        dynamic_axes=dynamic_axes,
        training=torch.onnx.TrainingMode.EVAL,
    )
    if "dynamo" in inspect.signature(torch.onnx.export).parameters:
        kwargs["dynamo"] = False  # torch >= 2.5: the TorchScript exporter keeps scoped names
    was_training = model.training
    buffer = io.BytesIO()
    try:
        model.eval()
        with torch.no_grad(), warnings.catch_warnings():
            # torch warns about dynamic_axes names it had to invent and constant folding being
            # off; neither matters here.
            warnings.simplefilter("ignore", UserWarning)
            torch.onnx.export(model, dummy_inputs, buffer, **kwargs)
    finally:
        model.train(was_training)
    data = buffer.getvalue()
    if path is not None:
        with open(path, "wb") as f:
            f.write(data)
    return data


def module_layer_map(mixq_model):
    """{module name: [layer names]} from a mixq.Model's summary (layers no module owns, such as
    functional calls at top level, are keyed by their node name)."""
    mapping = {}
    for layer in mixq_model.summary().layers:
        mapping.setdefault(layer.module or layer.name, []).append(layer.name)
    return mapping


_CALL_SUFFIX = re.compile(r"^(.*)_(\d+)$")


def check_module_names(model, names, what="config"):
    """Raises mixq.NotFoundError (a KeyError) listing every name that is neither a module of
    `model`, a repeated call of one ("relu_1" for module "relu") nor an ONNX node name
    (starting with "/", checked later by the engine)."""
    from . import _mixq

    modules = [n for n, _ in model.named_modules() if n]
    known = set(modules)
    unknown = []
    for name in names:
        if not isinstance(name, str):
            raise _mixq.InvalidArgumentError(
                f"{what} keys are module names (str); got {name!r} ({type(name).__name__})"
            )
        if name in known or name.startswith("/"):
            continue
        call = _CALL_SUFFIX.match(name)
        if call and call.group(1) in known:
            continue
        unknown.append(name)
    if unknown:
        shown = ", ".join(modules[:12]) + (", ..." if len(modules) > 12 else "")
        listed = ", ".join(f"'{n}'" for n in unknown)
        raise _mixq.NotFoundError(
            f"{what} names module{'s' if len(unknown) > 1 else ''} {listed} that the model does "
            f"not have (keys are names from model.named_modules(); the model's modules: {shown})"
        )
