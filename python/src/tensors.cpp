#include "tensors.h"

#include <Python.h>
#include <pybind11/eval.h>

#include <algorithm>
#include <cstring>
#include <optional>

namespace mixq::python {
namespace {

// The module the exception classes live in (set at import, never released: the classes must
// outlive every object that may raise).
PyObject* g_module = nullptr;

// Defined in Python so they can inherit from the builtin exception that fits (ValueError,
// KeyError, ...): `except ValueError` catches a bad shape as users expect.
constexpr const char* kErrorClasses = R"(
class MixqError(Exception):
    """Base class of the errors mixq raises; `code` names the engine's status code."""
    code = "unknown"

    def __str__(self):
        return str(self.args[0]) if self.args else ""


class InvalidArgumentError(MixqError, ValueError):
    """Bad user input: a tensor's shape or dtype, a config value, an option."""
    code = "invalid argument"


class InvalidDTypeError(InvalidArgumentError, TypeError):
    """A tensor whose element type mixq does not take (float64, complex, ...)."""


class NotFoundError(MixqError, FileNotFoundError, KeyError):
    """A file, layer, module or input name that does not exist."""
    code = "not found"


class UnsupportedError(MixqError, NotImplementedError):
    """An op, dtype, precision or backend that nothing implements."""
    code = "unsupported"


class ParseError(MixqError, ValueError):
    """Malformed ONNX, JSON or NPY."""
    code = "parse error"


class CorruptFileError(MixqError, ValueError):
    """A corrupt, truncated or mismatched engine or calibration cache file."""
    code = "corrupt data"


class FailedPreconditionError(MixqError, RuntimeError):
    """A valid request in a state that cannot serve it (e.g. int8 layers without ranges)."""
    code = "failed precondition"


class MixqIOError(MixqError, OSError):
    """The operating system refused a read or write."""
    code = "i/o error"


class InternalError(MixqError, RuntimeError):
    """A bug in mixq: please report it with the message."""
    code = "internal error"


for _cls in (MixqError, InvalidArgumentError, InvalidDTypeError, NotFoundError, UnsupportedError,
             ParseError, CorruptFileError, FailedPreconditionError, MixqIOError, InternalError):
    _cls.__module__ = "mixq"
del _cls
)";

const char* class_for(StatusCode code) {
  switch (code) {
    case StatusCode::kInvalidArgument:
      return "InvalidArgumentError";
    case StatusCode::kNotFound:
      return "NotFoundError";
    case StatusCode::kUnsupported:
      return "UnsupportedError";
    case StatusCode::kParseError:
      return "ParseError";
    case StatusCode::kDataLoss:
      return "CorruptFileError";
    case StatusCode::kFailedPrecondition:
      return "FailedPreconditionError";
    case StatusCode::kIoError:
      return "MixqIOError";
    case StatusCode::kOk:
    case StatusCode::kInternal:
      break;
  }
  return "InternalError";
}

void set_error(const char* class_name, const std::string& message, const char* code) {
  py::object cls = py::reinterpret_borrow<py::module_>(g_module).attr(class_name);
  py::object instance = cls(message);
  instance.attr("code") = code;
  PyErr_SetObject(cls.ptr(), instance.ptr());
}

}  // namespace

void register_errors(py::module_& m) {
  py::exec(kErrorClasses, m.attr("__dict__"));
  g_module = m.ptr();
  Py_INCREF(g_module);
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const StatusError& e) {
      set_error(class_for(e.status().code()), e.status().message(),
                status_code_name(e.status().code()));
    }
  });
}

void raise_error(const char* class_name, const std::string& message) {
  set_error(class_name, message, status_code_name(StatusCode::kInvalidArgument));
  throw py::error_already_set();
}

// --- in ------------------------------------------------------------------------------------------

