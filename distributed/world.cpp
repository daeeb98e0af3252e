#include "distributed/world.h"

#include "core/error.h"
#include "core/logging.h"
#include "core/net.h"
#include "core/strings.h"
#include "strata/config.h"

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

std::string resolve_backend(const std::string& requested, const std::string& launcher) {
  if (requested != "auto") return requested;
#if STRATA_TORCH_CUDA
  if (at::hasCUDA()) return "nccl";
#endif
#if STRATA_HAVE_MPI
  if (launcher == "mpirun" || !STRATA_HAVE_GLOO) return "mpi";
#endif
  (void)launcher;
  return "gloo";
}

std::string backend_reason(const std::string& requested, const std::string& launcher) {
  const std::string b = resolve_backend(requested, launcher);
  if (requested != "auto") return "distributed.backend=" + b;
  if (b == "nccl") return "auto: nccl (GPUs)";
  if (b == "mpi" && launcher == "mpirun") {
    return "auto: mpi (launched by mpirun on CPUs; the fastest there, bench/results/ddp_cpu.md)";
  }
  if (b == "mpi") return "auto: mpi (this build has no gloo)";
  return str("auto: gloo (launched by ", launcher, "; mpi needs mpirun)");
}

std::shared_ptr<Communicator> connect_world(const RankInfo& info,
                                            std::shared_ptr<Store> store,
                                            const WorldOptions& options) {
  // "auto" here is a backend a store can connect (mpi needs MpiSession:
  // strata-train resolves auto with the launcher before it gets here).
  const std::string backend = resolve_backend(options.backend, "");
#if STRATA_TORCH_CUDA
  if (backend == "nccl") {
    NcclOptions o;
    o.store = std::move(store);
    o.rank = info.rank;
    o.size = info.world;
    o.timeout = options.timeout;
    auto comm = make_nccl_communicator(o);
    log_info("joined a ", info.world, "-process job (", info.launcher, ") over nccl");
    return comm;
  }
#endif
  STRATA_CHECK_T(ConfigError, backend == "gloo" && STRATA_HAVE_GLOO,
                 "distributed.backend=", backend, " is not available here",
                 backend == "mpi"
                     ? ": it needs a build with Open MPI and a launch by mpirun"
                 : backend == "nccl"
                     ? ": this build's LibTorch has no CUDA (or no GPU is visible)"
                 : backend == "gloo"
                     ? ": this build's LibTorch came without gloo's headers "
                       "(pip wheels); build against Debian's libtorch-dev or a "
                       "LibTorch archive"
                     : "", STRATA_HAVE_GLOO ? "; use gloo (or auto)" : "; use mpi under mpirun");
#if STRATA_HAVE_GLOO
  GlooOptions o;
  o.store = std::move(store);
  o.rank = info.rank;
  o.size = info.world;
  o.timeout = options.timeout;
  // All ranks on one host: loopback. Otherwise the address of the interface
  // that routes to the rendezvous host, where every peer can reach this
  // rank (a host name can resolve to 127.0.0.1; GLOO_SOCKET_IFNAME
  // overrides).
  if (info.local_world == info.world) {
    o.hostname = "127.0.0.1";
  } else if (!info.master_addr.empty()) {
    o.hostname = route_source_address(info.master_addr, info.master_port);
    STRATA_CHECK_T(CommError, !o.hostname.empty(), "no route from this host to the rendezvous "
                   "host MASTER_ADDR=", info.master_addr, "; check the address and the network "
                   "(or set GLOO_SOCKET_IFNAME to the interface to use)");
    log_info("gloo: this rank is reachable at ", o.hostname, " (the route to ",
             info.master_addr, ")");
  }
  auto comm = make_gloo_communicator(o);
  log_info("joined a ", info.world, "-process job (", info.launcher,
           ") over ", comm->backend());
  return comm;
#else
  return nullptr;
#endif
}

}  // namespace strata::dist
