#include "federated/trigger.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "core/error.h"
#include "core/logging.h"
#include "core/strings.h"

namespace strata::fed {
namespace {

// What both kinds of rounds share: the options, the round number, the
// clients waiting to be selected and those selected for the open round.
class Rounds : public AggregationTrigger {
 public:
  Rounds(const SyncRoundOptions& o, const Strategy& strategy, uint64_t seed, int64_t round,
         int64_t select_target)
      : o_(o), strategy_(strategy), rng_(seed), round_(round), select_target_(select_target) {}

  const std::string& mode() const override { return mode_names()[0]; }
  int64_t target_versions() const override { return o_.rounds; }
  int64_t batch_size() const override { return o_.clients_per_round; }
  int64_t max_staleness() const override { return 0; }
  double staleness_weight(int64_t) const override { return 1.0; }
  int64_t round() const override { return round_; }

  bool check_in(const std::string& id) override {
    if (selected_.count(id) || waiting_.count(id)) return false;
    waiting_.insert(id);
    return true;
  }

 protected:
  // Up to `count` of the waiting clients, chosen by the strategy, become
  // selected.
  void select(int64_t count) {
    std::vector<std::string> pool(waiting_.begin(), waiting_.end());
    for (const std::string& id : strategy_.select_clients(std::move(pool), count, rng_)) {
      if (!waiting_.erase(id)) continue;  // a strategy may only pick from the pool
      selected_.insert(id);
    }
  }

  SyncRoundOptions o_;
  const Strategy& strategy_;
  std::mt19937_64 rng_;
  int64_t round_;
  const int64_t select_target_;
  std::set<std::string> waiting_;   // checked in, not selected
  std::set<std::string> selected_;  // for round_
};

class SyncRounds final : public Rounds {
 public:
  SyncRounds(const SyncRoundOptions& o, const Strategy& strategy, uint64_t seed, int64_t round,
             time_point now)
      : Rounds(o, strategy, seed, round, selected_per_round(o)) {
    open(now);
  }

  int64_t planned_batch() const override { return std::min(o_.clients_per_round, min_updates()); }
  bool has_work(const std::string& id, int64_t buffered) const override {
    return selected_.count(id) && !submitted_.count(id) && !closed_ &&
           buffered < o_.clients_per_round;
  }
  std::optional<Rejection> admit(const std::string& id, uint64_t round,
                                 int64_t buffered) const override {
    if (round != static_cast<uint64_t>(round_) || !selected_.count(id)) {
      return Rejection{RejectCode::kFailedPrecondition, "not_selected",
                       str("client ", quote(id), " is not selected for round ", round,
                           " (open round: ", round_, "); fetch the model and wait to be selected")};
    }
    if (submitted_.count(id)) {
      return Rejection{RejectCode::kFailedPrecondition, "round_duplicate",
                       str("client ", quote(id), " already submitted in round ", round_)};
    }
    if (buffered >= o_.clients_per_round || closed_) {
      return Rejection{RejectCode::kFailedPrecondition, "round_full",
                       str("round ", round_, " already has its ", o_.clients_per_round,
                           " updates")};
    }
    return std::nullopt;
  }
  void accepted(const std::string& id) override { submitted_.insert(id); }
  // A selected client whose update for the round was refused (round full
  // or closed, or the update itself invalid) is done with that round: it
  // goes back to the pool instead of being handed the same round again.
  void refused(const std::string& id) override {
    if (!submitted_.count(id)) selected_.erase(id);
  }
  void resumed(const std::string& id) override { submitted_.insert(id); }
  bool flow_rejection(const std::string& key) const override {
    return key == "stale" || key == "round_full";
  }

