// Classification metrics of a model on a fixed set of samples: images and
// their classes, or token windows and their next tokens.
#pragma once

#include <ATen/ATen.h>

#include <functional>

#include "trainer/models/models.h"

namespace strata::train {

// Sums over the predictions (not means), so shards can be added up across
// ranks.
struct EvalSums {
  double loss_sum = 0.0;  // summed cross-entropy
  int64_t correct = 0;    // argmax == target
  int64_t count = 0;      // predictions: samples, or tokens for text
};

// Told after each batch: samples done of the total (a progress line).
using EvalProgress = std::function<void(int64_t done, int64_t total)>;

// Evaluates `model` in eval mode without autograd on inputs [N, ...] and
// targets [N] (logits [N, K]) or [N, T] (logits [N, T, V]), `batch` samples
// at a time, under autocast to `compute_dtype` when it is not fp32;
// restores train mode.
EvalSums evaluate_classifier(Model& model, const at::Tensor& inputs,
                             const at::Tensor& targets, int64_t batch,
                             at::ScalarType compute_dtype = at::kFloat,
                             const EvalProgress& progress = {});

// The same through `forward` (called without autograd, under autocast, on
// each batch of inputs), which may return an undefined tensor: a pipeline
// stage before the last, which counts nothing. The caller sets eval mode.
using EvalForward = std::function<at::Tensor(const at::Tensor& inputs)>;
EvalSums evaluate_classifier(const EvalForward& forward, const at::Tensor& inputs,
                             const at::Tensor& targets, int64_t batch,
                             at::ScalarType compute_dtype = at::kFloat,
                             const EvalProgress& progress = {});

}  // namespace strata::train
