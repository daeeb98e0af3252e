#include "trainer/amp.h"

#include <ATen/autocast_mode.h>
#include <torch/version.h>

#include "core/error.h"

// The autocast switches: one call per device type since LibTorch 2.4,
// per-device functions before.
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 4)
#define STRATA_AUTOCAST_BY_DEVICE_TYPE 1
#else
#define STRATA_AUTOCAST_BY_DEVICE_TYPE 0
#endif

namespace strata::train {
namespace {

bool autocast_enabled(at::DeviceType d) {
#if STRATA_AUTOCAST_BY_DEVICE_TYPE
  return at::autocast::is_autocast_enabled(d);
#else
  return d == at::kCUDA ? at::autocast::is_enabled() : at::autocast::is_cpu_enabled();
#endif
}

void set_autocast_enabled(at::DeviceType d, bool on) {
#if STRATA_AUTOCAST_BY_DEVICE_TYPE
  at::autocast::set_autocast_enabled(d, on);
#else
  if (d == at::kCUDA) {
    at::autocast::set_enabled(on);
  } else {
    at::autocast::set_cpu_enabled(on);
  }
#endif
}

at::ScalarType autocast_dtype(at::DeviceType d) {
#if STRATA_AUTOCAST_BY_DEVICE_TYPE
  return at::autocast::get_autocast_dtype(d);
#else
  return d == at::kCUDA ? at::autocast::get_autocast_gpu_dtype()
                        : at::autocast::get_autocast_cpu_dtype();
#endif
}

void set_autocast_dtype(at::DeviceType d, at::ScalarType t) {
#if STRATA_AUTOCAST_BY_DEVICE_TYPE
  at::autocast::set_autocast_dtype(d, t);
#else
  if (d == at::kCUDA) {
    at::autocast::set_autocast_gpu_dtype(t);
  } else {
    at::autocast::set_autocast_cpu_dtype(t);
  }
#endif
}

}  // namespace

AutocastGuard::AutocastGuard(at::DeviceType device_type, at::ScalarType dtype, bool enabled)
    : device_type_(device_type), enabled_(enabled && dtype != at::kFloat) {
  if (!enabled_) return;
  STRATA_CHECK_T(ConfigError, device_type == at::kCUDA || dtype == at::kBFloat16,
                 "train.precision: fp16 autocast needs a GPU (run.device: cuda); "
                 "use bf16 on the CPU");
  prev_enabled_ = autocast_enabled(device_type_);
  prev_dtype_ = autocast_dtype(device_type_);
  set_autocast_enabled(device_type_, true);
  set_autocast_dtype(device_type_, dtype);
  at::autocast::increment_nesting();
}

AutocastGuard::~AutocastGuard() {
  if (!enabled_) return;
  // The cast cache holds low-precision copies of the weights for one
  // forward; drop them when the outermost region ends.
  if (at::autocast::decrement_nesting() == 0) at::autocast::clear_cache();
  set_autocast_enabled(device_type_, prev_enabled_);
  set_autocast_dtype(device_type_, prev_dtype_);
}

AutocastState autocast_state(at::DeviceType device_type) {
  return {autocast_enabled(device_type), autocast_dtype(device_type)};
}

at::ScalarType precision_dtype(const std::string& precision) {
  if (precision == "bf16") return at::kBFloat16;
  if (precision == "fp16") return at::kHalf;
  STRATA_CHECK_T(ConfigError, precision == "fp32", "train.precision = '", precision,
                 "'; use fp32, bf16 or fp16");
  return at::kFloat;
}

LossScaler::LossScaler(LossScalerOptions options)
    : options_(options), scale_(options.init_scale) {
  STRATA_CHECK_T(ConfigError, options_.init_scale > 0 && options_.growth_factor > 1 &&
                     options_.backoff_factor > 0 && options_.backoff_factor < 1 &&
                     options_.growth_interval > 0,
                 "loss scaler: need init_scale > 0, growth_factor > 1, "
                 "0 < backoff_factor < 1 and growth_interval > 0");
}

at::Tensor LossScaler::scale_loss(const at::Tensor& loss) const {
  return options_.enabled ? loss * scale_ : loss;
}

bool LossScaler::unscale(const std::vector<at::Tensor>& params,
                         const std::function<void(at::Tensor&)>& max_over_model) {
  unscaled_ = true;
  found_inf_ = false;
  if (!options_.enabled) return true;
  std::vector<at::Tensor> grads;
  for (const auto& p : params) {
    if (p.grad().defined()) grads.push_back(p.grad());
  }
  if (grads.empty() && !max_over_model) return true;
  const auto opts = grads.empty() ? at::TensorOptions(at::kFloat)
                                  : grads[0].options().dtype(at::kFloat);
  at::Tensor found = at::zeros({1}, opts);
  if (grads.empty()) {
    max_over_model(found);
    found_inf_ = found.item<float>() > 0;
    return !found_inf_;
  }
  if (grads[0].is_cuda()) {
    // GradScaler's fused kernel: one pass, one flag, no host sync yet.
    at::_amp_foreach_non_finite_check_and_unscale_(grads, found,
                                                   at::full({1}, 1.0 / scale_, opts));
  } else {
    for (auto& g : grads) {
      found += at::logical_not(at::isfinite(g)).any().to(at::kFloat);
      g.mul_(1.0 / scale_);
    }
  }
  if (max_over_model) max_over_model(found);
  found_inf_ = found.item<float>() > 0;  // the one host sync per step
  return !found_inf_;
}

bool LossScaler::update() {
  if (!options_.enabled) return true;
  STRATA_INTERNAL_ASSERT(unscaled_, "LossScaler::update before unscale");
  unscaled_ = false;
  if (found_inf_) {
    scale_ *= options_.backoff_factor;
    growth_tracker_ = 0;
    ++skipped_;
    return false;
  }
  if (++growth_tracker_ == options_.growth_interval) {
    scale_ *= options_.growth_factor;
    growth_tracker_ = 0;
  }
  return true;
}

void LossScaler::restore(double scale, int64_t growth_tracker) {
  STRATA_CHECK_T(Error, scale > 0 && growth_tracker >= 0, "checkpointed loss scale ",
                 scale, " / growth tracker ", growth_tracker, " is invalid");
  scale_ = scale;
  growth_tracker_ = growth_tracker;
}

}  // namespace strata::train
