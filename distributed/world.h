// Joining a multi-process job: from a RankInfo to the world Communicator.
#pragma once

#include <chrono>
#include <memory>
#include <string>

#include "distributed/communicator.h"
#include "distributed/rank_info.h"

namespace strata::dist {

struct WorldOptions {
  std::string backend = "auto";  // auto | gloo | nccl | mpi (mpi: see strata-train)
  std::chrono::milliseconds timeout{60000};  // rendezvous and every operation
};

// The rendezvous store at MASTER_ADDR:MASTER_PORT (rank 0 serves it).
// ConfigError when the environment does not name one.
std::shared_ptr<Store> env_rendezvous(const RankInfo& info,
                                      std::chrono::milliseconds timeout);

// "auto" -> the fastest backend this launch offers, by what this project
// measured (bench/results/ddp_cpu.md): "nccl" where LibTorch has CUDA and a
// GPU is visible; "mpi" in builds with Open MPI when mpirun launched the job
// (`launcher`, RankInfo::launcher), on CPU hosts 1.2-1.8x faster than gloo;
// "gloo" otherwise. Other names unchanged.
std::string resolve_backend(const std::string& requested, const std::string& launcher);
// Why auto chose what it chose, for the start-up log line.
std::string backend_reason(const std::string& requested, const std::string& launcher);

// Collective over every process of the job: the world communicator (gloo,
// or nccl in CUDA builds; "auto" is one of those, never mpi, which an
// MpiSession makes).
std::shared_ptr<Communicator> connect_world(const RankInfo& info,
                                            std::shared_ptr<Store> store,
                                            const WorldOptions& options);

}  // namespace strata::dist
