// Runs ONNX's conformance cases (model.onnx + test_data_set_N/{input,output}_K.pb) through the
// importer and the reference backend, and reports passed / failed / skipped (unsupported op or
// dtype, named). Cases listed in --must-pass that do not pass make the exit code 1.
//
//   mixq_conformance --root DIR [--root DIR ...] [--must-pass FILE] [--filter SUBSTR]
//                    [--write-passing FILE] [--verbose]
// Each root holds suites (node/, pytorch-converted/, ...), each suite holds case folders.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "frontend/onnx/importer.h"
#include "mixq/model.h"
#include "support/test_util.h"

namespace fs = std::filesystem;
using namespace mixq;

namespace {

enum class Outcome { kPassed, kFailed, kSkipped };

struct Result {
  std::string id;  // suite/case
  Outcome outcome;
  std::string detail;
};

std::vector<fs::path> sorted_entries(const fs::path& dir, const std::string& prefix) {
  std::vector<fs::path> out;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir, ec))
    if (e.path().filename().string().rfind(prefix, 0) == 0) out.push_back(e.path());
  // input_10 after input_9
  std::sort(out.begin(), out.end(), [](const fs::path& a, const fs::path& b) {
    auto num = [](const fs::path& p) {
      std::string s = p.stem().string();
      size_t u = s.rfind('_');
      return u == std::string::npos ? 0 : std::atoi(s.c_str() + u + 1);
    };
    return num(a) < num(b);
  });
  return out;
}

Result run_case(const std::string& id, const fs::path& dir) {
  Result r{id, Outcome::kPassed, ""};
  auto skip_or_fail = [&](const Status& s) {
    r.outcome = s.code() == StatusCode::kUnsupported ? Outcome::kSkipped : Outcome::kFailed;
    r.detail = s.message();
    return r;
  };
  auto model = Model::load((dir / "model.onnx").string());
  if (!model.ok()) return skip_or_fail(model.status());
  const auto sets = sorted_entries(dir, "test_data_set_");
  if (sets.empty()) {
    r.outcome = Outcome::kSkipped;
    r.detail = "no test data";
    return r;
  }
  for (const fs::path& set : sets) {
    TensorMap inputs;
    const auto input_files = sorted_entries(set, "input_");
    if (input_files.size() != model->inputs().size()) {
      r.outcome = Outcome::kFailed;
      r.detail = set.filename().string() + ": " + std::to_string(input_files.size()) +
                 " input files for " + std::to_string(model->inputs().size()) + " model inputs";
      return r;
    }
    for (size_t i = 0; i < input_files.size(); ++i) {
      auto t = onnx_frontend::load_tensor_proto_file(input_files[i].string());
      if (!t.ok()) return skip_or_fail(t.status());
      inputs[model->inputs()[i].name] = t->tensor;
    }
    auto outputs = model->run_reference(inputs);
    if (!outputs.ok()) return skip_or_fail(outputs.status());
    const auto output_files = sorted_entries(set, "output_");
    if (output_files.size() != model->outputs().size()) {
      r.outcome = Outcome::kFailed;
      r.detail = "expected " + std::to_string(output_files.size()) + " outputs, model has " +
                 std::to_string(model->outputs().size());
      return r;
    }
    for (size_t i = 0; i < output_files.size(); ++i) {
      auto expected = onnx_frontend::load_tensor_proto_file(output_files[i].string());
      if (!expected.ok()) return skip_or_fail(expected.status());
      const std::string& name = model->outputs()[i].name;
      const Tensor& got = outputs->at(name);
      const Tensor& want = expected->tensor;
      if (got.dtype() != want.dtype()) {
        r.outcome = Outcome::kFailed;
        r.detail = "output '" + name + "' is " + got.describe() + ", expected " + want.describe();
        return r;
      }
      std::string why;
      if (!testing::all_close(got, want, 1e-3, 1e-7, &why)) {
        r.outcome = Outcome::kFailed;
        r.detail = "output '" + name + "' " + got.describe() + ": " + why;
        return r;
      }
    }
  }
  return r;
}

