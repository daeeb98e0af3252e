#include "federated/strategy.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>


#include "core/error.h"
#include "core/strings.h"
#include "federated/accountant.h"
#include "federated/dp.h"

namespace strata::fed {
namespace {

// Columns processed at once by the sorting kernels: bounds the n x chunk
// scratch to ~n * 4 MiB whatever the model size.
constexpr int64_t kChunk = int64_t{1} << 20;

void check_updates(const std::vector<ClientUpdate>& u) {
  STRATA_INTERNAL_ASSERT(!u.empty(), "aggregating zero updates");
  const int64_t n = u[0].delta.numel();
  for (const auto& x : u) {
    STRATA_INTERNAL_ASSERT(x.delta.dim() == 1 && x.delta.numel() == n &&
                           x.delta.scalar_type() == at::kFloat,
                           "update from '", x.client_id, "' is not a flat float32 "
                           "tensor of ", n, " elements");
    STRATA_INTERNAL_ASSERT(x.num_samples >= 1, "update from '", x.client_id,
                           "' has ", x.num_samples, " samples");
  }
}

// Rows s_i * Δ_i[begin, end), stacked: n x (end - begin).
at::Tensor stacked_slice(const std::vector<ClientUpdate>& u, int64_t begin, int64_t end) {
  std::vector<at::Tensor> rows;
  rows.reserve(u.size());
  for (const auto& x : u) {
    at::Tensor r = x.delta.slice(0, begin, end);
    rows.push_back(x.staleness_weight == 1.0 ? r : r * x.staleness_weight);
  }
  return at::stack(rows);
}

// Applies `column_rule` (sorted n x c -> c) chunk by chunk.
template <class Rule>
at::Tensor sorted_columns(const std::vector<ClientUpdate>& u, Rule column_rule) {
  check_updates(u);
  const int64_t p = u[0].delta.numel();
  at::Tensor out = at::empty({p}, at::kFloat);
  for (int64_t b = 0; b < p; b += kChunk) {
    const int64_t e = std::min(p, b + kChunk);
    at::Tensor sorted = std::get<0>(stacked_slice(u, b, e).sort(0));
    out.slice(0, b, e).copy_(column_rule(sorted));
  }
  return out;
}

// How many updates trimmed_mean drops at each end of n.
int64_t trimmed(double fraction, int64_t n) {
  return static_cast<int64_t>(std::ceil(fraction * static_cast<double>(n) - 1e-9));
}

}  // namespace

at::Tensor weighted_mean(const std::vector<ClientUpdate>& u) {
  check_updates(u);
  double total = 0;
  for (const auto& x : u) total += static_cast<double>(x.num_samples);
  at::Tensor out = at::zeros_like(u[0].delta);
  for (const auto& x : u) {
    out.add_(x.delta, static_cast<double>(x.num_samples) / total * x.staleness_weight);
  }
  return out;
}

at::Tensor coordinate_median(const std::vector<ClientUpdate>& u) {
  const int64_t n = static_cast<int64_t>(u.size());
  return sorted_columns(u, [n](const at::Tensor& s) {
    if (n % 2 == 1) return s[n / 2].clone();
    return (s[n / 2 - 1] + s[n / 2]) * 0.5;
  });
}

at::Tensor trimmed_mean(const std::vector<ClientUpdate>& u, double fraction) {
  STRATA_CHECK_T(ConfigError, fraction >= 0 && fraction < 0.5, "trimmed_mean: "
                 "trim fraction ", fraction, " is outside [0, 0.5)");
  const int64_t n = static_cast<int64_t>(u.size());
  const int64_t cut = trimmed(fraction, n);
  STRATA_CHECK_T(ConfigError, n - 2 * cut >= 1, "trimmed_mean: dropping ", cut,
                 " of ", n, " updates at each end leaves none; lower the trim "
                 "fraction or aggregate more updates");
  return sorted_columns(u, [n, cut](const at::Tensor& s) {
    return s.slice(0, cut, n - cut).mean(0);
  });
}

std::vector<double> krum_scores(const std::vector<ClientUpdate>& u, int f) {
  check_updates(u);
  const int n = static_cast<int>(u.size());
  STRATA_CHECK_T(ConfigError, f >= 0 && n >= 2 * f + 3, "krum with f = ", f,
                 " byzantine clients needs at least 2f + 3 = ", 2 * f + 3,
                 " updates, got ", n, "; aggregate more updates or lower f");
  // Squared distances from the Gram matrix, accumulated in float64.
  const int64_t p = u[0].delta.numel();
  at::Tensor gram = at::zeros({n, n}, at::kDouble);
  for (int64_t b = 0; b < p; b += kChunk) {
    at::Tensor rows = stacked_slice(u, b, std::min(p, b + kChunk)).to(at::kDouble);
    gram.add_(rows.matmul(rows.t()));
  }
  at::Tensor sq = gram.diagonal();
  at::Tensor dist = (sq.unsqueeze(1) + sq.unsqueeze(0) - 2 * gram).clamp_min_(0);
  const int64_t neighbours = n - f - 2;
  std::vector<double> scores(n);
  for (int i = 0; i < n; ++i) {
    // The row's smallest entry is its zero distance to itself: skip it.
    at::Tensor nearest = std::get<0>(dist[i].sort()).slice(0, 1, 1 + neighbours);
    scores[i] = nearest.sum().item<double>();
  }
  return scores;
}

std::vector<int> krum_select(const std::vector<ClientUpdate>& u, int f, int keep) {
  const std::vector<double> scores = krum_scores(u, f);
  std::vector<int> order(u.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](int a, int b) { return scores[a] < scores[b]; });
  keep = std::clamp(keep, 1, static_cast<int>(u.size()));
  order.resize(keep);
  return order;
}

