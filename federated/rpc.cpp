#include "federated/rpc.h"

#include <netdb.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "core/logging.h"
#include "core/strings.h"

namespace strata::fed::rpc {

namespace {

grpc::StatusCode to_grpc(RejectCode c) {
  switch (c) {
    case RejectCode::kUnauthenticated: return grpc::StatusCode::UNAUTHENTICATED;
    case RejectCode::kFailedPrecondition: return grpc::StatusCode::FAILED_PRECONDITION;
    case RejectCode::kAlreadyExists: return grpc::StatusCode::ALREADY_EXISTS;
    case RejectCode::kInvalidArgument: return grpc::StatusCode::INVALID_ARGUMENT;
    case RejectCode::kResourceExhausted: return grpc::StatusCode::RESOURCE_EXHAUSTED;
    case RejectCode::kUnavailable: return grpc::StatusCode::UNAVAILABLE;
  }
  return grpc::StatusCode::INTERNAL;
}

}  // namespace

grpc::Status to_status(const Rejection& r) { return grpc::Status(to_grpc(r.code), r.reason); }

Rejection wire_rejection(const WireError& e) {
  return e.too_large ? Rejection{RejectCode::kResourceExhausted, "too_large", e.reason}
                     : Rejection{RejectCode::kInvalidArgument, "malformed", e.reason};
}

grpc::Status unparseable(const char* what) {
  return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                      str(what, " is not a valid message of strata_fed.proto (string fields "
                                "must be UTF-8)"));
}

namespace {

void protobuf_log(google::protobuf::LogLevel level, const char* file, int line,
                  const std::string& message) {
  if (level >= google::protobuf::LOGLEVEL_FATAL) {
    log_error("protobuf ", file, ":", line, ": ", printable(message, 200));
  } else {
    log_debug("protobuf: ", printable(message, 200));
  }
}

void grpc_log(gpr_log_func_args* args) {
  static LogBudget budget(10, std::chrono::seconds(10));
  if (!budget.allow()) return;
  const std::string what = str("gRPC: ", printable(args->message ? args->message : "", 300));
  if (args->severity == GPR_LOG_SEVERITY_ERROR) {
    log_warn(what);
  } else {
    log_debug(what);
  }
}

}  // namespace

void route_library_logs() {
  static std::once_flag once;
  std::call_once(once, [] {
    google::protobuf::SetLogHandler(&protobuf_log);
    gpr_set_log_function(&grpc_log);
  });
}

std::string bearer_token(const grpc::CallbackServerContext& ctx) {
  const auto& md = ctx.client_metadata();
  const auto it = md.find("authorization");
  if (it == md.end()) return "";
  std::string v(it->second.data(), it->second.size());
  // The scheme is case-insensitive (RFC 7235); spaces around the token are
  // not part of it.
  if (v.size() < 7 || strcasecmp(v.substr(0, 7).c_str(), "bearer ") != 0) return "";
  v = v.substr(7);
  const auto b = v.find_first_not_of(' '), e = v.find_last_not_of(' ');
  return b == std::string::npos ? "" : v.substr(b, e - b + 1);
}

bool LogBudget::allow(int64_t* suppressed) {
  std::lock_guard<std::mutex> lock(mu_);
  const auto now = std::chrono::steady_clock::now();
  if (now - start_ >= window_) {
    start_ = now;
    used_ = 0;
  }
  if (used_ >= burst_) {
    ++held_;
    return false;
  }
  ++used_;
  if (suppressed) *suppressed = held_;
  held_ = 0;
  return true;
}

void fill_model_info(const FedServer& core, const ModelView& v, pb::ModelInfo* info) {
  const ServerOptions& o = core.options();
  info->set_version(static_cast<uint64_t>(v.version));
  info->set_model_name(o.model_name);
  info->set_num_tensors(static_cast<uint32_t>(core.layout().slots().size()));
  info->set_num_parameters(static_cast<uint64_t>(core.layout().numel()));
  info->set_finished(v.finished);
  pb::ClientConfig* c = info->mutable_config();
  c->set_mode(core.mode());
  c->set_round(static_cast<uint64_t>(v.round));
  c->set_proximal_mu(core.client_config().proximal_mu);
  c->set_local_epochs(static_cast<uint32_t>(o.clients.local_epochs));
  c->set_local_batch_size(static_cast<uint32_t>(o.clients.local_batch_size));
  c->set_learning_rate(o.clients.learning_rate);
  c->set_max_staleness(static_cast<uint32_t>(core.max_staleness()));
  c->set_max_update_bytes(static_cast<uint64_t>(o.service.max_message_mb) << 20);
  c->set_max_chunk_bytes(kMaxChunkBytes);
  c->set_max_num_samples(static_cast<uint64_t>(o.validation.max_num_samples));
  c->set_norm_bound(o.validation.norm_bound);
  c->set_clip_norm(o.clients.clip_norm);
  if (o.secagg.enabled) {
    pb::SecAggConfig* a = c->mutable_secagg();
    a->set_threshold(static_cast<uint32_t>(o.secagg.settings.threshold));
    a->set_neighbours(static_cast<uint32_t>(o.secagg.settings.neighbours));
    a->set_clip_range(o.secagg.settings.clip_range);
    a->set_quant_bits(static_cast<uint32_t>(o.secagg.settings.quant_bits));
    a->set_max_samples(static_cast<uint64_t>(o.secagg.max_samples));
    a->set_values(static_cast<uint64_t>(core.layout().numel()));
  }
}

// Why `address` cannot be bound, from a plain bind() of our own: gRPC says
// only that it failed.
std::string bind_error(const std::string& address) {
  const auto colon = address.rfind(':');
  std::string host = address.substr(0, colon);
  if (host.size() > 1 && host.front() == '[') host = host.substr(1, host.size() - 2);
  const std::string port = address.substr(colon + 1);
  addrinfo hints{};
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE;
  addrinfo* res = nullptr;
  if (const int rc = getaddrinfo(host.c_str(), port.c_str(), &hints, &res); rc != 0) {
    return str("the host does not resolve (", gai_strerror(rc), ")");
  }
  std::string why = "gRPC could not listen there";
  for (addrinfo* a = res; a; a = a->ai_next) {
    const int fd = ::socket(a->ai_family, a->ai_socktype, a->ai_protocol);
    if (fd < 0) continue;
    if (::bind(fd, a->ai_addr, a->ai_addrlen) != 0) {
      why = errno == EADDRINUSE ? "the address is in use (is another strata-fedserver running "
                                  "there? stop it or pick another port)"
                                : std::strerror(errno);
    }
    ::close(fd);
  }
  freeaddrinfo(res);
  return why;
}

}  // namespace strata::fed::rpc
