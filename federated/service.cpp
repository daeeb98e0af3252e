#include "federated/service.h"

#include <google/protobuf/stubs/logging.h>
#include <grpc/support/log.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/support/proto_buffer_reader.h>
#include <netdb.h>
#include <openssl/crypto.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <map>
#include <mutex>
#include <thread>

#include "core/error.h"
#include "core/fs.h"
#include "core/logging.h"
#include "core/strings.h"
#include "federated/wire.h"
#include "strata_fed.grpc.pb.h"

namespace strata::fed {
namespace {

namespace pb = ::strata::fed::v1;
using Clock = std::chrono::steady_clock;
constexpr Clock::time_point kNever = Clock::time_point::max();

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

grpc::Status unparseable(const char* what) {
  return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                      str(what, " is not a valid message of strata_fed.proto (string fields "
                                "must be UTF-8)"));
}

// protobuf reports what it could not parse (invalid UTF-8 in a string
// field) on stderr by itself; here those lines go through Strata's log,
// escaped, at debug level: the client already gets INVALID_ARGUMENT.
void protobuf_log(google::protobuf::LogLevel level, const char* file, int line,
                  const std::string& message) {
  if (level >= google::protobuf::LOGLEVEL_FATAL) {
    log_error("protobuf ", file, ":", line, ": ", printable(message, 200));
  } else {
    log_debug("protobuf: ", printable(message, 200));
  }
}

// gRPC's own log lines (a failed TLS handshake: a plaintext client, say)
// go through Strata's log too, escaped and rate-limited (a client can
// provoke them at will).
void grpc_log(gpr_log_func_args* args) {
  static std::mutex mu;
  static Clock::time_point window{};
  static int used = 0;
  {
    std::lock_guard<std::mutex> lock(mu);
    const auto now = Clock::now();
    if (now - window > std::chrono::seconds(10)) {
      window = now;
      used = 0;
    }
    if (++used > 10) return;
  }
  const std::string what = str("gRPC: ", printable(args->message ? args->message : "", 300));
  if (args->severity == GPR_LOG_SEVERITY_ERROR) {
    log_warn(what);
  } else {
    log_debug(what);
  }
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

// At most `burst` lines per `window`; what was held back is counted in the
// next line that gets through (auth failures can come in floods).
class LogBudget {
 public:
  LogBudget(int burst, std::chrono::seconds window) : burst_(burst), window_(window) {}
  // True when a line may be printed now; `suppressed` gets how many were
  // held back since the last one.
  bool allow(int64_t* suppressed) {
    std::lock_guard<std::mutex> lock(mu_);
    const auto now = Clock::now();
    if (now - start_ >= window_) {
      start_ = now;
      used_ = 0;
    }
    if (used_ >= burst_) {
      ++held_;
      return false;
    }
    ++used_;
    *suppressed = held_;
    held_ = 0;
    return true;
  }

 private:
  std::mutex mu_;
  const int burst_;
  const std::chrono::seconds window_;
  Clock::time_point start_{};
  int used_ = 0;
  int64_t held_ = 0;
};

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
  c->set_max_update_bytes(static_cast<uint64_t>(f.server.max_message_mb) << 20);
  c->set_max_chunk_bytes(kMaxChunkBytes);
  c->set_max_num_samples(static_cast<uint64_t>(f.server.max_num_samples));
  c->set_norm_bound(f.server.norm_bound);
}

class FederationService;

// Note [Callback service]: the service runs on gRPC's callback API, so a
// call holds no thread while it waits -- for a client's next chunk, for an
// ingest slot, or (a long poll) for news. What a hostile client can hold
// open is bounded per client (max_uploads_per_client,
// max_polls_per_client) and in time (first_message_timeout_s,
// stream_idle_timeout_s, wait_ms <= 60 s), and costs memory, not threads.
// The threads are gRPC's own executor (reactions, which never block), one
// watchdog (deadlines, long polls, shutdown) and max_inflight_updates
// workers that run FedServer::submit (it validates and fsyncs): a
// strata-fedserver has the same number of threads whatever is open (16
// idle and 19 under a flood of 700 hostile calls on 2 cores, measured by
// fed_flood_test, which holds it to at most 64).
//
// A reactor is owned by a shared_ptr it holds on itself until gRPC calls
// OnDone; the service refers to it by weak_ptr. finish() ends the call
// exactly once, whoever calls it (a reaction, the watchdog, a worker,
// shutdown), and releases what the call held.

// SubmitUpdate: info, admission, the tensors, then a worker submits.
class Upload final : public grpc::ServerReadReactor<grpc::ByteBuffer>,
                     public std::enable_shared_from_this<Upload> {
 public:
  enum class Phase { kInfo, kWaiting, kTensors, kSubmitting, kDone };

  Upload(FederationService& s, grpc::CallbackServerContext* ctx, grpc::ByteBuffer* reply)
      : s_(s), ctx_(ctx), reply_(reply) {}

  void start();
  void OnReadDone(bool ok) override;
  void OnCancel() override;
  void OnDone() override {
    const auto keep = std::move(self_);  // may be the last reference
  }

  // From the service.
  bool admitted();                       // a slot was granted: read the tensors
  void expire(Clock::time_point now);    // the watchdog: deadlines
  void submit();                         // a worker
  bool finish(const grpc::Status& s, const pb::SubmitReply* reply = nullptr);
  void reject(const Rejection& r);       // counts, logs, finishes
  Phase phase() {
    std::lock_guard<std::mutex> lock(mu_);
    return phase_;
  }

  // Set by the service under its lock: what finish() gives back.
  std::string client;         // validated client id (after authentication)
  bool counted = false;       // in the per-client upload count
  bool holds_slot = false;

 private:
  void on_info(const pb::UpdateInfo& info);
  void read_tensors_locked();

  FederationService& s_;
  grpc::CallbackServerContext* ctx_;
  grpc::ByteBuffer* reply_;
  std::shared_ptr<Upload> self_;
  std::mutex mu_;
  Phase phase_ = Phase::kInfo;
  Clock::time_point deadline_ = kNever;
  Clock::time_point last_chunk_{};  // kTensors: when the last chunk arrived
  grpc::ByteBuffer buf_;
  pb::UpdateInfo info_;
  std::unique_ptr<UpdateReceiver> rx_;
  int64_t chunks_ = 0;
};

// GetModel: answered at once, or (a long poll) when there is news, its
// wait_ms passed, or the server stops.
class Poll final : public grpc::ServerWriteReactor<grpc::ByteBuffer>,
                   public std::enable_shared_from_this<Poll> {
 public:
  Poll(FederationService& s, grpc::CallbackServerContext* ctx) : s_(s), ctx_(ctx) {}

  void start(const grpc::ByteBuffer& request);
  void OnWriteDone(bool ok) override;
  void OnCancel() override { finish(grpc::Status(grpc::StatusCode::CANCELLED, "client went away")); }
  void OnDone() override {
    const auto keep = std::move(self_);
  }
  // The watchdog: answers when there is news (`changed`), at the deadline,
  // or at shutdown. False once the call has ended.
  bool check(bool changed, Clock::time_point now, bool stopping);
  bool finish(const grpc::Status& s);

  std::string client;
  bool counted = false;  // in the per-client poll count

 private:
  void answer(const ModelView& v);
  void write_next_locked();

  FederationService& s_;
  grpc::CallbackServerContext* ctx_;
  std::shared_ptr<Poll> self_;
  std::mutex mu_;
  bool waiting_ = false, done_ = false;
  bool seen_ = false;  // the watchdog has checked it once
  uint64_t have_ = 0;
  Clock::time_point deadline_ = kNever;
  grpc::ByteBuffer info_, cur_;
  std::shared_ptr<const std::vector<grpc::ByteBuffer>> model_;
  size_t next_ = 0;  // 0: info, then model_[next_ - 1]
};

class FederationService final
    : public pb::Federation::WithRawCallbackMethod_GetModel<
          pb::Federation::WithRawCallbackMethod_SubmitUpdate<
              pb::Federation::WithRawCallbackMethod_GetStatus<pb::Federation::Service>>> {
 public:
  FederationService(FedServer& core, std::string operator_token)
      : core_(core),
        cfg_(core.recipe().federated.server),
        operator_token_(std::move(operator_token)),
        free_slots_(cfg_.max_inflight_updates) {
    watchdog_ = std::thread([this] { watch(); });
    for (int64_t i = 0; i < cfg_.max_inflight_updates; ++i) {
      workers_.emplace_back([this] { work(); });
    }
  }
  ~FederationService() override { join(); }

  // ---- the three methods --------------------------------------------

  grpc::ServerReadReactor<grpc::ByteBuffer>* SubmitUpdate(grpc::CallbackServerContext* ctx,
                                                          grpc::ByteBuffer* reply) override {
    auto u = std::make_shared<Upload>(*this, ctx, reply);
    u->start();
    return u.get();
  }

  grpc::ServerWriteReactor<grpc::ByteBuffer>* GetModel(grpc::CallbackServerContext* ctx,
                                                       const grpc::ByteBuffer* request) override {
    auto p = std::make_shared<Poll>(*this, ctx);
    p->start(*request);
    return p.get();
  }

  grpc::ServerUnaryReactor* GetStatus(grpc::CallbackServerContext* ctx,
                                      const grpc::ByteBuffer* request,
                                      grpc::ByteBuffer* response) override {
    grpc::ServerUnaryReactor* r = ctx->DefaultReactor();
    pb::StatusRequest req;
    if (!parse(*request, &req)) {
      r->Finish(unparseable("the StatusRequest"));
      return r;
    }
    const std::string token = bearer_token(*ctx);
    const bool op = !operator_token_.empty() && token.size() == operator_token_.size() &&
                    CRYPTO_memcmp(token.data(), operator_token_.data(), token.size()) == 0;
    if (!op) {
      if (auto rej = authenticate(*ctx, req.client_id(), "GetStatus")) {
        r->Finish(to_status(*rej));
        return r;
      }
    }
    const ServerStatus s = core_.status();
    pb::StatusReply reply;
    reply.set_version(static_cast<uint64_t>(s.version));
    reply.set_mode(s.mode);
    reply.set_round(static_cast<uint64_t>(s.round));
    reply.set_buffered_updates(static_cast<uint32_t>(s.buffered));
    reply.set_accepted_updates(static_cast<uint64_t>(s.accepted));
    reply.set_rejected_updates(static_cast<uint64_t>(s.rejected));
    for (const auto& [k, n] : s.rejected_by_reason) {
      (*reply.mutable_rejected_by_reason())[k] = static_cast<uint64_t>(n);
    }
    reply.set_last_test_accuracy(s.last_test_accuracy);
    reply.set_enrolled_clients(static_cast<uint64_t>(s.enrolled_clients));
    reply.set_auth_failures(static_cast<uint64_t>(s.auth_failures));
    reply.set_clients_seen(static_cast<uint64_t>(s.clients_seen));
    reply.set_target_versions(static_cast<uint64_t>(s.target_versions));
    reply.set_finished(s.finished);
    reply.set_updates_per_aggregation(static_cast<uint32_t>(s.updates_per_aggregation));
    reply.set_server_version(s.server_version);
    *response = serialize(reply);
    r->Finish(grpc::Status::OK);
    return r;
  }

  // ---- for the reactors ---------------------------------------------

  FedServer& core() { return core_; }
  const FedServerSection& cfg() const { return cfg_; }

  // Validates the id and the token; a refusal is counted (as an auth
  // failure for fetches and status calls: the caller counts refused
  // updates) and logged, rate-limited, with the client and its peer.
  std::optional<Rejection> authenticate(const grpc::CallbackServerContext& ctx,
                                        const std::string& client_id, const char* call) {
    std::optional<Rejection> r;
    if (!valid_client_id(client_id)) {
      r = Rejection{RejectCode::kUnauthenticated, "auth",
                    str("client_id ", quote(client_id, 64), " is not a client id (1-64 letters, "
                        "digits, '_', '-', '.')")};
    } else {
      r = core_.authenticate(client_id, bearer_token(ctx));
    }
    if (!r) return r;
    if (std::strcmp(call, "SubmitUpdate") != 0) core_.count_auth_failure();
    int64_t held = 0;
    if (auth_log_.allow(&held)) {
      log_warn("refused a ", call, " for client ", quote(client_id, 64), " at ",
               quote(ctx.peer()), ": UNAUTHENTICATED (not enrolled, revoked or wrong token)",
               held ? str(" (", held, " more auth failures not logged)") : "");
    }
    return r;
  }

  // Counts and logs a refused update (the core counts what it refuses
  // itself); flow control (busy) is logged at debug level only.
  void log_rejection(const Rejection& r, const std::string& client,
                     const grpc::CallbackServerContext& ctx) {
    core_.count_rejection(r);
    if (r.key == "auth") return;  // authenticate() logged it, rate-limited
    const std::string what =
        str("rejected an update from ", client.empty() ? "an unidentified client" : quote(client),
            " at ", quote(ctx.peer()), ": ", reject_code_name(r.code), " (", r.key, ") ",
            r.reason);
    if (r.key == "busy" || r.key == "busy_client" || r.key == "stopping") {
      log_debug(what);
    } else {
      log_warn(what);
    }
  }

  enum class Admit { kGranted, kQueued, kBusy, kBusyClient, kStopping };

  // Note [Bounded ingest]: an update is held in memory from its first data
  // chunk until it is durable and buffered, as one flat vector that its
  // chunks are copied into (wire.h's UpdateReceiver). At most
  // max_inflight_updates are received at once; at most max_waiting_updates
  // senders wait for a turn (holding no thread: their streams are not read,
  // so each parks at most one HTTP/2 stream window,
  // federated.server.stream_window_kb); a client has at most
  // max_uploads_per_client uploads open; every further sender is answered
  // UNAVAILABLE ("busy") at once, before its tensors are read, and retries
  // with backoff (EdgeClient does). While senders wait, an upload that
  // sent nothing for contended_idle_timeout_s loses its slot, so stalled
  // streams of several hostile clients cannot hold every slot for
  // stream_idle_timeout_s. The model a client fetches is encoded
  // once per version and shared by every GetModel. So the server's memory is
  // bounded by its configuration -- (buffer + in-flight) updates, (in-flight
  // + waiting) windows, a model or two -- and not by the number of clients.
  Admit admit(const std::shared_ptr<Upload>& u, const std::string& client) {
    std::lock_guard<std::mutex> lock(mu_);
    if (stopping_) return Admit::kStopping;
    int64_t& open = uploads_per_client_[client];
    if (open >= cfg_.max_uploads_per_client) return Admit::kBusyClient;
    if (free_slots_ == 0 && static_cast<int64_t>(waiting_.size()) >= cfg_.max_waiting_updates) {
      return Admit::kBusy;
    }
    ++open;
    u->client = client;
    u->counted = true;
    if (free_slots_ > 0) {
      --free_slots_;
      u->holds_slot = true;
      return Admit::kGranted;
    }
    waiting_.push_back(u);
    return Admit::kQueued;
  }

  // What an ending upload held: its slot goes to the next waiting sender.
  void release(Upload& u) {
    std::vector<std::shared_ptr<Upload>> grant;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (u.counted) {
        u.counted = false;
        if (--uploads_per_client_[u.client] <= 0) uploads_per_client_.erase(u.client);
      }
      if (!u.holds_slot) return;
      u.holds_slot = false;
      ++free_slots_;
      // Hand the slot on; waiters that ended meanwhile are skipped.
      while (free_slots_ > 0 && !waiting_.empty()) {
        auto next = waiting_.front().lock();
        waiting_.pop_front();
        if (!next || next->phase() != Upload::Phase::kWaiting) continue;
        --free_slots_;
        next->holds_slot = true;
        grant.push_back(std::move(next));
      }
    }
    for (auto& g : grant) {
      if (!g->admitted()) release(*g);
    }
  }

