#include "federated/accountant.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "core/error.h"

namespace strata::fed {
namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();

// log(exp(a) + exp(b)).
double log_add(double a, double b) {
  const double lo = std::min(a, b), hi = std::max(a, b);
  if (lo == -kInf) return hi;
  return std::log1p(std::exp(lo - hi)) + hi;
}

// log(exp(a) - exp(b)), a >= b (the series' terms never make it negative;
// rounding may: then the difference is treated as nothing left).
double log_sub(double a, double b) {
  if (b == -kInf) return a;
  if (a <= b) return -kInf;
  const double d = std::expm1(a - b);
  return std::isinf(d) ? a : std::log(d) + b;
}

// log(erfc(x)), also where erfc underflows (x > ~26): its asymptotic series.
double log_erfc(double x) {
  const double r = std::erfc(x);
  if (r > 0.0) return std::log(r);
  const double x2 = x * x;
  return -0.5 * std::log(M_PI) - std::log(x) - x2 - 0.5 / x2 + 0.625 / (x2 * x2) -
         37.0 / 24.0 / (x2 * x2 * x2) + 353.0 / 64.0 / (x2 * x2 * x2 * x2);
}

// log A_a for integer a: sum_i C(a, i) q^i (1-q)^(a-i) exp((i^2 - i) / (2 z^2)).
double log_a_integer(double q, double z, int64_t a) {
  double log_a = -kInf;
  const double lq = std::log(q), l1q = std::log1p(-q);
  const double ad = static_cast<double>(a);
  for (int64_t i = 0; i <= a; ++i) {
    const double id = static_cast<double>(i);
    const double log_binom = std::lgamma(ad + 1) - std::lgamma(id + 1) - std::lgamma(ad - id + 1);
    log_a = log_add(log_a, log_binom + id * lq + (ad - id) * l1q + (id * id - id) / (2 * z * z));
  }
  return log_a;
}

// log A_a for fractional a: the two series of Mironov et al. 2019 (Section
// 3.4), summed until both terms are below e^-30.
double log_a_fractional(double q, double z, double a) {
  double log_a0 = -kInf, log_a1 = -kInf;
  const double z0 = z * z * std::log(1 / q - 1) + 0.5;
  const double lq = std::log(q), l1q = std::log1p(-q);
  double coef = 1.0;  // C(a, i), by the product recurrence (sign included)
  for (int64_t i = 0;; ++i) {
    if (i > 0) coef *= (a - static_cast<double>(i) + 1) / static_cast<double>(i);
    const double id = static_cast<double>(i), j = a - id;
    const double log_coef = std::log(std::abs(coef));
    const double log_t0 = log_coef + id * lq + j * l1q;
    const double log_t1 = log_coef + j * lq + id * l1q;
    const double log_e0 = std::log(0.5) + log_erfc((id - z0) / (M_SQRT2 * z));
    const double log_e1 = std::log(0.5) + log_erfc((z0 - j) / (M_SQRT2 * z));
    const double log_s0 = log_t0 + (id * id - id) / (2 * z * z) + log_e0;
    const double log_s1 = log_t1 + (j * j - j) / (2 * z * z) + log_e1;
    if (coef > 0) {
      log_a0 = log_add(log_a0, log_s0);
      log_a1 = log_add(log_a1, log_s1);
    } else {
      log_a0 = log_sub(log_a0, log_s0);
      log_a1 = log_sub(log_a1, log_s1);
    }
    if (std::max(log_s0, log_s1) < -30 || i > 100000) break;
  }
  return log_add(log_a0, log_a1);
}

}  // namespace

std::vector<double> default_rdp_orders() {
  std::vector<double> orders;
  for (int x = 1; x < 100; ++x) orders.push_back(1.0 + x / 10.0);
  for (int a = 11; a < 64; ++a) orders.push_back(a);
  orders.push_back(128);
  orders.push_back(256);
  return orders;
}

