#include "federated/dp.h"

#include <ATen/CPUGeneratorImpl.h>

#include <random>

#include "core/error.h"

namespace strata::fed {

at::Generator entropy_generator() {
  std::random_device entropy;
  const uint64_t seed = (static_cast<uint64_t>(entropy()) << 32) | entropy();
  return at::detail::createCPUGenerator(seed);
}

double clip_l2_(at::Tensor& v, double c) {
  STRATA_INTERNAL_ASSERT(c > 0);
  const double norm = v.norm().item<double>();
  if (norm > c) v.mul_(c / norm);
  return norm;
}

LocalDp::LocalDp(double clip_norm, double noise_multiplier, double target_epsilon, double delta)
    : clip_(clip_norm), z_(noise_multiplier), target_(target_epsilon), delta_(delta) {
  STRATA_INTERNAL_ASSERT(clip_ > 0 && z_ > 0 && target_ >= 0 && delta_ > 0 && delta_ < 1);
}

double LocalDp::epsilon_after_next() const {
  // Sensitivity 2 C: the noise is z / 2 times it.
  return accountant_.spent_after(1.0, z_ / 2, 1, delta_).epsilon;
}

bool LocalDp::can_release() const { return target_ == 0 || epsilon_after_next() <= target_; }

at::Tensor LocalDp::release(const at::Tensor& update) {
  STRATA_INTERNAL_ASSERT(can_release());
  at::Tensor out = update.to(at::kFloat).clone();
  clip_l2_(out, clip_);
  at::Generator gen = entropy_generator();
  out.add_(at::randn(out.sizes(), gen, at::TensorOptions(at::kFloat)), z_ * clip_);
  accountant_.compose(1.0, z_ / 2);
  ++releases_;
  return out;
}

}  // namespace strata::fed
