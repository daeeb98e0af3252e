// What a FedServer runs with, and the one place a recipe becomes it.
//
// Note [Server options]: the federated core (FedServer, its trigger, its
// strategy, the service) takes these typed options, never a train::Recipe;
// server_options() reads the recipe's federated section once, in the
// launchers (strata-fedserver, strata-fedsim, tests), and make_fed_server()
// adds the model and the evaluation data from the registries.
#pragma once

#include <ATen/ATen.h>

#include <chrono>
#include <memory>
#include <string>

#include "federated/clock.h"
#include "federated/secagg.h"
#include "federated/strategy.h"
#include "federated/trigger.h"
#include "federated/validator.h"
#include "trainer/data/datasets.h"
#include "trainer/models/models.h"
#include "trainer/recipe.h"
#include "trainer/trainer.h"

namespace strata::fed {

// The local training a server asks of its clients (sent with the model).
struct ClientPlan {
  int64_t local_epochs = 1;
  int64_t local_batch_size = 32;
  double learning_rate = 0.01;
  // Central DP with client-side clipping: the L2 norm clients clip their
  // updates to (0: they do not).
  double clip_norm = 0.0;
};

// The service's address, TLS and ingest limits: the recipe's
// federated.server section is a plain struct of exactly these, so the
// service takes it as it is.
using ServiceOptions = train::FedServerSection;

// Secure aggregation (federated.secagg): the settings every round starts
// from (values and, when 0, the threshold are the round's).
struct SecAggOptions {
  bool enabled = false;
  secagg::Settings settings;
  // The weight cap clients scale their update by (0: unweighted, with DP).
  int64_t max_samples = 0;
  std::chrono::milliseconds stage_timeout{30000};
};

struct ServerOptions {
  std::string run_dir;
  std::string model_name;   // in ModelInfo and messages
  uint64_t seed = 0;        // client selection
  std::string recipe_yaml;  // written to run_dir/recipe.yaml ("": not written)
  std::string mode = "sync";  // mode_names(): which trigger
  SyncRoundOptions sync;
  AsyncBufferOptions async;
  StrategyOptions strategy;     // statistics_offset is the server's (from the model)
  ValidationPolicy validation;  // max_staleness is the trigger's
  ClientPlan clients;
  SecAggOptions secagg;
  ServiceOptions service;
  int64_t eval_every = 1;        // evaluate every this many versions (and the last)
  int64_t eval_batch_size = 256;
  std::chrono::milliseconds progress_every{10000};  // 0: no progress lines
  bool tensorboard = false;  // metrics.tensorboard: version records as scalars too
};

// What the server evaluates every version on, given to it by its launcher
// (the recipe's dataset through the data seam; tests may give a small set
// of their own).
struct EvalData {
  train::InputShape shape;     // the model is built for it
  at::Tensor inputs, targets;  // the evaluation split (CPU)
  std::string split = "test";
  double pixel_mean = 0.0, pixel_std = 0.0;  // images: LoadedData's normalisation (a published package's)
};

// The recipe's federated section (and the run, model, data and optimizer
// keys a server needs) as options.
ServerOptions server_options(const train::Recipe& recipe);
// The evaluation split a dataset loaded (one rank of one: all of it).
EvalData eval_data(const train::LoadedData& data);
// The whole evaluation split of the recipe's dataset (data.name).
EvalData load_eval_data(const train::Recipe& recipe, const train::Registries& registries);
// The recipe's model (model.name from the registry, seeded by run.seed),
// built for `input`; with train.init, holding that model.pt's weights (a
// federation that starts from a trained model). ConfigError for a missing
// file or another model's weights.
std::shared_ptr<train::Model> build_server_model(const train::Recipe& recipe,
                                                 const train::Registries& registries,
                                                 const train::InputShape& input);

class FedServer;
// A FedServer for the recipe: its options, its model (built for
// eval.shape), `eval` -- by default its dataset's evaluation split -- and
// `clock`.
std::unique_ptr<FedServer> make_fed_server(const train::Recipe& recipe,
                                           const train::Registries& registries, EvalData eval,
                                           std::shared_ptr<ServerClock> clock = steady_clock());
std::unique_ptr<FedServer> make_fed_server(const train::Recipe& recipe,
                                           const train::Registries& registries,
                                           std::shared_ptr<ServerClock> clock = steady_clock());

}  // namespace strata::fed