  // Every upload is watched from its start (first-message deadline).
  void watch(const std::shared_ptr<Upload>& u) {
    std::lock_guard<std::mutex> lock(mu_);
    uploads_.push_back(u);
  }

  // Senders are waiting for an ingest slot.
  bool contended() {
    std::lock_guard<std::mutex> lock(mu_);
    for (const auto& w : waiting_) {
      if (auto u = w.lock(); u && u->phase() == Upload::Phase::kWaiting) return true;
    }
    return false;
  }

  bool begin_poll(const std::shared_ptr<Poll>& p, const std::string& client) {
    std::lock_guard<std::mutex> lock(mu_);
    if (stopping_) return false;
    int64_t& open = polls_per_client_[client];
    if (open >= cfg_.max_polls_per_client) return false;
    ++open;
    p->client = client;
    p->counted = true;
    polls_.push_back(p);
    return true;
  }

  void end_poll(Poll& p) {
    std::lock_guard<std::mutex> lock(mu_);
    if (!p.counted) return;
    p.counted = false;
    if (--polls_per_client_[p.client] <= 0) polls_per_client_.erase(p.client);
  }

  void enqueue_submit(std::shared_ptr<Upload> u) {
    {
      std::lock_guard<std::mutex> lock(work_mu_);
      work_.push_back(std::move(u));
    }
    work_cv_.notify_one();
  }

