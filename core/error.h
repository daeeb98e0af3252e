// Strata's error types and check macros.
//
// User-facing conditions (bad recipe, missing data, a dead peer) throw a
// strata::Error subclass whose message names the value, the place and the fix.
// Bugs in Strata itself use STRATA_INTERNAL_ASSERT. Library code never calls
// exit(): only main() catches and maps an error to an exit code (exit_code).
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>

namespace strata {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& what) : std::runtime_error(what) {}
};

// Usage or recipe mistakes: exit code 2.
class UsageError : public Error {
  using Error::Error;
};
class ConfigError : public Error {
  using Error::Error;
};

// Runtime failures: exit code 1.
class DataError : public Error {
  using Error::Error;
};
class IoError : public Error {
  using Error::Error;
};
class CommError : public Error {
  using Error::Error;
};
class TimeoutError : public CommError {
  using CommError::CommError;
};
class InternalError : public Error {
  using Error::Error;
};

// Concatenates its arguments with operator<<.
template <class... Args>
std::string str(Args&&... args) {
  std::ostringstream os;
  (os << ... << std::forward<Args>(args));
  return os.str();
}

// 2 for usage/config errors, 1 for everything else.
int exit_code(const std::exception& e);

}  // namespace strata

// STRATA_CHECK(cond, msg...) throws strata::Error; STRATA_CHECK_T names the
// subclass: STRATA_CHECK_T(ConfigError, lr > 0, "optimizer.lr must be > 0").
#define STRATA_CHECK_T(ErrorType, cond, ...)           \
  do {                                                 \
    if (!(cond)) {                                     \
      throw ::strata::ErrorType(::strata::str(__VA_ARGS__)); \
    }                                                  \
  } while (0)
#define STRATA_CHECK(cond, ...) STRATA_CHECK_T(Error, cond, __VA_ARGS__)

#define STRATA_INTERNAL_ASSERT(cond, ...)                                  \
  do {                                                                     \
    if (!(cond)) {                                                         \
      throw ::strata::InternalError(::strata::str(                         \
          "bug in Strata: ", #cond, " failed at ", __FILE__, ":", __LINE__, \
          " ", ##__VA_ARGS__, " (please report it)"));                     \
    }                                                                      \
  } while (0)
