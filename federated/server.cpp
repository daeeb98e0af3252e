#include "federated/server.h"

#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <iterator>
#include <tuple>

#include "strata/config.h"
#include "core/error.h"
#include "core/fs.h"
#include "core/logging.h"
#include "core/strings.h"
#include "trainer/data/dataset.h"
#include "trainer/data/loader.h"
#include "trainer/evaluate.h"

namespace strata::fed {
namespace {

using Clock = std::chrono::steady_clock;

StrategyOptions strategy_options(const FederatedSection& f) {
  StrategyOptions o;
  o.name = f.strategy;
  o.server_optimizer = f.server_optimizer;
  o.server_lr = f.server_lr;
  o.server_momentum = f.server_momentum;
  o.beta1 = f.beta1;
  o.beta2 = f.beta2;
  o.tau = f.tau;
  o.proximal_mu = f.proximal_mu;
  o.trim_fraction = f.trim_fraction;
  o.byzantine = static_cast<int>(f.byzantine);
  o.multi_krum_keep = static_cast<int>(f.multi_krum_keep);
  o.median_norm_clip = f.median_norm_clip;
  o.bucket_size = static_cast<int>(f.bucket_size);
  o.nnm_fraction = f.nnm_fraction;
  return o;
}

bool is_loopback(const std::string& host) {
  return host == "127.0.0.1" || host == "localhost" || host == "::1" || host == "[::1]" ||
         host.rfind("127.", 0) == 0;
}

}  // namespace

void check_transport_security(const FederatedSection& fed) {
  const FedServerSection& s = fed.server;
  const auto colon = s.address.rfind(':');
  STRATA_CHECK_T(ConfigError, colon != std::string::npos && colon > 0,
                 "federated.server.address '", s.address, "' is not host:port");
  const std::string host = s.address.substr(0, colon);
  STRATA_CHECK_T(ConfigError, s.tls_cert.empty() == s.tls_key.empty(),
                 "federated.server: set both tls_cert and tls_key (or neither)");
  STRATA_CHECK_T(ConfigError, is_loopback(host) || !s.tls_cert.empty(),
                 "federated.server.address '", s.address, "' is not a loopback address, "
                 "so the server must use TLS: set federated.server.tls_cert and tls_key "
                 "(or bind to 127.0.0.1 for local runs)");
}

EvalData load_eval_data(const train::Recipe& recipe, const train::Registries& registries) {
  train::LoadedData d = registries.datasets.get(recipe.data.name, recipe.where("data.name"),
                                                "data.name")
                            .load(recipe, 0, 1);
  return EvalData{d.shape, std::move(d.eval_inputs), std::move(d.eval_targets), d.eval_split};
}

FedServer::FedServer(train::Recipe recipe, const train::Registries& registries, EvalData eval)
    : recipe_(std::move(recipe)), eval_(std::move(eval)), started_(Clock::now()),
      rng_(recipe_.run.seed) {
  const FederatedSection& f = fed();
  check_transport_security(f);
  const int64_t k = f.mode == "sync" ? std::min(f.sync.clients_per_round,
                                                f.sync.min_updates > 0 ? f.sync.min_updates
                                                                       : f.sync.clients_per_round)
                                     : f.async.buffer_size;
  if (f.strategy == "krum" || f.strategy == "multi_krum") {
    // With bucketing, krum scores the ceil(k / s) bucket means.
    const int64_t inputs = (k + f.bucket_size - 1) / f.bucket_size;
    STRATA_CHECK_T(ConfigError, inputs >= 2 * f.byzantine + 3, "federated.strategy ", f.strategy,
                   " with byzantine = ", f.byzantine, " needs at least 2f + 3 = ",
                   2 * f.byzantine + 3, " updates (buckets, with bucket_size > 1) per "
                   "aggregation, but ", inputs, " may be aggregated; raise "
                   "clients_per_round/min_updates (sync) or buffer_size (async), or lower "
                   "federated.byzantine or federated.bucket_size");
  }
  policy_.max_staleness = f.mode == "sync" ? 0 : f.async.max_staleness;
  policy_.norm_bound = f.server.norm_bound;
  policy_.clip_to_bound = f.server.clip;
  policy_.max_num_samples = f.server.max_num_samples;

  STRATA_CHECK_T(ConfigError, eval_.targets.defined() && eval_.targets.size(0) > 0,
                 "the federated server has no evaluation data (data.name=", recipe_.data.name,
                 "); give it a dataset with an evaluation split");
  torch::manual_seed(recipe_.run.seed);
  model_ = registries.models.get(recipe_.model.name, recipe_.where("model.name"), "model.name")
               .build(recipe_.model, eval_.shape, train::ModelPart{});
  layout_ = TensorLayout::of(*model_);
  StrategyOptions so = strategy_options(f);
  so.statistics_offset = layout_.parameters_numel();
  strategy_ = make_strategy(so);

  const std::string dir = recipe_.run_dir();
  store_ = std::make_unique<ServerStore>(dir);
  atomic_write_file(join_path(dir, "recipe.yaml"), train::to_yaml(recipe_));
  const auto latest = store_->latest_version();
  if (!latest) {
    at::Tensor initial = layout_.flatten(*model_);
    store_->commit_version({1, {}}, layout_.unflatten(initial), {});
    version_ = 1;
    global_ = std::make_shared<const at::Tensor>(initial);
  } else {
    version_ = *latest;
    try {
      global_ = std::make_shared<const at::Tensor>(layout_.from_named(store_->load_version(version_)));
    } catch (const DataError& e) {
      throw ConfigError(str(dir, " holds a model that does not match model.name=",
                            recipe_.model.name, " (", e.what(), "); use another run.dir"));
    }
    strategy_->load_state(store_->load_strategy_state());
    for (auto& p : store_->pending_updates()) {
      if (f.mode == "sync") submitted_.insert(p.record.client_id);
      buffer_.push_back({p.record, p.delta});
    }
    log_info("resumed at version ", version_, " with ", buffer_.size(), " pending update(s)");
  }
  const std::string metrics_path = join_path(dir, "metrics.jsonl");
  if (path_exists(metrics_path)) train::MetricsWriter::rewind(metrics_path, version_);
  metrics_ = std::make_unique<train::MetricsWriter>(metrics_path, true);
  round_ = f.mode == "sync" ? version_ : 0;
  round_opened_ = Clock::now();
  round_deadline_ = round_opened_ + round_timeout();
  finished_ = version_ - 1 >= target_versions();
  log_info("federated server (", f.mode, ", ", f.strategy, ") on model ", recipe_.model.name,
           ": ", layout_.numel(), " values in ", layout_.slots().size(), " tensors; version ",
           version_, "; run directory ", dir);
  aggregator_ = std::thread([this] { aggregation_loop(); });
}

FedServer::~FedServer() {
  stop_serving();
  if (aggregator_.joinable()) aggregator_.join();
}

int64_t FedServer::target_versions() const {
  return fed().mode == "sync" ? fed().sync.rounds : fed().async.versions;
}

std::chrono::milliseconds FedServer::round_timeout() const {
  return std::chrono::milliseconds(static_cast<int64_t>(fed().sync.round_timeout_s * 1000));
}

// In (0, 1] for every staleness an update can have (0 <= staleness <=
// max_staleness, checked on submit): a weight is never NaN or infinite.
double FedServer::staleness_weight(int64_t staleness) const {
  STRATA_INTERNAL_ASSERT(staleness >= 0, "negative staleness ", staleness);
  const double w = std::pow(1.0 + static_cast<double>(staleness), -fed().async.staleness_exponent);
  STRATA_INTERNAL_ASSERT(std::isfinite(w) && w > 0 && w <= 1, "staleness weight ", w);
  return w;
}

std::optional<Rejection> FedServer::authenticate(const std::string& client_id,
                                                 const std::string& token) {
  const auto c = store_->authenticate(client_id, token);
  if (!c) {
    return Rejection{RejectCode::kUnauthenticated, "auth",
                     str("client ", quote(client_id), " is not enrolled, is revoked, or its "
                         "token is wrong")};
  }
  std::lock_guard<std::mutex> lock(mu_);
  const auto last = static_cast<uint64_t>(c->last_sequence);
  auto [it, inserted] = last_sequence_.emplace(client_id, last);
  if (!inserted) it->second = std::max(it->second, last);
  return std::nullopt;
}

void FedServer::count_rejection(const Rejection& r) {
  std::lock_guard<std::mutex> lock(mu_);
  ++rejected_;
  ++rejected_by_reason_[r.key];
}

void FedServer::count_auth_failure() {
  std::lock_guard<std::mutex> lock(mu_);
  ++auth_failures_;
}

void FedServer::changed_locked() {
  ++epoch_;
  changed_.notify_all();
}

// Selected, not yet submitted, and the round still takes updates.
bool FedServer::has_work_locked(const std::string& client_id) const {
  return fed().mode == "sync" && selected_.count(client_id) && !submitted_.count(client_id) &&
         !aggregating_ && static_cast<int64_t>(buffer_.size()) < fed().sync.clients_per_round;
}

ModelView FedServer::view_locked(const std::string& client_id) const {
  ModelView v;
  v.version = version_;
  v.flat = global_;
  v.round = has_work_locked(client_id) ? round_ : 0;
  v.finished = finished_;
  return v;
}

void FedServer::check_in(const std::string& client_id) {
  std::lock_guard<std::mutex> lock(mu_);
  if (fed().mode == "sync" && !selected_.count(client_id) && !waiting_.count(client_id)) {
    waiting_.insert(client_id);
    changed_locked();  // the aggregator may select now
  }
}

std::optional<ModelView> FedServer::model_if_ready(const std::string& client_id,
                                                   uint64_t have_version) {
  std::lock_guard<std::mutex> lock(mu_);
  if (finished_ || stop_ || static_cast<uint64_t>(version_) != have_version ||
      has_work_locked(client_id)) {
    return view_locked(client_id);
  }
  return std::nullopt;
}

ModelView FedServer::model_view(const std::string& client_id) {
  std::lock_guard<std::mutex> lock(mu_);
  return view_locked(client_id);
}

uint64_t FedServer::wait_change(uint64_t seen, std::chrono::milliseconds wait) {
  std::unique_lock<std::mutex> lock(mu_);
  changed_.wait_for(lock, wait, [&] { return epoch_ != seen || stop_; });
  return epoch_;
}

void FedServer::stop_serving() {
  std::lock_guard<std::mutex> lock(mu_);
  stop_ = true;
  changed_locked();
}

std::optional<Rejection> FedServer::check_round_locked(const SubmitMeta& m) const {
  if (fed().mode != "sync") return std::nullopt;
  if (m.round != static_cast<uint64_t>(round_) || !selected_.count(m.client_id)) {
    return Rejection{RejectCode::kFailedPrecondition, "not_selected",
                     str("client ", quote(m.client_id), " is not selected for round ", m.round,
                         " (open round: ", round_, "); fetch the model and wait to be selected")};
  }
  if (submitted_.count(m.client_id)) {
    return Rejection{RejectCode::kFailedPrecondition, "round_duplicate",
                     str("client ", quote(m.client_id), " already submitted in round ", round_)};
  }
  if (static_cast<int64_t>(buffer_.size()) >= fed().sync.clients_per_round || aggregating_) {
    return Rejection{RejectCode::kFailedPrecondition, "round_full",
                     str("round ", round_, " already has its ", fed().sync.clients_per_round,
                         " updates")};
  }
  return std::nullopt;
}

SubmitOutcome FedServer::submit(const SubmitMeta& m, at::Tensor delta) {
  SubmitOutcome out;
  const auto reject = [&](Rejection r) {
    ++rejected_;
    ++rejected_by_reason_[r.key];
    // Refusals that are part of normal flow (over-selected clients arriving
    // after their round filled, the end of training) are not warnings.
    const bool flow = r.key == "finished" || r.key == "round_full" || r.key == "stopping" ||
                      (fed().mode == "sync" && r.key == "stale");
    const std::string what = str("rejected an update from ", quote(m.client_id),
                                 m.peer.empty() ? "" : " at " + quote(m.peer), ": ",
                                 reject_code_name(r.code), " (", r.key, ") ", r.reason);
    if (flow) {
      log_debug(what);
    } else {
      log_warn(what);
    }
    out.rejection = std::move(r);
    return out;
  };
  int64_t staleness = 0;
  const auto check_facts_locked = [&]() -> std::optional<Rejection> {
    if (finished_) {
      return Rejection{RejectCode::kFailedPrecondition, "finished",
                       "training has finished; no more updates are taken"};
    }
    if (stop_) {
      return Rejection{RejectCode::kUnavailable, "stopping",
                       "the server is shutting down; retry later"};
    }
    const auto seq = last_sequence_.find(m.client_id);
    STRATA_INTERNAL_ASSERT(seq != last_sequence_.end(), "submit before authenticate");
    UpdateFacts facts{m.client_id, m.base_version, static_cast<uint64_t>(version_), m.sequence,
                      seq->second, m.num_samples};
    if (auto r = check_metadata(facts, policy_, &staleness)) return r;
    return check_round_locked(m);
  };
  // A selected client whose update for the round was refused (round full
  // or closed, or the update itself invalid) is done with that round: it
  // goes back to the pool instead of being handed the same round again.
  const auto release_selection_locked = [&](const Rejection&) {
    if (fed().mode == "sync" && !submitted_.count(m.client_id)) selected_.erase(m.client_id);
  };
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (auto r = check_facts_locked()) {
      release_selection_locked(*r);
      return reject(*r);
    }
  }
  // The value checks run without the lock.
  STRATA_INTERNAL_ASSERT(delta.defined() && delta.numel() == layout_.numel() &&
                         delta.scalar_type() == at::kFloat);
  Accepted acc;
  std::optional<Rejection> bad;
  if (m.is_gradient) {
    if (!(std::isfinite(m.learning_rate) && m.learning_rate > 0)) {
      bad = Rejection{RejectCode::kInvalidArgument, "malformed",
                      str("a GRADIENT update needs a positive learning_rate, got ", m.learning_rate)};
    } else {
      delta.mul_(-m.learning_rate);
    }
  }
  if (!bad) bad = check_delta(delta, policy_, &acc);
  std::lock_guard<std::mutex> lock(mu_);
  if (bad) {
    release_selection_locked(*bad);
    return reject(*bad);
  }
  // The version, round or sequence may have moved while decoding.
  if (auto r = check_facts_locked()) {
    release_selection_locked(*r);
    return reject(*r);
  }
  // check_metadata bounded these: sequence < 2^63, base_version <=
  // version_, num_samples <= max_num_samples, and in sync mode round ==
  // round_.
  UpdateRecord rec;
  rec.client_id = m.client_id;
  rec.sequence = static_cast<int64_t>(m.sequence);
  rec.base_version = static_cast<int64_t>(m.base_version);
  rec.num_samples = static_cast<int64_t>(m.num_samples);
  rec.round = fed().mode == "sync" ? round_ : 0;
  rec.norm = acc.norm;
  rec.clipped = acc.clipped;
  rec.id = store_->append_update(rec, delta);  // durable from here on
  last_sequence_[m.client_id] = m.sequence;
  buffer_.push_back({rec, delta});
  if (fed().mode == "sync") submitted_.insert(m.client_id);
  ++accepted_;
  out.update_id = rec.id;
  out.current_version = version_;
  out.staleness = staleness;
  out.weight = fed().mode == "async" ? staleness_weight(staleness) : 1.0;
  out.clipped = acc.clipped;
  changed_locked();
  return out;
}

