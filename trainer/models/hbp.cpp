// Hedge Backpropagation: the model (Note [Hedge Backpropagation] in hbp.h)
// and its fused CPU kernel.
#include "trainer/models/hbp.h"

#include <torch/autograd.h>

#include <cmath>
#include <limits>
#include <utility>
#include <vector>

#include "core/error.h"
#include "core/strings.h"
#include "trainer/amp.h"

namespace strata::train {

at::Tensor hedge_update(const at::Tensor& alpha, const at::Tensor& losses, double beta,
                        double floor, bool minmax) {
  at::Tensor l = losses.to(alpha.scalar_type());
  if (minmax) {
    const at::Tensor lo = l.min();
    // All equal: 0 / tiny = 0, so alpha only meets the floor.
    l = (l - lo) / (l.max() - lo).clamp_min(std::numeric_limits<float>::min());
  }
  at::Tensor a = (alpha * at::pow(beta, l)).clamp_min(floor);
  return a / a.sum();
}

namespace {

// Note [The fused HBP kernel]
// ~~~~~~~~~~~~~~~~~~~~~~~~~~~
// An online step of HBP at batch 1 is about 0.6 MFLOP (L GEMVs of H x H
// forward, two per layer backward); as ATen ops it is ~8 operator calls and
// autograd nodes per layer, whose dispatch costs far more than the
// arithmetic. So on the CPU in fp32 the heads' forward is one autograd node
// (HedgeHeads: all layers and heads in plain loops, the activations in one
// [L, B, H] buffer) and the loss another (HedgeLoss: every head's
// cross-entropy and its gradient alpha_l (softmax - onehot) / B). The
// backward walks the layers once from the top, carrying the gradient of
// the layer above (Eq. 3's sum over deeper heads) -- O(L). Dot products
// keep eight independent partial sums (vectorised without reassociating:
// the result is the same on every run), and the hot functions are compiled
// twice, for AVX2+FMA and for the baseline, chosen when the program loads.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define STRATA_HBP_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define STRATA_HBP_CLONES
#endif

struct Dims {
  int64_t B, D, H, L, K;
};
struct Weights {
  const float *w1, *b1, *wh, *bh, *t0, *c0, *th, *ch;
};
struct Grads {
  float *w1, *b1, *wh, *bh, *t0, *c0, *th, *ch;
};

inline float dot(const float* a, const float* b, int64_t n) {
  float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    for (int k = 0; k < 8; ++k) acc[k] += a[i + k] * b[i + k];
  }
  float s = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
  for (; i < n; ++i) s += a[i] * b[i];
  return s;
}

// y = a x (first) or y += a x.
inline void axpy(float a, const float* x, float* y, int64_t n, bool first) {
  if (first) {
    for (int64_t i = 0; i < n; ++i) y[i] = a * x[i];
  } else {
    for (int64_t i = 0; i < n; ++i) y[i] += a * x[i];
  }
}

// y [M] = W [M, N] x [N] + b, then ReLU when asked.
inline void affine(const float* W, const float* b, const float* x, float* y, int64_t M, int64_t N,
                   bool relu) {
  for (int64_t i = 0; i < M; ++i) {
    const float v = b[i] + dot(W + i * N, x, N);
    y[i] = relu && v < 0.f ? 0.f : v;
  }
}

// x [B, D] -> hs [L, B, H] (post-ReLU), logits [L+1, B, K].
STRATA_HBP_CLONES
void forward_kernel(const Dims& d, const Weights& w, const float* x, float* hs, float* logits) {
  const int64_t B = d.B, D = d.D, H = d.H, L = d.L, K = d.K;
  for (int64_t b = 0; b < B; ++b) {
    const float* xb = x + b * D;
    affine(w.t0, w.c0, xb, logits + b * K, K, D, false);
    affine(w.w1, w.b1, xb, hs + b * H, H, D, true);
    for (int64_t l = 1; l < L; ++l) {
      affine(w.wh + (l - 1) * H * H, w.bh + (l - 1) * H, hs + ((l - 1) * B + b) * H,
             hs + (l * B + b) * H, H, H, true);
    }
    for (int64_t l = 0; l < L; ++l) {
      affine(w.th + l * K * H, w.ch + l * K, hs + (l * B + b) * H, logits + ((l + 1) * B + b) * K,
             K, H, false);
    }
  }
}

// G [L+1, B, K], the gradient of the logits -> every parameter's gradient.
// scratch: 2 B H floats.
STRATA_HBP_CLONES
void backward_kernel(const Dims& d, const Weights& w, const float* x, const float* hs,
                     const float* G, const Grads& g, float* scratch) {
  const int64_t B = d.B, D = d.D, H = d.H, L = d.L, K = d.K;
  // gW [M, N] = sum_b gy[b] (x) in[b];  gb [M] = sum_b gy[b].
  auto weight_grads = [B](const float* gy, const float* in, float* gW, float* gb, int64_t M,
                          int64_t N) {
    for (int64_t b = 0; b < B; ++b) {
      for (int64_t r = 0; r < M; ++r) {
        const float a = gy[b * M + r];
        gb[r] = b == 0 ? a : gb[r] + a;
        axpy(a, in + b * N, gW + r * N, N, b == 0);
      }
    }
  };
  weight_grads(G, x, g.t0, g.c0, K, D);
  float* gz = scratch;              // d loss / d z_l, [B, H]
  float* gz_above = scratch + B * H;  // d loss / d z_{l+1}
  for (int64_t l = L; l >= 1; --l) {
    const float* h = hs + (l - 1) * B * H;  // h_l
    const float* Gl = G + l * B * K;
    weight_grads(Gl, h, g.th + (l - 1) * K * H, g.ch + (l - 1) * K, K, H);
    for (int64_t b = 0; b < B; ++b) {
      float* gh = gz + b * H;
      for (int64_t k = 0; k < K; ++k) axpy(Gl[b * K + k], w.th + ((l - 1) * K + k) * H, gh, H, k == 0);
      if (l < L) {  // through layer l+1: W_{l+1}^T gz_{l+1}
        const float* W = w.wh + (l - 1) * H * H;
        for (int64_t r = 0; r < H; ++r) axpy(gz_above[b * H + r], W + r * H, gh, H, false);
      }
      const float* hb = h + b * H;
      for (int64_t j = 0; j < H; ++j) gh[j] = hb[j] > 0.f ? gh[j] : 0.f;
    }
    if (l == 1) {
      weight_grads(gz, x, g.w1, g.b1, H, D);
    } else {
      weight_grads(gz, hs + (l - 2) * B * H, g.wh + (l - 2) * H * H, g.bh + (l - 2) * H, H, H);
    }
    std::swap(gz, gz_above);
  }
}

// Per head l and sample b: log-softmax of logits[l, b] into logp.
void log_softmax_rows(const float* logits, float* logp, int64_t rows, int64_t K) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* z = logits + r * K;
    float m = z[0];
    for (int64_t k = 1; k < K; ++k) m = std::max(m, z[k]);
    float s = 0.f;
    for (int64_t k = 0; k < K; ++k) s += std::exp(z[k] - m);
    const float lse = m + std::log(s);
    for (int64_t k = 0; k < K; ++k) logp[r * K + k] = z[k] - lse;
  }
}

