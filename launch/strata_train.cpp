// strata-train: train and evaluate the run a YAML recipe describes.
//
//   strata-train RECIPE.yaml [section.key=value ...] [--print-recipe]
//
// Exit codes: 0 success, 2 usage/recipe error, 1 runtime failure.
#include <iostream>

#include "core/strings.h"
#include "trainer/cli.h"
#include "trainer/recipe.h"
#include "trainer/trainer.h"

namespace st = strata::train;

int main(int argc, char** argv) {
  return st::run_main("strata-train", [&] {
    const st::CommandLine cl = st::parse_command_line(argc, argv);
    if (cl.help) {
      std::cout << st::usage("strata-train");
      return 0;
    }
    if (cl.print_schema) {
      std::cout << st::schema_markdown();
      return 0;
    }
    const st::Recipe recipe = st::load_recipe(cl.recipe, cl.overrides);
    if (cl.print_recipe) {
      std::cout << st::to_yaml(recipe);
      return 0;
    }
    const st::Registries registries = st::builtin_registries();
    st::Trainer trainer(recipe, registries);
    const st::TrainResult r = trainer.run();
    std::cout << "final test accuracy " << strata::format_double(r.test_accuracy)
              << " (loss " << strata::format_double(r.test_loss) << ") after "
              << r.steps << " steps, " << strata::format_duration(r.wall_s)
              << "; run directory " << r.run_dir << "\n";
    return 0;
  });
}