  // The model of view `v` for the wire, built once per version: the tensor
  // headers and data chunks, serialized.
  std::shared_ptr<const std::vector<grpc::ByteBuffer>> encoded(const ModelView& v) {
    std::lock_guard<std::mutex> lock(cache_mu_);
    if (cached_version_ != v.version) {
      auto out = std::make_shared<std::vector<grpc::ByteBuffer>>();
      struct Collect {
        std::vector<grpc::ByteBuffer>* out;
        bool Write(const pb::ModelChunk& c) {
          out->push_back(serialize(c));
          return true;
        }
      } collect{out.get()};
      for (const auto& [name, t] : core_.layout().unflatten(*v.flat)) {
        write_encoded<pb::ModelChunk>(encode(name, t, {Encoding::kFp32}), &collect);
      }
      cached_ = std::move(out);
      cached_version_ = v.version;
    }
    return cached_;
  }

  // Ends waiting senders and long polls and stops taking new ones; the
  // first step of a shutdown (GrpcService::shutdown).
  void stop() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stopping_ = true;
    }
    wake_.notify_all();
  }

  void join() {
    stop();
    {
      std::lock_guard<std::mutex> lock(work_mu_);
      work_stop_ = true;
    }
    work_cv_.notify_all();
    if (watchdog_.joinable()) watchdog_.join();
    for (auto& w : workers_) {
      if (w.joinable()) w.join();
    }
  }

 private:
  // Deadlines, long polls and shutdown, every 50 ms at the latest and at
  // once when the core's state changes.
  void watch() {
    uint64_t epoch = core_.wait_change(0, std::chrono::milliseconds(0));
    std::optional<Clock::time_point> stopped;
    for (;;) {
      const uint64_t now_epoch = core_.wait_change(epoch, std::chrono::milliseconds(50));
      const bool changed = now_epoch != epoch;
      epoch = now_epoch;
      std::vector<std::shared_ptr<Upload>> uploads;
      std::vector<std::shared_ptr<Poll>> polls;
      bool stopping;
      {
        std::unique_lock<std::mutex> lock(mu_);
        stopping = stopping_;
        prune(uploads_, &uploads);
        prune(polls_, &polls);
      }
      const auto now = Clock::now();
      for (auto& u : uploads) {
        if (stopping && u->phase() != Upload::Phase::kSubmitting) {
          u->reject({RejectCode::kUnavailable, "stopping", "the server is shutting down; retry later"});
        } else {
          u->expire(now);
        }
      }
      for (auto& p : polls) p->check(changed, now, stopping);
      if (stopping) {
        // Done once every call ended, or after 5 s whatever is left (gRPC's
        // Shutdown cancels those).
        if (!stopped) stopped = now;
        std::lock_guard<std::mutex> lock(mu_);
        if ((uploads_.empty() && polls_.empty()) || now - *stopped > std::chrono::seconds(5)) return;
      }
    }
  }

  // The live entries of `list` into `out`; ended ones are dropped.
  template <class T>
  static void prune(std::vector<std::weak_ptr<T>>& list, std::vector<std::shared_ptr<T>>* out) {
    std::vector<std::weak_ptr<T>> keep;
    for (auto& w : list) {
      if (auto p = w.lock()) {
        keep.push_back(w);
        out->push_back(std::move(p));
      }
    }
    list.swap(keep);
  }

  void work() {
    for (;;) {
      std::shared_ptr<Upload> u;
      {
        std::unique_lock<std::mutex> lock(work_mu_);
        work_cv_.wait(lock, [&] { return work_stop_ || !work_.empty(); });
        if (work_.empty()) return;
        u = std::move(work_.front());
        work_.pop_front();
      }
      u->submit();
    }
  }

  FedServer& core_;
  const FedServerSection cfg_;
  const std::string operator_token_;
  LogBudget auth_log_{10, std::chrono::seconds(10)};

  std::mutex mu_;
  std::condition_variable wake_;
  bool stopping_ = false;
  int64_t free_slots_;
  std::deque<std::weak_ptr<Upload>> waiting_;
  std::map<std::string, int64_t> uploads_per_client_, polls_per_client_;
  std::vector<std::weak_ptr<Upload>> uploads_;  // every open upload (the watchdog's)
  std::vector<std::weak_ptr<Poll>> polls_;      // every waiting long poll

  std::mutex work_mu_;
  std::condition_variable work_cv_;
  std::deque<std::shared_ptr<Upload>> work_;
  bool work_stop_ = false;

  std::mutex cache_mu_;
  int64_t cached_version_ = -1;
  std::shared_ptr<const std::vector<grpc::ByteBuffer>> cached_;

  std::thread watchdog_;
  std::vector<std::thread> workers_;
};

