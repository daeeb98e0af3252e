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

}  // namespace strata::dist
