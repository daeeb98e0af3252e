// The edge client SDK's transport: fetch the global model, submit updates,
// read the server's status, over gRPC (TLS when a CA is given), with retries
// and exponential backoff for transient failures. Needs no MPI.
//
// Sequence numbers (the server's replay guard) are microseconds since the
// epoch, kept strictly increasing within the process, so a restarted client
// needs no state file. A retry after a lost reply reuses the sequence: the
// server then answers ALREADY_EXISTS, which submit() reports as accepted.
#pragma once

#include <ATen/ATen.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "federated/codec.h"

namespace strata::fed {

struct EdgeClientOptions {
  std::string address;    // host:port
  std::string client_id;
  std::string token;
  std::string tls_ca;     // PEM file; empty: plaintext
  std::string tls_target_name;  // override the name checked in the certificate
  int max_retries = 8;
  std::chrono::milliseconds first_backoff{100};   // doubles per retry
  std::chrono::milliseconds max_backoff{10000};   // also caps gRPC's reconnect backoff
  std::chrono::milliseconds rpc_timeout{120000};
};

// ClientConfig.secagg: the server runs secure aggregation with these.
struct SecAggSettings {
  int threshold = 0;     // 0: the round's majority rule (the roster says)
  int neighbours = 0;
  double clip_range = 8.0;
  int quant_bits = 22;
  int64_t max_samples = 0;  // weight cap (0: every update weighs 1)
  int64_t values = 0;
};

struct FetchedModel {
  int64_t version = 0;
  bool changed = false;  // tensors hold a newer model than have_version
  bool finished = false;
  std::string mode;      // "sync" | "async"
  int64_t round = 0;     // sync: selected for this round (0: not selected)
  double proximal_mu = 0;
  int64_t local_epochs = 1;
  double clip_norm = 0;  // central DP with client_clip: clip updates to this L2 norm
  std::optional<SecAggSettings> secagg;  // send updates through SecAgg
  std::vector<std::pair<std::string, at::Tensor>> tensors;
};

struct UpdateToSend {
  int64_t base_version = 0;
  int64_t num_samples = 0;
  int64_t round = 0;
  std::vector<std::pair<std::string, at::Tensor>> tensors;  // the delta, by name
  EncodeOptions encoding;
};

struct SubmitResult {
  bool accepted = false;
  bool duplicate = false;    // a retry found the update already recorded
  std::string code;          // gRPC status name when refused
  std::string reason;
  int64_t update_id = 0;
  int64_t current_version = 0;
  bool clipped = false;
  // Protobuf bytes of the calls (requests up, replies down; without HTTP/2
  // and TLS framing), retries included.
  int64_t bytes_up = 0, bytes_down = 0;
};

class EdgeClient {
 public:
  explicit EdgeClient(EdgeClientOptions options);
  ~EdgeClient();
  EdgeClient(const EdgeClient&) = delete;
  EdgeClient& operator=(const EdgeClient&) = delete;

  // The model, or only its metadata when have_version is current; long
  // polls up to `wait`. CommError after max_retries transient failures or on
  // a refusal (UNAUTHENTICATED etc.), naming the server's reason.
  FetchedModel fetch(int64_t have_version, std::chrono::milliseconds wait);
  // The current version as a strata-int8 package (a server with
  // federated.server.publish; trainer/edge_model.h runs it), for a client
  // that only infers; `version` gets its version. CommError (naming
  // FAILED_PRECONDITION) when the server does not publish.
  std::string fetch_package(int64_t* version);

  // Encodes and streams one update. A refusal is a result (accepted false,
  // code and reason set), not an exception; transport failures are retried
  // and then thrown as CommError.
  SubmitResult submit(const UpdateToSend& update);
  // The same with tensors already encoded (update.tensors is ignored): lets
  // a caller send one encoding many times (benchmarks) without copies.
  SubmitResult submit_encoded(const UpdateToSend& update,
                              const std::vector<EncodedTensor>& encoded);

  // Secure aggregation of one round (Note [Secure aggregation] in
  // secagg.h): weights `update` (flat float32, the model's values) by
  // min(num_samples, max_samples) / max_samples, then keys, shares, the
  // masked input (accepted once it is durable), unmasking. Each stage's
  // call is asked again while the stage is open. `drop_after_input`: go
  // away once the input is durable, as a device that drops out (for
  // simulations). A refusal (dropped out of the round, the round failed)
  // is a result; transport failures after retries are CommError.
  SubmitResult submit_secagg(int64_t round, const SecAggSettings& settings,
                             const at::Tensor& update, int64_t num_samples,
                             bool drop_after_input = false);

  // GetStatus as text lines "key value".
  std::string status();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace strata::fed
