// Status and Expected<T>: how every user-facing boundary of mixq reports errors.
#pragma once

#include <cassert>
#include <string>
#include <type_traits>
#include <utility>
#include <variant>

namespace mixq {

enum class StatusCode {
  kOk = 0,
  kInvalidArgument,     // bad user input: config, tensor shape/dtype, CLI flag
  kNotFound,            // a file, layer or input name that does not exist
  kUnsupported,         // an op, dtype or precision that nothing implements
  kParseError,          // malformed ONNX, JSON or NPY
  kDataLoss,            // corrupt, truncated or mismatched engine/cache file
  kFailedPrecondition,  // valid request in a state that cannot serve it
  kIoError,             // the operating system refused a read or write
  kInternal,            // a bug in mixq
};

const char* status_code_name(StatusCode code);

class [[nodiscard]] Status {
 public:
  Status() = default;
  Status(StatusCode code, std::string message) : code_(code), message_(std::move(message)) {}

  static Status Ok() { return Status(); }

  bool ok() const { return code_ == StatusCode::kOk; }
  StatusCode code() const { return code_; }
  const std::string& message() const { return message_; }
  // A user error (bad input) as opposed to an internal failure: decides CLI exit code 1 vs 2.
  bool is_user_error() const { return code_ != StatusCode::kOk && code_ != StatusCode::kInternal; }

  // Prefix context ("while loading layer X: ...") without losing the code.
  Status with_context(const std::string& context) const {
    if (ok()) return *this;
    return Status(code_, context + ": " + message_);
  }
  std::string to_string() const;

 private:
  StatusCode code_ = StatusCode::kOk;
  std::string message_;
};

inline Status InvalidArgument(std::string m) {
  return {StatusCode::kInvalidArgument, std::move(m)};
}
inline Status NotFound(std::string m) {
  return {StatusCode::kNotFound, std::move(m)};
}
inline Status Unsupported(std::string m) {
  return {StatusCode::kUnsupported, std::move(m)};
}
inline Status ParseError(std::string m) {
  return {StatusCode::kParseError, std::move(m)};
}
inline Status DataLoss(std::string m) {
  return {StatusCode::kDataLoss, std::move(m)};
}
inline Status FailedPrecondition(std::string m) {
  return {StatusCode::kFailedPrecondition, std::move(m)};
}
inline Status IoError(std::string m) {
  return {StatusCode::kIoError, std::move(m)};
}
inline Status Internal(std::string m) {
  return {StatusCode::kInternal, std::move(m)};
}

// A value or the Status that explains why there is none.
template <typename T>
class [[nodiscard]] Expected {
  static_assert(!std::is_same_v<T, Status>, "Expected<Status> makes no sense");

 public:
  Expected(T value) : data_(std::in_place_index<0>, std::move(value)) {}
  Expected(Status status) : data_(std::in_place_index<1>, std::move(status)) {
    assert(!std::get<1>(data_).ok() && "Expected built from an ok Status");
  }

  bool ok() const { return data_.index() == 0; }
  explicit operator bool() const { return ok(); }

  const Status& status() const {
    static const Status kOkStatus;
    return ok() ? kOkStatus : std::get<1>(data_);
  }
  T& value() & {
    assert(ok());
    return std::get<0>(data_);
  }
  const T& value() const& {
    assert(ok());
    return std::get<0>(data_);
  }
  T&& value() && {
    assert(ok());
    return std::get<0>(std::move(data_));
  }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }

 private:
  std::variant<T, Status> data_;
};

}  // namespace mixq

#define MIXQ_CONCAT_INNER(a, b) a##b
#define MIXQ_CONCAT(a, b) MIXQ_CONCAT_INNER(a, b)

#define MIXQ_RETURN_IF_ERROR(expr)               \
  do {                                           \
    ::mixq::Status mixq_status_ = (expr);        \
    if (!mixq_status_.ok()) return mixq_status_; \
  } while (0)

#define MIXQ_ASSIGN_OR_RETURN_IMPL(tmp, lhs, expr) \
  auto tmp = (expr);                               \
  if (!tmp.ok()) return tmp.status();              \
  lhs = std::move(tmp).value()

#define MIXQ_ASSIGN_OR_RETURN(lhs, expr) \
  MIXQ_ASSIGN_OR_RETURN_IMPL(MIXQ_CONCAT(mixq_expected_, __LINE__), lhs, expr)