std::vector<ClientUpdate> clip_to_median_norm(const std::vector<ClientUpdate>& u,
                                              double multiple) {
  check_updates(u);
  STRATA_CHECK_T(ConfigError, multiple > 0, "median_norm_clip ", multiple, " must be > 0");
  std::vector<double> norms;
  for (const auto& x : u) norms.push_back(x.delta.norm().item<double>());
  std::vector<double> sorted = norms;
  const size_t mid = (sorted.size() - 1) / 2;  // the ceil(n/2)-th smallest
  std::nth_element(sorted.begin(), sorted.begin() + static_cast<std::ptrdiff_t>(mid),
                   sorted.end());
  const double bound = multiple * sorted[mid];
  std::vector<ClientUpdate> out = u;
  for (size_t i = 0; i < out.size(); ++i) {
    if (norms[i] > bound) out[i].delta = out[i].delta * (bound / norms[i]);
  }
  return out;
}

std::vector<ClientUpdate> bucket_means(const std::vector<ClientUpdate>& u, int s,
                                       uint64_t seed,
                                       std::vector<std::vector<int>>* members) {
  check_updates(u);
  STRATA_CHECK_T(ConfigError, s >= 1, "bucket_size ", s, " must be >= 1");
  std::vector<int> order(u.size());
  std::iota(order.begin(), order.end(), 0);
  std::mt19937_64 rng(seed);
  std::shuffle(order.begin(), order.end(), rng);
  std::vector<ClientUpdate> out;
  if (members) members->clear();
  for (size_t b = 0; b < order.size(); b += static_cast<size_t>(s)) {
    const size_t e = std::min(order.size(), b + static_cast<size_t>(s));
    ClientUpdate bucket;
    bucket.num_samples = 0;
    for (size_t k = b; k < e; ++k) bucket.num_samples += u[order[k]].num_samples;
    bucket.delta = at::zeros_like(u[0].delta);
    std::vector<int> idx;
    for (size_t k = b; k < e; ++k) {
      const ClientUpdate& x = u[order[k]];
      bucket.delta.add_(x.delta, static_cast<double>(x.num_samples) /
                                     static_cast<double>(bucket.num_samples) *
                                     x.staleness_weight);
      bucket.client_id += (k == b ? "" : "+") + x.client_id;
      idx.push_back(order[k]);
    }
    out.push_back(std::move(bucket));
    if (members) members->push_back(std::move(idx));
  }
  return out;
}

