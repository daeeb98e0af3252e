// The federated service's calls as gRPC callback reactors (Note [Callback
// service]): Upload (SubmitUpdate), Poll (GetModel) and the service that
// admits, watches and submits them. Internal to service.cpp and
// service_calls.cpp.
#pragma once

#include <grpcpp/grpcpp.h>
#include <openssl/crypto.h>

#include <chrono>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "core/error.h"
#include "core/logging.h"
#include "core/strings.h"
#include "federated/rpc.h"
#include "federated/server.h"
#include "federated/server_store.h"
#include "federated/service.h"
#include "federated/wire.h"
#include "strata_fed.grpc.pb.h"

namespace strata::fed::service_detail {

namespace pb = ::strata::fed::v1;
using Clock = std::chrono::steady_clock;
constexpr Clock::time_point kNever = Clock::time_point::max();
using rpc::bearer_token;
using rpc::LogBudget;
using rpc::parse;
using rpc::serialize;
using rpc::to_status;
using rpc::unparseable;
using rpc::wire_rejection;

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
  // The watchdog: deadlines (`contended`: senders wait for a slot).
  void expire(Clock::time_point now, bool contended);
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
  bool package_ = false;  // format strata-int8
  Clock::time_point deadline_ = kNever;
  grpc::ByteBuffer info_, cur_;
  std::shared_ptr<const std::vector<grpc::ByteBuffer>> model_;
  size_t next_ = 0;  // 0: info, then model_[next_ - 1]
};

// SecAgg: parsed and authenticated in the reaction, applied on a worker
// (the chunk that completes a masked input is written durably), then
// answered at once, or -- while its stage is open -- when the stage closes
// (the watchdog asks the core again whenever its state changes), at wait_ms,
// or at shutdown. A client has at most max_polls_per_client of them open.
class StageCall final : public grpc::ServerUnaryReactor,
                        public std::enable_shared_from_this<StageCall> {
 public:
  StageCall(FederationService& s, grpc::CallbackServerContext* ctx, grpc::ByteBuffer* response)
      : s_(s), ctx_(ctx), response_(response) {}

  void start(const grpc::ByteBuffer& request);
  void apply();  // a worker
  void OnCancel() override { finish(grpc::Status(grpc::StatusCode::CANCELLED, "client went away")); }
  void OnDone() override {
    const auto keep = std::move(self_);
  }
  // The watchdog: answers once the stage closed, at the deadline or at
  // shutdown. False once the call has ended.
  bool check(bool changed, Clock::time_point now, bool stopping);
  bool finish(const grpc::Status& s, const pb::SecAggReply* reply = nullptr);

  std::string client;
  bool counted = false;  // in the per-client count of open waits

 private:
  void answer(const SecAggAnswer& a);

  FederationService& s_;
  grpc::CallbackServerContext* ctx_;
  grpc::ByteBuffer* response_;
  std::shared_ptr<StageCall> self_;
  std::mutex mu_;
  bool done_ = false, waiting_ = false;
  bool seen_ = false;  // the watchdog has checked it once
  Clock::time_point deadline_ = kNever;
  SecAggCall call_;
};

