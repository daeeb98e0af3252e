#include "trainer/models/gpt.h"

#include <torch/nn.h>
#include <torch/version.h>

#include <cmath>

#include "core/error.h"
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

// at::linear, not nn::Linear::forward: LibTorch's C++ F::linear runs a
// [B, T, C] input as matmul then a separate in-place bias add, where
// at::linear folds it into one GEMM with the bias in its epilogue (what
// Python's nn.Linear calls) -- one full pass over every activation fewer,
// +10% tokens/s for GPT-2-small on an H100 (bench/results/gpt_h100.md).
at::Tensor linear(const nn::Linear& l, const at::Tensor& x) {
  return at::linear(x, l->weight, l->bias);
}

// Dropout that costs nothing when off (p = 0 or eval).
at::Tensor drop(const at::Tensor& x, double p, bool training) {
  return p > 0 && training ? at::dropout(x, p, /*train=*/true) : x;
}

struct Attention : nn::Module {
  Attention(int64_t C, int64_t H, double dropout)
      : heads(H), dropout(dropout),
        c_attn(register_module("c_attn", nn::Linear(C, 3 * C))),
        c_proj(register_module("c_proj", nn::Linear(C, C))) {}
  at::Tensor forward(const at::Tensor& x) {
    const int64_t B = x.size(0), T = x.size(1), C = x.size(2);
    auto qkv = linear(c_attn, x).view({B, T, 3, heads, C / heads}).permute({2, 0, 3, 1, 4});
    at::Tensor y = causal_attention(qkv[0], qkv[1], qkv[2], dropout, is_training());
    y = y.transpose(1, 2).reshape({B, T, C});
    return drop(linear(c_proj, y), dropout, is_training());
  }
  int64_t heads;
  double dropout;
  nn::Linear c_attn, c_proj;
};

struct Mlp : nn::Module {
  Mlp(int64_t C, double dropout)
      : dropout(dropout),
        c_fc(register_module("c_fc", nn::Linear(C, 4 * C))),
        c_proj(register_module("c_proj", nn::Linear(4 * C, C))) {}
  at::Tensor forward(const at::Tensor& x) {
    return drop(linear(c_proj, at::gelu(linear(c_fc, x))), dropout, is_training());
  }
  double dropout;
  nn::Linear c_fc, c_proj;
};

struct Block : nn::Module {
  Block(int64_t C, int64_t H, double dropout)
      : ln_1(register_module("ln_1", nn::LayerNorm(nn::LayerNormOptions({C})))),
        attn(register_module("attn", std::make_shared<Attention>(C, H, dropout))),
        ln_2(register_module("ln_2", nn::LayerNorm(nn::LayerNormOptions({C})))),
        mlp(register_module("mlp", std::make_shared<Mlp>(C, dropout))) {}
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
  Gpt(const ModelSection& c, const InputShape& in)
      : seq_len_(c.seq_len), dropout_(c.dropout) {
    const int64_t V = c.vocab_size > 0 ? c.vocab_size : in.classes;
    STRATA_CHECK_T(ConfigError, V >= in.classes, "model.vocab_size = ", c.vocab_size,
                   " is smaller than the data's ", in.classes,
                   " token ids; use 0 (the data's) or more");
    STRATA_CHECK_T(ConfigError, c.d_model % c.n_head == 0, "model.d_model = ", c.d_model,
                   " is not divisible by model.n_head = ", c.n_head,
                   "; pick a multiple, e.g. ", c.n_head * std::max<int64_t>(1, c.d_model / c.n_head));
    wte_ = register_module("wte", nn::Embedding(V, c.d_model));
    wpe_ = register_module("wpe", nn::Embedding(c.seq_len, c.d_model));
    h_ = register_module("h", nn::ModuleList());
    for (int64_t i = 0; i < c.n_layer; ++i) {
      blocks_.push_back(std::make_shared<Block>(c.d_model, c.n_head, c.dropout));
      h_->push_back(blocks_.back());
    }
    ln_f_ = register_module("ln_f", nn::LayerNorm(nn::LayerNormOptions({c.d_model})));
    init_weights(c.n_layer);
  }

  int64_t checkpoint_units() const override { return static_cast<int64_t>(blocks_.size()); }

  at::Tensor forward(const at::Tensor& idx) override {
    const int64_t T = idx.size(1);
    STRATA_CHECK_T(Error, T <= seq_len_, "gpt: a sequence of ", T,
                   " tokens is longer than model.seq_len = ", seq_len_);
    at::Tensor pos = at::arange(T, idx.options());
    at::Tensor x = drop(wte_->forward(idx) + wpe_->forward(pos), dropout_, is_training());
    for (size_t i = 0; i < blocks_.size(); ++i) {
      std::shared_ptr<Block> b = blocks_[i];
      x = unit_output(i, checkpointed(i)
                             ? checkpoint([b](const at::Tensor& t) { return b->forward(t); }, x)
                             : b->forward(x));
    }
    x = ln_f_->forward(x);
    return at::matmul(x, wte_->weight.t());  // tied output projection
  }

 protected:
  std::string unit_kind() const override { return "block"; }

 private:
  void init_weights(int64_t n_layer) {
    torch::NoGradGuard no_grad;
    const double proj_std = 0.02 / std::sqrt(2.0 * static_cast<double>(n_layer));
    for (auto& p : named_parameters()) {
      const std::string& name = p.key();
      at::Tensor& t = p.value();
      if (name.find("ln_") != std::string::npos) continue;  // LayerNorm: 1 and 0
      if (t.dim() == 1) {
        t.zero_();
      } else if (name.size() > 13 && name.compare(name.size() - 13, 13, "c_proj.weight") == 0) {
        t.normal_(0.0, proj_std);
      } else {
        t.normal_(0.0, 0.02);
      }
    }
  }

  int64_t seq_len_;
  double dropout_;
  nn::Embedding wte_{nullptr}, wpe_{nullptr};
  nn::ModuleList h_{nullptr};
  std::vector<std::shared_ptr<Block>> blocks_;
  nn::LayerNorm ln_f_{nullptr};
};

}  // namespace

std::shared_ptr<Model> make_gpt(const ModelSection& config, const InputShape& input) {
  return std::make_shared<Gpt>(config, input);
}

}  // namespace strata::train
