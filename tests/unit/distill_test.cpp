// Knowledge distillation: the loss against hand-computed values, and the
// frozen teacher loaded from a state dict.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>

#include "core/error.h"
#include "test_util.h"
#include "trainer/checkpoint.h"
#include "trainer/distill.h"
#include "trainer/trainer.h"

namespace strata::train {
namespace {

TEST(DistillationLoss, MatchesTheFormula) {
  const at::Tensor s = at::tensor({1.0f, 0.0f}).reshape({1, 2});
  const at::Tensor t = at::tensor({0.0f, 1.0f}).reshape({1, 2});
  const at::Tensor y = at::tensor({int64_t{0}});
  const double T = 2.0, a = 0.25;
  // Softened: p_t = softmax([0, 0.5]), p_s = softmax([0.5, 0]).
  const double z = std::exp(0.0) + std::exp(0.5);
  const double pt0 = 1 / z, pt1 = std::exp(0.5) / z;
  const double ps0 = pt1, ps1 = pt0;
  const double kl = pt0 * std::log(pt0 / ps0) + pt1 * std::log(pt1 / ps1);
  const double ce = -std::log(std::exp(1.0) / (std::exp(1.0) + 1.0));
  EXPECT_NEAR(distillation_loss(s, t, y, a, T).item<double>(), a * T * T * kl + (1 - a) * ce, 1e-6);
  EXPECT_NEAR(distillation_loss(s, t, y, 0.0, T).item<double>(), ce, 1e-6);  // alpha 0: CE
}

TEST(DistillationLoss, IsZeroWithZeroGradientWhenTheStudentIsTheTeacher) {
  const at::Tensor t = at::randn({4, 6, 10});  // [N, T, V] logits are rows too
  at::Tensor s = t.clone().requires_grad_();
  at::Tensor loss = distillation_loss(s, t, at::zeros({4, 6}, at::kLong), 1.0, 3.0);
  EXPECT_NEAR(loss.item<double>(), 0.0, 1e-6);
  loss.backward();
  EXPECT_LT(s.grad().abs().max().item<double>(), 1e-6);
}

TEST(Teacher, LoadsFrozenFromAStateDictAndRefusesAnotherArchitecture) {
  test::TempDir dir;
  Registries reg = builtin_registries();
  const InputShape in{1, 28, 28, 10};
  ModelSection cnn;
  cnn.name = "cnn";
  cnn.channels = {4, 8};
  cnn.fc = 16;
  torch::manual_seed(3);
  auto trained = reg.models.get("cnn", "", "")(cnn, in);
  save_state_dict(dir / "teacher.pt", *trained);

  Recipe r = parse_recipe("", "r.yaml", {"distill.teacher=" + dir / "teacher.pt",
                                          "distill.teacher_model.name=cnn",
                                          "distill.teacher_model.channels=[4,8]",
                                          "distill.teacher_model.fc=16"});
  auto teacher = load_teacher(r, reg.models, in, at::kCPU);
  EXPECT_FALSE(teacher->is_training());
  auto a = trained->named_parameters(), b = teacher->named_parameters();
  for (const auto& p : a) {
    EXPECT_TRUE(at::equal(p.value(), b[p.key()])) << p.key();
    EXPECT_FALSE(b[p.key()].requires_grad()) << p.key();
  }
  Recipe wrong = parse_recipe("", "r.yaml", {"distill.teacher=" + dir / "teacher.pt",
                                              "distill.teacher_model.name=cnn",
                                              "distill.teacher_model.channels=[8,8]"});
  try {
    load_teacher(wrong, reg.models, in, at::kCPU);
    FAIL();
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("set teacher_model to the architecture"),
              std::string::npos) << e.what();
  }
  Recipe missing = parse_recipe("", "r.yaml", {"distill.teacher=" + dir / "nope.pt"});
  EXPECT_THROW(load_teacher(missing, reg.models, in, at::kCPU), IoError);
}

}  // namespace
}  // namespace strata::train
