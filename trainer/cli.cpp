#include "trainer/cli.h"

#include <c10/util/Exception.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "core/error.h"

namespace strata::train {

CommandLine parse_command_line(int argc, char** argv) {
  CommandLine cl;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--print-recipe") {
      cl.print_recipe = true;
    } else if (a == "--print-schema") {
      cl.print_schema = true;
    } else if (a == "-h" || a == "--help") {
      cl.help = true;
    } else if (a.rfind("-", 0) == 0) {
      throw UsageError(str("unknown option '", a, "'; options are "
                           "--print-recipe, --print-schema, --help"));
    } else if (a.find('=') != std::string::npos) {
      cl.overrides.push_back(a);
    } else if (cl.recipe.empty()) {
      cl.recipe = a;
    } else {
      throw UsageError(str("unexpected argument '", a, "' after recipe '",
                           cl.recipe, "'; overrides look like "
                           "optimizer.lr=0.1"));
    }
  }
  if (!cl.help && !cl.print_schema && cl.recipe.empty()) {
    throw UsageError("no recipe given; e.g. strata-train "
                     "recipes/fashion_mnist.yaml (see --help)");
  }
  return cl;
}

std::string usage(const std::string& program, const std::string& what) {
  return program +
         " RECIPE.yaml [section.key=value ...] [--print-recipe]\n"
         "  " + what + "\n"
         "  section.key=value   override a recipe key, typed like the file\n"
         "  --print-recipe      print the resolved recipe and exit\n"
         "  --print-schema      print every recipe key (type, default, "
         "meaning)\n"
         "Exit codes: 0 success, 2 usage or recipe error, 1 runtime failure.\n"
         "Environment: STRATA_LOG_LEVEL=debug|info|warn|error, "
         "STRATA_BACKTRACE=1.\n";
}

std::optional<Recipe> recipe_or_print(const CommandLine& cl, const std::string& program,
                                      const std::string& what) {
  if (cl.help) {
    std::fputs(usage(program, what).c_str(), stdout);
    return std::nullopt;
  }
  if (cl.print_schema) {
    std::fputs(schema_markdown().c_str(), stdout);
    return std::nullopt;
  }
  Recipe recipe = load_recipe(cl.recipe, cl.overrides);
  if (cl.print_recipe) {
    std::fputs(to_yaml(recipe).c_str(), stdout);
    return std::nullopt;
  }
  return recipe;
}

int run_main(const std::string& program, const std::function<int()>& body) {
  const bool backtrace = std::getenv("STRATA_BACKTRACE") != nullptr;
  try {
    return body();
  } catch (const c10::Error& e) {
    std::fprintf(stderr, "%s: error: %s\n", program.c_str(),
                 backtrace ? e.what() : e.what_without_backtrace());
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s: error: %s\n", program.c_str(), e.what());
    return exit_code(e);
  }
}

}  // namespace strata::train