// ---- Upload ------------------------------------------------------------

void Upload::start() {
  self_ = shared_from_this();
  s_.watch(self_);
  std::lock_guard<std::mutex> lock(mu_);
  deadline_ = Clock::now() + std::chrono::milliseconds(
                                 static_cast<int64_t>(s_.cfg().first_message_timeout_s * 1000));
  StartRead(&buf_);
}

bool Upload::finish(const grpc::Status& status, const pb::SubmitReply* reply) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (phase_ == Phase::kDone) return false;
    phase_ = Phase::kDone;
    // The reply is written before Finish: gRPC owns reply_ only until then.
    if (reply) *reply_ = serialize(*reply);
  }
  s_.release(*this);
  Finish(status);
  return true;
}

void Upload::reject(const Rejection& r) {
  if (phase() == Phase::kDone) return;
  if (r.key == "busy" || r.key == "busy_client") {
    ctx_->AddTrailingMetadata(kRetryAfterKey, std::to_string(kBusyRetryAfterMs));
  }
  s_.log_rejection(r, client, *ctx_);
  finish(to_status(r));
}

void Upload::OnCancel() {
  // An update being submitted is finished by its worker (it may already be
  // durable, and its memory is held until then).
  if (phase() == Phase::kSubmitting) return;
  finish(grpc::Status(grpc::StatusCode::CANCELLED, "client went away"));
}

