#include "distributed/tensor_parallel.h"

#include <torch/autograd.h>
#include <torch/nn/init.h>

#include <cmath>

#include "core/error.h"

namespace strata::dist {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// The group travels through autograd's saved state as a capsule holding
// its shared_ptr: the graph keeps the group alive until its backward ran,
// whoever dropped the layer meanwhile.
struct GroupRef : torch::CustomClassHolder {
  explicit GroupRef(std::shared_ptr<Communicator> c) : group(std::move(c)) {}
  std::shared_ptr<Communicator> group;
};
c10::IValue pack(const std::shared_ptr<Communicator>& c) {
  STRATA_INTERNAL_ASSERT(c != nullptr, "tensor parallelism without a group");
  return c10::IValue::make_capsule(c10::make_intrusive<GroupRef>(c));
}
Communicator& unpack(AutogradContext* ctx) {
  const c10::IValue& v = ctx->saved_data.at("tp");
  return *c10::static_intrusive_pointer_cast<GroupRef>(v.toCapsule())->group;
}

// The dtype a tensor travels in: gloo (in LibTorch 1.13) and MPI have no
// bf16 (autocast's activations on CPUs), so those carry it as fp32.
at::ScalarType wire_dtype(const Communicator& c, const at::Tensor& x) {
  return x.scalar_type() == at::kBFloat16 && !c.supports(Capability::kNative16Bit)
             ? at::kFloat
             : x.scalar_type();
}

at::Tensor all_reduce_sum(Communicator& c, const at::Tensor& x) {
  at::Tensor y = x.to(wire_dtype(c, x)).contiguous().clone();
  if (c.size() > 1) c.all_reduce(y, ReduceOp::kSum)->wait();
  return y.to(x.scalar_type());
}

at::Tensor all_gather_last(Communicator& c, const at::Tensor& x) {
  if (c.size() == 1) return x.clone();
  const at::Tensor in = x.to(wire_dtype(c, x)).contiguous();
  std::vector<at::Tensor> parts;
  for (int r = 0; r < c.size(); ++r) parts.push_back(at::empty_like(in));
  c.all_gather(parts, in)->wait();
  return at::cat(parts, -1).to(x.scalar_type());
}

at::Tensor slice_last(Communicator& c, const at::Tensor& x) {
  const int64_t n = x.size(-1);
  STRATA_CHECK_T(ConfigError, n % c.size() == 0, "tensor parallelism: the last dimension (",
                 n, ") is not divisible by the ", c.name(), " group size ", c.size());
  return x.chunk(c.size(), -1)[c.rank()].contiguous();
}

struct CopyTo : torch::autograd::Function<CopyTo> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const c10::IValue& tp) {
    ctx->saved_data["tp"] = tp;
    return x.view_as(x);
  }
  static variable_list backward(AutogradContext* ctx, variable_list g) {
    return {all_reduce_sum(unpack(ctx), g[0]), at::Tensor()};
  }
};

struct ReduceFrom : torch::autograd::Function<ReduceFrom> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const c10::IValue& tp) {
    ctx->saved_data["tp"] = tp;
    return all_reduce_sum(unpack(ctx), x);
  }
  static variable_list backward(AutogradContext*, variable_list g) { return {g[0], at::Tensor()}; }
};

struct ScatterTo : torch::autograd::Function<ScatterTo> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const c10::IValue& tp) {
    ctx->saved_data["tp"] = tp;
    return slice_last(unpack(ctx), x);
  }
  static variable_list backward(AutogradContext* ctx, variable_list g) {
    return {all_gather_last(unpack(ctx), g[0]), at::Tensor()};
  }
};

struct GatherFrom : torch::autograd::Function<GatherFrom> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const c10::IValue& tp) {
    ctx->saved_data["tp"] = tp;
    return all_gather_last(unpack(ctx), x);
  }
  static variable_list backward(AutogradContext* ctx, variable_list g) {
    return {slice_last(unpack(ctx), g[0]), at::Tensor()};
  }
};

// Rows [r n/t, (r+1) n/t) of dim `dim` of `full`, as a trainable copy; with
// groups > 1, that slice of each of `groups` equal blocks of dim 0, joined.
at::Tensor shard(const at::Tensor& full, int64_t dim, const Communicator& tp, const char* what,
                 int64_t groups = 1) {
  const int64_t n = full.size(dim) / groups;
  STRATA_CHECK_T(ConfigError, full.size(dim) % groups == 0 && n % tp.size() == 0,
                 "tensor parallelism: ", what, " (", n, groups > 1 ? " per block" : "",
                 ") is not divisible by tensor_parallel = ", tp.size(),
                 "; pick a tensor_parallel size that divides it");
  if (groups == 1) return full.chunk(tp.size(), dim)[tp.rank()].detach().clone();
  std::vector<at::Tensor> parts;
  for (const at::Tensor& block : full.chunk(groups, 0)) {
    parts.push_back(block.chunk(tp.size(), 0)[tp.rank()]);
  }
  return at::cat(parts, 0).detach().clone();
}

