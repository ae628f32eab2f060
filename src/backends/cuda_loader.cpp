// Loads the CUDA backend from libmixq_cuda.so (built when nvcc and the CUDA libraries are
// present), so libmixq itself runs on machines without CUDA.
#include <dlfcn.h>

#include <filesystem>
#include <mutex>

#include "backends/backend.h"

namespace mixq::backends {

namespace {

using Factory = Backend* (*)(char* error, size_t error_size);

std::string library_dir() {
  Dl_info info;
  if (dladdr(reinterpret_cast<void*>(&make_cuda_backend), &info) && info.dli_fname)
    return std::filesystem::path(info.dli_fname).parent_path().string();
  return "";
}

}  // namespace

Expected<std::unique_ptr<Backend>> make_cuda_backend() {
  static std::mutex mutex;
  static void* handle = nullptr;
  static std::string load_error;
  std::lock_guard<std::mutex> lock(mutex);
  if (!handle && load_error.empty()) {
    const std::string dir = library_dir();
    const std::string local = dir.empty() ? "libmixq_cuda.so" : dir + "/libmixq_cuda.so";
    handle = dlopen(local.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (!handle) {
      const char* e = dlerror();
      load_error = e ? e : "not found";
      // Not beside libmixq: try the loader's search path (LD_LIBRARY_PATH, system dirs).
      if (!std::filesystem::exists(local)) {
        handle = dlopen("libmixq_cuda.so", RTLD_NOW | RTLD_LOCAL);
        if (!handle && (e = dlerror())) load_error = e;
      }
    }
  }
  if (!handle)
    return Unsupported("the cuda backend is not available: libmixq_cuda.so could not be loaded (" +
                       load_error + "); build mixq with nvcc, cuDNN and cuBLASLt present");
  auto factory = reinterpret_cast<Factory>(dlsym(handle, "mixq_create_cuda_backend"));
  if (!factory) return Internal("libmixq_cuda.so has no mixq_create_cuda_backend");
  char error[512] = {};
  Backend* backend = factory(error, sizeof error);
  if (!backend) return Unsupported(std::string("the cuda backend cannot start: ") + error);
  return std::unique_ptr<Backend>(backend);
}

}  // namespace mixq::backends