std::vector<ClientUpdate> nearest_neighbor_mix(const std::vector<ClientUpdate>& u,
                                               double fraction) {
  check_updates(u);
  STRATA_CHECK_T(ConfigError, fraction >= 0 && fraction < 0.5, "nnm_fraction ", fraction,
                 " is outside [0, 0.5)");
  const int n = static_cast<int>(u.size());
  const int keep = n - static_cast<int>(std::floor(fraction * n));
  std::vector<at::Tensor> x;
  for (const auto& c : u) x.push_back(c.delta * c.staleness_weight);
  std::vector<std::vector<double>> d(n, std::vector<double>(n, 0.0));
  for (int i = 0; i < n; ++i) {
    for (int j = i + 1; j < n; ++j) d[i][j] = d[j][i] = (x[i] - x[j]).norm().item<double>();
  }
  std::vector<ClientUpdate> out = u;
  for (int i = 0; i < n; ++i) {
    std::vector<int> order(n);
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return d[i][a] < d[i][b]; });
    at::Tensor mix = at::zeros_like(x[0]);
    for (int k = 0; k < keep; ++k) mix.add_(x[order[k]]);
    out[i].delta = mix.div_(keep);
    out[i].staleness_weight = 1.0;
  }
  return out;
}

namespace {

// FNV-1a over the update ids: a batch's buckets depend only on who is in it.
uint64_t batch_seed(const std::vector<ClientUpdate>& u) {
  uint64_t h = 1469598103934665603ull;
  for (const auto& x : u) {
    for (unsigned char c : x.client_id + '\n') h = (h ^ c) * 1099511628211ull;
  }
  return h;
}

enum class Rule { kMean, kMedian, kTrimmedMean, kKrum, kMultiKrum };
enum class Optimizer { kSgd, kAdam, kYogi, kAdagrad };

// Each name of vocabulary.h's strategy_names(), once: its rule and its
// default server optimizer.
struct Kind {
  const char* name;
  Rule rule;
  Optimizer optimizer;
};
constexpr Kind kKinds[] = {
    {"fedavg", Rule::kMean, Optimizer::kSgd},
    {"fedprox", Rule::kMean, Optimizer::kSgd},
    {"fedadam", Rule::kMean, Optimizer::kAdam},
    {"fedyogi", Rule::kMean, Optimizer::kYogi},
    {"fedadagrad", Rule::kMean, Optimizer::kAdagrad},
    {"median", Rule::kMedian, Optimizer::kSgd},
    {"trimmed_mean", Rule::kTrimmedMean, Optimizer::kSgd},
    {"krum", Rule::kKrum, Optimizer::kSgd},
    {"multi_krum", Rule::kMultiKrum, Optimizer::kSgd},
};
// server_optimizer_names() after "auto", in order.
constexpr Optimizer kOptimizers[] = {Optimizer::kSgd, Optimizer::kAdam, Optimizer::kYogi,
                                     Optimizer::kAdagrad};

// sigma_b of adaptive clipping's noised count (Andrew et al.: m / 20).
double count_stddev(const DpOptions& d) {
  return d.count_stddev > 0 ? d.count_stddev : static_cast<double>(d.expected_updates) / 20.0;
}

// Note [Central differential privacy]
// ~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~
// DP-FedAvg with the fixed-denominator estimator: the aggregate is
//   (sum_i s_i clip_C(delta_i) + N(0, (z C)^2 I)) / m
// with clip_C scaling a whole update (every parameter and statistic) down
// to L2 norm C, s_i <= 1 the staleness weight (1 in sync rounds) and m the
// updates an aggregation expects (sync.clients_per_round, async.buffer_size),
// not how many came: adding or removing one client's update moves the sum
// by at most C, whatever it claims about its sample count (which DP
// therefore ignores). The noise is drawn from a generator seeded with OS
// entropy at every aggregation: a seed in the recipe would let anyone who
// reads it subtract the noise. One aggregation is the sampled Gaussian
// mechanism at rate q = m / population and multiplier z; the accountant
// (accountant.h) composes them. In sync rounds the server samples m of the
// clients that checked in (uniformly, without replacement), which the
// Poisson-sampling analysis approximates, as in Flower and McMahan et al.;
// in async mode (FedBuff) a buffer of K updates is accounted as one
// Poisson sample at rate K / population, which holds only if which clients
// fill a buffer does not depend on their data.
class ComposedStrategy final : public Strategy {
 public:
  ComposedStrategy(const StrategyOptions& o, Rule rule, Optimizer opt)
      : o_(o), rule_(rule), opt_(opt), clip_(o.dp.clip_norm) {}