struct VocabCrossEntropy : torch::autograd::Function<VocabCrossEntropy> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& logits,
                            const at::Tensor& targets, int64_t start, const c10::IValue& tp) {
    ctx->saved_data["tp"] = tp;
    Communicator& c = unpack(ctx);
    const int64_t vt = logits.size(-1);
    const at::Tensor x = logits.reshape({-1, vt}).to(at::kFloat);
    const at::Tensor t = targets.reshape({-1});
    // Softmax over the whole vocabulary from three reductions of N values.
    at::Tensor max = std::get<0>(x.max(-1)).contiguous();
    if (c.size() > 1) c.all_reduce(max, ReduceOp::kMax)->wait();
    const at::Tensor shifted = x - max.unsqueeze(1);
    const at::Tensor e = shifted.exp();
    const at::Tensor sum = all_reduce_sum(c, e.sum(-1));
    const at::Tensor mine = (t >= start) & (t < start + vt);
    const at::Tensor local = (t - start).clamp(0, vt - 1);
    const at::Tensor target_logit =
        all_reduce_sum(c, shifted.gather(1, local.unsqueeze(1)).squeeze(1) * mine);
    ctx->save_for_backward({e / sum.unsqueeze(1), local, mine});
    ctx->saved_data["dtype"] = static_cast<int64_t>(logits.scalar_type());
    ctx->saved_data["shape"] = logits.sizes().vec();
    return (sum.log() - target_logit).mean();
  }
  static variable_list backward(AutogradContext* ctx, variable_list g) {
    const auto saved = ctx->get_saved_variables();
    at::Tensor grad = saved[0].clone();  // softmax, N x V/t
    grad.scatter_add_(1, saved[1].unsqueeze(1), -saved[2].to(grad.scalar_type()).unsqueeze(1));
    grad.mul_(g[0] / static_cast<double>(grad.size(0)));
    const auto dtype = static_cast<at::ScalarType>(ctx->saved_data["dtype"].toInt());
    return {grad.reshape(ctx->saved_data["shape"].toIntVector()).to(dtype), at::Tensor(),
            at::Tensor(), at::Tensor()};
  }
};

}  // namespace

std::map<std::string, TpShard> tensor_parallel_shards(const torch::nn::Module& root) {
  std::map<std::string, TpShard> out;
  std::vector<std::pair<std::string, const torch::nn::Module*>> modules{{"", &root}};
  for (const auto& item : root.named_modules("", /*include_self=*/false)) {
    modules.emplace_back(item.key() + ".", item.value().get());
  }
  for (const auto& [prefix, m] : modules) {
    if (const auto* c = dynamic_cast<const ColumnParallelLinear*>(m)) {
      out[prefix + "weight"] = {0, c->groups()};
      if (c->bias.defined()) out[prefix + "bias"] = {0, c->groups()};
    } else if (dynamic_cast<const RowParallelLinear*>(m)) {
      out[prefix + "weight"] = {1, 1};
    } else if (dynamic_cast<const VocabParallelEmbedding*>(m)) {
      out[prefix + "weight"] = {0, 1};
    }
  }
  return out;
}

at::Tensor shard_of(const at::Tensor& full, const TpShard& spec, int rank, int size) {
  if (!spec.split() || size == 1) return full.detach().clone();
  STRATA_CHECK_T(ConfigError, full.size(spec.dim) % (spec.groups * size) == 0,
                 "a tensor of shape ", full.sizes(), " cannot be split ", size, " ways along dim ",
                 spec.dim, " in ", spec.groups, " block(s); pick a tensor_parallel size that "
                 "divides it");
  std::vector<at::Tensor> parts;
  for (const at::Tensor& block : full.chunk(spec.groups, spec.dim)) {
    parts.push_back(block.chunk(size, spec.dim)[rank]);
  }
  return at::cat(parts, spec.dim).contiguous();
}

