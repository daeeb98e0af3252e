#include "federated/server_options.h"

#include <torch/torch.h>

#include <cmath>

#include "core/error.h"
#include "federated/server.h"
#include "trainer/checkpoint.h"

namespace strata::fed {
namespace {

std::chrono::milliseconds millis(double seconds) {
  return std::chrono::milliseconds(static_cast<int64_t>(seconds * 1000));
}

// federated.privacy.mode=central as the strategy's DP options. An
// aggregation takes sync.clients_per_round updates (those after the K-th
// are refused) or async.buffer_size.
DpOptions dp_options(const train::Recipe& recipe) {
  const train::FederatedSection& f = recipe.federated;
  const train::FedPrivacySection& p = f.privacy;
  DpOptions d;
  d.enabled = true;
  d.clip_norm = p.clip_norm;
  d.noise_multiplier = p.noise_multiplier;
  d.expected_updates = f.mode == "sync" ? f.sync.clients_per_round : f.async.buffer_size;
  STRATA_CHECK_T(ConfigError, p.population >= d.expected_updates,
                 recipe.where("federated.privacy.population"),
                 "federated.privacy.mode=central accounts each aggregation of ",
                 d.expected_updates, " updates as a sample of federated.privacy.population "
                 "clients; set it to the number of clients that take part (at least ",
                 d.expected_updates, "), got ", p.population);
  d.sample_rate = static_cast<double>(d.expected_updates) / static_cast<double>(p.population);
  d.adaptive = p.adaptive_clip;
  d.target_quantile = p.target_quantile;
  d.clip_lr = p.clip_lr;
  d.target_epsilon = p.target_epsilon;
  d.delta = p.delta;
  return d;
}

// federated.secagg, refused where the server would need what it hides.
SecAggOptions secagg_options(const train::Recipe& recipe, int64_t selected) {
  const train::FederatedSection& f = recipe.federated;
  const train::FedSecAggSection& a = f.secagg;
  const std::string where = recipe.where("federated.secagg.enabled");
  STRATA_CHECK_T(ConfigError, f.mode == "sync", where,
                 "secure aggregation runs in sync rounds; async mode (FedBuff) takes updates one "
                 "at a time, which pairwise masks cannot hide: set federated.mode: sync, or "
                 "federated.secagg.enabled: false");
  const bool mean = f.strategy == "fedavg" || f.strategy == "fedprox" ||
                    f.strategy == "fedadam" || f.strategy == "fedyogi" ||
                    f.strategy == "fedadagrad";
  STRATA_CHECK_T(ConfigError, mean, where, "federated.strategy=", f.strategy,
                 " looks at each client's update, which secure aggregation hides from the server "
                 "(it learns only their sum); use an averaging strategy (fedavg, fedprox, "
                 "fedadam, fedyogi, fedadagrad) or federated.secagg.enabled: false");
  STRATA_CHECK_T(ConfigError,
                 f.median_norm_clip == 0 && f.bucket_size == 1 && f.nnm_fraction == 0, where,
                 "median_norm_clip, bucket_size and nnm_fraction work on individual updates, "
                 "which secure aggregation hides; set them off (0, 1, 0)");
  STRATA_CHECK_T(ConfigError, f.server.norm_bound == 0, where,
                 "federated.server.norm_bound needs each update's norm, which secure aggregation "
                 "hides (every value is clipped to federated.secagg.clip_range instead); set it "
                 "to 0");
  STRATA_CHECK_T(ConfigError, !(f.privacy.mode == "central" && f.privacy.adaptive_clip), where,
                 "adaptive clipping counts the updates within the clip norm, which secure "
                 "aggregation hides; set federated.privacy.adaptive_clip: false");
  SecAggOptions o;
  o.enabled = true;
  o.settings.threshold = static_cast<int>(a.threshold);
  o.settings.neighbours = static_cast<int>(a.neighbours);
  o.settings.clip_range = a.clip_range;
  o.settings.quant_bits = static_cast<int>(a.quant_bits);
  // Central DP sums clipped updates with equal weights.
  o.max_samples = f.privacy.mode == "central" ? 0 : a.max_samples;
  o.stage_timeout = millis(a.stage_timeout_s);
  secagg::Settings check = o.settings;
  check.values = 1;
  if (check.threshold == 0) check.threshold = secagg::auto_threshold(check, selected);
  try {
    secagg::check_settings(check, selected);
  } catch (const ConfigError& e) {
    throw ConfigError(str(recipe.where("federated.secagg"), e.what(), " (a round selects ",
                          selected, " clients)"));
  }
  return o;
}

}  // namespace

ServerOptions server_options(const train::Recipe& recipe) {
  const train::FederatedSection& f = recipe.federated;
  ServerOptions o;
  o.run_dir = recipe.run_dir();
  o.model_name = recipe.model.name;
  o.seed = static_cast<uint64_t>(recipe.run.seed);
  o.recipe_yaml = train::to_yaml(recipe);
  o.tensorboard = recipe.metrics.tensorboard;
  o.mode = f.mode;
  o.sync.rounds = f.sync.rounds;
  o.sync.clients_per_round = f.sync.clients_per_round;
  o.sync.over_selection = f.sync.over_selection;
  o.sync.min_updates = f.sync.min_updates;
  o.sync.round_timeout = millis(f.sync.round_timeout_s);
  o.sync.max_round_extensions = f.sync.max_round_extensions;
  o.async.versions = f.async.versions;
  o.async.buffer_size = f.async.buffer_size;
  o.async.staleness_exponent = f.async.staleness_exponent;
  o.async.max_staleness = f.async.max_staleness;
  StrategyOptions& s = o.strategy;
  s.name = f.strategy;
  s.server_optimizer = f.server_optimizer;
  s.server_lr = f.server_lr;
  s.server_momentum = f.server_momentum;
  s.beta1 = f.beta1;
  s.beta2 = f.beta2;
  s.tau = f.tau;
  s.proximal_mu = f.proximal_mu;
  s.trim_fraction = f.trim_fraction;
  s.byzantine = static_cast<int>(f.byzantine);
  s.multi_krum_keep = static_cast<int>(f.multi_krum_keep);
  s.median_norm_clip = f.median_norm_clip;
  s.bucket_size = static_cast<int>(f.bucket_size);
  s.nnm_fraction = f.nnm_fraction;
  if (f.privacy.mode == "central") s.dp = dp_options(recipe);
  STRATA_CHECK_T(ConfigError, !f.privacy.client_clip || f.privacy.mode == "central",
                 recipe.where("federated.privacy.client_clip"),
                 "federated.privacy.client_clip is a setting of mode central (the server tells "
                 "clients to clip, and refuses updates above clip_norm); mode is ",
                 f.privacy.mode, ": set client_clip: false",
                 f.privacy.mode == "local" ? " (local DP clients clip anyway)" : "");
  if (f.privacy.mode == "central" && f.privacy.client_clip) {
    STRATA_CHECK_T(ConfigError, !f.privacy.adaptive_clip,
                   recipe.where("federated.privacy.client_clip"),
                   "federated.privacy.client_clip cannot be combined with adaptive_clip: "
                   "adaptive clipping counts the updates whose norm is within the clip norm, "
                   "which clients that clip themselves hide (every update is within it); set "
                   "one of them to false");
    o.clients.clip_norm = f.privacy.clip_norm;
    // Encodings round: fp16 moves a norm by at most 2^-11 relative.
    o.validation.refuse_above = f.privacy.clip_norm * (1 + kClientClipTolerance);
  }
  if (f.secagg.enabled) {
    o.secagg = secagg_options(recipe, selected_per_round(o.sync));
    // Central DP: clients clip, the server noises the unmasked sum.
    if (f.privacy.mode == "central") o.clients.clip_norm = f.privacy.clip_norm;
  }
  o.validation.norm_bound = f.server.norm_bound;
  o.validation.clip_to_bound = f.server.clip;
  o.validation.max_num_samples = f.server.max_num_samples;
  o.clients.local_epochs = f.sync.local_epochs;
  o.clients.local_batch_size = recipe.data.batch_size;
  o.clients.learning_rate = recipe.optimizer.lr;
  o.service = f.server;
  o.eval_every = f.server.eval_every;
  o.eval_batch_size = recipe.data.eval_batch_size;
  o.progress_every = millis(f.server.progress_every_s);
  return o;
}

EvalData eval_data(const train::LoadedData& data) {
  return EvalData{data.shape,      data.eval_inputs, data.eval_targets,
                  data.eval_split, data.pixel_mean,  data.pixel_std};
}

EvalData load_eval_data(const train::Recipe& recipe, const train::Registries& registries) {
  return eval_data(registries.datasets.get(recipe.data.name, recipe.where("data.name"), "data.name")
                       .load(recipe, 0, 1));
}

std::shared_ptr<train::Model> build_server_model(const train::Recipe& recipe,
                                                 const train::Registries& registries,
                                                 const train::InputShape& input) {
  torch::manual_seed(recipe.run.seed);
  auto model = registries.models.get(recipe.model.name, recipe.where("model.name"), "model.name")
                   .build(recipe.model, input, train::ModelPart{});
  // train.init: the federation starts from a trained model (version 1).
  if (!recipe.train.init.empty()) train::load_init_weights(*model, recipe);
  return model;
}

std::unique_ptr<FedServer> make_fed_server(const train::Recipe& recipe,
                                           const train::Registries& registries, EvalData eval,
                                           std::shared_ptr<ServerClock> clock) {
  auto model = build_server_model(recipe, registries, eval.shape);
  return std::make_unique<FedServer>(server_options(recipe), std::move(model), std::move(eval),
                                     std::move(clock));
}

std::unique_ptr<FedServer> make_fed_server(const train::Recipe& recipe,
                                           const train::Registries& registries,
                                           std::shared_ptr<ServerClock> clock) {
  return make_fed_server(recipe, registries, load_eval_data(recipe, registries), std::move(clock));
}

}  // namespace strata::fed