void Upload::OnReadDone(bool ok) {
  std::unique_lock<std::mutex> lock(mu_);
  if (phase_ == Phase::kDone) return;
  if (!ok) {
    // The client half-closed, or the call ended.
    const Phase phase = phase_;
    lock.unlock();
    if (ctx_->IsCancelled()) {
      finish(grpc::Status(grpc::StatusCode::CANCELLED, "client went away"));
    } else if (phase == Phase::kInfo) {
      reject({RejectCode::kInvalidArgument, "malformed",
              "the stream ended before its first chunk (the UpdateInfo)"});
    } else if (phase == Phase::kTensors) {
      if (auto e = rx_->finish()) {
        reject(wire_rejection(*e));
        return;
      }
      lock.lock();
      if (phase_ != Phase::kTensors) return;
      phase_ = Phase::kSubmitting;
      deadline_ = kNever;
      lock.unlock();
      s_.enqueue_submit(shared_from_this());
    }
    return;
  }
  ++chunks_;
  pb::UpdateChunk chunk;
  const bool parsed = parse(buf_, &chunk);
  buf_.Clear();
  if (!parsed) {
    lock.unlock();
    reject({RejectCode::kInvalidArgument, "malformed",
            str("chunk ", chunks_, " of the stream is not a valid UpdateChunk (strata_fed.proto; "
                "string fields must be UTF-8)")});
    return;
  }
  if (phase_ == Phase::kInfo) {
    lock.unlock();
    if (chunk.part_case() != pb::UpdateChunk::kInfo) {
      reject({RejectCode::kInvalidArgument, "malformed",
              "the first chunk of an update must carry its info"});
      return;
    }
    on_info(chunk.info());
    return;
  }
  STRATA_INTERNAL_ASSERT(phase_ == Phase::kTensors, "a read in phase ", static_cast<int>(phase_));
  if (auto e = rx_->add(chunk)) {
    lock.unlock();
    reject(wire_rejection(*e));
    return;
  }
  last_chunk_ = Clock::now();
  deadline_ = last_chunk_ + std::chrono::milliseconds(
                                static_cast<int64_t>(s_.cfg().stream_idle_timeout_s * 1000));
  StartRead(&buf_);
}

