#include "trainer/train_main.h"

#include <cmath>
#include <iostream>
#include <memory>
#include <sstream>

#include "core/error.h"
#include "core/logging.h"
#include "core/strings.h"
#include "distributed/rank_info.h"
#include "distributed/world.h"
#include "strata/config.h"
#include "trainer/checkpoint.h"
#include "trainer/cli.h"
#include "trainer/recipe.h"
#if STRATA_HAVE_MPI
#include "distributed/mpi_bootstrap.h"
#include "distributed/mpi_communicator.h"
#endif

namespace strata::train {

std::string describe_registries(const Registries& r) {
  std::ostringstream out;
  out << "models:\n";
  for (const auto& name : r.models.names()) {
    const ModelSpec& m = *r.models.find(name);
    out << "  " << name << "  " << task_name(m.task);
    if (m.tensor_parallel) out << ", tensor parallel";
    if (m.pipelined()) out << ", pipeline stages (" << m.layer_list << ")";
    out << "\n";
  }
  out << "datasets:\n";
  for (const auto& name : r.datasets.names()) {
    out << "  " << name << "  " << task_name(r.datasets.find(name)->task) << "\n";
  }
  out << "optimizers: " << join(r.optimizers.names(), ", ") << "\n";
  out << "schedules: " << join(r.schedules.names(), ", ") << "\n";
  return out.str();
}

int train_main(const std::string& program, int argc, char** argv, const Registries& registries) {
  return run_main(program, [&] {
    auto app = make_app(
        program,
        "Trains and evaluates the run a YAML recipe describes, in one process or as one rank of "
        "many (mpirun, srun, launch/strata-run, torchrun).");
    RecipeArgs args;
    args.example = program + " recipes/fashion_mnist.yaml";
    add_recipe_args(*app, args);
    std::vector<std::string> consolidate;
    app->add_option("--consolidate", consolidate,
                    "join a sharded checkpoint (tensor/pipeline parallel: "
                    "runs/<name>/checkpoints/step_<N>) into one torch.load-able state dict, "
                    "and exit")
        ->expected(2)
        ->type_name("CHECKPOINT_DIR OUT.pt");
    bool list = false;
    app->add_flag("--list", list, "print the registered models, optimizers and schedules, and exit");
    if (!parse_args(*app, argc, argv)) return 0;
    if (list) {
      std::cout << describe_registries(registries);
      return 0;
    }
    if (!consolidate.empty()) {
      const auto tensors = consolidate_checkpoint(consolidate[0]);
      save_state_dict(consolidate[1], tensors);
      std::cout << "wrote " << tensors.size() << " tensors of " << consolidate[0] << " to "
                << consolidate[1] << "\n";
      return 0;
    }
    const auto loaded = recipe_or_print(args);
    if (!loaded) return 0;
    const Recipe& recipe = *loaded;
    const dist::RankInfo info = dist::discover_ranks();
    strata::set_log_rank(info.rank, info.world);

    std::shared_ptr<dist::Communicator> world;  // null: one process
#if STRATA_HAVE_MPI
    std::unique_ptr<dist::MpiSession> mpi;  // outlives the communicator
#endif
    if (info.world > 1) {
      dist::WorldOptions o;
      o.backend = recipe.distributed.backend;
      o.timeout = std::chrono::milliseconds(
          static_cast<int64_t>(recipe.distributed.timeout_s * 1000));
      std::shared_ptr<dist::Store> store;
#if STRATA_HAVE_MPI
      log_info("distributed backend ", dist::backend_reason(o.backend, info.launcher));
      o.backend = dist::resolve_backend(o.backend, info.launcher);
      const bool use_mpi = o.backend == "mpi" && info.launcher == "mpirun";
      if (use_mpi || (info.master_addr.empty() && info.launcher == "mpirun")) {
        mpi = std::make_unique<dist::MpiSession>();
      }
      if (use_mpi) {
        world = dist::make_mpi_communicator({"world", 0, -1, o.timeout});
      } else if (mpi) {
        store = mpi->rendezvous(info, o.timeout);
      }
#endif
      if (!world) {
        if (!store) store = dist::env_rendezvous(info, o.timeout);
        world = dist::connect_world(info, store, o);
      }
    }

    Trainer trainer(recipe, registries, world);
    const TrainResult r = trainer.run();
    if (r.stopped_by != 0) return r.exit_code;  // Note [Stopping together]
    if (info.rank == 0) {
      if (r.online_instances > 0) {
        std::cout << "final online error " << strata::format_metric(r.online_error) << " over "
                  << r.online_instances << " instances (prequential)" << (r.evaluated ? "; " : "");
      }
      if (r.evaluated && r.language_model) {
        std::cout << "final validation loss " << strata::format_metric(r.test_loss)
                  << " (perplexity " << strata::format_metric(std::exp(r.test_loss))
                  << ", next-token accuracy " << strata::format_metric(r.test_accuracy) << ")";
      } else if (r.evaluated) {
        std::cout << "final test accuracy " << strata::format_metric(r.test_accuracy)
                  << " (loss " << strata::format_metric(r.test_loss) << ")";
      }
      std::cout << " after " << r.steps << " steps, " << strata::format_duration(r.wall_s)
                << "; run directory " << r.run_dir << "\n";
    }
    return 0;
  });
}

}  // namespace strata::train
