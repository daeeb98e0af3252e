// int8 post-training quantization (trainer/quantize.h): BatchNorm folding
// equals the unfused model, quantization parameters equal hand-computed
// values, and the quantized graphs of the built-in models use the int8
// kernels, stay close to the float model, and load back from a file.
#include <gtest/gtest.h>

#include "core/error.h"
#include "test_util.h"
#include "unit/small_models.h"
#include "trainer/quantize.h"
#include "trainer/torchscript.h"
#include "trainer/trainer.h"

namespace st = strata::train;

namespace {

std::shared_ptr<st::Model> build(const std::string& name) {
  auto model = st::testing::small_model(name);
  // Statistics and affine parameters far from the initial 0/1, so that
  // folding them is not a no-op.
  torch::NoGradGuard no_grad;
  for (auto& b : model->named_buffers()) {
    if (b.key().find("running_mean") != std::string::npos) b.value().normal_(0, 0.5);
    if (b.key().find("running_var") != std::string::npos) b.value().uniform_(0.5, 2.0);
  }
  for (auto& p : model->named_parameters()) {
    if (p.value().dim() == 1) p.value().uniform_(-0.5, 1.5);
  }
  model->eval();
  return model;
}

st::FrozenGraph frozen(st::Model& model, const at::Tensor& example) {
  return st::freeze(st::trace_torchscript(model, example));
}

int count(const st::FrozenGraph& g, const char* kind) {
  int n = 0;
  for (const auto* node : g.graph->nodes()) n += node->kind() == c10::Symbol::fromQualString(kind);
  return n;
}

double max_diff(const at::Tensor& a, const at::Tensor& b) { return (a - b).abs().max().item<double>(); }

at::Tensor images(int64_t n) { return torch::randn({n, 1, 28, 28}); }

}  // namespace

TEST(Freeze, ParametersBecomeNamedConstants) {
  torch::manual_seed(0);
  auto model = build("cnn");
  const st::FrozenGraph g = frozen(*model, images(4));
  EXPECT_EQ(count(g, "prim::GetAttr"), 0);
  std::set<std::string> names;
  for (const auto& [v, name] : g.names) names.insert(name);
  EXPECT_TRUE(names.count("features.0.weight"));
  EXPECT_TRUE(names.count("features.1.running_var"));
  torch::NoGradGuard no_grad;
  const at::Tensor x = images(7);  // another batch size than the trace's
  EXPECT_TRUE(at::equal(g.run(x), model->forward(x)));
}

TEST(FoldBatchNorm, EqualsTheUnfusedModel) {
  for (const std::string name : {"cnn", "resnet_small"}) {
    SCOPED_TRACE(name);
    torch::manual_seed(1);
    auto model = build(name);
    st::FrozenGraph g = frozen(*model, images(4));
    const int bns = count(g, "aten::batch_norm");
    ASSERT_GT(bns, 0);
    EXPECT_EQ(st::fold_batchnorm(g), bns);
    EXPECT_EQ(count(g, "aten::batch_norm"), 0);
    EXPECT_EQ(count(g, "aten::dropout"), 0);
    torch::NoGradGuard no_grad;
    const at::Tensor x = images(16);
    const at::Tensor want = model->forward(x);
    EXPECT_LT(max_diff(g.run(x), want), 1e-5 * std::max(1.0, want.abs().max().item<double>()));
    // The folded weights keep the conv's name.
    std::set<std::string> names;
    for (const auto& [v, n] : g.names) names.insert(n);
    EXPECT_TRUE(names.count(name == "cnn" ? "features.0.weight" : "stem.0.weight"));
  }
}

