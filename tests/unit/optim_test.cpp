// LR schedules, optimizer construction and registry errors.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>

#include "core/error.h"
#include "trainer/models/models.h"
#include "trainer/optim.h"
#include "trainer/trainer.h"

namespace strata::train {
namespace {

std::unique_ptr<LrSchedule> schedule_for(const std::string& yaml,
                                         int64_t total) {
  Registries reg = builtin_registries();
  return make_schedule(reg.schedules, parse_recipe(yaml, "s.yaml"), total);
}

TEST(Schedule, Constant) {
  auto s = schedule_for("schedule: {name: constant}\noptimizer: {lr: 0.3}", 10);
  for (int64_t t : {0, 5, 9}) EXPECT_DOUBLE_EQ(s->lr(t), 0.3);
}

TEST(Schedule, StepDecaysEveryInterval) {
  auto s = schedule_for(
      "schedule: {name: step, step_every: 3, gamma: 0.5}\noptimizer: {lr: 1}",
      10);
  EXPECT_DOUBLE_EQ(s->lr(0), 1.0);
  EXPECT_DOUBLE_EQ(s->lr(2), 1.0);
  EXPECT_DOUBLE_EQ(s->lr(3), 0.5);
  EXPECT_DOUBLE_EQ(s->lr(9), 0.125);
}

TEST(Schedule, CosineRunsFromLrToMinLr) {
  auto s = schedule_for(
      "schedule: {name: cosine, min_lr: 0.1}\noptimizer: {lr: 1.1}", 11);
  EXPECT_DOUBLE_EQ(s->lr(0), 1.1);
  EXPECT_NEAR(s->lr(5), 0.6, 1e-12);  // halfway: (lr + min) / 2
  EXPECT_NEAR(s->lr(10), 0.1, 1e-12);
}

TEST(Schedule, WarmupIsLinearThenHandsOver) {
  auto s = schedule_for(
      "schedule: {name: cosine, warmup_steps: 4}\noptimizer: {lr: 2}", 14);
  EXPECT_DOUBLE_EQ(s->lr(0), 0.5);
  EXPECT_DOUBLE_EQ(s->lr(3), 2.0);
  EXPECT_DOUBLE_EQ(s->lr(4), 2.0);  // cosine starts at its peak
  EXPECT_NEAR(s->lr(13), 0.0, 1e-12);
}

TEST(Schedule, UnknownNamePointsAtTheRecipeLine) {
  try {
    schedule_for("optimizer: {lr: 1}\nschedule:\n  name: cosin\n", 10);
    FAIL() << "expected ConfigError";
  } catch (const ConfigError& e) {
    EXPECT_STREQ(e.what(),
                 "s.yaml:3: schedule.name: unknown schedule 'cosin'; did you "
                 "mean 'cosine'? Registered: constant, step, cosine.");
  }
}

TEST(Optimizer, NoWeightDecayOnBiasesAndNormsByDefault) {
  Registries reg = builtin_registries();
  Recipe r = parse_recipe("model: {name: cnn}\noptimizer: {name: sgd}", "o.yaml");
  auto model = reg.models.get("cnn", "", "model.name").build(r.model, InputShape{}, {});
  auto opt = reg.optimizers.get("sgd", "", "optimizer.name").make(r, *model);
  ASSERT_EQ(opt->param_groups().size(), 2u);
  for (const auto& p : opt->param_groups()[1].params()) EXPECT_EQ(p.dim(), 1);
  auto& no_decay = static_cast<torch::optim::SGDOptions&>(
      opt->param_groups()[1].options());
  EXPECT_EQ(no_decay.weight_decay(), 0.0);
  int64_t total = 0;
  for (const auto& g : opt->param_groups()) total += g.params().size();
  EXPECT_EQ(total, static_cast<int64_t>(model->parameters().size()));
}

TEST(Optimizer, AdamWNeedsTwoBetas) {
  Registries reg = builtin_registries();
  Recipe r = parse_recipe("optimizer:\n  name: adamw\n  betas: [0.9]\n", "o.yaml");
  auto model = reg.models.get("mlp", "", "model.name").build(r.model, InputShape{}, {});
  try {
    reg.optimizers.get("adamw", "", "optimizer.name").make(r, *model);
    FAIL() << "expected ConfigError";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find(
                  "o.yaml:3: optimizer.betas needs two values"),
              std::string::npos) << e.what();
  }
}

TEST(Models, ShapesAndPyTorchStyleNames) {
  Registries reg = builtin_registries();
  Recipe r;
  at::Tensor x = at::randn({3, 1, 28, 28});
  for (const std::string name : {"mlp", "cnn", "resnet_small"}) {
    auto m = reg.models.get(name, "", "model.name").build(r.model, InputShape{}, {});
    EXPECT_EQ(m->forward(x).sizes(), (at::IntArrayRef{3, 10})) << name;
  }
  auto cnn = reg.models.get("cnn", "", "model.name").build(r.model, InputShape{}, {});
  std::vector<std::string> names;
  for (const auto& p : cnn->named_parameters()) names.push_back(p.key());
  EXPECT_EQ(names, (std::vector<std::string>{
                       "features.0.weight", "features.1.weight",
                       "features.1.bias", "features.4.weight",
                       "features.5.weight", "features.5.bias",
                       "classifier.0.weight", "classifier.0.bias",
                       "classifier.2.weight", "classifier.2.bias"}));
  // conv 288 + bn 64 + conv 18432 + bn 128 + fc 401536 + fc 1290
  EXPECT_EQ(parameter_count(*cnn), 421738);
}

}  // namespace
}  // namespace strata::train

