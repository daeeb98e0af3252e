// Command-line handling shared by Strata's executables, on CLI11 (Debian's
// libcli11-dev): every binary has --help listing its real options,
// --version, and exits 2 with a message for a malformed argument.
//
//   PROGRAM RECIPE.yaml [section.key=value ...] [--print-recipe] [--print-schema]
//
// run_main is the one place that catches: it prints a single line
// "PROGRAM: error: ..." (the c10 backtrace only with STRATA_BACKTRACE=1) and
// returns 2 for usage/recipe errors, 1 for runtime failures.
#pragma once

#include <CLI/CLI.hpp>

#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "trainer/recipe.h"

namespace strata::train {

// The recipe part of a command line: RECIPE.yaml and section.key=value
// overrides (and, for commands that take them, further words such as
// client ids: anything without '=' after the recipe).
struct RecipeArgs {
  std::vector<std::string> positional;
  bool print_recipe = false;
  bool print_schema = false;
  std::string example;  // for "no recipe given", e.g. "recipes/fed_fmnist_sync.yaml"

  std::string recipe() const;                  // "" when none was given
  std::vector<std::string> overrides() const;  // the words with '='
  std::vector<std::string> rest() const;       // the others after the recipe
};

// A Strata program: its description, --version, and the exit codes and
// environment in --help's footer.
std::unique_ptr<CLI::App> make_app(const std::string& program, const std::string& description);

// Adds RECIPE.yaml [overrides...] (`words` names what else may follow, for
// --help) and, when `printing`, --print-recipe and --print-schema.
void add_recipe_args(CLI::App& app, RecipeArgs& args, const std::string& words = "",
                     bool printing = true);

// Parses argv into `app`. False when --help or --version was printed (the
// program exits 0); UsageError (exit 2) for anything malformed, with
// CLI11's reason and a pointer to --help.
bool parse_args(CLI::App& app, int argc, char** argv);

// "PROGRAM 0.1.0 (git abc1234), LibTorch 1.13.1 (CPU), backends: gloo mpi".
std::string version_text(const std::string& program);

// The recipe the arguments name (file + overrides), or nullopt when they
// only asked for --print-schema or --print-recipe, which this prints to
// stdout. UsageError when no recipe was given or a word after it is not an
// override (`allow_rest` false).
std::optional<Recipe> recipe_or_print(const RecipeArgs& args, bool allow_rest = false);

int run_main(const std::string& program, const std::function<int()>& body);

}  // namespace strata::train
