#include "trainer/optim.h"

#include <torch/optim/adamw.h>
#include <torch/optim/sgd.h>
#include <torch/version.h>

#include <cmath>
#include <map>
#include <sstream>
#include <string>
#include <type_traits>

#include "core/error.h"
#include "core/strings.h"

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

// LibTorch keys per-parameter optimizer state by the TensorImpl: as its
// address printed (1.13) or the address itself (2.x).
template <class Map>
typename Map::key_type key_of(const Map&, const at::Tensor& p) {
  using Key = typename Map::key_type;
  if constexpr (std::is_same_v<Key, std::string>) {
    std::ostringstream key;  // what LibTorch 1.13's c10::guts::to_string wrote
    key << static_cast<const void*>(p.unsafeGetTensorImpl());
    return key.str();
  } else {
    return static_cast<Key>(p.unsafeGetTensorImpl());
  }
}

// AdamW (Loshchilov & Hutter) with LibTorch's state and options -- so its
// checkpoints are torch::optim::AdamW's -- but a step made of multi-tensor
// (_foreach) kernels: ~10 launches per parameter group instead of ~10 per
// parameter, which on a GPU is the difference between a launch-bound and a
// compute-bound optimizer (what PyTorch's default foreach AdamW does). Same
// arithmetic as optim::AdamW::step (tested against it), amsgrad excluded.
class ForeachAdamW final : public optim::AdamW {
 public:
  using optim::AdamW::AdamW;

  auto state_key(const at::Tensor& p) { return key_of(state(), p); }

  at::Tensor step(LossClosure closure = nullptr) override {
    torch::NoGradGuard no_grad;
    at::Tensor loss;
    if (closure) {
      at::AutoGradMode enable_grad(true);
      loss = closure();
    }
    for (auto& group : param_groups()) {
      auto& o = static_cast<optim::AdamWOptions&>(group.options());
      STRATA_CHECK_T(ConfigError, !o.amsgrad(), "adamw: amsgrad is not supported");
      const double lr = o.lr(), wd = o.weight_decay(), eps = o.eps();
      const double beta1 = std::get<0>(o.betas()), beta2 = std::get<1>(o.betas());
      // Parameters are stepped together when their step counts agree (all
      // of them, unless some had no gradient on earlier steps).
      struct Lists {
        std::vector<at::Tensor> p, g, m, v;
      };
      std::map<int64_t, Lists> by_step;
      for (auto& p : group.params()) {
        if (!p.grad().defined()) continue;
        auto it = state().find(state_key(p));
        if (it == state().end()) {
          auto st = std::make_unique<optim::AdamWParamState>();
          st->step(0);
          st->exp_avg(at::zeros_like(p, at::MemoryFormat::Preserve));
          st->exp_avg_sq(at::zeros_like(p, at::MemoryFormat::Preserve));
          it = state().emplace(state_key(p), std::move(st)).first;
        }
        auto& st = static_cast<optim::AdamWParamState&>(*it->second);
        st.step(st.step() + 1);
        Lists& l = by_step[st.step()];
        l.p.push_back(p);
        l.g.push_back(p.grad());
        l.m.push_back(st.exp_avg());
        l.v.push_back(st.exp_avg_sq());
      }
      for (auto& [step, l] : by_step) {
        if (wd != 0) at::_foreach_mul_(l.p, 1.0 - lr * wd);
        at::_foreach_mul_(l.m, beta1);
        at::_foreach_add_(l.m, l.g, 1.0 - beta1);
        at::_foreach_mul_(l.v, beta2);
        at::_foreach_addcmul_(l.v, l.g, l.g, 1.0 - beta2);
        const double bc1 = 1.0 - std::pow(beta1, static_cast<double>(step));
        const double bc2 = 1.0 - std::pow(beta2, static_cast<double>(step));
        std::vector<at::Tensor> denom = at::_foreach_sqrt(l.v);
        at::_foreach_div_(denom, std::sqrt(bc2));
        at::_foreach_add_(denom, eps);
        at::_foreach_addcdiv_(l.p, l.m, denom, -lr / bc1);
      }
    }
    return loss;
  }
};

std::unique_ptr<optim::Optimizer> make_adamw(const Recipe& r,
                                             torch::nn::Module& model) {
  const OptimizerSection& c = r.optimizer;
  STRATA_CHECK_T(ConfigError, c.betas.size() == 2, r.where("optimizer.betas"),
                 "optimizer.betas needs two values [beta1, beta2], got ",
                 c.betas.size());
  optim::AdamWOptions o(c.lr);
  o.betas({c.betas[0], c.betas[1]}).eps(c.eps).weight_decay(c.weight_decay);
  return std::make_unique<ForeachAdamW>(param_groups(model, c, o), o);
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

void clip_grad_norm(const std::vector<at::Tensor>& params, double max_norm,
                    const std::vector<double>& weights,
                    const std::function<void(at::Tensor&)>& sum_over_model) {
  STRATA_INTERNAL_ASSERT(weights.empty() || weights.size() == params.size(),
                         "clip_grad_norm: ", weights.size(), " weights for ", params.size(),
                         " parameters");
  std::vector<at::Tensor> grads;
  std::vector<double> w;
  for (size_t i = 0; i < params.size(); ++i) {
    if (!params[i].grad().defined()) continue;
    grads.push_back(params[i].grad());
    w.push_back(weights.empty() ? 1.0 : weights[i]);
  }
  if (grads.empty() && !sum_over_model) return;
  torch::NoGradGuard no_grad;
  at::Tensor total;
  if (weights.empty() && !sum_over_model) {
    total = at::stack(at::_foreach_norm(grads, 2)).to(at::kFloat).norm();
  } else {
    at::Tensor sq = at::zeros({1}, at::TensorOptions(at::kFloat)
                                       .device(grads.empty() ? at::Device(at::kCPU)
                                                             : grads[0].device()));
    if (!grads.empty()) {
      const at::Tensor norms = at::stack(at::_foreach_norm(grads, 2)).to(at::kFloat);
      sq += (norms * norms * at::tensor(w, at::kDouble).to(norms.options())).sum();
    }
    if (sum_over_model) sum_over_model(sq);
    total = sq.sqrt();
  }
  const at::Tensor coef = (max_norm / (total + 1e-6)).clamp_max(1.0);
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 1)
  at::_foreach_mul_(grads, coef);
#else
  for (auto& g : grads) g.mul_(coef);  // no tensor-scalar foreach before 2.1
#endif
}

