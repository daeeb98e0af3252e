// Magnitude pruning (trainer/prune.h): the cubic ramp, global and per-layer
// masks over the smallest magnitudes, pruned weights that stay zero through
// optimizer steps, masks recovered from the weights, and recipe errors.
#include <gtest/gtest.h>

#include "core/error.h"
#include "trainer/prune.h"

namespace st = strata::train;

namespace {

struct TwoLayers : torch::nn::Module {
  TwoLayers() {
    a = register_module("a", torch::nn::Linear(4, 5));
    b = register_module("b", torch::nn::Linear(5, 2));
  }
  torch::nn::Linear a{nullptr}, b{nullptr};
};

st::PruneSection section(double sparsity, const std::string& scope = "global") {
  st::PruneSection s;
  s.sparsity = sparsity;
  s.scope = scope;
  s.start_step = 10;
  s.end_step = 110;
  s.every = 25;
  return s;
}

int64_t zeros(const at::Tensor& t) { return t.eq(0).sum().item<int64_t>(); }

}  // namespace

TEST(Prune, CubicRampOfZhuAndGupta) {
  TwoLayers m;
  const st::Pruner p(section(0.8), m, 1000, "");
  EXPECT_EQ(p.target(0), 0.0);
  EXPECT_EQ(p.target(10), 0.0);
  EXPECT_DOUBLE_EQ(p.target(60), 0.8 * (1.0 - 0.125));  // half way: 1 - (1/2)^3
  EXPECT_DOUBLE_EQ(p.target(35), 0.8 * (1.0 - std::pow(0.75, 3)));
  EXPECT_EQ(p.target(110), 0.8);
  EXPECT_EQ(p.target(500), 0.8);
}

TEST(Prune, UpdatesOnTheRampEveryKStepsAndAtItsEnd) {
  TwoLayers m;
  st::Pruner p(section(0.5), m, 1000, "");
  std::vector<int64_t> updated;
  for (int64_t step = 0; step < 200; ++step) {
    if (p.update(step)) updated.push_back(step);
  }
  EXPECT_EQ(updated, (std::vector<int64_t>{10, 35, 60, 85, 110}));
}

TEST(Prune, GlobalScopePrunesTheSmallestMagnitudesOverAllWeights) {
  TwoLayers m;
  torch::NoGradGuard no_grad;
  // a: magnitudes 1..20, b: 21..30 (signs alternate); biases are not pruned.
  m.a->weight.copy_(torch::arange(1, 21, at::kFloat).reshape({5, 4}) *
                    torch::tensor({1.0f, -1.0f}).repeat({10}).reshape({5, 4}));
  m.b->weight.copy_(torch::arange(21, 31, at::kFloat).reshape({2, 5}));
  m.a->bias.fill_(0.001f);
  st::Pruner p(section(0.5), m, 1000, "");
  ASSERT_TRUE(p.update(110));  // the end of the ramp: 0.5 of 30 weights
  EXPECT_EQ(zeros(m.a->weight), 15);  // magnitudes 1..15, all in a
  EXPECT_EQ(zeros(m.b->weight), 0);
  EXPECT_EQ(zeros(m.a->bias), 0);
  EXPECT_TRUE(at::equal(m.a->weight.abs().flatten().narrow(0, 15, 5),
                        torch::arange(16, 21, at::kFloat)));
  const auto layers = p.sparsity();
  ASSERT_EQ(layers.size(), 2u);
  EXPECT_EQ(layers[0].name, "a.weight");
  EXPECT_EQ(layers[0].pruned, 15);
  EXPECT_EQ(layers[1].pruned, 0);
}

TEST(Prune, LayerScopePrunesEachTensorOnItsOwn) {
  TwoLayers m;
  torch::NoGradGuard no_grad;
  m.a->weight.copy_(torch::arange(1, 21, at::kFloat).reshape({5, 4}));
  m.b->weight.copy_(torch::arange(21, 31, at::kFloat).reshape({2, 5}));
  st::Pruner p(section(0.5, "layer"), m, 1000, "");
  ASSERT_TRUE(p.update(110));
  EXPECT_EQ(zeros(m.a->weight), 10);
  EXPECT_EQ(zeros(m.b->weight), 5);
}

TEST(Prune, PrunedWeightsStayZeroThroughOptimizerStepsAndMasksComeBackFromTheWeights) {
  torch::manual_seed(0);
  TwoLayers m;
  torch::optim::SGD opt(m.parameters(), torch::optim::SGDOptions(0.1).momentum(0.9).weight_decay(1e-4));
  st::Pruner p(section(0.6), m, 1000, "");
  ASSERT_TRUE(p.update(110));
  const at::Tensor pruned_a = m.a->weight.eq(0).clone();
  ASSERT_EQ(pruned_a.sum().item<int64_t>() + zeros(m.b->weight), 18);  // floor(0.6 * 30)
  for (int i = 0; i < 5; ++i) {
    opt.zero_grad();
    m.b->forward(torch::relu(m.a->forward(torch::randn({8, 4})))).pow(2).sum().backward();
    opt.step();
    p.apply();  // what the TrainStep epilogue does
  }
  EXPECT_TRUE(at::equal(m.a->weight.eq(0), pruned_a));
  const auto before = p.sparsity();
  p.restore_from_weights();
  const auto after = p.sparsity();
  for (size_t i = 0; i < before.size(); ++i) EXPECT_EQ(before[i].pruned, after[i].pruned);
}

TEST(Prune, RecipeErrors) {
  TwoLayers m;
  EXPECT_THROW(st::Pruner(section(1.0), m, 1000, ""), strata::ConfigError);
  EXPECT_THROW(st::Pruner(section(-0.1), m, 1000, ""), strata::ConfigError);
  st::PruneSection late = section(0.5);
  late.start_step = 200;
  late.end_step = 0;  // the run's last step, 99: before the start
  EXPECT_THROW(st::Pruner(late, m, 100, ""), strata::ConfigError);
  EXPECT_THROW(st::Pruner(section(0.5), m, 110, ""), strata::ConfigError);  // end 110 of 110 steps
  EXPECT_NO_THROW(st::Pruner(section(0.5), m, 111, ""));
  st::PruneSection all = section(0.5);
  all.exclude = "a., b.";
  try {
    st::Pruner(all, m, 1000, "");
    FAIL();
  } catch (const strata::ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("no weight"), std::string::npos) << e.what();
  }
}
