#include "trainer/evaluate.h"

#include <torch/torch.h>

#include "trainer/amp.h"

namespace strata::train {

EvalSums evaluate_classifier(const EvalForward& forward, const at::Tensor& inputs,
                             const at::Tensor& targets, int64_t batch,
                             at::ScalarType compute_dtype, const EvalProgress& progress) {
  namespace F = torch::nn::functional;
  torch::NoGradGuard no_grad;
  EvalSums s;
  const int64_t n = inputs.size(0);
  at::Tensor loss_sum = at::zeros({}, inputs.options().dtype(at::kDouble));
  at::Tensor correct = at::zeros({}, inputs.options().dtype(at::kLong));
  bool counted = false;
  for (int64_t i = 0; i < n; i += batch) {
    const int64_t end = std::min(n, i + batch);
    at::Tensor logits;
    {
      AutocastGuard amp(inputs.device().type(), compute_dtype);
      logits = forward(inputs.slice(0, i, end));
    }
    if (!logits.defined()) {
      if (progress) progress(end, n);
      continue;
    }
    counted = true;
    logits = logits.reshape({-1, logits.size(-1)}).to(at::kFloat);
    at::Tensor y = targets.slice(0, i, end).reshape({-1});
    loss_sum += F::cross_entropy(logits, y, F::CrossEntropyFuncOptions().reduction(torch::kSum));
    correct += logits.argmax(1).eq(y).sum();
    if (progress) progress(end, n);
  }
  if (!counted) return s;
  s.loss_sum = loss_sum.item<double>();  // one host sync per evaluation
  s.correct = correct.item<int64_t>();
  s.count = targets.numel();
  return s;
}

EvalSums evaluate_classifier(Model& model, const at::Tensor& inputs,
                             const at::Tensor& targets, int64_t batch,
                             at::ScalarType compute_dtype, const EvalProgress& progress) {
  const bool was_training = model.is_training();
  model.eval();
  EvalSums s = evaluate_classifier([&](const at::Tensor& x) { return model.forward(x); },
                                   inputs, targets, batch, compute_dtype, progress);
  model.train(was_training);
  return s;
}

}  // namespace strata::train
