#include <zip.h>

#include <algorithm>
#include <bit>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <memory>

#include "mixq/io.h"

namespace mixq {
namespace {

struct Descr {
  DType dtype;
  bool big_endian;
};

Expected<Descr> parse_descr(const std::string& d, const std::string& source) {
  if (d.size() < 3) return ParseError(source + ": unreadable dtype '" + d + "'");
  const char order = d[0];
  const std::string code = d.substr(1);
  const bool big = order == '>';
  static const std::pair<const char*, DType> kCodes[] = {
      {"f4", DType::kFloat32}, {"f2", DType::kFloat16}, {"i1", DType::kInt8}, {"u1", DType::kUInt8},
      {"i4", DType::kInt32},   {"i8", DType::kInt64},   {"b1", DType::kBool}};
  for (const auto& [c, dtype] : kCodes)
    if (code == c) return Descr{dtype, big};
  std::string hint;
  if (code == "f8") hint = " (float64: convert with .astype(numpy.float32))";
  return Unsupported(source + " holds dtype '" + d + "'" + hint +
                     "; mixq reads float32, float16, int8, uint8, int32, int64 and bool");
}

// Value of `key` in the header dict: the text after "'key':" up to the next top-level comma.
std::string header_field(const std::string& header, const std::string& key) {
  const std::string needle = "'" + key + "'";
  size_t pos = header.find(needle);
  if (pos == std::string::npos) return "";
  pos = header.find(':', pos + needle.size());
  if (pos == std::string::npos) return "";
  ++pos;
  while (pos < header.size() && header[pos] == ' ') ++pos;
  if (pos < header.size() && header[pos] == '(') {
    const size_t end = header.find(')', pos);
    return end == std::string::npos ? "" : header.substr(pos, end - pos + 1);
  }
  size_t end = header.find_first_of(",}", pos);
  if (end == std::string::npos) end = header.size();
  std::string v = header.substr(pos, end - pos);
  while (!v.empty() && v.back() == ' ') v.pop_back();
  if (v.size() >= 2 && (v.front() == '\'' || v.front() == '"')) v = v.substr(1, v.size() - 2);
  return v;
}

}  // namespace

Expected<Tensor> parse_npy(std::string_view bytes, const std::string& source) {
  if (bytes.size() < 10 || std::memcmp(bytes.data(), "\x93NUMPY", 6) != 0)
    return ParseError(source + " is not an NPY file (no \\x93NUMPY magic)");
  const uint8_t major = uint8_t(bytes[6]);
  size_t header_len = 0, offset = 0;
  if (major == 1) {
    header_len = uint8_t(bytes[8]) | (size_t(uint8_t(bytes[9])) << 8);
    offset = 10;
  } else if (major == 2 || major == 3) {
    if (bytes.size() < 12) return ParseError(source + " is truncated");
    header_len = uint8_t(bytes[8]) | (size_t(uint8_t(bytes[9])) << 8) |
                 (size_t(uint8_t(bytes[10])) << 16) | (size_t(uint8_t(bytes[11])) << 24);
    offset = 12;
  } else {
    return Unsupported(source + " uses NPY format version " + std::to_string(major));
  }
  if (bytes.size() < offset + header_len) return ParseError(source + " is truncated (header)");
  const std::string header(bytes.substr(offset, header_len));
  const std::string descr = header_field(header, "descr");
  const std::string fortran = header_field(header, "fortran_order");
  const std::string shape_text = header_field(header, "shape");
  if (descr.empty() || shape_text.empty() || fortran.empty())
    return ParseError(source + " has an unreadable NPY header");
  if (fortran == "True")
    return Unsupported(source + " is in Fortran order; save it with numpy.ascontiguousarray");
  MIXQ_ASSIGN_OR_RETURN(Descr d, parse_descr(descr, source));
  Shape shape;
  {
    std::string inner = shape_text.substr(1, shape_text.size() - 2);
    size_t pos = 0;
    while (pos < inner.size()) {
      while (pos < inner.size() && (inner[pos] == ' ' || inner[pos] == ',')) ++pos;
      if (pos >= inner.size()) break;
      size_t end = pos;
      while (end < inner.size() && std::isdigit(static_cast<unsigned char>(inner[end]))) ++end;
      if (end == pos) return ParseError(source + " has an unreadable shape " + shape_text);
      shape.push_back(std::stoll(inner.substr(pos, end - pos)));
      pos = end;
    }
  }
  long double elements = 1;
  for (int64_t dim : shape) elements *= (long double)dim;
  const size_t data_offset = offset + header_len;
  const long double need = elements * (long double)dtype_size(d.dtype);
  if ((long double)(bytes.size() - data_offset) < need)
    return DataLoss(source + " is truncated: shape " + shape_to_string(shape) + " of " +
                    std::string(dtype_name(d.dtype)) + " needs " +
                    std::to_string((unsigned long long)need) + " bytes, the file has " +
                    std::to_string(bytes.size() - data_offset));
  Tensor t = Tensor::empty(d.dtype, shape);
  std::memcpy(t.raw(), bytes.data() + data_offset, t.nbytes());
  const size_t width = dtype_size(d.dtype);
  if (d.big_endian && width > 1) {
    auto* p = static_cast<uint8_t*>(t.raw());
    for (int64_t i = 0; i < t.numel(); ++i) std::reverse(p + i * width, p + (i + 1) * width);
  }
  if (d.dtype == DType::kBool) {
    auto* p = static_cast<uint8_t*>(t.raw());
    for (int64_t i = 0; i < t.numel(); ++i)
      if (p[i] > 1) return ParseError(source + " holds a bool that is neither 0 nor 1");
  }
  return t;
}

Expected<Tensor> load_npy(const std::string& path) {
  std::error_code ec;
  if (!std::filesystem::is_regular_file(path, ec))
    return NotFound("NPY file '" + path + "' does not exist");
  std::ifstream in(path, std::ios::binary);
  if (!in) return IoError("cannot open '" + path + "'");
  std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  return parse_npy(bytes, "'" + path + "'");
}

std::string serialize_npy(const Tensor& t) {
  const char* descr = "<f4";
  switch (t.dtype()) {
    case DType::kFloat32:
      descr = "<f4";
      break;
    case DType::kFloat16:
      descr = "<f2";
      break;
    case DType::kInt8:
      descr = "|i1";
      break;
    case DType::kUInt8:
      descr = "|u1";
      break;
    case DType::kInt32:
      descr = "<i4";
      break;
    case DType::kInt64:
      descr = "<i8";
      break;
    case DType::kBool:
      descr = "|b1";
      break;
    // No NumPy dtype: stored as their raw bits.
    case DType::kBFloat16:
      descr = "<u2";
      break;
    case DType::kFloat8E4M3:
      descr = "|u1";
      break;
  }
  std::string shape = "(";
  for (size_t i = 0; i < t.shape().size(); ++i) shape += std::to_string(t.shape()[i]) + ",";
  if (t.shape().size() > 1) shape.pop_back();
  shape += ")";
  std::string header =
      std::string("{'descr': '") + descr + "', 'fortran_order': False, 'shape': " + shape + ", }";
  const size_t unpadded = 10 + header.size() + 1;
  header.append((64 - unpadded % 64) % 64, ' ');
  header += '\n';
  std::string out = "\x93NUMPY";
  out += char(1);
  out += char(0);
  out += char(header.size() & 0xff);
  out += char((header.size() >> 8) & 0xff);
  out += header;
  out.append(static_cast<const char*>(t.raw()), t.nbytes());
  return out;
}

Status save_npy(const std::string& path, const Tensor& t) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  if (!out) return IoError("cannot write '" + path + "'");
  const std::string bytes = serialize_npy(t);
  out.write(bytes.data(), std::streamsize(bytes.size()));
  if (!out) return IoError("writing '" + path + "' failed");
  return Status::Ok();
}

