// Online deep learning: the hedge update (trainer/models/hbp.h) against
// hand-computed values, its smoothing floor, the gradients of the
// alpha-weighted loss against the paper's Eq. 2 and 3 computed head by
// head, the fused CPU kernel against the ATen reference, and the
// synthetic streams (trainer/data/stream.h): deterministic, drifting where
// they should, resumable and sharded.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>

#include "core/error.h"
#include "core/fs.h"
#include "test_util.h"
#include "trainer/data/stream.h"
#include "trainer/models/hbp.h"

namespace st = strata::train;

namespace {

at::Tensor vec(std::vector<float> v) { return at::tensor(v, at::kFloat); }

st::ModelSection hbp_section(int64_t width, int64_t depth) {
  st::ModelSection c;
  c.name = "hbp";
  c.hidden = {width};
  c.depth = depth;
  return c;
}

// D = 5 features, 3 classes.
std::shared_ptr<st::HedgeNet> tiny_net(int64_t width = 4, int64_t depth = 3) {
  torch::manual_seed(7);
  return std::make_shared<st::HedgeNet>(hbp_section(width, depth), st::InputShape{1, 1, 5, 3});
}

void set_alpha(st::HedgeNet& net, std::vector<float> a) {
  torch::NoGradGuard g;
  net.mixture_weights().copy_(vec(std::move(a)));
}

// name -> gradient, after one backward of the model's loss on (x, y).
std::map<std::string, at::Tensor> loss_grads(st::HedgeNet& net, const at::Tensor& x,
                                             const at::Tensor& y, at::Tensor* loss = nullptr) {
  net.train();
  net.zero_grad();
  const at::Tensor out = net.forward(x);
  at::Tensor l = net.loss(out, y);
  l.backward();
  if (loss) *loss = l.detach();
  std::map<std::string, at::Tensor> g;
  for (const auto& p : net.named_parameters()) g[p.key()] = p.value().grad().clone();
  return g;
}

}  // namespace

TEST(Hedge, OneStepMatchesHandComputedValues) {
  // raw losses, beta 0.5, no floor: alpha_i 0.5^l_i / sum.
  const std::vector<double> l{0.1, 0.5, 0.9, 0.3};
  double sum = 0;
  std::vector<double> want;
  for (double li : l) {
    want.push_back(0.25 * std::pow(0.5, li));
    sum += want.back();
  }
  const at::Tensor a = st::hedge_update(at::full({4}, 0.25), vec({0.1f, 0.5f, 0.9f, 0.3f}), 0.5,
                                        0.0, /*minmax=*/false);
  for (int i = 0; i < 4; ++i) EXPECT_NEAR(a[i].item<double>(), want[i] / sum, 1e-6) << i;
  // The same by its digits: 0.5^0.1 = 0.93303, ... over 2.98828.
  EXPECT_NEAR(a[0].item<double>(), 0.312230, 2e-6);
  EXPECT_NEAR(a[2].item<double>(), 0.179330, 2e-6);
}

TEST(Hedge, MinMaxScalesTheHeadsLossesToZeroOne) {
  // losses 2, 4, 6 -> 0, 0.5, 1 before the discount.
  const at::Tensor a =
      st::hedge_update(at::full({3}, 1.0 / 3), vec({2.f, 4.f, 6.f}), 0.99, 0.0, true);
  const double w0 = 1.0, w1 = std::pow(0.99, 0.5), w2 = 0.99, s = w0 + w1 + w2;
  EXPECT_NEAR(a[0].item<double>(), w0 / s, 1e-7);
  EXPECT_NEAR(a[1].item<double>(), w1 / s, 1e-7);
  EXPECT_NEAR(a[2].item<double>(), w2 / s, 1e-7);
  // All heads equal: no change (and no 0/0).
  const at::Tensor same = st::hedge_update(vec({0.5f, 0.3f, 0.2f}), vec({1.f, 1.f, 1.f}), 0.99,
                                           0.0, true);
  EXPECT_TRUE(at::allclose(same, vec({0.5f, 0.3f, 0.2f})));
}

