// Rendezvous for jobs started by mpirun (the mpi backend itself is in
// mpi_communicator.h).
//
//
// Rank 0 serves a TCP store on a free port; MPI_Bcast sends "host:port" to
// the others, who connect. Gloo (and later NCCL) then rendezvous through the
// store as they would under torchrun, so multi-node mpirun needs no
// MASTER_ADDR/MASTER_PORT.
//
// Lives in the strata_mpi target: only executables that run under mpirun
// link Open MPI (the edge client must run where no MPI is installed).
#pragma once

#include <chrono>
#include <memory>

#include "distributed/communicator.h"
#include "distributed/rank_info.h"

namespace strata::dist {

// Owns MPI's lifetime: MPI_Init_thread on construction, MPI_Finalize on
// destruction. At most one per process.
class MpiSession {
 public:
  MpiSession();
  ~MpiSession();
  MpiSession(const MpiSession&) = delete;
  MpiSession& operator=(const MpiSession&) = delete;

  // Collective over MPI_COMM_WORLD: the rendezvous store for `info`.
  std::shared_ptr<Store> rendezvous(const RankInfo& info,
                                    std::chrono::milliseconds timeout);
};

}  // namespace strata::dist