  Poll poll(time_point now, int64_t buffered) override {
    Poll p;
    // Select once enough clients checked in, or after the gathering time
    // with whoever is there; then top up whenever the round has fewer
    // selected-and-working clients than its target (a selected client was
    // refused, or few had checked in when the gathering time ended) and
    // someone is waiting. Topping up only at the deadline left a round that
    // opened with too few clients waiting out round_timeout although idle
    // clients had checked in meanwhile.
    const int64_t active = static_cast<int64_t>(selected_.size() - submitted_.size());
    const bool gathering = now - opened_ < o_.gathering;
    const int64_t missing = select_target_ - active - buffered;
    if (!closed_ && missing > 0 && !waiting_.empty() &&
        (static_cast<int64_t>(waiting_.size()) >= select_target_ - active || !gathering)) {
      select(missing);
      p.selected = true;
    }
    // A round that cannot fill (clients gone, or every update refused)
    // closes after its extensions with whatever arrived, possibly nothing.
    const bool due = buffered >= o_.clients_per_round ||
                     (now >= deadline_ && ((buffered >= min_updates() && buffered > 0) ||
                                           extensions_ >= o_.max_round_extensions));
    if (!closed_ && due) {
      closed_ = true;
      p.take = static_cast<size_t>(buffered);
      return p;
    }
    if (!closed_ && now >= deadline_) {
      ++extensions_;
      deadline_ = now + o_.round_timeout;
      log_warn("round ", round_, ": ", buffered, " valid update(s) of ", o_.clients_per_round,
               " by its deadline; extended (", extensions_, " of ", o_.max_round_extensions, ")");
    }
    p.wake = deadline_;
    if (gathering) p.wake = std::min(p.wake, opened_ + o_.gathering);
    return p;
  }

  void aggregated(time_point now) override {
    ++round_;
    selected_.clear();
    submitted_.clear();
    open(now);
  }

  std::string progress(int64_t, int64_t buffered) const override {
    return str("round ", round_, " of ", o_.rounds, ": ", buffered, "/", o_.clients_per_round,
               " updates, ", selected_.size() - submitted_.size(),
               " selected client(s) training, ", waiting_.size(), " waiting to be selected");
  }

 private:
  int64_t min_updates() const {
    return o_.min_updates > 0 ? o_.min_updates : o_.clients_per_round;
  }
  void open(time_point now) {
    opened_ = now;
    deadline_ = now + o_.round_timeout;
    extensions_ = 0;
    closed_ = false;
  }

  std::set<std::string> submitted_;  // in round_
  time_point opened_, deadline_;
  int64_t extensions_ = 0;  // deadlines this round has been extended
  bool closed_ = false;     // its batch is being aggregated
};

class SecAggRounds final : public Rounds {
 public:
  SecAggRounds(const SyncRoundOptions& o, const Strategy& strategy, uint64_t seed, int64_t round,
               int64_t min_clients, time_point now)
      : Rounds(o, strategy, seed, round, std::max(min_clients, selected_per_round(o))),
        min_clients_(min_clients), now_(now) {}

  // The strategy sees one batch: the unmasked sum.
  int64_t planned_batch() const override { return 1; }
  // A selected client has work until its masked input is in or it dropped
  // out (the server reports both).
  bool has_work(const std::string& id, int64_t) const override {
    return selected_.count(id) && !done_.count(id) && !closed_;
  }
  void accepted(const std::string& id) override { done_.insert(id); }
  void refused(const std::string& id) override { done_.insert(id); }
  std::optional<Rejection> admit(const std::string&, uint64_t, int64_t) const override {
    return Rejection{RejectCode::kFailedPrecondition, "secagg_only",
                     "this server runs secure aggregation (federated.secagg): send the update "
                     "masked through the SecAgg call, not SubmitUpdate"};
  }

  bool check_in(const std::string& id) override {
    if (!Rounds::check_in(id)) return false;
    // The gathering time runs from the first client that waits: the key
    // graph is fixed once selected, so a round should not start with the
    // few clients that happened to be there when it opened.
    if (!first_wait_) first_wait_ = now_;
    return true;
  }