TEST(Hedge, SmoothingFloorKeepsEveryHeadAlive) {
  // 0.98 * 0.5^0 = 0.98, 0.01 * 0.5 = 0.005 twice -> floored to 0.1, then / 1.18.
  const at::Tensor a = st::hedge_update(vec({0.98f, 0.01f, 0.01f}), vec({0.f, 1.f, 1.f}), 0.5,
                                        0.1, false);
  EXPECT_NEAR(a[0].item<double>(), 0.98 / 1.18, 1e-6);
  EXPECT_NEAR(a[1].item<double>(), 0.1 / 1.18, 1e-6);
  EXPECT_NEAR(a.sum().item<double>(), 1.0, 1e-6);
  // Repeated bad losses drive a head to the floor, never below it.
  at::Tensor b = at::full({3}, 1.0 / 3);
  for (int i = 0; i < 2000; ++i) b = st::hedge_update(b, vec({0.f, 1.f, 1.f}), 0.99, 0.2 / 2, true);
  EXPECT_GT(b[1].item<double>(), 0.1 / 1.2 - 1e-6);
  EXPECT_NEAR(b[1].item<double>(), b[2].item<double>(), 1e-7);
}

TEST(Hbp, StartsUniformAndForwardIsTheLogOfTheAlphaMixture) {
  auto net = tiny_net();
  EXPECT_EQ(net->hidden_layers(), 3);
  EXPECT_TRUE(at::allclose(net->mixture_weights(), at::full({4}, 0.25)));
  set_alpha(*net, {0.1f, 0.2f, 0.3f, 0.4f});
  net->eval();
  const at::Tensor x = at::randn({6, 5});
  const at::Tensor heads = net->head_logits(x);  // [4, 6, 3]
  ASSERT_EQ(heads.sizes(), (std::vector<int64_t>{4, 6, 3}));
  at::Tensor mix = at::zeros({6, 3});
  const std::vector<double> a{0.1, 0.2, 0.3, 0.4};
  for (int l = 0; l < 4; ++l) mix += a[l] * at::softmax(heads[l], -1);
  EXPECT_TRUE(at::allclose(net->forward(x), mix.log(), 1e-5, 1e-6));
}

// A federated alpha can arrive with an entry below zero (a hostile or
// corrupted update): that head is left out of the mixture, not a NaN.
TEST(Hbp, AnAlphaBelowZeroLeavesItsHeadOutOfTheMixture) {
  auto net = tiny_net();
  const at::Tensor x = at::randn({6, 5});
  for (const bool fused : {true, false}) {
    net->set_fused(fused);
    net->train();  // the fused forward runs in training mode
    set_alpha(*net, {0.5f, -0.2f, 0.3f, 0.4f});
    const at::Tensor neg = net->forward(x).detach();
    set_alpha(*net, {0.5f, 0.f, 0.3f, 0.4f});
    const at::Tensor zero = net->forward(x).detach();
    EXPECT_TRUE(at::isfinite(neg).all().item<bool>()) << "fused " << fused;
    EXPECT_TRUE(at::allclose(neg, zero)) << "fused " << fused;
  }
}