  const std::string& name() const override { return o_.name; }
  ClientConfig configure() const override { return {o_.proximal_mu}; }
  const std::vector<std::string>& last_selected() const override { return selected_; }

  std::string cannot_aggregate(int64_t n) const override {
    if (n < 1) return "no updates";
    // The robust rules run on bucket means when bucketing.
    const int64_t inputs = rule_ != Rule::kMean && o_.bucket_size > 1
                               ? (n + o_.bucket_size - 1) / o_.bucket_size
                               : n;
    const std::string what =
        o_.bucket_size > 1 && rule_ != Rule::kMean
            ? str(inputs, " bucket mean(s) of ", n, " update(s) (bucket_size ", o_.bucket_size, ")")
            : str(n, " update(s)");
    if ((rule_ == Rule::kKrum || rule_ == Rule::kMultiKrum) && inputs < 2 * o_.byzantine + 3) {
      return str(o_.name, " with byzantine = ", o_.byzantine, " needs at least 2f + 3 = ",
                 2 * o_.byzantine + 3, " inputs, got ", what);
    }
    if (rule_ == Rule::kTrimmedMean) {
      const int64_t cut = trimmed(o_.trim_fraction, inputs);
      if (inputs - 2 * cut < 1) {
        return str("trimmed_mean: dropping ", cut, " of ", what, " at each end leaves none");
      }
    }
    return "";
  }

  Aggregation aggregate(const at::Tensor& global,
                        const std::vector<ClientUpdate>& updates) override {
    STRATA_INTERNAL_ASSERT(global.dim() == 1 && global.scalar_type() == at::kFloat);
    if (std::string why = cannot_aggregate(static_cast<int64_t>(updates.size())); !why.empty()) {
      return Aggregation::decline(std::move(why));
    }
    check_updates(updates);
    STRATA_INTERNAL_ASSERT(updates[0].delta.numel() == global.numel(),
                           "updates have ", updates[0].delta.numel(),
                           " elements, the model ", global.numel());
    const at::Tensor delta = combine(updates);
    // The server optimizer steps the parameters only; the statistics after
    // them take the aggregate as it is (and never enter its state).
    const int64_t p = o_.statistics_offset;
    if (p < 0 || p >= global.numel()) return {apply(global, delta), ""};
    return {at::cat({apply(global.slice(0, 0, p), delta.slice(0, 0, p)),
                     global.slice(0, p) + delta.slice(0, p)}),
            ""};
  }

  std::vector<std::pair<std::string, at::Tensor>> state() const override {
    std::vector<std::pair<std::string, at::Tensor>> s;
    if (m_.defined()) {
      s.push_back({"m", m_});  // FedAvgM's momentum, or the first moment
      if (opt_ != Optimizer::kSgd) {
        s.push_back({"v", v_});
        s.push_back({"steps", at::tensor({steps_}, at::kLong)});
      }
    }
    if (o_.dp.enabled) {
      s.push_back({"dp_clip", at::tensor({clip_}, at::kDouble)});
      s.push_back({"dp_rdp", at::tensor(accountant_.rdp(), at::kDouble)});
    }
    return s;
  }

  std::optional<PrivacyStatus> privacy() const override {
    if (!o_.dp.enabled) return std::nullopt;
    const DpOptions& d = o_.dp;
    PrivacyStatus p;
    p.epsilon = accountant_.spent(d.delta).epsilon;
    p.delta = d.delta;
    p.clip_norm = clip_;
    p.budget_left = d.target_epsilon <= 0 ||
                    accountant_.spent_after(d.sample_rate, d.noise_multiplier, 1, d.delta)
                            .epsilon <= d.target_epsilon;
    return p;
  }