void FedServer::select_clients_locked(int64_t count) {
  std::vector<std::string> pool;
  for (const auto& c : waiting_) {
    if (!selected_.count(c)) pool.push_back(c);
  }
  std::shuffle(pool.begin(), pool.end(), rng_);
  for (int64_t i = 0; i < count && i < static_cast<int64_t>(pool.size()); ++i) {
    selected_.insert(pool[i]);
    waiting_.erase(pool[i]);
  }
  changed_locked();
}

bool FedServer::aggregation_due(Clock::time_point now) const {
  const int64_t n = static_cast<int64_t>(buffer_.size());
  if (fed().mode == "async") return n >= fed().async.buffer_size;
  const int64_t k = fed().sync.clients_per_round;
  const int64_t min = fed().sync.min_updates > 0 ? fed().sync.min_updates : k;
  // A round that cannot fill (clients gone, or every update refused) closes
  // after its extensions with whatever arrived, possibly nothing.
  return n >= k || (now >= round_deadline_ &&
                    ((n >= min && n > 0) || round_extensions_ >= fed().sync.max_round_extensions));
}

void FedServer::aggregation_loop() {
  std::unique_lock<std::mutex> lock(mu_);
  const FederatedSection& f = fed();
  const int64_t select_target = static_cast<int64_t>(
      std::ceil(static_cast<double>(f.sync.clients_per_round) * (1.0 + f.sync.over_selection)));
  while (!stop_) {
    if (finished_) {
      changed_.wait(lock, [&] { return stop_; });
      break;
    }
    const auto now = Clock::now();
    if (f.server.progress_every_s > 0 &&
        now - last_progress_ >= std::chrono::duration<double>(f.server.progress_every_s)) {
      last_progress_ = now;
      log_info(progress_locked());
    }
    if (f.mode == "sync") {
      // Select once enough clients checked in, or after a short gathering
      // time with whoever is there; then top up whenever the round has
      // fewer selected-and-working clients than its target (a selected
      // client was refused, or few had checked in when the gathering time
      // ended) and someone is waiting. Topping up only at the deadline left
      // a round that opened with too few clients waiting out
      // round_timeout_s although idle clients had checked in meanwhile.
      const int64_t active = static_cast<int64_t>(selected_.size() - submitted_.size());
      const bool gathering = now - round_opened_ < std::chrono::seconds(1);
      if (active + static_cast<int64_t>(buffer_.size()) < select_target && !waiting_.empty() &&
          (static_cast<int64_t>(waiting_.size()) >= select_target - active || !gathering)) {
        select_clients_locked(select_target - active - static_cast<int64_t>(buffer_.size()));
      }
    }
    if (aggregation_due(now)) {
      // FedBuff applies exactly K; what arrived meanwhile waits its turn.
      const size_t take = f.mode == "async"
                              ? static_cast<size_t>(f.async.buffer_size)
                              : buffer_.size();
      std::vector<Pending> batch(std::make_move_iterator(buffer_.begin()),
                                 std::make_move_iterator(buffer_.begin() + take));
      buffer_.erase(buffer_.begin(), buffer_.begin() + take);
      aggregating_ = true;
      const int64_t round = round_;
      lock.unlock();
      try {
        aggregate(std::move(batch), round);
      } catch (const std::exception& e) {
        log_error("aggregation failed: ", e.what());
        lock.lock();
        aggregating_ = false;
        error_ = std::current_exception();
        finished_ = true;
        changed_locked();
        return;
      }
      lock.lock();
      aggregating_ = false;
      changed_locked();
      continue;
    }
    if (f.mode == "sync" && now >= round_deadline_) {
      ++round_extensions_;
      round_deadline_ = now + round_timeout();
      log_warn("round ", round_, ": ", buffer_.size(), " valid update(s) of ",
               f.sync.clients_per_round, " by its deadline; extended (",
               round_extensions_, " of ", f.sync.max_round_extensions, ")");
    }
    changed_.wait_for(lock, std::chrono::milliseconds(100));
  }
}

