// Engine internals shared by the builder, the engine file and the runtime.
#pragma once

#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "backends/backend.h"
#include "ir/graph.h"
#include "mixq/engine.h"
#include "runtime/memory_plan.h"

namespace mixq {

// Everything one batch size needs: kernel instances, concrete shapes, the arena layout.
struct BatchPlan {
  int64_t batch = 0;
  std::vector<std::unique_ptr<backends::KernelInstance>> instances;  // per step
  std::vector<Shape> shapes;                                         // per value index
  std::vector<int64_t> offsets;  // per value index: arena offset, -1 when not in the arena
  size_t arena_bytes = 0;
  size_t scratch_bytes = 0;
  // Views: steps whose output is its input's bytes under another shape (Flatten, Reshape, a
  // layout change of a 1x1 image...). Their output shares the input's buffer and they do not run.
  std::vector<int> alias_root;  // per value index: the value whose buffer it shares, or -1
  std::vector<bool> is_view;    // per step
};

struct Engine::Impl {
  std::unique_ptr<ir::Graph> graph;  // the execution graph (after lowering)
  std::unique_ptr<backends::Backend> backend;
  std::vector<ir::Node*> steps;                            // nodes in execution order
  std::vector<std::unique_ptr<backends::Kernel>> kernels;  // parallel to steps
  std::vector<double> prepare_seconds;                     // parallel to steps
  std::unordered_map<const ir::Value*, int> value_index;
  std::vector<const ir::Value*> values;  // by index
  BuildReport report;
  std::vector<TensorSpec> inputs, outputs;
  int64_t max_batch = 0;
  std::string target;  // the backend target recorded at build

  // Batch plans are made on first use of a batch size and shared by every context.
  mutable std::mutex mutex;
  mutable std::map<int64_t, std::shared_ptr<const BatchPlan>> plans;

  // After graph/backend/max_batch are set: index values, create and prepare kernels.
  Status finalize();
  Expected<std::shared_ptr<const BatchPlan>> plan_for(int64_t batch) const;
};

// Engine file: serialize / deserialize an Impl (graph, report, target); see engine_file.cpp.
Expected<std::string> serialize_engine(const Engine::Impl& impl);
Expected<std::shared_ptr<Engine::Impl>> deserialize_engine(const std::string& bytes,
                                                           const std::string& source);

}  // namespace mixq
