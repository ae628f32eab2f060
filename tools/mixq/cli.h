// The mixq command line: one file per command, all sharing these helpers.
#pragma once

#include <CLI/CLI.hpp>

#include <string>

#include "mixq/status.h"

namespace mixq::cli {

// Exit codes: 0 success, 1 user error (bad input, missing file), 2 internal error.
inline constexpr int kExitOk = 0;
inline constexpr int kExitUserError = 1;
inline constexpr int kExitInternal = 2;

// Prints "error: ..." to stderr and returns the exit code for the status.
int report(const Status& status);

void add_inspect_command(CLI::App& app, int& exit_code);
void add_run_command(CLI::App& app, int& exit_code);
void add_engine_commands(CLI::App& app, int& exit_code);  // build, bench, compare

// Engine files (by magic) are run/inspected through the engine; ONNX through the reference.
bool is_engine_file(const std::string& path);
int run_engine(const std::string& path, const std::vector<std::string>& inputs,
               const std::string& output_dir, int64_t batch, uint64_t seed);
int inspect_engine(const std::string& path, bool json);

}  // namespace mixq::cli
