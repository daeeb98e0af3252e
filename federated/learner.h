// What an edge client computes: an update from the global model and its
// local data, by the one train::TrainStep strata-train runs (so every
// registered model, optimizer, precision and clipping works on the edge,
// and FedProx is the step's proximal term). No networking here (see
// client.h).
//
// Shape legend: N samples, C channels, H height, W width, T tokens.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <vector>

#include "federated/layout.h"
#include "trainer/data/datasets.h"
#include "trainer/data/stream.h"
#include "trainer/prequential.h"
#include "trainer/parallelize.h"
#include "trainer/qat.h"
#include "trainer/trainer.h"

namespace strata::fed {

// A client's samples as tensors: inputs (normalised images [N, C, H, W],
// or token windows [N, T]) and targets (labels [N], or next tokens [N, T]).
struct LocalData {
  at::Tensor inputs;
  at::Tensor targets;
  int64_t size() const { return targets.defined() ? targets.size(0) : 0; }
};
// The training samples at `indices` of a dataset (the data seam).
LocalData local_data(const train::LoadedData& data, const std::vector<int64_t>& indices);

struct LocalResult {
  at::Tensor delta;         // flat float32: trained state - global state
  int64_t num_samples = 0;  // samples learned from
  double mean_loss = 0.0;   // over the mini-batches, before each step
  // Async (learn_online): the update's prequential counts -- each
  // mini-batch scored by the forward it was trained with, so by the model
  // before it learned from it (trainer/prequential.h).
  int64_t online_instances = 0;
  double online_errors = 0.0;
};

// The layout slots of federated.client.keep_local's names; ConfigError
// naming the model's tensors for a name it does not have.
std::vector<TensorSlot> keep_local_slots(const train::Recipe& recipe, const TensorLayout& layout);

class SampleStream;

// One client's learning: its model, the recipe's optimizer (from the
// registry, fresh for every update: optimizer state starts from zero) and
// train.precision / clip_grad_norm / grad_accum, at optimizer.lr. With
// grad_accum = k an optimizer step takes k mini-batches; the last
// mini-batches of an update that do not fill a step are not learned from.
// With train.qat the updates are trained quantization-aware (trainer/qat.h):
// the learner keeps its observers across updates, and the schedule's steps
// are the client's optimizer steps so far; the server averages float
// weights, and the federated model converts to int8 by calibration
// (strata-export --quantize static). ConfigError for a recipe setting the
// learner cannot honour (train.prune).
void check_learner_recipe(const train::Recipe& recipe);

class Learner {
 public:
  // `recipe` and `registries` outlive the learner.
  Learner(const train::Recipe& recipe, const train::Registries& registries,
          std::shared_ptr<train::Model> model);
  ~Learner();

  train::Model& model() { return *pm_.model; }
  const TensorLayout& layout() const { return layout_; }

  // Sync mode: `epochs` passes over `data` (reshuffled per epoch from seed
  // and `round`) in mini-batches of data.batch_size, from `global`.
  // `proximal_mu` > 0: FedProx.
  LocalResult train_epochs(const at::Tensor& global, const LocalData& data, int64_t epochs,
                           int64_t round, uint64_t seed, double proximal_mu);
  // Async mode: online learning, one step per mini-batch, a single pass
  // over the next `samples` samples of the stream, from `global`.
  LocalResult learn_online(const at::Tensor& global, SampleStream& stream, int64_t samples,
                           double proximal_mu);

 private:
  LocalResult learn(const at::Tensor& global, int64_t steps, double proximal_mu, bool score,
                    const std::function<LocalData(int64_t)>& next_batch);

  const train::Recipe& recipe_;
  const train::Registries& registries_;
  train::ParallelModel pm_;
  TensorLayout layout_;
  at::Device device_{at::kCPU};
  // train.qat: the client's QAT graph and its optimizer steps so far.
  std::unique_ptr<train::QatGraph> qat_;
  int64_t qat_steps_ = 0;
  // federated.client.keep_local: the slots, and the client's state after
  // its last update (undefined before the first).
  std::vector<TensorSlot> keep_;
  at::Tensor local_;
  train::Prequential online_{at::kCPU};  // async: every instance learned online
};

// A simulated client's concept drift (federated.sim.drift): the concepts,
// shared by all clients (seeded by run.seed), cycle 0, 1, ..,
// concepts - 1, 0, ..; each client moves to the next one at its own
// points, the gaps drawn uniformly from [every / 2, 3 every / 2] by the
// client's seed.
struct ClientDrift {
  std::shared_ptr<const train::ConceptDrift> concepts;
  int64_t every = 0;
  uint64_t seed = 0;
};
// The drift the recipe's federated.sim section gives the client seeded by
// `client_seed` of `data`'s training samples (nullopt: none). ConfigError
// when the data cannot drift that way (language modelling; rotate of
// images that are not square, or more than 4 concepts).
std::optional<ClientDrift> client_drift(const train::Recipe& recipe,
                                        const train::LoadedData& data, uint64_t client_seed);

// An endless stream of a client's samples, as online data arrives: the
// local data in a fresh seeded order on every pass, drifting at the
// client's own points when `drift` is given.
class SampleStream {
 public:
  SampleStream(LocalData data, uint64_t seed, std::optional<ClientDrift> drift = std::nullopt);
  // The next `n` samples (n <= size()).
  LocalData next(int64_t n);
  int64_t consumed() const { return consumed_; }
  // The concept of the instance at stream position `at` (0 without drift).
  int64_t concept_at(int64_t at);

 private:
  LocalData data_;
  uint64_t seed_;
  std::optional<ClientDrift> drift_;
  std::vector<int64_t> drift_points_;  // increasing, drawn as the stream goes
  at::Tensor order_;
  int64_t pass_ = -1;
  int64_t pos_ = 0;
  int64_t consumed_ = 0;
};


}  // namespace strata::fed