class FederationService final
    : public pb::Federation::WithRawCallbackMethod_GetModel<
          pb::Federation::WithRawCallbackMethod_SubmitUpdate<
              pb::Federation::WithRawCallbackMethod_GetStatus<
                  pb::Federation::WithRawCallbackMethod_SecAgg<pb::Federation::Service>>>> {
 public:
  FederationService(FedServer& core, std::string operator_token)
      : core_(core),
        cfg_(core.options().service),
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
    if (op) {
      const ServiceCounts c = counts();
      pb::ServiceActivity* a = reply.mutable_activity();
      a->set_uploads_started(static_cast<uint64_t>(c.uploads_started));
      a->set_uploads_admitted(static_cast<uint64_t>(c.uploads_admitted));
      a->set_polls_begun(static_cast<uint64_t>(c.polls_begun));
      a->set_polls_open(static_cast<uint32_t>(c.polls_open));
    }
    *response = serialize(reply);
    r->Finish(grpc::Status::OK);
    return r;
  }

  grpc::ServerUnaryReactor* SecAgg(grpc::CallbackServerContext* ctx,
                                   const grpc::ByteBuffer* request,
                                   grpc::ByteBuffer* response) override {
    auto c = std::make_shared<StageCall>(*this, ctx, response);
    c->start(*request);
    return c.get();
  }

  // ---- for the reactors ---------------------------------------------

  FedServer& core() { return core_; }
  const ServiceOptions& cfg() const { return cfg_; }

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
    count_locked(&ServiceCounts::uploads_admitted);
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
    count_locked(&ServiceCounts::uploads_started);
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
    count_locked(&ServiceCounts::polls_begun);
    if (stopping_) return false;
    int64_t& open = polls_per_client_[client];
    if (open >= cfg_.max_polls_per_client) return false;
    ++open;
    p->client = client;
    p->counted = true;
    ++counts_.polls_open;
    polls_.push_back(p);
    return true;
  }

  // A SecAgg call that waits for its stage.
  bool begin_wait(const std::shared_ptr<StageCall>& c, const std::string& client) {
    std::lock_guard<std::mutex> lock(mu_);
    if (stopping_) return false;
    int64_t& open = waits_per_client_[client];
    if (open >= cfg_.max_polls_per_client) return false;
    ++open;
    c->client = client;
    c->counted = true;
    stage_calls_.push_back(c);
    return true;
  }
  void end_wait(StageCall& c) {
    std::lock_guard<std::mutex> lock(mu_);
    if (!c.counted) return;
    c.counted = false;
    if (--waits_per_client_[c.client] <= 0) waits_per_client_.erase(c.client);
  }

  void end_poll(Poll& p) {
    std::lock_guard<std::mutex> lock(mu_);
    if (!p.counted) return;
    p.counted = false;
    if (--polls_per_client_[p.client] <= 0) polls_per_client_.erase(p.client);
    --counts_.polls_open;
    counted_.notify_all();
  }

  ServiceCounts counts() {
    std::lock_guard<std::mutex> lock(mu_);
    return counts_;
  }
  ServiceCounts wait_counts(const std::function<bool(const ServiceCounts&)>& done,
                            std::chrono::milliseconds wait) {
    std::unique_lock<std::mutex> lock(mu_);
    counted_.wait_for(lock, wait, [&] { return done(counts_); });
    return counts_;
  }

  void enqueue_submit(std::shared_ptr<Upload> u) {
    enqueue([u = std::move(u)] { u->submit(); });
  }
  void enqueue(std::function<void()> job) {
    {
      std::lock_guard<std::mutex> lock(work_mu_);
      work_.push_back(std::move(job));
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

  // The strata-int8 package of `v` (FedServer::package) as `data` chunks
  // of kChunkBytes, built once per version.
  std::shared_ptr<const std::vector<grpc::ByteBuffer>> encoded_package(const ModelView& v,
                                                                       uint64_t* size) {
    const std::shared_ptr<const std::string> bytes = core_.package(v);
    std::lock_guard<std::mutex> lock(cache_mu_);
    if (package_version_ != v.version) {
      auto out = std::make_shared<std::vector<grpc::ByteBuffer>>();
      for (size_t at = 0; at < bytes->size(); at += kChunkBytes) {
        pb::ModelChunk c;
        c.set_data(bytes->substr(at, kChunkBytes));
        out->push_back(serialize(c));
      }
      package_chunks_ = std::move(out);
      package_size_ = bytes->size();
      package_version_ = v.version;
    }
    *size = package_size_;
    return package_chunks_;
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
      std::vector<std::shared_ptr<StageCall>> stage_calls;
      bool stopping;
      {
        std::unique_lock<std::mutex> lock(mu_);
        stopping = stopping_;
        prune(uploads_, &uploads);
        prune(polls_, &polls);
        prune(stage_calls_, &stage_calls);
      }
      const auto now = Clock::now();
      const bool waiting = contended();
      for (auto& u : uploads) {
        if (stopping && u->phase() != Upload::Phase::kSubmitting) {
          u->reject({RejectCode::kUnavailable, "stopping", "the server is shutting down; retry later"});
        } else {
          u->expire(now, waiting);
        }
      }
      for (auto& p : polls) p->check(changed, now, stopping);
      for (auto& c : stage_calls) c->check(changed, now, stopping);
      if (stopping) {
        // Done once every call ended, or after 5 s whatever is left (gRPC's
        // Shutdown cancels those).
        if (!stopped) stopped = now;
        std::lock_guard<std::mutex> lock(mu_);
        if ((uploads_.empty() && polls_.empty() && stage_calls_.empty()) ||
            now - *stopped > std::chrono::seconds(5)) {
          return;
        }
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
      std::function<void()> job;
      {
        std::unique_lock<std::mutex> lock(work_mu_);
        work_cv_.wait(lock, [&] { return work_stop_ || !work_.empty(); });
        if (work_.empty()) return;
        job = std::move(work_.front());
        work_.pop_front();
      }
      job();
    }
  }

  void count_locked(int64_t ServiceCounts::*which) {
    ++(counts_.*which);
    counted_.notify_all();
  }

  FedServer& core_;
  const ServiceOptions cfg_;
  const std::string operator_token_;
  LogBudget auth_log_{10, std::chrono::seconds(10)};

  std::mutex mu_;
  std::condition_variable wake_;
  ServiceCounts counts_;
  std::condition_variable counted_;  // counts_ changed
  bool stopping_ = false;
  int64_t free_slots_;
  std::deque<std::weak_ptr<Upload>> waiting_;
  std::map<std::string, int64_t> uploads_per_client_, polls_per_client_, waits_per_client_;
  std::vector<std::weak_ptr<Upload>> uploads_;  // every open upload (the watchdog's)
  std::vector<std::weak_ptr<Poll>> polls_;      // every waiting long poll
  std::vector<std::weak_ptr<StageCall>> stage_calls_;  // every waiting SecAgg call

  std::mutex work_mu_;
  std::condition_variable work_cv_;
  std::deque<std::function<void()>> work_;  // submits and SecAgg calls
  bool work_stop_ = false;

  std::mutex cache_mu_;
  int64_t cached_version_ = -1;
  std::shared_ptr<const std::vector<grpc::ByteBuffer>> cached_;
  int64_t package_version_ = -1;  // encoded_package's cache
  uint64_t package_size_ = 0;
  std::shared_ptr<const std::vector<grpc::ByteBuffer>> package_chunks_;

  std::thread watchdog_;
  std::vector<std::thread> workers_;
};

}  // namespace strata::fed::service_detail