void Upload::on_info(const pb::UpdateInfo& info) {
  if (auto r = s_.authenticate(*ctx_, info.client_id(), "SubmitUpdate")) {
    client = info.client_id();  // for the log line (escaped and cut there)
    reject(*r);
    return;
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (phase_ != Phase::kInfo) return;
    info_ = info;
    deadline_ = kNever;
    phase_ = Phase::kWaiting;  // until admit() says otherwise
  }
  const FedServerSection& cfg = s_.cfg();
  switch (s_.admit(shared_from_this(), info.client_id())) {
    case FederationService::Admit::kGranted: {
      std::lock_guard<std::mutex> lock(mu_);
      if (phase_ == Phase::kWaiting) read_tensors_locked();
      return;
    }
    case FederationService::Admit::kQueued:
      return;
    case FederationService::Admit::kStopping:
      reject({RejectCode::kUnavailable, "stopping", "the server is shutting down; retry later"});
      return;
    case FederationService::Admit::kBusyClient:
      client = info.client_id();
      reject({RejectCode::kUnavailable, "busy_client",
              str("client ", quote(info.client_id()), " already has ",
                  cfg.max_uploads_per_client, " upload(s) open "
                  "(federated.server.max_uploads_per_client); retry with backoff")});
      return;
    case FederationService::Admit::kBusy:
      client = info.client_id();
      reject({RejectCode::kUnavailable, "busy",
              str("the server is busy: ", cfg.max_inflight_updates,
                  " updates are being received and ", cfg.max_waiting_updates,
                  " senders wait (federated.server.max_inflight_updates, "
                  "max_waiting_updates); retry with backoff")});
      return;
  }
}

bool Upload::admitted() {
  std::lock_guard<std::mutex> lock(mu_);
  if (phase_ != Phase::kWaiting) return false;
  read_tensors_locked();
  return true;
}

void Upload::read_tensors_locked() {
  phase_ = Phase::kTensors;
  const uint64_t limit = static_cast<uint64_t>(s_.cfg().max_message_mb) << 20;
  rx_ = std::make_unique<UpdateReceiver>(s_.core().layout(), info_.num_tensors(), limit);
  last_chunk_ = Clock::now();
  deadline_ = last_chunk_ + std::chrono::milliseconds(
                                static_cast<int64_t>(s_.cfg().stream_idle_timeout_s * 1000));
  StartRead(&buf_);
}

