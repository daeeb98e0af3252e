// Hedge Backpropagation (Sahoo, Pham, Lu, Hoi, IJCAI 2018, "Online Deep
// Learning: Learning Deep Neural Networks on the Fly"): a ReLU network with
// a classifier on every hidden layer (and on the input), predicting by a
// mixture of the classifiers whose weights are learned online by Hedge.
//
// Shape legend: B batch, D input features (C*H*W flattened), L hidden
// layers of width H, K classes.
//
// Note [Hedge Backpropagation]
// ~~~~~~~~~~~~~~~~~~~~~~~~~~~~
// h_0 = x, h_l = relu(W_l h_{l-1} + b_l) for l = 1..L, and L+1 heads
// f_l = softmax(T_l h_l + c_l), l = 0..L. The prediction is the mixture
// F = sum_l alpha_l f_l; forward() returns log F [B, K], so its argmax is
// the mixture's class, its cross-entropy the mixture's negative log
// likelihood (evaluation), and a trace or export predicts with the alphas
// it holds. The training loss is sum_l alpha_l CE(f_l, y) with alpha held
// constant: one backward over it gives the paper's Eq. 2 and 3 (T_l gets
// alpha_l's share of its own head's gradient, W_l the alpha-weighted sum
// over every head at depth >= l) in O(L), not L backwards.
// After every optimizer step (Model::after_step) the hedge: with l_j the
// step's loss of head j (mean over its micro-batches, and over data-
// parallel ranks), scaled to [0, 1] by the heads' minimum and maximum
// (model.hbp.hedge_loss: minmax, as the paper's code does; raw: as is),
//   alpha_j <- alpha_j * beta^l_j;  alpha_j <- max(alpha_j, s / L);
//   alpha <- alpha / sum(alpha).
// alpha starts at 1 / (L+1) and is the buffer "alpha": in checkpoints,
// model.pt and federated versions. model.hbp.hedge: false keeps alpha on
// the deepest head: plain online backprop of the same network.
//
// Parameters are stacked, so an online step touches 8 tensors rather than
// 4L + 2 (the optimizer's per-tensor work dominates a batch-1 step):
//   first.weight [H, D], first.bias [H]               layer 1
//   hidden.weight [L-1, H, H], hidden.bias [L-1, H]   layers 2..L
//   head0.weight [K, D], head0.bias [K]               the head on the input
//   heads.weight [L, K, H], heads.bias [L, K]         the heads on layers 1..L
// Initialised as Keras' Dense, which the paper's code used: Glorot-uniform
// weights, zero biases.
//
// Training on the CPU in fp32 runs the forward, the heads' losses and the
// backward as two fused autograd nodes over plain loops (no per-layer
// dispatch, activations in one buffer; Note [The fused HBP kernel] in
// hbp.cpp); elsewhere, and in eval mode (evaluation, tracing, exports),
// the same math runs as ATen ops. The two agree within float rounding
// (hbp_test).
#pragma once

#include "trainer/models/models.h"

namespace strata::train {

// One hedge step: alpha * beta^losses (losses scaled to [0, 1] by their
// minimum and maximum when `minmax`; all equal: no change), floored at
// `floor`, normalised to sum 1. No host synchronisation.
at::Tensor hedge_update(const at::Tensor& alpha, const at::Tensor& losses, double beta,
                        double floor, bool minmax);

class HedgeNet final : public Model {
 public:
  HedgeNet(const ModelSection& config, const InputShape& input);

  at::Tensor forward(const at::Tensor& x) override;
  // sum_l alpha_l CE(f_l, y) of the last training forward's heads.
  at::Tensor loss(const at::Tensor& output, const at::Tensor& targets) override;
  void after_step(const std::function<void(at::Tensor&)>& mean_over_data) override;
  at::Tensor mixture_weights() const override { return alpha_; }

  // Every head's logits [L+1, B, K] through ATen ops (the reference).
  at::Tensor head_logits(const at::Tensor& x);
  int64_t hidden_layers() const { return layers_; }
  // Tests: the ATen path in training too.
  void set_fused(bool on) { fused_ = on; }

 private:
  bool use_fused(const at::Tensor& x) const;

  int64_t layers_ = 0;  // L
  bool hedge_ = true;
  double beta_ = 0.99;
  double floor_ = 0.0;  // s / L
  bool minmax_ = true;
  bool fused_ = true;
  at::Tensor first_w_, first_b_, hidden_w_, hidden_b_, head0_w_, head0_b_, heads_w_, heads_b_;
  at::Tensor alpha_;
  at::Tensor heads_out_;  // the last training forward's head logits, for loss()
  at::Tensor pending_;    // summed head losses of the step so far [L+1]
  int64_t pending_n_ = 0;
};

}  // namespace strata::train
