// Knowledge distillation: the loss, and a frozen teacher built from a
// recipe's distill section.
//
// loss = alpha T^2 KL(softmax(t / T) || softmax(s / T)) + (1 - alpha) CE(s, y)
// (Hinton, Vinyals, Dean 2015; the T^2 keeps the soft term's gradient scale
// independent of T). Logits are [N, K] or [N, T, V] (flattened to rows);
// the KL term is averaged over rows, like the cross-entropy.
#pragma once

#include <ATen/ATen.h>

#include <memory>

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

}  // namespace strata::train
