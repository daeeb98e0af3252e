// The federated vocabulary: the names a recipe may give for the mode, the
// strategy and the server optimizer, and the bounds of the strategy's
// numeric options. Written once here; the recipe schema (trainer/recipe.h)
// and the strategy (make_strategy) both read it, so the two cannot
// disagree. Header-only and without dependencies, so the recipe can use it
// without linking the federated libraries.
#pragma once

#include <string>
#include <vector>

namespace strata::fed {

// federated.mode: sync rounds or the async buffer (trigger.h).
inline const std::vector<std::string>& mode_names() {
  static const std::vector<std::string> names{"sync", "async"};
  return names;
}

// federated.strategy (strategy.h says what each is).
inline const std::vector<std::string>& strategy_names() {
  static const std::vector<std::string> names{
      "fedavg", "fedprox", "fedadam", "fedyogi", "fedadagrad",
      "median", "trimmed_mean", "krum", "multi_krum"};
  return names;
}

// federated.server_optimizer: auto keeps the strategy's own.
inline const std::vector<std::string>& server_optimizer_names() {
  static const std::vector<std::string> names{"auto", "sgd", "adam", "yogi", "adagrad"};
  return names;
}

// Decay rates (server_momentum, beta1, beta2) are in [0, kMaxDecay].
inline constexpr double kMaxDecay = 0.999999;
// Shares of a batch a robust rule drops or mixes away (trim_fraction,
// nnm_fraction) are in [0, kMaxRobustFraction]: below one half, so that
// something is left.
inline constexpr double kMaxRobustFraction = 0.499;

}  // namespace strata::fed
