// One training step, reusable: the strata-train loop and the federated edge
// learner both run it.
//
// A step is
//   1. for each of grad_accum micro-batches: forward + loss under autocast,
//      then the backward policy -- plain; or no-sync accumulation under data
//      parallelism (only the step's last backward all-reduces); or a
//      pipeline schedule (GPipe / 1F1B over the stage's microbatches);
//   2. the gradient epilogue: wait for the data-parallel all-reduce, sum
//      tied gradients over the pipeline, unscale (fp16 loss scaling), add
//      the proximal term (FedProx), clip, set the learning rate, and step
//      the optimizer -- or skip the step on overflow; then the pruning
//      masks (trainer/prune.h) zero the pruned weights again; last,
//      Model::after_step (hbp's hedge update of its mixture weights).
// No host synchronisation: the mean loss comes back as a device tensor.
//
// Data parallelism is the last layout applied to a model (after
// parallelize()): the step registers the gradient reducer over the trained
// parameters and broadcasts them from rank 0 once.
#pragma once

#include <torch/optim/optimizer.h>

#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "distributed/gradient_reducer.h"
#include "trainer/amp.h"
#include "trainer/data/loader.h"
#include "trainer/parallelize.h"
#include "trainer/recipe.h"

namespace strata::train {

class Pruner;

struct TrainStepOptions {
  int64_t grad_accum = 1;
  at::ScalarType compute_dtype = at::kFloat;  // autocast dtype; fp16 enables loss scaling
  double clip_grad_norm = 0.0;                // 0: off
  bool broadcast_buffers = false;             // data parallel: rank 0's buffers each step
  dist::GradientReducerOptions reducer;       // data parallel
};

// The options the recipe sets: train.grad_accum, train.precision,
// train.clip_grad_norm and the distributed section's reducer settings.
TrainStepOptions train_step_options(const Recipe& recipe);

// A micro-batch's loss (a mean) from the model's output for `inputs`.
// Called outside autocast: it opens its own region (a distillation
// teacher runs in its own precision first).
using LossFn = std::function<at::Tensor(const at::Tensor& output, const at::Tensor& inputs,
                                        const at::Tensor& targets)>;
// Cross-entropy over the last dimension (classification: [B, K] vs [B];
// language modelling: [B, T, V] vs [B, T]).
at::Tensor cross_entropy(const at::Tensor& output, const at::Tensor& targets);
// The model's own training loss (Model::loss: the task's cross-entropy
// unless the model says otherwise) under autocast.
LossFn model_loss(Model& model, at::DeviceType device_type, at::ScalarType dtype);

struct StepResult {
  // The mean micro-batch loss: 0-dim double on the device, no host sync
  // (on a pipeline, defined on the last stage only).
  at::Tensor loss;
  bool skipped = false;  // fp16 overflow: the optimizer did not step
};

class TrainStep {
 public:
  // `model` and `optimizer` outlive the step. `extra`: other modules the
  // optimizer trains with the model (distillation hint projections), named
  // for the reducer. `dp`: the data-parallel group (null or size 1: none).
  TrainStep(ParallelModel& model, torch::optim::Optimizer& optimizer,
            std::vector<std::pair<std::string, at::Tensor>> extra, LossFn loss,
            std::shared_ptr<dist::Communicator> dp, at::Device device,
            TrainStepOptions options);
  ~TrainStep();
  TrainStep(const TrainStep&) = delete;
  TrainStep& operator=(const TrainStep&) = delete;

  // One optimizer step over grad_accum micro-batches from `next`, at
  // learning rate `lr`.
  StepResult run(const std::function<Batch()>& next, double lr);

  // Pruning (trainer/prune.h): after every optimizer step the pruner's
  // masks zero the pruned weights again. Null: none. Outlives the step.
  void set_pruner(Pruner* pruner) { pruner_ = pruner; }

  // FedProx (Li et al. 2020): adds mu (w - w_anchor) to every gradient,
  // w_anchor the parameters when this is called. mu 0: off.
  void set_proximal(double mu);

  LossScaler& scaler() { return scaler_; }
  const LossScaler& scaler() const { return scaler_; }
  // Everything the optimizer trains: the model's parameters, then extra's.
  const std::vector<at::Tensor>& params() const { return params_; }
  bool data_parallel() const { return reducer_ != nullptr; }

 private:
  void backward_micro(const Batch& b, int64_t i, at::Tensor& loss_sum);
  // Returns whether the optimizer stepped.
  bool epilogue(double lr);
  // Model parallelism: reduces over the ranks holding the model's other
  // parts (tp, then pp), in place.
  void over_model(at::Tensor& t, dist::ReduceOp op) const;

  ParallelModel& pm_;
  torch::optim::Optimizer& optimizer_;
  LossFn loss_;
  std::shared_ptr<dist::Communicator> dp_;
  at::Device device_;
  TrainStepOptions o_;
  LossScaler scaler_;
  std::vector<at::Tensor> params_;
  std::vector<double> norm_weights_;  // clip_grad_norm's, model parallel
  std::unique_ptr<dist::GradientReducer> reducer_;
  double mu_ = 0.0;
  std::vector<at::Tensor> anchors_;
  Pruner* pruner_ = nullptr;
};

}  // namespace strata::train