namespace strata::train {
namespace {

// The registry's adamw (multi-tensor kernels) takes the same steps as
// LibTorch's optim::AdamW with the same groups, and its state round-trips
// through optim::AdamW's serialisation.
TEST(Optimizer, ForeachAdamWMatchesLibTorchAdamW) {
  Registries reg = builtin_registries();
  Recipe r = parse_recipe(
      "model: {name: mlp, hidden: [16]}\n"
      "optimizer: {name: adamw, lr: 0.01, weight_decay: 0.1, betas: [0.9, 0.95]}\n",
      "r.yaml");
  torch::manual_seed(1);
  auto a = reg.models.get("mlp", "", "model.name").build(r.model, InputShape{1, 4, 4, 3}, {});
  torch::manual_seed(1);
  auto b = reg.models.get("mlp", "", "model.name").build(r.model, InputShape{1, 4, 4, 3}, {});
  auto fast = reg.optimizers.get("adamw", "", "optimizer.name").make(r, *a);
  std::vector<torch::optim::OptimizerParamGroup> groups;
  std::vector<at::Tensor> decay, no_decay;
  for (auto& p : b->parameters()) (p.dim() > 1 ? decay : no_decay).push_back(p);
  torch::optim::AdamWOptions o(0.01);
  o.betas({0.9, 0.95}).weight_decay(0.1);
  groups.emplace_back(decay, std::make_unique<torch::optim::AdamWOptions>(o));
  torch::optim::AdamWOptions o0 = o;
  o0.weight_decay(0.0);
  groups.emplace_back(no_decay, std::make_unique<torch::optim::AdamWOptions>(o0));
  torch::optim::AdamW reference(groups, o);
  const at::Tensor x = at::randn({8, 1, 4, 4}), y = at::randint(0, 3, {8}).to(at::kLong);
  for (int step = 0; step < 5; ++step) {
    for (auto* m : {a.get(), b.get()}) {
      m->zero_grad();
      torch::nn::functional::cross_entropy(m->forward(x), y).backward();
    }
    fast->step();
    reference.step();
  }
  auto pa = a->parameters(), pb = b->parameters();
  for (size_t i = 0; i < pa.size(); ++i) {
    EXPECT_TRUE(at::allclose(pa[i], pb[i], 1e-6, 1e-7)) << i;
  }
  // Its state is optim::AdamW's: a LibTorch AdamW loads it.
  std::stringstream buf;
  torch::save(*fast, buf);
  std::vector<torch::optim::OptimizerParamGroup> groups2;
  groups2.emplace_back(decay, std::make_unique<torch::optim::AdamWOptions>(o));
  groups2.emplace_back(no_decay, std::make_unique<torch::optim::AdamWOptions>(o0));
  torch::optim::AdamW loaded(groups2, o);
  torch::load(loaded, buf);
  EXPECT_EQ(loaded.state().size(), pa.size());
}

// Optimizer state by parameter name (sharded checkpoints carry it between
// layouts): a fresh optimizer on a copy of the model, loaded from it, takes
// the same next steps as the original.
TEST(Optimizer, StateByNameRoundTripsForSgdAndAdamW) {
  Registries reg = builtin_registries();
  for (const char* opt : {"sgd", "adamw"}) {
    Recipe r = parse_recipe(std::string("model: {name: mlp, hidden: [16]}\n"
                                        "optimizer: {name: ") + opt +
                                ", lr: 0.05, momentum: 0.9, weight_decay: 0.01}\n",
                            "r.yaml");
    torch::manual_seed(1);
    auto a = reg.models.get("mlp", "", "model.name").build(r.model, InputShape{1, 4, 4, 3}, {});
    auto oa = reg.optimizers.get(opt, "", "optimizer.name").make(r, *a);
    const at::Tensor x = at::randn({8, 1, 4, 4}), y = at::randint(0, 3, {8}).to(at::kLong);
    auto step = [&](Model& m, torch::optim::Optimizer& o) {
      m.zero_grad();
      torch::nn::functional::cross_entropy(m.forward(x), y).backward();
      o.step();
    };
    auto named = [](Model& m) {
      std::vector<std::pair<std::string, at::Tensor>> out;
      for (auto& p : m.named_parameters()) out.emplace_back(p.key(), p.value());
      return out;
    };
    for (int i = 0; i < 3; ++i) step(*a, *oa);
    const auto state = optimizer_state_dict(*oa, reg.optimizers.get(opt, "", "").state, named(*a));
    EXPECT_EQ(state.size(), std::string(opt) == "sgd" ? 4u : 12u) << opt;  // 4 params
    torch::manual_seed(2);
    auto b = reg.models.get("mlp", "", "model.name").build(r.model, InputShape{1, 4, 4, 3}, {});
    {
      torch::NoGradGuard no_grad;
      for (auto& [name, t] : named(*b)) t.copy_(a->named_parameters()[name]);
    }
    auto ob = reg.optimizers.get(opt, "", "optimizer.name").make(r, *b);
    std::map<std::string, at::Tensor> entries(state.begin(), state.end());
    load_optimizer_state_dict(*ob, reg.optimizers.get(opt, "", "").state, named(*b), entries);
    for (int i = 0; i < 2; ++i) {
      step(*a, *oa);
      step(*b, *ob);
    }
    for (auto& [name, t] : named(*b)) {
      EXPECT_TRUE(at::equal(t, a->named_parameters()[name])) << opt << " " << name;
    }
    entries.begin()->second = at::zeros({7});
    EXPECT_THROW(load_optimizer_state_dict(*ob, reg.optimizers.get(opt, "", "").state, named(*b), entries), ConfigError) << opt;
  }
}

TEST(Optimizer, ClipGradNormMatchesLibTorch) {
  torch::manual_seed(2);
  std::vector<at::Tensor> a, b;
  for (int64_t n : {3, 50, 7}) {
    at::Tensor p = at::zeros({n}, at::requires_grad());
    p.mutable_grad() = at::randn({n}) * 3;
    at::Tensor q = at::zeros({n}, at::requires_grad());
    q.mutable_grad() = p.grad().clone();
    a.push_back(p);
    b.push_back(q);
  }
  clip_grad_norm(a, 1.5);
  torch::nn::utils::clip_grad_norm_(b, 1.5);
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_TRUE(at::allclose(a[i].grad(), b[i].grad(), 1e-5, 1e-7)) << i;
  }
  // Below the bound: unchanged.
  at::Tensor before = a[0].grad().clone();
  clip_grad_norm(a, 1e6);
  EXPECT_TRUE(at::allclose(a[0].grad(), before));
}

}  // namespace
}  // namespace strata::train