TEST(QuantParams, AffineActivationsAsTorchAo) {
  auto [s, z] = st::affine_qparams(-1.0, 3.0);
  EXPECT_FLOAT_EQ(s, 4.0f / 255.0f);
  EXPECT_EQ(z, 64);  // round(1 / (4/255)) = round(63.75)
  std::tie(s, z) = st::affine_qparams(0.5, 2.0);  // widened to hold 0
  EXPECT_FLOAT_EQ(s, 2.0f / 255.0f);
  EXPECT_EQ(z, 0);
  std::tie(s, z) = st::affine_qparams(-2.0, -1.0);
  EXPECT_FLOAT_EQ(s, 2.0f / 255.0f);
  EXPECT_EQ(z, 255);
  std::tie(s, z) = st::affine_qparams(-1.0, 3.0, /*reduce_range=*/true);  // 7 bits
  EXPECT_FLOAT_EQ(s, 4.0f / 127.0f);
  EXPECT_EQ(z, 32);  // round(31.75)
  std::tie(s, z) = st::affine_qparams(0.0, 0.0);  // a constant zero still has a scale
  EXPECT_GT(s, 0.0);
  EXPECT_EQ(z, 0);
}

TEST(QuantParams, SymmetricWeightsPerChannelAndPerTensor) {
  const at::Tensor w = torch::tensor({{1.0f, -2.0f, 0.5f}, {0.5f, 0.25f, -0.125f}});
  const at::Tensor pc = st::quantize_weight(w, true);
  ASSERT_EQ(pc.qscheme(), at::kPerChannelAffine);
  EXPECT_FLOAT_EQ(pc.q_per_channel_scales()[0].item<float>(), 2.0f / 127.5f);
  EXPECT_FLOAT_EQ(pc.q_per_channel_scales()[1].item<float>(), 0.5f / 127.5f);
  EXPECT_TRUE(at::equal(pc.q_per_channel_zero_points(), torch::zeros({2}, at::kLong)));
  // 1 / (2/127.5) = 63.75 -> 64, 0.5 -> 31.875 -> 32; 0.25 / (0.5/127.5) ->
  // 64, -0.125 -> -32. Each row's largest magnitude lands on 127.5 (less a
  // float rounding), which rounds to 127 or 128 and is clamped to 127 or -128.
  const at::Tensor q = pc.int_repr().to(at::kInt);
  EXPECT_EQ(q[0][0].item<int>(), 64);
  EXPECT_EQ(q[0][2].item<int>(), 32);
  EXPECT_EQ(q[1][1].item<int>(), 64);
  EXPECT_EQ(q[1][2].item<int>(), -32);
  EXPECT_GE(-q[0][1].item<int>(), 127);
  EXPECT_EQ(q[1][0].item<int>(), 127);
  const at::Tensor pt = st::quantize_weight(w, false);
  ASSERT_EQ(pt.qscheme(), at::kPerTensorAffine);
  EXPECT_DOUBLE_EQ(pt.q_scale(), static_cast<double>(2.0f / 127.5f));
  EXPECT_EQ(pt.q_zero_point(), 0);
  // One scale for both rows: 0.25 -> 15.9375 -> 16, -0.125 -> -7.97 -> -8.
  EXPECT_TRUE(at::equal(pt.int_repr().narrow(0, 1, 1),
                        torch::tensor({{32, 16, -8}}, at::kChar)));
}

