// The federated server's logic, independent of the transport (service.h
// puts it behind gRPC): the global model and its versions, sync rounds or
// the async buffer, validation, durable acknowledgement, aggregation on a
// background thread, evaluation and metrics.
//
// Thread safety: every public method may be called from many threads (the
// gRPC handlers). One lock guards the state; decoding and validating an
// update's tensors and aggregating run outside it.
//
// Its options come typed (server_options.h), its clock injected (clock.h),
// its aggregation cadence from a trigger (trigger.h: sync rounds or the
// async buffer), its rule from a Strategy.
//
// Run directory (ServerOptions::run_dir): the ServerStore files (server.db,
// versions/, updates/), metrics.jsonl with one {"kind":"version"} record per
// aggregation, recipe.yaml. Restarting on the same directory resumes at the
// last committed version with every acknowledged, unapplied update pending.
#pragma once

#include <ATen/ATen.h>
#include <torch/script.h>

#include <chrono>
#include <condition_variable>
#include <exception>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "federated/clock.h"
#include "federated/layout.h"
#include "federated/secagg.h"
#include "federated/server_options.h"
#include "federated/server_store.h"
#include "federated/strategy.h"
#include "federated/trigger.h"
#include "federated/validator.h"
#include "trainer/metrics.h"
#include "trainer/models/models.h"

namespace strata::fed {

// What a client learns from GetModel.
struct ModelView {
  int64_t version = 0;
  std::shared_ptr<const at::Tensor> flat;  // immutable snapshot of that version
  int64_t round = 0;       // sync: the open round this client is selected for (0: none)
  bool finished = false;   // no more updates are taken
};

// An update's metadata as the client sent it (unsigned, as on the wire:
// validator.h's UpdateFacts).
struct SubmitMeta {
  std::string client_id;
  uint64_t base_version = 0;
  uint64_t num_samples = 0;
  uint64_t sequence = 0;
  uint64_t round = 0;
  bool is_gradient = false;    // GRADIENT: delta = -learning_rate * tensors
  double learning_rate = 0.0;
  std::string peer;            // the client's address, for the log
};

struct SubmitOutcome {
  std::optional<Rejection> rejection;  // set: nothing was kept
  int64_t update_id = 0;
  int64_t current_version = 0;
  int64_t staleness = 0;
  double weight = 1.0;
  bool clipped = false;
};

// One SecAgg call (strata_fed.proto's SecAggRequest) as the server core
// takes it.
struct SecAggCall {
  enum class Kind { kKeys, kShares, kInput, kUnmask, kReveal };
  Kind kind = Kind::kKeys;
  uint64_t round = 0;
  secagg::KeysMsg keys;
  secagg::SharesMsg shares;
  struct Input {
    uint64_t num_samples = 0, sequence = 0, offset = 0;
    std::string data;  // little-endian uint32 values
  } input;
  secagg::RevealMsg reveal;
};

// What the call gets back: a refusal, `pending` (its stage has not closed),
// or the stage's answer.
struct SecAggAnswer {
  std::optional<Rejection> rejection;
  bool pending = false;
  std::optional<secagg::RosterMsg> roster;
  std::optional<secagg::InboxMsg> inbox;
  std::optional<secagg::UnmaskMsg> fate;
  int64_t received = 0;  // input: values received so far
};

struct ServerStatus {
  int64_t version = 0;
  std::string mode;
  int64_t round = 0;
  int64_t buffered = 0;
  int64_t accepted = 0;
  int64_t rejected = 0;                               // updates refused
  std::map<std::string, int64_t> rejected_by_reason;  // of those, by key
  int64_t auth_failures = 0;   // GetModel/GetStatus calls refused for their token
  int64_t clients_seen = 0;    // distinct clients that authenticated since start
  double last_test_accuracy = NAN;
  int64_t enrolled_clients = 0;
  bool finished = false;
  int64_t target_versions = 0;          // sync: rounds; async: versions to run
  int64_t updates_per_aggregation = 0;  // sync: clients_per_round; async: buffer_size
  std::string server_version;           // Strata's version
};

class FedServer {
 public:
  // Opens (or resumes) the server state in options.run_dir and starts the
  // aggregation thread; `model` (built for eval.shape) is the global
  // model's shape and the evaluation copy. ConfigError for options the
  // server cannot run.
  FedServer(ServerOptions options, std::shared_ptr<train::Model> model, EvalData eval,
            std::shared_ptr<ServerClock> clock = steady_clock());
  ~FedServer();
  FedServer(const FedServer&) = delete;
  FedServer& operator=(const FedServer&) = delete;

