// Magnitude pruning during training (issue #17): train.prune in the recipe.
//
// Note [Pruning masks are the zeros]: the weights of two or more dimensions
// (less train.prune.exclude) are pruned by magnitude -- with one threshold
// over all of them (scope global) or per tensor (scope layer) -- to the
// sparsity of Zhu & Gupta's (2017) cubic ramp,
//   s(t) = s_f (1 - (1 - (t - start) / (end - start))^3),   start <= t <= end,
// the masks recomputed every `every` steps on the ramp and at its end. The
// TrainStep epilogue multiplies the weights by their masks after every
// optimizer step, so a pruned weight stays exactly zero whatever its
// gradient, momentum or weight decay. That makes the mask recoverable from
// the weights: a resumed run takes (w != 0) as the mask, so checkpoints and
// model.pt need no extra tensors and stay plain state dicts, and a resume is
// bitwise equal to the run it continues (an unpruned weight that is exactly
// 0.0 would be taken as pruned; trained float weights are not). Data
// parallel ranks hold equal weights and so compute equal masks; a model
// split over ranks (tensor or pipeline parallel) is refused for now.
//
// With structure=channels the same ramp prunes whole channels instead
// (Note [Channel groups]): each group -- a conv's output channels or a
// linear's units whose every reader can lose them -- loses the fraction of
// its channels whose producer weights have the smallest L1 (or L2) norm
// (at least one channel stays), and the mask zeroes the channel's weight
// row, bias, and the weight and bias of its BatchNorm, so the channel's
// output is exactly 0 through training, checkpoints and resume (the
// channel mask comes back from the weight rows), and strata-export can
// delete it (shrink_channels).
#pragma once

#include <torch/torch.h>

#include <string>
#include <utility>
#include <vector>

#include "core/json.h"
#include "trainer/channels.h"
#include "trainer/recipe.h"

namespace strata::train {

class Pruner {
 public:
  // Prunes `model`'s weights over a run of `total_steps` steps.
  // ConfigError (naming `where`, the recipe section's place) for a sparsity
  // outside [0, 1), an empty step range, or no weight left to prune.
  // structure=channels prunes `groups` (channel_groups(model, ...)) less
  // those train.prune.exclude names.
  Pruner(const PruneSection& section, torch::nn::Module& model, int64_t total_steps,
         const std::string& where, const std::vector<ChannelGroup>& groups = {});

  // The ramp's sparsity after `step` steps.
  double target(int64_t step) const;
  // Before the optimizer step that follows `step` steps: on a mask update
  // step, recompute the masks at target(step) and zero the pruned weights.
  // Returns whether it did.
  bool update(int64_t step);
  // After every optimizer step: the pruned weights back to zero.
  void apply();
  // After a resume: the masks from the weights (Note [Pruning masks are the zeros]).
  void restore_from_weights();

  struct Layer {
    std::string name;
    int64_t numel = 0;  // weights, or channels (structure channels)
    int64_t pruned = 0;
  };
  // Each pruned weight's (or channel group's) size and pruned count (one
  // host sync per tensor).
  std::vector<Layer> sparsity() const;

 private:
  struct Entry {
    std::string name;
    at::Tensor weight;
    at::Tensor mask;  // same dtype as the weight: 1 kept, 0 pruned
  };
  // structure=channels: a group's tensors and its channel mask.
  struct Channels {
    std::string name;              // the producer's weight
    at::Tensor weight;             // whose rows rank the channels
    std::vector<at::Tensor> zeroed;  // indexed by channel along dim 0
    at::Tensor keep;               // [channels], the weight's dtype: 1 kept, 0 pruned
    std::vector<at::Tensor> masks;   // keep as a view of each zeroed tensor's rank
    void set_keep(at::Tensor k);
  };
  void prune_to(double sparsity);
  void prune_channels_to(double sparsity);

  PruneSection s_;
  int64_t start_, end_;
  std::vector<Entry> entries_;
  std::vector<Channels> channels_;
  bool masking_ = false;  // some mask prunes: apply() has work
};

// A "prune" record of metrics.jsonl (kind, structure, step, the ramp's
// target, the sparsity reached, pruned and total weights -- or channels,
// with structure=channels -- and each layer's fraction), and its totals.
struct PruneSummary {
  JsonObject record;
  double sparsity = 0.0;
  int64_t pruned = 0, total = 0;
  const char* unit = "weights";
};
PruneSummary prune_record(const Pruner& pruner, const std::string& structure, int64_t step);

}  // namespace strata::train
