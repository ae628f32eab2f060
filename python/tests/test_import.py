"""The package imports from the build tree and exposes the API and the exception hierarchy."""

import mixq


def test_import_and_version():
    assert mixq.__version__.count(".") == 2
    assert "int8" in mixq.precisions() and "fp32" in mixq.precisions()
    assert mixq.calibration_algorithms() == ["entropy", "minmax", "percentile", "mse"]
    for name in ["Model", "Builder", "BuildOptions", "CalibrationOptions", "CalibrationData",
                 "Engine", "Context", "InferenceResult", "BuildReport", "ModelSpeedup",
                 "ModelSpeedupTensorRT", "CalibrateType", "compare_engine"]:
        assert hasattr(mixq, name), name
    assert mixq.ModelSpeedupTensorRT is mixq.ModelSpeedup


def test_exception_hierarchy():
    assert issubclass(mixq.InvalidArgumentError, (mixq.MixqError, ValueError))
    assert issubclass(mixq.InvalidDTypeError, mixq.InvalidArgumentError)
    assert issubclass(mixq.InvalidDTypeError, TypeError)
    assert issubclass(mixq.NotFoundError, KeyError)
    assert issubclass(mixq.NotFoundError, FileNotFoundError)
    assert issubclass(mixq.UnsupportedError, NotImplementedError)
    assert issubclass(mixq.CorruptFileError, mixq.MixqError)
    assert issubclass(mixq.FailedPreconditionError, RuntimeError)
    assert issubclass(mixq.MixqIOError, OSError)
    assert mixq.InvalidArgumentError.__module__ == "mixq"
    # str() is the engine's message, not KeyError's quoted repr
    assert str(mixq.NotFoundError("no input named 'x'")) == "no input named 'x'"


def test_status_codes_map_to_exceptions(tmp_path):
    try:
        mixq.Engine.load(str(tmp_path / "missing.mixq"))
    except mixq.NotFoundError as e:
        assert "missing.mixq" in str(e) and e.code == "not found"
    else:
        raise AssertionError("no exception")
    bad = tmp_path / "bad.mixq"
    bad.write_bytes(b"not an engine at all")
    try:
        mixq.Engine.load(bad)  # os.PathLike works too
    except mixq.ParseError as e:
        assert "bad.mixq" in str(e) and "magic" in str(e)
    else:
        raise AssertionError("no exception")