Dims dims_of(const at::Tensor& x, const at::Tensor& th) {
  return Dims{x.size(0), x.size(1), th.size(2), th.size(0), th.size(1)};
}

Weights weights_of(const torch::autograd::variable_list& p) {
  return Weights{p[0].data_ptr<float>(), p[1].data_ptr<float>(), p[2].data_ptr<float>(),
                 p[3].data_ptr<float>(), p[4].data_ptr<float>(), p[5].data_ptr<float>(),
                 p[6].data_ptr<float>(), p[7].data_ptr<float>()};
}

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// x [B, D], alpha [L+1] and the 8 parameters -> (head logits [L+1, B, K],
// log of the alpha-mixture [B, K], not differentiable).
class HedgeHeads : public torch::autograd::Function<HedgeHeads> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& alpha,
                               const at::Tensor& w1, const at::Tensor& b1, const at::Tensor& wh,
                               const at::Tensor& bh, const at::Tensor& t0, const at::Tensor& c0,
                               const at::Tensor& th, const at::Tensor& ch) {
    const variable_list p{w1, b1, wh, bh, t0, c0, th, ch};
    const Dims d = dims_of(x, th);
    const at::TensorOptions f32 = x.options();
    at::Tensor hs = at::empty({d.L, d.B, d.H}, f32);
    at::Tensor logits = at::empty({d.L + 1, d.B, d.K}, f32);
    forward_kernel(d, weights_of(p), x.data_ptr<float>(), hs.data_ptr<float>(),
                   logits.data_ptr<float>());
    // log sum_l alpha_l softmax_l, as logsumexp_l(log alpha_l + logp_l).
    at::Tensor logp = at::empty_like(logits);
    log_softmax_rows(logits.data_ptr<float>(), logp.data_ptr<float>(), (d.L + 1) * d.B, d.K);
    at::Tensor mix = at::empty({d.B, d.K}, f32);
    const float* a = alpha.data_ptr<float>();
    std::vector<float> log_a(static_cast<size_t>(d.L + 1));
    // An alpha below zero (a hostile federated update) leaves its head out.
    for (int64_t l = 0; l <= d.L; ++l) {
      log_a[static_cast<size_t>(l)] = std::log(std::max(a[l], 0.0f));
    }
    const float* lp = logp.data_ptr<float>();
    float* out = mix.data_ptr<float>();
    for (int64_t i = 0; i < d.B * d.K; ++i) {
      float m = -std::numeric_limits<float>::infinity();
      for (int64_t l = 0; l <= d.L; ++l) {
        m = std::max(m, log_a[static_cast<size_t>(l)] + lp[l * d.B * d.K + i]);
      }
      float s = 0.f;
      for (int64_t l = 0; l <= d.L; ++l) {
        s += std::exp(log_a[static_cast<size_t>(l)] + lp[l * d.B * d.K + i] - m);
      }
      out[i] = m + std::log(s);
    }
    ctx->save_for_backward(p);
    ctx->saved_data["x"] = x;
    ctx->saved_data["hs"] = hs;
    ctx->mark_non_differentiable({mix});
    return {logits, mix};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const variable_list p = ctx->get_saved_variables();
    const at::Tensor x = ctx->saved_data["x"].toTensor();
    const at::Tensor hs = ctx->saved_data["hs"].toTensor();
    const at::Tensor G = grads[0].contiguous();
    const Dims d = dims_of(x, p[6]);
    variable_list out(10);
    for (size_t i = 0; i < p.size(); ++i) out[i + 2] = at::empty_like(p[i]);
    at::Tensor scratch = at::empty({2 * d.B * d.H}, x.options());
    backward_kernel(d, weights_of(p), x.data_ptr<float>(), hs.data_ptr<float>(),
                    G.data_ptr<float>(),
                    Grads{out[2].data_ptr<float>(), out[3].data_ptr<float>(),
                          out[4].data_ptr<float>(), out[5].data_ptr<float>(),
                          out[6].data_ptr<float>(), out[7].data_ptr<float>(),
                          out[8].data_ptr<float>(), out[9].data_ptr<float>()},
                    scratch.data_ptr<float>());
    return out;
  }
};

