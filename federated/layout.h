// The federated model state as one flat float32 vector: every parameter and
// floating-point buffer of a model (BatchNorm statistics travel too), in the
// model's state-dict order. Updates, aggregation and storage all work on
// this vector; the layout maps it back to named tensors.
#pragma once

#include <ATen/ATen.h>
#include <torch/nn/module.h>

#include <string>
#include <utility>
#include <vector>

namespace strata::fed {

struct TensorSlot {
  std::string name;
  std::vector<int64_t> shape;
  int64_t offset = 0;  // into the flat vector
  int64_t numel = 0;
};

class TensorLayout {
 public:
  TensorLayout() = default;
  // Parameters then floating buffers, each in registration order.
  static TensorLayout of(const torch::nn::Module& model);
  // A layout of these named shapes, in this order, all parameters (tests
  // and fuzzers that need no model).
  static TensorLayout of_shapes(const std::vector<std::pair<std::string, std::vector<int64_t>>>& shapes);

  const std::vector<TensorSlot>& slots() const { return slots_; }
  int64_t numel() const { return numel_; }
  // The parameters' share of the flat vector, its prefix; the floating
  // buffers (BatchNorm statistics) follow.
  int64_t parameters_numel() const { return parameters_numel_; }

  // The model's state as a flat float32 vector (a copy).
  at::Tensor flatten(const torch::nn::Module& model) const;
  // Writes `flat` into the model's tensors (no autograd).
  void load_into(torch::nn::Module& model, const at::Tensor& flat) const;
  // Named views of `flat`, shaped like the model's tensors.
  std::vector<std::pair<std::string, at::Tensor>> unflatten(const at::Tensor& flat) const;

  // Named tensors (e.g. a saved version or a fetched model) in layout order
  // as one flat vector; DataError naming the first name or size mismatch.
  at::Tensor from_named(const std::vector<std::pair<std::string, at::Tensor>>& named) const;

 private:
  std::vector<TensorSlot> slots_;
  int64_t numel_ = 0;
  int64_t parameters_numel_ = 0;
};

}  // namespace strata::fed
