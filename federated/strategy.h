// How a server turns client updates into the next global model.
//
// Every update is a flat float32 delta (client parameters minus the
// parameters of the version it started from, in the model's parameter
// order). A Strategy is two parts, chosen by name:
//
//   aggregation  combines the deltas into one pseudo-gradient Δ
//     mean          Σ p_i s_i Δ_i, p_i = n_i / Σ n_j (samples), s_i the
//                   staleness weight (async; 1 in sync rounds). FedBuff
//                   does not renormalise s, so stale updates move less.
//     median        coordinate-wise median of s_i Δ_i (middle two averaged)
//     trimmed_mean  coordinate-wise mean of s_i Δ_i after dropping the
//                   ceil(β n) largest and smallest values (Yin et al. 2018)
//     krum          the s_i Δ_i whose n - f - 2 nearest neighbours are
//                   closest (Blanchard et al. 2017); multi_krum averages
//                   the m best-scored (p_i-weighted)
//   server optimiser  applies Δ to the global parameters x
//     sgd       x += η Δ;  with server_momentum β > 0 (FedAvgM, Hsu et al.
//               2019): m = β m + Δ, x += η m
//     adagrad   m = β1 m + (1-β1) Δ;  v += Δ²                    ;  x += η m / (√v + τ)
//     adam      m likewise;           v = β2 v + (1-β2) Δ²
//     yogi      m likewise;           v -= (1-β2) Δ² sign(v - Δ²)
//               (Reddi et al. 2021, "Adaptive Federated Optimization",
//               Algorithm 2: no bias correction, v starts at τ²)
//
// Optional steps run before the rule (all off by default; they are what
// makes the robust rules hold up on non-IID clients):
//   median_norm_clip c > 0   every Δ_i is scaled down to at most c times the
//                   batch's median update norm (the ⌈n/2⌉-th smallest), so
//                   no single update -- however scaled -- pulls harder than
//                   an honest one while fewer than half are corrupt
//   bucket_size s > 1   the updates are shuffled (seeded by their client ids,
//                   so a batch always buckets the same way) into ⌈n/s⌉
//                   buckets and the rule runs on the buckets' sample-weighted
//                   means (Karimireddy, He, Jaggi 2022, "Byzantine-robust
//                   learning on heterogeneous datasets via bucketing"):
//                   averaging shrinks honest heterogeneity, which is what
//                   coordinate-wise rules otherwise mistake for outliers.
//                   The mean rule is unchanged by bucketing.
//   nnm_fraction f > 0   nearest-neighbour mixing (Allouah et al. 2023,
//                   "Fixing by Mixing"): every s_i Δ_i is replaced by the
//                   mean of the n - ⌊f n⌋ updates nearest to it (itself
//                   included). An honest update's neighbours are then
//                   mostly honest, and the mixed honest updates lie close
//                   together, so a coordinate-wise rule over them keeps
//                   nearly the honest mean instead of a skewed middle of
//                   heterogeneous updates. Runs after clipping and before
//                   bucketing; the mean rule is unchanged by it.
//
// Names: fedavg = mean + sgd; fedprox = fedavg whose clients add the
// proximal term μ/2 ||w - w_global||²; fedadam / fedyogi / fedadagrad = mean
// + that optimiser; median, trimmed_mean, krum, multi_krum = that rule +
// sgd. StrategyOptions::server_optimizer overrides the optimiser half, so a
// robust rule can drive FedAdam too.
//
// The kernels are pure: inputs are never modified.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "federated/vocabulary.h"

