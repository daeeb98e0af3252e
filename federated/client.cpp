#include "federated/client.h"

#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <cstdlib>
#include <mutex>
#include <random>
#include <thread>

#include "core/error.h"
#include "core/fs.h"
#include "core/logging.h"
#include "core/strings.h"
#include "federated/secagg_wire.h"
#include "federated/wire.h"
#include "strata_fed.grpc.pb.h"

namespace strata::fed {
namespace {

const char* code_name(grpc::StatusCode c) {
  switch (c) {
    case grpc::StatusCode::OK: return "OK";
    case grpc::StatusCode::CANCELLED: return "CANCELLED";
    case grpc::StatusCode::UNKNOWN: return "UNKNOWN";
    case grpc::StatusCode::INVALID_ARGUMENT: return "INVALID_ARGUMENT";
    case grpc::StatusCode::DEADLINE_EXCEEDED: return "DEADLINE_EXCEEDED";
    case grpc::StatusCode::NOT_FOUND: return "NOT_FOUND";
    case grpc::StatusCode::ALREADY_EXISTS: return "ALREADY_EXISTS";
    case grpc::StatusCode::PERMISSION_DENIED: return "PERMISSION_DENIED";
    case grpc::StatusCode::UNAUTHENTICATED: return "UNAUTHENTICATED";
    case grpc::StatusCode::RESOURCE_EXHAUSTED: return "RESOURCE_EXHAUSTED";
    case grpc::StatusCode::FAILED_PRECONDITION: return "FAILED_PRECONDITION";
    case grpc::StatusCode::ABORTED: return "ABORTED";
    case grpc::StatusCode::OUT_OF_RANGE: return "OUT_OF_RANGE";
    case grpc::StatusCode::UNIMPLEMENTED: return "UNIMPLEMENTED";
    case grpc::StatusCode::INTERNAL: return "INTERNAL";
    case grpc::StatusCode::UNAVAILABLE: return "UNAVAILABLE";
    case grpc::StatusCode::DATA_LOSS: return "DATA_LOSS";
    default: return "?";
  }
}

// Worth another attempt: the server may be restarting or the link broke.
bool transient(grpc::StatusCode c) {
  return c == grpc::StatusCode::UNAVAILABLE || c == grpc::StatusCode::DEADLINE_EXCEEDED ||
         c == grpc::StatusCode::CANCELLED || c == grpc::StatusCode::ABORTED ||
         c == grpc::StatusCode::UNKNOWN || c == grpc::StatusCode::INTERNAL;
}

}  // namespace

struct EdgeClient::Impl {
  EdgeClientOptions o;
  std::shared_ptr<grpc::Channel> channel;
  std::unique_ptr<pb::Federation::Stub> stub;
  std::mutex seq_mu;
  int64_t last_sequence = 0;

  int64_t next_sequence() {
    std::lock_guard<std::mutex> lock(seq_mu);
    const int64_t now = std::chrono::duration_cast<std::chrono::microseconds>(
                            std::chrono::system_clock::now().time_since_epoch())
                            .count();
    last_sequence = std::max(last_sequence + 1, now);
    return last_sequence;
  }

  void prepare(grpc::ClientContext& ctx, std::chrono::milliseconds extra = {}) const {
    ctx.AddMetadata("authorization", "Bearer " + o.token);
    ctx.set_deadline(std::chrono::system_clock::now() + o.rpc_timeout + extra);
  }

  // Runs `call(attempt, &retry_after)` until it succeeds, fails for good,
  // or retries run out. A call that sets `retry_after` (the server said it
  // is busy) is retried until rpc_timeout has passed since the first
  // attempt, without using up max_retries: being turned away by a busy
  // server is flow control, not a failure.
  template <class Call>
  grpc::Status with_retries(const char* what, Call&& call) {
    auto backoff = o.first_backoff;
    const auto give_up = std::chrono::steady_clock::now() + o.rpc_timeout;
    int failures = 0;
    for (int attempt = 0;; ++attempt) {
      std::chrono::milliseconds retry_after{-1};
      const grpc::Status s = call(attempt, &retry_after);
      if (s.ok() || !transient(s.error_code())) return s;
      const bool busy = retry_after.count() >= 0;
      if (busy ? std::chrono::steady_clock::now() >= give_up : failures++ >= o.max_retries) {
        return s;
      }
      // Jittered ("equal jitter": half fixed, half random), so clients a
      // busy or restarted server refused together do not come back together.
      static thread_local std::mt19937 rng{std::random_device{}()};
      const auto wait = std::max(retry_after, std::chrono::milliseconds(
          std::uniform_int_distribution<int64_t>(backoff.count() / 2, backoff.count())(rng)));
      // The first failure of a call is worth a line (a server that is not
      // up yet, or a TLS mismatch, would otherwise be ~20 s of silence).
      const std::string line = str(o.client_id, ": ", what, " on ", o.address, " failed (",
                                   code_name(s.error_code()), ": ", printable(s.error_message(), 200),
                                   "); retrying in ", wait.count(), " ms");
      if (attempt == 0 && !busy) {
        log_info(line, " (up to ", o.max_retries, " retries)");
      } else {
        log_debug(line);
      }
      std::this_thread::sleep_for(wait);
      backoff = std::min(backoff * 2, o.max_backoff);
    }
  }