TEST(Hbp, GradientsAreEquationsTwoAndThreeHeadByHead) {
  // Eq. 2: head l's weights get alpha_l grad CE_l; Eq. 3: layer l's
  // weights get sum_{j >= l} alpha_j grad CE_j (a shallower head does not
  // reach them). Expected values from one backward per head.
  auto net = tiny_net();
  const std::vector<float> alpha{0.05f, 0.15f, 0.3f, 0.5f};
  set_alpha(*net, alpha);
  const at::Tensor x = at::randn({1, 5});
  const at::Tensor y = at::tensor({2}, at::kLong);
  std::map<std::string, at::Tensor> want;
  for (const auto& p : net->named_parameters()) want[p.key()] = at::zeros_like(p.value());
  std::vector<std::map<std::string, at::Tensor>> per_head;
  for (int j = 0; j < 4; ++j) {
    net->zero_grad();
    const at::Tensor ce = at::cross_entropy_loss(net->head_logits(x)[j], y);
    ce.backward();
    per_head.emplace_back();
    for (const auto& p : net->named_parameters()) {
      const at::Tensor g = p.value().grad().defined() ? p.value().grad().clone()
                                                      : at::zeros_like(p.value());
      per_head.back()[p.key()] = g;
      want[p.key()] += alpha[j] * g;
    }
  }
  // Structure: head j never reaches hidden layer l > j (layer 2 is hidden.weight[0]).
  EXPECT_EQ(per_head[0]["first.weight"].abs().sum().item<double>(), 0.0);
  EXPECT_EQ(per_head[1]["hidden.weight"][0].abs().sum().item<double>(), 0.0);
  EXPECT_GT(per_head[3]["first.weight"].abs().sum().item<double>(), 0.0);
  // ... and each head's weights only from their own head.
  EXPECT_EQ(per_head[2]["heads.weight"][0].abs().sum().item<double>(), 0.0);
  for (bool fused : {true, false}) {
    net->set_fused(fused);
    const auto got = loss_grads(*net, x, y);
    for (const auto& [name, g] : want) {
      EXPECT_TRUE(at::allclose(got.at(name), g, 1e-5, 1e-6))
          << name << (fused ? " (fused)" : " (ATen)") << "\n" << got.at(name) - g;
    }
  }
}

TEST(Hbp, FusedKernelEqualsTheAtenPathForAnyBatchAndWidth) {
  for (const auto& [width, depth, batch] :
       std::vector<std::tuple<int64_t, int64_t, int64_t>>{{4, 3, 1}, {13, 5, 3}, {100, 20, 1},
                                                          {16, 1, 2}}) {
    auto net = tiny_net(width, depth);
    set_alpha(*net, std::vector<float>(static_cast<size_t>(depth + 1), 1.f / (depth + 1)));
    const at::Tensor x = at::randn({batch, 5});
    const at::Tensor y = at::randint(0, 3, {batch}, at::kLong);
    at::Tensor lf, la;
    net->set_fused(true);
    net->train();
    const at::Tensor out_f = net->forward(x).detach();
    net->loss(out_f, y);  // drop the stash
    const auto gf = loss_grads(*net, x, y, &lf);
    net->set_fused(false);
    const at::Tensor out_a = net->forward(x).detach();
    net->loss(out_a, y);
    const auto ga = loss_grads(*net, x, y, &la);
    EXPECT_TRUE(at::allclose(out_f, out_a, 1e-5, 1e-5)) << width << "x" << depth;
    EXPECT_NEAR(lf.item<double>(), la.item<double>(), 1e-5);
    for (const auto& [name, g] : ga) {
      EXPECT_TRUE(at::allclose(gf.at(name), g, 1e-4, 1e-6)) << name << " " << width << "x" << depth;
    }
  }
}

TEST(Hbp, AfterStepHedgesOnTheMeanOfTheStepsMicroBatches) {
  auto net = tiny_net();
  net->train();
  at::Tensor losses = at::zeros({4});
  for (int m = 0; m < 2; ++m) {  // two micro-batches of one step
    const at::Tensor x = at::randn({2, 5});
    const at::Tensor y = at::tensor({0, 1}, at::kLong);
    const at::Tensor ce = at::cross_entropy_loss(net->head_logits(x).permute({1, 2, 0}),
                                                 y.view({2, 1}).expand({2, 4}), {},
                                                 at::Reduction::None)
                              .mean(0)
                              .detach();
    losses += ce / 2;
    net->loss(net->forward(x), y);
  }
  const at::Tensor before = net->mixture_weights().clone();
  net->after_step([](at::Tensor&) {});
  const at::Tensor want = st::hedge_update(before, losses, 0.99, 0.2 / 3, true);
  EXPECT_TRUE(at::allclose(net->mixture_weights(), want, 1e-5, 1e-7));
  EXPECT_FALSE(at::equal(net->mixture_weights(), before));
}

