// Activation checkpointing: gradients equal the plain run's (dropout on,
// BatchNorm statistics updated once, autocast replayed), the RNG stream is
// unaffected, and the recipe policy maps to blocks.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "core/error.h"
#include "trainer/activation_checkpoint.h"
#include "trainer/amp.h"
#include "trainer/models/gpt.h"
#include "trainer/trainer.h"

namespace strata::train {
namespace {

struct Outcome {
  std::vector<at::Tensor> grads;
  std::vector<at::Tensor> buffers;
  at::Tensor loss, rng_after;
};

// One forward + backward of a freshly built model (seed 0) on fixed data.
Outcome run(const ModelSection& c, const InputShape& in, const at::Tensor& x, const at::Tensor& y,
        const std::string& policy, int64_t every = 2, bool bf16 = false) {
  Registries reg = builtin_registries();
  torch::manual_seed(0);
  auto m = reg.models.get(c.name, "", "model.name").build(c, in, {});
  m->set_checkpointing(checkpoint_plan(policy, every, m->checkpoint_units(), "test"));
  m->train();
  torch::manual_seed(42);  // dropout draws
  at::Tensor loss;
  {
    AutocastGuard amp(at::kCPU, at::kBFloat16, bf16);
    at::Tensor logits = m->forward(x);
    loss = torch::nn::functional::cross_entropy(logits.reshape({-1, logits.size(-1)}).to(at::kFloat),
                                                y.reshape({-1}));
  }
  loss.backward();
  Outcome r;
  r.loss = loss.detach();
  for (auto& p : m->parameters()) r.grads.push_back(p.grad().clone());
  for (auto& b : m->buffers()) r.buffers.push_back(b.clone());
  r.rng_after = at::rand({4});  // the generator's next draws
  return r;
}

void expect_same(const Outcome& a, const Outcome& b, double tol) {
  EXPECT_TRUE(at::allclose(a.loss, b.loss, 0, tol));
  ASSERT_EQ(a.grads.size(), b.grads.size());
  for (size_t i = 0; i < a.grads.size(); ++i) {
    EXPECT_TRUE(at::allclose(a.grads[i], b.grads[i], 0, tol))
        << "gradient " << i << " max diff " << (a.grads[i] - b.grads[i]).abs().max().item<double>();
  }
  for (size_t i = 0; i < a.buffers.size(); ++i) {
    EXPECT_TRUE(at::allclose(a.buffers[i].to(at::kDouble), b.buffers[i].to(at::kDouble), 0, tol))
        << "buffer " << i;
  }
  EXPECT_TRUE(at::equal(a.rng_after, b.rng_after)) << "the RNG stream moved";
}

ModelSection gpt() {
  ModelSection c;
  c.name = "gpt";
  c.n_layer = 4;
  c.n_head = 2;
  c.d_model = 32;
  c.seq_len = 16;
  c.dropout = 0.1;
  return c;
}

TEST(ActivationCheckpointing, GptGradientsEqualThePlainRunWithDropout) {
  const at::Tensor x = at::randint(0, 256, {3, 16}).to(at::kLong);
  const at::Tensor y = at::randint(0, 256, {3, 16}).to(at::kLong);
  const InputShape in{1, 1, 1, 256};
  const Outcome plain = run(gpt(), in, x, y, "none");
  expect_same(plain, run(gpt(), in, x, y, "full"), 1e-6);
  expect_same(plain, run(gpt(), in, x, y, "every_k", 3), 1e-6);
}

TEST(ActivationCheckpointing, CnnStagesUpdateBatchNormStatisticsOnce) {
  ModelSection c;
  c.name = "cnn";
  c.channels = {8, 16};
  c.fc = 32;
  c.dropout = 0.2;
  const InputShape in{1, 28, 28, 10};
  const at::Tensor x = at::randn({6, 1, 28, 28});
  const at::Tensor y = at::randint(0, 10, {6}).to(at::kLong);
  const Outcome plain = run(c, in, x, y, "none");
  const Outcome full = run(c, in, x, y, "full");
  expect_same(plain, full, 1e-6);
  ASSERT_FALSE(plain.buffers.empty());  // running_mean/var/num_batches_tracked
}

TEST(ActivationCheckpointing, RecomputationReplaysAutocast) {
  ModelSection c = gpt();
  c.dropout = 0.0;
  const at::Tensor x = at::randint(0, 256, {2, 16}).to(at::kLong);
  const at::Tensor y = at::randint(0, 256, {2, 16}).to(at::kLong);
  const InputShape in{1, 1, 1, 256};
  expect_same(run(c, in, x, y, "none", 2, true), run(c, in, x, y, "full", 2, true), 1e-6);
}

TEST(ActivationCheckpointing, WithoutAutogradItIsAPlainCall) {
  torch::NoGradGuard no_grad;
  at::Tensor x = at::randn({3});
  int calls = 0;
  at::Tensor y = checkpoint([&](const at::Tensor& t) { ++calls; return t * 2; }, x);
  EXPECT_TRUE(at::equal(y, x * 2));
  EXPECT_EQ(calls, 1);
}

TEST(ActivationCheckpointing, PlanFollowsThePolicy) {
  EXPECT_EQ(checkpoint_plan("none", 2, 4, "r"), (std::vector<bool>{false, false, false, false}));
  EXPECT_EQ(checkpoint_plan("full", 2, 3, "r"), (std::vector<bool>{true, true, true}));
  EXPECT_EQ(checkpoint_plan("every_k", 2, 5, "r"), (std::vector<bool>{true, false, true, false, true}));
  EXPECT_TRUE(checkpoint_plan("none", 2, 0, "r").empty());
  try {
    checkpoint_plan("full", 2, 0, "recipe.yaml:3");
    FAIL();
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("no checkpointable units"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace strata::train
