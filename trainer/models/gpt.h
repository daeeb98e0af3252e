// A decoder-only transformer (GPT-2 layout): token + learned position
// embeddings, pre-norm blocks of causal multi-head self-attention and a GELU
// MLP, a final LayerNorm, and an output projection tied to the token
// embedding.
//
// Shape legend: B batch, T sequence length (<= model.seq_len), C d_model,
// H heads, D = C / H, V vocabulary.
// forward: int64 token ids [B, T] -> logits [B, T, V].
//
// Parameter names follow nanoGPT's (wte, wpe, h.<i>.ln_1, h.<i>.attn.c_attn,
// h.<i>.attn.c_proj, h.<i>.ln_2, h.<i>.mlp.c_fc, h.<i>.mlp.c_proj, ln_f), so
// a Python user can load model.pt into the same network. Initialisation is
// GPT-2's: N(0, 0.02), residual projections N(0, 0.02 / sqrt(2 n_layer)),
// zero biases.
//
// Tensor parallelism (ModelPart::tp of t ranks): attention heads, the MLP's
// hidden units and the vocabulary are split over the group (Megatron-style:
// c_attn and c_fc column-parallel, the c_proj layers row-parallel, wte
// vocab-parallel); the logits are gathered, so forward's contract is the
// same. Parameters keep their names and hold this rank's slice. The full
// weights are drawn in one order whatever t, so tp = t and tp = 1 from the
// same seed hold the same model.
#pragma once

#include "trainer/models/models.h"

namespace strata::train {

std::shared_ptr<Model> make_gpt(const ModelSection& config, const InputShape& input,
                                const ModelPart& part = {});
// Its spec (the model seam): language modelling, tensor parallel, the
// layer list below, wte tied.
ModelSpec gpt_spec();

// Pipeline parallelism (ModelPart::layer_begin/layer_end): the layer list
// is the embedding (wte, wpe), the n_layer blocks, and the head (ln_f and
// the output projection). A stage holding the head but not the embedding
// keeps its own copy of wte for the tied projection; the trainer sums the
// two copies' gradients (tied_parameters). Block i keeps its name h.<i>.
// Parameters per layer (the partition's weights) for vocabulary V.
std::vector<int64_t> gpt_layer_parameters(const ModelSection& config, int64_t vocab);
// The parameter the first and last stage both hold.
inline constexpr const char* kGptTiedParameter = "wte.weight";

// Causal scaled dot-product attention, q, k, v [B, H, T, D] -> [B, H, T, D].
// LibTorch 2.x: the fused kernel (flash / memory-efficient on GPUs);
// 1.13: the explicit softmax(q k^T / sqrt(D) + mask) v. The one place the
// difference lives.
at::Tensor causal_attention(const at::Tensor& q, const at::Tensor& k,
                            const at::Tensor& v, double dropout, bool training);

}  // namespace strata::train
