// Optimizers, learning-rate schedules and gradient clipping.
//
// An LrSchedule is a pure function of the optimizer step, so a resumed run
// needs no schedule state beyond the step count.
#pragma once

#include <torch/nn/module.h>
#include <torch/optim/optimizer.h>

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "trainer/recipe.h"
#include "trainer/registry.h"

namespace strata::train {

using OptimizerFactory =
    std::function<std::unique_ptr<torch::optim::Optimizer>(
        const Recipe& recipe, torch::nn::Module& model)>;

// One parameter's optimizer state as named tensors, and back: how a
// checkpoint carries optimizer state by parameter name, so that it can be
// cut for another parallel layout like the parameters (the per-optimizer
// hook; a user-registered optimizer provides its own).
struct OptimizerStateCodec {
  // The fields of `state` ("momentum_buffer"; "step", "exp_avg", ...). A
  // scalar field (a step count) is a 0-dim tensor; the others are shaped
  // like the parameter.
  std::function<std::vector<std::pair<std::string, at::Tensor>>(
      const torch::optim::OptimizerParamState& state)>
      save;
  // The state of `param` from the fields save wrote (those shaped like it
  // already on its device and dtype, 0-dim ones as saved); null when there
  // is nothing to restore. ConfigError for a missing field.
  std::function<std::unique_ptr<torch::optim::OptimizerParamState>(
      const std::map<std::string, at::Tensor>& fields, const at::Tensor& param)>
      load;
};

struct OptimizerSpec {
  OptimizerFactory make;
  OptimizerStateCodec state;
};
using OptimizerRegistry = Registry<OptimizerSpec>;

// Per-parameter state of LibTorch optimizers (keyed by the parameter's
// TensorImpl, differently in 1.13 and 2.x): for optimizers that keep state
// per parameter as the built-in ones do. find: null when `param` has none.
torch::optim::OptimizerParamState* find_param_state(torch::optim::Optimizer& optimizer,
                                                    const at::Tensor& param);
void set_param_state(torch::optim::Optimizer& optimizer, const at::Tensor& param,
                     std::unique_ptr<torch::optim::OptimizerParamState> state);

// sgd (momentum, nesterov, L2 weight decay) and adamw (decoupled decay).
// Unless optimizer.decay_norm_and_bias, 1-D parameters (biases, norm scales)
// go in a second parameter group without weight decay.
void register_builtin_optimizers(OptimizerRegistry& registry);

class LrSchedule {
 public:
  virtual ~LrSchedule() = default;
  // Learning rate for optimizer step `step` (0-based), before warmup.
  virtual double lr(int64_t step) const = 0;
};

using ScheduleFactory = std::function<std::unique_ptr<LrSchedule>(
    const ScheduleSection& config, double base_lr, int64_t total_steps)>;
using ScheduleRegistry = Registry<ScheduleFactory>;

// constant; step (lr * gamma^floor(t / step_every)); cosine (from lr down to
// min_lr at the last step). All three are wrapped by make_schedule in a linear
// warmup: steps 0..w-1 use lr * (step + 1) / w, and the inner schedule then
// runs over the remaining total - w steps.
void register_builtin_schedules(ScheduleRegistry& registry);

std::unique_ptr<LrSchedule> make_schedule(const ScheduleRegistry& registry,
                                          const Recipe& recipe,
                                          int64_t total_steps);

// Scales gradients so their global L2 norm is at most max_norm (what
// torch.nn.utils.clip_grad_norm_ does) without a host synchronisation: the
// norm stays on the device, unlike LibTorch's C++ clip_grad_norm_, which
// returns it as a double and so stalls a GPU step.
//
// Model parallelism: the norm is of the whole model, whose parameters are
// spread over ranks. weights[i] says how much params[i]'s squared norm
// counts on this rank (1 for a shard; 1/t for a parameter replicated over
// t ranks; 0 for a copy counted elsewhere), and sum_over_model sums the
// weighted total over the model-parallel ranks in place.
// An optimizer's per-parameter state by parameter name, through its codec:
// "<name>/<field>" for each of `named`'s parameters with state (sgd:
// momentum_buffer; adamw: step as a 0-dim long tensor, exp_avg,
// exp_avg_sq).
std::vector<std::pair<std::string, at::Tensor>> optimizer_state_dict(
    torch::optim::Optimizer& optimizer, const OptimizerStateCodec& codec,
    const std::vector<std::pair<std::string, at::Tensor>>& named);
// The inverse: replaces the optimizer's state with `entries` (copied onto
// each parameter's device and dtype, 0-dim fields as they are). ConfigError
// for a field whose shape does not match its parameter's, or one the codec
// needs and lacks.
void load_optimizer_state_dict(torch::optim::Optimizer& optimizer,
                               const OptimizerStateCodec& codec,
                               const std::vector<std::pair<std::string, at::Tensor>>& named,
                               const std::map<std::string, at::Tensor>& entries);

void clip_grad_norm(const std::vector<at::Tensor>& params, double max_norm,
                    const std::vector<double>& weights = {},
                    const std::function<void(at::Tensor&)>& sum_over_model = {});

// Sets every parameter group's learning rate.
void set_learning_rate(torch::optim::Optimizer& optimizer, double lr);

}  // namespace strata::train
