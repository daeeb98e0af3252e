// Privacy accounting for differentially private federated learning: Rényi
// differential privacy (RDP, Mironov 2017) of the sampled Gaussian mechanism
// (Mironov, Talwar, Zhang 2019), composed over rounds and converted to
// (epsilon, delta).
//
// One round of DP-FedAvg (McMahan et al. 2018) is the sampled Gaussian
// mechanism: each client of the population takes part with probability q
// (its clipped update has L2 norm <= C), and the sum of the updates gets
// Gaussian noise of std z C (z: the noise multiplier). Its RDP at order
// a > 1 is log(A_a) / (a - 1) with A_a the a-th moment of the ratio of
// the mixture q N(1, z^2) + (1 - q) N(0, z^2) to N(0, z^2) (Mironov et al.
// 2019, Sections 3.3 and 3.4: a finite sum for integer a, a series in erfc
// terms for fractional a); RDP composes by addition. The conversion to
// (epsilon, delta) is the improved one of Balle et al. 2020 (Theorem 21),
// minimised over the orders:
//   epsilon = min_a  rdp_a - (log delta + log a) / (a - 1) + log((a - 1) / a)
// as Opacus' RDPAccountant and Google's dp-accounting compute it (checked
// against both on committed vectors, tests/data/dp_vectors.json).
//
// Everything here is double-precision arithmetic on the host; no LibTorch.
#pragma once

#include <cstdint>
#include <vector>

namespace strata::fed {

// Orders 1.1, 1.2, ..., 10.9, 11, 12, ..., 63, 128, 256 (Opacus' defaults, 1.1-10.9
// and 12-63, plus 11 and the large orders 128 and 256 for small epsilons).
std::vector<double> default_rdp_orders();

// The RDP at `order` (> 1) of one sampled Gaussian mechanism with sampling
// rate q in [0, 1] and noise multiplier z >= 0 (infinite for z = 0 and q > 0).
double sampled_gaussian_rdp(double q, double z, double order);

struct PrivacySpent {
  double epsilon = 0.0;  // infinite when no order gives a finite bound
  double order = 0.0;    // the order that gave it
};

// (epsilon, delta) from RDP values at `orders` (the same length), delta in (0, 1);
// epsilon 0 while an order's RDP is 0 (nothing composed yet).
PrivacySpent rdp_to_epsilon(const std::vector<double>& orders, const std::vector<double>& rdp,
                            double delta);

// The RDP of a sequence of rounds, each a sampled Gaussian mechanism.
class RdpAccountant {
 public:
  explicit RdpAccountant(std::vector<double> orders = default_rdp_orders());

  // `steps` rounds at sampling rate q with noise multiplier z.
  void compose(double q, double z, int64_t steps = 1);
  PrivacySpent spent(double delta) const { return rdp_to_epsilon(orders_, rdp_, delta); }
  // What spent() would say after `steps` more rounds at (q, z).
  PrivacySpent spent_after(double q, double z, int64_t steps, double delta) const;

  const std::vector<double>& orders() const { return orders_; }
  // The accumulated RDP per order: what a restarted server puts back.
  const std::vector<double>& rdp() const { return rdp_; }
  void restore(std::vector<double> rdp);

 private:
  // One mechanism's RDP per order at (q, z), kept for the last (q, z): a
  // server composes the same mechanism every aggregation.
  const std::vector<double>& step_rdp(double q, double z) const;

  std::vector<double> orders_;
  std::vector<double> rdp_;
  mutable double step_q_ = -1, step_z_ = -1;
  mutable std::vector<double> step_;
};

// The smallest noise multiplier (within a relative 1e-4) with which
// `steps` rounds at sampling rate q spend at most `target_epsilon` at
// `delta`; infinite when even z = 1e4 does not reach it.
double noise_multiplier_for(double target_epsilon, double delta, double q, int64_t steps);

}  // namespace strata::fed
