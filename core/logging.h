// One logging facade for every Strata process: lines go to stderr with a
// "[rank r/n]" prefix (after the UTC time when stderr is not a terminal). INFO and DEBUG print on rank 0 only (all ranks when
// STRATA_LOG_ALL_RANKS=1); WARN and ERROR print on every rank. The level comes
// from STRATA_LOG_LEVEL (debug | info | warn | error, default info).
//
// Logging is for people. Numbers that programs read go to metrics.jsonl.
//
// Thread safety: log calls are safe from any thread (one line, one write).
// set_log_rank is called once by main() after rank discovery.
#pragma once

#include <string>

#include "core/error.h"

namespace strata {

enum class LogLevel { kDebug = 0, kInfo = 1, kWarn = 2, kError = 3 };

// UsageError for a STRATA_LOG_LEVEL or STRATA_LOG_ALL_RANKS value that
// means nothing (run_main calls it first: a typo is not silently "info").
void check_log_environment();
void set_log_rank(int rank, int world);
bool log_enabled(LogLevel level);
void log_line(LogLevel level, const std::string& message);

template <class... Args>
void log_debug(Args&&... args) {
  if (log_enabled(LogLevel::kDebug)) {
    log_line(LogLevel::kDebug, str(std::forward<Args>(args)...));
  }
}
template <class... Args>
void log_info(Args&&... args) {
  if (log_enabled(LogLevel::kInfo)) {
    log_line(LogLevel::kInfo, str(std::forward<Args>(args)...));
  }
}
template <class... Args>
void log_warn(Args&&... args) {
  if (log_enabled(LogLevel::kWarn)) {
    log_line(LogLevel::kWarn, str(std::forward<Args>(args)...));
  }
}
template <class... Args>
void log_error(Args&&... args) {
  log_line(LogLevel::kError, str(std::forward<Args>(args)...));
}

}  // namespace strata
