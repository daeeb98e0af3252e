#include "federated/learner.h"

#include <torch/optim/optimizer.h>

#include <optional>

#include "core/error.h"
#include "core/random.h"
#include "trainer/amp.h"
#include "trainer/data/loader.h"
#include "trainer/qat.h"
#include "trainer/train_step.h"

namespace strata::fed {
namespace {

LocalData rows(const LocalData& d, const at::Tensor& idx) {
  return {d.inputs.index_select(0, idx), d.targets.index_select(0, idx)};
}

at::Tensor permutation(int64_t n, uint64_t seed) {
  at::Generator gen = at::detail::createCPUGenerator(seed);
  return at::randperm(n, gen, at::kLong);
}

}  // namespace

LocalData local_data(const train::LoadedData& data, const std::vector<int64_t>& indices) {
  auto [x, y] = data.train_rows(indices);
  return {x, y};
}

void check_learner_recipe(const train::Recipe& recipe) {
  // Each update starts from the server's weights, so a client-side pruning
  // ramp would restart every round; pruning federated models is not built yet.
  STRATA_CHECK_T(ConfigError, recipe.train.prune.sparsity == 0.0, recipe.where("train.prune"),
                 "train.prune is not supported on federated clients yet (each update starts "
                 "from the server's model); prune the federated model after training with "
                 "strata-train, or remove train.prune");
}

Learner::~Learner() = default;

Learner::Learner(const train::Recipe& recipe, const train::Registries& registries,
                 std::shared_ptr<train::Model> model)
    : recipe_(recipe), registries_(registries), layout_(TensorLayout::of(*model)) {
  check_learner_recipe(recipe_);
  pm_.model = std::move(model);
  pm_.tp = dist::make_self_communicator("tp");
  pm_.pp = dist::make_self_communicator("pp");
  pm_.splits = {};
}

LocalResult Learner::learn(const at::Tensor& global, int64_t steps, double proximal_mu,
                           const std::function<LocalData(int64_t)>& next_batch) {
  train::Model& model = *pm_.model;
  layout_.load_into(model, global);
  std::unique_ptr<torch::optim::Optimizer> optimizer =
      registries_.optimizers
          .get(recipe_.optimizer.name, recipe_.where("optimizer.name"), "optimizer.name")
          .make(recipe_, model);
  // The recipe's step; no data-parallel group, so its reducer settings are unused.
  const train::TrainStepOptions so = train::train_step_options(recipe_);
  train::TrainStep step(pm_, *optimizer, {},
                        train::model_loss(model, device_.type(), so.compute_dtype), nullptr,
                        device_, so);
  step.set_proximal(proximal_mu);
  LocalResult r;
  int64_t s = 0;
  // Every micro-batch of the update; the loss stays on the device until
  // the update is done (no host sync per step).
  std::optional<LocalData> first;
  const auto next = [&] {
    const LocalData b = first ? *first : next_batch(s);
    first.reset();
    ++s;
    r.num_samples += b.size();
    return train::Batch{b.inputs, b.targets, 0, s - 1};
  };
  const int64_t updates = steps / so.grad_accum;
  if (recipe_.train.qat.enabled && !qat_ && updates > 0) {
    // Traced on the first batch; the observers then live as long as the
    // learner, the schedule counting this client's optimizer steps.
    first = next_batch(0);
    qat_ = std::make_unique<train::QatGraph>(
        model, recipe_.train.qat, first->inputs.slice(0, 0, 1).to(device_),
        recipe_.where("train.qat"));
    pm_.forward_graph = [q = qat_.get()](const at::Tensor& x) { return q->forward(x); };
  }
  at::Tensor loss_sum = at::zeros({}, at::TensorOptions(at::kDouble).device(device_));
  for (int64_t u = 0; u < updates; ++u) {
    if (qat_) qat_->set_step(qat_steps_++);
    loss_sum += step.run(next, recipe_.optimizer.lr).loss;
  }
  r.mean_loss = updates > 0 ? loss_sum.item<double>() / static_cast<double>(updates) : 0.0;
  r.delta = layout_.flatten(model) - global;
  return r;
}

LocalResult Learner::train_epochs(const at::Tensor& global, const LocalData& data,
                                  int64_t epochs, int64_t round, uint64_t seed,
                                  double proximal_mu) {
  const int64_t n = data.size();
  STRATA_CHECK_T(DataError, n > 0, "a client without samples cannot train");
  const int64_t batch = recipe_.data.batch_size;
  const int64_t per_epoch = (n + batch - 1) / batch;
  at::Tensor order;
  return learn(global, epochs * per_epoch, proximal_mu, [&](int64_t s) {
    const int64_t epoch = s / per_epoch, i = s % per_epoch;
    if (i == 0) {
      order = permutation(n, mix_seed(seed, static_cast<uint64_t>(round),
                                      static_cast<uint64_t>(epoch)));
    }
    return rows(data, order.slice(0, i * batch, std::min(n, (i + 1) * batch)));
  });
}

LocalResult Learner::learn_online(const at::Tensor& global, SampleStream& stream,
                                  int64_t samples, double proximal_mu) {
  const int64_t batch = recipe_.data.batch_size;
  const int64_t steps = (samples + batch - 1) / batch;
  int64_t left = samples;
  return learn(global, steps, proximal_mu, [&](int64_t) {
    const int64_t b = std::min(left, batch);
    left -= b;
    return stream.next(b);
  });
}

SampleStream::SampleStream(LocalData data, uint64_t seed) : data_(std::move(data)), seed_(seed) {
  STRATA_CHECK_T(DataError, data_.size() > 0, "a client without samples has no stream");
}

LocalData SampleStream::next(int64_t n) {
  STRATA_INTERNAL_ASSERT(n >= 1 && n <= data_.size());
  std::vector<at::Tensor> parts;
  int64_t need = n;
  while (need > 0) {
    if (pass_ < 0 || pos_ == data_.size()) {
      ++pass_;
      pos_ = 0;
      order_ = permutation(data_.size(), mix_seed(seed_, static_cast<uint64_t>(pass_)));
    }
    const int64_t take = std::min(need, data_.size() - pos_);
    parts.push_back(order_.slice(0, pos_, pos_ + take));
    pos_ += take;
    need -= take;
  }
  consumed_ += n;
  return rows(data_, at::cat(parts));
}

}  // namespace strata::fed
