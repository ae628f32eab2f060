// Conversions between Python objects (NumPy arrays, PyTorch tensors) and mixq tensors, and the
// mapping of mixq::Status to the package's exception classes.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <string>
#include <vector>

#include "mixq/engine.h"

namespace mixq::python {

namespace py = pybind11;

// --- errors -------------------------------------------------------------------------------------

// Thrown for a non-ok Status; the module's translator raises the exception class for its code
// (mixq.InvalidArgumentError, mixq.NotFoundError, ...) with the engine's message.
class StatusError : public std::exception {
 public:
  explicit StatusError(Status status) : status_(std::move(status)) {}
  const Status& status() const { return status_; }
  const char* what() const noexcept override { return status_.message().c_str(); }

 private:
  Status status_;
};

inline void check(const Status& status) {
  if (!status.ok()) throw StatusError(status);
}
template <typename T>
T unwrap(Expected<T>&& expected) {
  if (!expected.ok()) throw StatusError(expected.status());
  return std::move(expected).value();
}

// Defines the exception classes in `m` and installs the translator. Call once, at import.
void register_errors(py::module_& m);
// Raises the named exception class of the module ("InvalidArgumentError", "InvalidDTypeError").
[[noreturn]] void raise_error(const char* class_name, const std::string& message);

// --- tensors in
// -----------------------------------------------------------------------------------

// Who keeps the Python memory alive that a converted tensor borrows.
struct Borrowed {
  // Either the objects are held here for the duration of a call (the tensors must not outlive
  // it) ...
  std::vector<py::object>* holders = nullptr;
  // ... or each tensor holds a reference itself, released under the GIL when its storage dies
  // (for tensors that are stored, like calibration data).
  bool tensor_owns_reference = false;
};

// Whether device arrays (__cuda_array_interface__: PyTorch CUDA tensors, CuPy, Numba) may be
// given, i.e. the engine runs on a GPU, and what the conversion learnt about them.
struct DeviceAccess {
  bool allowed = false;
  std::string engine_backend = "cpu";  // named in the refusal
  // Out: the producer stream of the device arrays (the interface's "stream"; nullptr if none
  // was given), and whether any array was on the device.
  void* stream = nullptr;
  bool any = false;
};

// A C-contiguous NumPy array or CPU torch tensor as a mixq tensor, without copying; with
// `device` allowed, also a C-contiguous device array (its device pointer). `what` names it in
// messages ("input 'x'"). Refuses non-contiguous arrays, unsupported dtypes (float64, ...),
// device arrays for a CPU engine and anything else. `writable`: the memory will be written
// (outputs), so read-only arrays are refused.
Tensor to_tensor(py::handle obj, const std::string& what, const Borrowed& borrowed,
                 DeviceAccess* device = nullptr, bool writable = false);

// The (name, object) pairs of a dict {name: array}, a list/tuple in the order of `specs`, or one
// object when there is one spec; refuses other shapes naming `what` and the `role` ("input").
std::vector<std::pair<std::string, py::object>> named_items(py::handle obj,
                                                            const std::vector<TensorSpec>& specs,
                                                            const std::string& what,
                                                            const std::string& role);

// Inputs of a model or engine: a dict {name: array}, a list/tuple in the order of `specs`, or one
// array when there is one input (calibration data may also use the name "" for it). `role`
// names the tensors in messages ("input", "output").
TensorMap to_tensor_map(py::handle obj, const std::vector<TensorSpec>& specs,
                        const std::string& what, const Borrowed& borrowed,
                        DeviceAccess* device = nullptr, const std::string& role = "input");

// --- tensors out
// ----------------------------------------------------------------------------------

// A NumPy array sharing the tensor's storage (bf16 and fp8 come out as float32). When the storage
// overlaps one of `borrowed` (a value the reference run passed through from an input), it is
// copied so the result never outlives the caller's memory.
py::object to_numpy(const Tensor& tensor, const TensorMap* borrowed = nullptr);
py::object to_torch(const Tensor& tensor, const TensorMap* borrowed = nullptr);
py::dict tensors_to_dict(const TensorMap& tensors, bool as_torch,
                         const TensorMap* borrowed = nullptr);

// "float32", "float16", "bfloat16", "float8_e4m3fn", "int8", "uint8", "int32", "int64", "bool".
std::string numpy_dtype_name(DType dtype);

}  // namespace mixq::python
