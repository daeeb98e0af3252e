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
#include "federated/accountant.h"
#include "trainer/edge_model.h"
#include "trainer/evaluate.h"
#include "trainer/torchscript.h"

namespace strata::fed {
namespace {

using RealClock = std::chrono::steady_clock;

bool is_loopback(const std::string& host) {
  return host == "127.0.0.1" || host == "localhost" || host == "::1" || host == "[::1]" ||
         host.rfind("127.", 0) == 0;
}

std::unique_ptr<AggregationTrigger> make_trigger(const ServerOptions& o, const Strategy& strategy,
                                                 int64_t version, ServerClock::time_point now) {
  if (o.mode == mode_names()[0] && o.secagg.enabled) {
    const int64_t min_clients = std::max(3, o.secagg.settings.threshold + 1);
    return make_secagg_rounds(o.sync, strategy, o.seed, version, min_clients, now);
  }
  if (o.mode == mode_names()[0]) return make_sync_rounds(o.sync, strategy, o.seed, version, now);
  STRATA_CHECK_T(ConfigError, o.mode == mode_names()[1], "unknown federated mode '", o.mode,
                 "'; valid: ", join(mode_names(), ", "));
  return make_async_buffer(o.async);
}

}  // namespace

void check_transport_security(const ServiceOptions& s) {
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

FedServer::FedServer(ServerOptions options, std::shared_ptr<train::Model> model, EvalData eval,
                     std::shared_ptr<ServerClock> clock)
    : o_(std::move(options)), model_(std::move(model)), eval_(std::move(eval)),
      clock_(std::move(clock)), started_(RealClock::now()) {
  STRATA_INTERNAL_ASSERT(model_ && clock_, "FedServer without a model or a clock");
  check_transport_security(o_.service);
  STRATA_CHECK_T(ConfigError, eval_.targets.defined() && eval_.targets.size(0) > 0,
                 "the federated server has no evaluation data; give it a dataset with an "
                 "evaluation split");
  layout_ = TensorLayout::of(*model_);
  StrategyOptions so = o_.strategy;
  so.statistics_offset = layout_.parameters_numel();
  strategy_ = make_strategy(so);
  // A strategy that could never aggregate the batches this server plans is
  // a recipe error now (before anything is written), not a declined batch
  // every version.
  const int64_t planned = make_trigger(o_, *strategy_, 0, clock_->now())->planned_batch();
  if (std::string why = strategy_->cannot_aggregate(planned); !why.empty()) {
    throw ConfigError(str("federated.strategy ", o_.strategy.name, ": ", why, ", but ", planned,
                          " update(s) are planned per aggregation; raise clients_per_round/"
                          "min_updates (sync) or buffer_size (async), or lower "
                          "federated.byzantine, federated.trim_fraction or "
                          "federated.bucket_size"));
  }
  if (o_.service.publish != "none") {
    STRATA_CHECK_T(ConfigError, eval_.pixel_std > 0, "federated.server.publish=",
                   o_.service.publish, ": the model does not take images (packages are for "
                   "image classifiers); set it to none");
    torch::NoGradGuard no_grad;
    package_traced_ =
        train::trace_torchscript(*model_, eval_.inputs.narrow(0, 0, 1)).deepcopy();
  }
  open_store();
  trigger_ = make_trigger(o_, *strategy_, version_, clock_->now());
  for (const auto& p : buffer_) trigger_->resumed(p.record.client_id);
  policy_ = o_.validation;
  policy_.max_staleness = trigger_->max_staleness();
  // A restarted private run whose budget is spent stays finished.
  const std::optional<PrivacyStatus> privacy = strategy_->privacy();
  finished_ = version_ - 1 >= trigger_->target_versions() || (privacy && !privacy->budget_left);
  log_info("federated server (", trigger_->mode(), ", ", o_.strategy.name, ") on model ",
           o_.model_name, ": ", layout_.numel(), " values in ", layout_.slots().size(),
           " tensors; version ", version_, "; run directory ", o_.run_dir);
  if (privacy) {
    const DpOptions& d = o_.strategy.dp;
    RdpAccountant planned;
    planned.compose(d.sample_rate, d.noise_multiplier, trigger_->target_versions());
    log_info("central differential privacy: updates clipped to ",
             d.adaptive ? str("an adaptive norm (", format_metric(privacy->clip_norm),
                              " now, tracking the ", format_double(d.target_quantile),
                              " quantile)")
                        : format_double(d.clip_norm),
             ", noise multiplier ", format_double(d.noise_multiplier), ", ",
             d.expected_updates, " updates per aggregation at sampling rate ",
             format_double(d.sample_rate), "; epsilon ", format_metric(privacy->epsilon),
             " spent so far; all ", trigger_->target_versions(), " aggregations would spend ",
             format_metric(planned.spent(d.delta).epsilon), " (delta ", format_double(d.delta),
             ")",
             d.target_epsilon > 0 ? str("; the run stops before exceeding epsilon ",
                                        format_double(d.target_epsilon))
                                  : std::string());
  }
  aggregator_ = std::thread([this] { aggregation_loop(); });
}

// The store in run_dir: a new run commits the initial model as version 1; a
// restart resumes at the last committed version with its pending updates.
void FedServer::open_store() {
  const std::string& dir = o_.run_dir;
  store_ = std::make_unique<ServerStore>(dir);
  if (!o_.recipe_yaml.empty()) atomic_write_file(join_path(dir, "recipe.yaml"), o_.recipe_yaml);
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
                            o_.model_name, " (", e.what(), "); use another run.dir"));
    }
    strategy_->load_state(store_->load_strategy_state());
    std::vector<int64_t> abandoned;
    for (auto& p : store_->pending_updates()) {
      if (p.record.masked) {
        abandoned.push_back(p.record.id);
      } else {
        buffer_.push_back({p.record, p.delta});
      }
    }
    // A secure aggregation round's keys died with the process: its masked
    // inputs can never be unmasked. The round starts again.
    if (!abandoned.empty()) {
      store_->discard_updates(abandoned);
      log_info("abandoned the ", abandoned.size(), " masked input(s) of an unfinished secure "
               "aggregation round (its secrets did not survive the restart); the round starts "
               "again");
    }
    log_info("resumed at version ", version_, " with ", buffer_.size(), " pending update(s)");
  }
  const std::string metrics_path = join_path(dir, "metrics.jsonl");
  if (path_exists(metrics_path)) train::MetricsWriter::rewind(metrics_path, version_);
  metrics_ = std::make_unique<train::MetricsWriter>(metrics_path, true, o_.tensorboard);
}

