// Built-in image classifiers and the model registry.
//
// Shape legend: B batch, C channels, H height, W width, K classes.
// Every model maps float [B, C, H, W] to logits [B, K]. Parameter names follow
// PyTorch's nn.Sequential numbering so a Python user can rebuild the same
// network and load model.pt with load_state_dict(strict=True).
#pragma once

#include <torch/nn/module.h>

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "distributed/communicator.h"
#include "trainer/recipe.h"
#include "trainer/registry.h"

namespace strata::train {

// What the data looks like to a model. Images: C x H x W with K classes.
// Text: classes is the vocabulary (256 for bytes); the other fields are
// unused.
struct InputShape {
  int64_t channels = 1;  // C
  int64_t height = 28;   // H
  int64_t width = 28;    // W
  int64_t classes = 10;  // K
};

// Which part of a model one rank builds (parallelize() decides it; a model
// sees only this). Whole by default.
struct ModelPart {
  // The tensor-parallel group to split layers over (null: none). Only
  // models whose spec says tensor_parallel read it.
  std::shared_ptr<dist::Communicator> tp = nullptr;
  // The pipeline stage: layers [layer_begin, layer_end) of the model's
  // layer list (layer_end -1: to the end). A stage after the first takes
  // the previous stage's output as its input, a stage before the last
  // returns its activations instead of logits.
  int64_t layer_begin = 0;
  int64_t layer_end = -1;
};

// A model: a torch Module with a typed forward. Classifiers map [B, C, H, W]
// to logits [B, K]; language models (gpt) map ids [B, T] to [B, T, V].
class Model : public torch::nn::Module {
 public:
  ~Model() override = default;
  virtual at::Tensor forward(const at::Tensor& x) = 0;

  // The training loss of a micro-batch (a mean) from this model's output
  // for it: the task's cross-entropy over the last dimension, unless the
  // model trains with an objective of its own (hbp: the alpha-weighted sum
  // of its heads' losses, Note [Hedge Backpropagation]).
  virtual at::Tensor loss(const at::Tensor& output, const at::Tensor& targets);
  // Called by TrainStep after every step (taken, or skipped on an fp16
  // overflow), with a function that averages a tensor over the data-parallel ranks in place
  // (nothing to do without data parallelism): hbp's hedge update.
  virtual void after_step(const std::function<void(at::Tensor&)>& mean_over_data) {}
  // A model that predicts by mixing the outputs of several heads (hbp):
  // the mixture's weights, one per head, on the model's device. Undefined
  // for every other model.
  virtual at::Tensor mixture_weights() const { return {}; }

  // Activation checkpointing (Note [Activation checkpointing]): how many
  // units (transformer blocks, CNN stages) the model can checkpoint, and
  // which ones it does (plan[i] for unit i; missing entries: no).
  virtual int64_t checkpoint_units() const { return 0; }
  void set_checkpointing(std::vector<bool> plan) { plan_ = std::move(plan); }

  // Feature taps (distillation hints): unit i's output is named
  // unit_name(i) ("stage1", "block3": 1-based), and the forward keeps the
  // outputs of the tapped units in taps() until the next forward.
  std::string unit_name(size_t unit) const { return unit_kind() + std::to_string(unit + 1); }
  // Every tap name the model has, in order.
  std::vector<std::string> unit_names() const;
  // ConfigError naming the valid names for an unknown one.
  void set_taps(const std::vector<std::string>& names);
  const std::map<std::string, at::Tensor>& taps() const { return taps_; }

 protected:
  bool checkpointed(size_t unit) const { return unit < plan_.size() && plan_[unit]; }
  // What a unit is called: "stage" (cnn, resnet_small), "block" (gpt).
  virtual std::string unit_kind() const { return "unit"; }
  // Models pass every unit's output through this.
  const at::Tensor& unit_output(size_t unit, const at::Tensor& y) {
    if (!tapped_.empty() && unit < tapped_.size() && tapped_[unit]) taps_[unit_name(unit)] = y;
    return y;
  }

 private:
  std::vector<bool> plan_;
  std::vector<bool> tapped_;
  std::map<std::string, at::Tensor> taps_;
};

// What a model is trained for; it decides the data it takes and the
// metrics reported (language modelling adds perplexity).
enum class Task { kClassification, kLanguageModel };
const char* task_name(Task task);  // "classification", "language modelling"

using ModelFactory = std::function<std::shared_ptr<Model>(
    const ModelSection& config, const InputShape& input, const ModelPart& part)>;

// Everything the trainer knows about a model (the model seam): how to build
// it, or one part of it, and how it splits. The trainer, the distributed
// layer and the federated extension read only this; no file outside a
// model's own names one.
struct ModelSpec {
  ModelFactory build;
  Task task = Task::kClassification;
  // Whether build() splits layers over ModelPart::tp (Megatron-style).
  bool tensor_parallel = false;
  // Pipeline parallelism: the parameter count of each entry of the layer
  // list (its length is the number of layers; stages balance by these).
  // Unset: the model cannot be cut into stages.
  std::function<std::vector<int64_t>(const ModelSection& config, const InputShape& input)>
      layer_weights;
  // What the layer list is, for messages ("embedding, n_layer blocks, head").
  std::string layer_list;
  // Parameters that both the first and the last pipeline stage hold (tied
  // weights); their gradients are summed over the two.
  std::vector<std::string> tied_parameters;
  bool pipelined() const { return static_cast<bool>(layer_weights); }
};
using ModelRegistry = Registry<ModelSpec>;

// The spec of a classifier M(config, input), built whole (no tensor or
// pipeline parallelism).
template <class M>
ModelSpec classifier() {
  ModelSpec spec;
  spec.build = [](const ModelSection& c, const InputShape& in, const ModelPart&) {
    return std::static_pointer_cast<Model>(std::make_shared<M>(c, in));
  };
  spec.task = Task::kClassification;
  return spec;
}

// The registered names whose spec satisfies `pred` (for messages).
std::vector<std::string> models_where(const ModelRegistry& registry,
                                      const std::function<bool(const ModelSpec&)>& pred);

// mlp: 784-256-128-10 by default; cnn: [conv3x3-BN-ReLU-maxpool] x2 (32, 64
// channels) -> FC 128 -> FC 10; resnet_small: a CIFAR-style ResNet.
void register_builtin_models(ModelRegistry& registry);

// Parameter count (for logs and benchmarks).
int64_t parameter_count(const torch::nn::Module& model);

}  // namespace strata::train
