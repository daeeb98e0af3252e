#include "federated/service.h"

#include <grpcpp/grpcpp.h>

#include <condition_variable>
#include <cstring>
#include <mutex>

#include "core/error.h"
#include "core/fs.h"
#include "core/logging.h"
#include "core/strings.h"
#include "federated/wire.h"
#include "strata_fed.grpc.pb.h"

namespace strata::fed {
namespace {

namespace pb = ::strata::fed::v1;

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

grpc::Status to_status(const Rejection& r) { return grpc::Status(to_grpc(r.code), r.reason); }

Rejection wire_rejection(const WireError& e) {
  return e.too_large ? Rejection{RejectCode::kResourceExhausted, "too_large", e.reason}
                     : Rejection{RejectCode::kInvalidArgument, "malformed", e.reason};
}

void fill_model_info(const FedServer& core, const ModelView& v, pb::ModelInfo* info) {
  const FederatedSection& f = core.recipe().federated;
  info->set_version(static_cast<uint64_t>(v.version));
  info->set_model_name(core.recipe().model.name);
  info->set_num_tensors(static_cast<uint32_t>(core.layout().slots().size()));
  info->set_num_parameters(static_cast<uint64_t>(core.layout().numel()));
  info->set_finished(v.finished);
  pb::ClientConfig* c = info->mutable_config();
  c->set_mode(f.mode);
  c->set_round(static_cast<uint64_t>(v.round));
  c->set_proximal_mu(f.proximal_mu);
  c->set_local_epochs(static_cast<uint32_t>(f.sync.local_epochs));
  c->set_local_batch_size(static_cast<uint32_t>(core.recipe().data.batch_size));
  c->set_learning_rate(core.recipe().optimizer.lr);
  c->set_max_staleness(static_cast<uint32_t>(f.async.max_staleness));
}


std::string bearer_token(const grpc::ServerContext& ctx) {
  const auto& md = ctx.client_metadata();
  const auto it = md.find("authorization");
  if (it == md.end()) return "";
  const std::string v(it->second.data(), it->second.size());
  const std::string prefix = "Bearer ";
  return v.rfind(prefix, 0) == 0 ? v.substr(prefix.size()) : "";
}

// Admission to ingest (Note [Bounded ingest]): at most `inflight` updates
// are received at once and at most `waiting` senders wait for a turn; the
// rest are told to come back later.
class Slots {
 public:
  enum class Admit { kGranted, kBusy, kCancelled };

  Slots(int64_t inflight, int64_t waiting) : free_(inflight), max_waiting_(waiting) {}
  // kCancelled when `ctx` was cancelled or its deadline passed while waiting.
  Admit acquire(grpc::ServerContext* ctx) {
    std::unique_lock<std::mutex> lock(mu_);
    if (free_ == 0 && waiting_ >= max_waiting_) return Admit::kBusy;
    ++waiting_;
    while (free_ == 0) {
      if (ctx->IsCancelled()) {
        --waiting_;
        return Admit::kCancelled;
      }
      cv_.wait_for(lock, std::chrono::milliseconds(50));
    }
    --waiting_;
    --free_;
    return Admit::kGranted;
  }
  void release() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      ++free_;
    }
    cv_.notify_one();
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  int64_t free_;
  const int64_t max_waiting_;
  int64_t waiting_ = 0;
};

// Note [Bounded ingest]: an update is held in memory from its first data
// chunk until it is durable and buffered, as one flat vector that its
// chunks are copied into (wire.h's UpdateReceiver). At most
// max_inflight_updates are received at once and at most
// max_waiting_updates senders wait for a turn, each parking no more than
// one HTTP/2 stream window (federated.server.stream_window_kb, fixed:
// gRPC's default BDP probing grows each stream's window to several MiB) and
// holding one server thread; any further sender is answered UNAVAILABLE
// ("busy") at once, before its tensors are read, and retries with backoff
// (EdgeClient does). The model a client fetches is encoded once per version
// and shared by every GetModel. So the server's memory is bounded by its
// configuration -- (buffer + in-flight) updates, (in-flight + waiting)
// windows, a model or two -- and not by the number of clients.
class FederationService final : public pb::Federation::Service {
 public:
  explicit FederationService(FedServer& core)
      : core_(core),
        slots_(core.recipe().federated.server.max_inflight_updates,
               core.recipe().federated.server.max_waiting_updates) {}

