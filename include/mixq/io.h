// NumPy files: .npy tensors and .npz archives of them.
#pragma once

#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "mixq/status.h"
#include "mixq/tensor.h"

namespace mixq {

// float32, float16, int8, uint8, int32, int64 and bool arrays, C order, either byte order.
Expected<Tensor> load_npy(const std::string& path);
Expected<Tensor> parse_npy(std::string_view bytes, const std::string& source);
Status save_npy(const std::string& path, const Tensor& tensor);
std::string serialize_npy(const Tensor& tensor);

using NamedTensors = std::vector<std::pair<std::string, Tensor>>;
// Every array of an .npz (stored or deflated), in archive order; names without ".npy".
Expected<NamedTensors> load_npz(const std::string& path);
Status save_npz(const std::string& path, const NamedTensors& tensors);

}  // namespace mixq