// Head logits [L+1, B, K], targets [B] and alpha [L+1] -> (sum_l alpha_l
// mean_b CE_lb, the heads' losses [L+1], not differentiable).
class HedgeLoss : public torch::autograd::Function<HedgeLoss> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& logits,
                               const at::Tensor& targets, const at::Tensor& alpha) {
    const int64_t H1 = logits.size(0), B = logits.size(1), K = logits.size(2);
    at::Tensor probs = at::empty_like(logits);
    log_softmax_rows(logits.data_ptr<float>(), probs.data_ptr<float>(), H1 * B, K);
    at::Tensor losses = at::empty({H1}, logits.options());
    const int64_t* y = targets.data_ptr<int64_t>();
    for (int64_t b = 0; b < B; ++b) {
      STRATA_CHECK_T(DataError, y[b] >= 0 && y[b] < K, "label ", y[b], " of sample ", b,
                     " is outside the model's ", K, " classes");
    }
    float* pr = probs.data_ptr<float>();
    float* ls = losses.data_ptr<float>();
    const float* a = alpha.data_ptr<float>();
    float total = 0.f;
    for (int64_t l = 0; l < H1; ++l) {
      float s = 0.f;
      for (int64_t b = 0; b < B; ++b) s -= pr[(l * B + b) * K + y[b]];
      ls[l] = s / static_cast<float>(B);
      total += a[l] * ls[l];
    }
    for (int64_t i = 0; i < H1 * B * K; ++i) pr[i] = std::exp(pr[i]);  // softmax, for backward
    ctx->saved_data["probs"] = probs;
    ctx->saved_data["targets"] = targets;
    ctx->saved_data["alpha"] = alpha;
    ctx->mark_non_differentiable({losses});
    return {at::scalar_tensor(total, logits.options()), losses};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    at::Tensor G = ctx->saved_data["probs"].toTensor();  // the softmax, turned into the gradient
    const at::Tensor targets = ctx->saved_data["targets"].toTensor();
    const at::Tensor alpha = ctx->saved_data["alpha"].toTensor();
    const int64_t H1 = G.size(0), B = G.size(1), K = G.size(2);
    const float g = grads[0].item<float>();
    const int64_t* y = targets.data_ptr<int64_t>();
    const float* a = alpha.data_ptr<float>();
    float* gp = G.data_ptr<float>();
    for (int64_t l = 0; l < H1; ++l) {
      const float scale = g * a[l] / static_cast<float>(B);
      for (int64_t b = 0; b < B; ++b) {
        float* row = gp + (l * B + b) * K;
        row[y[b]] -= 1.f;
        for (int64_t k = 0; k < K; ++k) row[k] *= scale;
      }
    }
    return {G, at::Tensor(), at::Tensor()};
  }
};

