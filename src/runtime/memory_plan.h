// Arena planning: every intermediate value gets an offset in one buffer, reused once the value
// is dead. Greedy by size (largest first) into the lowest offset free over the value's lifetime.
#pragma once

#include <cstddef>
#include <vector>

namespace mixq::runtime {

struct BufferRequest {
  size_t bytes = 0;
  int first_step = 0;  // step that writes it
  int last_step = 0;   // last step that reads it
};

struct MemoryPlan {
  std::vector<size_t> offsets;  // parallel to the requests
  size_t arena_bytes = 0;
};

inline constexpr size_t kArenaAlignment = 64;

MemoryPlan plan_memory(const std::vector<BufferRequest>& requests);

}  // namespace mixq::runtime
