// Splitting a training set over simulated clients.
#pragma once

#include <cstdint>
#include <vector>

#include "trainer/data/datasets.h"
#include "trainer/recipe.h"
#include "trainer/trainer.h"

namespace strata::fed {

// Sample indices per client. IID: a seeded shuffle dealt round-robin, so
// sizes differ by at most one.
std::vector<std::vector<int64_t>> iid_partition(int64_t num_samples, int64_t clients,
                                                uint64_t seed);

// Label skew after Hsu et al. 2019: for every class, client shares are drawn
// from Dirichlet(alpha) and the class's samples split accordingly. Redraws
// (up to 100 times) until every client holds at least `min_per_client`
// samples; ConfigError when that is impossible.
std::vector<std::vector<int64_t>> dirichlet_partition(const std::vector<int64_t>& labels,
                                                      int64_t classes, int64_t clients,
                                                      double alpha, uint64_t seed,
                                                      int64_t min_per_client = 10);

// The split a recipe's federated.sim section describes (partition,
// clients, dirichlet_alpha) of `data`'s training samples, seeded by `seed`:
// what strata-fedsim's threads and N strata-edge processes with --shard
// 0..N-1 both use. Dirichlet needs class labels: ConfigError for a
// language-modelling dataset.
std::vector<std::vector<int64_t>> partition_clients(const train::LoadedData& data,
                                                    const train::FedSimSection& sim,
                                                    uint64_t seed);

// The recipe's dataset (data.name, through the data seam) and its training
// samples' split over the simulated clients.
struct ClientShards {
  train::LoadedData data;
  std::vector<std::vector<int64_t>> shards;  // sample indices, per client
};
ClientShards load_client_shards(const train::Recipe& recipe, const train::Registries& registries);

}  // namespace strata::fed