namespace {

std::string type_name(py::handle obj) {
  py::handle type = reinterpret_cast<PyObject*>(Py_TYPE(obj.ptr()));
  std::string module = py::str(type.attr("__module__"));
  std::string name = py::str(type.attr("__qualname__"));
  return module == "builtins" ? name : module + "." + name;
}

bool is_torch_tensor(py::handle obj) {
  py::handle type = reinterpret_cast<PyObject*>(Py_TYPE(obj.ptr()));
  for (py::handle base : type.attr("__mro__")) {
    if (!py::hasattr(base, "__module__") || !py::hasattr(base, "__name__")) continue;
    if (py::str(base.attr("__module__")).cast<std::string>() == "torch" &&
        py::str(base.attr("__name__")).cast<std::string>() == "Tensor")
      return true;
  }
  return false;
}

void release_under_gil(void* p) {
  auto* obj = static_cast<py::object*>(p);
  if (!Py_IsInitialized()) return;  // interpreter gone: leak rather than touch it
  py::gil_scoped_acquire gil;
  delete obj;
}

// A tensor over memory that `owner` keeps alive, held as `borrowed` says.
Tensor wrap_borrowed(DType dtype, Shape shape, void* data, py::object owner,
                     const Borrowed& borrowed) {
  if (borrowed.tensor_owns_reference) {
    std::shared_ptr<void> keepalive(new py::object(std::move(owner)), release_under_gil);
    return Tensor::wrap(dtype, std::move(shape), data, std::move(keepalive));
  }
  if (borrowed.holders) borrowed.holders->push_back(std::move(owner));
  return Tensor::wrap(dtype, std::move(shape), data, nullptr);
}

constexpr const char* kSupported = "float32, float16, int8, uint8, int32, int64, bool";

// The dtype of an array-interface element kind ('f', 'i', 'u', 'b') and size in bytes: NumPy's
// dtype.kind/itemsize and the __cuda_array_interface__ typestr ("<f4") name types the same way.
std::optional<DType> dtype_of_kind(char kind, int64_t size) {
  if (kind == 'f' && size == 4) return DType::kFloat32;
  if (kind == 'f' && size == 2) return DType::kFloat16;
  if (kind == 'i' && size == 1) return DType::kInt8;
  if (kind == 'u' && size == 1) return DType::kUInt8;
  if (kind == 'i' && size == 4) return DType::kInt32;
  if (kind == 'i' && size == 8) return DType::kInt64;
  if (kind == 'b' && size == 1) return DType::kBool;
  return std::nullopt;
}

Tensor from_numpy(py::handle obj, const std::string& what, const Borrowed& borrowed,
                  bool from_torch, bool writable) {
  if (!py::isinstance<py::array>(obj))
    raise_error("InvalidArgumentError",
                what + " is a " + type_name(obj) + "; give a numpy.ndarray or a CPU torch.Tensor");
  auto arr = py::reinterpret_borrow<py::array>(obj);
  const py::dtype dt = arr.dtype();
  // Python-level attributes rather than pybind11's descriptor accessors, whose struct layout
  // NumPy 2 changed (Debian's pybind11 2.10 predates it).
  const char kind = dt.attr("kind").cast<std::string>().at(0);
  const ssize_t size = dt.attr("itemsize").cast<ssize_t>();
  const std::optional<DType> dtype = dtype_of_kind(kind, size);
  const std::string dt_name = py::str(static_cast<py::handle>(dt)).cast<std::string>();
  if (!dtype) {
    std::string hint;
    if (kind == 'f' || kind == 'c')
      hint = from_torch ? ": convert it with .float()" : ": convert it with .astype(numpy.float32)";
    raise_error("InvalidDTypeError", what + " has dtype " + dt_name + ", which mixq does not take" +
                                         hint + " (supported: " + kSupported + ")");
  }
  if (!dt.attr("isnative").cast<bool>())
    raise_error("InvalidDTypeError", what + " has dtype " + dt_name +
                                         " in non-native byte order: convert it with .astype(" +
                                         dt_name.substr(1) + ")");
  if (!(arr.flags() & py::array::c_style))
    raise_error("InvalidArgumentError",
                what + " with shape " + std::string(py::str(arr.attr("shape"))) +
                    " is not C-contiguous (a transposed, sliced or Fortran-ordered view): " +
                    (from_torch ? "make it contiguous with .contiguous()"
                                : "make it contiguous with numpy.ascontiguousarray(x)"));
  if (writable && !arr.writeable())
    raise_error("InvalidArgumentError", what + " is a read-only array; give a writable one");
  Shape shape;
  for (ssize_t i = 0; i < arr.ndim(); ++i) shape.push_back(int64_t(arr.shape(i)));
  void* data = const_cast<void*>(arr.data());
  return wrap_borrowed(*dtype, std::move(shape), data, arr, borrowed);
}

// A device array through __cuda_array_interface__ (version 2 or 3): its pointer, shape and dtype;
// C-contiguous only. `iface` is the interface's dict.
Tensor from_cuda_array(py::handle obj, py::dict iface, const std::string& what,
                       const Borrowed& borrowed, DeviceAccess& device, bool writable,
                       bool from_torch) {
  const std::string typestr = py::str(iface["typestr"]);
  // "<f4": byte order, kind, size; only native (little-endian) or byte-order-free types.
  const bool native = typestr.size() == 3 && (typestr[0] == '<' || typestr[0] == '|');
  const std::optional<DType> dtype =
      native ? dtype_of_kind(typestr[1], typestr[2] - '0') : std::nullopt;
  if (!dtype)
    raise_error("InvalidDTypeError", what + " is a device array of type '" + typestr +
                                         "', which mixq does not take (supported: " + kSupported +
                                         ")");
  if (iface.contains("mask") && !iface["mask"].is_none())
    raise_error("InvalidArgumentError", what + " is a masked device array; give a plain one");
  Shape shape;
  for (py::handle d : py::reinterpret_borrow<py::tuple>(iface["shape"]))
    shape.push_back(d.cast<int64_t>());
  if (iface.contains("strides") && !iface["strides"].is_none()) {
    int64_t expect = int64_t(dtype_size(*dtype));
    auto strides = py::reinterpret_borrow<py::tuple>(iface["strides"]);
    for (size_t i = shape.size(); i-- > 0;) {
      if (shape[i] != 1 && strides[i].cast<int64_t>() != expect)
        raise_error("InvalidArgumentError",
                    what + " with shape " + shape_to_string(shape) +
                        " is not C-contiguous (a transposed or sliced view): make it contiguous " +
                        (from_torch ? "with .contiguous()" : "first"));
      expect *= std::max<int64_t>(shape[i], 1);
    }
  }
  auto data = py::reinterpret_borrow<py::tuple>(iface["data"]);
  if (writable && data[1].cast<bool>())
    raise_error("InvalidArgumentError", what + " is a read-only device array; give a writable one");
  void* ptr = reinterpret_cast<void*>(data[0].cast<uintptr_t>());
  // Version 3: the stream whose work produces the data (None: ready; 1, 2: default streams).
  if (iface.contains("stream") && !iface["stream"].is_none()) {
    void* stream = reinterpret_cast<void*>(iface["stream"].cast<uintptr_t>());
    if (device.stream && device.stream != stream)
      raise_error("InvalidArgumentError", what +
                                              " was produced on another CUDA stream than the "
                                              "other device inputs: give inputs of one stream");
    device.stream = stream;
  }
  device.any = true;
  return wrap_borrowed(*dtype, std::move(shape), ptr, py::reinterpret_borrow<py::object>(obj),
                       borrowed);
}

}  // namespace

