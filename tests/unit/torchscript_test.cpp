// TorchScript export (trainer/torchscript.h): every built-in model, traced,
// saved and loaded back with torch::jit::load, computes what the model does
// -- on a batch of another size than the one it was traced on -- and keeps
// the model's tensor names; weights that do not fit say which tensor.
#include <gtest/gtest.h>

#include <filesystem>

#include "core/error.h"
#include "trainer/checkpoint.h"
#include "trainer/torchscript.h"
#include "test_util.h"
#include "unit/small_models.h"
#include "trainer/trainer.h"

namespace st = strata::train;

namespace {

struct Case {
  std::string model;
  at::Tensor example, other;  // traced on example, checked on both
};

std::vector<Case> cases() {
  torch::manual_seed(0);
  const at::Tensor images = torch::randn({4, 1, 28, 28}), more = torch::randn({9, 1, 28, 28});
  return {{"mlp", images, more},
          {"cnn", images, more},
          {"resnet_small", images, more},
          {"gpt", torch::randint(0, 256, {3, 12}), torch::randint(0, 256, {5, 12})}};
}

std::shared_ptr<st::Model> build(const std::string& name) {
  return st::testing::small_model(name);
}

}  // namespace

TEST(TorchScript, EveryModelLoadsBackWithTheModelsOutputsAndNames) {
  strata::test::TempDir dir;
  const std::string path = dir / "model.torchscript.pt";
  for (const Case& c : cases()) {
    SCOPED_TRACE(c.model);
    auto model = build(c.model);
    model->train();  // export must not depend on (or change) the mode
    torch::jit::Module traced = st::trace_torchscript(*model, c.example);
    EXPECT_TRUE(model->is_training());
    traced.save(path);
    torch::jit::Module back = torch::jit::load(path);
    model->eval();
    torch::NoGradGuard no_grad;
    for (const at::Tensor& x : {c.example, c.other}) {
      const at::Tensor want = model->forward(x);
      const at::Tensor got = back.forward({x}).toTensor();
      ASSERT_EQ(got.sizes(), want.sizes());
      EXPECT_LE((got - want).abs().max().item<double>(), 1e-5);
    }
    std::vector<std::string> ours, theirs;
    for (const auto& p : model->named_parameters()) ours.push_back(p.key());
    for (const auto& b : model->named_buffers()) ours.push_back(b.key());
    for (const auto& p : back.named_parameters()) theirs.push_back(p.name);
    for (const auto& b : back.named_buffers()) theirs.push_back(b.name);
    std::sort(ours.begin(), ours.end());
    std::sort(theirs.begin(), theirs.end());
    EXPECT_EQ(ours, theirs);
  }
  std::filesystem::remove(path);
}

TEST(TorchScript, AssignStateDictNamesTheTensorThatDoesNotFit) {
  auto model = build("mlp");
  std::vector<std::pair<std::string, at::Tensor>> saved;
  for (const auto& p : model->named_parameters()) saved.emplace_back(p.key(), p.value().detach() + 1);
  st::assign_state_dict(*model, saved, "run/model.pt", "retrain");
  EXPECT_TRUE(at::equal(model->named_parameters()["net.0.weight"], saved[0].second));

  auto message = [&](std::vector<std::pair<std::string, at::Tensor>> s) {
    try {
      st::assign_state_dict(*model, s, "run/model.pt", "retrain");
    } catch (const strata::ConfigError& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  auto missing = saved;
  missing.erase(missing.begin());
  EXPECT_NE(message(missing).find("run/model.pt has no tensor 'net.0.weight'"), std::string::npos);
  auto reshaped = saved;
  reshaped[0].second = torch::zeros({3});
  EXPECT_NE(message(reshaped).find("'net.0.weight' has shape [3] but the model's is [256, 784]"),
            std::string::npos);
  auto extra = saved;
  extra.emplace_back("head.weight", torch::zeros({1}));
  EXPECT_NE(message(extra).find("holds 'head.weight', which the model does not have"),
            std::string::npos);
}
