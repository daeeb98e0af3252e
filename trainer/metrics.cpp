#include "trainer/metrics.h"

#include <sys/ioctl.h>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include <chrono>
#include <cmath>
#include <cstring>
#include <sstream>
#include <vector>

#include "core/error.h"
#include "core/fs.h"
#include "core/logging.h"
#include "core/strings.h"
#include "trainer/tensorboard.h"

namespace strata::train {

MetricsWriter::MetricsWriter(const std::string& path, bool enabled, bool tensorboard) {
  if (!enabled) return;
  make_dirs(parent_dir(path));
  file_ = std::fopen(path.c_str(), "a");
  STRATA_CHECK_T(IoError, file_ != nullptr, "cannot open '", path,
                 "' for appending; check the run directory's permissions");
  if (tensorboard) tensorboard_ = std::make_unique<TensorBoardWriter>(parent_dir(path));
}

MetricsWriter::~MetricsWriter() {
  if (file_ != nullptr) std::fclose(file_);
}

namespace {

// A record's scalars for TensorBoard: its numbers but the coordinates.
std::vector<std::pair<std::string, double>> scalars_of(const nlohmann::ordered_json& r,
                                                       const std::string& kind) {
  std::vector<std::pair<std::string, double>> out;
  for (const auto& [key, v] : r.items()) {
    if (key == "step" || key == "epoch" || key == "version" || key == "round" ||
        key == "time_s" || !v.is_number()) {
      continue;
    }
    out.emplace_back(kind + "/" + key, v.get<double>());
  }
  return out;
}

}  // namespace

void MetricsWriter::write(const JsonObject& record) {
  if (file_ == nullptr) return;
  const std::string line = record.str() + "\n";
  STRATA_CHECK_T(IoError,
                 std::fwrite(line.data(), 1, line.size(), file_) == line.size() &&
                     std::fflush(file_) == 0,
                 "writing metrics.jsonl failed (disk full?)");
  if (!tensorboard_) return;
  const nlohmann::ordered_json& r = record.json();
  const auto kind = r.find("kind");
  const auto step = r.find("step");
  if (kind == r.end() || !kind->is_string() || step == r.end() || !step->is_number_integer()) {
    return;
  }
  const std::string k = kind->get<std::string>();
  if (k != "train" && k != "eval" && k != "version" && k != "online") return;
  const auto scalars = scalars_of(r, k);
  if (scalars.empty()) return;
  const double wall = std::chrono::duration<double>(
                          std::chrono::system_clock::now().time_since_epoch()).count();
  tensorboard_->scalars(step->get<int64_t>(), wall, scalars);
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
    const auto kind = r.find("kind");
    if (kind != r.end() && (*kind == "summary" || *kind == "stopped")) continue;
    const auto s = r.find("step");
    if (s != r.end() && s->is_number_integer() && s->get<int64_t>() > step) continue;
    // A prune record at the resume step is the mask update before the next
    // step, which the resumed run makes (and records) again.
    if (kind != r.end() && *kind == "prune" && s != r.end() && s->is_number_integer() &&
        s->get<int64_t>() == step) {
      continue;
    }
    kept += line + "\n";
  }
  if (torn > 0) log_warn(path, ": dropped ", torn, " line(s) that are not JSON records");
  atomic_write_file(path, kept);
}

Progress::Progress(ProgressOptions options) : options_(options) {}

bool Progress::due(double elapsed_s) const {
  return options_.interactive && (last_draw_s_ < 0 || elapsed_s - last_draw_s_ >= 0.1);
}

int Progress::columns() const {
  if (options_.width > 0) return options_.width;
  winsize ws{};
  if (::ioctl(STDERR_FILENO, TIOCGWINSZ, &ws) == 0 && ws.ws_col > 0) return ws.ws_col;
  return 80;
}

namespace {

std::string fmt(const char* format, double v) {
  char buf[64];
  std::snprintf(buf, sizeof(buf), format, v);
  return buf;
}

// Samples/s in three or four significant digits: 812, 4.51k, 45.1k.
std::string rate_text(double r) {
  if (r >= 1e5) return fmt("%.0fk", r / 1e3);
  if (r >= 1e4) return fmt("%.1fk", r / 1e3);
  if (r >= 1e3) return fmt("%.2fk", r / 1e3);
  return fmt("%.0f", r);
}

}  // namespace

