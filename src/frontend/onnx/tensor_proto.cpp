#include "frontend/onnx/tensor_proto.h"

#include <charconv>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>

namespace mixq::onnx_frontend {

std::optional<DType> dtype_from_onnx(int t) {
  switch (t) {
    case onnx::TensorProto::FLOAT:
      return DType::kFloat32;
    case onnx::TensorProto::FLOAT16:
      return DType::kFloat16;
    case onnx::TensorProto::BFLOAT16:
      return DType::kBFloat16;
    case kOnnxFloat8E4M3FN:
      return DType::kFloat8E4M3;
    case onnx::TensorProto::INT8:
      return DType::kInt8;
    case onnx::TensorProto::UINT8:
      return DType::kUInt8;
    case onnx::TensorProto::INT32:
      return DType::kInt32;
    case onnx::TensorProto::INT64:
      return DType::kInt64;
    case onnx::TensorProto::BOOL:
      return DType::kBool;
    default:
      return std::nullopt;
  }
}

int dtype_to_onnx(DType d) {
  switch (d) {
    case DType::kFloat32:
      return onnx::TensorProto::FLOAT;
    case DType::kFloat16:
      return onnx::TensorProto::FLOAT16;
    case DType::kBFloat16:
      return onnx::TensorProto::BFLOAT16;
    case DType::kFloat8E4M3:
      return kOnnxFloat8E4M3FN;
    case DType::kInt8:
      return onnx::TensorProto::INT8;
    case DType::kUInt8:
      return onnx::TensorProto::UINT8;
    case DType::kInt32:
      return onnx::TensorProto::INT32;
    case DType::kInt64:
      return onnx::TensorProto::INT64;
    case DType::kBool:
      return onnx::TensorProto::BOOL;
  }
  return onnx::TensorProto::UNDEFINED;
}

const char* onnx_type_name(int t) {
  switch (t) {
    case onnx::TensorProto::FLOAT:
      return "float";
    case onnx::TensorProto::UINT8:
      return "uint8";
    case onnx::TensorProto::INT8:
      return "int8";
    case onnx::TensorProto::UINT16:
      return "uint16";
    case onnx::TensorProto::INT16:
      return "int16";
    case onnx::TensorProto::INT32:
      return "int32";
    case onnx::TensorProto::INT64:
      return "int64";
    case onnx::TensorProto::STRING:
      return "string";
    case onnx::TensorProto::BOOL:
      return "bool";
    case onnx::TensorProto::FLOAT16:
      return "float16";
    case onnx::TensorProto::DOUBLE:
      return "double";
    case onnx::TensorProto::UINT32:
      return "uint32";
    case onnx::TensorProto::UINT64:
      return "uint64";
    case onnx::TensorProto::COMPLEX64:
      return "complex64";
    case onnx::TensorProto::COMPLEX128:
      return "complex128";
    case onnx::TensorProto::BFLOAT16:
      return "bfloat16";
    case kOnnxFloat8E4M3FN:
      return "float8e4m3fn";
    default:
      return "an unknown element type";
  }
}

namespace {

Status read_external(const onnx::TensorProto& proto, const std::string& base_dir,
                     const std::string& what, Tensor& t) {
  std::string location;
  int64_t offset = 0, length = -1;
  // A non-negative decimal integer; corrupt files must not throw out of the importer.
  auto parse_size = [&](const std::string& key, const std::string& text, int64_t& out) {
    const char* end = text.data() + text.size();
    const auto [ptr, ec] = std::from_chars(text.data(), end, out);
    if (ec != std::errc() || ptr != end || out < 0)
      return ParseError(what + ": external data " + key + " '" + text +
                        "' is not a non-negative integer");
    return Status::Ok();
  };
  for (const auto& kv : proto.external_data()) {
    if (kv.key() == "location")
      location = kv.value();
    else if (kv.key() == "offset")
      MIXQ_RETURN_IF_ERROR(parse_size("offset", kv.value(), offset));
    else if (kv.key() == "length")
      MIXQ_RETURN_IF_ERROR(parse_size("length", kv.value(), length));
  }
  if (location.empty()) return ParseError(what + ": external data without a location");
  const std::filesystem::path rel(location);
  if (rel.is_absolute() || location.find("..") != std::string::npos)
    return InvalidArgument(what + ": external data location '" + location +
                           "' must be a relative path inside the model's folder");
  const std::filesystem::path path = std::filesystem::path(base_dir) / rel;
  std::ifstream in(path, std::ios::binary);
  if (!in) return NotFound(what + ": external data file '" + path.string() + "' cannot be read");
  const int64_t want = int64_t(t.nbytes());
  if (length >= 0 && length != want)
    return DataLoss(what + ": external data length " + std::to_string(length) + " bytes, but " +
                    t.describe() + " needs " + std::to_string(want));
  in.seekg(offset);
  in.read(static_cast<char*>(t.raw()), want);
  if (in.gcount() != want)
    return DataLoss(what + ": external data file '" + path.string() + "' is too short");
  return Status::Ok();
}

}  // namespace

Expected<Tensor> tensor_from_proto(const onnx::TensorProto& proto, const std::string& base_dir,
                                   const std::string& what) {
  const auto dtype = dtype_from_onnx(proto.data_type());
  if (!dtype)
    return Unsupported(what + " has element type " + onnx_type_name(proto.data_type()) +
                       ", which mixq does not support");
  if (proto.has_segment()) return Unsupported(what + " is segmented, which is not supported");
  Shape shape;
  for (int64_t d : proto.dims()) {
    if (d < 0) return ParseError(what + " has a negative dimension");
    shape.push_back(d);
  }
  // Guard against absurd sizes from corrupt files before allocating.
  long double elements = 1;
  for (int64_t d : shape) elements *= (long double)d;
  if (elements > (long double)(int64_t(1) << 36))
    return ParseError(what + " claims " + shape_to_string(shape) + " elements: too large");
  Tensor t = Tensor::empty(*dtype, shape);
  const size_t n = size_t(t.numel());
  const size_t bytes = t.nbytes();

  if (proto.data_location() == onnx::TensorProto::EXTERNAL) {
    MIXQ_RETURN_IF_ERROR(read_external(proto, base_dir, what, t));
    return t;
  }
  if (proto.has_raw_data()) {
    if (proto.raw_data().size() != bytes)
      return DataLoss(what + " holds " + std::to_string(proto.raw_data().size()) +
                      " bytes of raw data; " + t.describe() + " needs " + std::to_string(bytes));
    if (bytes) std::memcpy(t.raw(), proto.raw_data().data(), bytes);
    return t;
  }
  auto size_error = [&](size_t got) {
    return DataLoss(what + " holds " + std::to_string(got) + " values; " + t.describe() +
                    " needs " + std::to_string(n));
  };
  switch (*dtype) {
    case DType::kFloat32:
      if (size_t(proto.float_data_size()) != n) return size_error(size_t(proto.float_data_size()));
      std::copy(proto.float_data().begin(), proto.float_data().end(), t.data<float>());
      break;
    case DType::kInt64:
      if (size_t(proto.int64_data_size()) != n) return size_error(size_t(proto.int64_data_size()));
      std::copy(proto.int64_data().begin(), proto.int64_data().end(), t.data<int64_t>());
      break;
    default: {
      // int32_data carries int32 and every narrower type (16-bit floats as their bit patterns).
      if (size_t(proto.int32_data_size()) != n) return size_error(size_t(proto.int32_data_size()));
      for (size_t i = 0; i < n; ++i) {
        const int32_t v = proto.int32_data(int(i));
        switch (*dtype) {
          case DType::kInt32:
            t.data<int32_t>()[i] = v;
            break;
          case DType::kInt8:
            t.data<int8_t>()[i] = int8_t(v);
            break;
          case DType::kUInt8:
            t.data<uint8_t>()[i] = uint8_t(v);
            break;
          case DType::kBool:
            t.data<bool>()[i] = v != 0;
            break;
          case DType::kFloat16:
            t.data<Half>()[i] = Half{uint16_t(v)};
            break;
          case DType::kBFloat16:
            t.data<BFloat16>()[i] = BFloat16{uint16_t(v)};
            break;
          case DType::kFloat8E4M3:
            t.data<Float8E4M3>()[i] = Float8E4M3{uint8_t(v)};
            break;
          default:
            break;
        }
      }
    }
  }
  return t;
}

}  // namespace mixq::onnx_frontend
