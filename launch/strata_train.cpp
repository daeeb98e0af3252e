// strata-train: train and evaluate the run a YAML recipe describes, in one
// process or as one rank of many (mpirun, srun, launch/strata-run, torchrun).
//
//   strata-train RECIPE.yaml [section.key=value ...] [--print-recipe]
//   strata-train --list
//   strata-train --consolidate CHECKPOINT_DIR OUT.pt
//     (a sharded checkpoint, Note [Sharded checkpoints], joined into one
//      torch.load-able state dict)
//
// Exit codes: 0 success, 2 usage/recipe error, 1 runtime failure. The
// program is train::train_main with the built-in registries; a program
// with its own models calls train_main with its registries
// (examples/custom_model).
#include "trainer/train_main.h"

int main(int argc, char** argv) {
  return strata::train::train_main("strata-train", argc, argv,
                                   strata::train::builtin_registries());
}