FedServer::~FedServer() {
  stop_serving();
  if (aggregator_.joinable()) aggregator_.join();
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

ModelView FedServer::view_locked(const std::string& client_id) const {
  ModelView v;
  v.version = version_;
  v.flat = global_;
  v.round = trigger_->has_work(client_id, static_cast<int64_t>(buffer_.size())) ? trigger_->round()
                                                                                 : 0;
  v.finished = finished_;
  return v;
}

void FedServer::check_in(const std::string& client_id) {
  std::lock_guard<std::mutex> lock(mu_);
  if (trigger_->check_in(client_id)) changed_locked();  // the aggregator may select now
}

std::optional<ModelView> FedServer::model_if_ready(const std::string& client_id,
                                                   uint64_t have_version) {
  std::lock_guard<std::mutex> lock(mu_);
  if (finished_ || stop_ || static_cast<uint64_t>(version_) != have_version ||
      trigger_->has_work(client_id, static_cast<int64_t>(buffer_.size()))) {
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

// The checks of an update's facts against the server's state: cheap, under
// the lock, before and again after its values are checked.
std::optional<Rejection> FedServer::check_submit_locked(const SubmitMeta& m,
                                                        int64_t* staleness) const {
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
  if (auto r = check_metadata(facts, policy_, staleness)) return r;
  return trigger_->admit(m.client_id, m.round, static_cast<int64_t>(buffer_.size()));
}

// The value checks, without the lock.
std::optional<Rejection> FedServer::check_values(const SubmitMeta& m, at::Tensor& delta,
                                                 Accepted* acc) const {
  STRATA_INTERNAL_ASSERT(delta.defined() && delta.numel() == layout_.numel() &&
                         delta.scalar_type() == at::kFloat);
  if (m.is_gradient) {
    if (!(std::isfinite(m.learning_rate) && m.learning_rate > 0)) {
      return Rejection{RejectCode::kInvalidArgument, "malformed",
                       str("a GRADIENT update needs a positive learning_rate, got ",
                           m.learning_rate)};
    }
    delta.mul_(-m.learning_rate);
  }
  return check_delta(delta, policy_, acc);
}

SubmitOutcome FedServer::refuse_locked(const SubmitMeta& m, Rejection r) {
  trigger_->refused(m.client_id);
  ++rejected_;
  ++rejected_by_reason_[r.key];
  // Refusals that are part of normal flow (the end of training, shutting
  // down, and the trigger's own: over-selected clients arriving after
  // their round filled) are not warnings.
  const bool flow = r.key == "finished" || r.key == "stopping" || trigger_->flow_rejection(r.key);
  const std::string what = str("rejected an update from ", quote(m.client_id),
                               m.peer.empty() ? "" : " at " + quote(m.peer), ": ",
                               reject_code_name(r.code), " (", r.key, ") ", r.reason);
  if (flow) {
    log_debug(what);
  } else {
    log_warn(what);
  }
  SubmitOutcome out;
  out.rejection = std::move(r);
  return out;
}

// check_submit_locked bounded these: sequence < 2^63, base_version <=
// version_, num_samples <= max_num_samples, and the trigger admitted it.
SubmitOutcome FedServer::record_locked(const SubmitMeta& m, at::Tensor delta, const Accepted& acc,
                                       int64_t staleness) {
  UpdateRecord rec;
  rec.client_id = m.client_id;
  rec.sequence = static_cast<int64_t>(m.sequence);
  rec.base_version = static_cast<int64_t>(m.base_version);
  rec.num_samples = static_cast<int64_t>(m.num_samples);
  rec.round = trigger_->round();
  rec.norm = acc.norm;
  rec.clipped = acc.clipped;
  rec.id = store_->append_update(rec, delta);  // durable from here on
  last_sequence_[m.client_id] = m.sequence;
  buffer_.push_back({rec, std::move(delta)});
  trigger_->accepted(m.client_id);
  ++accepted_;
  SubmitOutcome out;
  out.update_id = rec.id;
  out.current_version = version_;
  out.staleness = staleness;
  out.weight = trigger_->staleness_weight(staleness);
  out.clipped = acc.clipped;
  changed_locked();
  return out;
}

SubmitOutcome FedServer::submit(const SubmitMeta& m, at::Tensor delta) {
  int64_t staleness = 0;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (auto r = check_submit_locked(m, &staleness)) return refuse_locked(m, std::move(*r));
  }
  Accepted acc;
  std::optional<Rejection> bad = check_values(m, delta, &acc);
  std::lock_guard<std::mutex> lock(mu_);
  if (bad) return refuse_locked(m, std::move(*bad));
  // The version, round or sequence may have moved while decoding.
  if (auto r = check_submit_locked(m, &staleness)) return refuse_locked(m, std::move(*r));
  return record_locked(m, std::move(delta), acc, staleness);
}

void FedServer::aggregation_loop() {
  std::unique_lock<std::mutex> lock(mu_);
  while (!stop_) {
    if (finished_) {
      changed_.wait(lock, [&] { return stop_; });
      break;
    }
    const auto now = clock_->now();
    auto wake = ServerClock::time_point::max();
    if (o_.progress_every.count() > 0) {
      // The first line at once, then one every progress_every.
      if (!last_progress_ || now - *last_progress_ >= o_.progress_every) {
        last_progress_ = now;
        log_info(progress_locked());
      }
      wake = *last_progress_ + o_.progress_every;
    }
    wake = std::min(wake, secagg_step_locked(now));
    const AggregationTrigger::Poll p = trigger_->poll(now, static_cast<int64_t>(buffer_.size()));
    if (p.selected) {
      changed_locked();
      wake = std::min(wake, secagg_step_locked(now));  // its protocol starts now
    }
    if (p.take) {
      std::vector<Pending> batch(std::make_move_iterator(buffer_.begin()),
                                 std::make_move_iterator(buffer_.begin() + *p.take));
      buffer_.erase(buffer_.begin(), buffer_.begin() + *p.take);
      const int64_t round = trigger_->round();
      const std::string note = std::exchange(secagg_note_, std::string());
      lock.unlock();
      try {
        aggregate(std::move(batch), round, note);
      } catch (const std::exception& e) {
        log_error("aggregation failed: ", e.what());
        lock.lock();
        error_ = std::current_exception();
        finished_ = true;
        changed_locked();
        return;
      }
      lock.lock();
      continue;
    }
    // Sleep until something changes (an update, a check-in, stopping) or
    // the next deadline on the server's clock.
    wake = std::min({wake, p.wake, now + std::chrono::hours(1)});
    const uint64_t seen = epoch_;
    while (!stop_ && epoch_ == seen && clock_->now() < wake) {
      clock_->wait_until(lock, changed_, wake);
    }
  }
}

void FedServer::aggregate(std::vector<Pending> batch, int64_t round, const std::string& note) {
  const auto t0 = RealClock::now();
  // In client order, not arrival order: the same updates give the same
  // aggregate bit for bit (float sums, krum's ties and bucketing depend on
  // the order), so a sync run whose rounds take the same clients is
  // reproducible whatever the threads' timing.
  std::sort(batch.begin(), batch.end(), [](const Pending& a, const Pending& b) {
    return std::tie(a.record.client_id, a.record.sequence) <
           std::tie(b.record.client_id, b.record.sequence);
  });
  rebase_statistics(batch);
  std::vector<ClientUpdate> updates;
  std::vector<int64_t> ids;
  double staleness_sum = 0;
  for (auto& p : batch) {
    ClientUpdate u;
    u.client_id = p.record.client_id;
    u.delta = p.delta;
    u.num_samples = p.record.num_samples;
    u.staleness = version_ - p.record.base_version;
    u.staleness_weight = trigger_->staleness_weight(u.staleness);
    u.summed = p.summed;
    staleness_sum += static_cast<double>(u.staleness);
    updates.push_back(std::move(u));
    if (p.ledger_ids.empty()) {
      ids.push_back(p.record.id);
    } else {
      ids.insert(ids.end(), p.ledger_ids.begin(), p.ledger_ids.end());
    }
  }
  // A round closed without any update repeats the model as its version. A
  // batch the strategy declines (a round closed after its extensions with
  // fewer updates than a robust rule needs) is not applied: its updates are
  // consumed, the reason recorded; the server keeps serving.
  std::string declined;
  std::vector<std::string> excluded;
  const at::Tensor next = aggregate_finite(updates, ids, &declined, &excluded);
  if (declined.empty() && !note.empty()) declined = note;
  const int64_t version = version_ + 1;
  const Evaluation e = evaluate(version, next);
  store_->commit_version({version, ids, e.accuracy, e.loss}, layout_.unflatten(next),
                         strategy_->state());
  const double mean_staleness =
      batch.empty() ? 0.0 : staleness_sum / static_cast<double>(batch.size());
  const int64_t selected = updates.empty() || !declined.empty()
                               ? 0
                               : static_cast<int64_t>(strategy_->last_selected().size());
  const std::optional<PrivacyStatus> privacy = strategy_->privacy();
  record_version(VersionFacts{version, round, static_cast<int64_t>(batch.size()), selected,
                              mean_staleness, declined, excluded, e,
                              std::chrono::duration<double>(RealClock::now() - t0).count(),
                              privacy});
  remember_statistics(version);
  std::lock_guard<std::mutex> lock(mu_);
  version_ = version;
  global_ = std::make_shared<const at::Tensor>(next);
  if (!std::isnan(e.accuracy)) last_accuracy_ = e.accuracy;
  trigger_->aggregated(clock_->now());
  const bool budget_spent = privacy && !privacy->budget_left;
  if (budget_spent && version - 1 < trigger_->target_versions()) {
    log_info("privacy budget: epsilon ", format_metric(privacy->epsilon), " spent (delta ",
             format_double(privacy->delta), "); the next aggregation would exceed "
             "federated.privacy.target_epsilon, so training stops at version ", version);
  }
  if (version - 1 >= trigger_->target_versions() || budget_spent) {
    finish_locked(version, e, privacy);
  }
  changed_locked();
}

// One {"kind":"version"} record in metrics.jsonl, and the log line.
void FedServer::record_version(const VersionFacts& v) {
  JsonObject rec;
  rec.add("kind", "version").add("step", v.version).add("version", v.version);
  if (v.round > 0) rec.add("round", v.round);
  rec.add("updates", v.updates)
      .add("selected", v.selected)
      .add("mean_staleness", v.mean_staleness)
      .add("non_finite", !v.excluded.empty())
      .add("aggregate_s", v.aggregate_s)
      .add("time_s", std::chrono::duration<double>(RealClock::now() - started_).count());
  if (!v.declined.empty()) rec.add("not_applied", v.declined);
  if (!v.excluded.empty()) rec.add("excluded", join(v.excluded, ", "));
  if (!std::isnan(v.eval.accuracy)) rec.add("accuracy", v.eval.accuracy).add("loss", v.eval.loss);
  const std::optional<PrivacyStatus>& privacy = v.privacy;
  if (privacy) {
    rec.add("epsilon", privacy->epsilon).add("delta", privacy->delta)
        .add("clip_norm", privacy->clip_norm);
  }
  metrics_->write(rec);
  log_info("version ", v.version, v.round > 0 ? str(" (round ", v.round, ")") : "", ": ",
           v.updates, " update(s), mean staleness ", format_metric(v.mean_staleness),
           std::isnan(v.eval.accuracy) ? "" : str(", test accuracy ", format_metric(v.eval.accuracy)),
           privacy ? str(", epsilon ", format_metric(privacy->epsilon), " (delta ",
                         format_double(privacy->delta), ")")
                   : "");
}

// Note [Statistics of stale updates]: the model's statistics (BatchNorm
// running means and variances, after the parameters in the flat vector)
// take the aggregate as it is, x += mean(delta). A stale update's delta is
// relative to its base version's statistics, not the current ones: added
// to the current ones it can push a variance below zero (seen with small
// async buffers: test loss NaN from version 3). So each stale update's
// statistics delta is re-based on the current version first -- it becomes
// (the client's statistics) - (the current ones) -- and the aggregate is a
// convex combination of statistics clients really had.
void FedServer::rebase_statistics(std::vector<Pending>& batch) {
  const int64_t stats_at = layout_.parameters_numel();
  if (stats_at == layout_.numel()) return;
  const at::Tensor current = global_->slice(0, stats_at);
  for (auto& p : batch) {
    if (p.record.base_version == version_) continue;
    p.delta.slice(0, stats_at).add_(statistics_of(p.record.base_version) - current);
  }
}

// The statistics of versions a later update may still be based on.
void FedServer::remember_statistics(int64_t next_version) {
  const int64_t stats_at = layout_.parameters_numel();
  if (stats_at == layout_.numel()) return;
  statistics_[version_] = global_->slice(0, stats_at).clone();
  for (auto it = statistics_.begin(); it != statistics_.end();) {
    it = it->first < next_version - policy_.max_staleness ? statistics_.erase(it) : std::next(it);
  }
}

std::shared_ptr<const std::string> FedServer::package(const ModelView& v) {
  if (!package_traced_) return nullptr;
  std::lock_guard<std::mutex> lock(package_mu_);
  if (package_version_ == v.version) return package_;
  torch::NoGradGuard no_grad;
  const auto t0 = RealClock::now();
  std::map<std::string, at::Tensor> values;
  for (auto& [name, t] : layout_.unflatten(*v.flat)) values[name] = t;
  // Every parameter and statistic the layout carries (a buffer it does not,
  // num_batches_tracked, keeps its value: the int8 graph does not read it).
  for (const auto& p : package_traced_->named_parameters()) p.value.detach().copy_(values.at(p.name));
  for (const auto& b : package_traced_->named_buffers()) {
    if (const auto it = values.find(b.name); it != values.end()) b.value.copy_(it->second);
  }
  train::QuantOptions q;
  q.mode = o_.service.publish == "int8_dynamic" ? train::QuantMode::kDynamic
                                                : train::QuantMode::kStatic;
  std::vector<at::Tensor> calibration;
  const int64_t n = std::min(o_.service.publish_calibration_samples, eval_.inputs.size(0));
  for (int64_t i = 0; i < n; i += o_.eval_batch_size) {
    calibration.push_back(eval_.inputs.narrow(0, i, std::min(o_.eval_batch_size, n - i)));
  }
  const train::EdgeModelInfo info{o_.model_name, train::Task::kClassification, eval_.shape.classes,
                                  eval_.inputs.narrow(0, 0, 1), eval_.pixel_mean, eval_.pixel_std};
  package_ = std::make_shared<const std::string>(
      train::int8_package(*package_traced_, info, q, calibration));
  package_version_ = v.version;
  log_info("published version ", v.version, " as a strata-int8 package (", o_.service.publish,
           ", ", package_->size(), " bytes, ",
           format_metric(std::chrono::duration<double>(RealClock::now() - t0).count()), " s)");
  return package_;
}

// Every eval_every versions and the last one, on the evaluation data.
FedServer::Evaluation FedServer::evaluate(int64_t version, const at::Tensor& params) {
  const bool last = version - 1 >= trigger_->target_versions();
  if ((version - 1) % o_.eval_every != 0 && !last) return {};
  layout_.load_into(*model_, params);
  const train::EvalSums e =
      train::evaluate_classifier(*model_, eval_.inputs, eval_.targets, o_.eval_batch_size);
  return {static_cast<double>(e.correct) / static_cast<double>(e.count),
          e.loss_sum / static_cast<double>(e.count)};
}

void FedServer::finish_locked(int64_t version, const Evaluation& e,
                              const std::optional<PrivacyStatus>& privacy) {
  finished_ = true;
  JsonObject summary;
  summary.add("kind", "summary")
      .add("version", version)
      .add("accuracy", e.accuracy)
      .add("loss", e.loss)
      .add("accepted", accepted_)
      .add("rejected", rejected_);
  if (privacy) {
    summary.add("epsilon", privacy->epsilon).add("delta", privacy->delta)
        .add("privacy_budget_spent", !privacy->budget_left);
  }
  summary.add("wall_s", std::chrono::duration<double>(RealClock::now() - started_).count());
  metrics_->write(summary);
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
at::Tensor FedServer::aggregate_finite(std::vector<ClientUpdate>& updates, std::vector<int64_t> ids,
                                       std::string* declined, std::vector<std::string>* excluded) {
  if (updates.empty()) return global_->clone();
  std::vector<std::pair<std::string, at::Tensor>> saved;
  for (const auto& [k, t] : strategy_->state()) saved.emplace_back(k, t.clone());
  for (;;) {
    Aggregation a = strategy_->aggregate(*global_, updates);
    if (!a.applied()) {
      *declined = a.declined;
      log_error("version ", version_ + 1, " keeps the previous parameters: ", *declined);
      return global_->clone();
    }
    if (at::isfinite(a.next).all().item<bool>()) return a.next;
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
  return str(trigger_->progress(version_, static_cast<int64_t>(buffer_.size())), "; ",
             last_sequence_.size(), " client(s) seen; ", accepted_, " update(s) accepted, ",
             rejected_, " refused", refused.empty() ? "" : " (" + refused + ")");
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
  return status_locked();
}

ServerStatus FedServer::wait_status(const std::function<bool(const ServerStatus&)>& done,
                                    std::chrono::milliseconds wait) {
  std::unique_lock<std::mutex> lock(mu_);
  changed_.wait_for(lock, wait, [&] { return stop_ || done(status_locked()); });
  return status_locked();
}

ServerStatus FedServer::status_locked() const {
  ServerStatus s;
  s.version = version_;
  s.mode = trigger_->mode();
  s.round = trigger_->round();
  s.buffered = static_cast<int64_t>(buffer_.size());
  s.accepted = accepted_;
  s.rejected = rejected_;
  s.rejected_by_reason = rejected_by_reason_;
  s.auth_failures = auth_failures_;
  s.clients_seen = static_cast<int64_t>(last_sequence_.size());
  s.last_test_accuracy = last_accuracy_;
  s.enrolled_clients = store_->num_clients();
  s.finished = finished_;
  s.target_versions = trigger_->target_versions();
  s.updates_per_aggregation = trigger_->batch_size();
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
