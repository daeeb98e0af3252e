#include "distributed/world.h"

#include "core/error.h"
#include "core/logging.h"

namespace strata::dist {

std::shared_ptr<Store> env_rendezvous(const RankInfo& info,
                                      std::chrono::milliseconds timeout) {
  STRATA_CHECK_T(ConfigError, !info.master_addr.empty() && info.master_port > 0,
                 "launched by ", info.launcher, " as rank ", info.rank, " of ",
                 info.world, " but MASTER_ADDR/MASTER_PORT are not set, so the "
                 "ranks cannot find each other; export both (rank 0's host "
                 "and a free port), or launch with mpirun or launch/strata-run");
  TcpStoreOptions o;
  o.host = info.master_addr;
  o.port = info.master_port;
  o.is_server = info.rank == 0;
  o.world = info.world;
  o.timeout = timeout;
  return make_tcp_store(o);
}

std::shared_ptr<Communicator> connect_world(const RankInfo& info,
                                            std::shared_ptr<Store> store,
                                            const WorldOptions& options) {
  STRATA_CHECK_T(ConfigError, options.backend == "auto" || options.backend == "gloo",
                 "distributed.backend=", options.backend, " is not available "
                 "here", options.backend == "mpi"
                     ? ": it needs a build with Open MPI and a launch by mpirun"
                     : "", "; use gloo (or auto)");
  GlooOptions o;
  o.store = std::move(store);
  o.rank = info.rank;
  o.size = info.world;
  o.timeout = options.timeout;
  // All ranks on one host: loopback. Otherwise the host's default interface
  // (GLOO_SOCKET_IFNAME overrides).
  o.hostname = info.local_world == info.world ? "127.0.0.1" : "";
  auto comm = make_gloo_communicator(o);
  log_info("joined a ", info.world, "-process job (", info.launcher,
           ") over ", comm->backend());
  return comm;
}

}  // namespace strata::dist
