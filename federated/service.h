// The gRPC face of a FedServer (federated/proto/strata_fed.proto).
#pragma once

#include <memory>
#include <string>

#include "federated/server.h"

namespace strata::fed {

class RunningService {
 public:
  virtual ~RunningService() = default;
  virtual int port() const = 0;        // the bound port (address port 0: chosen)
  virtual void shutdown() = 0;         // stops accepting, ends in-flight calls
};

// Serves `core` on recipe federated.server.address, with TLS when tls_cert
// and tls_key are set (check_transport_security decides what is allowed).
// GetStatus also accepts `operator_token` (when not empty) without a
// client id. IoError when the address cannot be bound, saying why (in use:
// ports are not shared).
std::unique_ptr<RunningService> serve(FedServer& core, const std::string& operator_token = "");

}  // namespace strata::fed
