// Activation (gradient) checkpointing: run a block without keeping its
// intermediate activations and recompute them in backward.
//
// Note [Activation checkpointing]: checkpoint(fn, x) runs fn(x) with
// autograd off and keeps only x. In backward it re-runs fn on x with
// autograd on -- under the CPU/CUDA generator states and the autocast state
// of the original forward, so dropout masks and casts match bit for bit --
// then backpropagates through that recomputed graph from inside the outer
// backward (the reentrant scheme of PyTorch's torch.utils.checkpoint). The
// block's parameter gradients are therefore produced once, in the inner
// backward, and hooks on them (the data-parallel GradientReducer) fire once.
// BatchNorm running statistics would be updated twice; the buffers passed
// are restored after the recomputation.
//
// Peak memory drops from every activation of every block to the block
// inputs plus one block's activations at a time; the price is one extra
// forward of each checkpointed block.
#pragma once

#include <ATen/ATen.h>

#include <functional>
#include <string>
#include <vector>

namespace strata::train {

using BlockFn = std::function<at::Tensor(const at::Tensor&)>;

// fn(input), checkpointed when autograd is on (a plain call otherwise).
// `buffers`: state fn mutates in training (BatchNorm running statistics),
// restored after the backward-time recomputation.
at::Tensor checkpoint(BlockFn fn, const at::Tensor& input,
                      std::vector<at::Tensor> buffers = {});

// Which of `units` checkpointable units (transformer blocks, CNN stages) a
// policy checkpoints: none, full (all), every_k (units 0, k, 2k, ...).
// Throws ConfigError (naming `where`) for an unknown policy or a policy
// other than none on a model without units.
std::vector<bool> checkpoint_plan(const std::string& policy, int64_t every,
                                  int64_t units, const std::string& where);

}  // namespace strata::train
