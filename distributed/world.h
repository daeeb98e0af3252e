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

// "auto" -> "nccl" where LibTorch has CUDA and a GPU is visible, else
// "gloo"; other names unchanged.
std::string resolve_backend(const std::string& requested);

// Collective over every process of the job: the world communicator (gloo,
// or nccl in CUDA builds).
std::shared_ptr<Communicator> connect_world(const RankInfo& info,
                                            std::shared_ptr<Store> store,
                                            const WorldOptions& options);

}  // namespace strata::dist
