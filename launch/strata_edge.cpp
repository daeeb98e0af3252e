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
#include "core/logging.h"
#include "core/random.h"
#include "core/strings.h"
#include "federated/edge.h"
#include "federated/learner.h"
#include "federated/partition.h"
#include "trainer/cli.h"
#include "trainer/trainer.h"

namespace st = strata::train;
namespace sf = strata::fed;

namespace {

// The token in `path`: the file strata-fedserver enroll --out writes (the
// token alone), or a line "CLIENT_ID TOKEN" of enroll's standard output.
std::string read_token(const std::string& path, const std::string& client) {
  const std::vector<std::string> words = [&] {
    std::vector<std::string> w;
    for (const auto& part : strata::split(strata::read_file(path), '\n')) {
      for (const auto& x : strata::split(part, ' ')) {
        if (!x.empty() && x != "\r") w.push_back(x);
      }
    }
    return w;
  }();
  if (words.size() == 1) return words[0];
  if (words.size() == 2 && words[0] == client) return words[1];
  if (words.size() == 2) {
    throw strata::UsageError(strata::str("--token-file ", path, " holds the token of client ",
                                         strata::quote(words[0]), ", not of --client ", client));
  }
  throw strata::UsageError(strata::str("--token-file ", path, " does not hold one token (write it "
                                       "with strata-fedserver enroll RECIPE ID --out DIR)"));
}

}  // namespace

int main(int argc, char** argv) {
  return st::run_main("strata-edge", [&] {
    auto app = st::make_app(
        "strata-edge",
        "One edge client: learns from its shard of the training set (part --shard of the "
        "recipe's federated.sim partition) and submits updates to a federated server until it "
        "says training has finished.");
    st::RecipeArgs args;
    args.example =
        "strata-edge recipes/fed_fmnist_sync.yaml --server 127.0.0.1:7070 --client edge-0 "
        "--token-file tokens/edge-0.token";
    st::add_recipe_args(*app, args);
    std::string server, client, token_file;
    int64_t shard = 0;
    app->add_option("--server", server, "the server")->type_name("HOST:PORT");
    app->add_option("--client", client, "this client's id, as enrolled")->type_name("ID");
    app->add_option("--token-file", token_file,
                    "the client's token (strata-fedserver enroll RECIPE ID --out DIR writes "
                    "DIR/ID.token)")
        ->type_name("FILE")
        ->check(CLI::ExistingFile);
    app->add_option("--shard", shard, "which part of federated.sim's partition to learn from, "
                                      "0 .. federated.sim.clients - 1")
        ->type_name("I");
    if (!st::parse_args(*app, argc, argv)) return 0;
    const auto loaded = st::recipe_or_print(args);
    if (!loaded) return 0;
    const st::Recipe& recipe = *loaded;
    strata::fed::check_learner_recipe(recipe);
    if (server.empty() || client.empty() || token_file.empty()) {
      throw strata::UsageError("--server, --client and --token-file are required (see "
                               "strata-edge --help)");
    }
    const auto& sim = recipe.federated.sim;
    if (shard < 0 || shard >= sim.clients) {
      throw strata::UsageError(strata::str("--shard ", shard, " is outside [0, ", sim.clients,
                                           ") (federated.sim.clients)"));
    }
    sf::EdgeClientOptions eo;
    eo.address = server;
    eo.client_id = client;
    eo.token = read_token(token_file, client);
    eo.tls_ca = recipe.federated.server.tls_ca;
    eo.max_retries = static_cast<int>(recipe.federated.client.max_retries);
    at::set_num_threads(recipe.run.threads > 0 ? static_cast<int>(recipe.run.threads) : 1);
    const uint64_t seed = static_cast<uint64_t>(recipe.run.seed);
    const st::Registries registries = st::builtin_registries();
    const sf::ClientShards shards = sf::load_client_shards(recipe, registries);
    const std::vector<int64_t>& mine = shards.shards[static_cast<size_t>(shard)];
    sf::EdgeClient edge(eo);
    auto model = registries.models.get(recipe.model.name, recipe.where("model.name"),
                                       "model.name")
                     .build(recipe.model, shards.data.shape, st::ModelPart{});
    sf::EdgeRunOptions ro;
    ro.recipe = &recipe;
    ro.registries = &registries;
    ro.seed = strata::mix_seed(seed, static_cast<uint64_t>(shard), 3);
    ro.name = client;
    ro.report = true;
    strata::log_info(client, ": shard ", shard, " of ", sim.clients, " (", mine.size(),
                     " samples); server ", server, eo.tls_ca.empty() ? " (plaintext)" : " (TLS)");
    const auto stats = sf::run_edge(edge, model, sf::local_data(shards.data, mine), ro);
    std::cout << client << ": " << stats.accepted << " updates accepted, " << stats.refused
              << " refused, " << stats.samples << " samples\n";
    return 0;
  });
}