Tensor to_tensor(py::handle obj, const std::string& what, const Borrowed& borrowed,
                 DeviceAccess* device, bool writable) {
  const bool torch = is_torch_tensor(obj);
  const bool on_device = torch
                             ? py::str(obj.attr("device").attr("type")).cast<std::string>() != "cpu"
                             : py::hasattr(obj, "__cuda_array_interface__");
  if (on_device && !(device && device->allowed)) {
    const std::string backend = device ? device->engine_backend : std::string("cpu");
    const std::string where = torch
                                  ? "a torch tensor on " + std::string(py::str(obj.attr("device")))
                                  : "a device array (" + type_name(obj) + ")";
    raise_error("InvalidArgumentError",
                what + " is " + where + ", but the engine runs on the " +
                    (backend == "reference" ? "CPU (reference backend)" : "CPU") + ": " +
                    (torch ? "move the tensor with .cpu()" : "copy it to host memory first"));
  }
  if (!torch && on_device)  // CuPy, Numba and others: the interface says everything
    return from_cuda_array(obj, py::dict(obj.attr("__cuda_array_interface__")), what, borrowed,
                           *device, writable, false);
  if (!torch) return from_numpy(obj, what, borrowed, false, writable);
  py::object t = py::reinterpret_borrow<py::object>(obj);
  const std::string device_name = py::str(t.attr("device"));
  if (on_device && device_name.rfind("cuda", 0) != 0)
    raise_error("InvalidArgumentError", what + " is a torch tensor on " + device_name +
                                            "; the engine takes CPU or CUDA tensors");
  const std::string dtype = py::str(t.attr("dtype"));
  if (dtype == "torch.float64" || dtype == "torch.bfloat16" || dtype == "torch.complex64" ||
      dtype == "torch.complex128")
    raise_error("InvalidDTypeError", what + " is a " + dtype +
                                         " tensor, which mixq does not take: convert it with "
                                         ".float() (supported: " +
                                         kSupported + ")");
  if (py::str(t.attr("layout")).cast<std::string>() != "torch.strided")
    raise_error("InvalidArgumentError", what + " is a " + std::string(py::str(t.attr("layout"))) +
                                            " tensor: convert it with .to_dense()");
  if (!t.attr("is_contiguous")().cast<bool>())
    raise_error("InvalidArgumentError",
                what + " with shape " + std::string(py::str(t.attr("shape"))) +
                    " is not contiguous (a transposed or sliced view): make it contiguous "
                    "with .contiguous()");
  if (t.attr("requires_grad").cast<bool>()) {
    if (writable)
      raise_error("InvalidArgumentError",
                  what +
                      " requires grad; the engine cannot write into it: give a tensor made "
                      "under torch.no_grad() or detached");
    t = t.attr("detach")();
  }
  if (on_device) {
    py::dict iface(t.attr("__cuda_array_interface__"));
    if (!iface.contains("stream")) {
      // PyTorch's interface (version 2) names no stream: its work is queued on the current one
      // (0, the legacy default stream, is 1 in the interface's terms).
      const auto stream = py::module_::import("torch")
                              .attr("cuda")
                              .attr("current_stream")(t.attr("device"))
                              .attr("cuda_stream")
                              .cast<uintptr_t>();
      iface["stream"] = stream == 0 ? uintptr_t(1) : stream;
    }
    return from_cuda_array(t, iface, what, borrowed, *device, writable, true);
  }
  py::object arr;
  try {
    arr = t.attr("numpy")();  // shares the tensor's memory and keeps it alive
  } catch (py::error_already_set& e) {
    raise_error("InvalidDTypeError", what + " (a " + dtype + " tensor) cannot be read: " +
                                         e.what() + " (supported: " + kSupported + ")");
  }
  return from_numpy(arr, what, borrowed, true, writable);
}