  [[noreturn]] void fail(const char* what, const grpc::Status& s) const {
    throw CommError(str(o.client_id, ": ", what, " on ", o.address, " failed: ",
                        code_name(s.error_code()), ": ", printable(s.error_message(), 500),
                        transport_hint(s)));
  }

  // What a transport failure most likely means, when it looks like a TLS
  // mismatch (gRPC says only that the connection broke).
  std::string transport_hint(const grpc::Status& s) const {
    if (s.error_code() != grpc::StatusCode::UNAVAILABLE &&
        s.error_code() != grpc::StatusCode::DEADLINE_EXCEEDED) {
      return "";
    }
    const std::string& m = s.error_message();
    const auto has = [&](const char* w) { return m.find(w) != std::string::npos; };
    if (o.tls_ca.empty() && (has("SETTINGS frame") || has("Socket closed") ||
                             has("Connection reset") || has("failed to connect"))) {
      return "; probably the server requires TLS: pass federated.server.tls_ca (the CA "
             "certificate that signed the server's certificate)";
    }
    if (!o.tls_ca.empty() && (has("ssl") || has("SSL") || has("handshake") ||
                              has("Handshake") || has("failed to connect") ||
                              has("Socket closed"))) {
      return "; with federated.server.tls_ca set the client speaks TLS: if the server is "
             "plaintext (loopback without tls_cert), remove tls_ca; otherwise check that the "
             "server's certificate is signed by that CA and names this address in its "
             "subjectAltName";
    }
    return "";
  }
};

EdgeClient::EdgeClient(EdgeClientOptions options) : impl_(std::make_unique<Impl>()) {
  impl_->o = std::move(options);
  std::shared_ptr<grpc::ChannelCredentials> creds;
  if (!impl_->o.tls_ca.empty()) {
    grpc::SslCredentialsOptions ssl;
    ssl.pem_root_certs = read_file(impl_->o.tls_ca);
    creds = grpc::SslCredentials(ssl);
  } else {
    creds = grpc::InsecureChannelCredentials();
  }
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(static_cast<int>(2 * kChunkBytes + (1 << 20)));
  args.SetMaxSendMessageSize(static_cast<int>(2 * kChunkBytes + (1 << 20)));
  // Reconnect to a restarted server quickly: gRPC's default reconnect
  // backoff grows to two minutes.
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 100);
  args.SetInt(GRPC_ARG_MIN_RECONNECT_BACKOFF_MS, 100);
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS,
              static_cast<int>(std::max<int64_t>(100, impl_->o.max_backoff.count())));
  if (!impl_->o.tls_target_name.empty()) {
    args.SetSslTargetNameOverride(impl_->o.tls_target_name);
  }
  impl_->channel = grpc::CreateCustomChannel(impl_->o.address, creds, args);
  impl_->stub = pb::Federation::NewStub(impl_->channel);
}

EdgeClient::~EdgeClient() = default;

