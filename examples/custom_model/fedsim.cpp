// A federated simulation of this project's model: Strata's server and edge
// clients (real gRPC on loopback), with this project's registries.
//   custom-fedsim RECIPE.yaml [section.key=value ...]
#include <iostream>

#include "federated/sim.h"
#include "parts.h"
#include "trainer/cli.h"

int main(int argc, char** argv) {
  return strata::train::run_main("custom-fedsim", [&] {
    auto app = strata::train::make_app("custom-fedsim",
                                       "A federated run of the custom model over loopback gRPC.");
    strata::train::RecipeArgs args;
    args.example = "custom-fedsim examples/custom_model/fed.yaml";
    strata::train::add_recipe_args(*app, args);
    if (!strata::train::parse_args(*app, argc, argv)) return 0;
    const auto recipe = strata::train::recipe_or_print(args);
    if (!recipe) return 0;
    strata::train::Registries registries = strata::train::builtin_registries();
    custom::register_parts(registries);
    const strata::fed::SimResult r = strata::fed::run_fedsim(*recipe, registries);
    std::cout << "final test accuracy " << r.test_accuracy << " after " << r.versions
              << " versions\n";
    return 0;
  });
}
