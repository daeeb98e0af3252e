#include "core/logging.h"

#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <ctime>
#include <cstdlib>
#include <cstring>
#include <optional>

#include "core/strings.h"

namespace strata {
namespace {

// Process-wide logging context, written once by main() before any threads
// start; atomics keep late readers (loader threads) well defined.
std::atomic<int> g_rank{0};
std::atomic<int> g_world{1};

// nullopt for a value that names no level (check_log_environment says so).
std::optional<LogLevel> parse_level(const char* v) {
  if (v == nullptr || *v == '\0' || std::strcmp(v, "info") == 0) return LogLevel::kInfo;
  if (std::strcmp(v, "debug") == 0) return LogLevel::kDebug;
  if (std::strcmp(v, "warn") == 0) return LogLevel::kWarn;
  if (std::strcmp(v, "error") == 0) return LogLevel::kError;
  return std::nullopt;
}

LogLevel level_from_env() {
  return parse_level(std::getenv("STRATA_LOG_LEVEL")).value_or(LogLevel::kInfo);
}

bool all_ranks_from_env() {
  const char* v = std::getenv("STRATA_LOG_ALL_RANKS");
  return v != nullptr && std::strcmp(v, "1") == 0;
}

const char* level_name(LogLevel level) {
  switch (level) {
    case LogLevel::kDebug: return "DEBUG";
    case LogLevel::kInfo: return "INFO";
    case LogLevel::kWarn: return "WARN";
    case LogLevel::kError: return "ERROR";
  }
  return "?";
}

// Lines that go to a file or a pipe start with the UTC time
// ("2026-12-02T14:40:01.123Z "); a terminal's reader sees them happen.
std::string timestamp() {
  static const bool terminal = ::isatty(STDERR_FILENO) == 1;
  if (terminal) return "";
  const auto now = std::chrono::system_clock::now();
  const std::time_t t = std::chrono::system_clock::to_time_t(now);
  const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                      now.time_since_epoch()).count() % 1000;
  std::tm tm{};
  ::gmtime_r(&t, &tm);
  char buf[40];
  const size_t n = std::strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%S", &tm);
  std::snprintf(buf + n, sizeof(buf) - n, ".%03dZ ", static_cast<int>(ms));
  return buf;
}

}  // namespace

void check_log_environment() {
  const char* v = std::getenv("STRATA_LOG_LEVEL");
  if (!parse_level(v)) {
    throw UsageError(str("STRATA_LOG_LEVEL=", printable(v), " is not a log level; use debug, info, "
                         "warn or error (or leave it unset for info)"));
  }
  const char* all = std::getenv("STRATA_LOG_ALL_RANKS");
  if (all != nullptr && *all != '\0' && std::strcmp(all, "0") != 0 && std::strcmp(all, "1") != 0) {
    throw UsageError(str("STRATA_LOG_ALL_RANKS=", printable(all), " must be 1 (every rank logs "
                         "INFO) or 0 (rank 0 only)"));
  }
}

void set_log_rank(int rank, int world) {
  g_rank = rank;
  g_world = world;
}

bool log_enabled(LogLevel level) {
  static const LogLevel min_level = level_from_env();
  static const bool all_ranks = all_ranks_from_env();
  if (level < min_level) return false;
  if (level >= LogLevel::kWarn) return true;
  return all_ranks || g_rank.load() == 0;
}

void log_line(LogLevel level, const std::string& message) {
  // One message is one line: a control character that reached a message
  // (text from outside that a caller did not pass through printable())
  // cannot forge or split lines.
  std::string body;
  body.reserve(message.size());
  for (char c : message) {
    const auto u = static_cast<unsigned char>(c);
    if (u < 0x20 || u == 0x7f) {
      static const char* digits = "0123456789abcdef";
      body += "\\x";
      body += digits[u >> 4];
      body += digits[u & 15];
    } else {
      body += c;
    }
  }
  std::string line = str(timestamp(), "[rank ", g_rank.load(), "/", g_world.load(), "] ",
                         level_name(level), " ", body, "\n");
  // One write() per line so lines from threads and ranks do not interleave.
  ssize_t ignored = ::write(STDERR_FILENO, line.data(), line.size());
  (void)ignored;
}

}  // namespace strata