FetchedModel EdgeClient::fetch(int64_t have_version, std::chrono::milliseconds wait) {
  FetchedModel m;
  const grpc::Status s = impl_->with_retries("GetModel", [&](int, std::chrono::milliseconds*) {
    m = FetchedModel{};
    grpc::ClientContext ctx;
    impl_->prepare(ctx, wait);
    pb::GetModelRequest req;
    req.set_client_id(impl_->o.client_id);
    req.set_have_version(static_cast<uint64_t>(std::max<int64_t>(0, have_version)));
    req.set_wait_ms(static_cast<uint32_t>(wait.count()));
    auto reader = impl_->stub->GetModel(&ctx, req);
    pb::ModelChunk chunk;
    if (!reader->Read(&chunk) || !chunk.has_info()) return reader->Finish();
    const pb::ModelInfo& info = chunk.info();
    m.version = static_cast<int64_t>(info.version());
    m.finished = info.finished();
    m.mode = info.config().mode();
    m.round = static_cast<int64_t>(info.config().round());
    m.proximal_mu = info.config().proximal_mu();
    m.local_epochs = info.config().local_epochs();
    m.clip_norm = info.config().clip_norm();
    if (info.config().has_secagg()) {
      const pb::SecAggConfig& a = info.config().secagg();
      SecAggSettings s;
      s.threshold = static_cast<int>(std::min<uint32_t>(a.threshold(), 1u << 20));
      s.neighbours = static_cast<int>(std::min<uint32_t>(a.neighbours(), 1u << 20));
      s.clip_range = a.clip_range();
      s.quant_bits = static_cast<int>(a.quant_bits());
      s.max_samples = static_cast<int64_t>(std::min<uint64_t>(a.max_samples(), uint64_t{1} << 62));
      s.values = static_cast<int64_t>(std::min<uint64_t>(a.values(), uint64_t{1} << 40));
      m.secagg = s;
    }
    TensorAssembler rx(m.version == have_version ? 0 : info.num_tensors(),
                       uint64_t{1} << 40);
    while (reader->Read(&chunk)) {
      if (auto e = rx.add(chunk)) {
        ctx.TryCancel();
        reader->Finish();
        return grpc::Status(grpc::StatusCode::INTERNAL, "bad model stream: " + e->reason);
      }
    }
    grpc::Status st = reader->Finish();
    if (!st.ok()) return st;
    if (auto e = rx.finish()) return grpc::Status(grpc::StatusCode::INTERNAL, "bad model stream: " + e->reason);
    for (const auto& t : rx.tensors()) m.tensors.emplace_back(t.name, decode(t));
    m.changed = !m.tensors.empty();
    return st;
  });
  if (!s.ok()) impl_->fail("GetModel", s);
  return m;
}

std::string EdgeClient::fetch_package(int64_t* version) {
  std::string bytes;
  const grpc::Status s = impl_->with_retries("GetModel", [&](int, std::chrono::milliseconds*) {
    bytes.clear();
    grpc::ClientContext ctx;
    impl_->prepare(ctx, std::chrono::milliseconds(0));
    pb::GetModelRequest req;
    req.set_client_id(impl_->o.client_id);
    req.set_format("strata-int8");
    auto reader = impl_->stub->GetModel(&ctx, req);
    pb::ModelChunk chunk;
    if (!reader->Read(&chunk) || !chunk.has_info()) return reader->Finish();
    const pb::ModelInfo& info = chunk.info();
    *version = static_cast<int64_t>(info.version());
    const uint64_t want = info.package_bytes();
    if (info.format() != "strata-int8" || want == 0 || want > (uint64_t{1} << 32)) {
      ctx.TryCancel();
      reader->Finish();
      return grpc::Status(grpc::StatusCode::INTERNAL,
                          str("bad package stream: format '", info.format(), "', ", want, " bytes"));
    }
    while (reader->Read(&chunk)) {
      if (!chunk.has_data() || bytes.size() + chunk.data().size() > want) {
        ctx.TryCancel();
        reader->Finish();
        return grpc::Status(grpc::StatusCode::INTERNAL,
                            "bad package stream: more than the announced bytes");
      }
      bytes += chunk.data();
    }
    grpc::Status st = reader->Finish();
    if (st.ok() && bytes.size() != want) {
      return grpc::Status(grpc::StatusCode::INTERNAL,
                          str("bad package stream: ", bytes.size(), " of ", want, " bytes"));
    }
    return st;
  });
  if (!s.ok()) impl_->fail("GetModel", s);
  return bytes;
}

SubmitResult EdgeClient::submit(const UpdateToSend& u) {
  std::vector<EncodedTensor> encoded;
  for (const auto& [name, t] : u.tensors) encoded.push_back(encode(name, t, u.encoding));
  return submit_encoded(u, encoded);
}

