// Programmatic dependent launch (Hopper): a kernel launched with launch_overlapped() is launched
// as soon as the previous kernel on the stream has finished its blocks, so its set-up (weights to
// shared memory, say) overlaps that kernel's teardown and the launch gap. It must call
// wait_for_previous_grid() before it reads anything an earlier kernel wrote and before it writes
// anything (the memory plan reuses buffers). A kernel lets its successor launch early
// (griddepcontrol.launch_dependents, release_dependents below) only where the engine knows that
// successor is one of these kernels (ExecContext::successor_waits): a library kernel after it,
// launched by cuDNN with the same attribute, read a window convolution's output before it was
// complete (an fp8 residual block test failed that way).
#pragma once

#include <cuda_runtime.h>

#include <atomic>
#include <utility>

namespace mixq::backends::cuda::kernels {

__device__ __forceinline__ void wait_for_previous_grid() {
  asm volatile("griddepcontrol.wait;\n" ::: "memory");
}

// Where `release` (the next launch on the stream is one of ours, which waits in
// wait_for_previous_grid before it touches memory): lets that kernel launch now, so its blocks
// stage their weights while this grid runs instead of after it ends. Called first thing: the
// successor launches once every block of this grid has called it (the last wave has started), so
// its blocks never take the place of this grid's own.
__device__ __forceinline__ void release_dependents(bool release) {
  if (release) asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
}

// Lets `kernel` take up to `bytes` of dynamic shared memory (a launch above 48 KiB must ask) and,
// where `prefer_shared`, the largest shared-memory carveout (without the hint the driver may leave
// room for fewer blocks per multiprocessor than fit). Once per kernel: `done` is the caller's
// flag, one per instantiation.
template <typename... Params>
cudaError_t reserve_shared_memory(void (*kernel)(Params...), size_t bytes, bool prefer_shared,
                                  std::atomic<bool>& done) {
  if (done.load()) return cudaSuccess;
  cudaError_t e =
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes));
  if (e == cudaSuccess && prefer_shared)
    e = cudaFuncSetAttribute(kernel, cudaFuncAttributePreferredSharedMemoryCarveout,
                             int(cudaSharedmemCarveoutMaxShared));
  if (e == cudaSuccess) done = true;
  return e;
}

template <typename... Params, typename... Args>
cudaError_t launch_overlapped(void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem,
                              cudaStream_t stream, Args&&... args) {
  cudaLaunchConfig_t config = {};
  config.gridDim = grid;
  config.blockDim = block;
  config.dynamicSmemBytes = smem;
  config.stream = stream;
  cudaLaunchAttribute overlap[1];
  overlap[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  overlap[0].val.programmaticStreamSerializationAllowed = 1;
  config.attrs = overlap;
  config.numAttrs = 1;
  return cudaLaunchKernelEx(&config, kernel, std::forward<Args>(args)...);
}

}  // namespace mixq::backends::cuda::kernels
