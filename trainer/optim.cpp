#include "trainer/optim.h"

#include <torch/optim/adamw.h>
#include <torch/optim/sgd.h>

#include <cmath>

#include "core/error.h"

namespace strata::train {
namespace optim = torch::optim;
namespace {

// {decayed, not decayed} parameter lists.
std::pair<std::vector<at::Tensor>, std::vector<at::Tensor>> split_decay(
    torch::nn::Module& model, bool decay_1d) {
  std::vector<at::Tensor> decay, no_decay;
  for (const auto& p : model.parameters()) {
    if (!p.requires_grad()) continue;
    (decay_1d || p.dim() > 1 ? decay : no_decay).push_back(p);
  }
  return {decay, no_decay};
}

template <class Options>
std::vector<optim::OptimizerParamGroup> param_groups(
    torch::nn::Module& model, const OptimizerSection& c, const Options& base) {
  auto [decay, no_decay] = split_decay(model, c.decay_norm_and_bias);
  std::vector<optim::OptimizerParamGroup> groups;
  groups.emplace_back(decay, std::make_unique<Options>(base));
  if (!no_decay.empty()) {
    Options o = base;
    o.weight_decay(0.0);
    groups.emplace_back(no_decay, std::make_unique<Options>(o));
  }
  return groups;
}

std::unique_ptr<optim::Optimizer> make_sgd(const Recipe& r,
                                           torch::nn::Module& model) {
  const OptimizerSection& c = r.optimizer;
  STRATA_CHECK_T(ConfigError, !c.nesterov || c.momentum > 0,
                 r.where("optimizer.nesterov"), "optimizer.nesterov needs "
                 "optimizer.momentum > 0 (it is ", c.momentum, ")");
  optim::SGDOptions o(c.lr);
  o.momentum(c.momentum).nesterov(c.nesterov).weight_decay(c.weight_decay);
  return std::make_unique<optim::SGD>(param_groups(model, c, o), o);
}

std::unique_ptr<optim::Optimizer> make_adamw(const Recipe& r,
                                             torch::nn::Module& model) {
  const OptimizerSection& c = r.optimizer;
  STRATA_CHECK_T(ConfigError, c.betas.size() == 2, r.where("optimizer.betas"),
                 "optimizer.betas needs two values [beta1, beta2], got ",
                 c.betas.size());
  optim::AdamWOptions o(c.lr);
  o.betas({c.betas[0], c.betas[1]}).eps(c.eps).weight_decay(c.weight_decay);
  return std::make_unique<optim::AdamW>(param_groups(model, c, o), o);
}

class Constant final : public LrSchedule {
 public:
  explicit Constant(double lr) : lr_(lr) {}
  double lr(int64_t) const override { return lr_; }

 private:
  double lr_;
};

class StepDecay final : public LrSchedule {
 public:
  StepDecay(double lr, int64_t every, double gamma)
      : lr_(lr), every_(every), gamma_(gamma) {}
  double lr(int64_t step) const override {
    return lr_ * std::pow(gamma_, static_cast<double>(step / every_));
  }

 private:
  double lr_;
  int64_t every_;
  double gamma_;
};

// lr(t) = min + (base - min) * (1 + cos(pi * t / (T - 1))) / 2, t in [0, T).
// reference: Loshchilov & Hutter 2017, "SGDR", eq. 5 (one cycle, no restart).
class Cosine final : public LrSchedule {
 public:
  Cosine(double lr, double min_lr, int64_t total)
      : lr_(lr), min_(min_lr), total_(total) {}
  double lr(int64_t step) const override {
    if (total_ <= 1) return lr_;
    const double t = std::min<double>(step, total_ - 1) / (total_ - 1);
    return min_ + (lr_ - min_) * 0.5 * (1.0 + std::cos(M_PI * t));
  }

 private:
  double lr_;
  double min_;
  int64_t total_;
};

class Warmup final : public LrSchedule {
 public:
  Warmup(std::unique_ptr<LrSchedule> inner, double lr, int64_t steps)
      : inner_(std::move(inner)), lr_(lr), steps_(steps) {}
  double lr(int64_t step) const override {
    if (step < steps_) return lr_ * static_cast<double>(step + 1) / steps_;
    return inner_->lr(step - steps_);
  }

 private:
  std::unique_ptr<LrSchedule> inner_;
  double lr_;
  int64_t steps_;
};

}  // namespace

void register_builtin_optimizers(OptimizerRegistry& registry) {
  registry.add("sgd", make_sgd);
  registry.add("adamw", make_adamw);
}

void register_builtin_schedules(ScheduleRegistry& registry) {
  registry.add("constant", [](const ScheduleSection&, double lr, int64_t) {
    return std::unique_ptr<LrSchedule>(new Constant(lr));
  });
  registry.add("step", [](const ScheduleSection& c, double lr, int64_t) {
    return std::unique_ptr<LrSchedule>(new StepDecay(lr, c.step_every, c.gamma));
  });
  registry.add("cosine", [](const ScheduleSection& c, double lr, int64_t total) {
    return std::unique_ptr<LrSchedule>(new Cosine(lr, c.min_lr, total));
  });
}

std::unique_ptr<LrSchedule> make_schedule(const ScheduleRegistry& registry,
                                          const Recipe& r,
                                          int64_t total_steps) {
  const ScheduleSection& c = r.schedule;
  STRATA_CHECK_T(ConfigError, c.min_lr <= r.optimizer.lr,
                 r.where("schedule.min_lr"), "schedule.min_lr=", c.min_lr,
                 " is above optimizer.lr=", r.optimizer.lr,
                 "; lower schedule.min_lr");
  const int64_t warmup = std::min(c.warmup_steps, total_steps);
  const auto& factory =
      registry.get(c.name, r.where("schedule.name"), "schedule.name");
  auto inner = factory(c, r.optimizer.lr, total_steps - warmup);
  if (warmup == 0) return inner;
  return std::make_unique<Warmup>(std::move(inner), r.optimizer.lr, warmup);
}

void set_learning_rate(torch::optim::Optimizer& optimizer, double lr) {
  for (auto& group : optimizer.param_groups()) group.options().set_lr(lr);
}

}  // namespace strata::train