SubmitResult EdgeClient::submit_encoded(const UpdateToSend& u,
                                        const std::vector<EncodedTensor>& encoded) {
  const int64_t sequence = impl_->next_sequence();
  SubmitResult r;
  const grpc::Status s = impl_->with_retries("SubmitUpdate", [&](int attempt, std::chrono::milliseconds* retry_after) {
    grpc::ClientContext ctx;
    impl_->prepare(ctx);
    pb::SubmitReply reply;
    auto writer = impl_->stub->SubmitUpdate(&ctx, &reply);
    pb::UpdateChunk head;
    pb::UpdateInfo* info = head.mutable_info();
    info->set_client_id(impl_->o.client_id);
    info->set_base_version(static_cast<uint64_t>(u.base_version));
    info->set_num_samples(static_cast<uint64_t>(u.num_samples));
    info->set_sequence(static_cast<uint64_t>(sequence));
    info->set_kind(pb::DELTA);
    info->set_round(static_cast<uint64_t>(u.round));
    info->set_num_tensors(static_cast<uint32_t>(encoded.size()));
    r.bytes_up += static_cast<int64_t>(head.ByteSizeLong());
    for (const EncodedTensor& e : encoded) r.bytes_up += static_cast<int64_t>(payload_bytes(e));
    bool ok = writer->Write(head);
    for (size_t i = 0; ok && i < encoded.size(); ++i) {
      ok = write_encoded<pb::UpdateChunk>(encoded[i], writer.get());
    }
    writer->WritesDone();
    grpc::Status st = writer->Finish();
    const auto& trailer = ctx.GetServerTrailingMetadata();
    if (const auto it = trailer.find(kRetryAfterKey); it != trailer.end()) {
      *retry_after = std::chrono::milliseconds(
          std::strtoll(std::string(it->second.data(), it->second.size()).c_str(), nullptr, 10));
    }
    if (st.ok()) {
      r.accepted = true;
      r.update_id = static_cast<int64_t>(reply.update_id());
      r.current_version = static_cast<int64_t>(reply.current_version());
      r.clipped = reply.clipped();
    } else if (st.error_code() == grpc::StatusCode::ALREADY_EXISTS && attempt > 0) {
      // The earlier attempt was recorded; only its reply was lost.
      r.accepted = true;
      r.duplicate = true;
      return grpc::Status::OK;
    }
    return st;
  });
  if (s.ok()) return r;
  if (transient(s.error_code())) impl_->fail("SubmitUpdate", s);
  r.accepted = false;
  r.code = code_name(s.error_code());
  r.reason = s.error_message();
  return r;
}

namespace {

// A refusal of a SecAgg call: ends this client's part in the round.
struct SecAggRefusal {
  grpc::Status status;
};

}  // namespace

