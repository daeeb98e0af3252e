#include "trainer/evaluate.h"

#include <torch/torch.h>

namespace strata::train {

EvalSums evaluate_classifier(Model& model, const at::Tensor& images,
                             const at::Tensor& labels, int64_t batch) {
  namespace F = torch::nn::functional;
  torch::NoGradGuard no_grad;
  const bool was_training = model.is_training();
  model.eval();
  EvalSums s;
  s.count = images.size(0);
  for (int64_t i = 0; i < s.count; i += batch) {
    const int64_t end = std::min(s.count, i + batch);
    at::Tensor logits = model.forward(images.slice(0, i, end));
    at::Tensor y = labels.slice(0, i, end);
    s.loss_sum += F::cross_entropy(logits, y, F::CrossEntropyFuncOptions().reduction(torch::kSum))
                      .item<double>();
    s.correct += logits.argmax(1).eq(y).sum().item<int64_t>();
  }
  model.train(was_training);
  return s;
}

}  // namespace strata::train