void FedServer::aggregate(std::vector<Pending> batch, int64_t round) {
  const auto t0 = Clock::now();
  // In client order, not arrival order: the same updates give the same
  // aggregate bit for bit (float sums, krum's ties and bucketing depend on
  // the order), so a sync run whose rounds take the same clients is
  // reproducible whatever the threads' timing.
  std::sort(batch.begin(), batch.end(), [](const Pending& a, const Pending& b) {
    return std::tie(a.record.client_id, a.record.sequence) <
           std::tie(b.record.client_id, b.record.sequence);
  });
  // Note [Statistics of stale updates]: the model's statistics (BatchNorm
  // running means and variances, after the parameters in the flat vector)
  // take the aggregate as it is, x += mean(delta). A stale update's delta
  // is relative to its base version's statistics, not the current ones:
  // added to the current ones it can push a variance below zero (seen with
  // small async buffers: test loss NaN from version 3). So each stale
  // update's statistics delta is re-based on the current version first --
  // it becomes (the client's statistics) - (the current ones) -- and the
  // aggregate is a convex combination of statistics clients really had.
  const int64_t stats_at = layout_.parameters_numel();
  if (stats_at < layout_.numel()) {
    const at::Tensor current = global_->slice(0, stats_at);
    for (auto& p : batch) {
      if (p.record.base_version == version_) continue;
      p.delta.slice(0, stats_at).add_(statistics_of(p.record.base_version) - current);
    }
  }
  std::vector<ClientUpdate> updates;
  std::vector<int64_t> ids;
  double staleness_sum = 0;
  for (auto& p : batch) {
    ClientUpdate u;
    u.client_id = p.record.client_id;
    u.delta = p.delta;
    u.num_samples = p.record.num_samples;
    u.staleness = version_ - p.record.base_version;
    u.staleness_weight = fed().mode == "async" ? staleness_weight(u.staleness) : 1.0;
    staleness_sum += static_cast<double>(u.staleness);
    updates.push_back(std::move(u));
    ids.push_back(p.record.id);
  }
  // A round closed without any update repeats the model as its version. A
  // batch the strategy cannot aggregate (a round closed after its extensions
  // with fewer updates than a robust rule needs) is not applied: its updates
  // are consumed, the reason recorded; the server keeps serving.
  std::string refused;
  std::vector<std::string> excluded;
  at::Tensor next = aggregate_finite(updates, batch, &refused, &excluded);
  const bool non_finite = !excluded.empty();
  const int64_t version = version_ + 1;
  const bool last = version - 1 >= target_versions();
  double accuracy = NAN, loss = NAN;
  if ((version - 1) % fed().server.eval_every == 0 || last) {
    layout_.load_into(*model_, next);
    const train::EvalSums e = train::evaluate_classifier(*model_, eval_.inputs, eval_.targets,
                                                          recipe_.data.eval_batch_size);
    accuracy = static_cast<double>(e.correct) / static_cast<double>(e.count);
    loss = e.loss_sum / static_cast<double>(e.count);
  }
  store_->commit_version({version, ids, accuracy, loss}, layout_.unflatten(next),
                         strategy_->state());
  const double mean_staleness =
      batch.empty() ? 0.0 : staleness_sum / static_cast<double>(batch.size());
  JsonObject rec;
  rec.add("kind", "version").add("step", version).add("version", version);
  if (fed().mode == "sync") rec.add("round", round);
  rec.add("updates", static_cast<int64_t>(batch.size()))
      .add("selected", updates.empty() || !refused.empty() ? int64_t{0}
                                       : static_cast<int64_t>(strategy_->last_selected().size()))
      .add("mean_staleness", mean_staleness)
      .add("non_finite", non_finite)
      .add("aggregate_s", std::chrono::duration<double>(Clock::now() - t0).count())
      .add("time_s", std::chrono::duration<double>(Clock::now() - started_).count());
  if (!refused.empty()) rec.add("not_applied", refused);
  if (!excluded.empty()) rec.add("excluded", join(excluded, ", "));
  if (!std::isnan(accuracy)) rec.add("accuracy", accuracy).add("loss", loss);
  metrics_->write(rec);
  log_info("version ", version, fed().mode == "sync" ? str(" (round ", round, ")") : "",
           ": ", batch.size(), " update(s), mean staleness ", format_double(mean_staleness),
           std::isnan(accuracy) ? "" : str(", test accuracy ", format_double(accuracy)));
  // The statistics of versions a later update may still be based on.
  if (layout_.parameters_numel() < layout_.numel()) {
    statistics_[version_] = global_->slice(0, layout_.parameters_numel()).clone();
    for (auto it = statistics_.begin(); it != statistics_.end();) {
      it = it->first < version - policy_.max_staleness ? statistics_.erase(it) : std::next(it);
    }
  }
  std::lock_guard<std::mutex> lock(mu_);
  version_ = version;
  global_ = std::make_shared<const at::Tensor>(next);
  if (!std::isnan(accuracy)) last_accuracy_ = accuracy;
  if (fed().mode == "sync") {
    ++round_;
    selected_.clear();
    submitted_.clear();
    round_opened_ = Clock::now();
    round_deadline_ = round_opened_ + round_timeout();
    round_extensions_ = 0;
  }
  finished_ = last;
  if (finished_) {
    metrics_->write(JsonObject()
                        .add("kind", "summary")
                        .add("version", version)
                        .add("accuracy", accuracy)
                        .add("loss", loss)
                        .add("accepted", accepted_)
                        .add("rejected", rejected_)
                        .add("wall_s", std::chrono::duration<double>(Clock::now() - started_).count()));
  }
  changed_locked();
}

