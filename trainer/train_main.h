// The strata-train program as a function, for programs that link Strata
// and register their own models, datasets and optimizers first:
//
//   int main(int argc, char** argv) {
//     strata::train::Registries r = strata::train::builtin_registries();
//     r.models.add("my_net", my_net_spec());
//     return strata::train::train_main("my-train", argc, argv, r);
//   }
//
// It parses RECIPE.yaml [section.key=value ...] (and --print-recipe,
// --print-schema, --list, --consolidate), joins the job's ranks when it is
// one of many (mpirun, srun, torchrun, launch/strata-run), trains, and
// returns the exit code: 0 success, 2 usage/recipe error, 1 runtime failure.
#pragma once

#include <string>

#include "trainer/trainer.h"

namespace strata::train {

int train_main(const std::string& program, int argc, char** argv, const Registries& registries);

// What --list prints: every registered model (with its task and the
// parallelism it supports), optimizer and schedule.
std::string describe_registries(const Registries& registries);

}  // namespace strata::train
