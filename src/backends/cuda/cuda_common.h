// Shared pieces of the CUDA backend: error checks that become Status, per-context resources
// (stream, events, cuDNN and cuBLASLt handles), device buffers, and the kernel families.
#pragma once

#include <cublasLt.h>
#include <cuda_runtime.h>
#include <cudnn.h>

#include <memory>
#include <string>
#include <vector>

#include "backends/backend.h"

namespace mixq::backends::cuda {

Status cuda_status(cudaError_t e, const char* what, const char* file, int line);
Status cudnn_status(cudnnStatus_t e, const char* what, const char* file, int line);
Status cublas_status(cublasStatus_t e, const char* what, const char* file, int line);

#define CUDA_CHECK(x)                                                              \
  do {                                                                             \
    cudaError_t mixq_e_ = (x);                                                     \
    if (mixq_e_ != cudaSuccess)                                                    \
      return ::mixq::backends::cuda::cuda_status(mixq_e_, #x, __FILE__, __LINE__); \
  } while (0)
#define CUDNN_CHECK(x)                                                              \
  do {                                                                              \
    cudnnStatus_t mixq_e_ = (x);                                                    \
    if (mixq_e_ != CUDNN_STATUS_SUCCESS)                                            \
      return ::mixq::backends::cuda::cudnn_status(mixq_e_, #x, __FILE__, __LINE__); \
  } while (0)
#define CUBLAS_CHECK(x)                                                              \
  do {                                                                               \
    cublasStatus_t mixq_e_ = (x);                                                    \
    if (mixq_e_ != CUBLAS_STATUS_SUCCESS)                                            \
      return ::mixq::backends::cuda::cublas_status(mixq_e_, #x, __FILE__, __LINE__); \
  } while (0)

// One per Context (thread): everything a kernel issues goes on `stream`.
class CudaResources final : public ExecResources {
 public:
  static Expected<std::unique_ptr<CudaResources>> create();
  ~CudaResources() override;
  cudaStream_t stream = nullptr;
  cudnnHandle_t cudnn = nullptr;
  cublasLtHandle_t cublas = nullptr;
  cudaEvent_t events[4] = {};           // timing marks
  cudaEvent_t ordering = nullptr;       // waits on other streams (no timing)
  std::vector<cudaEvent_t> step_marks;  // profiling: one per step boundary
};

inline CudaResources& resources_of(const ExecContext& ctx) {
  return *static_cast<CudaResources*>(ctx.resources);
}

// Device memory owned by a kernel (packed weights, scales), freed with it.
struct DeviceBuffer {
  std::shared_ptr<void> ptr;
  size_t bytes = 0;
  void* get() const { return ptr.get(); }
};
Expected<DeviceBuffer> device_alloc(size_t bytes);
Expected<DeviceBuffer> upload(const void* host, size_t bytes);

// Bytes per element of a dtype on the device (same as the host's).
inline size_t element_bytes(DType d) {
  return dtype_size(d);
}

Shape at_batch(const Shape& shape, int64_t batch);

// --- kernel families (one file each)
// -------------------------------------------------------------- conv_cudnn.cpp: FusedConv through
// cuDNN's graph API (NHWC; fp32/tf32/fp16/bf16/int8/fp8).
bool conv_supports(const ir::Node& node, Precision precision, std::string* why);
Expected<std::unique_ptr<Kernel>> make_conv_kernel(const ir::Node& node, Precision precision);
// Whether the convolution `node` (its precision and dtypes final) can absorb a following max pool
// of pool_h x pool_w windows (stride = window, no padding): our window form runs it, unless
// MIXQ_CUDA_CONV asks for cuDNN.
bool conv_can_pool(const ir::Node& node, int64_t pool_h, int64_t pool_w);
// Whether the convolution `node` (having absorbed a pool: it runs the window form) can absorb the
// Reformat that writes its input from `source`, converting each element as it stages its window.
bool conv_can_convert_input(const ir::Node& node, const ir::Value& source);
// Whether the convolution `first` (its pool and input reformat absorbed) and `second`, its output's
// only reader, can run as one step (kernels::window_chain): same precision, a tensor-core type,
// the intermediate in the second's input format, each image's intermediate within shared memory;
// not where MIXQ_CUDA_CONV asks for another form than the window one.
bool conv_can_chain(const ir::Node& first, const ir::Node& second);
// The chained step: a FusedConv whose inputs 4 and 5 are the second convolution's weights and bias
// and whose attributes under kChainThenPrefix are the second's own.
Expected<std::unique_ptr<Kernel>> make_conv_chain_kernel(const ir::Node& node, Precision precision);
// gemm_cublaslt.cpp: FusedGemm through cuBLASLt (TN; all precisions).
bool gemm_supports(const ir::Node& node, Precision precision, std::string* why);
Expected<std::unique_ptr<Kernel>> make_gemm_kernel(const ir::Node& node, Precision precision);
// gemm_chain.cpp: two int8 linear layers in one step (a FusedGemm whose inputs 4 and 5 are the
// second layer's weights and bias, CudaBackend::fuse_for_execution); whether `first` -> `second`
// (its only reader) can run so.
bool gemm_can_chain(const ir::Node& first, const ir::Node& second);
Expected<std::unique_ptr<Kernel>> make_chain_kernel(const ir::Node& node, Precision precision);
// kernels.cu: reformat, pooling, elementwise, concat, softmax, copies.
bool own_supports(const ir::Node& node, Precision precision, std::string* why);
Expected<std::unique_ptr<Kernel>> make_own_kernel(const ir::Node& node, Precision precision);

}  // namespace mixq::backends::cuda
