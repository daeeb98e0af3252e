#include "trainer/models/gpt.h"

#include <torch/nn.h>
#include <torch/version.h>

#include <cmath>

#include "core/error.h"
#include "distributed/tensor_parallel.h"
#include "trainer/activation_checkpoint.h"

namespace strata::train {
namespace nn = torch::nn;

at::Tensor causal_attention(const at::Tensor& q, const at::Tensor& k,
                            const at::Tensor& v, double dropout, bool training) {
  const double p = training ? dropout : 0.0;
#if TORCH_VERSION_MAJOR >= 2
  return at::scaled_dot_product_attention(q, k, v, {}, p, /*is_causal=*/true);
#else
  const int64_t T = q.size(-2);
  at::Tensor att = at::matmul(q, k.transpose(-2, -1)) * (1.0 / std::sqrt(double(q.size(-1))));
  at::Tensor future = at::ones({T, T}, q.options().dtype(at::kBool)).triu(1);
  att = at::softmax(att.masked_fill(future, -std::numeric_limits<double>::infinity()), -1);
  if (p > 0) att = at::dropout(att, p, /*train=*/true);
  return at::matmul(att, v);
#endif
}

namespace {

using dist::ColumnParallelLinear;
using dist::Communicator;
using dist::RowParallelLinear;
using dist::VocabParallelEmbedding;
using TpGroup = std::shared_ptr<Communicator>;

// Dropout that costs nothing when off (p = 0 or eval).
at::Tensor drop(const at::Tensor& x, double p, bool training) {
  return p > 0 && training ? at::dropout(x, p, /*train=*/true) : x;
}

// GPT-2's initialisation, drawn whole in one fixed order whatever the
// tensor-parallel size, so tp = N holds the same full weights as tp = 1.
struct Init {
  double proj_std;  // residual projections: 0.02 / sqrt(2 n_layer)
  at::Tensor normal(std::vector<int64_t> shape, double std) const {
    return at::empty(shape).normal_(0.0, std);
  }
};

// The layers call at::linear (ColumnParallelLinear/RowParallelLinear do):
// LibTorch's C++ F::linear runs a [B, T, C] input as matmul then a separate
// bias add, where at::linear folds the bias into the GEMM's epilogue (what
// Python's nn.Linear calls): +10% tokens/s for GPT-2-small on an H100.
struct Attention : nn::Module {
  // Heads are split over the tp group: each rank runs H / t of them.
  Attention(int64_t C, int64_t H, double dropout, const Init& init, const TpGroup& tp)
      : heads(H / tp->size()), dropout(dropout) {
    c_attn = register_module("c_attn", std::make_shared<ColumnParallelLinear>(
                                           init.normal({3 * C, C}, 0.02), at::zeros({3 * C}), tp,
                                           /*gather_output=*/false, /*groups=*/3));
    c_proj = register_module("c_proj", std::make_shared<RowParallelLinear>(
                                           init.normal({C, C}, init.proj_std), at::zeros({C}), tp,
                                           /*input_is_parallel=*/true));
  }
  at::Tensor forward(const at::Tensor& x) {
    // Shapes from the last dimension only: a traced forward (Note [Tracing
    // the model seam]) then runs any batch size.
    auto qkv = c_attn->forward(x).unflatten(2, {3, heads, -1}).permute({2, 0, 3, 1, 4});
    at::Tensor y = causal_attention(qkv[0], qkv[1], qkv[2], dropout, is_training());
    y = y.transpose(1, 2).flatten(2);
    return drop(c_proj->forward(y), dropout, is_training());
  }
  int64_t heads;  // on this rank
  double dropout;
  std::shared_ptr<ColumnParallelLinear> c_attn;
  std::shared_ptr<RowParallelLinear> c_proj;
};

struct Mlp : nn::Module {
  Mlp(int64_t C, double dropout, const Init& init, const TpGroup& tp) : dropout(dropout) {
    c_fc = register_module("c_fc", std::make_shared<ColumnParallelLinear>(
                                       init.normal({4 * C, C}, 0.02), at::zeros({4 * C}), tp,
                                       /*gather_output=*/false));
    c_proj = register_module("c_proj", std::make_shared<RowParallelLinear>(
                                           init.normal({C, 4 * C}, init.proj_std), at::zeros({C}),
                                           tp, /*input_is_parallel=*/true));
  }
  at::Tensor forward(const at::Tensor& x) {
    return drop(c_proj->forward(at::gelu(c_fc->forward(x))), dropout, is_training());
  }
  double dropout;
  std::shared_ptr<ColumnParallelLinear> c_fc;
  std::shared_ptr<RowParallelLinear> c_proj;
};

struct Block : nn::Module {
  Block(int64_t C, int64_t H, double dropout, const Init& init, const TpGroup& tp)
      : ln_1(register_module("ln_1", nn::LayerNorm(nn::LayerNormOptions({C})))),
        attn(register_module("attn", std::make_shared<Attention>(C, H, dropout, init, tp))),
        ln_2(register_module("ln_2", nn::LayerNorm(nn::LayerNormOptions({C})))),
        mlp(register_module("mlp", std::make_shared<Mlp>(C, dropout, init, tp))) {}
  at::Tensor forward(at::Tensor x) {
    x = x + attn->forward(ln_1->forward(x));
    return x + mlp->forward(ln_2->forward(x));
  }
  nn::LayerNorm ln_1;
  std::shared_ptr<Attention> attn;
  nn::LayerNorm ln_2;
  std::shared_ptr<Mlp> mlp;
};

class Gpt final : public Model {
 public:
  Gpt(const ModelSection& c, const InputShape& in, const ModelPart& part)
      : seq_len_(c.seq_len), dropout_(c.dropout),
        tp_(part.tp ? part.tp : dist::make_self_communicator("tp")) {
    const int64_t V = c.vocab_size > 0 ? c.vocab_size : in.classes;
    const int t = tp_->size();
    STRATA_CHECK_T(ConfigError, V >= in.classes, "model.vocab_size = ", c.vocab_size,
                   " is smaller than the data's ", in.classes,
                   " token ids; use 0 (the data's) or more");
    STRATA_CHECK_T(ConfigError, c.d_model % c.n_head == 0, "model.d_model = ", c.d_model,
                   " is not divisible by model.n_head = ", c.n_head,
                   "; pick a multiple, e.g. ", c.n_head * std::max<int64_t>(1, c.d_model / c.n_head));
    STRATA_CHECK_T(ConfigError, c.n_head % t == 0 && V % t == 0,
                   "distributed.tensor_parallel = ", t, " must divide model.n_head (", c.n_head,
                   ") and the vocabulary (", V, "); pick a tensor_parallel size that divides "
                   "both, or set model.vocab_size to a multiple of it");
    const int64_t layers = c.n_layer + 2;
    const int64_t begin = part.layer_begin, end = part.layer_end < 0 ? layers : part.layer_end;
    STRATA_INTERNAL_ASSERT(0 <= begin && begin < end && end <= layers, "gpt: pipeline layers [",
                           begin, ", ", end, ") of ", layers);
    embed_ = begin == 0;
    head_ = end == layers;
    // Every weight is drawn, in one order, whatever this stage keeps: a
    // stage holds the same values as the unsplit model.
    torch::NoGradGuard no_grad;
    const Init init{0.02 / std::sqrt(2.0 * static_cast<double>(c.n_layer))};
    at::Tensor wte = init.normal({V, c.d_model}, 0.02);
    nn::Embedding wpe(c.seq_len, c.d_model);  // draws its own init: keep that draw
    wpe->weight.copy_(init.normal({c.seq_len, c.d_model}, 0.02));
    if (embed_ || head_) {
      wte_ = register_module("wte", std::make_shared<VocabParallelEmbedding>(wte, tp_));
    }
    if (embed_) wpe_ = register_module("wpe", wpe);
    h_ = register_module("h", nn::ModuleDict());
    for (int64_t i = 0; i < c.n_layer; ++i) {
      auto block = std::make_shared<Block>(c.d_model, c.n_head, c.dropout, init, tp_);
      if (begin <= i + 1 && i + 1 < end) {
        blocks_.push_back(block);
        h_->update(std::vector<std::pair<std::string, std::shared_ptr<nn::Module>>>{{std::to_string(i), block}});
      }
    }
    if (head_) ln_f_ = register_module("ln_f", nn::LayerNorm(nn::LayerNormOptions({c.d_model})));
  }