  grpc::Status GetModel(grpc::ServerContext* ctx, const pb::GetModelRequest* req,
                        grpc::ServerWriter<pb::ModelChunk>* out) override {
    if (auto r = core_.authenticate(req->client_id(), bearer_token(*ctx))) return to_status(*r);
    const auto wait = std::chrono::milliseconds(std::min<uint32_t>(req->wait_ms(), 60000));
    const ModelView v = core_.get_model(req->client_id(), static_cast<int64_t>(req->have_version()), wait);
    pb::ModelChunk info;
    fill_model_info(core_, v, info.mutable_info());
    if (!out->Write(info)) return grpc::Status(grpc::StatusCode::CANCELLED, "client went away");
    if (static_cast<int64_t>(req->have_version()) == v.version) return grpc::Status::OK;
    for (const auto& t : *encoded(v)) {
      if (!write_encoded<pb::ModelChunk>(t, out)) {
        return grpc::Status(grpc::StatusCode::CANCELLED, "client went away");
      }
    }
    return grpc::Status::OK;
  }

  grpc::Status SubmitUpdate(grpc::ServerContext* ctx, grpc::ServerReader<pb::UpdateChunk>* in,
                            pb::SubmitReply* reply) override {
    pb::UpdateChunk chunk;
    if (!in->Read(&chunk) || chunk.part_case() != pb::UpdateChunk::kInfo) {
      return reject({RejectCode::kInvalidArgument, "malformed",
                     "the first chunk of an update must carry its info"});
    }
    const pb::UpdateInfo info = chunk.info();
    if (auto r = core_.authenticate(info.client_id(), bearer_token(*ctx))) return to_status(*r);
    switch (slots_.acquire(ctx)) {
      case Slots::Admit::kGranted: break;
      case Slots::Admit::kCancelled:
        return grpc::Status(grpc::StatusCode::CANCELLED, "client went away");
      case Slots::Admit::kBusy: {
        const FedServerSection& cfg = core_.recipe().federated.server;
        ctx->AddTrailingMetadata(kRetryAfterKey, std::to_string(kBusyRetryAfterMs));
        return reject({RejectCode::kUnavailable, "busy",
                       str("the server is busy: ", cfg.max_inflight_updates,
                           " updates are being received and ", cfg.max_waiting_updates,
                           " senders wait (federated.server.max_inflight_updates, "
                           "max_waiting_updates); retry with backoff")});
      }
    }
    struct Release {
      Slots& s;
      ~Release() { s.release(); }
    } release{slots_};
    const uint64_t limit = static_cast<uint64_t>(core_.recipe().federated.server.max_message_mb) << 20;
    UpdateReceiver rx(core_.layout(), info.num_tensors(), limit);
    while (in->Read(&chunk)) {
      if (auto e = rx.add(chunk)) return reject(wire_rejection(*e));
    }
    if (auto e = rx.finish()) return reject(wire_rejection(*e));
    SubmitMeta m;
    m.client_id = info.client_id();
    m.base_version = static_cast<int64_t>(info.base_version());
    m.num_samples = static_cast<int64_t>(info.num_samples());
    m.sequence = static_cast<int64_t>(info.sequence());
    m.round = static_cast<int64_t>(info.round());
    m.is_gradient = info.kind() == pb::GRADIENT;
    m.learning_rate = info.learning_rate();
    const SubmitOutcome o = core_.submit(m, rx.take());
    if (o.rejection) return to_status(*o.rejection);
    reply->set_update_id(static_cast<uint64_t>(o.update_id));
    reply->set_current_version(static_cast<uint64_t>(o.current_version));
    reply->set_staleness(static_cast<uint64_t>(o.staleness));
    reply->set_weight(o.weight);
    reply->set_clipped(o.clipped);
    return grpc::Status::OK;
  }