TEST(Hbp, WithoutHedgeItIsPlainOnlineBackpropOfTheDeepestHead) {
  st::ModelSection c = hbp_section(8, 3);
  c.hbp.hedge = false;
  st::HedgeNet net(c, st::InputShape{1, 1, 5, 3});
  EXPECT_TRUE(at::equal(net.mixture_weights(), vec({0.f, 0.f, 0.f, 1.f})));
  const at::Tensor x = at::randn({1, 5});
  const at::Tensor y = at::tensor({1}, at::kLong);
  at::Tensor loss;
  const auto g = loss_grads(net, x, y, &loss);
  EXPECT_NEAR(loss.item<double>(),
              at::cross_entropy_loss(net.head_logits(x)[3], y).item<double>(), 1e-5);
  EXPECT_EQ(g.at("head0.weight").abs().sum().item<double>(), 0.0);
  net.after_step([](at::Tensor&) {});
  EXPECT_TRUE(at::equal(net.mixture_weights(), vec({0.f, 0.f, 0.f, 1.f})));
}

TEST(Hbp, UnequalWidthsAreARecipeError) {
  st::ModelSection c = hbp_section(8, 0);
  c.hidden = {8, 4};
  EXPECT_THROW(st::HedgeNet(c, st::InputShape{1, 1, 5, 3}), strata::ConfigError);
}

TEST(Streams, SyntheticStreamsAreDeterministicBySeed) {
  const st::ChunkFn a = st::synthetic_stream(3, 10, 5000, {8}, {1}, 1000);
  const st::ChunkFn b = st::synthetic_stream(3, 10, 5000, {8}, {1}, 1000);
  const st::ChunkFn c = st::synthetic_stream(4, 10, 5000, {8}, {1}, 1000);
  const st::StreamChunk a2 = a(2), b2 = b(2), c2 = c(2);
  EXPECT_TRUE(at::equal(a2.inputs, b2.inputs));
  EXPECT_TRUE(at::equal(a2.targets, b2.targets));
  EXPECT_FALSE(at::equal(a2.inputs, c2.inputs));
  EXPECT_FALSE(at::equal(a(1).inputs, a2.inputs));
  // Balanced classes: the concept's median is the threshold.
  const double ones = a2.targets.to(at::kDouble).mean().item<double>();
  EXPECT_GT(ones, 0.4);
  EXPECT_LT(ones, 0.6);
  ASSERT_EQ(a(4).targets.size(0), 1000);
}

TEST(Streams, ConceptDriftSwitchesAtTheThirds) {
  // cd1 (C1-C2-C1) and syn8 (C1) share features and label draws: equal
  // labels where cd1 is in C1, many differences in its middle third.
  const int64_t n = 6000;
  const st::ChunkFn syn8 = st::synthetic_stream(1, 50, n, {8}, {1}, 1000);
  const st::ChunkFn cd1 = st::synthetic_stream(1, 50, n, {8, 8, 8}, {1, 2, 1}, 1000);
  for (int64_t c = 0; c < 6; ++c) {
    const at::Tensor same = syn8(c).targets == cd1(c).targets;
    const double agree = same.to(at::kDouble).mean().item<double>();
    if (c < 2 || c >= 4) {
      EXPECT_EQ(agree, 1.0) << "chunk " << c;
    } else {
      EXPECT_LT(agree, 0.85) << "chunk " << c;
    }
  }
  // A boundary inside a chunk: instances 0..999 of 1500 in thirds switch at 500.
  const st::ChunkFn one = st::synthetic_stream(1, 50, 1500, {8}, {1}, 1000);
  const st::ChunkFn two = st::synthetic_stream(1, 50, 1500, {8, 8, 8}, {1, 2, 1}, 1000);
  const at::Tensor t1 = one(0).targets, t2 = two(0).targets;
  EXPECT_TRUE(at::equal(t1.slice(0, 0, 500), t2.slice(0, 0, 500)));
  EXPECT_FALSE(at::equal(t1.slice(0, 500, 1000), t2.slice(0, 500, 1000)));
}