  const TensorLayout& layout() const { return layout_; }
  const ServerOptions& options() const { return o_; }
  const std::string& mode() const { return trigger_->mode(); }
  int64_t max_staleness() const { return trigger_->max_staleness(); }
  ClientConfig client_config() const { return strategy_->configure(); }
  ServerStore& store() { return *store_; }

  // The global model of `v` as a strata-int8 package
  // (federated.server.publish; trainer/edge_model.h), built on the first
  // request for a version and kept until the next; null when the server
  // does not publish.
  std::shared_ptr<const std::string> package(const ModelView& v);

  // A Rejection (UNAUTHENTICATED) unless `token` is the client's token.
  // Counts nothing: a refused update is counted by count_rejection, a
  // refused fetch or status call by count_auth_failure.
  std::optional<Rejection> authenticate(const std::string& client_id, const std::string& token);
  void count_auth_failure();

  // GetModel without blocking (the service long-polls without holding a
  // thread, Note [Callback service] in service_impl.h). check_in: the
  // client waits for work (sync rounds: to be selected).
  // model_if_ready: the model for `client_id` when there is news for a
  // client holding `have_version` (another version, a round selection, the
  // end, or the server stopping); nullopt while there is none.
  // model_view: the model as it is.
  void check_in(const std::string& client_id);
  std::optional<ModelView> model_if_ready(const std::string& client_id, uint64_t have_version);
  ModelView model_view(const std::string& client_id);
  // Blocks until the state a long poll depends on changed since epoch
  // `seen`, or `wait` passed (real time); returns the current epoch.
  uint64_t wait_change(uint64_t seen, std::chrono::milliseconds wait);
  // Blocks until `done(status())` holds or `wait` passed (real time),
  // without polling: it wakes whenever the epoch moves (a version, a round
  // or selection, an accepted update, stopping); rejection counters alone
  // do not move it, so wait for those on the service (RunningService::
  // wait_counts). Returns the last status.
  ServerStatus wait_status(const std::function<bool(const ServerStatus&)>& done,
                           std::chrono::milliseconds wait);
  // No more updates are taken and every waiter is woken: the first step of
  // shutting down.
  void stop_serving();

  // Validates, durably records and buffers one update, `delta` as a flat
  // vector in layout() order (the caller has authenticated the client and
  // received the tensors with wire.h's UpdateReceiver, which checked their
  // names and shapes). Returns only once the update is durable. Takes
  // `delta` over: it is clipped in place and buffered.
  SubmitOutcome submit(const SubmitMeta& meta, at::Tensor delta);

  ServerStatus status();
  // Blocks until the configured rounds/versions are done (true) or `wait`
  // passed (false); rethrows the aggregation thread's error.
  bool wait_finished(std::chrono::milliseconds wait);

  // Counts a rejection made outside submit() (auth, transport limits).
  void count_rejection(const Rejection& r);

  // Secure aggregation (Note [Secure aggregation] in secagg.h): applies the
  // call's message to the open round (once: a repeated message stands as
  // the first) and answers it. A masked input is durable in the ledger
  // before the answer to the chunk that completes it. The caller has
  // authenticated the client.
  SecAggAnswer secagg(const std::string& client, const SecAggCall& call);
  // The answer now, applying nothing: for a call that waits for its stage.
  SecAggAnswer secagg_answer(const std::string& client, const SecAggCall& call);

 private:
  struct Pending {
    UpdateRecord record;
    at::Tensor delta;
    // Secure aggregation: the ledger ids of the masked inputs the unmasked
    // sum stands for, and the clients it sums (with central DP, delta is
    // their clipped updates' sum).
    std::vector<int64_t> ledger_ids;
    int64_t summed = 1;
  };
  // The open secure aggregation round (server_secagg.cpp).
  struct SecAggState {
    int64_t round = 0;
    std::vector<std::string> clients;  // selected; a client's index is its position
    std::unique_ptr<secagg::Round> r;
    ServerClock::time_point deadline;  // of the open stage
    struct Input {
      std::vector<uint32_t> y;         // while it arrives
      uint64_t num_samples = 0, sequence = 0;
      int64_t ledger_id = 0;           // once durable
    };
    std::map<std::string, Input> inputs;
    std::string failed;                // why the protocol failed (empty: it did not)
  };
  // A version's evaluation (NaN when it was not evaluated).
  struct Evaluation {
    double accuracy = NAN, loss = NAN;
  };

