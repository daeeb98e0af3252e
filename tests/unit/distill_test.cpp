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
  auto trained = reg.models.get("cnn", "", "").build(cnn, in, {});
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

std::shared_ptr<Model> small_cnn(std::vector<int64_t> channels) {
  ModelSection c;
  c.name = "cnn";
  c.channels = std::move(channels);
  c.fc = 16;
  return builtin_registries().models.get("cnn", "", "").build(c, InputShape{1, 28, 28, 10}, {});
}

TEST(DistillationHints, AreTheMeanMseOfProjectedStudentFeatures) {
  torch::manual_seed(4);
  auto student = small_cnn({4, 8});
  auto teacher = small_cnn({6, 12});
  teacher->eval();
  for (auto& p : teacher->parameters()) p.requires_grad_(false);
  const at::Tensor x = at::randn({3, 1, 28, 28});
  // stage1 of the student is 14x14 and is pooled to the teacher's 7x7.
  HintLoss hints({{"stage1", "stage2"}, {"stage2", "stage2"}}, *student, *teacher, x);
  ASSERT_EQ(hints.parameters().size(), 4u);  // two projections, weight and bias
  student->forward(x);
  {
    torch::NoGradGuard no_grad;
    teacher->forward(x);
  }
  const at::Tensor loss = hints.forward(*student, *teacher);

  // By hand: a 1x1 convolution with each projection's weight and bias.
  auto np = hints.named_parameters();
  const at::Tensor t = teacher->taps().at("stage2");
  auto project = [&](const at::Tensor& s, const char* proj) {
    const at::Tensor w = np[std::string(proj) + ".weight"];
    return at::conv2d(s, w.unsqueeze(-1).unsqueeze(-1), np[std::string(proj) + ".bias"]);
  };
  const at::Tensor s1 = at::adaptive_avg_pool2d(student->taps().at("stage1"), {7, 7});
  const at::Tensor expected = ((project(s1, "proj0") - t).pow(2).mean() +
                               (project(student->taps().at("stage2"), "proj1") - t).pow(2).mean()) / 2;
  EXPECT_NEAR(loss.item<double>(), expected.item<double>(), 1e-5);

  loss.backward();
  for (const auto& p : hints.parameters()) EXPECT_TRUE(p.grad().defined());
  // The student's features get the gradient; its classifier took no part.
  EXPECT_TRUE(student->named_parameters()["features.0.weight"].grad().defined());
  EXPECT_FALSE(student->named_parameters()["classifier.0.weight"].grad().defined());
  for (const auto& p : teacher->parameters()) EXPECT_FALSE(p.grad().defined());
}

TEST(DistillationHints, BadPairsAndUnknownUnitsSayWhatExists) {
  EXPECT_EQ(parse_hint_pairs("stage1:stage2,stage2:stage2", "").size(), 2u);
  EXPECT_TRUE(parse_hint_pairs("", "").empty());
  for (const char* bad : {"stage1", "stage1:", "a:b:c", "stage1:stage1,"}) {
    EXPECT_THROW(parse_hint_pairs(bad, ""), ConfigError) << bad;
  }
  auto student = small_cnn({4, 8});
  auto teacher = small_cnn({6, 12});
  try {
    HintLoss({{"stage3", "stage1"}}, *student, *teacher, at::randn({2, 1, 28, 28}));
    FAIL();
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("this model has: stage1, stage2"), std::string::npos)
        << e.what();
  }
}

}  // namespace
}  // namespace strata::train
