#include "runtime/memory_plan.h"

#include <algorithm>
#include <numeric>

namespace mixq::runtime {

MemoryPlan plan_memory(const std::vector<BufferRequest>& requests) {
  MemoryPlan plan;
  plan.offsets.assign(requests.size(), 0);
  std::vector<size_t> order(requests.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](size_t a, size_t b) { return requests[a].bytes > requests[b].bytes; });
  struct Placed {
    size_t offset, end;
    int first, last;
  };
  std::vector<Placed> placed;
  for (size_t i : order) {
    const BufferRequest& r = requests[i];
    const size_t size = (r.bytes + kArenaAlignment - 1) / kArenaAlignment * kArenaAlignment;
    // Blocks alive at the same time as r, by offset.
    std::vector<Placed> clashes;
    for (const Placed& p : placed)
      if (p.first <= r.last_step && r.first_step <= p.last) clashes.push_back(p);
    std::sort(clashes.begin(), clashes.end(),
              [](const Placed& a, const Placed& b) { return a.offset < b.offset; });
    size_t offset = 0;
    for (const Placed& p : clashes) {
      if (offset + size <= p.offset) break;
      offset = std::max(offset, p.end);
    }
    plan.offsets[i] = offset;
    placed.push_back({offset, offset + size, r.first_step, r.last_step});
    plan.arena_bytes = std::max(plan.arena_bytes, offset + size);
  }
  return plan;
}

}  // namespace mixq::runtime
