// Structured pruning (issue #17): whole conv channels and linear units,
// found in the model's traced graph, and the dense model made smaller.
//
// Note [Channel groups]: a channel (a conv2d's output channel, a linear's
// output unit) can be removed when every reader of it can lose it too.
// In the frozen graph (Note [The frozen graph]) the producer's output is
// followed through ops that keep channels apart and map zero to zero --
// one BatchNorm that alone reads a conv (its channel's weight and bias),
// ReLU, GELU, max/average pooling, spatial means, evaluation dropout, and
// a flatten of NCHW -- to its consumers: conv2d (the channel's input
// slice, weight dim 1) and linear (one column, or after a flatten the
// channel's H*W consecutive columns). A channel that reaches anything else
// -- a residual add, a reshape into attention heads, the model's output --
// keeps its group out: removing it would change what that op computes.
//
// A channel is zero when its value after the chain is exactly 0 for every
// input: with a BatchNorm, its weight and bias are 0 there (the normalized
// input times 0, plus 0); without one, the producer's weight row and bias
// are. Structured pruning during training (train.prune.structure=channels,
// trainer/prune.h) makes channels zero this way and keeps them so;
// shrink_channels() then deletes them -- the producer's rows, the
// BatchNorm's entries and the consumers' columns -- which changes no output:
// every term it removes was an exact 0 (only the order of float sums can
// differ).
#pragma once

#include <string>
#include <vector>

#include "trainer/models/models.h"
#include "trainer/quantize.h"

namespace strata::train {

struct ChannelGroup {
  std::string layer;   // the producer's weight ("features.0.weight")
  int64_t channels = 0;
  // Parameters indexed by channel along dim 0 that pruning a channel
  // zeroes: the producer's weight (and bias), and the weight and bias of
  // the BatchNorm that reads it.
  std::vector<std::string> zeroed;
  // The weights that read the channels (along dim 1).
  std::vector<std::string> consumers;
};

// The prunable channel groups of `g` (Note [Channel groups]).
std::vector<ChannelGroup> channel_groups(const FrozenGraph& g);
// Those of `model`, traced on `example` (Note [Tracing the model seam]).
std::vector<ChannelGroup> channel_groups(Model& model, const at::Tensor& example);

struct ShrunkLayer {
  std::string layer;
  int64_t channels = 0;  // before
  int64_t kept = 0;      // after
};

// Deletes the zero channels of every group of `g` (keeping at least one
// per group); `example` a batch the graph runs on (for the spatial size
// behind a flatten). The layers that lost channels.
std::vector<ShrunkLayer> shrink_channels(FrozenGraph& g, const at::Tensor& example);

}  // namespace strata::train
