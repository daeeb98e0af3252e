// Pipeline-parallel execution: one stage of a model running a schedule
// (distributed/pipeline_schedule.h) over the microbatches of a batch, with
// activations sent forward and their gradients sent back over the pp group.
//
// Note [Pipeline messages]: an activation travels as a header (rank, shape
// and dtype; tag kHeader) and then its data (tag kActivation); its gradient
// comes back with the activation's shape and dtype (tag kGrad), which the
// sender already knows. Sends are asynchronous and complete by the end of
// the step, receives block, so the schedules' order (checked deadlock-free
// by simulate_pipeline) is all the executor needs; every wait has the
// group's timeout, so a dead stage fails its neighbours with a message.
//
// The batch is split along dim 0 into equal microbatches. The last stage
// backpropagates each microbatch's loss divided by the microbatch count, so
// the accumulated gradients are those of the batch mean: the same as the
// unsplit model.
#pragma once

#include <ATen/ATen.h>
#include <torch/nn/module.h>

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "distributed/communicator.h"
#include "distributed/pipeline_schedule.h"

namespace strata::dist {

struct StageFunctions {
  // The stage's forward of microbatch `mb`: x is the inputs' microbatch on
  // the first stage, the received activation (requiring grad) after it.
  std::function<at::Tensor(const at::Tensor& x, int mb)> forward;
  // Last stage: microbatch mb's loss (a mean) from the stage's output.
  std::function<at::Tensor(const at::Tensor& y, int mb)> loss;
  // Optional: what backward is called on (loss scaling); default identity.
  std::function<at::Tensor(const at::Tensor& loss)> scale_loss;
  // Optional: runs `backward`; `last` is the step's final backward on this
  // stage (data parallelism: only that one may all-reduce).
  std::function<void(const std::function<void()>& backward, bool last)> around_backward;
};

class PipelineExecutor {
 public:
  // ConfigError for an unknown schedule or microbatches < 1.
  PipelineExecutor(std::shared_ptr<Communicator> pp, std::string schedule,
                   int microbatches);

  int stage() const { return pp_->rank(); }
  int stages() const { return pp_->size(); }
  bool first() const { return stage() == 0; }
  bool last() const { return stage() == stages() - 1; }
  int microbatches() const { return microbatches_; }

  // One training step of this stage over `inputs` [B, ...] (B divisible by
  // the microbatch count; every stage passes the same batch, the first one
  // reads it). Returns the mean of the microbatch losses on the last stage
  // (detached, 0-dim), an undefined tensor elsewhere.
  at::Tensor train_step(const at::Tensor& inputs, const StageFunctions& fns);

  // Forward only (no autograd, one microbatch): the last stage's output,
  // undefined elsewhere.
  at::Tensor forward(const at::Tensor& inputs,
                     const std::function<at::Tensor(const at::Tensor&)>& forward);

  // Instrumentation: the most microbatches whose forward ran and whose
  // backward had not, at once, during the last train_step.
  int peak_activations() const { return peak_; }

 private:
  void send_activation(const at::Tensor& y);
  at::Tensor recv_activation();
  void wait_sends();

  std::shared_ptr<Communicator> pp_;
  int microbatches_;
  std::vector<PipeAction> actions_;
  at::Device device_{at::kCPU};  // where activations land: the inputs' device
  // Sends in flight and the tensors they read.
  std::vector<std::pair<std::unique_ptr<Work>, at::Tensor>> sends_;
  int peak_ = 0;
};

// A parameter tied across the pipeline (a language model's token embedding, on the
// first stage, the output projection on the last) lives as one copy on
// each; after backward, the two copies' gradients are summed so that both
// take the same step. Call on every stage (a no-op between the ends).
void sum_tied_gradients(torch::nn::Module& stage, const std::string& name,
                        Communicator& pp);

}  // namespace strata::dist
