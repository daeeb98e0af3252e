// Quantization-aware training (issue #17): train.qat in the recipe.
//
// Note [Quantization-aware training]: the model's forward, traced (Note
// [Tracing the model seam]) over its own parameters, is rewritten into a
// training graph that computes what the static int8 model will
// (Note [Post-training quantization]), in float: every weight of a conv2d
// or linear goes through symmetric int8 fake quantization (per output
// channel or per tensor, scale max|w| / 127.5, as quantize_weight), and
// every activation the int8 model quantizes -- the outputs of conv2d,
// linear and residual adds (after the BatchNorm and ReLU they absorb) and
// the float inputs they read -- through affine uint8 fake quantization
// whose range a moving-average min/max observer tracks (torch.ao's QAT
// default). Values the int8 model passes through (max pooling, flatten,
// ReLU, dropout) are not quantized again; an average of them (mean,
// average pooling), which int8 rounds to its input's grid again, is
// fake-quantized with its input's range. The fake-quant ops are ATen's
// (fake_quantize_per_channel_affine, fake_quantize_per_tensor_affine),
// whose gradient is the straight-through estimator: the incoming gradient
// where the value is inside the quantization range, zero where it was
// clamped.
//
// A conv or linear that a BatchNorm alone reads is trained as it will be
// folded (Krishnamoorthi 2018, as torch.ao's ConvBn modules): the weight
// fake-quantized is w * gamma / sqrt(running_var + eps), the layer's output
// is divided by that factor again (plus the layer's bias) before the
// BatchNorm, so with running statistics (after freeze_bn_step, and in
// evaluation) the graph computes exactly the folded int8 layer's function.
//
// The graph runs op by op in the TorchScript interpreter, so autograd,
// autocast, data parallelism's gradient hooks and the optimizer see the
// model's own parameters as in eager training. The schedule: float before
// start_step; then observers and fake quantization; observers frozen at
// freeze_observer_step; BatchNorm on running statistics at freeze_bn_step.
// Evaluation runs the graph in eval mode (observers off, fake quantization
// on from start_step), so evaluation accuracy during QAT is that of the
// int8 model to come. The observers' ranges are the QAT state: saved in
// checkpoints (train-<tag>.pt, "qat") and, at the end of a run, in
// <run>/qat.pt next to model.pt, which strata-export --quantize qat reads
// instead of calibrating. (The BatchNorm batch counter num_batches_tracked
// does not advance during QAT; it is read only by BatchNorm without momentum,
// which no built-in model uses.)
#pragma once

#include <torch/script.h>

#include <map>
#include <string>
#include <utility>

#include "distributed/communicator.h"
#include "trainer/models/models.h"
#include "trainer/recipe.h"

namespace strata::train {

class QatGraph {
 public:
  // `model` (which outlives this) traced on `example` and rewritten as
  // above. ConfigError naming `where` (train.qat's place) for a schedule
  // that fake-quantizes before it observes, or a model with nothing to
  // quantize.
  QatGraph(Model& model, const QatSection& section, const at::Tensor& example,
           const std::string& where);

  // The model's forward with fake quantization, in the model's mode
  // (training or evaluation), at the step last set.
  at::Tensor forward(const at::Tensor& x);
  // Before each optimizer step: the schedule's position (optimizer steps taken).
  void set_step(int64_t step) { step_ = step; }
  // Whether a training forward at this step moves the observers.
  bool observing() const;
  // Data parallelism: the observers averaged over `group` (each rank saw
  // its own batches) so that every rank quantizes alike and a checkpoint
  // holds the state of all. Collective; on `transport` (the backend's device).
  void average_over(dist::Communicator& group, at::Device transport);

  // The observers' state as buffers, for checkpoints.
  torch::nn::Module& observers() { return *observers_; }
  // The observed ranges by activation point (Note [QAT ranges]), as
  // QuantOptions::ranges takes them.
  std::map<std::string, std::pair<double, double>> ranges() const;
  // How many weights and activations are fake-quantized.
  int64_t weights() const { return weights_; }
  int64_t activations() const { return static_cast<int64_t>(keys_.size()); }

 private:
  Model& model_;
  QatSection s_;
  torch::jit::Module traced_;
  std::shared_ptr<torch::jit::Graph> graph_;
  std::unique_ptr<torch::jit::Code> code_;
  std::shared_ptr<torch::nn::Module> observers_;
  std::vector<std::string> keys_;  // activation points, in the observers' order
  int64_t weights_ = 0;
  int64_t step_ = 0;
};

// <run>/qat.pt: the ranges, a torch.load-able state dict {"<point>": [lo, hi]}.
void save_qat_ranges(const std::map<std::string, std::pair<double, double>>& ranges,
                     const std::string& path);
// ConfigError naming `path` when it is not such a file.
std::map<std::string, std::pair<double, double>> load_qat_ranges(const std::string& path);

// The fake-quantization of one tensor, as the training graph applies it
// (exposed for tests): symmetric int8 weights, per output channel or per
// tensor; affine uint8 activations with the range `lo_hi` ([2] float).
at::Tensor fake_quantize_weight(const at::Tensor& w, bool per_channel);
at::Tensor fake_quantize_activation(const at::Tensor& x, const at::Tensor& lo_hi,
                                    int64_t quant_max);

}  // namespace strata::train
