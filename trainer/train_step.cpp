#include "trainer/train_step.h"

#include <torch/nn/functional/loss.h>

#include "core/error.h"
#include "core/logging.h"
#include "core/strings.h"
#include "trainer/amp.h"
#include "trainer/optim.h"
#include "trainer/prune.h"

namespace strata::train {

at::Tensor cross_entropy(const at::Tensor& output, const at::Tensor& targets) {
  namespace F = torch::nn::functional;
  return F::cross_entropy(output.reshape({-1, output.size(-1)}), targets.reshape({-1}));
}

namespace {

dist::CommHook comm_hook(const std::string& name) {
  if (name == "fp16") return dist::CommHook::kFp16;
  if (name == "bf16") return dist::CommHook::kBf16;
  return dist::CommHook::kNone;
}

}  // namespace

TrainStepOptions train_step_options(const Recipe& r) {
  const DistributedSection& d = r.distributed;
  TrainStepOptions o;
  o.grad_accum = r.train.grad_accum;
  o.compute_dtype = precision_dtype(r.train.precision);
  o.clip_grad_norm = r.train.clip_grad_norm;
  o.broadcast_buffers = d.broadcast_buffers;
  o.reducer.bucket_cap_bytes = static_cast<int64_t>(d.bucket_mb * (1 << 20));
  o.reducer.first_bucket_bytes = std::min<int64_t>(o.reducer.bucket_cap_bytes, 1 << 20);
  o.reducer.overlap = d.overlap;
  o.reducer.allow_unused = d.find_unused_parameters;
  o.reducer.hook = comm_hook(d.comm_hook);
  return o;
}

LossFn model_loss(Model& model, at::DeviceType device_type, at::ScalarType dtype) {
  return [&model, device_type, dtype](const at::Tensor& output, const at::Tensor&,
                                      const at::Tensor& targets) {
    AutocastGuard amp(device_type, dtype);
    return model.loss(output, targets);
  };
}

TrainStep::TrainStep(ParallelModel& model, torch::optim::Optimizer& optimizer,
                     std::vector<std::pair<std::string, at::Tensor>> extra, LossFn loss,
                     std::shared_ptr<dist::Communicator> dp, at::Device device,
                     TrainStepOptions options)
    : pm_(model),
      optimizer_(optimizer),
      loss_(std::move(loss)),
      dp_(dp && dp->size() > 1 ? std::move(dp) : nullptr),
      device_(device),
      o_(std::move(options)),
      scaler_(LossScalerOptions{o_.compute_dtype == at::kHalf}) {
  STRATA_INTERNAL_ASSERT(o_.grad_accum >= 1, "grad_accum ", o_.grad_accum);
  params_ = pm_.model->parameters();
  for (const auto& e : extra) params_.push_back(e.second);
  if (pm_.model_parallel()) {
    // Each parameter's squared gradient norm counted once over the model:
    // a shard fully, a tensor replicated over tp by 1/tp on each, a tied
    // parameter's second copy not at all.
    const double replicated = 1.0 / pm_.tp->size();
    for (const auto& p : pm_.model->named_parameters()) {
      norm_weights_.push_back(pm_.tied_copy(p.key()) ? 0.0
                              : pm_.splits.count(p.key()) ? 1.0
                                                          : replicated);
    }
    norm_weights_.resize(params_.size(), replicated);  // extra: replicated
  }
  if (dp_) {
    dist::broadcast_parameters(*pm_.model, *dp_);
    std::vector<std::pair<std::string, at::Tensor>> named;
    for (auto& p : pm_.model->named_parameters()) named.emplace_back(p.key(), p.value());
    for (auto& e : extra) named.push_back(std::move(e));
    reducer_ = std::make_unique<dist::GradientReducer>(std::move(named), dp_, o_.reducer);
  }
}

TrainStep::~TrainStep() = default;

void TrainStep::set_proximal(double mu) {
  mu_ = mu;
  anchors_.clear();
  if (mu <= 0) return;
  for (const auto& p : params_) anchors_.push_back(p.detach().clone());
}

void TrainStep::over_model(at::Tensor& t, dist::ReduceOp op) const {
  if (pm_.tp->size() > 1) pm_.tp->all_reduce(t, op)->wait();
  if (pm_.pp->size() > 1) pm_.pp->all_reduce(t, op)->wait();
}

StepResult TrainStep::run(const std::function<Batch()>& next, double lr) {
  pm_.model->train();
  // Gradients are cleared to undefined rather than zero-filled (what
  // LibTorch 2.x's zero_grad() does by default; 1.13 can only zero-fill):
  // the first backward then stores its gradient instead of adding it to
  // zeros, one memory pass fewer per parameter. Same values.
  for (auto& p : params_) p.mutable_grad() = at::Tensor();
  if (dp_ && o_.broadcast_buffers) dist::broadcast_buffers(*pm_.model, *dp_);
  at::Tensor loss_sum = at::zeros({}, at::TensorOptions(at::kDouble).device(device_));
  for (int64_t i = 0; i < o_.grad_accum; ++i) backward_micro(next(), i, loss_sum);
  StepResult r;
  r.skipped = !epilogue(lr);
  if (!pm_.pipe || pm_.pipe->last()) r.loss = loss_sum / static_cast<double>(o_.grad_accum);
  return r;
}

void TrainStep::backward_micro(const Batch& b, int64_t i, at::Tensor& loss_sum) {
  const int64_t accum = o_.grad_accum;
  const at::ScalarType dtype = o_.compute_dtype;
  Model& model = *pm_.model;
  // Pinned batches: the copies overlap the previous step's GPU work.
  at::Tensor inputs = b.inputs.to(device_, /*non_blocking=*/true);
  at::Tensor targets = b.targets.to(device_, /*non_blocking=*/true);
  const bool last_micro = i + 1 == accum;
  // Data parallelism: only the step's last backward all-reduces.
  auto around_backward = [&](const std::function<void()>& backward, bool last) {
    if (reducer_ && !(last && last_micro)) {
      dist::GradientReducer::NoSync no_sync(*reducer_);
      backward();
    } else {
      backward();
    }
  };
  auto scale = [&](const at::Tensor& l) {
    return scaler_.scale_loss(accum > 1 ? l / static_cast<double>(accum) : l);
  };
  if (pm_.pipe) {
    const int64_t mb = inputs.size(0) / pm_.pipe->microbatches();
    dist::StageFunctions fns;
    fns.forward = [&](const at::Tensor& x, int) {
      AutocastGuard amp(device_.type(), dtype);
      return model.forward(x);
    };
    fns.loss = [&](const at::Tensor& y, int m) {
      return loss_(y, inputs.slice(0, m * mb, (m + 1) * mb),
                   targets.slice(0, m * mb, (m + 1) * mb));
    };
    fns.scale_loss = scale;
    fns.around_backward = around_backward;
    at::Tensor loss = pm_.pipe->train_step(inputs, fns);
    if (loss.defined()) loss_sum += loss;
    return;
  }
  at::Tensor output;
  {
    AutocastGuard amp(device_.type(), dtype);  // forward and loss only
    output = pm_.forward(inputs);
  }
  at::Tensor loss = loss_(output, inputs, targets);
  at::Tensor scaled = scale(loss);
  around_backward([&] { scaled.backward(); }, true);
  loss_sum += loss.detach();
}

bool TrainStep::epilogue(double lr) {
  if (reducer_) reducer_->finish();
  for (const auto& name : pm_.tied) dist::sum_tied_gradients(*pm_.model, name, *pm_.pp);
  // Note [Mixed precision] in amp.h: unscale after the all-reduce (every
  // rank sees the same gradients, so all skip or step together), before
  // clipping; under model parallelism the ranks holding other parts agree.
  const bool mp = pm_.model_parallel();
  auto max_over_model = [this](at::Tensor& t) { over_model(t, dist::ReduceOp::kMax); };
  auto sum_over_model = [this](at::Tensor& t) { over_model(t, dist::ReduceOp::kSum); };
  if (scaler_.enabled()) {
    scaler_.unscale(params_, mp ? max_over_model : std::function<void(at::Tensor&)>());
  }
  if (mu_ > 0) {
    torch::NoGradGuard no_grad;
    for (size_t i = 0; i < params_.size(); ++i) {
      if (params_[i].grad().defined()) {
        params_[i].mutable_grad().add_(params_[i].detach() - anchors_[i], mu_);
      }
    }
  }
  if (o_.clip_grad_norm > 0) {
    if (mp) {
      clip_grad_norm(params_, o_.clip_grad_norm, norm_weights_, sum_over_model);
    } else {
      clip_grad_norm(params_, o_.clip_grad_norm);
    }
  }
  set_learning_rate(optimizer_, lr);
  const bool stepped = scaler_.update();
  if (stepped) {
    optimizer_.step();
    if (pruner_) pruner_->apply();
  }
  pm_.model->after_step([this](at::Tensor& t) {
    if (dp_) dp_->all_reduce(t, dist::ReduceOp::kAvg)->wait();
  });
  return stepped;
}

}  // namespace strata::train
