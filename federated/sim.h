// strata-fedsim: a federated server and N edge clients in one process,
// talking real gRPC over loopback. The training set is partitioned over the
// clients (IID or Dirichlet label skew); a share of them may corrupt their
// updates; with federated.sim.drift every client's stream drifts at its own
// points. The server writes its run directory as strata-fedserver would,
// and the simulation adds clients.json: each client's updates and, in
// async mode, its prequential (test-then-train) error, and with local
// differential privacy, the epsilon it spent.
#pragma once

#include <string>
#include <vector>

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
  // Async: the clients' prequential error (each client's errors over the
  // instances it learned online), its mean over the clients that learned,
  // and the instances of all clients. Also in <run_dir>/clients.json.
  std::vector<double> client_online_error;
  double online_error = 0.0;
  int64_t online_instances = 0;
  // federated.privacy.mode=local: the largest epsilon a client spent (each
  // client's is in clients.json).
  double max_client_epsilon = 0.0;
  // federated.sim.dropout: rounds clients dropped out of after submitting.
  int64_t dropped_out = 0;
};

SimResult run_fedsim(const train::Recipe& recipe, const train::Registries& registries);

}  // namespace strata::fed
