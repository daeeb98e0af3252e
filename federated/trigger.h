// When the server aggregates, and whose updates it takes: one interface,
// two implementations.
//
//   SyncRounds    rounds of selected clients. A round selects
//                 ceil(K (1 + over_selection)) of the clients that checked
//                 in (the strategy's select_clients), takes updates only
//                 from them, one each, and closes with K updates -- or at
//                 its deadline with at least min_updates, or after
//                 max_round_extensions extended deadlines with whatever
//                 arrived. Every update is based on the round's version.
//   SecAggRounds  rounds of secure aggregation (federated.secagg): one
//                 selection per round of ceil(K (1 + over_selection)) of
//                 the clients that checked in (at least min_clients), no
//                 top-ups (the round's key graph is fixed); the round's one
//                 batch is the unmasked sum the server buffers, or nothing
//                 when the protocol failed (the version repeats the model).
//                 SubmitUpdate is refused: updates come masked.
//   AsyncBuffer   FedBuff: anyone may submit, an update may be up to
//                 max_staleness versions behind and is weighted
//                 (1 + staleness)^-a; every K buffered updates become a
//                 version.
//
// The server calls a trigger with its own lock held (no trigger locks
// anything) and reads time only through the ServerClock it passes in.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "federated/clock.h"
#include "federated/strategy.h"
#include "federated/validator.h"

namespace strata::fed {

struct SyncRoundOptions {
  int64_t rounds = 50;
  int64_t clients_per_round = 10;  // K
  double over_selection = 0.2;
  int64_t min_updates = 0;  // at a deadline, aggregate with at least this many (0: K)
  std::chrono::milliseconds round_timeout{300000};
  int64_t max_round_extensions = 3;
  // A round selects whoever checked in once this long has passed since it
  // opened, or at once when enough clients are waiting.
  std::chrono::milliseconds gathering{1000};
};

struct AsyncBufferOptions {
  int64_t versions = 100;
  int64_t buffer_size = 10;  // K
  double staleness_exponent = 0.5;
  int64_t max_staleness = 20;
};

class AggregationTrigger {
 public:
  using time_point = ServerClock::time_point;
  virtual ~AggregationTrigger() = default;

  virtual const std::string& mode() const = 0;  // vocabulary.h's mode_names()
  virtual int64_t target_versions() const = 0;  // aggregations to run
  virtual int64_t batch_size() const = 0;       // K: a full aggregation's updates
  // The fewest updates a planned aggregation takes (a round without
  // extensions: min_updates; the buffer: K), which the strategy must be
  // able to aggregate.
  virtual int64_t planned_batch() const = 0;
  virtual int64_t max_staleness() const = 0;
  // In (0, 1] for every staleness in [0, max_staleness()].
  virtual double staleness_weight(int64_t staleness) const = 0;
  virtual int64_t round() const { return 0; }  // the open round (0: no rounds)

  // Clients. check_in: the client waits for work (true: that changed
  // something). has_work: it may submit now. admit: why its update for
  // `round` cannot be taken (nullopt: it can). accepted/refused: its update
  // was kept, or refused after admission (a selected client then goes back
  // to the pool). resumed: an update the store held at startup.
  virtual bool check_in(const std::string& /*id*/) { return false; }
  virtual bool has_work(const std::string& /*id*/, int64_t /*buffered*/) const { return false; }
  virtual std::optional<Rejection> admit(const std::string& /*id*/, uint64_t /*round*/,
                                         int64_t /*buffered*/) const {
    return std::nullopt;
  }
  virtual void accepted(const std::string& /*id*/) {}
  virtual void refused(const std::string& /*id*/) {}
  virtual void resumed(const std::string& /*id*/) {}
  // Refusals that are part of this mode's normal flow (logged quietly).
  virtual bool flow_rejection(const std::string& /*key*/) const { return false; }

  // The aggregation loop asks at `now`, with `buffered` updates waiting.
  struct Poll {
    std::optional<size_t> take;  // aggregate the first this many now (0: none; repeats the model)
    bool selected = false;       // clients were selected: wake their long polls
    time_point wake = time_point::max();  // ask again by then at the latest
  };
  virtual Poll poll(time_point now, int64_t buffered) = 0;
  // Secure aggregation: the clients selected for the open round, once it
  // selected them (empty before); the round's protocol failed.
  virtual std::vector<std::string> selected_clients() const { return {}; }
  virtual void round_failed() {}

  // The batch poll() handed out became a version.
  virtual void aggregated(time_point /*now*/) {}
  // The mode's part of the periodic progress line.
  virtual std::string progress(int64_t version, int64_t buffered) const = 0;
};

// The clients a round selects: ceil(K (1 + over_selection)).
int64_t selected_per_round(const SyncRoundOptions& o);

std::unique_ptr<AggregationTrigger> make_sync_rounds(const SyncRoundOptions& o,
                                                     const Strategy& strategy, uint64_t seed,
                                                     int64_t round, ServerClock::time_point now);
std::unique_ptr<AggregationTrigger> make_secagg_rounds(const SyncRoundOptions& o,
                                                       const Strategy& strategy, uint64_t seed,
                                                       int64_t round, int64_t min_clients,
                                                       ServerClock::time_point now);
std::unique_ptr<AggregationTrigger> make_async_buffer(const AsyncBufferOptions& o);

}  // namespace strata::fed