double sampled_gaussian_rdp(double q, double z, double order) {
  STRATA_CHECK_T(Error, q >= 0 && q <= 1 && z >= 0 && order > 1, "sampled_gaussian_rdp: q = ", q,
                 ", z = ", z, ", order = ", order, " (need q in [0, 1], z >= 0, order > 1)");
  if (q == 0) return 0.0;
  if (z == 0) return kInf;
  if (q == 1) return order / (2 * z * z);
  const bool integer = order == std::floor(order);
  const double log_a = integer ? log_a_integer(q, z, static_cast<int64_t>(order))
                               : log_a_fractional(q, z, order);
  return log_a / (order - 1);
}

PrivacySpent rdp_to_epsilon(const std::vector<double>& orders, const std::vector<double>& rdp,
                            double delta) {
  STRATA_CHECK_T(Error, orders.size() == rdp.size() && delta > 0 && delta < 1,
                 "rdp_to_epsilon: ", orders.size(), " orders, ", rdp.size(),
                 " RDP values, delta ", delta);
  PrivacySpent best{kInf, 0.0};
  for (size_t i = 0; i < orders.size(); ++i) {
    const double a = orders[i];
    // A Renyi divergence of 0 at any order: the outputs' distributions are
    // the same (nothing has run), whatever the conversion's slack says.
    if (rdp[i] == 0) return {0.0, a};
    const double eps = rdp[i] - (std::log(delta) + std::log(a)) / (a - 1) + std::log((a - 1) / a);
    if (eps < best.epsilon) best = {std::max(eps, 0.0), a};
  }
  return best;
}

RdpAccountant::RdpAccountant(std::vector<double> orders)
    : orders_(std::move(orders)), rdp_(orders_.size(), 0.0) {}

const std::vector<double>& RdpAccountant::step_rdp(double q, double z) const {
  if (q != step_q_ || z != step_z_ || step_.size() != orders_.size()) {
    step_.clear();
    for (const double a : orders_) step_.push_back(sampled_gaussian_rdp(q, z, a));
    step_q_ = q;
    step_z_ = z;
  }
  return step_;
}

void RdpAccountant::compose(double q, double z, int64_t steps) {
  const std::vector<double>& step = step_rdp(q, z);
  for (size_t i = 0; i < orders_.size(); ++i) rdp_[i] += static_cast<double>(steps) * step[i];
}

PrivacySpent RdpAccountant::spent_after(double q, double z, int64_t steps, double delta) const {
  const std::vector<double>& step = step_rdp(q, z);
  std::vector<double> rdp = rdp_;
  for (size_t i = 0; i < rdp.size(); ++i) rdp[i] += static_cast<double>(steps) * step[i];
  return rdp_to_epsilon(orders_, rdp, delta);
}

void RdpAccountant::restore(std::vector<double> rdp) {
  STRATA_CHECK_T(DataError, rdp.size() == orders_.size(), "a saved privacy ledger holds ",
                 rdp.size(), " RDP orders, this accountant ", orders_.size());
  rdp_ = std::move(rdp);
}

double noise_multiplier_for(double target_epsilon, double delta, double q, int64_t steps) {
  STRATA_CHECK_T(Error, target_epsilon > 0 && steps >= 1, "noise_multiplier_for: epsilon ",
                 target_epsilon, ", steps ", steps);
  const auto eps = [&](double z) {
    RdpAccountant a;
    a.compose(q, z, steps);
    return a.spent(delta).epsilon;
  };
  double hi = 1.0;
  while (eps(hi) > target_epsilon) {
    hi *= 2;
    if (hi > 1e4) return kInf;
  }
  double lo = 0.0;
  while (hi - lo > 1e-4 * hi) {
    const double mid = 0.5 * (lo + hi);
    (eps(mid) > target_epsilon ? lo : hi) = mid;
  }
  return hi;
}

}  // namespace strata::fed