std::vector<std::pair<std::string, py::object>> named_items(py::handle obj,
                                                            const std::vector<TensorSpec>& specs,
                                                            const std::string& what,
                                                            const std::string& role) {
  std::vector<std::pair<std::string, py::object>> items;
  auto names = [&] {
    std::string s;
    for (const auto& spec : specs) s += (s.empty() ? "'" : ", '") + spec.name + "'";
    return s;
  };
  if (py::isinstance<py::dict>(obj)) {
    for (auto [key, value] : py::reinterpret_borrow<py::dict>(obj)) {
      if (!py::isinstance<py::str>(key))
        raise_error("InvalidArgumentError", what + ": keys must be " + role + " names (str), got " +
                                                type_name(key) + "; the " + role + "s are " +
                                                names());
      items.emplace_back(key.cast<std::string>(), py::reinterpret_borrow<py::object>(value));
    }
    return items;
  }
  if (py::isinstance<py::list>(obj) || py::isinstance<py::tuple>(obj)) {
    auto seq = py::reinterpret_borrow<py::sequence>(obj);
    if (seq.size() != specs.size())
      raise_error("InvalidArgumentError",
                  what + ": got a sequence of " + std::to_string(seq.size()) +
                      " tensors; the model has " + std::to_string(specs.size()) + " " + role +
                      "(s) (" + names() + "), given in this order or as a dict");
    for (size_t i = 0; i < specs.size(); ++i) items.emplace_back(specs[i].name, seq[i]);
    return items;
  }
  if (specs.size() != 1)
    raise_error("InvalidArgumentError",
                what + ": the model has " + std::to_string(specs.size()) + " " + role + "s (" +
                    names() + "): give a dict {name: tensor} or a list in this order");
  items.emplace_back(specs[0].name, py::reinterpret_borrow<py::object>(obj));
  return items;
}