  // Replaces the whole state: an empty `s` is the state before any step.
  void load_state(const std::vector<std::pair<std::string, at::Tensor>>& s) override {
    m_ = at::Tensor();
    v_ = at::Tensor();
    steps_ = 0;
    clip_ = o_.dp.clip_norm;
    accountant_ = RdpAccountant();
    for (const auto& [k, t] : s) {
      if (k == "m") m_ = t.clone();
      else if (k == "v") v_ = t.clone();
      else if (k == "steps") steps_ = t.item<int64_t>();
      else if (k == "dp_clip" && o_.dp.enabled) clip_ = t.item<double>();
      else if (k == "dp_rdp" && o_.dp.enabled) {
        const at::Tensor r = t.to(at::kDouble).contiguous();
        accountant_.restore({r.data_ptr<double>(), r.data_ptr<double>() + r.numel()});
      } else {
        throw DataError(str("strategy ", o_.name, ": unknown state entry '", k, "'",
                            k.rfind("dp_", 0) == 0
                                ? " (the run was private: keep federated.privacy.mode)"
                                : ""));
      }
    }
  }

 private:
  at::Tensor combine(const std::vector<ClientUpdate>& updates) {
    std::vector<ClientUpdate> u = o_.median_norm_clip > 0
                                      ? clip_to_median_norm(updates, o_.median_norm_clip)
                                      : updates;
    // groups[k]: the indices into `updates` behind u[k]. Mixing and
    // bucketing serve the robust rules; the mean is unchanged by bucketing.
    std::vector<std::vector<int>> groups;
    const bool robust = rule_ != Rule::kMean;
    if (robust && o_.nnm_fraction > 0) u = nearest_neighbor_mix(u, o_.nnm_fraction);
    if (robust && o_.bucket_size > 1) {
      u = bucket_means(u, o_.bucket_size, batch_seed(updates), &groups);
    } else {
      for (int i = 0; i < static_cast<int>(u.size()); ++i) groups.push_back({i});
    }
    selected_.clear();
    const auto select = [&](int k) {
      for (int i : groups[k]) selected_.push_back(updates[i].client_id);
    };
    const auto all = [&] { for (size_t k = 0; k < u.size(); ++k) select(static_cast<int>(k)); };
    switch (rule_) {
      case Rule::kMean: all(); return o_.dp.enabled ? private_mean(u) : weighted_mean(u);
      case Rule::kMedian: all(); return coordinate_median(u);
      case Rule::kTrimmedMean: all(); return trimmed_mean(u, o_.trim_fraction);
      case Rule::kKrum:
      case Rule::kMultiKrum: {
        const int n = static_cast<int>(u.size());
        const int keep = rule_ == Rule::kKrum ? 1
                         : o_.multi_krum_keep > 0 ? o_.multi_krum_keep
                                                  : n - o_.byzantine;
        std::vector<ClientUpdate> chosen;
        for (int k : krum_select(u, o_.byzantine, keep)) {
          chosen.push_back(u[k]);
          select(k);
        }
        return weighted_mean(chosen);
      }
    }
    throw InternalError("unreachable strategy rule");
  }

  // Note [Central differential privacy].
  at::Tensor private_mean(const std::vector<ClientUpdate>& u) {
    const DpOptions& d = o_.dp;
    const double c = clip_;
    at::Tensor sum = at::zeros_like(u[0].delta);
    double within = 0;
    for (const ClientUpdate& x : u) {
      if (x.summed > 1) {  // secure aggregation: clipped by the clients, summed
        sum.add_(x.delta);
        continue;
      }
      const double norm = x.delta.norm().item<double>();
      within += norm <= c ? 1.0 : 0.0;
      sum.add_(x.delta, x.staleness_weight * (norm > c ? c / norm : 1.0));
    }
    at::Generator gen = entropy_generator();
    const double m = static_cast<double>(d.expected_updates);
    if (d.adaptive) {
      const double sb = count_stddev(d);
      const double z = std::pow(std::pow(d.noise_multiplier, -2) - std::pow(2 * sb, -2), -0.5);
      sum.add_(at::randn(sum.sizes(), gen, at::TensorOptions(at::kFloat)), z * c);
      const double noisy = at::randn({1}, gen, at::TensorOptions(at::kDouble)).item<double>() * sb;
      clip_ = c * std::exp(-d.clip_lr * ((within + noisy) / m - d.target_quantile));
    } else {
      sum.add_(at::randn(sum.sizes(), gen, at::TensorOptions(at::kFloat)),
               d.noise_multiplier * c);
    }
    accountant_.compose(d.sample_rate, d.noise_multiplier);
    return sum / m;
  }

