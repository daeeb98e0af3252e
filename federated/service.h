// The gRPC face of a FedServer (federated/proto/strata_fed.proto).
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "federated/server.h"

namespace strata::fed {

// What the service has seen since it started: calls that reached a
// decision point, whatever was decided there.
struct ServiceCounts {
  int64_t uploads_started = 0;   // SubmitUpdate streams opened (watched from then on)
  int64_t uploads_admitted = 0;  // of those, first messages read and authenticated:
                                 // given a slot, queued or turned away
  int64_t polls_begun = 0;       // GetModel calls authenticated: waiting or turned away
  int64_t polls_open = 0;        // long polls holding a per-client slot now
};

class RunningService {
 public:
  virtual ~RunningService() = default;
  virtual int port() const = 0;        // the bound port (address port 0: chosen)
  virtual void shutdown() = 0;         // stops accepting, ends in-flight calls
  virtual ServiceCounts counts() = 0;
  // Blocks until `done(counts())` or `wait` passed, waking on every count
  // (no polling); returns the last counts.
  virtual ServiceCounts wait_counts(const std::function<bool(const ServiceCounts&)>& done,
                                    std::chrono::milliseconds wait) = 0;
};

// Serves `core` on its options().service.address, with TLS when tls_cert
// and tls_key are set (check_transport_security decides what is allowed).
// GetStatus also accepts `operator_token` (when not empty) without a
// client id. IoError when the address cannot be bound, saying why (in use:
// ports are not shared).
std::unique_ptr<RunningService> serve(FedServer& core, const std::string& operator_token = "");

}  // namespace strata::fed
