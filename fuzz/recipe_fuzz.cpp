// A recipe's text and command-line overrides (the bytes before the first
// NUL are the YAML, then one override per line): parse_recipe either
// returns a recipe or throws a strata::Error (ConfigError, UsageError) with
// a message; anything else escaping (yaml-cpp's or the standard library's
// exceptions) is a bug and ends the run.
#include <cstdint>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/strings.h"
#include "trainer/recipe.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string input(reinterpret_cast<const char*>(data), size);
  const auto nul = input.find('\0');
  const std::string yaml = input.substr(0, nul);
  std::vector<std::string> overrides;
  if (nul != std::string::npos) {
    for (const auto& line : strata::split(input.substr(nul + 1), '\n')) {
      if (!line.empty()) overrides.push_back(line);
    }
  }
  try {
    const strata::train::Recipe r = strata::train::parse_recipe(yaml, "fuzz.yaml", overrides);
    // What it accepted prints and parses back.
    strata::train::parse_recipe(strata::train::to_yaml(r), "emitted.yaml", {});
  } catch (const strata::Error&) {
  }
  return 0;
}
