// Classification metrics of a model on a fixed set of samples.
#pragma once

#include <ATen/ATen.h>

#include "trainer/models/models.h"

namespace strata::train {

// Sums over the samples (not means), so shards can be added up across ranks.
struct EvalSums {
  double loss_sum = 0.0;  // summed cross-entropy
  int64_t correct = 0;
  int64_t count = 0;
};

// Evaluates `model` in eval mode without autograd on images [N, C, H, W]
// and labels [N], `batch` samples at a time; restores train mode.
EvalSums evaluate_classifier(Model& model, const at::Tensor& images,
                             const at::Tensor& labels, int64_t batch);

}  // namespace strata::train