  grpc::Status GetStatus(grpc::ServerContext* ctx, const pb::StatusRequest* req,
                         pb::StatusReply* reply) override {
    if (auto r = core_.authenticate(req->client_id(), bearer_token(*ctx))) return to_status(*r);
    const ServerStatus s = core_.status();
    reply->set_version(static_cast<uint64_t>(s.version));
    reply->set_mode(s.mode);
    reply->set_round(static_cast<uint64_t>(s.round));
    reply->set_buffered_updates(static_cast<uint32_t>(s.buffered));
    reply->set_accepted_updates(static_cast<uint64_t>(s.accepted));
    reply->set_rejected_updates(static_cast<uint64_t>(s.rejected));
    for (const auto& [k, n] : s.rejected_by_reason) {
      (*reply->mutable_rejected_by_reason())[k] = static_cast<uint64_t>(n);
    }
    reply->set_last_test_accuracy(s.last_test_accuracy);
    reply->set_enrolled_clients(static_cast<uint64_t>(s.enrolled_clients));
    return grpc::Status::OK;
  }

 private:
  using Encoded = std::vector<EncodedTensor>;

  // The model of view `v` encoded for the wire, built once per version.
  std::shared_ptr<const Encoded> encoded(const ModelView& v) {
    std::lock_guard<std::mutex> lock(cache_mu_);
    if (cached_version_ != v.version) {
      auto e = std::make_shared<Encoded>();
      for (const auto& [name, t] : core_.layout().unflatten(*v.flat)) {
        e->push_back(encode(name, t, {Encoding::kFp32}));
      }
      cached_ = std::move(e);
      cached_version_ = v.version;
    }
    return cached_;
  }

  // Counts and logs a refusal; a busy reply is flow control, not a fault,
  // and is logged at debug level only.
  grpc::Status reject(const Rejection& r) {
    core_.count_rejection(r);
    const std::string what = str("rejected an update: ", reject_code_name(r.code), " ", r.reason);
    if (r.key == "busy") {
      log_debug(what);
    } else {
      log_warn(what);
    }
    return to_status(r);
  }

  FedServer& core_;
  Slots slots_;
  std::mutex cache_mu_;
  int64_t cached_version_ = -1;
  std::shared_ptr<const Encoded> cached_;
};

class GrpcService final : public RunningService {
 public:
  explicit GrpcService(FedServer& core) : service_(core) {
    const FedServerSection& cfg = core.recipe().federated.server;
    std::shared_ptr<grpc::ServerCredentials> creds;
    if (!cfg.tls_cert.empty()) {
      grpc::SslServerCredentialsOptions ssl;
      ssl.pem_key_cert_pairs.push_back({read_file(cfg.tls_key), read_file(cfg.tls_cert)});
      creds = grpc::SslServerCredentials(ssl);
    } else {
      creds = grpc::InsecureServerCredentials();
    }
    grpc::ServerBuilder b;
    b.AddListeningPort(cfg.address, creds, &port_);
    b.RegisterService(&service_);
    b.SetMaxReceiveMessageSize(static_cast<int>(2 * kChunkBytes + (1 << 20)));
    b.SetMaxSendMessageSize(static_cast<int>(2 * kChunkBytes + (1 << 20)));
    if (cfg.stream_window_kb > 0) {
      // Note [Bounded ingest]: a fixed window instead of BDP-grown ones
      // (up to 4-16 MiB per stream), so a waiting sender parks at most this.
      b.AddChannelArgument(GRPC_ARG_HTTP2_BDP_PROBE, 0);
      b.AddChannelArgument(GRPC_ARG_HTTP2_STREAM_LOOKAHEAD_BYTES,
                           static_cast<int>(cfg.stream_window_kb * 1024));
    }
    server_ = b.BuildAndStart();
    STRATA_CHECK_T(IoError, server_ != nullptr && port_ > 0, "cannot serve on ",
                   cfg.address, ": the address is invalid or in use");
    log_info("serving federated protocol v1 on ", cfg.address.substr(0, cfg.address.rfind(':')),
             ":", port_, cfg.tls_cert.empty() ? " (plaintext, loopback)" : " (TLS)");
  }
  ~GrpcService() override { shutdown(); }
  int port() const override { return port_; }
  void shutdown() override {
    if (server_) {
      server_->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(2));
      server_.reset();
    }
  }

 private:
  FederationService service_;
  std::unique_ptr<grpc::Server> server_;
  int port_ = 0;
};

}  // namespace

std::unique_ptr<RunningService> serve(FedServer& core) {
  return std::make_unique<GrpcService>(core);
}

}  // namespace strata::fed