TEST(Streams, SourceResumesAnywhereAndShardsRanksWithoutOverlap) {
  const int64_t n = 2500;
  const st::ChunkFn f = st::synthetic_stream(5, 4, n, {2}, {1}, 1000);
  const st::StreamOptions o{n, 1000, 3, 2};
  auto whole = st::make_stream_source(f, o, st::StreamRequest{0, 1, n / 3, 0, false});
  std::vector<st::Batch> all;
  for (int i = 0; i < 900; ++i) all.push_back(whole->next());  // past the end: a second pass
  // Batch 333 spans chunks 0 and 1 (instances 999..1001).
  EXPECT_TRUE(at::equal(all[333].inputs, at::cat({f(0).inputs.slice(0, 999), f(1).inputs.slice(0, 0, 2)})));
  EXPECT_EQ(all[833].epoch, 1);
  EXPECT_TRUE(at::equal(all[833].inputs, all[0].inputs));
  auto resumed = st::make_stream_source(f, o, st::StreamRequest{0, 1, n / 3, 500, false});
  for (int i = 500; i < 520; ++i) EXPECT_TRUE(at::equal(resumed->next().targets, all[i].targets));
  // Two ranks: rank r's batch g is the single run's batch 2g + r.
  for (int r = 0; r < 2; ++r) {
    auto rank = st::make_stream_source(f, o, st::StreamRequest{r, 2, n / 6, 0, false});
    for (int g = 0; g < 200; ++g) {
      EXPECT_TRUE(at::equal(rank->next().inputs, all[static_cast<size_t>(2 * g + r)].inputs));
    }
  }
}

namespace {

// A stream file (Note [Stream files]) of `rows` rows, F = 3, K = 4.
std::string stream_file(const std::string& path, int rows, int bad_row = -1, int bad_label = 9) {
  std::string bytes = "SSTREAM1";
  const uint32_t f = 3, k = 4;
  bytes.append(reinterpret_cast<const char*>(&f), 4).append(reinterpret_cast<const char*>(&k), 4);
  for (int i = 0; i < rows; ++i) {
    const float x[3] = {static_cast<float>(i), 0.5f, -1.f};
    const int32_t y = i == bad_row ? bad_label : i % 4;
    bytes.append(reinterpret_cast<const char*>(x), 12).append(reinterpret_cast<const char*>(&y), 4);
  }
  strata::atomic_write_file(path, bytes);
  return path;
}

}  // namespace

