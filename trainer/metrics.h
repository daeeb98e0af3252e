// metrics.jsonl writing and the human progress display.
//
// metrics.jsonl has one JSON object per line with a "kind": "train", "eval"
// or "summary" (contract in ../shared/ARCHITECTURE.md). Only the rank that
// writes metrics (rank 0) has an enabled writer; on the others every call is
// a no-op, so the training loop needs no rank checks.
#pragma once

#include <cstdint>
#include <cstdio>
#include <string>

#include "core/json.h"

namespace strata::train {

class MetricsWriter {
 public:
  MetricsWriter(const std::string& path, bool enabled);
  ~MetricsWriter();
  MetricsWriter(const MetricsWriter&) = delete;
  MetricsWriter& operator=(const MetricsWriter&) = delete;

  // Appends one line and flushes it (readers tail the file).
  void write(const JsonObject& record);

  // For a run resumed at `step`: keeps only the records written up to that
  // checkpoint (step <= `step`, no "summary"), so the file reads as one
  // uninterrupted run. Rewrites the file atomically.
  static void rewind(const std::string& path, int64_t step);

 private:
  std::FILE* file_ = nullptr;
};

struct ProgressOptions {
  int64_t total_steps = 0;  // for step/total and the ETA
  int64_t log_every = 50;   // plain mode: steps between lines
  bool interactive = false; // true: redraw one status line (a terminal)
  int64_t start_step = 0;   // first step of this process (resumed runs)
};

// Interactive mode redraws one line on stderr (step/total, bar, loss, lr,
// samples/s, ETA) at most 10 times a second; plain mode logs a line every
// log_every steps.
class Progress {
 public:
  explicit Progress(ProgressOptions options);
  void update(int64_t step, int64_t epoch, double loss, double lr,
              double samples_per_s, double elapsed_s);
  // Erases the status line before other output; the next update redraws it.
  void clear();
  void finish();

 private:
  ProgressOptions options_;
  double last_draw_s_ = -1.0;
  bool drawn_ = false;
};

}  // namespace strata::train