  void open_store();
  void aggregation_loop();
  void aggregate(std::vector<Pending> batch, int64_t round, const std::string& note);
  // The open round's protocol: creates it once the trigger selected, closes
  // stages when every client answered or at their deadlines, unmasks; the
  // next deadline (max: none).
  ServerClock::time_point secagg_step_locked(ServerClock::time_point now);
  void secagg_fail_locked(const std::string& why);
  SecAggAnswer secagg_answer_locked(const std::string& client, const SecAggCall& call);
  std::optional<Rejection> secagg_input_locked(const std::string& client,
                                               const SecAggCall::Input& in, int64_t* received);
  void changed_locked();  // bumps epoch_ and wakes waiters
  ServerStatus status_locked() const;
  std::string progress_locked() const;  // the periodic progress line
  ModelView view_locked(const std::string& client_id) const;
  std::optional<Rejection> check_submit_locked(const SubmitMeta& m, int64_t* staleness) const;
  std::optional<Rejection> check_values(const SubmitMeta& m, at::Tensor& delta,
                                        Accepted* accepted) const;
  SubmitOutcome refuse_locked(const SubmitMeta& m, Rejection r);
  SubmitOutcome record_locked(const SubmitMeta& m, at::Tensor delta, const Accepted& acc,
                              int64_t staleness);
  // Note [Statistics of stale updates] in server.cpp.
  void rebase_statistics(std::vector<Pending>& batch);
  // The statistics part of version `version`'s parameters (aggregation
  // thread; older versions from a cache or the store).
  at::Tensor statistics_of(int64_t version);
  void remember_statistics(int64_t next_version);
  // The next global parameters from `updates`, excluding updates whose
  // contribution makes the aggregate non-finite (Note [Non-finite
  // aggregates] in server.cpp). `excluded` gets "client (update id)";
  // `declined` the strategy's reason when it declined the batch.
  at::Tensor aggregate_finite(std::vector<ClientUpdate>& updates, std::vector<int64_t> ids,
                              std::string* declined, std::vector<std::string>* excluded);
  Evaluation evaluate(int64_t version, const at::Tensor& params);
  // What a version's metrics record says.
  struct VersionFacts {
    int64_t version = 0, round = 0, updates = 0, selected = 0;
    double mean_staleness = 0;
    std::string declined;
    std::vector<std::string> excluded;
    Evaluation eval;
    double aggregate_s = 0;
    std::optional<PrivacyStatus> privacy;  // after this aggregation
  };
  void record_version(const VersionFacts& v);
  void finish_locked(int64_t version, const Evaluation& e,
                     const std::optional<PrivacyStatus>& privacy);

  const ServerOptions o_;
  std::shared_ptr<train::Model> model_;  // evaluation (aggregation thread)
  // Publishing (package()): the model traced once and deep-copied, so the
  // packaging does not touch the aggregation thread's model.
  std::mutex package_mu_;
  std::optional<torch::jit::Module> package_traced_;
  int64_t package_version_ = 0;
  std::shared_ptr<const std::string> package_;
  TensorLayout layout_;
  std::unique_ptr<ServerStore> store_;
  std::unique_ptr<Strategy> strategy_;
  std::unique_ptr<AggregationTrigger> trigger_;  // guarded by mu_
  ValidationPolicy policy_;
  EvalData eval_;
  std::shared_ptr<ServerClock> clock_;
  std::unique_ptr<train::MetricsWriter> metrics_;
  std::chrono::steady_clock::time_point started_;  // real time, for the records

  mutable std::mutex mu_;
  std::condition_variable changed_;  // version, round, selection, buffer, stop
  uint64_t epoch_ = 0;               // bumped with every changed_ notification
  int64_t version_ = 0;
  std::shared_ptr<const at::Tensor> global_;
  std::vector<Pending> buffer_;
  std::map<std::string, uint64_t> last_sequence_;  // per client, from the ledger
  bool finished_ = false;
  bool stop_ = false;
  // Counters.
  int64_t accepted_ = 0;
  int64_t rejected_ = 0;
  std::map<std::string, int64_t> rejected_by_reason_;
  int64_t auth_failures_ = 0;
  double last_accuracy_ = NAN;
  std::optional<ServerClock::time_point> last_progress_;  // none printed yet
  std::map<int64_t, at::Tensor> statistics_;  // by version (aggregation thread)
  std::exception_ptr error_;  // the aggregation thread's failure
  std::unique_ptr<SecAggState> sa_;  // the open secure aggregation round
  std::string secagg_note_;          // why the last round's protocol failed

  std::thread aggregator_;
};

// ConfigError unless `address` may be served with these TLS settings:
// plaintext only on loopback.
void check_transport_security(const ServiceOptions& service);

}  // namespace strata::fed
