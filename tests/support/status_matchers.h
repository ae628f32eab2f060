// Assertions on failures: the exact StatusCode and the pieces the message must name.
#pragma once

#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "mixq/status.h"

namespace mixq::testing {

// Success when `s` failed with `code` and its message contains every one of `parts`.
inline ::testing::AssertionResult status_is(const Status& s, StatusCode code,
                                            const std::vector<std::string>& parts = {}) {
  if (s.ok()) return ::testing::AssertionFailure() << "expected an error, got OK";
  if (s.code() != code)
    return ::testing::AssertionFailure()
           << "code '" << status_code_name(s.code()) << "', expected '" << status_code_name(code)
           << "': " << s.message();
  for (const std::string& p : parts)
    if (s.message().find(p) == std::string::npos)
      return ::testing::AssertionFailure() << "message '" << s.message() << "' lacks '" << p << "'";
  return ::testing::AssertionSuccess();
}

template <typename T>
::testing::AssertionResult status_is(const Expected<T>& r, StatusCode code,
                                     const std::vector<std::string>& parts = {}) {
  if (r.ok()) return ::testing::AssertionFailure() << "expected an error, got a value";
  return status_is(r.status(), code, parts);
}

}  // namespace mixq::testing
