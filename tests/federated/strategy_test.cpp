// Aggregation rules and server optimisers against hand-computed values;
// robust rules against planted outliers.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <iostream>

#include "core/error.h"
#include "federated/strategy.h"

namespace strata::fed {
namespace {

ClientUpdate upd(std::string id, std::vector<float> d, int64_t samples = 1,
                 double staleness_weight = 1.0) {
  ClientUpdate u;
  u.client_id = std::move(id);
  u.delta = at::tensor(d);
  u.num_samples = samples;
  u.staleness_weight = staleness_weight;
  return u;
}

std::vector<float> vec(const at::Tensor& t) {
  return std::vector<float>(t.data_ptr<float>(), t.data_ptr<float>() + t.numel());
}

TEST(Kernels, WeightedMeanBySamplesAndStaleness) {
  // (1 * [1, 2] + 3 * [3, 6]) / 4
  EXPECT_EQ(vec(weighted_mean({upd("a", {1, 2}, 1), upd("b", {3, 6}, 3)})),
            (std::vector<float>{2.5f, 5.0f}));
  // FedBuff: s(τ) scales without renormalising: 1/4 [1, 2] + 3/4 * 0.5 [3, 6]
  EXPECT_EQ(vec(weighted_mean({upd("a", {1, 2}, 1), upd("b", {3, 6}, 3, 0.5)})),
            (std::vector<float>{1.375f, 2.75f}));
}

TEST(Kernels, CoordinateMedianOddAndEven) {
  EXPECT_EQ(vec(coordinate_median({upd("a", {3, 0}), upd("b", {-1, 9}), upd("c", {7, 1})})),
            (std::vector<float>{3, 1}));
  // Even count: mean of the middle two (2 and 5).
  EXPECT_EQ(vec(coordinate_median({upd("a", {1}), upd("b", {5}), upd("c", {2}), upd("d", {100})})),
            (std::vector<float>{3.5f}));
}

TEST(Kernels, TrimmedMeanDropsBothEnds) {
  // β = 0.2 of 5 drops one at each end: mean(2, 3, 4).
  std::vector<ClientUpdate> u{upd("a", {1}), upd("b", {100}), upd("c", {3}),
                              upd("d", {2}), upd("e", {4})};
  EXPECT_EQ(vec(trimmed_mean(u, 0.2)), (std::vector<float>{3}));
  EXPECT_EQ(vec(trimmed_mean(u, 0.0)), (std::vector<float>{22}));
  EXPECT_THROW(trimmed_mean(u, 0.5), ConfigError);
}

TEST(Kernels, KrumScoresByNearestNeighbours) {
  // n = 5, f = 1: each score sums the n - f - 2 = 2 smallest squared
  // distances to the others. Points 0, 1, 2, 10, 11:
  //   0: 1 + 4 = 5;  1: 1 + 1 = 2;  2: 1 + 4 = 5;  10: 1 + 64 = 65;  11: 1 + 81 = 82
  std::vector<ClientUpdate> u{upd("p0", {0}), upd("p1", {1}), upd("p2", {2}),
                              upd("p10", {10}), upd("p11", {11})};
  const auto s = krum_scores(u, 1);
  ASSERT_EQ(s.size(), 5u);
  EXPECT_DOUBLE_EQ(s[0], 5);
  EXPECT_DOUBLE_EQ(s[1], 2);
  EXPECT_DOUBLE_EQ(s[2], 5);
  EXPECT_DOUBLE_EQ(s[3], 65);
  EXPECT_DOUBLE_EQ(s[4], 82);
  EXPECT_EQ(krum_select(u, 1, 1), (std::vector<int>{1}));
  EXPECT_EQ(krum_select(u, 1, 4), (std::vector<int>{1, 0, 2, 3}));
  try {
    krum_scores({u[0], u[1], u[2], u[3]}, 1);
    FAIL();
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("needs at least 2f + 3 = 5 updates, got 4"),
              std::string::npos) << e.what();
  }
}

TEST(Strategies, FedAvgAndMultiKrumApplyTheCombinedDelta) {
  std::vector<ClientUpdate> u{upd("p0", {0}), upd("p1", {1}), upd("p2", {2}),
                              upd("p10", {10}), upd("p11", {11})};
  const at::Tensor x = at::tensor({1.0f});
  StrategyOptions o;
  o.server_lr = 0.5;
  EXPECT_FLOAT_EQ(make_strategy(o)->aggregate(x, u).next.item<float>(), 1 + 0.5f * 24 / 5);
  o.name = "multi_krum";  // keeps n - f = 4: mean(1, 0, 2, 10) = 3.25
  auto mk = make_strategy(o);
  EXPECT_FLOAT_EQ(mk->aggregate(x, u).next.item<float>(), 1 + 0.5f * 3.25f);
  EXPECT_EQ(mk->last_selected(), (std::vector<std::string>{"p1", "p0", "p2", "p10"}));
  o.name = "krum";
  EXPECT_FLOAT_EQ(make_strategy(o)->aggregate(x, u).next.item<float>(), 1.5f);
}

// One scalar step of Reddi et al.'s Algorithm 2, written out by hand.
double adaptive_step(const std::string& which, double d, double* m, double* v) {
  const double b1 = 0.9, b2 = 0.99, tau = 1e-3, lr = 0.1;
  *m = b1 * *m + (1 - b1) * d;
  if (which == "fedadagrad") *v = *v + d * d;
  if (which == "fedadam") *v = b2 * *v + (1 - b2) * d * d;
  if (which == "fedyogi") *v = *v - (1 - b2) * d * d * ((*v - d * d) > 0 ? 1 : -1);
  return lr * *m / (std::sqrt(*v) + tau);
}

TEST(Strategies, AdaptiveServerOptimisersMatchTheAlgorithm) {
  for (std::string name : {"fedadam", "fedyogi", "fedadagrad"}) {
    StrategyOptions o;
    o.name = name;
    o.server_lr = 0.1;
    auto s = make_strategy(o);
    double m = 0, v = 1e-6, x = 2.0;  // v starts at tau^2
    at::Tensor global = at::tensor({2.0f});
    for (float d : {0.5f, -0.25f, 0.125f}) {
      x += adaptive_step(name, d, &m, &v);
      global = s->aggregate(global, {upd("a", {d})}).next;
      EXPECT_NEAR(global.item<double>(), x, 1e-6) << name << " after delta " << d;
    }
  }
}

TEST(Strategies, ServerMomentumIsFedAvgM) {
  StrategyOptions o;
  o.server_lr = 0.5;
  o.server_momentum = 0.9;
  auto s = make_strategy(o);
  // m = 1; x = 2 + 0.5 * 1 = 2.5.  m = 0.9 + (-2) = -1.1; x = 2.5 - 0.55 = 1.95.
  at::Tensor x = s->aggregate(at::tensor({2.0f}), {upd("a", {1.0f})}).next;
  EXPECT_NEAR(x.item<double>(), 2.5, 1e-6);
  auto restored = make_strategy(o);
  restored->load_state(s->state());
  x = restored->aggregate(x, {upd("a", {-2.0f})}).next;
  EXPECT_NEAR(x.item<double>(), 1.95, 1e-6);
  o.name = "fedadam";
  EXPECT_THROW(make_strategy(o), ConfigError);  // adam has its own momentum
}

TEST(Strategies, StatisticsTakeThePlainAggregateUnderAnyServerOptimizer) {
  // Element 1 is a BatchNorm statistic: x + Δ whatever the optimizer does
  // to the parameter (element 0).
  for (std::string name : {"fedavg", "fedadam", "fedyogi"}) {
    StrategyOptions o;
    o.name = name;
    o.server_lr = 0.5;
    if (name == "fedavg") o.server_momentum = 0.9;
    o.statistics_offset = 1;
    auto s = make_strategy(o);
    at::Tensor x = at::tensor({1.0f, 1.0f});
    for (float d : {-0.5f, -0.5f, -0.5f}) {
      const float before = x[1].item<float>();
      x = s->aggregate(x, {upd("a", {d, d})}).next;
      EXPECT_NEAR(x[1].item<float>(), before + d, 1e-6) << name;
    }
    EXPECT_GT(std::abs(x[0].item<float>() - x[1].item<float>()), 1e-3) << name;
  }
}

TEST(Strategies, OptimiserStateRoundTrips) {
  StrategyOptions o;
  o.name = "fedadam";
  o.server_lr = 0.1;
  auto a = make_strategy(o);
  at::Tensor x = at::tensor({1.0f, -1.0f});
  x = a->aggregate(x, {upd("a", {0.3f, 0.1f})}).next;
  auto b = make_strategy(o);
  b->load_state(a->state());
  const at::Tensor next_a = a->aggregate(x, {upd("a", {-0.2f, 0.4f})}).next;
  const at::Tensor next_b = b->aggregate(x, {upd("a", {-0.2f, 0.4f})}).next;
  EXPECT_TRUE(at::equal(next_a, next_b));
  EXPECT_TRUE(make_strategy(StrategyOptions{})->state().empty());  // sgd: stateless
}

TEST(Strategies, RobustRulesResistPlantedOutliers) {
  // 16 honest clients around 1.0, 4 sending scaled garbage (20%).
  at::manual_seed(3);
  std::vector<ClientUpdate> u;
  for (int i = 0; i < 16; ++i) {
    ClientUpdate c;
    c.client_id = "honest" + std::to_string(i);
    c.delta = 1.0 + 0.1 * at::randn({1000});
    u.push_back(c);
  }
  for (int i = 0; i < 4; ++i) {
    ClientUpdate c;
    c.client_id = "evil" + std::to_string(i);
    c.delta = -100.0 * at::rand({1000});
    u.push_back(c);
  }
  const at::Tensor zero = at::zeros({1000});
  auto error = [&](const std::string& name) {
    StrategyOptions o;
    o.name = name;
    o.trim_fraction = 0.2;
    o.byzantine = 4;
    return (make_strategy(o)->aggregate(zero, u).next - 1.0).abs().mean().item<double>();
  };
  EXPECT_GT(error("fedavg"), 5.0);
  for (std::string robust : {"median", "trimmed_mean", "krum", "multi_krum"}) {
    EXPECT_LT(error(robust), 0.15) << robust;
  }
}

TEST(Kernels, ClipToMedianNormScalesOnlyTheLargeOnes) {
  // Norms 1, 2, 3, 100: the 2nd smallest (ceil(4/2)) is 2.
  const std::vector<ClientUpdate> u{upd("a", {1, 0}), upd("b", {0, -2}), upd("c", {3, 0}),
                                    upd("d", {60, 80})};
  const auto c = clip_to_median_norm(u, 1.0);
  EXPECT_EQ(vec(c[0].delta), (std::vector<float>{1, 0}));
  EXPECT_EQ(vec(c[1].delta), (std::vector<float>{0, -2}));
  EXPECT_EQ(vec(c[2].delta), (std::vector<float>{2, 0}));
  EXPECT_NEAR(c[3].delta[0].item<float>(), 1.2f, 1e-6);
  EXPECT_NEAR(c[3].delta[1].item<float>(), 1.6f, 1e-6);
  EXPECT_EQ(vec(u[3].delta), (std::vector<float>{60, 80}));  // input untouched
  // multiple 2: bound 4, only d is scaled.
  EXPECT_EQ(vec(clip_to_median_norm(u, 2.0)[2].delta), (std::vector<float>{3, 0}));
}

TEST(Kernels, BucketMeansPartitionTheBatchAndKeepItsMean) {
  const std::vector<ClientUpdate> u{upd("a", {1, 2}, 1), upd("b", {3, -4}, 2, 0.5),
                                    upd("c", {0, 7}, 3), upd("d", {5, 5}, 1),
                                    upd("e", {2, 2}, 4)};
  std::vector<std::vector<int>> members;
  const auto b = bucket_means(u, 2, 42, &members);
  ASSERT_EQ(b.size(), 3u);  // ceil(5 / 2)
  std::vector<int> seen;
  for (size_t k = 0; k < b.size(); ++k) {
    int64_t samples = 0;
    at::Tensor mean = at::zeros({2});
    for (int i : members[k]) samples += u[i].num_samples;
    for (int i : members[k]) {
      mean += u[i].delta * (u[i].staleness_weight * u[i].num_samples / double(samples));
      seen.push_back(i);
    }
    EXPECT_EQ(b[k].num_samples, samples);
    EXPECT_EQ(b[k].staleness_weight, 1.0);
    EXPECT_TRUE(at::allclose(b[k].delta, mean));
  }
  std::sort(seen.begin(), seen.end());
  EXPECT_EQ(seen, (std::vector<int>{0, 1, 2, 3, 4}));
  // The sample-weighted mean of the buckets is the batch's mean.
  EXPECT_TRUE(at::allclose(weighted_mean(b), weighted_mean(u)));
  // Same seed, same buckets; the shuffle does depend on the seed.
  EXPECT_EQ(bucket_means(u, 2, 42)[0].client_id, b[0].client_id);
  bool differs = false;
  for (uint64_t seed = 0; seed < 8 && !differs; ++seed) {
    differs = bucket_means(u, 2, seed)[0].client_id != b[0].client_id;
  }
  EXPECT_TRUE(differs);
}

TEST(Kernels, NearestNeighborMixAveragesTheClosest) {
  // f = floor(0.34 * 3) = 1: each update mixes with its 2 nearest (itself
  // included); b counts at half weight (staleness), so x_b = {0.5, 0}.
  const std::vector<ClientUpdate> u{upd("a", {0, 0}, 1), upd("b", {1, 0}, 7, 0.5),
                                    upd("c", {10, 0}, 2)};
  const auto m = nearest_neighbor_mix(u, 0.34);
  ASSERT_EQ(m.size(), 3u);
  EXPECT_EQ(vec(m[0].delta), (std::vector<float>{0.25f, 0}));   // a, b
  EXPECT_EQ(vec(m[1].delta), (std::vector<float>{0.25f, 0}));   // b, a
  EXPECT_EQ(vec(m[2].delta), (std::vector<float>{5.25f, 0}));   // c, b
  EXPECT_EQ(m[1].num_samples, 7);
  EXPECT_EQ(m[1].staleness_weight, 1.0);
  EXPECT_EQ(m[2].client_id, "c");
  EXPECT_EQ(vec(u[1].delta), (std::vector<float>{1, 0}));  // input untouched
  // fraction 0 mixes everything: every update becomes the mean of the x.
  for (const auto& x : nearest_neighbor_mix(u, 0.0)) {
    EXPECT_TRUE(at::allclose(x.delta, at::tensor({3.5f, 0.0f})));
  }
  EXPECT_THROW(nearest_neighbor_mix(u, 0.5), ConfigError);
}

TEST(Strategies, ClippingAndBucketingBoundScaledAttackersOnHeterogeneousClients) {
  // Non-IID honest clients: two camps (deltas near 0 and near 2, honest
  // mean 1); 2 of 10 send -100x their update.
  at::manual_seed(5);
  std::vector<ClientUpdate> u;
  for (int i = 0; i < 10; ++i) {
    ClientUpdate c;
    c.client_id = "c" + std::to_string(i);
    c.delta = (i % 2 == 0 ? 0.0 : 2.0) + 0.1 * at::randn({1000});
    if (i >= 8) c.delta = c.delta * -100.0;
    u.push_back(c);
  }
  const at::Tensor zero = at::zeros({1000});
  auto error = [&](const std::string& name, double clip, int bucket, double nnm = 0.0) {
    StrategyOptions o;
    o.name = name;
    o.trim_fraction = 0.2;
    o.median_norm_clip = clip;
    o.bucket_size = bucket;
    o.nnm_fraction = nnm;
    auto s = make_strategy(o);
    const double e = (s->aggregate(zero, u).next - 1.0).abs().mean().item<double>();
    // Ids reported are the clients', never a bucket's joined name.
    for (const auto& id : s->last_selected()) EXPECT_EQ(id.find('+'), std::string::npos);
    return e;
  };
  EXPECT_GT(error("fedavg", 0, 1), 20.0);
  // Clipped, each attacker pulls no harder than an honest client.
  EXPECT_LT(error("fedavg", 1.0, 1), 1.0);
  for (std::string robust : {"median", "trimmed_mean"}) {
    EXPECT_LT(error(robust, 1.0, 2), 0.6) << robust;
    // Mixing each update with its 8 nearest keeps both rules near the
    // honest mean, and takes the median (which picks one camp's side
    // coordinate by coordinate: error 0.66) much closer to it.
    const double mixed = error(robust, 1.0, 1, 0.2), plain = error(robust, 1.0, 1);
    std::cout << robust << ": error " << plain << " plain, " << mixed << " mixed\n";
    EXPECT_LT(mixed, 0.45) << robust;
    if (robust == "median") EXPECT_LT(mixed, 0.7 * plain);
  }
  StrategyOptions o;
  o.name = "multi_krum";
  o.byzantine = 1;
  o.bucket_size = 2;
  auto mk = make_strategy(o);
  mk->aggregate(zero, u);
  EXPECT_EQ(mk->last_selected().size(), 8u);  // 4 of the 5 buckets, 2 clients each
}

TEST(Strategies, AggregationNeverModifiesItsInputs) {
  std::vector<ClientUpdate> u{upd("a", {1, 2}), upd("b", {3, -4}, 2, 0.5),
                              upd("c", {0, 7}), upd("d", {5, 5}), upd("e", {2, 2})};
  std::vector<at::Tensor> before;
  for (const auto& x : u) before.push_back(x.delta.clone());
  const at::Tensor global = at::tensor({1.0f, 1.0f});
  for (const auto& name : strategy_names()) {
    StrategyOptions o;
    o.name = name;
    o.server_lr = 0.1;
    o.median_norm_clip = 1.0;
    make_strategy(o)->aggregate(global, u);
    for (size_t i = 0; i < u.size(); ++i) {
      EXPECT_TRUE(at::equal(u[i].delta, before[i])) << name << " modified update " << i;
    }
    EXPECT_TRUE(at::equal(global, at::tensor({1.0f, 1.0f}))) << name;
  }
}

// A batch a rule cannot work with is declined with the reason -- no
// exception -- and leaves the server optimiser's state as it was.
TEST(Strategies, ABatchTheRuleCannotUseIsDeclinedAndTheStateKept) {
  StrategyOptions o;
  o.name = "krum";
  o.byzantine = 1;
  o.server_momentum = 0.5;
  auto krum = make_strategy(o);
  std::vector<ClientUpdate> five;
  for (int i = 0; i < 5; ++i) five.push_back(upd(std::string(1, static_cast<char>('a' + i)), {1.0f * i}));
  const at::Tensor x = at::zeros({1});
  ASSERT_TRUE(krum->aggregate(x, five).applied());
  const auto state = krum->state();
  ASSERT_EQ(state.size(), 1u);  // the momentum
  const std::vector<ClientUpdate> four(five.begin(), five.begin() + 4);
  EXPECT_EQ(krum->cannot_aggregate(4), "krum with byzantine = 1 needs at least 2f + 3 = 5 inputs, "
                                       "got 4 update(s)");
  const Aggregation a = krum->aggregate(x, four);
  EXPECT_FALSE(a.applied());
  EXPECT_FALSE(a.next.defined());
  EXPECT_EQ(a.declined, krum->cannot_aggregate(4));
  EXPECT_TRUE(at::equal(krum->state()[0].second, state[0].second));
  // With buckets of 2, krum scores ceil(n / 2) bucket means.
  o.bucket_size = 2;
  EXPECT_NE(make_strategy(o)->cannot_aggregate(7).find("got 4 bucket mean(s) of 7"),
            std::string::npos);
  EXPECT_EQ(make_strategy(o)->cannot_aggregate(10), "");
  // trimmed_mean must keep one; the mean rules take any non-empty batch.
  StrategyOptions t;
  t.name = "trimmed_mean";
  t.trim_fraction = 0.3;
  EXPECT_NE(make_strategy(t)->cannot_aggregate(1), "");
  EXPECT_EQ(make_strategy(t)->cannot_aggregate(3), "");
  EXPECT_EQ(make_strategy(StrategyOptions{})->cannot_aggregate(1), "");
}

// The ranges make_strategy enforces are vocabulary.h's, which the recipe's
// schema uses too.
TEST(Strategies, OptionRangesAreTheVocabularys) {
  StrategyOptions o;
  o.server_momentum = kMaxDecay;
  EXPECT_NO_THROW(make_strategy(o));
  o.server_momentum = 1.0;
  EXPECT_THROW(make_strategy(o), ConfigError);
  o = StrategyOptions{};
  o.name = "trimmed_mean";
  o.trim_fraction = kMaxRobustFraction;
  EXPECT_NO_THROW(make_strategy(o));
  o.trim_fraction = 0.5;
  EXPECT_THROW(make_strategy(o), ConfigError);
  for (const auto& name : strategy_names()) {
    StrategyOptions n;
    n.name = name;
    EXPECT_EQ(make_strategy(n)->name(), name);
  }
  for (const auto& opt : server_optimizer_names()) {
    StrategyOptions n;
    n.server_optimizer = opt;
    EXPECT_NO_THROW(make_strategy(n)) << opt;
  }
}

TEST(Strategies, UnknownNamesSuggestTheClosest) {
  StrategyOptions o;
  o.name = "fedavgg";
  try {
    make_strategy(o);
    FAIL();
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("did you mean 'fedavg'?"), std::string::npos) << e.what();
  }
  o.name = "fedavg";
  o.server_optimizer = "lamb";
  EXPECT_THROW(make_strategy(o), ConfigError);
}

}  // namespace
}  // namespace strata::fed
