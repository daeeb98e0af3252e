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

std::string usage(const std::string& program) {
  return program +
         " RECIPE.yaml [section.key=value ...] [--print-recipe]\n"
         "  Trains and evaluates the run a YAML recipe describes.\n"
         "  section.key=value   override a recipe key, typed like the file\n"
         "  --print-recipe      print the resolved recipe and exit\n"
         "  --print-schema      print every recipe key (type, default, "
         "meaning)\n"
         "Exit codes: 0 success, 2 usage or recipe error, 1 runtime failure.\n"
         "Environment: STRATA_LOG_LEVEL=debug|info|warn|error, "
         "STRATA_BACKTRACE=1.\n";
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
