#include "distributed/gradient_reducer.h"

#include <torch/torch.h>

#include "core/error.h"
#include "core/strings.h"

namespace strata::dist {

struct GradientReducer::Bucket {
  at::Tensor flat;  // gradients of this bucket's parameters, concatenated
  at::Tensor wire;  // what travels: `flat` or its fp16/bf16 cast
  std::unique_ptr<Work> work;
  int64_t pending = 0;  // parameters still waiting for their gradient
  bool launched = false;
};

GradientReducer::GradientReducer(
    std::vector<std::pair<std::string, at::Tensor>> params,
    std::shared_ptr<Communicator> comm, GradientReducerOptions options)
    : params_(std::move(params)), comm_(std::move(comm)), options_(options) {
  const size_t n = params_.size();
  bucket_of_.assign(n, 0);
  offset_of_.assign(n, 0);
  ready_.assign(n, false);
  // Reverse registration order; a new bucket when full or the dtype changes.
  BucketInfo cur;
  // A small first bucket only helps when it can start communicating while
  // backward still runs; without overlap it would just add a collective.
  int64_t cap = options_.overlap ? options_.first_bucket_bytes
                                 : options_.bucket_cap_bytes;
  at::ScalarType dtype = at::kFloat;
  auto close = [&] {
    if (cur.params.empty()) return;
    info_.push_back(cur);
    cur = BucketInfo{};
    cap = options_.bucket_cap_bytes;
  };
  for (size_t k = n; k-- > 0;) {
    const at::Tensor& p = params_[k].second;
    if (!p.requires_grad()) continue;
    const int64_t bytes = p.numel() * static_cast<int64_t>(p.element_size());
    if (!cur.params.empty() &&
        (cur.bytes + bytes > cap || p.scalar_type() != dtype)) {
      close();
    }
    dtype = p.scalar_type();
    cur.params.push_back(k);
    cur.bytes += bytes;
  }
  close();
  for (size_t b = 0; b < info_.size(); ++b) {
    auto bucket = std::make_unique<Bucket>();
    int64_t numel = 0;
    for (size_t k : info_[b].params) {
      bucket_of_[k] = b;
      offset_of_[k] = numel;
      numel += params_[k].second.numel();
    }
    const at::Tensor& first = params_[info_[b].params.front()].second;
    bucket->flat = at::zeros({numel}, first.options().requires_grad(false));
    buckets_.push_back(std::move(bucket));
  }
  for (size_t k = 0; k < n; ++k) {
    at::Tensor& p = params_[k].second;
    if (!p.requires_grad()) continue;
    hook_ids_.push_back(p.register_hook([this, k](const at::Tensor& grad) {
      on_grad(k, grad);
      return at::Tensor();  // keep the gradient unchanged
    }));
  }
  reset_step();
}

GradientReducer::~GradientReducer() {
  size_t h = 0;
  for (auto& [name, p] : params_) {
    if (p.requires_grad() && h < hook_ids_.size()) p.remove_hook(hook_ids_[h++]);
  }
}

void GradientReducer::reset_step() {
  std::fill(ready_.begin(), ready_.end(), false);
  for (size_t b = 0; b < buckets_.size(); ++b) {
    buckets_[b]->pending = static_cast<int64_t>(info_[b].params.size());
    buckets_[b]->launched = false;
    buckets_[b]->work.reset();
  }
  next_launch_ = 0;
  hooks_fired_ = 0;
  active_ = false;
}

// Runs on the autograd thread with the gradient about to be accumulated into
// param.grad(); what param.grad() holds already (earlier micro-steps under
// NoSync) is added so the bucket carries the whole accumulated gradient.
void GradientReducer::on_grad(size_t k, const at::Tensor& grad) {
  if (!sync_) return;
  active_ = true;
  STRATA_INTERNAL_ASSERT(!ready_[k], "gradient hook fired twice for ",
                         params_[k].first, " in one backward");
  ready_[k] = true;
  ++hooks_fired_;
  Bucket& b = *buckets_[bucket_of_[k]];
  const at::Tensor& p = params_[k].second;
  at::Tensor slot = b.flat.narrow(0, offset_of_[k], p.numel()).view_as(p);
  const at::Tensor& prior = p.grad();
  if (prior.defined()) {
    at::add_out(slot, prior, grad);
  } else {
    slot.copy_(grad);
  }
  if (--b.pending == 0 && options_.overlap) launch_ready();
}

void GradientReducer::launch_ready() {
  while (next_launch_ < buckets_.size() &&
         buckets_[next_launch_]->pending == 0) {
    launch(next_launch_++);
  }
}

void GradientReducer::launch(size_t b) {
  Bucket& bucket = *buckets_[b];
  info_[b].hooks_before_launch = hooks_fired_;
  // Average = sum / n. Full precision: the division is fused into the copy
  // back in finish() (one memory pass fewer). Compressed: divide before the
  // cast so the 16-bit sum cannot overflow (as PyTorch's fp16 hook does).
  const double n = static_cast<double>(comm_->size());
  switch (options_.hook) {
    case CommHook::kNone: bucket.wire = bucket.flat; break;
    case CommHook::kFp16: bucket.wire = (bucket.flat / n).to(at::kHalf); break;
    case CommHook::kBf16: bucket.wire = (bucket.flat / n).to(at::kBFloat16); break;
  }
  bucket.work = comm_->all_reduce(bucket.wire, ReduceOp::kSum);
  bucket.launched = true;
}

void GradientReducer::finish() {
  if (!active_) {
    // No synchronised backward ran (e.g. every parameter is unused): still
    // take part in the collectives so the ranks stay in step.
    STRATA_CHECK_T(ConfigError, options_.allow_unused || params_.empty(),
                   "GradientReducer::finish() without a backward pass on ",
                   comm_->name(), " rank ", comm_->rank(), "; call it after "
                   "loss.backward() outside NoSync");
  }
  std::vector<std::string> unused;
  for (size_t k = 0; k < params_.size(); ++k) {
    if (params_[k].second.requires_grad() && !ready_[k]) {
      unused.push_back(params_[k].first);
      Bucket& b = *buckets_[bucket_of_[k]];
      b.flat.narrow(0, offset_of_[k], params_[k].second.numel()).zero_();
      --b.pending;
    }
  }
  if (!unused.empty() && !options_.allow_unused) {
    reset_step();
    throw ConfigError(str(
        "data parallel: ", unused.size(), " parameter(s) got no gradient this "
        "step (", join(unused, ", "), "); every parameter must take part in "
        "the loss, or set distributed.find_unused_parameters=true"));
  }
  while (next_launch_ < buckets_.size()) launch(next_launch_++);
  try {
    for (size_t b = 0; b < buckets_.size(); ++b) {
      Bucket& bucket = *buckets_[b];
      bucket.work->wait();
      const bool summed = bucket.wire.is_same(bucket.flat);  // not yet / n
      if (!summed) bucket.flat.copy_(bucket.wire);
      const at::Tensor scale =
          at::scalar_tensor(summed ? 1.0 / comm_->size() : 1.0, bucket.flat.options());
      for (size_t k : info_[b].params) {
        at::Tensor& p = params_[k].second;
        at::Tensor sum = bucket.flat.narrow(0, offset_of_[k], p.numel()).view_as(p);
        if (!p.grad().defined()) p.mutable_grad() = at::empty_like(p);
        at::mul_out(p.mutable_grad(), sum, scale);
      }
    }
  } catch (...) {
    reset_step();
    throw;
  }
  reset_step();
}

void broadcast_parameters(torch::nn::Module& module, Communicator& comm,
                          int root) {
  torch::NoGradGuard no_grad;
  for (auto& p : module.parameters()) comm.broadcast(p, root)->wait();
  broadcast_buffers(module, comm, root);
}

// One broadcast per dtype (BatchNorm has float statistics and an int64
// counter) instead of one per buffer: a small collective costs mostly
// latency.
void broadcast_buffers(torch::nn::Module& module, Communicator& comm,
                       int root) {
  if (comm.size() == 1) return;
  torch::NoGradGuard no_grad;
  std::vector<at::Tensor> buffers = module.buffers();
  std::vector<bool> done(buffers.size(), false);
  for (size_t i = 0; i < buffers.size(); ++i) {
    if (done[i]) continue;
    std::vector<at::Tensor> group;
    for (size_t j = i; j < buffers.size(); ++j) {
      if (!done[j] && buffers[j].scalar_type() == buffers[i].scalar_type()) {
        group.push_back(buffers[j]);
        done[j] = true;
      }
    }
    std::vector<at::Tensor> flat_parts;
    for (auto& b : group) flat_parts.push_back(b.reshape({-1}));
    at::Tensor flat = at::cat(flat_parts);
    comm.broadcast(flat, root)->wait();
    int64_t offset = 0;
    for (auto& b : group) {
      b.copy_(flat.narrow(0, offset, b.numel()).view_as(b));
      offset += b.numel();
    }
  }
}

}  // namespace strata::dist
