// Quantization-aware training (trainer/qat.h): the fake-quant ops equal
// the int8 round trip they simulate and pass gradients straight through;
// the QAT graph computes the model's own function and gradients while
// fake quantization is off, and in evaluation computes what the converted
// int8 model computes.
#include <gtest/gtest.h>

#include "core/error.h"
#include "test_util.h"
#include "trainer/qat.h"
#include "trainer/quantize.h"
#include "trainer/torchscript.h"
#include "trainer/trainer.h"
#include "unit/small_models.h"

namespace st = strata::train;

namespace {

at::Tensor images(int64_t n) { return torch::randn({n, 1, 28, 28}); }

// A batch for small_model(name): images, or token ids for gpt.
at::Tensor inputs(const std::string& name, int64_t n) {
  return name == "gpt" ? torch::randint(0, 256, {n, 12}, at::kLong) : images(n);
}

double max_diff(const at::Tensor& a, const at::Tensor& b) {
  return (a - b).abs().max().item<double>();
}

st::QatSection section(int64_t start = 0) {
  st::QatSection s;
  s.enabled = true;
  s.start_step = start;
  return s;
}

}  // namespace

TEST(FakeQuant, WeightsEqualTheInt8RoundTrip) {
  torch::manual_seed(0);
  const at::Tensor w = torch::randn({6, 3, 3, 3}) * torch::rand({6, 1, 1, 1});
  for (const bool per_channel : {true, false}) {
    const at::Tensor q = st::quantize_weight(w, per_channel).dequantize();
    EXPECT_LE(max_diff(st::fake_quantize_weight(w, per_channel), q), 1e-7) << per_channel;
  }
}

TEST(FakeQuant, ActivationsEqualTheInt8RoundTrip) {
  torch::manual_seed(0);
  const at::Tensor x = torch::randn({1000}) * 3 + 1;
  for (const int64_t qmax : {255, 127}) {
    const double lo = -2.5, hi = 4.0;  // x also falls outside: clamped
    const auto [scale, zp] = st::affine_qparams(lo, hi, qmax == 127);
    const at::Tensor q = at::quantize_per_tensor(x, scale, zp, at::kQUInt8);
    const at::Tensor expect = qmax == 127 ? at::fake_quantize_per_tensor_affine(x, scale, zp, 0, 127)
                                          : q.dequantize();
    const at::Tensor got =
        st::fake_quantize_activation(x, torch::tensor({lo, hi}, at::kFloat), qmax);
    EXPECT_LE(max_diff(got, expect), 1e-6) << qmax;
  }
}

TEST(FakeQuant, GradientsAreStraightThrough) {
  // L(x) = sum(c * sin(fq(x))): by the straight-through estimator dL/dx is
  // c * cos(fq(x)) where x lies inside the quantization range and 0 where
  // it was clamped -- the finite-difference derivative of the smooth outer
  // function at the quantized point, masked.
  torch::manual_seed(1);
  const at::Tensor x0 = torch::randn({200}, at::kDouble).to(at::kFloat) * 2;
  const at::Tensor c = torch::randn({200});
  const at::Tensor range = torch::tensor({-1.5, 2.0}, at::kFloat);
  at::Tensor x = x0.clone().requires_grad_(true);
  const at::Tensor fq = st::fake_quantize_activation(x, range, 255);
  (c * fq.sin()).sum().backward();
  const double h = 1e-3;
  const at::Tensor q = fq.detach();
  const at::Tensor fd = c * ((q + h).sin() - (q - h).sin()) / (2 * h);
  const auto [scale, zp] = st::affine_qparams(-1.5, 2.0);
  const at::Tensor level = (x0 / scale).round() + static_cast<double>(zp);
  const at::Tensor inside = (level >= 0).logical_and(level <= 255).to(at::kFloat);
  EXPECT_GT(inside.sum().item<double>(), 100);
  EXPECT_LT(inside.sum().item<double>(), 200);  // some clamped
  EXPECT_LE(max_diff(x.grad(), fd * inside), 1e-3);

  // Weights: every weight is inside its range but the channel's largest
  // (which rounds to 128 and is clamped to 127, as in torch.ao).
  at::Tensor w = torch::randn({4, 5}).requires_grad_(true);
  const at::Tensor cw = torch::randn({4, 5});
  (cw * st::fake_quantize_weight(w, true).sin()).sum().backward();
  const at::Tensor qw = st::fake_quantize_weight(w.detach(), true);
  const at::Tensor fdw = cw * ((qw + h).sin() - (qw - h).sin()) / (2 * h);
  const at::Tensor top = w.detach().abs() == w.detach().abs().amax(1, true);
  const at::Tensor mask = 1 - (top.logical_and(w.detach() > 0)).to(at::kFloat);
  EXPECT_LE(max_diff(w.grad(), fdw * mask), 1e-3);
}

