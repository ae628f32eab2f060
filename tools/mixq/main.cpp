#include <cstdio>
#include <exception>
#include <iostream>

#include "cli.h"

namespace mixq::cli {

int report(const Status& status) {
  if (status.ok()) return kExitOk;
  std::cerr << "error: " << status.message() << "\n";
  return status.is_user_error() ? kExitUserError : kExitInternal;
}

}  // namespace mixq::cli

int main(int argc, char** argv) {
  using namespace mixq::cli;
  CLI::App app{
      "mixq: mixed-precision quantized inference (ONNX in, per-layer precision, real "
      "low-precision kernels)"};
  app.require_subcommand(1);
  app.set_version_flag("--version", "mixq 0.1.0");
  int exit_code = kExitOk;
  add_inspect_command(app, exit_code);
  add_run_command(app, exit_code);
  add_engine_commands(app, exit_code);
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForVersion& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    std::cerr << "error: " << e.what() << "\nRun with --help for more information.\n";
    return kExitUserError;
  } catch (const std::bad_alloc&) {
    std::cerr << "error: out of memory\n";
    return kExitInternal;
  } catch (const std::exception& e) {
    std::cerr << "internal error: " << e.what() << "\n";
    return kExitInternal;
  }
  return exit_code;
}
