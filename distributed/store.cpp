// Rendezvous stores (c10d TCPStore / HashStore).
#include <torch/csrc/distributed/c10d/HashStore.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>

#include "core/error.h"
#include "distributed/c10d_store.h"
#include "distributed/communicator.h"

namespace strata::dist {

std::shared_ptr<Store> make_tcp_store(const TcpStoreOptions& o) {
  c10d::TCPStoreOptions opts;
  opts.port = static_cast<std::uint16_t>(o.port);
  opts.isServer = o.is_server;
  opts.numWorkers = static_cast<std::size_t>(o.world);
  opts.waitWorkers = false;
  opts.timeout = o.timeout;
  try {
    auto store = c10::make_intrusive<c10d::TCPStore>(o.host, opts);
    store->setTimeout(o.timeout);
    return std::make_shared<Store>(store, store->getPort());
  } catch (const std::exception& e) {
    throw CommError(str(
        "rendezvous: cannot ", o.is_server ? "serve" : "reach",
        " the TCP store at ", o.host, ":", o.port, " within ",
        o.timeout.count() / 1000.0, " s (", e.what(), "); check MASTER_ADDR/",
        "MASTER_PORT, that rank 0 is running, and that the port is free"));
  }
}

std::shared_ptr<Store> make_memory_store() {
  return std::make_shared<Store>(c10::make_intrusive<c10d::HashStore>());
}

int store_port(const Store& store) { return store.port(); }

void check_reduce_scatter_args(const Communicator& comm,
                               const at::Tensor& output,
                               const std::vector<at::Tensor>& inputs) {
  STRATA_CHECK_T(ConfigError, static_cast<int>(inputs.size()) == comm.size(),
                 "reduce_scatter on group '", comm.name(), "': ", inputs.size(),
                 " inputs for ", comm.size(), " ranks; pass one per rank");
  for (size_t r = 0; r < inputs.size(); ++r) {
    STRATA_CHECK_T(ConfigError, inputs[r].scalar_type() == output.scalar_type() &&
                                    inputs[r].sizes() == output.sizes(),
                   "reduce_scatter on group '", comm.name(), "': input ", r,
                   " is ", inputs[r].scalar_type(), inputs[r].sizes(),
                   " but the output is ", output.scalar_type(), output.sizes(),
                   "; every input must match the output");
  }
}

const char* reduce_op_name(ReduceOp op) {
  switch (op) {
    case ReduceOp::kSum: return "sum";
    case ReduceOp::kAvg: return "avg";
    case ReduceOp::kMax: return "max";
    case ReduceOp::kMin: return "min";
  }
  return "?";
}

}  // namespace strata::dist