TEST(QatGraph, BeforeStartItIsTheModel) {
  // Fake quantization off: outputs and gradients of the model's own forward,
  // in training (batch statistics, dropout) and in evaluation.
  for (const std::string name : {"cnn", "mlp", "resnet_small"}) {
    torch::manual_seed(0);
    auto model = st::testing::small_model(name);
    auto twin = st::testing::small_model(name);
    {
      torch::NoGradGuard no_grad;
      for (auto& [a, b] : {std::make_pair(model, twin)}) {
        auto pa = a->named_parameters(), pb = b->named_parameters();
        for (auto& p : pa) pb[p.key()].copy_(p.value());
      }
    }
    st::QatGraph qat(*model, section(/*start=*/10), images(2), "");
    EXPECT_GT(qat.weights(), 0) << name;
    const at::Tensor x = images(8);
    model->train();
    twin->train();
    torch::manual_seed(5);
    const at::Tensor y = qat.forward(x);
    torch::manual_seed(5);
    const at::Tensor y_twin = twin->forward(x);
    EXPECT_LE(max_diff(y, y_twin), 1e-5) << name;
    y.pow(2).sum().backward();
    y_twin.pow(2).sum().backward();
    auto ptwin = twin->named_parameters();
    for (auto& p : model->named_parameters()) {
      EXPECT_LE(max_diff(p.value().grad(), ptwin[p.key()].grad()), 1e-4) << name << " " << p.key();
    }
    auto btwin = twin->named_buffers();
    for (auto& b : model->named_buffers()) {
      if (b.value().is_floating_point()) {
        EXPECT_LE(max_diff(b.value(), btwin[b.key()]), 1e-6) << name << " " << b.key();
      }
    }
    model->eval();
    twin->eval();
    torch::NoGradGuard no_grad;
    EXPECT_LE(max_diff(qat.forward(x), twin->forward(x)), 1e-5) << name;
  }
}

// A channel pruned with its BatchNorm (weight and bias 0: structured
// pruning) is folded to zero weights and stays an exact 0 -- not 0 / 0 --
// in training and evaluation, with finite gradients.
TEST(QatGraph, AChannelWhoseBatchNormWeightIsZeroStaysZero) {
  torch::manual_seed(0);
  auto model = st::testing::small_model("cnn");
  {
    torch::NoGradGuard no_grad;
    auto p = model->named_parameters();
    p["features.0.weight"][3].zero_();
    p["features.1.weight"][3].zero_();
    p["features.1.bias"][3].zero_();
  }
  st::QatGraph qat(*model, section(/*start=*/0), images(2), "");
  qat.set_step(5);
  model->train();
  const at::Tensor y = qat.forward(images(8));
  EXPECT_TRUE(y.isfinite().all().item<bool>());
  y.pow(2).sum().backward();
  for (auto& p : model->named_parameters()) {
    EXPECT_TRUE(p.value().grad().isfinite().all().item<bool>()) << p.key();
  }
  model->eval();
  torch::NoGradGuard no_grad;
  EXPECT_TRUE(qat.forward(images(8)).isfinite().all().item<bool>());
}

