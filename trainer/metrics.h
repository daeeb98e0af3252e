// metrics.jsonl writing and the human progress display.
//
// metrics.jsonl has one JSON object per line with a "kind": "train", "eval"
// or "summary" (contract in ../shared/ARCHITECTURE.md). Only the rank that
// writes metrics (rank 0) has an enabled writer; on the others every call is
// a no-op, so the training loop needs no rank checks.
#pragma once

#include <cstdint>
#include <cstdio>
#include <memory>
#include <string>

#include "core/json.h"

namespace strata::train {

class TensorBoardWriter;

class MetricsWriter {
 public:
  // With `tensorboard` (metrics.tensorboard), every number of a train, online,
  // eval or version record is also a TensorBoard scalar "<kind>/<key>" at
  // the record's step, in an event file next to metrics.jsonl
  // (trainer/tensorboard.h).
  MetricsWriter(const std::string& path, bool enabled, bool tensorboard = false);
  ~MetricsWriter();
  MetricsWriter(const MetricsWriter&) = delete;
  MetricsWriter& operator=(const MetricsWriter&) = delete;

  // Appends one line and flushes it (readers tail the file).
  void write(const JsonObject& record);

  // For a run resumed at `step`: keeps only the records written up to that
  // checkpoint (step <= `step`, no "summary" or "stopped"), so the file
  // reads as one uninterrupted run. Rewrites the file atomically.
  static void rewind(const std::string& path, int64_t step);

 private:
  std::FILE* file_ = nullptr;
  std::unique_ptr<TensorBoardWriter> tensorboard_;
};

struct ProgressOptions {
  int64_t total_steps = 0;  // for step/total and the ETA
  int64_t log_every = 50;   // plain mode: steps between lines
  bool interactive = false; // true: redraw one status line (a terminal)
  int64_t start_step = 0;   // first step of this process (resumed runs)
  int width = 0;            // columns; 0: the terminal's, asked at every draw
};

// What the status line shows of training.
struct ProgressState {
  int64_t step = 0;
  int64_t epoch = 0;
  double loss = 0.0;          // NaN: none yet
  double lr = 0.0;
  double samples_per_s = 0.0;  // 0: none yet
  double elapsed_s = 0.0;      // since this process started training
};

// Interactive mode (a terminal, as tqdm does) redraws one line on stderr in
// place, at most 10 times a second, fitted to the terminal's width (fields
// dropped right to left, the bar takes what is left): step/total, the bar,
// loss, samples/s, lr, epoch, elapsed<ETA. Before a log line it is erased
// and then redrawn; evaluation shows its own line; at the end the final
// state stays on screen. Plain mode (a pipe, a file) logs a line every
// log_every steps instead.
class Progress {
 public:
  explicit Progress(ProgressOptions options);
  // Whether update() would draw now: the caller computes the live loss and
  // rate (a host sync) only then.
  bool due(double elapsed_s) const;
  void update(const ProgressState& s);
  // Evaluation: `done` of `total` samples of `split` (interactive only).
  void evaluating(const std::string& split, int64_t done, int64_t total);
  // Erases the status line before other output; the next update redraws it.
  void clear();
  // The last state drawn once more and kept on screen.
  void finish();

  // The line for `s` in `width` columns (no control characters).
  std::string line(const ProgressState& s, int width) const;

 private:
  void draw(const std::string& text);
  double eta_s(const ProgressState& s) const;  // -1: not known yet
  int columns() const;

  ProgressOptions options_;
  double last_draw_s_ = -1.0;
  bool drawn_ = false;
  bool have_state_ = false;
  ProgressState last_;
};

}  // namespace strata::train
