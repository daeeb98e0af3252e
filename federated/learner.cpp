#include "federated/learner.h"

#include <torch/optim/optimizer.h>

#include <algorithm>
#include <optional>
#include <tuple>

#include "core/error.h"
#include "core/random.h"
#include "core/strings.h"
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

std::vector<TensorSlot> keep_local_slots(const train::Recipe& recipe,
                                         const TensorLayout& layout) {
  std::vector<TensorSlot> out;
  for (const std::string& name : recipe.federated.client.keep_local) {
    const auto& slots = layout.slots();
    const auto it = std::find_if(slots.begin(), slots.end(),
                                 [&](const TensorSlot& t) { return t.name == name; });
    if (it == slots.end()) {
      std::vector<std::string> names;
      for (const TensorSlot& t : slots) names.push_back(t.name);
      throw ConfigError(str(recipe.where("federated.client.keep_local"),
                            "federated.client.keep_local names '", printable(name),
                            "', which model.name=", recipe.model.name,
                            " does not have; its tensors: ", join(names, ", ")));
    }
    out.push_back(*it);
  }
  return out;
}

Learner::~Learner() = default;

Learner::Learner(const train::Recipe& recipe, const train::Registries& registries,
                 std::shared_ptr<train::Model> model)
    : recipe_(recipe), registries_(registries), layout_(TensorLayout::of(*model)) {
  check_learner_recipe(recipe_);
  keep_ = keep_local_slots(recipe_, layout_);
  pm_.model = std::move(model);
  pm_.tp = dist::make_self_communicator("tp");
  pm_.pp = dist::make_self_communicator("pp");
  pm_.splits = {};
}

LocalResult Learner::learn(const at::Tensor& global, int64_t steps, double proximal_mu,
                           bool score, const std::function<LocalData(int64_t)>& next_batch) {
  train::Model& model = *pm_.model;
  // keep_local: the server's model with the client's own tensors in it.
  at::Tensor start = global;
  if (!keep_.empty() && local_.defined()) {
    start = global.clone();
    for (const TensorSlot& t : keep_) {
      start.narrow(0, t.offset, t.numel).copy_(local_.narrow(0, t.offset, t.numel));
    }
  }
  layout_.load_into(model, start);
  std::unique_ptr<torch::optim::Optimizer> optimizer =
      registries_.optimizers
          .get(recipe_.optimizer.name, recipe_.where("optimizer.name"), "optimizer.name")
          .make(recipe_, model);
  // The recipe's step; no data-parallel group, so its reducer settings are unused.
  const train::TrainStepOptions so = train::train_step_options(recipe_);
  train::LossFn loss = train::model_loss(model, device_.type(), so.compute_dtype);
  if (score) {
    loss = [this, base = std::move(loss)](const at::Tensor& out, const at::Tensor& in,
                                          const at::Tensor& targets) {
      online_.score(out, targets);
      return base(out, in, targets);
    };
  }
  train::TrainStep step(pm_, *optimizer, {}, std::move(loss), nullptr, device_, so);
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
  if (score) std::tie(r.online_errors, r.online_instances) = online_.close(nullptr);
  at::Tensor trained = layout_.flatten(model);
  r.delta = trained - global;
  if (!keep_.empty()) local_ = std::move(trained);
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
  return learn(global, epochs * per_epoch, proximal_mu, false, [&](int64_t s) {
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
  return learn(global, steps, proximal_mu, true, [&](int64_t) {
    const int64_t b = std::min(left, batch);
    left -= b;
    return stream.next(b);
  });
}

std::optional<ClientDrift> client_drift(const train::Recipe& recipe,
                                        const train::LoadedData& data, uint64_t client_seed) {
  const train::FedSimSection& sim = recipe.federated.sim;
  if (sim.drift == "none") return std::nullopt;
  const std::string where = recipe.where("federated.sim.drift");
  STRATA_CHECK_T(ConfigError, data.task == train::Task::kClassification, where,
                 "federated.sim.drift needs a classification dataset; data.name=",
                 recipe.data.name, " is language modelling (set federated.sim.drift: none)");
  const bool rotate = sim.drift == "rotate";
  if (rotate) {
    STRATA_CHECK_T(ConfigError, data.shape.height == data.shape.width && data.shape.height > 1,
                   where, "federated.sim.drift: rotate turns square images; data.name=",
                   recipe.data.name, " gives inputs of ", data.shape.channels, " x ",
                   data.shape.height, " x ", data.shape.width, " (use permute)");
    STRATA_CHECK_T(ConfigError, sim.concepts <= 4, recipe.where("federated.sim.concepts"),
                   "rotate has 4 concepts (0, 90, 180, 270 degrees); federated.sim.concepts = ",
                   sim.concepts, " (set it to 4 or fewer)");
  }
  ClientDrift d;
  d.concepts = std::make_shared<const train::ConceptDrift>(
      rotate, data.shape.classes, sim.concepts,
      mix_seed(static_cast<uint64_t>(recipe.run.seed), 0x44524946));
  d.every = sim.drift_every;
  d.seed = client_seed;
  return d;
}

SampleStream::SampleStream(LocalData data, uint64_t seed, std::optional<ClientDrift> drift)
    : data_(std::move(data)), seed_(seed), drift_(std::move(drift)) {
  STRATA_CHECK_T(DataError, data_.size() > 0, "a client without samples has no stream");
}

int64_t SampleStream::concept_at(int64_t at) {
  if (!drift_) return 0;
  while (drift_points_.empty() || drift_points_.back() <= at) {
    const auto k = static_cast<uint64_t>(drift_points_.size());
    Rng r(mix_seed(drift_->seed, 0x47415053, k));
    const int64_t every = drift_->every;
    const int64_t gap = std::max<int64_t>(
        1, every / 2 + static_cast<int64_t>(r.below(static_cast<uint64_t>(every) + 1)));
    drift_points_.push_back((drift_points_.empty() ? 0 : drift_points_.back()) + gap);
  }
  const auto passed = std::upper_bound(drift_points_.begin(), drift_points_.end(), at) -
                      drift_points_.begin();
  return static_cast<int64_t>(passed) % drift_->concepts->concepts();
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
  LocalData out = rows(data_, at::cat(parts));
  if (drift_) {
    std::vector<int64_t> concept(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) concept[static_cast<size_t>(i)] = concept_at(consumed_ + i);
    drift_->concepts->apply(out.inputs, out.targets, concept);
  }
  consumed_ += n;
  return out;
}

}  // namespace strata::fed