std::set<std::string> read_list(const std::string& path) {
  std::set<std::string> out;
  std::ifstream in(path);
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty() || line[0] == '#') continue;
    while (!line.empty() && (line.back() == ' ' || line.back() == '\r')) line.pop_back();
    out.insert(line);
  }
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> roots;
  std::string must_pass_path, write_passing, filter;
  bool verbose = false;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto next = [&]() -> std::string { return i + 1 < argc ? argv[++i] : ""; };
    if (a == "--root")
      roots.push_back(next());
    else if (a == "--must-pass")
      must_pass_path = next();
    else if (a == "--write-passing")
      write_passing = next();
    else if (a == "--filter")
      filter = next();
    else if (a == "--verbose" || a == "-v")
      verbose = true;
    else {
      std::fprintf(stderr, "unknown argument %s\n", a.c_str());
      return 2;
    }
  }
  std::vector<Result> results;
  std::set<std::string> suites_present;
  const auto start = std::chrono::steady_clock::now();
  for (const std::string& root : roots) {
    std::error_code ec;
    if (!fs::is_directory(root, ec)) continue;
    std::vector<fs::path> suites;
    for (const auto& s : fs::directory_iterator(root))
      if (s.is_directory()) suites.push_back(s.path());
    std::sort(suites.begin(), suites.end());
    for (const fs::path& suite : suites) {
      const std::string suite_name = suite.filename().string();
      if (suites_present.count(suite_name)) continue;  // first root wins
      suites_present.insert(suite_name);
      std::vector<fs::path> cases;
      for (const auto& c : fs::directory_iterator(suite))
        if (c.is_directory() && fs::exists(c.path() / "model.onnx")) cases.push_back(c.path());
      std::sort(cases.begin(), cases.end());
      for (const fs::path& c : cases) {
        const std::string id = suite_name + "/" + c.filename().string();
        if (!filter.empty() && id.find(filter) == std::string::npos) continue;
        results.push_back(run_case(id, c));
      }
    }
  }
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();

  std::map<std::string, std::array<int, 3>> per_suite;
  std::map<std::string, int> skip_reasons;
  for (const Result& r : results) {
    const std::string suite = r.id.substr(0, r.id.find('/'));
    per_suite[suite][int(r.outcome)]++;
    if (r.outcome == Outcome::kFailed)
      std::printf("FAILED  %s: %s\n", r.id.c_str(), r.detail.c_str());
    if (r.outcome == Outcome::kSkipped) {
      if (verbose) std::printf("skipped %s: %s\n", r.id.c_str(), r.detail.c_str());
      // Group skips by their reason's op list / dtype for the summary.
      std::string reason = r.detail;
      const size_t colon = reason.find("use ops mixq does not support: ");
      if (colon != std::string::npos) reason = "unsupported op: " + reason.substr(colon + 31);
      const size_t paren = reason.find(" (");
      if (paren != std::string::npos && reason.rfind("unsupported op: ", 0) == 0)
        reason.resize(paren);
      skip_reasons[reason]++;
    }
  }
  int passed = 0, failed = 0, skipped = 0;
  std::printf("\n%-20s %7s %7s %7s\n", "suite", "passed", "failed", "skipped");
  for (const auto& [suite, c] : per_suite) {
    std::printf("%-20s %7d %7d %7d\n", suite.c_str(), c[0], c[1], c[2]);
    passed += c[0];
    failed += c[1];
    skipped += c[2];
  }
  std::printf("%-20s %7d %7d %7d   (%.1f s)\n", "total", passed, failed, skipped, seconds);
  if (verbose) {
    std::vector<std::pair<int, std::string>> reasons;
    for (const auto& [k, v] : skip_reasons) reasons.push_back({v, k});
    std::sort(reasons.rbegin(), reasons.rend());
    std::printf("\nskip reasons:\n");
    for (const auto& [n, why] : reasons) std::printf("%5d  %s\n", n, why.substr(0, 150).c_str());
  }

  if (!write_passing.empty()) {
    std::ofstream out(write_passing);
    out << "# ONNX conformance cases that must pass (suite/case). Regenerate with\n"
           "# mixq_conformance ... --write-passing FILE; removing a line needs a reason.\n";
    for (const Result& r : results)
      if (r.outcome == Outcome::kPassed) out << r.id << "\n";
  }
  int regressions = 0;
  if (!must_pass_path.empty()) {
    const std::set<std::string> must = read_list(must_pass_path);
    std::map<std::string, const Result*> by_id;
    for (const Result& r : results) by_id[r.id] = &r;
    int absent_suites = 0;
    for (const std::string& id : must) {
      if (!filter.empty() && id.find(filter) == std::string::npos) continue;
      const std::string suite = id.substr(0, id.find('/'));
      if (!suites_present.count(suite)) {
        ++absent_suites;
        continue;
      }
      auto it = by_id.find(id);
      if (it == by_id.end()) {
        std::printf("REGRESSION %s: case not found\n", id.c_str());
        ++regressions;
      } else if (it->second->outcome != Outcome::kPassed) {
        std::printf("REGRESSION %s: %s\n", id.c_str(), it->second->detail.c_str());
        ++regressions;
      }
    }
    if (absent_suites)
      std::printf("note: %d must-pass cases belong to suites whose data is not present here\n",
                  absent_suites);
    std::printf("must-pass: %zu listed, %d regressions\n", must.size(), regressions);
  }
  return regressions ? 1 : 0;
}
