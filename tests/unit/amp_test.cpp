// Mixed precision: the dynamic loss scaler's GradScaler semantics, its
// checkpointed state, and the autocast guard (CPU bf16 here; CUDA in the
// gpu tests' training runs).
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <limits>

#include "core/error.h"
#include "test_util.h"
#include "trainer/amp.h"
#include "trainer/checkpoint.h"
#include "trainer/trainer.h"

namespace strata::train {
namespace {

at::Tensor param_with_grad(std::vector<float> grad) {
  at::Tensor p = at::zeros({static_cast<int64_t>(grad.size())}, at::requires_grad());
  p.mutable_grad() = at::tensor(grad);
  return p;
}

TEST(LossScaler, StartsAt2To16AndScalesTheLoss) {
  LossScaler s;
  EXPECT_DOUBLE_EQ(s.scale(), 65536.0);
  EXPECT_DOUBLE_EQ(s.scale_loss(at::tensor(0.5)).item<double>(), 32768.0);
}

TEST(LossScaler, FiniteGradientsAreUnscaledAndTheStepTaken) {
  LossScaler s(LossScalerOptions{true, 8.0});
  at::Tensor p = param_with_grad({8.0f, -16.0f});
  EXPECT_TRUE(s.unscale({p}));
  EXPECT_TRUE(at::equal(p.grad(), at::tensor({1.0f, -2.0f})));
  EXPECT_TRUE(s.update());
  EXPECT_DOUBLE_EQ(s.scale(), 8.0);
  EXPECT_EQ(s.growth_tracker(), 1);
}

TEST(LossScaler, OverflowSkipsTheStepAndBacksOff) {
  for (float bad : {std::numeric_limits<float>::infinity(), std::nanf("")}) {
    LossScaler s(LossScalerOptions{true, 1024.0, 2.0, 0.5, 3});
    at::Tensor ok = param_with_grad({1.0f});
    at::Tensor p = param_with_grad({1.0f, bad});
    at::Tensor no_grad = at::zeros({2}, at::requires_grad());  // undefined grad: ignored
    ASSERT_TRUE(s.unscale({ok, p, no_grad}) == false);
    s.update();  // one clean step first would have advanced the tracker
    EXPECT_DOUBLE_EQ(s.scale(), 512.0);
    EXPECT_EQ(s.growth_tracker(), 0);
    EXPECT_EQ(s.skipped_steps(), 1);
  }
}

TEST(LossScaler, GrowsAfterGrowthIntervalCleanStepsAndAnOverflowResetsTheCount) {
  LossScaler s(LossScalerOptions{true, 4.0, 2.0, 0.5, 3});
  auto step = [&](float g) {
    at::Tensor p = param_with_grad({g});
    s.unscale({p});
    return s.update();
  };
  EXPECT_TRUE(step(1));
  EXPECT_TRUE(step(1));
  EXPECT_DOUBLE_EQ(s.scale(), 4.0);
  EXPECT_TRUE(step(1));  // third clean step: x2
  EXPECT_DOUBLE_EQ(s.scale(), 8.0);
  EXPECT_EQ(s.growth_tracker(), 0);
  EXPECT_TRUE(step(1));
  EXPECT_TRUE(step(1));
  EXPECT_FALSE(step(std::numeric_limits<float>::infinity()));  // reset before growing
  EXPECT_DOUBLE_EQ(s.scale(), 4.0);
  EXPECT_TRUE(step(1));
  EXPECT_TRUE(step(1));
  EXPECT_DOUBLE_EQ(s.scale(), 4.0);
  EXPECT_TRUE(step(1));
  EXPECT_DOUBLE_EQ(s.scale(), 8.0);
}

TEST(LossScaler, DisabledIsTransparent) {
  LossScaler s(LossScalerOptions{false});
  at::Tensor p = param_with_grad({std::numeric_limits<float>::infinity()});
  EXPECT_TRUE(at::equal(s.scale_loss(at::tensor(3.0)), at::tensor(3.0)));
  EXPECT_TRUE(s.unscale({p}));
  EXPECT_TRUE(s.update());
}

TEST(LossScaler, StateRoundTripsThroughACheckpoint) {
  test::TempDir dir;
  CheckpointStore store(dir / "ck", 2);
  torch::nn::Linear model(2, 2);
  torch::optim::SGD opt(model->parameters(), 0.1);
  LossScaler s(LossScalerOptions{true, 1024.0, 2.0, 0.5, 5});
  at::Tensor p = param_with_grad({1.0f});
  for (int i = 0; i < 3; ++i) {
    s.unscale({p});
    s.update();
  }
  TrainState st;
  st.step = 3;
  st.loss_scale = s.scale();
  st.loss_scale_growth = s.growth_tracker();
  const Registries reg = builtin_registries();
  const Trained trained{*model, opt, reg.optimizers.get("sgd", "", "").state};
  store.save_and_publish(st, trained);
  TrainState back = load_checkpoint(store.newest(), {}, trained);
  LossScaler resumed(LossScalerOptions{true, 1024.0, 2.0, 0.5, 5});
  resumed.restore(back.loss_scale, back.loss_scale_growth);
  EXPECT_DOUBLE_EQ(resumed.scale(), 1024.0);
  EXPECT_EQ(resumed.growth_tracker(), 3);
  // Two more clean steps grow it, exactly as the uninterrupted scaler would.
  for (auto* x : {&s, &resumed}) {
    for (int i = 0; i < 2; ++i) {
      x->unscale({p});
      x->update();
    }
  }
  EXPECT_DOUBLE_EQ(resumed.scale(), 2048.0);
  EXPECT_DOUBLE_EQ(resumed.scale(), s.scale());
}

TEST(Autocast, CpuBf16RunsMatmulsInBf16AndNests) {
  const at::Tensor a = at::randn({4, 8}), b = at::randn({8, 3});
  EXPECT_EQ(at::mm(a, b).scalar_type(), at::kFloat);
  {
    AutocastGuard outer(at::kCPU, at::kBFloat16);
    EXPECT_EQ(at::mm(a, b).scalar_type(), at::kBFloat16);
    {
      AutocastGuard inner(at::kCPU, at::kBFloat16);
      EXPECT_EQ(at::mm(a, b).scalar_type(), at::kBFloat16);
    }
    EXPECT_EQ(at::mm(a, b).scalar_type(), at::kBFloat16);  // still inside outer
    EXPECT_TRUE(at::allclose(at::mm(a, b).to(at::kFloat), at::mm(a.to(at::kBFloat16), b.to(at::kBFloat16)).to(at::kFloat)));
  }
  EXPECT_EQ(at::mm(a, b).scalar_type(), at::kFloat);
  {
    AutocastGuard off(at::kCPU, at::kFloat);  // fp32: a no-op
    EXPECT_EQ(at::mm(a, b).scalar_type(), at::kFloat);
  }
}

TEST(Autocast, Fp16OnTheCpuIsARecipeError) {
  EXPECT_THROW(AutocastGuard(at::kCPU, at::kHalf), ConfigError);
  EXPECT_EQ(precision_dtype("bf16"), at::kBFloat16);
  EXPECT_EQ(precision_dtype("fp16"), at::kHalf);
  EXPECT_EQ(precision_dtype("fp32"), at::kFloat);
  EXPECT_THROW(precision_dtype("fp8"), ConfigError);
}

}  // namespace
}  // namespace strata::train
