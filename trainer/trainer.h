// The training loop: recipe in, run directory out.
//
// Owns the model, optimizer, schedule, data and checkpoint store of one
// process. Writes <run.dir>/recipe.yaml, metrics.jsonl, checkpoints/ and the
// final model.pt (the contract in ../shared/ARCHITECTURE.md). No globals: the
// registries come in from main().
#pragma once

#include <memory>
#include <string>

#include "distributed/communicator.h"
#include "trainer/data/datasets.h"
#include "trainer/models/models.h"
#include "trainer/optim.h"
#include "trainer/recipe.h"

namespace strata::train {

struct Registries {
  ModelRegistry models{"model"};
  DatasetRegistry datasets{"dataset"};
  OptimizerRegistry optimizers{"optimizer"};
  ScheduleRegistry schedules{"schedule"};
};

// Registries holding every built-in model, dataset, optimizer and schedule.
Registries builtin_registries();

struct TrainResult {
  double test_loss = 0.0;      // on the dataset's evaluation split
  double test_accuracy = 0.0;
  bool language_model = false;  // perplexity = exp(test_loss)
  int64_t steps = 0;
  double wall_s = 0.0;
  std::string run_dir;
  // Prequential runs (trainer/prequential.h): the final cumulative error of
  // the training stream's predictions, over online_instances (0: none).
  double online_error = 0.0;
  int64_t online_instances = 0;
  bool evaluated = true;  // false: the data has no held-out split (a stream)
  // Note [Stopping together]: the signal that stopped the run early, after
  // a checkpoint at `steps` (0: it ran to the end); the process exits with
  // exit_code.
  int stopped_by = 0;
  int exit_code = 0;
};

class Trainer {
 public:
  // Validates the recipe against the registries and loads the data; throws
  // ConfigError (bad recipe) or DataError (missing dataset). With a `world`
  // communicator of size > 1 the run is data parallel: collective, every
  // rank constructs a Trainer and calls run(); rank 0 writes the run
  // directory.
  Trainer(Recipe recipe, const Registries& registries,
          std::shared_ptr<dist::Communicator> world = nullptr);
  ~Trainer();
  Trainer(const Trainer&) = delete;
  Trainer& operator=(const Trainer&) = delete;

  // Trains to the end (resuming first when the recipe says so), evaluates,
  // and writes model.pt and the summary record.
  TrainResult run();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace strata::train
