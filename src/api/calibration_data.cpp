#include <algorithm>
#include <cctype>
#include <filesystem>

#include "mixq/engine.h"
#include "mixq/io.h"

namespace mixq {
namespace {

std::string lower_extension(const std::filesystem::path& p) {
  std::string ext = p.extension().string();
  for (char& c : ext) c = char(std::tolower(static_cast<unsigned char>(c)));
  return ext;
}

// One file, one batch. A .npy is the model's only input (key ""), as is an .npz holding a single
// array that numpy named by position ("arr_0": numpy.savez(path, x)).
Expected<TensorMap> load_batch(const std::filesystem::path& path) {
  const std::string ext = lower_extension(path);
  const std::string where = "calibration data '" + path.string() + "'";
  if (ext == ".npy") {
    auto t = load_npy(path.string());
    if (!t.ok()) return t.status().with_context(where);
    return TensorMap{{"", std::move(t).value()}};
  }
  if (ext == ".npz") {
    auto arrays = load_npz(path.string());
    if (!arrays.ok()) return arrays.status().with_context(where);
    if (arrays->empty()) return InvalidArgument(where + " holds no arrays");
    if (arrays->size() == 1 && (*arrays)[0].first == "arr_0")
      return TensorMap{{"", (*arrays)[0].second}};
    TensorMap batch;
    for (auto& [name, tensor] : *arrays)
      if (!batch.emplace(name, tensor).second)
        return InvalidArgument(where + " holds two arrays named '" + name + "'");
    return batch;
  }
  return InvalidArgument(where +
                         " is neither .npy nor .npz (calibration data is an .npy file, an .npz "
                         "file or a folder of them)");
}

}  // namespace

Expected<CalibrationData> CalibrationData::from_path(const std::string& path) {
  namespace fs = std::filesystem;
  std::error_code ec;
  if (!fs::exists(path, ec)) return NotFound("calibration data '" + path + "' does not exist");
  CalibrationData data;
  data.source_ = path;
  if (!fs::is_directory(path, ec)) {
    MIXQ_ASSIGN_OR_RETURN(TensorMap batch, load_batch(path));
    data.batches_.push_back(std::move(batch));
    return data;
  }
  std::vector<fs::path> files;
  for (fs::directory_iterator it(path, ec), end; !ec && it != end; it.increment(ec)) {
    const std::string ext = lower_extension(it->path());
    if ((ext == ".npy" || ext == ".npz") && !it->is_directory(ec)) files.push_back(it->path());
  }
  if (ec) return IoError("cannot list calibration folder '" + path + "': " + ec.message());
  if (files.empty())
    return InvalidArgument("calibration folder '" + path + "' holds no .npy or .npz files");
  std::sort(files.begin(), files.end(), [](const fs::path& a, const fs::path& b) {
    return a.filename().string() < b.filename().string();
  });
  for (const fs::path& f : files) {
    MIXQ_ASSIGN_OR_RETURN(TensorMap batch, load_batch(f));
    data.batches_.push_back(std::move(batch));
  }
  return data;
}

CalibrationData CalibrationData::from_batches(std::vector<TensorMap> batches) {
  CalibrationData data;
  data.batches_ = std::move(batches);
  data.source_ = "in-memory batches";
  return data;
}

int64_t CalibrationData::sample_count() const {
  int64_t n = 0;
  for (const TensorMap& batch : batches_) {
    int64_t rows = 1;  // a batch of scalars is one sample
    for (const auto& [name, t] : batch)
      if (t.defined() && t.rank() >= 1) {
        rows = t.shape()[0];
        break;
      }
    n += rows;
  }
  return n;
}

}  // namespace mixq