void Upload::expire(Clock::time_point now) {
  const FedServerSection& cfg = s_.cfg();
  Phase phase;
  bool contended_stall = false;
  {
    std::lock_guard<std::mutex> lock(mu_);
    phase = phase_;
    contended_stall = phase == Phase::kTensors &&
                      now - last_chunk_ >= std::chrono::duration<double>(cfg.contended_idle_timeout_s);
    if (now < deadline_ && !contended_stall) return;
  }
  if (now < deadline_ && contended_stall) {
    if (!s_.contended()) return;
    reject({RejectCode::kInvalidArgument, "idle",
            str("no chunk for ", format_double(cfg.contended_idle_timeout_s),
                " s while other senders waited for a slot "
                "(federated.server.contended_idle_timeout_s); the upload was ended")});
    return;
  }
  if (phase == Phase::kInfo) {
    // Not counted as a refused update: nobody has said who they are.
    log_debug("ended an upload from ", quote(ctx_->peer()), " that sent no first chunk in ",
              format_double(cfg.first_message_timeout_s), " s");
    finish(grpc::Status(grpc::StatusCode::DEADLINE_EXCEEDED,
                        str("no first chunk within ", format_double(cfg.first_message_timeout_s),
                            " s (federated.server.first_message_timeout_s)")));
  } else if (phase == Phase::kTensors) {
    reject({RejectCode::kInvalidArgument, "idle",
            str("no chunk for ", format_double(cfg.stream_idle_timeout_s),
                " s (federated.server.stream_idle_timeout_s); the upload was ended")});
  }
}

void Upload::submit() {
  SubmitMeta m;
  m.client_id = info_.client_id();
  m.base_version = info_.base_version();
  m.num_samples = info_.num_samples();
  m.sequence = info_.sequence();
  m.round = info_.round();
  m.is_gradient = info_.kind() == pb::GRADIENT;
  m.learning_rate = info_.learning_rate();
  m.peer = ctx_->peer();
  SubmitOutcome o;
  try {
    o = s_.core().submit(m, rx_->take());
  } catch (const std::exception& e) {
    log_error("submitting an update from ", quote(m.client_id), " failed: ", e.what());
    finish(grpc::Status(grpc::StatusCode::INTERNAL, "the server could not store the update"));
    return;
  }
  rx_.reset();
  if (o.rejection) {
    // FedServer::submit counted and logged it.
    if (o.rejection->code == RejectCode::kUnavailable) {
      ctx_->AddTrailingMetadata(kRetryAfterKey, std::to_string(kBusyRetryAfterMs));
    }
    finish(to_status(*o.rejection));
    return;
  }
  pb::SubmitReply reply;
  reply.set_update_id(static_cast<uint64_t>(o.update_id));
  reply.set_current_version(static_cast<uint64_t>(o.current_version));
  reply.set_staleness(static_cast<uint64_t>(o.staleness));
  reply.set_weight(o.weight);
  reply.set_clipped(o.clipped);
  finish(grpc::Status::OK, &reply);
}

// ---- Poll ----------------------------------------------------------------

void Poll::start(const grpc::ByteBuffer& request) {
  self_ = shared_from_this();
  pb::GetModelRequest req;
  if (!parse(request, &req)) {
    finish(unparseable("the GetModelRequest"));
    return;
  }
  if (auto r = s_.authenticate(*ctx_, req.client_id(), "GetModel")) {
    finish(to_status(*r));
    return;
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    have_ = req.have_version();
    client = req.client_id();
  }
  FedServer& core = s_.core();
  core.check_in(req.client_id());
  if (auto v = core.model_if_ready(req.client_id(), req.have_version())) {
    answer(*v);
    return;
  }
  const auto wait = std::chrono::milliseconds(std::min<uint32_t>(req.wait_ms(), 60000));
  if (wait.count() == 0) {
    answer(core.model_view(req.client_id()));
    return;
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    deadline_ = Clock::now() + wait;
    waiting_ = true;
  }
  if (!s_.begin_poll(shared_from_this(), req.client_id())) {
    ctx_->AddTrailingMetadata(kRetryAfterKey, std::to_string(kBusyRetryAfterMs));
    finish(grpc::Status(grpc::StatusCode::UNAVAILABLE,
                        str("client ", quote(req.client_id()), " already has ",
                            s_.cfg().max_polls_per_client, " long poll(s) open "
                            "(federated.server.max_polls_per_client), or the server is "
                            "shutting down; retry with backoff")));
  }
  // The watchdog answers from here on (at once if news came meanwhile: it
  // checks a poll it has not seen before).
}