SubmitResult EdgeClient::submit_secagg(int64_t round, const SecAggSettings& st,
                                       const at::Tensor& update, int64_t num_samples,
                                       bool drop_after_input) {
  STRATA_CHECK_T(DataError,
                 update.numel() == st.values && st.quant_bits >= 1 && st.quant_bits <= 31 &&
                     st.clip_range > 0,
                 "secure aggregation: the server's settings do not fit this client's update (",
                 update.numel(), " values; the server says ", st.values, ", ", st.quant_bits,
                 " bits, clip range ", st.clip_range, ")");
  SubmitResult r;
  // One call, asked again while its stage is open (the server answers
  // `pending` after wait_ms); an hour at most for a stage.
  const auto call = [&](pb::SecAggRequest req, const char* what) {
    req.set_client_id(impl_->o.client_id);
    req.set_round(static_cast<uint64_t>(round));
    req.set_wait_ms(30000);
    const auto give_up = std::chrono::steady_clock::now() + std::chrono::hours(1);
    pb::SecAggReply reply;
    for (;;) {
      const grpc::Status s = impl_->with_retries(what, [&](int, std::chrono::milliseconds*) {
        grpc::ClientContext ctx;
        impl_->prepare(ctx, std::chrono::milliseconds(30000));
        const grpc::Status s = impl_->stub->SecAgg(&ctx, req, &reply);
        r.bytes_up += static_cast<int64_t>(req.ByteSizeLong());
        if (s.ok()) r.bytes_down += static_cast<int64_t>(reply.ByteSizeLong());
        return s;
      });
      if (!s.ok()) {
        if (transient(s.error_code())) impl_->fail(what, s);
        throw SecAggRefusal{s};
      }
      if (!reply.pending()) return reply;
      if (std::chrono::steady_clock::now() > give_up) {
        impl_->fail(what, grpc::Status(grpc::StatusCode::DEADLINE_EXCEEDED,
                                       "the stage did not close within an hour"));
      }
    }
  };
  const auto malformed = [&](const std::optional<std::string>& why) {
    if (why) throw DataError(str("secure aggregation: the server's reply is malformed: ", *why));
  };
  secagg::Settings s;
  s.values = st.values;
  s.neighbours = st.neighbours;
  s.clip_range = st.clip_range;
  s.quant_bits = st.quant_bits;
  s.threshold = 2;  // the roster's
  secagg::Client c(s);
  const size_t max_peers = 1u << 20;
  try {
    pb::SecAggRequest req;
    secagg::to_pb(c.advertise(), req.mutable_keys());
    pb::SecAggReply reply = call(req, "SecAgg keys");
    secagg::RosterMsg roster;
    malformed(secagg::from_pb(reply.roster(), max_peers, &roster));

    req = pb::SecAggRequest();
    secagg::to_pb(c.share(roster), req.mutable_shares());
    reply = call(req, "SecAgg shares");
    secagg::InboxMsg inbox;
    malformed(secagg::from_pb(reply.inbox(), max_peers, &inbox));

    const double w = st.max_samples > 0 ? static_cast<double>(std::min(num_samples, st.max_samples)) /
                                              static_cast<double>(st.max_samples)
                                        : 1.0;
    const std::vector<uint32_t> y = c.mask(update.to(at::kFloat) * w, inbox);
    const int64_t sequence = impl_->next_sequence();
    constexpr size_t kPerChunk = kChunkBytes / 4;
    for (size_t at = 0; at < y.size(); at += kPerChunk) {
      const size_t n = std::min(kPerChunk, y.size() - at);
      req = pb::SecAggRequest();
      pb::SecAggInput* in = req.mutable_input();
      in->set_num_samples(static_cast<uint64_t>(num_samples));
      in->set_sequence(static_cast<uint64_t>(sequence));
      in->set_offset(at);
      in->set_data(reinterpret_cast<const char*>(y.data() + at), n * 4);  // little-endian
      call(req, "SecAgg input");
    }
    r.accepted = true;
    if (drop_after_input) return r;

    req = pb::SecAggRequest();
    req.mutable_unmask();
    reply = call(req, "SecAgg unmask");
    secagg::UnmaskMsg fate;
    malformed(secagg::from_pb(reply.fate(), max_peers, &fate));
    req = pb::SecAggRequest();
    secagg::to_pb(c.reveal(fate), req.mutable_reveal());
    call(req, "SecAgg reveal");
  } catch (const SecAggRefusal& e) {
    // After the input is durable the update counts as accepted; a later
    // refusal (the round failed) is reported in `reason`.
    r.code = code_name(e.status.error_code());
    r.reason = e.status.error_message();
  }
  return r;
}

std::string EdgeClient::status() {
  pb::StatusReply reply;
  const grpc::Status s = impl_->with_retries("GetStatus", [&](int, std::chrono::milliseconds*) {
    grpc::ClientContext ctx;
    impl_->prepare(ctx);
    pb::StatusRequest req;
    req.set_client_id(impl_->o.client_id);
    return impl_->stub->GetStatus(&ctx, req, &reply);
  });
  if (!s.ok()) impl_->fail("GetStatus", s);
  // The server's strings are escaped: the reply is as untrusted as any.
  std::string out = str(
      "server_version ", printable(reply.server_version()), "\nmode ", printable(reply.mode()),
      "\nversion ", reply.version(), "\ntarget_versions ", reply.target_versions(),
      "\nround ", reply.round(), "\nbuffered ", reply.buffered_updates(),
      "\nupdates_per_aggregation ", reply.updates_per_aggregation(), "\nfinished ",
      reply.finished() ? "true" : "false", "\nenrolled ", reply.enrolled_clients(),
      "\nclients_seen ", reply.clients_seen(), "\naccepted ", reply.accepted_updates(),
      "\nrejected ", reply.rejected_updates(), "\nauth_failures ", reply.auth_failures(),
      "\nlast_test_accuracy ", format_double(reply.last_test_accuracy()), "\n");
  for (const auto& [k, n] : reply.rejected_by_reason()) {
    out += str("rejected.", printable(k), " ", n, "\n");
  }
  if (reply.has_activity()) {
    const pb::ServiceActivity& a = reply.activity();
    out += str("uploads_started ", a.uploads_started(), "\nuploads_admitted ",
               a.uploads_admitted(), "\npolls_begun ", a.polls_begun(), "\npolls_open ",
               a.polls_open(), "\n");
  }
  return out;
}

}  // namespace strata::fed
