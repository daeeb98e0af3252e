// Command-line handling shared by Strata's executables.
//
//   PROGRAM RECIPE.yaml [a.b=value ...] [--print-recipe] [--print-schema]
//
// run_main is the one place that catches: it prints a single line
// "PROGRAM: error: ..." (the c10 backtrace only with STRATA_BACKTRACE=1) and
// returns 2 for usage/recipe errors, 1 for runtime failures.
#pragma once

#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "trainer/recipe.h"

namespace strata::train {

struct CommandLine {
  std::string recipe;                   // first non-option argument
  std::vector<std::string> overrides;   // "a.b=value"
  bool print_recipe = false;            // print the resolved recipe, exit 0
  bool print_schema = false;            // print every recipe key, exit 0
  bool help = false;
};

// Throws UsageError for unknown flags or a missing recipe.
CommandLine parse_command_line(int argc, char** argv);

// `what`: one line saying what the program does.
std::string usage(const std::string& program, const std::string& what);

// The recipe the command line names (file + overrides), or nullopt when it
// only asked for --help, --print-schema or --print-recipe, which this
// prints to stdout.
std::optional<Recipe> recipe_or_print(const CommandLine& cl, const std::string& program,
                                      const std::string& what);

int run_main(const std::string& program, const std::function<int()>& body);

}  // namespace strata::train