at::Tensor join_shards(const std::vector<at::Tensor>& shards, const TpShard& spec) {
  STRATA_INTERNAL_ASSERT(!shards.empty(), "join_shards of no shards");
  if (!spec.split() || shards.size() == 1) return shards[0].detach().clone();
  std::vector<at::Tensor> blocks;
  for (int64_t g = 0; g < spec.groups; ++g) {
    std::vector<at::Tensor> parts;
    for (const auto& s : shards) parts.push_back(s.chunk(spec.groups, spec.dim)[g]);
    blocks.push_back(at::cat(parts, spec.dim));
  }
  return at::cat(blocks, spec.dim);
}

at::Tensor copy_to_tp(const at::Tensor& x, const std::shared_ptr<Communicator>& tp) {
  return tp->size() == 1 ? x : CopyTo::apply(x, pack(tp));
}
at::Tensor reduce_from_tp(const at::Tensor& x, const std::shared_ptr<Communicator>& tp) {
  return tp->size() == 1 ? x : ReduceFrom::apply(x, pack(tp));
}
at::Tensor scatter_to_tp(const at::Tensor& x, const std::shared_ptr<Communicator>& tp) {
  return tp->size() == 1 ? x : ScatterTo::apply(x, pack(tp));
}
at::Tensor gather_from_tp(const at::Tensor& x, const std::shared_ptr<Communicator>& tp) {
  return tp->size() == 1 ? x : GatherFrom::apply(x, pack(tp));
}

std::pair<at::Tensor, at::Tensor> dense_linear_init(int64_t in, int64_t out, bool bias) {
  torch::NoGradGuard no_grad;
  at::Tensor w = at::empty({out, in});
  torch::nn::init::kaiming_uniform_(w, std::sqrt(5.0));
  at::Tensor b;
  if (bias) {
    const double bound = 1.0 / std::sqrt(static_cast<double>(in));
    b = at::empty({out}).uniform_(-bound, bound);
  }
  return {w, b};
}

ColumnParallelLinear::ColumnParallelLinear(const at::Tensor& full_weight,
                                           const at::Tensor& full_bias,
                                           std::shared_ptr<Communicator> tp, bool gather_output,
                                           int64_t groups)
    : tp_(std::move(tp)), gather_output_(gather_output), groups_(groups) {
  weight = register_parameter("weight", shard(full_weight, 0, *tp_, "output features", groups));
  if (full_bias.defined()) {
    bias = register_parameter("bias", shard(full_bias, 0, *tp_, "output features", groups));
  }
}

at::Tensor ColumnParallelLinear::forward(const at::Tensor& x) {
  at::Tensor y = at::linear(copy_to_tp(x, tp_), weight, bias);
  return gather_output_ ? gather_from_tp(y, tp_) : y;
}

RowParallelLinear::RowParallelLinear(const at::Tensor& full_weight, const at::Tensor& full_bias,
                                     std::shared_ptr<Communicator> tp, bool input_is_parallel)
    : tp_(std::move(tp)), input_is_parallel_(input_is_parallel) {
  weight = register_parameter("weight", shard(full_weight, 1, *tp_, "input features"));
  if (full_bias.defined()) bias = register_parameter("bias", full_bias.detach().clone());
}

at::Tensor RowParallelLinear::forward(const at::Tensor& x) {
  const at::Tensor in = input_is_parallel_ ? x : scatter_to_tp(x, tp_);
  at::Tensor y = reduce_from_tp(at::linear(in, weight), tp_);
  return bias.defined() ? y + bias : y;
}

VocabParallelEmbedding::VocabParallelEmbedding(const at::Tensor& full_weight,
                                               std::shared_ptr<Communicator> tp)
    : tp_(std::move(tp)) {
  weight = register_parameter("weight", shard(full_weight, 0, *tp_, "the vocabulary"));
  start_ = weight.size(0) * tp_->rank();
}

at::Tensor VocabParallelEmbedding::forward(const at::Tensor& ids) {
  if (tp_->size() == 1) return at::embedding(weight, ids);
  const int64_t rows = weight.size(0);
  const at::Tensor mine = (ids >= start_) & (ids < start_ + rows);
  const at::Tensor local = (ids - start_).clamp(0, rows - 1);
  const at::Tensor y = at::embedding(weight, local) * mine.unsqueeze(-1).to(weight.scalar_type());
  return reduce_from_tp(y, tp_);
}

at::Tensor vocab_parallel_cross_entropy(const at::Tensor& logits, const at::Tensor& targets,
                                        int64_t vocab_start,
                                        const std::shared_ptr<Communicator>& tp) {
  return VocabCrossEntropy::apply(logits, targets, vocab_start, pack(tp));
}

}  // namespace strata::dist