namespace strata::fed {

struct ClientUpdate {
  std::string client_id;
  at::Tensor delta;               // flat float32
  int64_t num_samples = 1;        // >= 1
  int64_t staleness = 0;          // versions between its base and now
  double staleness_weight = 1.0;  // s(τ); 1 in sync mode
  // Secure aggregation: this delta is the unmasked result of `summed`
  // clients (their weighted mean; with DP the sum of their clipped updates,
  // which central DP takes as it is: the clients clipped).
  int64_t summed = 1;
};

// Client-level central differential privacy, DP-FedAvg (McMahan et al.
// 2018; Note [Central differential privacy] in strategy.cpp): every update
// is clipped to L2 norm C, the clipped updates are summed with equal weights
// (times their staleness weights, <= 1), Gaussian noise of std z C is added
// and the sum is divided by m, the updates an aggregation expects. The RDP
// accountant counts every applied aggregation as a sampled Gaussian
// mechanism at rate q. Only the mean rule: robust rules select among
// individual updates, which this sensitivity bound does not cover.
struct DpOptions {
  bool enabled = false;
  double clip_norm = 1.0;         // C; with `adaptive`, where it starts
  double noise_multiplier = 1.0;  // z
  int64_t expected_updates = 1;   // m
  double sample_rate = 1.0;       // q = m / population
  // Adaptive clipping (Andrew et al. 2021): C <- C exp(-clip_lr (b - q*)),
  // b the noised share of updates within C, q* `target_quantile`; the count
  // gets noise of std `count_stddev` (0: m / 20) and the update noise
  // multiplier becomes (z^-2 - (2 count_stddev)^-2)^-1/2, so both together
  // spend what z alone would.
  bool adaptive = false;
  double target_quantile = 0.5;
  double clip_lr = 0.2;
  double count_stddev = 0.0;
  double target_epsilon = 0.0;  // the budget (0: none)
  double delta = 1e-5;
};

// What the privacy accounting says after the last aggregation.
struct PrivacyStatus {
  double epsilon = 0.0;
  double delta = 0.0;
  double clip_norm = 0.0;  // C for the next aggregation
  bool budget_left = true; // the next aggregation stays within target_epsilon
};

struct StrategyOptions {
  std::string name = "fedavg";
  std::string server_optimizer = "auto";  // auto | sgd | adam | yogi | adagrad
  double server_lr = 1.0;                 // η
  double server_momentum = 0.0;           // β of sgd (FedAvgM); 0: none
  double beta1 = 0.9;
  double beta2 = 0.99;
  double tau = 1e-3;
  double proximal_mu = 0.0;       // fedprox: sent to clients
  double trim_fraction = 0.1;     // trimmed_mean: β, dropped at each end
  int byzantine = 1;              // krum / multi_krum: f tolerated
  int multi_krum_keep = 0;        // multi_krum: m (0: n - f)
  double median_norm_clip = 0.0;  // c: clip to c x median norm (0: off)
  // Where the model's statistics (BatchNorm running mean/var: buffers, not
  // parameters) start in the flat vector: they take the aggregate as it is
  // (x += Δ), never a server optimizer's momentum or adaptive step, which
  // can drive a variance negative. -1: every element is a parameter.
  int64_t statistics_offset = -1;
  int bucket_size = 1;            // s: rule over means of s updates (1: off)
  double nnm_fraction = 0.0;      // f: mix with the n - ⌊f n⌋ nearest (0: off)
  DpOptions dp;                   // central differential privacy (off by default)
};

// --- Pure kernels (exposed for tests and custom strategies) -------------
at::Tensor weighted_mean(const std::vector<ClientUpdate>& updates);
at::Tensor coordinate_median(const std::vector<ClientUpdate>& updates);
at::Tensor trimmed_mean(const std::vector<ClientUpdate>& updates, double fraction);
// Krum scores (lower is better), one per update.
std::vector<double> krum_scores(const std::vector<ClientUpdate>& updates, int byzantine);
// Indices of the `keep` best-scored updates, best first.
std::vector<int> krum_select(const std::vector<ClientUpdate>& updates, int byzantine, int keep);
// The updates with every delta scaled down to at most `multiple` times the
// ⌈n/2⌉-th smallest delta norm (deltas are copied only when scaled).
std::vector<ClientUpdate> clip_to_median_norm(const std::vector<ClientUpdate>& updates,
                                              double multiple);
// ⌈n/s⌉ bucket means of the updates shuffled by `seed`: each bucket's delta
// is Σ n_i s_i Δ_i / Σ n_i over its members, its num_samples Σ n_i, its
// staleness weight 1 and its client_id the members' ids joined by '+'.
// `members[b]` receives the indices of bucket b's updates.
std::vector<ClientUpdate> bucket_means(const std::vector<ClientUpdate>& updates,
                                       int bucket_size, uint64_t seed,
                                       std::vector<std::vector<int>>* members = nullptr);

// Nearest-neighbour mixing: update i becomes the unweighted mean of
// s_j Δ_j over the n - ⌊fraction n⌋ updates j nearest to Δ_i in L2 (i
// itself included; ties by index), staleness weight 1, its num_samples and
// client_id kept.
std::vector<ClientUpdate> nearest_neighbor_mix(const std::vector<ClientUpdate>& updates,
                                               double fraction);

// What the server sends clients with the model.
struct ClientConfig {
  double proximal_mu = 0.0;
};

// The outcome of Strategy::aggregate: the next global parameters, or why
// this batch cannot be aggregated (a round that closed with fewer updates
// than a robust rule needs). A declined batch leaves the strategy's state
// as it was; it is part of normal flow, not an error.
struct Aggregation {
  at::Tensor next;       // flat float32; undefined when declined
  std::string declined;  // non-empty: the reason

  bool applied() const { return declined.empty(); }
  static Aggregation decline(std::string reason) { return {at::Tensor(), std::move(reason)}; }
};

class Strategy {
 public:
  virtual ~Strategy() = default;
  virtual const std::string& name() const = 0;

  // Client selection (sync rounds): `count` of the `available` clients
  // (checked in, not selected), drawing from `rng`. The default samples
  // uniformly without replacement.
  virtual std::vector<std::string> select_clients(std::vector<std::string> available,
                                                  int64_t count, std::mt19937_64& rng) const;
  // What the server sends the clients it hands the model to.
  virtual ClientConfig configure() const = 0;

  // Why a batch of `n` updates can never be aggregated (krum needs
  // n >= 2f + 3 after bucketing, trimmed_mean must keep one); empty when
  // it can. The server checks its largest batch with it at startup and
  // each batch before aggregate().
  virtual std::string cannot_aggregate(int64_t n) const = 0;
  // The next global parameters (flat float32) from the current ones and a
  // non-empty set of updates, or a decline (cannot_aggregate) that leaves
  // the state untouched.
  virtual Aggregation aggregate(const at::Tensor& global,
                                const std::vector<ClientUpdate>& updates) = 0;
  // Ids of the updates the last applied aggregate() used (krum drops some).
  virtual const std::vector<std::string>& last_selected() const = 0;
  // With DpOptions::enabled, the privacy spent so far.
  virtual std::optional<PrivacyStatus> privacy() const { return std::nullopt; }
  // Server-optimiser state (moments and step count; with DP the clip norm
  // and the accountant's RDP), for durability.
  virtual std::vector<std::pair<std::string, at::Tensor>> state() const = 0;
  // Replaces the state (an empty one: as before the first aggregate).
  virtual void load_state(const std::vector<std::pair<std::string, at::Tensor>>& s) = 0;
};

// ConfigError naming the valid names (vocabulary.h) for an unknown one, or
// for options out of the ranges vocabulary.h gives.
std::unique_ptr<Strategy> make_strategy(const StrategyOptions& options);

}  // namespace strata::fed
