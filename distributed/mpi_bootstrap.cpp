#include "distributed/mpi_bootstrap.h"

#include <mpi.h>
#include <unistd.h>

#include <cstring>

#include "core/error.h"
#include "core/logging.h"

namespace strata::dist {

MpiSession::MpiSession() {
  int initialized = 0;
  MPI_Initialized(&initialized);
  STRATA_INTERNAL_ASSERT(!initialized, "MPI initialised twice");
  int provided = 0;
  STRATA_CHECK_T(CommError,
                 MPI_Init_thread(nullptr, nullptr, MPI_THREAD_MULTIPLE,
                                 &provided) == MPI_SUCCESS,
                 "MPI_Init_thread failed; is this process started by mpirun?");
}

MpiSession::~MpiSession() {
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (!finalized) MPI_Finalize();
}

std::shared_ptr<Store> MpiSession::rendezvous(const RankInfo& info,
                                              std::chrono::milliseconds timeout) {
  // One host: loopback. Several: rank 0's hostname (must resolve on all).
  char address[256] = "127.0.0.1";
  const bool one_host = info.local_world == info.world;
  if (!one_host) ::gethostname(address, sizeof(address) - 1);
  TcpStoreOptions o;
  o.world = info.world;
  o.timeout = timeout;
  std::shared_ptr<Store> store;
  int port = 0;
  if (info.rank == 0) {
    o.host = address;
    o.is_server = true;
    store = make_tcp_store(o);
    port = store_port(*store);
  }
  char buf[300] = {0};
  if (info.rank == 0) std::snprintf(buf, sizeof(buf), "%s %d", address, port);
  STRATA_CHECK_T(CommError,
                 MPI_Bcast(buf, sizeof(buf), MPI_CHAR, 0, MPI_COMM_WORLD) ==
                     MPI_SUCCESS,
                 "rendezvous: MPI_Bcast of rank 0's address failed");
  if (info.rank != 0) {
    char host[256] = {0};
    STRATA_INTERNAL_ASSERT(std::sscanf(buf, "%255s %d", host, &port) == 2);
    o.host = host;
    o.port = port;
    store = make_tcp_store(o);
  }
  log_debug("rendezvous over MPI: TCP store at ", buf);
  return store;
}

}  // namespace strata::dist
