// strata-edge: one edge client learning from its shard of the training set.
//
//   strata-edge RECIPE.yaml --server HOST:PORT --client ID --token-file FILE
//               [--shard I] [section.key=value ...]
//
// The shard is part I of the recipe's federated.sim partition (clients,
// partition, dirichlet_alpha, run.seed), so N processes with I = 0..N-1
// split the data like strata-fedsim's N threads. TLS: federated.server.tls_ca.
// Exit codes: 0 success, 2 usage/recipe error, 1 runtime failure.
#include <ATen/Parallel.h>

#include <iostream>
#include <vector>

#include "core/error.h"
#include "core/fs.h"
#include "core/random.h"
#include "core/strings.h"
#include "federated/edge.h"
#include "federated/partition.h"
#include "trainer/cli.h"
#include "trainer/data/dataset.h"
#include "trainer/trainer.h"

namespace st = strata::train;
namespace sf = strata::fed;

int main(int argc, char** argv) {
  return st::run_main("strata-edge", [&] {
    // Our flags first; the rest is the usual RECIPE [overrides].
    std::string server, client, token_file;
    int64_t shard = 0;
    std::vector<char*> rest{argv[0]};
    for (int i = 1; i < argc; ++i) {
      const std::string a = argv[i];
      auto value = [&]() -> std::string {
        if (i + 1 >= argc) throw strata::UsageError(a + " needs a value");
        return argv[++i];
      };
      if (a == "--server") server = value();
      else if (a == "--client") client = value();
      else if (a == "--token-file") token_file = value();
      else if (a == "--shard") shard = std::stoll(value());
      else rest.push_back(argv[i]);
    }
    const st::CommandLine cl = st::parse_command_line(static_cast<int>(rest.size()), rest.data());
    if (cl.help) {
      std::cout << "usage: strata-edge RECIPE.yaml --server HOST:PORT --client ID "
                   "--token-file FILE [--shard I] [section.key=value ...]\n";
      return 0;
    }
    if (server.empty() || client.empty() || token_file.empty()) {
      throw strata::UsageError("--server, --client and --token-file are required");
    }
    const st::Recipe recipe = st::load_recipe(cl.recipe, cl.overrides);
    const auto& sim = recipe.federated.sim;
    if (shard < 0 || shard >= sim.clients) {
      throw strata::UsageError(strata::str("--shard ", shard, " is outside [0, ",
                                           sim.clients, ") (federated.sim.clients)"));
    }
    at::set_num_threads(recipe.run.threads > 0 ? static_cast<int>(recipe.run.threads) : 1);
    const st::ImageDataset train_set =
        st::load_fashion_mnist(recipe.data.root, st::Split::kTrain, recipe.data.train_subset);
    const uint64_t seed = static_cast<uint64_t>(recipe.run.seed);
    const auto parts = sf::partition_clients(train_set, sim, seed);
    sf::EdgeClientOptions eo;
    eo.address = server;
    eo.client_id = client;
    std::string token = strata::read_file(token_file);
    while (!token.empty() && (token.back() == '\n' || token.back() == ' ')) token.pop_back();
    eo.token = token;
    eo.tls_ca = recipe.federated.server.tls_ca;
    eo.max_retries = static_cast<int>(recipe.federated.client.max_retries);
    sf::EdgeClient edge(eo);
    const st::Registries registries = st::builtin_registries();
    const st::InputShape shape{train_set.channels, train_set.height, train_set.width,
                               train_set.classes};
    auto model = registries.models.get(recipe.model.name, recipe.where("model.name"),
                                       "model.name")(recipe.model, shape);
    sf::EdgeRunOptions ro;
    ro.recipe = &recipe;
    ro.seed = strata::mix_seed(seed, static_cast<uint64_t>(shard), 3);
    const auto stats = sf::run_edge(edge, *model, sf::local_data(train_set, parts[shard]), ro);
    std::cout << client << ": " << stats.accepted << " updates accepted, " << stats.refused
              << " refused, " << stats.samples << " samples\n";
    return 0;
  });
}