// A holder for one stacked weight and bias ("first.weight", "first.bias"):
// Glorot-uniform weights, zero biases (Keras' Dense default, which the
// paper's code used; PyTorch's nn.Linear default, U(+-1/sqrt(fan_in)),
// shrinks the signal six-fold per ReLU layer and leaves a plain 8-layer
// network unable to learn in the first 100k instances).
std::pair<at::Tensor, at::Tensor> add_linear(torch::nn::Module& parent, const std::string& name,
                                             std::vector<int64_t> weight_shape) {
  auto holder = parent.register_module(name, std::make_shared<torch::nn::Module>());
  std::vector<int64_t> bias_shape(weight_shape.begin(), weight_shape.end() - 1);
  const double fan_in = static_cast<double>(weight_shape.back());
  const double fan_out = static_cast<double>(weight_shape[weight_shape.size() - 2]);
  const double bound = std::sqrt(6.0 / (fan_in + fan_out));
  at::Tensor w = at::empty(weight_shape).uniform_(-bound, bound);
  return {holder->register_parameter("weight", w),
          holder->register_parameter("bias", at::zeros(bias_shape))};
}

}  // namespace

HedgeNet::HedgeNet(const ModelSection& c, const InputShape& in) {
  const std::vector<int64_t> widths = c.hidden_widths();
  std::vector<std::string> listed;
  for (int64_t w : widths) listed.push_back(std::to_string(w));
  for (int64_t w : widths) {
    STRATA_CHECK_T(ConfigError, w == widths[0], "model.name=hbp stacks its hidden layers and "
                   "needs one width for all of them, but model.hidden=[", join(listed, ", "),
                   "]; set model.hidden=[", widths[0], "] and model.depth=", widths.size());
  }
  layers_ = static_cast<int64_t>(widths.size());
  const int64_t H = widths[0], D = in.channels * in.height * in.width, K = in.classes;
  hedge_ = c.hbp.hedge;
  beta_ = c.hbp.beta;
  floor_ = c.hbp.smoothing / static_cast<double>(layers_);
  minmax_ = c.hbp.hedge_loss == "minmax";
  std::tie(first_w_, first_b_) = add_linear(*this, "first", {H, D});
  std::tie(hidden_w_, hidden_b_) = add_linear(*this, "hidden", {layers_ - 1, H, H});
  std::tie(head0_w_, head0_b_) = add_linear(*this, "head0", {K, D});
  std::tie(heads_w_, heads_b_) = add_linear(*this, "heads", {layers_, K, H});
  at::Tensor alpha = at::full({layers_ + 1}, 1.0 / static_cast<double>(layers_ + 1));
  if (!hedge_) {
    alpha.zero_();
    alpha[layers_] = 1.0;
  }
  alpha_ = register_buffer("alpha", alpha);
}

bool HedgeNet::use_fused(const at::Tensor& x) const {
  if (!fused_ || !is_training() || !at::GradMode::is_enabled() || x.requires_grad()) return false;
  if (!x.device().is_cpu() || x.scalar_type() != at::kFloat || x.size(0) > 64) return false;
  if (autocast_state(at::kCPU).enabled) return false;
  for (const at::Tensor& p : {first_w_, hidden_w_, head0_w_, heads_w_, alpha_}) {
    if (!p.device().is_cpu() || p.scalar_type() != at::kFloat) return false;
  }
  return true;
}