  Poll poll(time_point now, int64_t buffered) override {
    Poll p;
    now_ = now;
    const bool gathering = !first_wait_ || now - *first_wait_ < o_.gathering;
    const auto waiting = static_cast<int64_t>(waiting_.size());
    if (selected_.empty() && !closed_ &&
        (waiting >= select_target_ || (!gathering && waiting >= min_clients_))) {
      select(select_target_);
      p.selected = true;
    }
    if (!closed_ && (buffered >= 1 || failed_)) {
      closed_ = true;
      p.take = static_cast<size_t>(std::min<int64_t>(buffered, 1));
      return p;
    }
    if (gathering && selected_.empty() && first_wait_) p.wake = *first_wait_ + o_.gathering;
    return p;
  }

  std::vector<std::string> selected_clients() const override {
    return {selected_.begin(), selected_.end()};
  }
  void round_failed() override { failed_ = true; }

  void aggregated(time_point now) override {
    ++round_;
    selected_.clear();
    done_.clear();
    failed_ = closed_ = false;
    first_wait_.reset();
    if (!waiting_.empty()) first_wait_ = now;
  }

  std::string progress(int64_t, int64_t) const override {
    return str("round ", round_, " of ", o_.rounds, " (secure aggregation): ",
               selected_.size(), " client(s) selected, ", waiting_.size(),
               " waiting to be selected");
  }

 private:
  const int64_t min_clients_;
  std::set<std::string> done_;  // masked input in, or dropped out
  time_point now_{};                       // the last poll's (check_in has no clock)
  std::optional<time_point> first_wait_;  // the first client waiting for this round
  bool failed_ = false, closed_ = false;
};

class AsyncBuffer final : public AggregationTrigger {
 public:
  explicit AsyncBuffer(const AsyncBufferOptions& o) : o_(o) {}

  const std::string& mode() const override { return mode_names()[1]; }
  int64_t target_versions() const override { return o_.versions; }
  int64_t batch_size() const override { return o_.buffer_size; }
  int64_t planned_batch() const override { return o_.buffer_size; }
  int64_t max_staleness() const override { return o_.max_staleness; }
  // In (0, 1] for every staleness an update can have (0 <= staleness <=
  // max_staleness, checked on submit): a weight is never NaN or infinite.
  double staleness_weight(int64_t staleness) const override {
    STRATA_INTERNAL_ASSERT(staleness >= 0, "negative staleness ", staleness);
    const double w = std::pow(1.0 + static_cast<double>(staleness), -o_.staleness_exponent);
    STRATA_INTERNAL_ASSERT(std::isfinite(w) && w > 0 && w <= 1, "staleness weight ", w);
    return w;
  }

  // FedBuff applies exactly K; what arrived meanwhile waits its turn.
  Poll poll(time_point, int64_t buffered) override {
    Poll p;
    if (buffered >= o_.buffer_size) p.take = static_cast<size_t>(o_.buffer_size);
    return p;
  }

  std::string progress(int64_t version, int64_t buffered) const override {
    return str("version ", version, " (", version - 1, " of ", o_.versions,
               " aggregations): buffer ", buffered, "/", o_.buffer_size);
  }

 private:
  AsyncBufferOptions o_;
};

}  // namespace

int64_t selected_per_round(const SyncRoundOptions& o) {
  return static_cast<int64_t>(
      std::ceil(static_cast<double>(o.clients_per_round) * (1.0 + o.over_selection)));
}

std::unique_ptr<AggregationTrigger> make_sync_rounds(const SyncRoundOptions& o,
                                                     const Strategy& strategy, uint64_t seed,
                                                     int64_t round, ServerClock::time_point now) {
  return std::make_unique<SyncRounds>(o, strategy, seed, round, now);
}

std::unique_ptr<AggregationTrigger> make_secagg_rounds(const SyncRoundOptions& o,
                                                       const Strategy& strategy, uint64_t seed,
                                                       int64_t round, int64_t min_clients,
                                                       ServerClock::time_point now) {
  return std::make_unique<SecAggRounds>(o, strategy, seed, round, min_clients, now);
}

std::unique_ptr<AggregationTrigger> make_async_buffer(const AsyncBufferOptions& o) {
  return std::make_unique<AsyncBuffer>(o);
}

}  // namespace strata::fed
