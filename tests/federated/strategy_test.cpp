// Aggregation rules and server optimisers against hand-computed values;
// robust rules against planted outliers.
#include <gtest/gtest.h>

#include <cmath>

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
  EXPECT_FLOAT_EQ(make_strategy(o)->aggregate(x, u).item<float>(), 1 + 0.5f * 24 / 5);
  o.name = "multi_krum";  // keeps n - f = 4: mean(1, 0, 2, 10) = 3.25
  auto mk = make_strategy(o);
  EXPECT_FLOAT_EQ(mk->aggregate(x, u).item<float>(), 1 + 0.5f * 3.25f);
  EXPECT_EQ(mk->last_selected(), (std::vector<std::string>{"p1", "p0", "p2", "p10"}));
  o.name = "krum";
  EXPECT_FLOAT_EQ(make_strategy(o)->aggregate(x, u).item<float>(), 1.5f);
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
      global = s->aggregate(global, {upd("a", {d})});
      EXPECT_NEAR(global.item<double>(), x, 1e-6) << name << " after delta " << d;
    }
  }
}

TEST(Strategies, OptimiserStateRoundTrips) {
  StrategyOptions o;
  o.name = "fedadam";
  o.server_lr = 0.1;
  auto a = make_strategy(o);
  at::Tensor x = at::tensor({1.0f, -1.0f});
  x = a->aggregate(x, {upd("a", {0.3f, 0.1f})});
  auto b = make_strategy(o);
  b->load_state(a->state());
  const at::Tensor next_a = a->aggregate(x, {upd("a", {-0.2f, 0.4f})});
  const at::Tensor next_b = b->aggregate(x, {upd("a", {-0.2f, 0.4f})});
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
    return (make_strategy(o)->aggregate(zero, u) - 1.0).abs().mean().item<double>();
  };
  EXPECT_GT(error("fedavg"), 5.0);
  for (std::string robust : {"median", "trimmed_mean", "krum", "multi_krum"}) {
    EXPECT_LT(error(robust), 0.15) << robust;
  }
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
    make_strategy(o)->aggregate(global, u);
    for (size_t i = 0; i < u.size(); ++i) {
      EXPECT_TRUE(at::equal(u[i].delta, before[i])) << name << " modified update " << i;
    }
    EXPECT_TRUE(at::equal(global, at::tensor({1.0f, 1.0f}))) << name;
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