at::Tensor HedgeNet::head_logits(const at::Tensor& x) {
  const at::Tensor in = x.flatten(1);
  std::vector<at::Tensor> logits{at::linear(in, head0_w_, head0_b_)};
  at::Tensor h = at::relu(at::linear(in, first_w_, first_b_));
  logits.push_back(at::linear(h, heads_w_[0], heads_b_[0]));
  for (int64_t l = 1; l < layers_; ++l) {
    h = at::relu(at::linear(h, hidden_w_[l - 1], hidden_b_[l - 1]));
    logits.push_back(at::linear(h, heads_w_[l], heads_b_[l]));
  }
  return at::stack(logits);
}

at::Tensor HedgeNet::forward(const at::Tensor& x) {
  if (use_fused(x)) {
    auto c = [](const at::Tensor& t) { return t.contiguous(); };
    const variable_list out =
        HedgeHeads::apply(c(x.flatten(1)), c(alpha_), c(first_w_), c(first_b_), c(hidden_w_),
                          c(hidden_b_), c(head0_w_), c(head0_b_), c(heads_w_), c(heads_b_));
    heads_out_ = out[0];
    return out[1];
  }
  const at::Tensor logits = head_logits(x);
  if (is_training()) heads_out_ = logits;
  const at::Tensor log_alpha = alpha_.clamp_min(0).log().to(logits.scalar_type()).view({-1, 1, 1});
  return at::logsumexp(at::log_softmax(logits, -1) + log_alpha, 0);
}

at::Tensor HedgeNet::loss(const at::Tensor& output, const at::Tensor& targets) {
  // Something that replaces the model's forward (train.qat's graph) never
  // produces the heads.
  STRATA_CHECK_T(ConfigError, heads_out_.defined(), "model.name=hbp trains on its heads' "
                 "outputs, which only its own forward in training mode produces; it does not "
                 "support train.qat (whose graph replaces that forward): set "
                 "train.qat.enabled=false");
  const at::Tensor logits = std::exchange(heads_out_, at::Tensor());
  const at::Tensor y = targets.reshape({-1});
  at::Tensor loss, per_head;
  if (logits.device().is_cpu() && logits.scalar_type() == at::kFloat && logits.is_contiguous() &&
      fused_ && y.scalar_type() == at::kLong) {
    const variable_list out = HedgeLoss::apply(logits, y.contiguous(), alpha_.contiguous());
    loss = out[0];
    per_head = out[1];
  } else {
    const int64_t heads = logits.size(0), batch = logits.size(1);
    const at::Tensor logp = at::log_softmax(logits.to(at::kFloat), -1);
    per_head = -logp.gather(2, y.view({1, batch, 1}).expand({heads, batch, 1})).squeeze(2).mean(1);
    loss = (per_head * alpha_).sum();
    per_head = per_head.detach();
  }
  if (pending_n_++ == 0) {
    pending_ = per_head.clone();
  } else {
    pending_ += per_head;
  }
  return loss;
}

void HedgeNet::after_step(const std::function<void(at::Tensor&)>& mean_over_data) {
  if (pending_n_ == 0) return;
  at::Tensor losses = pending_ / static_cast<double>(std::exchange(pending_n_, 0));
  if (!hedge_) return;
  mean_over_data(losses);
  torch::NoGradGuard no_grad;
  if (!alpha_.device().is_cpu() || alpha_.scalar_type() != at::kFloat) {
    // A non-finite loss (an fp16 overflow) leaves alpha as it was; no host sync.
    const at::Tensor next = hedge_update(alpha_, losses, beta_, floor_, minmax_);
    alpha_.copy_(at::where(next.isfinite().all(), next, alpha_));
    return;
  }
  // On the CPU the same arithmetic as hedge_update in a loop: ten small
  // operator calls cost more than the rest of an online step's hedge.
  const at::Tensor l = losses.to(at::kFloat).contiguous();
  const float* lp = l.data_ptr<float>();
  const int64_t n = l.numel();
  float lo = lp[0], hi = lp[0];
  for (int64_t i = 1; i < n; ++i) {
    lo = std::min(lo, lp[i]);
    hi = std::max(hi, lp[i]);
  }
  if (!std::isfinite(lo) || !std::isfinite(hi)) return;
  const float range = std::max(hi - lo, std::numeric_limits<float>::min());
  float* a = alpha_.data_ptr<float>();
  float sum = 0.f;
  for (int64_t i = 0; i < n; ++i) {
    const float li = minmax_ ? (lp[i] - lo) / range : lp[i];
    a[i] = std::max(a[i] * std::pow(static_cast<float>(beta_), li), static_cast<float>(floor_));
    sum += a[i];
  }
  for (int64_t i = 0; i < n; ++i) a[i] /= sum;
}

}  // namespace strata::train
