// Prequential (test-then-train) evaluation: every training micro-batch is
// scored by the output of its own training forward, which the step makes
// before it trains on that micro-batch -- the online learner's prediction
// of instances it has not learned from yet (Dawid 1984; the "online
// cumulative error" of Sahoo et al. 2018).
//
// Errors are counted on the device (no host sync per step); a window is
// closed at every train record (run.log_every steps), when the ranks'
// counts are summed and the "online" record written:
//   {"kind": "online", "step", "instances", "error" (cumulative),
//    "window_instances", "window_error", "alpha" (a mixture model's
//    weights, hbp), "time_s"}
// The counts travel in checkpoints, so a resumed run's records and final
// error are the uninterrupted run's.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <utility>
#include <vector>

#include "core/json.h"
#include "distributed/communicator.h"

namespace strata::train {

class Prequential {
 public:
  explicit Prequential(at::Device device);

  // A training micro-batch's output (logits [..., K]) and targets [...],
  // before its step.
  void score(const at::Tensor& output, const at::Tensor& targets);

  // Collective over `dp` (null: one rank): closes the window and returns
  // its record (without time_s); `mixture`: the model's mixture weights, or
  // undefined.
  JsonObject close_window(int64_t step, dist::Communicator* dp, const at::Tensor& mixture);
  // Collective over `dp`: closes the window and returns its [errors,
  // instances], summed over the ranks (close_window without the record).
  std::pair<double, int64_t> close(dist::Communicator* dp);

  // The cumulative error and instances of the closed windows.
  double error() const { return instances_ > 0 ? errors_ / static_cast<double>(instances_) : 0.0; }
  int64_t instances() const { return instances_; }

  // Collective: [errors, instances, window errors, window instances], the
  // windows summed over `dp`, for a checkpoint; restore() puts them back
  // (the open window's counts on the first rank).
  std::vector<double> state(dist::Communicator* dp) const;
  void restore(const std::vector<double>& state, bool first_rank);

 private:
  // [errors, instances] of the open window, summed over dp.
  std::pair<double, double> window_sum(dist::Communicator* dp) const;

  at::Device device_;
  at::Tensor window_errors_;  // this rank's, on the device (double)
  int64_t window_instances_ = 0;
  double errors_ = 0.0;       // closed windows, all ranks
  int64_t instances_ = 0;
};

}  // namespace strata::train