// Note [Non-finite aggregates]: every update was finite when it was
// accepted, but without a norm bound a few huge ones can still overflow a
// mean (or a server optimizer's moments) to inf, and a non-finite model
// would make every later update non-finite. Such an aggregate is never
// applied. The update with the largest norm -- whose contribution is what
// overflows -- is excluded and the rest aggregated again from the strategy
// state as it was, until the aggregate is finite: the honest updates of a
// batch that also holds an attacker's are applied, not discarded. Excluded
// updates are consumed (a restart does not apply them) and named in the
// log and the version's metrics record.
at::Tensor FedServer::aggregate_finite(std::vector<ClientUpdate>& updates,
                                       const std::vector<Pending>& batch, std::string* refused,
                                       std::vector<std::string>* excluded) {
  if (updates.empty()) return global_->clone();
  std::vector<std::pair<std::string, at::Tensor>> saved;
  for (const auto& [k, t] : strategy_->state()) saved.emplace_back(k, t.clone());
  std::vector<int64_t> ids;
  for (const auto& p : batch) ids.push_back(p.record.id);
  for (;;) {
    at::Tensor next;
    try {
      next = strategy_->aggregate(*global_, updates);
    } catch (const ConfigError& e) {
      *refused = e.what();
      log_error("version ", version_ + 1, " keeps the previous parameters: ", *refused);
      strategy_->load_state(saved);
      return global_->clone();
    }
    if (at::isfinite(next).all().item<bool>()) return next;
    strategy_->load_state(saved);
    size_t worst = 0;
    double worst_norm = -1;
    for (size_t i = 0; i < updates.size(); ++i) {
      const double n = updates[i].delta.to(at::kDouble).norm().item<double>();
      if (n > worst_norm || std::isnan(n)) {
        worst = i;
        worst_norm = n;
        if (std::isnan(n)) break;
      }
    }
    excluded->push_back(str(quote(updates[worst].client_id), " (update ", ids[worst], ")"));
    log_error("version ", version_ + 1, ": the aggregate of ", updates.size(),
              " update(s) is not finite; excluding update ", ids[worst], " from client ",
              quote(updates[worst].client_id), " (L2 norm ", worst_norm,
              ", the largest) and aggregating the rest (set federated.server.norm_bound or "
              "a robust strategy to bound updates)");
    updates.erase(updates.begin() + static_cast<std::ptrdiff_t>(worst));
    ids.erase(ids.begin() + static_cast<std::ptrdiff_t>(worst));
    if (updates.empty()) return global_->clone();
  }
}

