// strata-train: train and evaluate the run a YAML recipe describes, in one
// process or as one rank of many (mpirun, srun, launch/strata-run, torchrun).
//
//   strata-train RECIPE.yaml [section.key=value ...] [--print-recipe]
//   strata-train --consolidate CHECKPOINT_DIR OUT.pt
//     (a sharded checkpoint, Note [Sharded checkpoints], joined into one
//      torch.load-able state dict)
//
// Exit codes: 0 success, 2 usage/recipe error, 1 runtime failure.
#include <cmath>
#include <iostream>
#include <memory>

#include "core/error.h"
#include "core/logging.h"
#include "core/strings.h"
#include "distributed/rank_info.h"
#include "distributed/world.h"
#include "strata/config.h"
#include "trainer/checkpoint.h"
#include "trainer/cli.h"
#include "trainer/recipe.h"
#include "trainer/trainer.h"
#if STRATA_HAVE_MPI
#include "distributed/mpi_bootstrap.h"
#include "distributed/mpi_communicator.h"
#endif

namespace st = strata::train;
namespace sd = strata::dist;

int main(int argc, char** argv) {
  return st::run_main("strata-train", [&] {
    auto app = st::make_app(
        "strata-train",
        "Trains and evaluates the run a YAML recipe describes, in one process or as one rank of "
        "many (mpirun, srun, launch/strata-run, torchrun).");
    st::RecipeArgs args;
    args.example = "strata-train recipes/fashion_mnist.yaml";
    st::add_recipe_args(*app, args);
    std::vector<std::string> consolidate;
    app->add_option("--consolidate", consolidate,
                    "join a sharded checkpoint (tensor/pipeline parallel: "
                    "runs/<name>/checkpoints/step_<N>) into one torch.load-able state dict, "
                    "and exit")
        ->expected(2)
        ->type_name("CHECKPOINT_DIR OUT.pt");
    if (!st::parse_args(*app, argc, argv)) return 0;
    if (!consolidate.empty()) {
      const auto tensors = st::consolidate_checkpoint(consolidate[0]);
      st::save_state_dict(consolidate[1], tensors);
      std::cout << "wrote " << tensors.size() << " tensors of " << consolidate[0] << " to "
                << consolidate[1] << "\n";
      return 0;
    }
    const auto loaded = st::recipe_or_print(args);
    if (!loaded) return 0;
    const st::Recipe& recipe = *loaded;
    const sd::RankInfo info = sd::discover_ranks();
    strata::set_log_rank(info.rank, info.world);

    std::shared_ptr<sd::Communicator> world;
#if STRATA_HAVE_MPI
    std::unique_ptr<sd::MpiSession> mpi;  // outlives the communicator
#endif
    if (info.world > 1) {
      sd::WorldOptions o;
      o.backend = recipe.distributed.backend;
      o.timeout = std::chrono::milliseconds(
          static_cast<int64_t>(recipe.distributed.timeout_s * 1000));
      std::shared_ptr<sd::Store> store;
#if STRATA_HAVE_MPI
      const bool use_mpi = sd::resolve_backend(o.backend) == "mpi" && info.launcher == "mpirun";
      if (use_mpi || (info.master_addr.empty() && info.launcher == "mpirun")) {
        mpi = std::make_unique<sd::MpiSession>();
      }
      if (use_mpi) {
        world = sd::make_mpi_communicator({"world", 0, -1, o.timeout});
      } else if (mpi) {
        store = mpi->rendezvous(info, o.timeout);
      }
#endif
      if (!world) {
        if (!store) store = sd::env_rendezvous(info, o.timeout);
        world = sd::connect_world(info, store, o);
      }
    }

    const st::Registries registries = st::builtin_registries();
    st::Trainer trainer(recipe, registries, world);
    const st::TrainResult r = trainer.run();
    if (info.rank == 0) {
      if (recipe.data.name == "text") {
        std::cout << "final validation loss " << strata::format_double(r.test_loss)
                  << " (perplexity " << strata::format_double(std::exp(r.test_loss))
                  << ", next-byte accuracy " << strata::format_double(r.test_accuracy) << ")";
      } else {
        std::cout << "final test accuracy " << strata::format_double(r.test_accuracy)
                  << " (loss " << strata::format_double(r.test_loss) << ")";
      }
      std::cout << " after " << r.steps << " steps, " << strata::format_duration(r.wall_s)
                << "; run directory " << r.run_dir << "\n";
    }
    return 0;
  });
}