bool Poll::check(bool changed, Clock::time_point now, bool stopping) {
  std::optional<ModelView> v;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (done_) return false;
    if (!waiting_) return true;
    if (stopping) {
      waiting_ = false;
    } else {
      const bool fresh = !seen_;
      seen_ = true;
      if (!(changed || fresh) && now < deadline_) return true;
    }
  }
  FedServer& core = s_.core();
  if (stopping) {
    // A client waiting when training finished learns that it did (and
    // stops); any other is told to come back.
    const ModelView now_view = core.model_view(client);
    if (now_view.finished) {
      s_.end_poll(*this);
      answer(now_view);
      return true;
    }
    finish(grpc::Status(grpc::StatusCode::UNAVAILABLE, "the server is shutting down; retry later"));
    return false;
  }
  v = core.model_if_ready(client, have_);
  if (!v && now >= deadline_) v = core.model_view(client);
  if (!v) return true;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (done_ || !waiting_) return !done_;
    waiting_ = false;
  }
  s_.end_poll(*this);
  answer(*v);
  return true;
}

void Poll::answer(const ModelView& v) {
  pb::ModelChunk info;
  fill_model_info(s_.core(), v, info.mutable_info());
  std::shared_ptr<const std::vector<grpc::ByteBuffer>> model;
  // The tensors go whenever the version is not the client's.
  if (static_cast<uint64_t>(v.version) != have_) model = s_.encoded(v);
  std::lock_guard<std::mutex> lock(mu_);
  if (done_) return;
  info_ = serialize(info);
  model_ = std::move(model);
  next_ = 0;
  write_next_locked();
}

void Poll::write_next_locked() {
  if (next_ == 0) {
    ++next_;
    StartWrite(&info_);
    return;
  }
  if (!model_ || next_ - 1 >= model_->size()) {
    done_ = true;
    model_.reset();
    Finish(grpc::Status::OK);
    return;
  }
  cur_ = (*model_)[next_ - 1];
  ++next_;
  StartWrite(&cur_);
}

void Poll::OnWriteDone(bool ok) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (done_) return;
    if (ok) {
      write_next_locked();
      return;
    }
  }
  finish(grpc::Status(grpc::StatusCode::CANCELLED, "client went away"));
}

bool Poll::finish(const grpc::Status& status) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (done_) return false;
    done_ = true;
    waiting_ = false;
  }
  s_.end_poll(*this);
  Finish(status);
  return true;
}

// ---- the server --------------------------------------------------------

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

class GrpcService final : public RunningService {
 public:
  GrpcService(FedServer& core, std::string operator_token)
      : core_(core), service_(core, std::move(operator_token)) {
    static std::once_flag once;
    std::call_once(once, [] {
      google::protobuf::SetLogHandler(&protobuf_log);
      gpr_set_log_function(&grpc_log);
    });
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
    // One server per address: gRPC would otherwise set SO_REUSEPORT, and a
    // second server on the same port would take about half the connections.
    b.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
    b.SetMaxReceiveMessageSize(static_cast<int>(kMaxChunkBytes));
    b.SetMaxSendMessageSize(static_cast<int>(kMaxChunkBytes));
    if (cfg.stream_window_kb > 0) {
      // Note [Bounded ingest]: a fixed window instead of BDP-grown ones
      // (up to 4-16 MiB per stream), so a waiting sender parks at most this.
      b.AddChannelArgument(GRPC_ARG_HTTP2_BDP_PROBE, 0);
      b.AddChannelArgument(GRPC_ARG_HTTP2_STREAM_LOOKAHEAD_BYTES,
                           static_cast<int>(cfg.stream_window_kb * 1024));
    }
    server_ = b.BuildAndStart();
    if (server_ == nullptr || port_ <= 0) {
      service_.join();
      throw IoError(str("cannot serve on ", cfg.address, ": ", bind_error(cfg.address)));
    }
    log_info("serving federated protocol v1 on ", cfg.address.substr(0, cfg.address.rfind(':')),
             ":", port_, cfg.tls_cert.empty() ? " (plaintext, loopback)" : " (TLS)");
  }
  ~GrpcService() override { shutdown(); }
  int port() const override { return port_; }
  void shutdown() override {
    if (!server_) return;
    // Waiting senders and long polls are answered at once, updates in
    // flight get 2 s, then gRPC cancels whatever is left.
    service_.stop();
    core_.stop_serving();
    server_->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(2));
    service_.join();
    server_.reset();
  }

 private:
  FedServer& core_;
  FederationService service_;
  std::unique_ptr<grpc::Server> server_;
  int port_ = 0;
};

}  // namespace

std::unique_ptr<RunningService> serve(FedServer& core, const std::string& operator_token) {
  return std::make_unique<GrpcService>(core, operator_token);
}

}  // namespace strata::fed