double Progress::eta_s(const ProgressState& s) const {
  const int64_t done = s.step - options_.start_step;
  return done > 0 ? s.elapsed_s / static_cast<double>(done) *
                        static_cast<double>(options_.total_steps - s.step)
                  : -1.0;
}

std::string Progress::line(const ProgressState& s, int width) const {
  const int64_t total = options_.total_steps;
  const double eta = eta_s(s);
  const std::string counter = str(s.step, "/", total);
  // By priority; the first ones stay when the terminal is narrow.
  std::vector<std::string> fields;
  fields.push_back(std::isfinite(s.loss) ? "loss " + fmt("%.4f", s.loss) : "loss -");
  fields.push_back((s.samples_per_s > 0 ? rate_text(s.samples_per_s) : "-") + " samples/s");
  fields.push_back(format_duration(s.elapsed_s) + "<" + (s.step >= total ? "0s" : format_duration(eta)));
  fields.push_back("lr " + fmt("%.3g", s.lr));
  fields.push_back(str("epoch ", s.epoch));
  const auto joined = [&](size_t n) {
    std::string t;
    for (size_t i = 0; i < n; ++i) t += "  " + fields[i];
    return t;
  };
  // Keep one column free: writing the last column makes some terminals wrap.
  // The bar (at least 10 columns) goes before the last fields; without
  // room even next to the loss, the line goes without it.
  const int room = std::max(1, width - 1);
  const auto used = [&](size_t k, int bar_columns) {
    return static_cast<int>(counter.size() + joined(k).size()) + (bar_columns > 0 ? bar_columns + 3 : 0);
  };
  size_t n = fields.size();
  while (n > 1 && used(n, 10) > room) --n;
  const bool with_bar = used(n, 10) <= room;
  if (!with_bar) {
    n = fields.size();
    while (n > 0 && used(n, 0) > room) --n;
  }
  std::string text = counter;
  const std::string tail = joined(n);
  const int bar = with_bar ? room - used(n, 0) - 3 : 0;  // " [" "]"
  if (with_bar) {
    const int w = std::min(bar, 40);
    const int filled = total > 0 ? static_cast<int>(w * std::min(s.step, total) / total) : 0;
    text += " [" + std::string(static_cast<size_t>(filled), '#') +
            std::string(static_cast<size_t>(w - filled), '.') + "]";
  }
  text += tail;
  if (static_cast<int>(text.size()) > room) text.resize(static_cast<size_t>(room));
  return text;
}

void Progress::draw(const std::string& text) {
  const std::string out = "\r" + text + "\033[K";
  ssize_t ignored = ::write(STDERR_FILENO, out.data(), out.size());
  (void)ignored;
  drawn_ = true;
}

void Progress::update(const ProgressState& s) {
  const int64_t total = options_.total_steps;
  if (!options_.interactive) {
    if (s.step % options_.log_every == 0 || s.step == total) {
      log_info("step ", s.step, "/", total, " epoch ", s.epoch, " loss ",
               std::isfinite(s.loss) ? fmt("%.4f", s.loss) : "-", " lr ", fmt("%.4g", s.lr),
               " ", fmt("%.0f", s.samples_per_s), " samples/s elapsed ",
               format_duration(s.elapsed_s), " ETA ", format_duration(eta_s(s)));
    }
    return;
  }
  last_ = s;
  have_state_ = true;
  if (!due(s.elapsed_s) && s.step != total) return;
  last_draw_s_ = s.elapsed_s;
  draw(line(s, columns()));
}

void Progress::evaluating(const std::string& split, int64_t done, int64_t total) {
  if (!options_.interactive) return;
  const int room = std::max(1, columns() - 1);
  std::string text = str("evaluating ", split, ": ", done, "/", total, " samples");
  if (static_cast<int>(text.size()) > room) text.resize(static_cast<size_t>(room));
  draw(text);
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
  if (!options_.interactive || !have_state_) return;
  draw(line(last_, columns()));
  ssize_t ignored = ::write(STDERR_FILENO, "\n", 1);
  (void)ignored;
  drawn_ = false;
  have_state_ = false;
}

}  // namespace strata::train