TEST(Streams, AStreamFileIsReadInOrderAndCheckedRowByRow) {
  strata::test::TempDir tmp;
  const std::string dir = tmp.path();
  st::Recipe r;
  r.data.name = "stream_file";
  r.data.batch_size = 2;
  r.data.stream_file = stream_file(dir + "/ok.sstream", 2500);
  const st::LoadedData d = st::load_stream_file(r, 0, 1);
  EXPECT_EQ(d.train_samples, 2500);
  EXPECT_EQ(d.shape.width, 3);
  EXPECT_EQ(d.shape.classes, 4);
  EXPECT_EQ(d.eval_samples, 0);
  auto s = d.stream(st::StreamRequest{0, 1, 1250, 0, false});
  for (int b = 0; b < 1250; ++b) {
    const st::Batch batch = s->next();
    ASSERT_EQ(batch.inputs.sizes(), (std::vector<int64_t>{2, 3}));
    EXPECT_EQ(batch.inputs[1][0].item<float>(), static_cast<float>(2 * b + 1));
    EXPECT_EQ(batch.targets[1].item<int64_t>(), (2 * b + 1) % 4);
  }
  r.data.train_subset = 100;
  EXPECT_EQ(st::load_stream_file(r, 0, 1).train_samples, 100);
  r.data.train_subset = 0;
  // Hostile or broken files: a DataError naming what is wrong.
  auto error_of = [&](const std::string& path) {
    r.data.stream_file = path;
    try {
      st::load_stream_file(r, 0, 1);
    } catch (const strata::DataError& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_NE(error_of(stream_file(dir + "/label.sstream", 10, 7)).find("row 7 has label 9"),
            std::string::npos);
  EXPECT_NE(error_of(stream_file(dir + "/neg.sstream", 10, 3, -1)).find("row 3 has label -1"),
            std::string::npos);
  std::string cut = strata::read_file(dir + "/ok.sstream");
  strata::atomic_write_file(dir + "/cut.sstream", cut.substr(0, cut.size() - 5));
  EXPECT_NE(error_of(dir + "/cut.sstream").find("not a positive multiple of the row size 16"),
            std::string::npos);
  strata::atomic_write_file(dir + "/magic.sstream", "PK\x03\x04 not a stream");
  EXPECT_NE(error_of(dir + "/magic.sstream").find("does not start with the header"),
            std::string::npos);
  std::string nan = cut.substr(0, 16 + 16 * 3);
  const float q = std::nanf("");
  std::memcpy(&nan[16 + 16 + 4], &q, 4);
  strata::atomic_write_file(dir + "/nan.sstream", nan);
  EXPECT_NE(error_of(dir + "/nan.sstream").find("row 1 feature 1 is nan"), std::string::npos);
  EXPECT_NE(error_of(dir + "/none.sstream").find("does not exist"), std::string::npos);
}

TEST(Streams, FashionMnistDriftsAtTheRecipesPoints) {
  st::Recipe r;
  r.data.name = "fmnist_drift";
  r.data.batch_size = 1000;
  r.data.instances = 6000;
  r.data.drift_at = {2000, 4000};
  const st::LoadedData permute = st::load_fmnist_drift(r, 0, 1);
  r.data.drift_at = {};
  const st::LoadedData none = st::load_fmnist_drift(r, 0, 1);
  auto batches = [](const st::LoadedData& d) {
    auto s = d.stream(st::StreamRequest{0, 1, 6, 0, false});
    std::vector<st::Batch> out;
    for (int i = 0; i < 6; ++i) out.push_back(s->next());
    return out;
  };
  const auto p = batches(permute), n = batches(none);
  for (int b = 0; b < 6; ++b) {
    EXPECT_TRUE(at::equal(p[b].inputs, n[b].inputs)) << b;  // same images, same order
    const double same = (p[b].targets == n[b].targets).to(at::kDouble).mean().item<double>();
    if (b < 2) {
      EXPECT_EQ(same, 1.0) << b;
    } else {
      EXPECT_LT(same, 0.9) << b;  // a permutation of 10 classes moves most labels
    }
  }
  // Rotation: the same labels, images turned by 90 degrees after the drift.
  r.data.drift = "rotate";
  r.data.drift_at = {3000};
  const auto rot = batches(st::load_fmnist_drift(r, 0, 1));
  for (int b = 0; b < 6; ++b) {
    EXPECT_TRUE(at::equal(rot[b].targets, n[b].targets));
    const at::Tensor want = b < 3 ? n[b].inputs : at::rot90(n[b].inputs, 1, {2, 3});
    EXPECT_TRUE(at::equal(rot[b].inputs, want)) << b;
  }
  // Gradual: the share of drifted labels rises over the width.
  r.data.drift = "permute";
  r.data.drift_at = {1000};
  r.data.drift_width = 4000;
  const auto g = batches(st::load_fmnist_drift(r, 0, 1));
  std::vector<double> moved;
  for (int b = 1; b < 5; ++b) {
    moved.push_back((g[b].targets != n[b].targets).to(at::kDouble).mean().item<double>());
  }
  EXPECT_LT(moved[0], moved[3]);
  EXPECT_GT(moved[0], 0.02);
  r.data.drift_at = {3000, 2000};
  EXPECT_THROW(st::load_fmnist_drift(r, 0, 1), strata::ConfigError);
}