torch::optim::OptimizerParamState* find_param_state(torch::optim::Optimizer& optimizer,
                                                    const at::Tensor& param) {
  auto& state = optimizer.state();
  auto it = state.find(key_of(state, param));
  return it == state.end() ? nullptr : it->second.get();
}

void set_param_state(torch::optim::Optimizer& optimizer, const at::Tensor& param,
                     std::unique_ptr<torch::optim::OptimizerParamState> st) {
  auto& state = optimizer.state();
  state[key_of(state, param)] = std::move(st);
}

std::vector<std::pair<std::string, at::Tensor>> optimizer_state_dict(
    torch::optim::Optimizer& optimizer, const OptimizerStateCodec& codec,
    const std::vector<std::pair<std::string, at::Tensor>>& named) {
  std::vector<std::pair<std::string, at::Tensor>> out;
  for (const auto& [name, p] : named) {
    const optim::OptimizerParamState* st = find_param_state(optimizer, p);
    if (st == nullptr) continue;
    for (auto& [field, value] : codec.save(*st)) out.emplace_back(name + "/" + field, value);
  }
  return out;
}

void load_optimizer_state_dict(torch::optim::Optimizer& optimizer,
                               const OptimizerStateCodec& codec,
                               const std::vector<std::pair<std::string, at::Tensor>>& named,
                               const std::map<std::string, at::Tensor>& entries) {
  torch::NoGradGuard no_grad;
  optimizer.state().clear();
  for (const auto& [name, p] : named) {
    const std::string prefix = name + "/";
    std::map<std::string, at::Tensor> fields;
    for (auto it = entries.lower_bound(prefix);
         it != entries.end() && it->first.compare(0, prefix.size(), prefix) == 0; ++it) {
      const at::Tensor& v = it->second;
      const std::string field = it->first.substr(prefix.size());
      if (v.dim() == 0) {
        fields[field] = v;
        continue;
      }
      STRATA_CHECK_T(ConfigError, v.sizes().equals(p.sizes()), "optimizer state '", it->first,
                     "' has shape ", v.sizes(), ", the parameter ", p.sizes());
      fields[field] = v.to(p.options(), /*non_blocking=*/false, /*copy=*/true);
    }
    if (fields.empty()) continue;
    std::unique_ptr<optim::OptimizerParamState> st;
    try {
      st = codec.load(fields, p);
    } catch (const ConfigError& e) {
      throw ConfigError(str("optimizer state of '", name, "': ", e.what()));
    }
    if (st) set_param_state(optimizer, p, std::move(st));
  }
}

namespace {

at::Tensor field(const std::map<std::string, at::Tensor>& fields, const char* name,
                 const char* optimizer) {
  auto it = fields.find(name);
  STRATA_CHECK_T(ConfigError, it != fields.end(), "no '", name, "'; was it written by ",
                 optimizer, "?");
  return it->second;
}

// Each built-in optimizer's codec knows its own state type.
OptimizerStateCodec sgd_codec() {
  OptimizerStateCodec c;
  c.save = [](const optim::OptimizerParamState& s) {
    const auto& st = static_cast<const optim::SGDParamState&>(s);
    std::vector<std::pair<std::string, at::Tensor>> out;
    if (st.momentum_buffer().defined()) out.emplace_back("momentum_buffer", st.momentum_buffer());
    return out;
  };
  c.load = [](const std::map<std::string, at::Tensor>& f, const at::Tensor&) {
    auto st = std::make_unique<optim::SGDParamState>();
    st->momentum_buffer(field(f, "momentum_buffer", "sgd"));
    return std::unique_ptr<optim::OptimizerParamState>(std::move(st));
  };
  return c;
}

OptimizerStateCodec adamw_codec() {
  OptimizerStateCodec c;
  c.save = [](const optim::OptimizerParamState& s) {
    const auto& st = static_cast<const optim::AdamWParamState&>(s);
    return std::vector<std::pair<std::string, at::Tensor>>{
        {"step", at::scalar_tensor(st.step(), at::kLong)},
        {"exp_avg", st.exp_avg()},
        {"exp_avg_sq", st.exp_avg_sq()}};
  };
  c.load = [](const std::map<std::string, at::Tensor>& f, const at::Tensor&) {
    auto st = std::make_unique<optim::AdamWParamState>();
    st->step(field(f, "step", "adamw").item<int64_t>());
    st->exp_avg(field(f, "exp_avg", "adamw"));
    st->exp_avg_sq(field(f, "exp_avg_sq", "adamw"));
    return std::unique_ptr<optim::OptimizerParamState>(std::move(st));
  };
  return c;
}

}  // namespace

void register_builtin_optimizers(OptimizerRegistry& registry) {
  registry.add("sgd", {make_sgd, sgd_codec()});
  registry.add("adamw", {make_adamw, adamw_codec()});
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
