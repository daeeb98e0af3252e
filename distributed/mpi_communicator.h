// The mpi backend: Open MPI's non-blocking collectives behind Communicator.
//
// Part of strata_mpi (only executables that run under mpirun link MPI).
// Requires a live MpiSession.
#pragma once

#include <chrono>
#include <memory>
#include <string>

#include "distributed/communicator.h"

namespace strata::dist {

struct MpiCommOptions {
  std::string name = "world";  // group name in messages
  int color = 0;  // world ranks with the same color form one group
  int key = -1;   // order inside the group (-1: by world rank)
  std::chrono::milliseconds timeout{60000};  // per operation
};

// Collective over MPI_COMM_WORLD (MPI_Comm_split): every rank calls it.
std::shared_ptr<Communicator> make_mpi_communicator(const MpiCommOptions& options);

}  // namespace strata::dist
