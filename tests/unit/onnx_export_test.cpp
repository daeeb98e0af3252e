// ONNX export (trainer/onnx.h) without a runtime: every built-in model, and
// the statically quantized cnn as QDQ, passes the ONNX checker (save_onnx
// runs it); an op without a mapping is named. onnx_test (integration) runs
// the files in onnxruntime.
#include <gtest/gtest.h>

#include <filesystem>

#include "core/error.h"
#include "trainer/onnx.h"
#include "trainer/torchscript.h"
#include "test_util.h"
#include "unit/small_models.h"

namespace st = strata::train;

namespace {

st::FrozenGraph frozen(st::Model& model, const at::Tensor& example) {
  model.eval();
  st::FrozenGraph g = st::freeze(st::trace_torchscript(model, example));
  st::fold_batchnorm(g);
  return g;
}

// A model whose forward uses an op the writer does not map.
struct Cumulative : st::Model {
  at::Tensor forward(const at::Tensor& x) override { return x.flatten(1).cumsum(1); }
};

}  // namespace

TEST(Onnx, EveryModelPassesTheChecker) {
  torch::manual_seed(0);
  strata::test::TempDir dir;
  const std::string path = dir / "model.onnx";
  for (const std::string name : {"mlp", "cnn", "resnet_small", "gpt"}) {
    SCOPED_TRACE(name);
    auto model = st::testing::small_model(name);
    const at::Tensor example =
        name == "gpt" ? torch::randint(0, 256, {2, 12}) : torch::randn({2, 1, 28, 28});
    const st::OnnxReport r = st::save_onnx(frozen(*model, example), example, path, "test");
    EXPECT_EQ(r.opset, 17);
    EXPECT_GT(r.nodes, 0);
    EXPECT_GT(std::filesystem::file_size(path), static_cast<uintmax_t>(r.initializer_bytes) / 2);
    EXPECT_EQ(r.ops.count("BatchNormalization"), 0u);  // folded
  }
}

TEST(Onnx, StaticInt8IsQdq) {
  torch::manual_seed(1);
  auto model = st::testing::small_model("cnn");
  const at::Tensor example = torch::randn({2, 1, 28, 28});
  st::FrozenGraph g = frozen(*model, example);
  st::quantize(g, st::QuantOptions{}, {torch::randn({16, 1, 28, 28})});
  strata::test::TempDir dir;
  const st::OnnxReport r = st::save_onnx(g, example, dir / "int8.onnx", "test");
  EXPECT_EQ(r.ops.at("QuantizeLinear"), 5);  // the input and each of the 4 int8 ops' outputs
  EXPECT_EQ(r.ops.at("Conv"), 2);
  EXPECT_EQ(r.ops.at("Gemm"), 2);
}

TEST(Onnx, AnUnmappedOpIsNamed) {
  Cumulative model;
  const at::Tensor example = torch::randn({2, 3});
  try {
    strata::test::TempDir dir;
    st::save_onnx(frozen(model, example), example, dir / "x.onnx", "test");
    FAIL() << "no error";
  } catch (const strata::ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("aten::cumsum"), std::string::npos) << e.what();
  }
}
