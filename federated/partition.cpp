#include "federated/partition.h"

#include <algorithm>
#include <numeric>
#include <random>

#include "core/error.h"
#include "core/strings.h"

namespace strata::fed {

std::vector<std::vector<int64_t>> iid_partition(int64_t n, int64_t clients, uint64_t seed) {
  STRATA_CHECK_T(ConfigError, clients >= 1 && clients <= n, "cannot split ", n,
                 " samples over ", clients, " clients");
  std::vector<int64_t> order(n);
  std::iota(order.begin(), order.end(), 0);
  std::mt19937_64 rng(seed);
  std::shuffle(order.begin(), order.end(), rng);
  std::vector<std::vector<int64_t>> out(clients);
  for (int64_t i = 0; i < n; ++i) out[i % clients].push_back(order[i]);
  return out;
}

std::vector<std::vector<int64_t>> dirichlet_partition(const std::vector<int64_t>& labels,
                                                      int64_t classes, int64_t clients,
                                                      double alpha, uint64_t seed,
                                                      int64_t min_per_client) {
  const int64_t n = static_cast<int64_t>(labels.size());
  STRATA_CHECK_T(ConfigError, clients >= 1 && clients * min_per_client <= n, "cannot give ",
                 clients, " clients at least ", min_per_client, " of ", n, " samples each");
  STRATA_CHECK_T(ConfigError, alpha > 0, "dirichlet alpha must be > 0, got ", alpha);
  std::vector<std::vector<int64_t>> by_class(classes);
  for (int64_t i = 0; i < n; ++i) {
    STRATA_CHECK_T(DataError, labels[i] >= 0 && labels[i] < classes, "sample ", i, " has class ",
                   labels[i], ", outside [0, ", classes, ")");
    by_class[labels[i]].push_back(i);
  }
  std::mt19937_64 rng(seed);
  for (int attempt = 0; attempt < 100; ++attempt) {
    std::vector<std::vector<int64_t>> out(clients);
    for (auto idx : by_class) {
      std::shuffle(idx.begin(), idx.end(), rng);
      // Dirichlet(alpha) as normalised Gamma(alpha, 1) draws.
      std::gamma_distribution<double> gamma(alpha, 1.0);
      std::vector<double> share(clients);
      double total = 0;
      for (auto& s : share) total += (s = gamma(rng));
      // Cut points of the class's samples at the cumulative shares.
      double cum = 0;
      int64_t start = 0;
      for (int64_t c = 0; c < clients; ++c) {
        cum += share[c] / total;
        const int64_t end = c + 1 == clients
                                ? static_cast<int64_t>(idx.size())
                                : std::min<int64_t>(idx.size(), std::llround(cum * idx.size()));
        for (int64_t i = start; i < end; ++i) out[c].push_back(idx[i]);
        start = std::max(start, end);
      }
    }
    const bool ok = std::all_of(out.begin(), out.end(), [&](const auto& v) {
      return static_cast<int64_t>(v.size()) >= min_per_client;
    });
    if (ok) {
      for (auto& v : out) std::shuffle(v.begin(), v.end(), rng);
      return out;
    }
  }
  throw ConfigError(str("no Dirichlet(", alpha, ") split of ", n, " samples over ", clients,
                        " clients gave each at least ", min_per_client,
                        " samples in 100 draws; raise dirichlet_alpha or use fewer clients"));
}

std::vector<std::vector<int64_t>> partition_clients(const train::LoadedData& data,
                                                    const train::FedSimSection& sim,
                                                    uint64_t seed) {
  if (sim.partition == "iid") return iid_partition(data.train_samples, sim.clients, seed);
  STRATA_CHECK_T(ConfigError, !data.train_labels.empty(), "federated.sim.partition=",
                 sim.partition, " skews the classes clients see, but this dataset has no "
                 "classes (", train::task_name(data.task), "); use federated.sim.partition=iid");
  return dirichlet_partition(data.train_labels, data.shape.classes, sim.clients,
                             sim.dirichlet_alpha, seed);
}

ClientShards load_client_shards(const train::Recipe& recipe, const train::Registries& registries) {
  ClientShards out;
  out.data = registries.datasets.get(recipe.data.name, recipe.where("data.name"), "data.name")
                 .load(recipe, 0, 1);
  STRATA_CHECK_T(ConfigError, static_cast<bool>(out.data.train_rows), "data.name=",
                 recipe.data.name, " cannot hand clients their samples (its LoadedData has no "
                 "train_rows); federated clients need a dataset that does");
  out.shards = partition_clients(out.data, recipe.federated.sim,
                                 static_cast<uint64_t>(recipe.run.seed));
  return out;
}

}  // namespace strata::fed