  at::Tensor apply(const at::Tensor& x, const at::Tensor& d) {
    if (opt_ == Optimizer::kSgd && o_.server_momentum == 0) return x + d * o_.server_lr;
    if (opt_ == Optimizer::kSgd) {
      if (!m_.defined()) m_ = at::zeros_like(x);
      STRATA_CHECK_T(DataError, m_.numel() == x.numel(), "strategy ", o_.name,
                     ": saved momentum has ", m_.numel(), " elements, the model's parameters ",
                     x.numel());
      m_.mul_(o_.server_momentum).add_(d);
      return x + m_ * o_.server_lr;
    }
    if (!m_.defined()) {
      m_ = at::zeros_like(x);
      v_ = at::full_like(x, o_.tau * o_.tau);
    }
    STRATA_CHECK_T(DataError, m_.numel() == x.numel(), "strategy ", o_.name,
                   ": saved optimiser state has ", m_.numel(), " elements, the "
                   "model's parameters ", x.numel());
    ++steps_;
    m_.mul_(o_.beta1).add_(d, 1 - o_.beta1);
    const at::Tensor d2 = d * d;
    switch (opt_) {
      case Optimizer::kAdagrad: v_.add_(d2); break;
      case Optimizer::kAdam: v_.mul_(o_.beta2).add_(d2, 1 - o_.beta2); break;
      case Optimizer::kYogi: v_.sub_(d2 * (v_ - d2).sign() * (1 - o_.beta2)); break;
      case Optimizer::kSgd: break;
    }
    return x + m_ / (v_.sqrt() + o_.tau) * o_.server_lr;
  }

  StrategyOptions o_;
  Rule rule_;
  Optimizer opt_;
  at::Tensor m_, v_;
  int64_t steps_ = 0;
  std::vector<std::string> selected_;
  double clip_;  // DP: C for the next aggregation
  RdpAccountant accountant_;
};

}  // namespace


std::vector<std::string> Strategy::select_clients(std::vector<std::string> available,
                                                  int64_t count, std::mt19937_64& rng) const {
  std::shuffle(available.begin(), available.end(), rng);
  if (count < static_cast<int64_t>(available.size())) {
    available.resize(static_cast<size_t>(std::max<int64_t>(count, 0)));
  }
  return available;
}

namespace {

void check_dp(const DpOptions& d, const std::string& strategy, bool mean) {
  STRATA_CHECK_T(ConfigError, mean, "federated.privacy.mode=central needs a strategy that "
                 "averages (fedavg, fedprox, fedadam, fedyogi, fedadagrad); ", strategy,
                 " selects among individual updates, which the privacy bound (each client "
                 "moves the sum by at most the clip norm) does not cover");
  STRATA_CHECK_T(ConfigError, d.clip_norm > 0, "federated.privacy.clip_norm ", d.clip_norm,
                 " must be > 0");
  STRATA_CHECK_T(ConfigError, d.noise_multiplier >= 0, "federated.privacy.noise_multiplier ",
                 d.noise_multiplier, " must be >= 0");
  STRATA_CHECK_T(ConfigError, d.expected_updates >= 1 && d.sample_rate > 0 && d.sample_rate <= 1,
                 "central privacy: ", d.expected_updates, " updates per aggregation at sampling "
                 "rate ", d.sample_rate, " (federated.privacy.population must be at least the "
                 "updates of an aggregation)");
  STRATA_CHECK_T(ConfigError, d.delta > 0 && d.delta < 1, "federated.privacy.delta ", d.delta,
                 " must be in (0, 1)");
  if (d.adaptive) {
    const double sb = count_stddev(d);
    STRATA_CHECK_T(ConfigError, d.noise_multiplier > 0 && d.noise_multiplier < 2 * sb,
                   "federated.privacy.adaptive_clip: the noise multiplier (", d.noise_multiplier,
                   ") must be below twice the clipped count's noise std (2 x ",
                   format_double(sb), " = m / 10 with m = ", d.expected_updates,
                   " updates per aggregation), or nothing is left for the update's noise; "
                   "use more clients per aggregation or a fixed clip (adaptive_clip: false)");
    STRATA_CHECK_T(ConfigError, d.target_quantile > 0 && d.target_quantile < 1 && d.clip_lr > 0,
                   "federated.privacy: target_quantile ", d.target_quantile,
                   " must be in (0, 1) and clip_lr ", d.clip_lr, " > 0");
  }
  if (d.target_epsilon > 0) {
    RdpAccountant a;
    a.compose(d.sample_rate, d.noise_multiplier);
    const double first = a.spent(d.delta).epsilon;
    STRATA_CHECK_T(ConfigError, first <= d.target_epsilon, "federated.privacy.target_epsilon ",
                   format_double(d.target_epsilon), " does not allow one aggregation (it "
                   "spends ", format_double(first), " with noise_multiplier ",
                   format_double(d.noise_multiplier), " at rate ", format_double(d.sample_rate),
                   "); raise the noise multiplier (strata-fedserver privacy plans it)");
  }
}

}  // namespace

