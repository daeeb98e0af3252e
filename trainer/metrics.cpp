#include "trainer/metrics.h"

#include <unistd.h>

#include <nlohmann/json.hpp>

#include <cmath>
#include <cstring>
#include <sstream>

#include "core/error.h"
#include "core/fs.h"
#include "core/logging.h"
#include "core/strings.h"

namespace strata::train {

MetricsWriter::MetricsWriter(const std::string& path, bool enabled) {
  if (!enabled) return;
  make_dirs(parent_dir(path));
  file_ = std::fopen(path.c_str(), "a");
  STRATA_CHECK_T(IoError, file_ != nullptr, "cannot open '", path,
                 "' for appending; check the run directory's permissions");
}

MetricsWriter::~MetricsWriter() {
  if (file_ != nullptr) std::fclose(file_);
}

void MetricsWriter::write(const JsonObject& record) {
  if (file_ == nullptr) return;
  const std::string line = record.str() + "\n";
  STRATA_CHECK_T(IoError,
                 std::fwrite(line.data(), 1, line.size(), file_) == line.size() &&
                     std::fflush(file_) == 0,
                 "writing metrics.jsonl failed (disk full?)");
}

void MetricsWriter::rewind(const std::string& path, int64_t step) {
  if (!path_exists(path)) return;
  std::istringstream in(read_file(path));
  std::string line, kept;
  int64_t number = 0, torn = 0;
  while (std::getline(in, line)) {
    ++number;
    if (line.empty()) continue;
    const nlohmann::json r = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
    if (!r.is_object()) {  // a line cut short by a crash: not part of any run
      ++torn;
      continue;
    }
    if (r.value("kind", "") == "summary") continue;
    const auto s = r.find("step");
    if (s != r.end() && s->is_number_integer() && s->get<int64_t>() > step) continue;
    kept += line + "\n";
  }
  if (torn > 0) log_warn(path, ": dropped ", torn, " line(s) that are not JSON records");
  atomic_write_file(path, kept);
}

Progress::Progress(ProgressOptions options) : options_(options) {}

void Progress::update(int64_t step, int64_t epoch, double loss, double lr,
                      double samples_per_s, double elapsed_s) {
  const int64_t total = options_.total_steps;
  const int64_t done = step - options_.start_step;
  const double eta =
      done > 0 ? elapsed_s / done * static_cast<double>(total - step) : -1.0;
  if (!options_.interactive) {
    if (step % options_.log_every == 0 || step == total) {
      char line[160];
      std::snprintf(line, sizeof(line),
                    "step %lld/%lld epoch %lld loss %.4f lr %.4g %.0f "
                    "samples/s ETA %s",
                    static_cast<long long>(step), static_cast<long long>(total),
                    static_cast<long long>(epoch), loss, lr, samples_per_s,
                    format_duration(eta).c_str());
      log_info(line);
    }
    return;
  }
  if (elapsed_s - last_draw_s_ < 0.1 && step != total) return;
  last_draw_s_ = elapsed_s;
  const int width = 24;
  const int filled = total > 0 ? static_cast<int>(width * step / total) : 0;
  // Before the first log step there is no loss or rate yet: show "-".
  char loss_text[32] = "-", rate_text[32] = "-";
  if (std::isfinite(loss)) std::snprintf(loss_text, sizeof(loss_text), "%.4f", loss);
  if (samples_per_s > 0) {
    std::snprintf(rate_text, sizeof(rate_text), "%.0f", samples_per_s);
  }
  char line[256];
  std::snprintf(line, sizeof(line),
                "\r\033[K%lld/%lld [%s%s] epoch %lld  loss %s  lr %.3g  "
                "%s samples/s  ETA %s",
                static_cast<long long>(step), static_cast<long long>(total),
                std::string(filled, '#').c_str(),
                std::string(width - filled, '.').c_str(),
                static_cast<long long>(epoch), loss_text, lr, rate_text,
                format_duration(eta).c_str());
  ssize_t ignored = ::write(STDERR_FILENO, line, std::strlen(line));
  (void)ignored;
  drawn_ = true;
}

void Progress::clear() {
  if (!drawn_) return;
  const char erase[] = "\r\033[K";
  ssize_t ignored = ::write(STDERR_FILENO, erase, sizeof(erase) - 1);
  (void)ignored;
  drawn_ = false;
  last_draw_s_ = -1.0;
}

void Progress::finish() {
  if (!drawn_) return;
  ssize_t ignored = ::write(STDERR_FILENO, "\n", 1);
  (void)ignored;
  drawn_ = false;
}

}  // namespace strata::train