namespace {

// Quantizes `name` and checks the int8 ops it should use, its closeness to
// the float model (relative to the outputs' range) and a save/load round trip.
void check_quantized(const std::string& name, st::QuantOptions opts, const at::Tensor& example,
                     const std::vector<at::Tensor>& calibration, const at::Tensor& x,
                     const std::map<std::string, int>& want_ops, double tolerance) {
  SCOPED_TRACE(name + (opts.mode == st::QuantMode::kStatic ? " static" : " dynamic") +
               (opts.per_channel ? " per-channel " : " per-tensor ") +
               st::observer_name(opts.observer));
  torch::manual_seed(2);
  auto model = build(name);
  st::FrozenGraph g = frozen(*model, example);
  st::fold_batchnorm(g);
  const st::QuantReport report = st::quantize(g, opts, calibration);
  EXPECT_FALSE(report.engine.empty());
  int layers = 0;
  for (const auto& [op, n] : want_ops) {
    EXPECT_EQ(count(g, op.c_str()), n) << op;
    if (op.rfind("quantized::", 0) == 0 && op.find("add") == std::string::npos) layers += n;
  }
  EXPECT_EQ(count(g, "aten::conv2d"), 0);
  EXPECT_EQ(count(g, "aten::linear"), 0);
  int weighted = 0;
  for (const st::QuantLayer& l : report.layers) {
    if (l.name == "add") continue;
    ++weighted;
    EXPECT_FALSE(l.name.empty());
    EXPECT_LE(l.weight_bytes * 3, l.float_bytes + 64) << l.name;  // a 1x1 conv is small
  }
  EXPECT_EQ(weighted, layers);
  torch::NoGradGuard no_grad;
  const at::Tensor want = model->forward(x);
  const at::Tensor got = g.run(x);
  ASSERT_EQ(got.scalar_type(), at::kFloat);
  const double range = want.abs().max().item<double>();
  EXPECT_LT(max_diff(got, want), tolerance * range);
  strata::test::TempDir dir;
  const std::string path = dir / "int8.torchscript.pt";
  st::to_module(g, "Int8").save(path);
  torch::jit::Module back = torch::jit::load(path);
  EXPECT_TRUE(at::equal(back.forward({x}).toTensor(), got));
}

}  // namespace

TEST(Quantize, StaticCnnUsesFusedInt8Kernels) {
  torch::manual_seed(3);
  std::vector<at::Tensor> calibration{images(32), images(32)};
  for (const bool per_channel : {true, false}) {
    for (const auto observer : {st::ObserverKind::kMinMax, st::ObserverKind::kMovingAverage,
                                st::ObserverKind::kPercentile}) {
      st::QuantOptions o;
      o.per_channel = per_channel;
      o.observer = observer;
      check_quantized("cnn", o, images(4), calibration, images(16),
                      {{"quantized::conv2d_relu", 2},
                       {"quantized::linear_relu", 1},
                       {"quantized::linear", 1},
                       {"aten::quantize_per_tensor", 1},
                       {"aten::dequantize", 1}},
                      0.15);
    }
  }
}

TEST(Quantize, EveryEngineOfThisBuild) {
  const std::vector<std::string> engines = st::supported_qengines();
  ASSERT_FALSE(engines.empty());
  for (const std::string& engine : engines) {
    SCOPED_TRACE(engine);
    torch::manual_seed(6);
    st::QuantOptions o;
    o.engine = engine;
    check_quantized("cnn", o, images(4), {images(32)}, images(16),
                    {{"quantized::conv2d_relu", 2}, {"quantized::linear_relu", 1},
                     {"quantized::linear", 1}},
                    0.15);
    EXPECT_EQ(st::select_qengine(engine), engine);
  }
  EXPECT_THROW(st::select_qengine("int4"), strata::ConfigError);
  st::select_qengine("auto");
}

TEST(Quantize, StaticResnetQuantizesTheResidualAdd) {
  torch::manual_seed(4);
  st::QuantOptions o;
  check_quantized("resnet_small", o, images(4), {images(32), images(32)}, images(8),
                  {{"quantized::conv2d_relu", 3},
                   {"quantized::conv2d", 3},
                   {"quantized::add_relu", 2},
                   {"quantized::linear", 1}},
                  0.15);
}

TEST(Quantize, DynamicLinearLayers) {
  torch::manual_seed(5);
  st::QuantOptions o;
  o.mode = st::QuantMode::kDynamic;
  check_quantized("mlp", o, images(4), {}, images(16), {{"quantized::linear_dynamic", 3}}, 0.05);
  const at::Tensor tokens = torch::randint(0, 256, {3, 12});
  check_quantized("gpt", o, tokens, {}, torch::randint(0, 256, {5, 12}),
                  {{"quantized::linear_dynamic", 9}}, 0.1);
}

TEST(Quantize, StaticWithoutCalibrationIsAConfigError) {
  auto model = build("cnn");
  st::FrozenGraph g = frozen(*model, images(2));
  EXPECT_THROW(st::quantize(g, st::QuantOptions{}, {}), strata::ConfigError);
}
