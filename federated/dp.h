// Differential privacy pieces shared by the server (central DP,
// strategy.cpp) and the edge client (local DP): noise that nobody can
// reproduce, clipping, and the local mechanism with its own accountant.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>

#include "federated/accountant.h"

namespace strata::fed {

// A CPU generator seeded from the OS's entropy source: privacy noise must
// not be reproducible from anything a reader of the recipe or the logs
// knows (a seeded run's noise could be subtracted).
at::Generator entropy_generator();

// Scales `v` down in place to L2 norm at most `c` (> 0); returns its norm
// before.
double clip_l2_(at::Tensor& v, double c);

// Local differential privacy (federated.privacy.mode: local): the client
// clips its whole update to L2 norm C and adds Gaussian noise of std z C to
// every element before the update leaves the device, so the server (or
// anyone who sees the update) learns it only through the Gaussian
// mechanism, without trusting anyone. Two clients' clipped updates differ by
// at most 2 C (the local model's neighbours are any two data sets), so each
// release is the Gaussian mechanism with noise multiplier z / 2 relative to
// that sensitivity; a client's releases compose (sampling rate 1: the
// client's whole data is in every update). With a budget, release() is
// refused once the next one would exceed it.
class LocalDp {
 public:
  // clip_norm > 0, noise_multiplier > 0, delta in (0, 1), target_epsilon
  // >= 0 (0: no budget).
  LocalDp(double clip_norm, double noise_multiplier, double target_epsilon, double delta);

  // Whether one more release stays within the budget.
  bool can_release() const;
  // The released update: `update` clipped and noised (a new tensor);
  // composes one release into the accounting.
  at::Tensor release(const at::Tensor& update);
  // Epsilon (at delta) spent by the releases so far, and after one more.
  double epsilon() const { return accountant_.spent(delta_).epsilon; }
  double epsilon_after_next() const;
  int64_t releases() const { return releases_; }
  double clip_norm() const { return clip_; }
  double noise_std() const { return z_ * clip_; }

 private:
  double clip_, z_, target_, delta_;
  RdpAccountant accountant_;
  int64_t releases_ = 0;
};

}  // namespace strata::fed
