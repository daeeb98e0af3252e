// strata-fedsim: a federated server and N edge clients in one process,
// talking real gRPC over loopback. The training set is partitioned over the
// clients (IID or Dirichlet label skew); a share of them may corrupt their
// updates. The server writes its run directory as strata-fedserver would.
#pragma once

#include <string>

#include "trainer/recipe.h"
#include "trainer/trainer.h"

namespace strata::fed {

struct SimResult {
  int64_t versions = 0;         // aggregations done
  double test_accuracy = 0.0;   // of the final version
  int64_t accepted = 0;
  int64_t refused = 0;
  double wall_s = 0.0;
  std::string run_dir;
};

SimResult run_fedsim(const train::Recipe& recipe, const train::Registries& registries);

}  // namespace strata::fed
