// Knowledge distillation: the loss, and a frozen teacher built from a
// recipe's distill section.
//
// loss = alpha T^2 KL(softmax(t / T) || softmax(s / T)) + (1 - alpha) CE(s, y)
// (Hinton, Vinyals, Dean 2015; the T^2 keeps the soft term's gradient scale
// independent of T). Logits are [N, K] or [N, T, V] (flattened to rows);
// the KL term is averaged over rows, like the cross-entropy.
//
// Note [Distillation hints]: the optional feature term (FitNets, Romero et
// al. 2015) adds  beta * mean over pairs of MSE(P(s_unit), t_unit)  for
// pairs of (student unit, teacher unit) outputs (Model::set_taps: "stage2",
// "block3"). P is a learned linear map from the student's channels to the
// teacher's (a 1x1 convolution on [B, C, H, W]; a linear layer on the last
// dimension of [B, T, C] or [B, C]); a student map of another height and
// width is average-pooled to the teacher's first. The projections train with
// the student (same optimizer, reduced across data-parallel ranks, saved in
// checkpoints) and are not part of model.pt.
#pragma once

#include <ATen/ATen.h>

#include <torch/nn/modules/linear.h>

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "trainer/models/models.h"
#include "trainer/recipe.h"

namespace strata::train {

at::Tensor distillation_loss(const at::Tensor& student_logits, const at::Tensor& teacher_logits,
                             const at::Tensor& targets, double alpha, double temperature);

// The teacher of recipe.distill: built by the registry from
// distill.teacher_model, its weights loaded from distill.teacher (strict:
// every name and shape must match), moved to `device`, eval mode, no
// gradients. Throws ConfigError/IoError naming the recipe key and the fix.
std::shared_ptr<Model> load_teacher(const Recipe& recipe, const ModelRegistry& models,
                                    const InputShape& input, c10::Device device);

// "s1:t1,s2:t2" -> {{s1, t1}, {s2, t2}}; ConfigError (naming `where`) for
// anything else. Empty text: no pairs.
std::vector<std::pair<std::string, std::string>> parse_hint_pairs(const std::string& text,
                                                                  const std::string& where);

class HintLoss : public torch::nn::Module {
 public:
  // Taps the paired units of both models and sizes one projection per pair
  // from a no-grad forward of `sample` (a batch of inputs) through both.
  HintLoss(std::vector<std::pair<std::string, std::string>> pairs, Model& student,
           Model& teacher, const at::Tensor& sample);
  // The mean MSE over the pairs, from both models' taps of their last
  // forward (the student's with autograd, the teacher's without).
  at::Tensor forward(const Model& student, const Model& teacher);
  const std::vector<std::pair<std::string, std::string>>& pairs() const { return pairs_; }

 private:
  std::vector<std::pair<std::string, std::string>> pairs_;
  std::vector<torch::nn::Linear> proj_;
  std::vector<std::vector<int64_t>> teacher_spatial_;  // H, W of 4-D teacher taps
};

}  // namespace strata::train
