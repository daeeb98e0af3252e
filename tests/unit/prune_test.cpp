// Magnitude pruning (trainer/prune.h): the cubic ramp, global and per-layer
// masks over the smallest magnitudes, pruned weights that stay zero through
// optimizer steps, masks recovered from the weights, and recipe errors.
// Structured pruning (trainer/channels.h): the channel groups of every
// built-in model, whole channels pruned by norm, and the smaller dense
// model that computes what the pruned one did.
#include <gtest/gtest.h>

#include "core/error.h"
#include "trainer/channels.h"
#include "trainer/prune.h"
#include "trainer/torchscript.h"
#include "unit/small_models.h"

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

namespace {

st::PruneSection channel_section(double sparsity, const std::string& norm = "l1") {
  st::PruneSection s = section(sparsity, "layer");
  s.structure = "channels";
  s.norm = norm;
  return s;
}

std::string describe(const std::vector<st::ChannelGroup>& groups) {
  std::string out;
  for (const st::ChannelGroup& g : groups) {
    out += g.layer + "(" + std::to_string(g.channels) + ") zeroes";
    for (const std::string& z : g.zeroed) out += " " + z;
    out += ", read by";
    for (const std::string& c : g.consumers) out += " " + c;
    out += "; ";
  }
  return out;
}

at::Tensor image_batch(int64_t n) { return torch::randn({n, 1, 28, 28}); }
at::Tensor token_batch(int64_t n) { return torch::randint(0, 256, {n, 12}); }

// Nonzero BatchNorm statistics, so that folding and shrinking have work.
void randomise_batchnorm(st::Model& m) {
  torch::NoGradGuard no_grad;
  for (auto& b : m.named_buffers()) {
    if (b.key().find("running_mean") != std::string::npos) b.value().normal_(0, 0.3);
    if (b.key().find("running_var") != std::string::npos) b.value().uniform_(0.5, 2.0);
  }
  for (auto& p : m.named_parameters()) {
    if (p.value().dim() == 1) p.value().normal_(0, 0.3);
  }
}

}  // namespace

TEST(PruneChannels, GroupsAreTheLayersWhoseEveryReaderCanLoseAChannel) {
  torch::manual_seed(0);
  auto cnn = st::testing::small_model("cnn");
  // Conv followed by BatchNorm has no bias; the classifier's dropout passes.
  EXPECT_EQ(describe(st::channel_groups(*cnn, image_batch(2))),
            "features.0.weight(8) zeroes features.0.weight features.1.weight features.1.bias, "
            "read by features.4.weight; "
            "features.4.weight(16) zeroes features.4.weight features.5.weight features.5.bias, "
            "read by classifier.0.weight; "
            "classifier.0.weight(128) zeroes classifier.0.weight classifier.0.bias, read by "
            "classifier.2.weight; ");
  auto mlp = st::testing::small_model("mlp");
  EXPECT_EQ(describe(st::channel_groups(*mlp, image_batch(2))),
            "net.0.weight(256) zeroes net.0.weight net.0.bias, read by net.2.weight; "
            "net.2.weight(128) zeroes net.2.weight net.2.bias, read by net.4.weight; ");
  // A residual block's first conv only: its second conv feeds the add.
  auto resnet = st::testing::small_model("resnet_small");
  EXPECT_EQ(describe(st::channel_groups(*resnet, image_batch(2))),
            "stages.0.conv1.weight(8) zeroes stages.0.conv1.weight stages.0.bn1.weight "
            "stages.0.bn1.bias, read by stages.0.conv2.weight; "
            "stages.1.conv1.weight(16) zeroes stages.1.conv1.weight stages.1.bn1.weight "
            "stages.1.bn1.bias, read by stages.1.conv2.weight; ");
  // The MLP's hidden units of each transformer block (through GELU);
  // attention's projections are split into heads or feed the residual.
  auto gpt = st::testing::small_model("gpt");
  EXPECT_EQ(describe(st::channel_groups(*gpt, token_batch(2))),
            "h.0.mlp.c_fc.weight(64) zeroes h.0.mlp.c_fc.weight h.0.mlp.c_fc.bias, read by "
            "h.0.mlp.c_proj.weight; "
            "h.1.mlp.c_fc.weight(64) zeroes h.1.mlp.c_fc.weight h.1.mlp.c_fc.bias, read by "
            "h.1.mlp.c_proj.weight; ");
}