  int64_t checkpoint_units() const override { return static_cast<int64_t>(blocks_.size()); }

  // Token ids [B, T] on the first stage, activations [B, T, C] after it.
  at::Tensor forward(const at::Tensor& in) override {
    const int64_t T = in.size(1);
    STRATA_CHECK_T(Error, T <= seq_len_, "gpt: a sequence of ", T,
                   " tokens is longer than model.seq_len = ", seq_len_);
    at::Tensor x = in;
    if (embed_) {
      at::Tensor pos = at::arange(T, in.options());
      x = drop(wte_->forward(in) + wpe_->forward(pos), dropout_, is_training());
    }
    for (size_t i = 0; i < blocks_.size(); ++i) {
      std::shared_ptr<Block> b = blocks_[i];
      x = unit_output(i, checkpointed(i)
                             ? checkpoint([b](const at::Tensor& t) { return b->forward(t); }, x)
                             : b->forward(x));
    }
    if (!head_) return x;
    x = ln_f_->forward(x);
    // Tied output projection: this rank's vocabulary slice, then gathered.
    return dist::gather_from_tp(at::matmul(dist::copy_to_tp(x, tp_), wte_->weight.t()), tp_);
  }

 protected:
  std::string unit_kind() const override { return "block"; }

 private:
  int64_t seq_len_;
  double dropout_;
  TpGroup tp_;
  bool embed_ = true, head_ = true;
  std::shared_ptr<VocabParallelEmbedding> wte_;
  nn::Embedding wpe_{nullptr};
  nn::ModuleDict h_{nullptr};
  std::vector<std::shared_ptr<Block>> blocks_;
  nn::LayerNorm ln_f_{nullptr};
};

}  // namespace

std::shared_ptr<Model> make_gpt(const ModelSection& config, const InputShape& input,
                                const ModelPart& part) {
  return std::make_shared<Gpt>(config, input, part);
}

ModelSpec gpt_spec() {
  ModelSpec spec;
  spec.build = make_gpt;
  spec.task = Task::kLanguageModel;
  spec.tensor_parallel = true;
  spec.layer_weights = [](const ModelSection& c, const InputShape& in) {
    return gpt_layer_parameters(c, in.classes);
  };
  spec.layer_list = "embedding, model.n_layer blocks, head";
  spec.tied_parameters = {kGptTiedParameter};
  return spec;
}

std::vector<int64_t> gpt_layer_parameters(const ModelSection& c, int64_t vocab) {
  const int64_t C = c.d_model, V = c.vocab_size > 0 ? c.vocab_size : vocab;
  std::vector<int64_t> w;
  w.push_back(V * C + c.seq_len * C);         // wte, wpe
  for (int64_t i = 0; i < c.n_layer; ++i) {
    w.push_back(12 * C * C + 13 * C);         // attention, MLP, two LayerNorms
  }
  w.push_back(2 * C + V * C);                 // ln_f and the tied projection
  return w;
}

}  // namespace strata::train