TensorMap to_tensor_map(py::handle obj, const std::vector<TensorSpec>& specs,
                        const std::string& what, const Borrowed& borrowed, DeviceAccess* device,
                        const std::string& role) {
  TensorMap map;
  for (const auto& [name, value] : named_items(obj, specs, what, role))
    map[name] = to_tensor(value, role + " '" + name + "'", borrowed, device, role == "output");
  return map;
}

// --- out -----------------------------------------------------------------------------------------

std::string numpy_dtype_name(DType dtype) {
  switch (dtype) {
    case DType::kFloat32:
      return "float32";
    case DType::kFloat16:
      return "float16";
    case DType::kBFloat16:
      return "bfloat16";
    case DType::kFloat8E4M3:
      return "float8_e4m3fn";
    case DType::kInt8:
      return "int8";
    case DType::kUInt8:
      return "uint8";
    case DType::kInt32:
      return "int32";
    case DType::kInt64:
      return "int64";
    case DType::kBool:
      return "bool";
  }
  return "?";
}

namespace {

bool overlaps(const Tensor& t, const TensorMap* borrowed) {
  if (!borrowed || t.nbytes() == 0) return false;
  const auto* begin = static_cast<const char*>(t.raw());
  const char* end = begin + t.nbytes();
  for (const auto& [name, b] : *borrowed) {
    if (!b.defined() || b.nbytes() == 0) continue;
    const auto* bb = static_cast<const char*>(b.raw());
    if (begin < bb + b.nbytes() && bb < end) return true;
  }
  return false;
}

}  // namespace

py::object to_numpy(const Tensor& tensor, const TensorMap* borrowed) {
  Tensor t = tensor;
  if (t.dtype() == DType::kBFloat16 || t.dtype() == DType::kFloat8E4M3)
    t = t.to(DType::kFloat32);
  else if (overlaps(t, borrowed))
    t = t.clone();
  std::vector<ssize_t> shape(t.shape().begin(), t.shape().end());
  auto* owner = new Tensor(t);
  py::capsule base(owner, [](void* p) { delete static_cast<Tensor*>(p); });
  py::dtype dt(numpy_dtype_name(t.dtype()));
  // Explicit strides: pybind11 2.10 would derive them from the descriptor (see from_numpy).
  std::vector<ssize_t> strides(shape.size());
  ssize_t stride = ssize_t(dtype_size(t.dtype()));
  for (size_t i = shape.size(); i-- > 0;) {
    strides[i] = stride;
    stride *= std::max<ssize_t>(shape[i], 1);
  }
  if (t.numel() == 0) return py::array(dt, shape, strides);  // nothing to share
  return py::array(dt, shape, strides, owner->raw(), base);
}

py::object to_torch(const Tensor& tensor, const TensorMap* borrowed) {
  static py::object* from_numpy = nullptr;
  if (!from_numpy) {
    try {
      from_numpy = new py::object(py::module_::import("torch").attr("from_numpy"));
    } catch (py::error_already_set& e) {
      raise_error(
          "InvalidArgumentError",
          std::string("as_torch=True needs PyTorch, which cannot be imported: ") + e.what());
    }
  }
  return (*from_numpy)(to_numpy(tensor, borrowed));
}

py::dict tensors_to_dict(const TensorMap& tensors, bool as_torch, const TensorMap* borrowed) {
  py::dict d;
  for (const auto& [name, t] : tensors)
    d[py::str(name)] = as_torch ? to_torch(t, borrowed) : to_numpy(t, borrowed);
  return d;
}

}  // namespace mixq::python