std::string FedServer::progress_locked() const {
  std::string refused;
  for (const auto& [k, n] : rejected_by_reason_) refused += str(refused.empty() ? "" : ", ", k, " ", n);
  const std::string counts =
      str(last_sequence_.size(), " client(s) seen; ", accepted_, " update(s) accepted, ", rejected_,
          " refused", refused.empty() ? "" : " (" + refused + ")");
  if (fed().mode == "sync") {
    return str("round ", round_, " of ", fed().sync.rounds, ": ", buffer_.size(), "/",
               fed().sync.clients_per_round, " updates, ", selected_.size() - submitted_.size(),
               " selected client(s) training, ", waiting_.size(), " waiting to be selected; ",
               counts);
  }
  return str("version ", version_, " (", version_ - 1, " of ", fed().async.versions,
             " aggregations): buffer ", buffer_.size(), "/", fed().async.buffer_size, "; ",
             counts);
}

at::Tensor FedServer::statistics_of(int64_t version) {
  const int64_t stats_at = layout_.parameters_numel();
  if (version == version_) return global_->slice(0, stats_at);
  auto it = statistics_.find(version);
  if (it == statistics_.end()) {
    const at::Tensor flat = layout_.from_named(store_->load_version(version));
    it = statistics_.emplace(version, flat.slice(0, stats_at).clone()).first;
  }
  return it->second;
}

ServerStatus FedServer::status() {
  std::lock_guard<std::mutex> lock(mu_);
  ServerStatus s;
  s.version = version_;
  s.mode = fed().mode;
  s.round = round_;
  s.buffered = static_cast<int64_t>(buffer_.size());
  s.accepted = accepted_;
  s.rejected = rejected_;
  s.rejected_by_reason = rejected_by_reason_;
  s.auth_failures = auth_failures_;
  s.clients_seen = static_cast<int64_t>(last_sequence_.size());
  s.last_test_accuracy = last_accuracy_;
  s.enrolled_clients = store_->num_clients();
  s.finished = finished_;
  s.target_versions = target_versions();
  s.updates_per_aggregation =
      fed().mode == "sync" ? fed().sync.clients_per_round : fed().async.buffer_size;
  s.server_version = STRATA_VERSION;
  return s;
}

bool FedServer::wait_finished(std::chrono::milliseconds wait) {
  std::unique_lock<std::mutex> lock(mu_);
  const bool done = changed_.wait_for(lock, wait, [&] { return finished_; });
  if (error_) std::rethrow_exception(error_);
  return done;
}

}  // namespace strata::fed
