#include "federated/layout.h"

#include <torch/torch.h>

#include "core/error.h"
#include "core/strings.h"

namespace strata::fed {
namespace {

// The tensors that make up the federated state, in layout order.
std::vector<std::pair<std::string, at::Tensor>> state_tensors(const torch::nn::Module& m) {
  std::vector<std::pair<std::string, at::Tensor>> out;
  for (const auto& p : m.named_parameters(/*recurse=*/true)) out.emplace_back(p.key(), p.value());
  for (const auto& b : m.named_buffers(/*recurse=*/true)) {
    if (b.value().is_floating_point()) out.emplace_back(b.key(), b.value());
  }
  return out;
}

}  // namespace

TensorLayout TensorLayout::of(const torch::nn::Module& model) {
  TensorLayout l;
  for (const auto& [name, t] : state_tensors(model)) {
    TensorSlot s;
    s.name = name;
    s.shape = t.sizes().vec();
    s.offset = l.numel_;
    s.numel = t.numel();
    l.numel_ += s.numel;
    l.slots_.push_back(std::move(s));
  }
  for (const auto& p : model.parameters()) l.parameters_numel_ += p.numel();
  return l;
}

TensorLayout TensorLayout::of_shapes(
    const std::vector<std::pair<std::string, std::vector<int64_t>>>& shapes) {
  TensorLayout l;
  for (const auto& [name, shape] : shapes) {
    TensorSlot s;
    s.name = name;
    s.shape = shape;
    s.offset = l.numel_;
    s.numel = 1;
    for (int64_t d : shape) s.numel *= d;
    l.numel_ += s.numel;
    l.slots_.push_back(std::move(s));
  }
  l.parameters_numel_ = l.numel_;
  return l;
}

at::Tensor TensorLayout::flatten(const torch::nn::Module& model) const {
  const auto tensors = state_tensors(model);
  STRATA_INTERNAL_ASSERT(tensors.size() == slots_.size(), "model does not match its layout");
  at::Tensor flat = at::empty({numel_}, at::kFloat);
  for (size_t i = 0; i < slots_.size(); ++i) {
    flat.slice(0, slots_[i].offset, slots_[i].offset + slots_[i].numel)
        .copy_(tensors[i].second.detach().reshape({-1}));
  }
  return flat;
}

void TensorLayout::load_into(torch::nn::Module& model, const at::Tensor& flat) const {
  STRATA_INTERNAL_ASSERT(flat.numel() == numel_, "flat state of ", flat.numel(),
                         " elements for a layout of ", numel_);
  const auto tensors = state_tensors(model);
  STRATA_INTERNAL_ASSERT(tensors.size() == slots_.size(), "model does not match its layout");
  torch::NoGradGuard no_grad;
  for (size_t i = 0; i < slots_.size(); ++i) {
    at::Tensor dst = tensors[i].second;
    dst.copy_(flat.slice(0, slots_[i].offset, slots_[i].offset + slots_[i].numel)
                  .view(dst.sizes()));
  }
}

std::vector<std::pair<std::string, at::Tensor>> TensorLayout::unflatten(
    const at::Tensor& flat) const {
  STRATA_INTERNAL_ASSERT(flat.numel() == numel_);
  std::vector<std::pair<std::string, at::Tensor>> out;
  for (const auto& s : slots_) {
    out.emplace_back(s.name, flat.slice(0, s.offset, s.offset + s.numel).view(s.shape));
  }
  return out;
}

at::Tensor TensorLayout::from_named(
    const std::vector<std::pair<std::string, at::Tensor>>& named) const {
  STRATA_CHECK_T(DataError, named.size() == slots_.size(), "got ", named.size(),
                 " tensors; the model has ", slots_.size());
  at::Tensor flat = at::empty({numel_}, at::kFloat);
  for (size_t i = 0; i < slots_.size(); ++i) {
    const TensorSlot& s = slots_[i];
    STRATA_CHECK_T(DataError, named[i].first == s.name && named[i].second.numel() == s.numel,
                   "tensor ", i, " is '", named[i].first, "' with ", named[i].second.numel(),
                   " elements; the model's is '", s.name, "' with ", s.numel);
    flat.slice(0, s.offset, s.offset + s.numel).copy_(named[i].second.reshape({-1}));
  }
  return flat;
}

}  // namespace strata::fed