TEST(PruneChannels, PrunesTheChannelsOfSmallestNormWithTheirBatchNormAndKeepsThemZero) {
  torch::manual_seed(0);
  auto cnn = st::testing::small_model("cnn");
  randomise_batchnorm(*cnn);
  const auto groups = st::channel_groups(*cnn, image_batch(2));
  auto params = cnn->named_parameters();
  torch::NoGradGuard no_grad;
  // features.0: channel c's 9 weights all c - 3.5 (L1 norms 31.5, 22.5, ...,
  // smallest for channels 3 and 4); L2 ranks the same here.
  at::Tensor w0 = params["features.0.weight"];
  w0.copy_((torch::arange(8, at::kFloat) - 3.5).reshape({8, 1, 1, 1}).expand_as(w0));
  for (const std::string norm : {"l1", "l2"}) {
    st::Pruner p(channel_section(0.5, norm), *cnn, 1000, "", groups);
    ASSERT_TRUE(p.update(110));
    const at::Tensor zero_rows = w0.flatten(1).eq(0).all(1);
    EXPECT_TRUE(at::equal(zero_rows, torch::tensor({false, false, true, true, true, true, false,
                                                    false})))
        << norm << ": " << zero_rows;
    w0.copy_((torch::arange(8, at::kFloat) - 3.5).reshape({8, 1, 1, 1}).expand_as(w0));
  }
  st::Pruner p(channel_section(0.5), *cnn, 1000, "", groups);
  ASSERT_TRUE(p.update(110));
  const at::Tensor pruned = w0.flatten(1).eq(0).all(1).clone();
  EXPECT_TRUE(at::equal(params["features.1.weight"].eq(0), pruned));
  EXPECT_TRUE(at::equal(params["features.1.bias"].eq(0), pruned));
  const auto layers = p.sparsity();
  ASSERT_EQ(layers.size(), 3u);
  EXPECT_EQ(layers[0].name, "features.0.weight");
  EXPECT_EQ(layers[0].numel, 8);
  EXPECT_EQ(layers[0].pruned, 4);
  EXPECT_EQ(layers[1].pruned, 8);
  EXPECT_EQ(layers[2].pruned, 64);

  // Optimizer steps with momentum and weight decay; the epilogue re-zeroes.
  torch::optim::SGD opt(cnn->parameters(),
                        torch::optim::SGDOptions(0.1).momentum(0.9).weight_decay(1e-4));
  cnn->train();
  for (int i = 0; i < 3; ++i) {
    torch::AutoGradMode grad(true);
    opt.zero_grad();
    cnn->forward(image_batch(4)).pow(2).sum().backward();
    opt.step();
    p.apply();
  }
  EXPECT_TRUE(at::equal(w0.flatten(1).eq(0).all(1), pruned));
  EXPECT_TRUE(at::equal(params["features.1.weight"].eq(0), pruned));
  EXPECT_TRUE(at::equal(params["features.1.bias"].eq(0), pruned));
  const auto before = p.sparsity();
  p.restore_from_weights();
  const auto after = p.sparsity();
  for (size_t i = 0; i < before.size(); ++i) EXPECT_EQ(before[i].pruned, after[i].pruned);
}