std::unique_ptr<Strategy> make_strategy(const StrategyOptions& o) {
  const std::string& n = o.name;
  const auto kind = std::find_if(std::begin(kKinds), std::end(kKinds),
                                 [&](const Kind& k) { return n == k.name; });
  STRATA_CHECK_T(ConfigError, kind != std::end(kKinds), "unknown strategy '", n, "';",
                 did_you_mean(n, strategy_names()), " valid: ", join(strategy_names(), ", "));
  Optimizer opt = kind->optimizer;
  const auto& so_names = server_optimizer_names();
  const auto so = std::find(so_names.begin(), so_names.end(), o.server_optimizer);
  STRATA_CHECK_T(ConfigError, so != so_names.end(), "unknown server optimizer '",
                 o.server_optimizer, "'; valid: ", join(so_names, ", "));
  if (so != so_names.begin()) opt = kOptimizers[so - so_names.begin() - 1];
  const auto decay = [](double x) { return x >= 0 && x <= kMaxDecay; };
  const auto fraction = [](double x) { return x >= 0 && x <= kMaxRobustFraction; };
  STRATA_CHECK_T(ConfigError, o.server_lr > 0, "server_lr ", o.server_lr, " must be > 0");
  STRATA_CHECK_T(ConfigError, decay(o.server_momentum), "server_momentum ", o.server_momentum,
                 " must be in [0, ", kMaxDecay, "]");
  STRATA_CHECK_T(ConfigError, o.server_momentum == 0 || opt == Optimizer::kSgd,
                 "server_momentum is FedAvgM's, for the sgd server optimizer; strategy ", n,
                 " uses an adaptive one (its beta1 is its momentum)");
  STRATA_CHECK_T(ConfigError, decay(o.beta1) && decay(o.beta2), "beta1 ", o.beta1, " and beta2 ",
                 o.beta2, " must be in [0, ", kMaxDecay, "]");
  STRATA_CHECK_T(ConfigError, o.tau > 0, "tau ", o.tau, " must be > 0");
  STRATA_CHECK_T(ConfigError, o.proximal_mu >= 0, "proximal_mu ", o.proximal_mu, " must be >= 0");
  STRATA_CHECK_T(ConfigError, fraction(o.trim_fraction), "trim_fraction ", o.trim_fraction,
                 " must be in [0, ", kMaxRobustFraction, "]");
  STRATA_CHECK_T(ConfigError, o.byzantine >= 0, "byzantine ", o.byzantine, " must be >= 0");
  STRATA_CHECK_T(ConfigError, o.multi_krum_keep >= 0, "multi_krum_keep ", o.multi_krum_keep,
                 " must be >= 0 (0: n - f)");
  STRATA_CHECK_T(ConfigError, o.median_norm_clip >= 0, "median_norm_clip ", o.median_norm_clip,
                 " must be >= 0 (0: off)");
  STRATA_CHECK_T(ConfigError, o.bucket_size >= 1, "bucket_size ", o.bucket_size,
                 " must be >= 1 (1: off)");
  STRATA_CHECK_T(ConfigError, fraction(o.nnm_fraction), "nnm_fraction ", o.nnm_fraction,
                 " must be in [0, ", kMaxRobustFraction, "] (0: off)");
  if (o.dp.enabled) check_dp(o.dp, n, kind->rule == Rule::kMean);
  return std::make_unique<ComposedStrategy>(o, kind->rule, opt);
}

}  // namespace strata::fed
