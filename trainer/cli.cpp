#include "trainer/cli.h"

#include <c10/util/Exception.h>

#include <cstdio>
#include <cstdlib>

#include "core/error.h"
#include "core/logging.h"
#include "core/strings.h"
#include "strata/config.h"

namespace strata::train {

std::string RecipeArgs::recipe() const { return positional.empty() ? "" : positional.front(); }

std::vector<std::string> RecipeArgs::overrides() const {
  std::vector<std::string> out;
  for (size_t i = 1; i < positional.size(); ++i) {
    if (positional[i].find('=') != std::string::npos) out.push_back(positional[i]);
  }
  return out;
}

std::vector<std::string> RecipeArgs::rest() const {
  std::vector<std::string> out;
  for (size_t i = 1; i < positional.size(); ++i) {
    if (positional[i].find('=') == std::string::npos) out.push_back(positional[i]);
  }
  return out;
}

std::string version_text(const std::string& program) {
  std::string backends;
  if (STRATA_HAVE_GLOO) backends += " gloo";
  if (STRATA_HAVE_MPI) backends += " mpi";
  if (STRATA_TORCH_CUDA) backends += " nccl";
  return str(program, " ", STRATA_VERSION, " (git ", STRATA_GIT_COMMIT, "), LibTorch ",
             STRATA_TORCH_VERSION, STRATA_TORCH_CUDA ? " (CUDA)" : " (CPU)", ", backends:",
             backends.empty() ? " none" : backends);
}

std::unique_ptr<CLI::App> make_app(const std::string& program, const std::string& description) {
  auto app = std::make_unique<CLI::App>(description, program);
  app->set_version_flag("--version", version_text(program), "print the version and exit");
  app->footer(
      "Exit codes: 0 success, 2 usage or recipe error, 1 runtime failure.\n"
      "Environment: STRATA_LOG_LEVEL=debug|info|warn|error, STRATA_BACKTRACE=1.");
  return app;
}

void add_recipe_args(CLI::App& app, RecipeArgs& args, const std::string& words, bool printing) {
  app.add_option("recipe", args.positional,
                 "RECIPE.yaml, then section.key=value overrides (typed like the file)" +
                     (words.empty() ? std::string() : ", then " + words))
      ->type_name("RECIPE.yaml [KEY=VALUE...]");
  if (printing) {
    app.add_flag("--print-recipe", args.print_recipe, "print the resolved recipe and exit");
    app.add_flag("--print-schema", args.print_schema,
                 "print every recipe key (type, default, meaning) and exit");
  }
}

bool parse_args(CLI::App& app, int argc, char** argv) {
  // CLI::App::exit prints the help or version text (it does not end the
  // process); the caller returns 0.
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    app.exit(e);
    return false;
  } catch (const CLI::CallForAllHelp& e) {
    app.exit(e);
    return false;
  } catch (const CLI::CallForVersion& e) {
    app.exit(e);
    return false;
  } catch (const CLI::ParseError& e) {
    throw UsageError(str(e.what(), " (see ", app.get_name(), " --help)"));
  }
  return true;
}

std::optional<Recipe> recipe_or_print(const RecipeArgs& args, bool allow_rest) {
  if (args.print_schema) {
    std::fputs(schema_markdown().c_str(), stdout);
    return std::nullopt;
  }
  if (args.recipe().empty()) {
    throw UsageError(str("no recipe given; e.g. ",
                         args.example.empty() ? "recipes/fashion_mnist.yaml" : args.example,
                         " (see --help)"));
  }
  if (!allow_rest && !args.rest().empty()) {
    throw UsageError(str("unexpected argument '", args.rest().front(), "' after recipe '",
                         args.recipe(), "'; overrides look like optimizer.lr=0.1"));
  }
  Recipe recipe = load_recipe(args.recipe(), args.overrides());
  if (args.print_recipe) {
    std::fputs(to_yaml(recipe).c_str(), stdout);
    return std::nullopt;
  }
  return recipe;
}

int run_main(const std::string& program, const std::function<int()>& body) {
  const bool backtrace = std::getenv("STRATA_BACKTRACE") != nullptr;
  try {
    check_log_environment();
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