TEST(QatGraph, EvaluationComputesTheConvertedInt8Model) {
  // After observing training batches, the graph's evaluation forward
  // (BatchNorm on running statistics, folded into the fake-quantized
  // weights) and the static int8 model converted with the learned ranges
  // differ only by the int8 kernels' rounding: on average by a small
  // fraction of one output quantization step.
  for (const std::string name : {"cnn", "resnet_small", "mlp", "gpt"}) {
    torch::manual_seed(0);
    auto model = st::testing::small_model(name);
    st::QatGraph qat(*model, section(0), inputs(name, 2), "");
    model->train();
    {
      torch::NoGradGuard no_grad;
      for (int i = 0; i < 20; ++i) qat.forward(inputs(name, 32));
    }
    const auto ranges = qat.ranges();
    EXPECT_EQ(static_cast<int64_t>(ranges.size()), qat.activations()) << name;
    model->eval();
    torch::NoGradGuard no_grad;
    const at::Tensor x = inputs(name, name == "gpt" ? 32 : 256);
    const at::Tensor fq = qat.forward(x);
    st::FrozenGraph g = st::freeze(st::trace_torchscript(*model, inputs(name, 2)));
    st::fold_batchnorm(g);
    st::QuantOptions o;
    o.ranges = ranges;
    const st::QuantReport rep = st::quantize(g, o, {});
    ASSERT_FALSE(rep.layers.empty()) << name;
    const at::Tensor int8 = g.run(x);
    const double out_scale = rep.layers.back().output_scale;
    const double mean = (fq - int8).abs().mean().item<double>();
    const double agree = (fq.argmax(-1) == int8.argmax(-1)).to(at::kDouble).mean().item<double>();
    EXPECT_LE(mean, 0.05 * out_scale) << name << " (output scale " << out_scale << ")";
    EXPECT_GE(agree, 0.95) << name;
    // The float model without fake quantization is further off.
    const double float_mean = (model->forward(x) - int8).abs().mean().item<double>();
    EXPECT_LT(mean, float_mean) << name;
  }
}

TEST(QatGraph, RangesOfAnotherModelAreRefused) {
  torch::manual_seed(0);
  auto cnn = st::testing::small_model("cnn");
  st::QatGraph qat(*cnn, section(0), images(2), "");
  cnn->train();
  {
    torch::NoGradGuard no_grad;
    qat.forward(images(8));
  }
  auto mlp = st::testing::small_model("mlp");
  mlp->eval();
  st::FrozenGraph g = st::freeze(st::trace_torchscript(*mlp, images(2)));
  st::QuantOptions o;
  o.ranges = qat.ranges();
  EXPECT_THROW(st::quantize(g, o, {}), strata::ConfigError);
}

TEST(QatGraph, RangesRoundTripThroughQatPt) {
  strata::test::TempDir dir;
  const std::map<std::string, std::pair<double, double>> r{{"0:a.weight:in", {-1.0, 2.5}},
                                                           {"1:add:out", {0.0, 7.0}}};
  const std::string path = dir.path() + "/qat.pt";
  st::save_qat_ranges(r, path);
  const auto back = st::load_qat_ranges(path);
  ASSERT_EQ(back.size(), r.size());
  for (const auto& [k, v] : r) {
    EXPECT_FLOAT_EQ(back.at(k).first, v.first);
    EXPECT_FLOAT_EQ(back.at(k).second, v.second);
  }
}

TEST(QatGraph, ObserversThatStartFrozenAreARecipeError) {
  auto model = st::testing::small_model("cnn");
  st::QatSection s = section(100);
  s.freeze_observer_step = 50;
  EXPECT_THROW(st::QatGraph(*model, s, images(2), "r.yaml:3: "), strata::ConfigError);
}