Expected<NamedTensors> load_npz(const std::string& path) {
  std::error_code ec;
  if (!std::filesystem::is_regular_file(path, ec))
    return NotFound("NPZ file '" + path + "' does not exist");
  int err = 0;
  std::unique_ptr<zip_t, int (*)(zip_t*)> archive(zip_open(path.c_str(), ZIP_RDONLY, &err),
                                                  zip_close);
  if (!archive) return ParseError("'" + path + "' is not a readable NPZ (zip) archive");
  NamedTensors result;
  const zip_int64_t count = zip_get_num_entries(archive.get(), 0);
  for (zip_int64_t i = 0; i < count; ++i) {
    zip_stat_t st;
    if (zip_stat_index(archive.get(), zip_uint64_t(i), 0, &st) != 0)
      return DataLoss("'" + path + "': entry " + std::to_string(i) + " is unreadable");
    std::string name = st.name;
    if (name.size() > 4 && name.substr(name.size() - 4) == ".npy") name.resize(name.size() - 4);
    std::unique_ptr<zip_file_t, int (*)(zip_file_t*)> file(
        zip_fopen_index(archive.get(), zip_uint64_t(i), 0), zip_fclose);
    if (!file) return DataLoss("'" + path + "': entry '" + name + "' cannot be opened");
    std::string bytes(size_t(st.size), '\0');
    const zip_int64_t got = zip_fread(file.get(), bytes.data(), st.size);
    if (got != zip_int64_t(st.size))
      return DataLoss("'" + path + "': entry '" + name + "' is truncated or corrupt");
    MIXQ_ASSIGN_OR_RETURN(Tensor t, parse_npy(bytes, "'" + path + "' entry '" + name + "'"));
    result.emplace_back(name, std::move(t));
  }
  return result;
}

Status save_npz(const std::string& path, const NamedTensors& tensors) {
  if (tensors.empty()) {
    // libzip writes no file at all for an archive without entries; NumPy writes the bare
    // end-of-central-directory record, which is what loads back as an empty archive.
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out.write("PK\x05\x06", 4);
    out.write(std::string(18, '\0').data(), 18);
    if (!out) return IoError("writing '" + path + "' failed");
    return Status::Ok();
  }
  int err = 0;
  zip_t* archive = zip_open(path.c_str(), ZIP_CREATE | ZIP_TRUNCATE, &err);
  if (!archive) return IoError("cannot create '" + path + "'");
  std::vector<std::unique_ptr<std::string>> buffers;  // must outlive zip_close
  for (const auto& [name, tensor] : tensors) {
    buffers.push_back(std::make_unique<std::string>(serialize_npy(tensor)));
    zip_source_t* src =
        zip_source_buffer(archive, buffers.back()->data(), buffers.back()->size(), 0);
    if (!src || zip_file_add(archive, (name + ".npy").c_str(), src, ZIP_FL_OVERWRITE) < 0) {
      if (src) zip_source_free(src);
      zip_discard(archive);
      return IoError("cannot add '" + name + "' to '" + path + "'");
    }
  }
  if (zip_close(archive) != 0) {
    zip_discard(archive);
    return IoError("writing '" + path + "' failed");
  }
  return Status::Ok();
}

}  // namespace mixq
