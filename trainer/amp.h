// Mixed precision: autocast regions and a dynamic loss scaler.
//
// Note [Mixed precision]: weights, gradients and optimizer state stay fp32
// ("master weights"); inside an AutocastGuard, LibTorch's autocast runs
// matmuls and convolutions in bf16 or fp16 and keeps reductions, norms and
// the loss in fp32. fp16's narrow range needs loss scaling: the loss is
// multiplied by S before backward, gradients are divided by S before
// clipping and the step, and S adapts (GradScaler semantics: S0 = 2^16,
// x0.5 and the step skipped when any gradient is inf/NaN, x2 after
// `growth_interval` clean steps). bf16 has fp32's range and needs none.
//
// Under data parallelism the scaler unscales after the gradient all-reduce:
// every rank then holds the same averaged gradients, so every rank finds
// the same inf/NaN and skips (or steps) together without another
// collective.
//
// LibTorch 1.13 and 2.x name the autocast switches differently; amp.cpp is
// the one place that knows.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <functional>
#include <vector>

namespace strata::train {

// Enables autocast for `device_type` with `dtype` for its lifetime (nests;
// restores the previous state and clears the cast cache at the outermost
// exit). A disabled guard does nothing.
class AutocastGuard {
 public:
  AutocastGuard(at::DeviceType device_type, at::ScalarType dtype, bool enabled = true);
  ~AutocastGuard();
  AutocastGuard(const AutocastGuard&) = delete;
  AutocastGuard& operator=(const AutocastGuard&) = delete;

 private:
  at::DeviceType device_type_;
  bool enabled_;
  bool prev_enabled_ = false;
  at::ScalarType prev_dtype_ = at::kFloat;
};

// The autocast switch and dtype in effect for a device type (what
// activation checkpointing replays when it recomputes a block).
struct AutocastState {
  bool enabled = false;
  at::ScalarType dtype = at::kFloat;
};
AutocastState autocast_state(at::DeviceType device_type);

// The compute dtype of train.precision ("fp32" -> kFloat).
at::ScalarType precision_dtype(const std::string& precision);

struct LossScalerOptions {
  bool enabled = true;
  double init_scale = 65536.0;  // 2^16
  double growth_factor = 2.0;
  double backoff_factor = 0.5;
  int64_t growth_interval = 2000;
};

class LossScaler {
 public:
  explicit LossScaler(LossScalerOptions options = {});

  bool enabled() const { return options_.enabled; }
  double scale() const { return scale_; }
  int64_t growth_tracker() const { return growth_tracker_; }

  // loss * S (the loss itself when disabled).
  at::Tensor scale_loss(const at::Tensor& loss) const;
  // Divides every defined gradient by S in place and records whether any
  // is inf/NaN. Call once per step, after the gradient all-reduce and before
  // clipping. Returns true when the gradients are finite.
  // Model parallelism: max_over_model takes the maximum of a flag over
  // the ranks holding the model's other parts, so that all skip together.
  bool unscale(const std::vector<at::Tensor>& params,
               const std::function<void(at::Tensor&)>& max_over_model = {});
  // After unscale: true when the optimizer should step (finite gradients).
  // Updates S: backoff on overflow, growth after growth_interval clean steps.
  bool update();
  // Steps skipped so far (overflows).
  int64_t skipped_steps() const { return skipped_; }

  // Checkpointed state (TrainState carries it).
  void restore(double scale, int64_t growth_tracker);

 private:
  LossScalerOptions options_;
  double scale_;
  int64_t growth_tracker_ = 0;
  int64_t skipped_ = 0;
  bool found_inf_ = false;
  bool unscaled_ = false;
};

}  // namespace strata::train