// For every model with channel groups: pruned to half its channels, then
// frozen and shrunk, the graph has the smaller layers and computes the
// pruned model's outputs; a kept channel's values are the pruned model's.
TEST(PruneChannels, ShrinkingMakesASmallerDenseModelWithTheSameOutputs) {
  for (const std::string name : {"cnn", "mlp", "resnet_small", "gpt"}) {
    SCOPED_TRACE(name);
    torch::manual_seed(1);
    auto model = st::testing::small_model(name);
    randomise_batchnorm(*model);
    const at::Tensor x = name == "gpt" ? token_batch(5) : image_batch(5);
    const auto groups = st::channel_groups(*model, x);
    st::Pruner p(channel_section(0.5), *model, 1000, "", groups);
    ASSERT_TRUE(p.update(110));
    model->eval();
    torch::NoGradGuard no_grad;
    const at::Tensor want = model->forward(x);
    st::FrozenGraph g = st::freeze(st::trace_torchscript(*model, x));
    // The first producer's output before shrinking, to compare channels.
    torch::jit::Node* first = nullptr;
    for (torch::jit::Node* n : g.graph->nodes()) {
      if (g.name_of(n->inputs().size() > 1 ? n->input(1) : nullptr) == groups[0].layer) first = n;
    }
    ASSERT_NE(first, nullptr);
    at::Tensor before;
    g.observe({first->output()}, {x}, [&](const std::vector<at::Tensor>& seen) { before = seen[0]; });
    const auto kept_rows = model->named_parameters()[groups[0].layer].flatten(1).ne(0).any(1);

    const auto shrunk = st::shrink_channels(g, x);
    ASSERT_EQ(shrunk.size(), groups.size());
    for (size_t i = 0; i < groups.size(); ++i) {
      EXPECT_EQ(shrunk[i].layer, groups[i].layer);
      EXPECT_EQ(shrunk[i].channels, groups[i].channels);
      EXPECT_EQ(shrunk[i].kept, groups[i].channels - groups[i].channels / 2);
    }
    // The graph's weight constants have the kept sizes.
    int64_t weights = 0;
    for (torch::jit::Node* n : g.graph->nodes()) {
      if (n->kind() != c10::prim::Constant || g.name_of(n->output()) != groups[0].layer) continue;
      EXPECT_EQ(torch::jit::toIValue(n->output())->toTensor().size(0), shrunk[0].kept);
      ++weights;
    }
    EXPECT_EQ(weights, 1);
    const at::Tensor got = g.run(x);
    ASSERT_EQ(got.sizes(), want.sizes());
    EXPECT_LE((got - want).abs().max().item<double>(), 1e-5);
    at::Tensor after;
    g.observe({first->output()}, {x}, [&](const std::vector<at::Tensor>& seen) { after = seen[0]; });
    const int64_t channel_dim = name == "cnn" || name == "resnet_small" ? 1 : after.dim() - 1;
    // (Equal up to the GEMM's blocking, which the smaller width may change.)
    const at::Tensor kept = before.index_select(channel_dim, kept_rows.nonzero().flatten());
    ASSERT_EQ(after.sizes(), kept.sizes());
    EXPECT_LE((after - kept).abs().max().item<double>(),
              1e-6 * std::max(1.0, kept.abs().max().item<double>()));
  }
}

TEST(PruneChannels, RecipeErrors) {
  auto mlp = st::testing::small_model("mlp");
  const auto groups = st::channel_groups(*mlp, image_batch(2));
  st::PruneSection global = channel_section(0.5);
  global.scope = "global";
  EXPECT_THROW(st::Pruner(global, *mlp, 1000, "", groups), strata::ConfigError);
  st::PruneSection all = channel_section(0.5);
  all.exclude = "net.";
  try {
    st::Pruner(all, *mlp, 1000, "", groups);
    FAIL();
  } catch (const strata::ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("no conv or linear layer"), std::string::npos) << e.what();
  }
  EXPECT_THROW(st::Pruner(channel_section(0.5), *mlp, 1000, "", {}), strata::ConfigError);
}
