// What the federated gRPC service needs around its calls: status codes
// for rejections, raw-message parsing (the methods are registered raw), the
// bearer token, rate-limited log lines, and the model info a client gets.
#pragma once

#include <google/protobuf/stubs/logging.h>
#include <grpc/support/log.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/support/proto_buffer_reader.h>

#include <chrono>
#include <cstdint>
#include <mutex>
#include <string>

#include "core/error.h"
#include "federated/server.h"
#include "federated/validator.h"
#include "federated/wire.h"
#include "strata_fed.grpc.pb.h"

namespace strata::fed::rpc {

namespace pb = ::strata::fed::v1;

grpc::Status to_status(const Rejection& r);
Rejection wire_rejection(const WireError& e);

// Requests arrive as raw bytes (the methods are registered raw) so that a
// message that does not parse is answered INVALID_ARGUMENT with a reason,
// not gRPC's INTERNAL with none, and a chunk that does not parse
// mid-stream is an error, not the end of the stream.
template <class Msg>
bool parse(const grpc::ByteBuffer& bytes, Msg* m) {
  grpc::ByteBuffer copy(bytes);  // shares the slices
  grpc::ProtoBufferReader reader(&copy);
  return reader.status().ok() && m->ParseFromZeroCopyStream(&reader);
}

template <class Msg>
grpc::ByteBuffer serialize(const Msg& m) {
  grpc::ByteBuffer out;
  bool own = false;
  const grpc::Status s = grpc::SerializationTraits<Msg>::Serialize(m, &out, &own);
  STRATA_INTERNAL_ASSERT(s.ok(), "cannot serialize a reply: ", s.error_message());
  return out;
}

// INVALID_ARGUMENT: `what` did not parse.
grpc::Status unparseable(const char* what);

// protobuf's and gRPC's own log lines (invalid UTF-8 in a string field, a
// failed TLS handshake) through Strata's log, escaped and rate-limited: a
// client can provoke them at will. Installed once by serve().
void route_library_logs();

// The token of `authorization: Bearer <token>` (the scheme in any case);
// "" when there is none.
std::string bearer_token(const grpc::CallbackServerContext& ctx);

// At most `burst` lines per `window`; what was held back is counted in the
// next line that gets through (auth failures can come in floods).
class LogBudget {
 public:
  LogBudget(int burst, std::chrono::seconds window) : burst_(burst), window_(window) {}
  // True when a line may be printed now; `suppressed` (when given) gets how
  // many were held back since the last one.
  bool allow(int64_t* suppressed = nullptr);

 private:
  std::mutex mu_;
  const int burst_;
  const std::chrono::seconds window_;
  std::chrono::steady_clock::time_point start_{};
  int used_ = 0;
  int64_t held_ = 0;
};

void fill_model_info(const FedServer& core, const ModelView& v, pb::ModelInfo* info);

// Why `address` cannot be bound, from a plain bind() of our own: gRPC says
// only that it failed.
std::string bind_error(const std::string& address);

}  // namespace strata::fed::rpc
