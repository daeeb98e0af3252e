// Central differential privacy (DP-FedAvg, Note [Central differential
// privacy] in federated/strategy.cpp): the clipping and the noise's
// statistics over many aggregations, the accountant's epsilon after each
// one and through the strategy's saved state, adaptive clipping on
// synthetic norms, the combinations that are refused, and a strata-fedsim
// run that records epsilon per version and stops at its budget.
#include <gtest/gtest.h>

#include <cmath>

#include "core/error.h"
#include "core/fs.h"
#include "core/json.h"
#include "federated/accountant.h"
#include "federated/fixture.h"
#include "federated/server_options.h"
#include "federated/sim.h"
#include "federated/strategy.h"
#include "test_util.h"

namespace strata::fed {
namespace {

StrategyOptions private_fedavg(int64_t m, double z, double clip = 1.0, double q = 0.1) {
  StrategyOptions o;
  o.name = "fedavg";
  o.dp.enabled = true;
  o.dp.clip_norm = clip;
  o.dp.noise_multiplier = z;
  o.dp.expected_updates = m;
  o.dp.sample_rate = q;
  return o;
}

ClientUpdate update(const std::string& id, at::Tensor delta, int64_t samples = 10) {
  ClientUpdate u;
  u.client_id = id;
  u.delta = std::move(delta);
  u.num_samples = samples;
  return u;
}

at::Tensor basis(int64_t n, int64_t i, double scale) {
  at::Tensor t = at::zeros({n});
  t[i] = scale;
  return t;
}

// Four updates, three far outside the clip norm (one claiming 1,000x the
// samples), one inside: over 400 aggregations the mean of each coordinate
// is its clipped update / m, whatever the sample counts, and the noise has
// std z C / m.
TEST(CentralDp, ClipsEveryUpdateAveragesThemEquallyAndAddsNoiseOfStdZCOverM) {
  const int64_t n = 1000, reps = 400;
  auto s = make_strategy(private_fedavg(4, 1.0));
  const at::Tensor global = at::zeros({n});
  const std::vector<ClientUpdate> u{
      update("a", basis(n, 0, 10.0)), update("b", basis(n, 1, -10.0)),
      update("c", basis(n, 2, 0.5)), update("d", basis(n, 3, 10.0), 10000)};
  at::Tensor sum = at::zeros({n}, at::kDouble), sq = at::zeros({n}, at::kDouble);
  for (int64_t r = 0; r < reps; ++r) {
    const Aggregation a = s->aggregate(global, u);
    ASSERT_TRUE(a.applied());
    const at::Tensor x = a.next.to(at::kDouble);
    sum += x;
    sq += x * x;
  }
  const at::Tensor mean = sum / reps;
  const double se = 0.25 / std::sqrt(static_cast<double>(reps));  // z C / m over sqrt(reps)
  EXPECT_NEAR(mean[0].item<double>(), 0.25, 4 * se);   // 10 e0 clipped to e0, / 4
  EXPECT_NEAR(mean[1].item<double>(), -0.25, 4 * se);
  EXPECT_NEAR(mean[2].item<double>(), 0.125, 4 * se);  // inside the clip: as it is
  EXPECT_NEAR(mean[3].item<double>(), 0.25, 4 * se);   // its sample count does not count
  const at::Tensor rest_mean = mean.slice(0, 4);
  EXPECT_LT(rest_mean.abs().max().item<double>(), 5 * se);
  const double var = ((sq / reps - mean * mean).slice(0, 4)).mean().item<double>();
  EXPECT_NEAR(std::sqrt(var), 0.25, 0.25 * 0.01);
}

TEST(CentralDp, EpsilonIsTheAccountantsAndSurvivesTheSavedState) {
  auto s = make_strategy(private_fedavg(3, 1.1, 1.0, 0.05));
  const std::vector<ClientUpdate> u{update("a", at::ones({8})), update("b", -at::ones({8}))};
  RdpAccountant reference;
  for (int k = 1; k <= 5; ++k) {
    s->aggregate(at::zeros({8}), u);
    reference.compose(0.05, 1.1);
    ASSERT_TRUE(s->privacy().has_value());
    EXPECT_DOUBLE_EQ(s->privacy()->epsilon, reference.spent(1e-5).epsilon) << k;
  }
  auto restarted = make_strategy(private_fedavg(3, 1.1, 1.0, 0.05));
  EXPECT_EQ(restarted->privacy()->epsilon, 0.0);
  restarted->load_state(s->state());
  EXPECT_DOUBLE_EQ(restarted->privacy()->epsilon, s->privacy()->epsilon);
  // A private run's state does not load into a run that is not private.
  StrategyOptions plain;
  EXPECT_THROW(make_strategy(plain)->load_state(s->state()), DataError);
  EXPECT_FALSE(make_strategy(plain)->privacy().has_value());
}

TEST(CentralDp, BudgetSaysWhenTheNextAggregationWouldExceedIt) {
  StrategyOptions o = private_fedavg(3, 1.0, 1.0, 0.5);
  RdpAccountant a;
  a.compose(0.5, 1.0, 3);
  const double three = a.spent(1e-5).epsilon;
  a.compose(0.5, 1.0);
  o.dp.target_epsilon = 0.5 * (three + a.spent(1e-5).epsilon);
  auto s = make_strategy(o);
  const std::vector<ClientUpdate> u{update("a", at::ones({4}))};
  for (int k = 1; k <= 3; ++k) {
    EXPECT_TRUE(s->privacy()->budget_left) << k;
    s->aggregate(at::zeros({4}), u);
  }
  EXPECT_FALSE(s->privacy()->budget_left);
  EXPECT_LE(s->privacy()->epsilon, o.dp.target_epsilon);
}

// Norms spread evenly over (0, 2): the median is 1. From C = 0.1 the clip
// norm climbs geometrically and then stays near it.
TEST(CentralDp, AdaptiveClippingConvergesToTheTargetQuantile) {
  const int64_t m = 100;
  StrategyOptions o = private_fedavg(m, 1.0, 0.1);
  o.dp.adaptive = true;
  o.dp.target_quantile = 0.5;
  o.dp.clip_lr = 0.2;
  auto s = make_strategy(o);
  std::vector<ClientUpdate> u;
  for (int64_t i = 0; i < m; ++i) {
    u.push_back(update(std::to_string(i), basis(10, i % 10, 2.0 * (i + 0.5) / m)));
  }
  double late = 0;
  for (int k = 0; k < 300; ++k) {
    s->aggregate(at::zeros({10}), u);
    if (k >= 200) late += s->privacy()->clip_norm / 100;
  }
  EXPECT_NEAR(late, 1.0, 0.05);
  EXPECT_NEAR(s->privacy()->clip_norm, 1.0, 0.15);
}

TEST(CentralDp, WhatItCannotBoundIsARecipeError) {
  const auto message = [](const StrategyOptions& o) -> std::string {
    try {
      make_strategy(o);
    } catch (const ConfigError& e) {
      return e.what();
    }
    return "";
  };
  StrategyOptions median = private_fedavg(10, 1.0);
  median.name = "median";
  EXPECT_NE(message(median).find("selects among individual updates"), std::string::npos);
  StrategyOptions adaptive = private_fedavg(10, 1.0);  // 2 sigma_b = m / 10 = 1
  adaptive.dp.adaptive = true;
  EXPECT_NE(message(adaptive).find("twice the clipped count's noise std"), std::string::npos);
  StrategyOptions tiny = private_fedavg(10, 0.3, 1.0, 0.5);
  tiny.dp.target_epsilon = 0.1;
  EXPECT_NE(message(tiny).find("does not allow one aggregation"), std::string::npos);
  // strata-fedserver needs the population the sampling rate comes from.
  test::TempDir dir;
  try {
    server_options(small_recipe(dir.path(), {"federated.privacy.mode=central"}));
    FAIL() << "central privacy without a population was accepted";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("federated.privacy.population"), std::string::npos)
        << e.what();
  }
}

// 6 clients, 3 per round (q = 0.5 of strata-fedsim's population), a budget
// between what 3 and 4 rounds spend: 3 versions, each record's epsilon the
// accountant's, the summary says the budget stopped it.
TEST(FedSim, CentralDpRecordsEpsilonPerVersionAndStopsAtTheBudget) {
  test::TempDir dir;
  RdpAccountant a;
  a.compose(0.5, 1.0, 3);
  const double three = a.spent(1e-5).epsilon;
  a.compose(0.5, 1.0);
  const double budget = 0.5 * (three + a.spent(1e-5).epsilon);
  const train::Recipe r = small_recipe(
      dir.path(),
      {"federated.sim.clients=6", "federated.sim.partition=iid", "federated.sync.rounds=6",
       "federated.sync.clients_per_round=3", "federated.sync.over_selection=0",
       "optimizer.momentum=0", "federated.privacy.mode=central",
       "federated.privacy.noise_multiplier=1.0", "federated.privacy.clip_norm=1.0",
       "federated.privacy.target_epsilon=" + std::to_string(budget)});
  const SimResult s = run_fedsim(r, train::builtin_registries());
  EXPECT_EQ(s.versions, 3);
  RdpAccountant expected;
  int versions = 0;
  bool summary = false;
  for (const auto& line : test::read_lines(dir.path() + "/metrics.jsonl")) {
    const nlohmann::json j = parse_json_object(line, "metrics.jsonl");
    if (j["kind"] == "version") {
      expected.compose(0.5, 1.0);
      EXPECT_NEAR(j["epsilon"].get<double>(), expected.spent(1e-5).epsilon, 1e-9) << line;
      EXPECT_EQ(j["clip_norm"].get<double>(), 1.0);
      ++versions;
    } else if (j["kind"] == "summary") {
      summary = true;
      EXPECT_TRUE(j["privacy_budget_spent"].get<bool>()) << line;
      EXPECT_LE(j["epsilon"].get<double>(), budget);
    }
  }
  EXPECT_EQ(versions, 3);
  EXPECT_TRUE(summary);
}

// The clip norm and the accountant are committed with every version: a
// private run restarted on its directory goes on from its epsilon, and one
// whose budget is spent stays finished.
TEST(FedSim, ARestartedPrivateRunGoesOnFromItsEpsilon) {
  test::TempDir dir;
  const auto recipe = [&](int rounds, double budget) {
    return small_recipe(dir.path(),
                        {"federated.sim.clients=6", "federated.sim.partition=iid",
                         "federated.sync.rounds=" + std::to_string(rounds),
                         "federated.sync.clients_per_round=3", "federated.sync.over_selection=0",
                         "optimizer.momentum=0", "federated.privacy.mode=central",
                         "federated.privacy.noise_multiplier=1.0",
                         "federated.privacy.target_epsilon=" + std::to_string(budget)});
  };
  EXPECT_EQ(run_fedsim(recipe(2, 0), train::builtin_registries()).versions, 2);
  EXPECT_EQ(run_fedsim(recipe(4, 0), train::builtin_registries()).versions, 4);
  RdpAccountant a;
  std::vector<double> expected;
  for (int k = 0; k < 5; ++k) {
    a.compose(0.5, 1.0);
    expected.push_back(a.spent(1e-5).epsilon);
  }
  std::vector<double> recorded;
  for (const auto& line : test::read_lines(dir.path() + "/metrics.jsonl")) {
    const nlohmann::json j = parse_json_object(line, "metrics.jsonl");
    if (j["kind"] == "version") recorded.push_back(j["epsilon"].get<double>());
  }
  ASSERT_EQ(recorded.size(), 4u);
  for (size_t k = 0; k < 4; ++k) EXPECT_NEAR(recorded[k], expected[k], 1e-9) << k;
  // A budget the fifth aggregation would exceed: nothing more runs.
  const SimResult after =
      run_fedsim(recipe(10, 0.5 * (expected[3] + expected[4])), train::builtin_registries());
  EXPECT_EQ(after.versions, 4);
}

}  // namespace
}  // namespace strata::fed
