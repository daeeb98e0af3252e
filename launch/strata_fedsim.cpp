// strata-fedsim: a federated server and N edge clients over real gRPC on
// loopback, with the training set partitioned over the clients.
//
//   strata-fedsim RECIPE.yaml [section.key=value ...] [--print-recipe]
//
// Exit codes: 0 success, 2 usage/recipe error, 1 runtime failure.
#include <iostream>

#include "core/strings.h"
#include "federated/sim.h"
#include "trainer/cli.h"

namespace st = strata::train;

int main(int argc, char** argv) {
  return st::run_main("strata-fedsim", [&] {
    auto app = st::make_app("strata-fedsim",
                            "Runs a federated server and federated.sim.clients edge clients over "
                            "loopback gRPC, the training set partitioned over the clients.");
    st::RecipeArgs args;
    args.example = "strata-fedsim recipes/fed_fmnist_sync.yaml";
    st::add_recipe_args(*app, args);
    if (!st::parse_args(*app, argc, argv)) return 0;
    const auto recipe = st::recipe_or_print(args);
    if (!recipe) return 0;
    const auto r = strata::fed::run_fedsim(*recipe, st::builtin_registries());
    std::cout << "final test accuracy " << strata::format_metric(r.test_accuracy) << " after "
              << r.versions << " aggregations (" << r.accepted << " updates accepted, "
              << r.refused << " refused), " << strata::format_duration(r.wall_s)
              << "; run directory " << r.run_dir << "\n";
    if (recipe->federated.privacy.mode == "local") {
      std::cout << "local differential privacy: clients spent epsilon up to "
                << strata::format_metric(r.max_client_epsilon) << " (delta "
                << strata::format_double(recipe->federated.privacy.delta)
                << "; each client's in clients.json)\n";
    }
    if (r.online_instances > 0) {
      std::cout << "clients' online (prequential) error " << strata::format_metric(r.online_error)
                << " (mean over " << r.client_online_error.size() << " clients, "
                << r.online_instances << " instances)\n";
    }
    return 0;
  });
}
