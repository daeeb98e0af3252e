// Megatron-style tensor parallelism (Shoeybi et al. 2019): layers whose
// weights are split over the ranks of a tensor-parallel group, and the four
// autograd-aware mappings between replicated and split activations.
//
// Shape legend: N rows (batch x tokens), I input features, O output
// features, V vocabulary, t = tp group size, r = this rank in it.
//
//   copy_to      forward identity         backward all-reduce (sum)
//   reduce_from  forward all-reduce (sum) backward identity
//   scatter_to   forward keep the r-th slice of the last dim; backward all-gather
//   gather_from  forward all-gather the last dim;  backward keep the r-th slice
//
// ColumnParallelLinear holds rows [r O/t, (r+1) O/t) of W (O x I) and of the
// bias: copy_to(x) -> x W_r^T + b_r, the output split over ranks (gathered
// when asked). RowParallelLinear holds columns [r I/t, (r+1) I/t) of W:
// x_r W_r^T summed by reduce_from, plus the (replicated) bias. A column layer
// feeding a row layer (the transformer MLP; attention with heads split)
// communicates once forward and once backward: an all-reduce each way.
// VocabParallelEmbedding holds rows [r V/t, (r+1) V/t) of the table; each
// rank looks up the ids it owns, zeros the rest, and reduce_from sums.
// vocab_parallel_cross_entropy computes the cross-entropy of logits split
// over the vocabulary without gathering them (three all-reduces of N values).
//
// Every layer is built from the full (dense) tensors and keeps its shard, so
// a tp = t model built from the same seed as a tp = 1 model holds the same
// full weights (dense_linear_init draws them as torch::nn::Linear would).
#pragma once

#include <torch/nn/module.h>

#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "distributed/communicator.h"

namespace strata::dist {

at::Tensor copy_to_tp(const at::Tensor& x, const std::shared_ptr<Communicator>& tp);
at::Tensor reduce_from_tp(const at::Tensor& x, const std::shared_ptr<Communicator>& tp);
at::Tensor scatter_to_tp(const at::Tensor& x, const std::shared_ptr<Communicator>& tp);
at::Tensor gather_from_tp(const at::Tensor& x, const std::shared_ptr<Communicator>& tp);

// {weight O x I, bias O} drawn from the default generator exactly as
// torch::nn::Linear(I, O) initialises them (bias undefined when !bias).
std::pair<at::Tensor, at::Tensor> dense_linear_init(int64_t in, int64_t out, bool bias);

class ColumnParallelLinear : public torch::nn::Module {
 public:
  // ConfigError when t does not divide O / groups. groups > 1: the output
  // rows are that many equal blocks (attention's q, k, v: groups = 3), each
  // split over the ranks, so rank r holds its slice of every block.
  ColumnParallelLinear(const at::Tensor& full_weight, const at::Tensor& full_bias,
                       std::shared_ptr<Communicator> tp, bool gather_output,
                       int64_t groups = 1);
  at::Tensor forward(const at::Tensor& x);
  int64_t groups() const { return groups_; }
  at::Tensor weight, bias;  // O/t x I, O/t (bias may be undefined)

 private:
  std::shared_ptr<Communicator> tp_;
  bool gather_output_;
  int64_t groups_;
};

class RowParallelLinear : public torch::nn::Module {
 public:
  // ConfigError when t does not divide I. input_is_parallel: x arrives
  // split over the last dim (from a ColumnParallelLinear); else it is
  // scattered here.
  RowParallelLinear(const at::Tensor& full_weight, const at::Tensor& full_bias,
                    std::shared_ptr<Communicator> tp, bool input_is_parallel);
  at::Tensor forward(const at::Tensor& x);
  at::Tensor weight, bias;  // O x I/t, O (replicated)

 private:
  std::shared_ptr<Communicator> tp_;
  bool input_is_parallel_;
};

class VocabParallelEmbedding : public torch::nn::Module {
 public:
  // full_weight: V x D. ConfigError when t does not divide V.
  VocabParallelEmbedding(const at::Tensor& full_weight, std::shared_ptr<Communicator> tp);
  at::Tensor forward(const at::Tensor& ids);
  int64_t vocab_start() const { return start_; }
  at::Tensor weight;  // V/t x D

 private:
  std::shared_ptr<Communicator> tp_;
  int64_t start_ = 0;
};

// Mean cross-entropy over rows of logits [..., V/t] split over the
// vocabulary (this rank's columns start at `vocab_start`) against targets
// [...] of full-vocabulary ids. Equal to at::cross_entropy_loss on the
// gathered logits, forward and backward.
at::Tensor vocab_parallel_cross_entropy(const at::Tensor& logits, const at::Tensor& targets,
                                        int64_t vocab_start,
                                        const std::shared_ptr<Communicator>& tp);

// How a parameter is split over its tensor-parallel group: along `dim`
// (-1: replicated, every rank holds all of it), in `groups` equal blocks of
// that dim each split separately (column-parallel q, k, v: 3).
struct TpShard {
  int64_t dim = -1;
  int64_t groups = 1;
  bool split() const { return dim >= 0; }
};

// The split parameters of `root` by name (the names named_parameters()
// gives): those of every ColumnParallelLinear, RowParallelLinear and
// VocabParallelEmbedding below it. The rest are replicated.
std::map<std::string, TpShard> tensor_parallel_shards(const torch::nn::Module& root);

// Rank r's shard of a full tensor (a copy).
at::Tensor shard_of(const at::Tensor& full, const TpShard& spec, int rank, int size);
// The full tensor from every rank's shard, in rank order (inverse of shard_of).
at::Tensor join_shards(const std::vector<at::Tensor>& shards, const TpShard& spec);

}  // namespace strata::dist
