// FedServer's side of secure aggregation (Note [Secure aggregation] in
// secagg.h): the open round's secagg::Round, its stage deadlines, the masked
// inputs' ledger records, and the unmasked sum as the round's one batch.
#include <algorithm>
#include <cstring>

#include "core/error.h"
#include "core/logging.h"
#include "core/random.h"
#include "core/strings.h"
#include "federated/server.h"

namespace strata::fed {
namespace {

Rejection precondition(const char* key, std::string why) {
  return Rejection{RejectCode::kFailedPrecondition, key, std::move(why)};
}

const char* stage_name(secagg::Round::Stage s) {
  switch (s) {
    case secagg::Round::Stage::kKeys: return "keys";
    case secagg::Round::Stage::kShares: return "shares";
    case secagg::Round::Stage::kMasked: return "masked input";
    case secagg::Round::Stage::kReveal: return "unmasking";
    case secagg::Round::Stage::kDone: return "done";
  }
  return "?";
}

}  // namespace

ServerClock::time_point FedServer::secagg_step_locked(ServerClock::time_point now) {
  constexpr auto kNone = ServerClock::time_point::max();
  if (!o_.secagg.enabled || finished_) return kNone;
  const std::vector<std::string> selected = trigger_->selected_clients();
  if (selected.empty()) return kNone;
  if (!sa_ || sa_->round != trigger_->round()) {
    sa_ = std::make_unique<SecAggState>();
    sa_->round = trigger_->round();
    sa_->clients = selected;
    secagg::Settings s = o_.secagg.settings;
    s.values = layout_.numel();
    const auto n = static_cast<int64_t>(selected.size());
    // The keys stage waits for the clients' local training.
    sa_->deadline = now + o_.sync.round_timeout;
    try {
      sa_->r = std::make_unique<secagg::Round>(
          s, selected, mix_seed(o_.seed, static_cast<uint64_t>(sa_->round), 0x5345434147));
    } catch (const ConfigError& e) {
      secagg_fail_locked(str("the round selected ", n, " clients, too few: ", e.what()));
      return kNone;
    }
    log_info("round ", sa_->round, ": secure aggregation among ", n, " selected clients (",
             secagg::neighbour_count(s, n), " neighbours each, threshold ",
             s.threshold > 0 ? std::to_string(s.threshold) : "a majority of them", ")");
  }
  if (!sa_->failed.empty() || !sa_->r) return kNone;
  secagg::Round& r = *sa_->r;
  const secagg::Round::Stage stage = r.stage();
  if (stage == secagg::Round::Stage::kDone) return kNone;
  if (!r.all_in() && now < sa_->deadline) return sa_->deadline;
  if (!r.all_in()) {
    log_info("round ", sa_->round, ": the secure aggregation's ", stage_name(stage),
             " stage closed at its deadline without every client");
  }
  std::optional<std::string> why;
  switch (stage) {
    case secagg::Round::Stage::kKeys: why = r.close_keys(); break;
    case secagg::Round::Stage::kShares: why = r.close_shares(); break;
    case secagg::Round::Stage::kMasked: why = r.close_masked(); break;
    case secagg::Round::Stage::kReveal: {
      secagg::Unmasked u = r.finish();
      if (!u.ok) {
        why = u.reason;
        break;
      }
      // The round's one batch: the weighted mean of the survivors' updates
      // (clients weighted by min(samples, max_samples) / max_samples), or
      // with central DP (unweighted, clipped by the clients) their sum.
      Pending p;
      p.record.client_id = str("secagg-round-", sa_->round);
      p.record.round = sa_->round;
      p.record.base_version = version_;
      double weight = 0;
      for (const int64_t i : u.survivors) {
        const SecAggState::Input& in = sa_->inputs.at(sa_->clients[static_cast<size_t>(i)]);
        p.record.num_samples += static_cast<int64_t>(in.num_samples);
        p.ledger_ids.push_back(in.ledger_id);
        const int64_t cap = o_.secagg.max_samples;
        weight += cap > 0 ? static_cast<double>(std::min<uint64_t>(
                                in.num_samples, static_cast<uint64_t>(cap))) /
                                static_cast<double>(cap)
                          : 1.0;
      }
      p.record.id = p.ledger_ids.front();
      p.summed = static_cast<int64_t>(u.survivors.size());
      p.delta = o_.strategy.dp.enabled ? u.sum : u.sum / weight;
      log_info("round ", sa_->round, ": unmasked the sum of ", u.survivors.size(),
               " clients' updates (", sa_->clients.size() - u.survivors.size(),
               " of the selected dropped out)");
      buffer_.push_back(std::move(p));
      break;
    }
    case secagg::Round::Stage::kDone: break;
  }
  if (why) {
    secagg_fail_locked(*why);
    return kNone;
  }
  sa_->deadline = now + o_.secagg.stage_timeout;
  changed_locked();
  return r.stage() == secagg::Round::Stage::kDone ? kNone : sa_->deadline;
}

void FedServer::secagg_fail_locked(const std::string& why) {
  log_warn("round ", sa_->round, ": secure aggregation failed: ", why,
           "; nothing was unmasked, the round is abandoned (its version repeats the model)");
  sa_->failed = why;
  std::vector<int64_t> ids;
  for (auto& [client, in] : sa_->inputs) {
    if (in.ledger_id > 0) ids.push_back(in.ledger_id);
  }
  store_->discard_updates(ids);
  sa_->inputs.clear();
  secagg_note_ = "secure aggregation failed: " + why;
  trigger_->round_failed();
  changed_locked();
}

SecAggAnswer FedServer::secagg(const std::string& client, const SecAggCall& call) {
  std::lock_guard<std::mutex> lock(mu_);
  SecAggAnswer a = secagg_answer_locked(client, call);
  if (a.rejection) return a;
  secagg::Round& r = *sa_->r;
  using Stage = secagg::Round::Stage;
  // A message for a stage that has closed is not applied (a retry after a
  // lost reply gets the stage's answer; a latecomer learns it dropped out);
  // one for a stage not open yet is refused by the round.
  std::optional<Rejection> rej;
  switch (call.kind) {
    case SecAggCall::Kind::kKeys:
      if (r.stage() <= Stage::kKeys) rej = r.advertise(client, call.keys);
      break;
    case SecAggCall::Kind::kShares:
      if (r.stage() <= Stage::kShares) rej = r.shares(client, call.shares);
      break;
    case SecAggCall::Kind::kReveal:
      if (r.stage() <= Stage::kReveal) rej = r.reveal(client, call.reveal);
      break;
    case SecAggCall::Kind::kInput: rej = secagg_input_locked(client, call.input, &a.received); break;
    case SecAggCall::Kind::kUnmask: break;
  }
  // A repeated message (a retry after a lost reply) stands as the first.
  if (rej && rej->key != "secagg_repeat") {
    ++rejected_;
    ++rejected_by_reason_[rej->key];
    log_warn("refused a secure aggregation message from ", quote(client), ": ",
             reject_code_name(rej->code), " (", rej->key, ") ", rej->reason);
    a = SecAggAnswer{};
    a.rejection = std::move(rej);
    return a;
  }
  changed_locked();  // a stage may be complete
  if (call.kind == SecAggCall::Kind::kInput) return a;
  return secagg_answer_locked(client, call);
}

SecAggAnswer FedServer::secagg_answer(const std::string& client, const SecAggCall& call) {
  std::lock_guard<std::mutex> lock(mu_);
  return secagg_answer_locked(client, call);
}

SecAggAnswer FedServer::secagg_answer_locked(const std::string& client,
                                             const SecAggCall& call) {
  SecAggAnswer a;
  const auto refuse = [&](Rejection r) {
    a.rejection = std::move(r);
    return a;
  };
  if (!o_.secagg.enabled) {
    return refuse(precondition("secagg_off", "this server does not run secure aggregation; "
                                              "send updates with SubmitUpdate"));
  }
  if (finished_) return refuse(precondition("finished", "training has finished"));
  if (stop_) {
    return refuse({RejectCode::kUnavailable, "stopping", "the server is shutting down; retry later"});
  }
  if (!sa_ || sa_->round != static_cast<int64_t>(call.round) ||
      trigger_->round() != static_cast<int64_t>(call.round)) {
    return refuse(precondition("not_selected",
                               str("round ", call.round, " is not the open secure aggregation "
                                   "round (round ", trigger_->round(), " is open",
                                   sa_ ? "" : ", still selecting", ")")));
  }
  if (!sa_->failed.empty()) {
    return refuse(precondition("secagg_failed",
                               str("round ", sa_->round, "'s secure aggregation failed: ",
                                   sa_->failed)));
  }
  const secagg::Round& r = *sa_->r;
  const std::optional<int64_t> idx = r.index_of(client);
  if (!idx) {
    return refuse(precondition("not_selected", str("client ", quote(client),
                                                   " is not selected for round ", sa_->round)));
  }
  using Stage = secagg::Round::Stage;
  const auto dropped = [&](const char* stage) {
    trigger_->refused(client);  // no more work for it this round
    return refuse(precondition("secagg_dropped",
                               str("the ", stage, " stage of round ", sa_->round,
                                   " closed without this client's message: it dropped out of "
                                   "the round")));
  };
  switch (call.kind) {
    case SecAggCall::Kind::kKeys:
      if (r.stage() == Stage::kKeys) return a.pending = true, a;
      if (!r.advertised().count(*idx)) return dropped("keys");
      a.roster = r.roster(*idx);
      return a;
    case SecAggCall::Kind::kShares:
      if (r.stage() <= Stage::kShares) return a.pending = true, a;
      if (!r.shared().count(*idx)) return dropped("shares");
      a.inbox = r.inbox(*idx);
      return a;
    case SecAggCall::Kind::kInput:
      if (r.stage() != Stage::kMasked) {
        return refuse(precondition("secagg_stage",
                                   str("round ", sa_->round, " is at its ", stage_name(r.stage()),
                                       " stage, not masked input")));
      }
      return a;
    case SecAggCall::Kind::kUnmask:
      if (r.stage() <= Stage::kMasked) return a.pending = true, a;
      if (!r.survived().count(*idx)) return dropped("masked input");
      a.fate = r.fate(*idx);
      return a;
    case SecAggCall::Kind::kReveal:
      return a;
  }
  return a;
}

std::optional<Rejection> FedServer::secagg_input_locked(const std::string& client,
                                                        const SecAggCall::Input& in,
                                                        int64_t* received) {
  const secagg::Round& r = *sa_->r;
  const std::optional<int64_t> idx = r.index_of(client);
  if (!r.shared().count(*idx)) {
    return precondition("secagg_dropped", "this client's shares did not make the shares stage: "
                                          "it dropped out of the round");
  }
  const auto values = static_cast<uint64_t>(layout_.numel());
  SecAggState::Input& mine = sa_->inputs[client];
  if (mine.ledger_id > 0) {
    *received = static_cast<int64_t>(values);
    return Rejection{RejectCode::kAlreadyExists, "secagg_repeat", "the masked input is recorded"};
  }
  const auto bad = [](std::string why) {
    return Rejection{RejectCode::kInvalidArgument, "secagg_bad_input", std::move(why)};
  };
  if (in.offset != mine.y.size()) {
    return bad(str("a masked-input chunk at value ", in.offset, "; the next is ", mine.y.size(),
                   " (chunks come in order)"));
  }
  if (in.data.size() % 4 != 0 || in.offset + in.data.size() / 4 > values) {
    return bad(str("a masked-input chunk of ", in.data.size(), " bytes at value ", in.offset,
                   ": the input is ", values, " uint32 values (", values * 4, " bytes)"));
  }
  if (in.offset == 0) {
    const auto seq = last_sequence_.find(client);
    STRATA_INTERNAL_ASSERT(seq != last_sequence_.end(), "secagg before authenticate");
    UpdateFacts facts{client,         static_cast<uint64_t>(version_), static_cast<uint64_t>(version_),
                      in.sequence,    seq->second,                     in.num_samples};
    if (auto rej = check_metadata(facts, policy_, nullptr)) return rej;
    mine.num_samples = in.num_samples;
    mine.sequence = in.sequence;
    mine.y.reserve(values);
  } else if (in.num_samples != mine.num_samples || in.sequence != mine.sequence) {
    return bad("num_samples and sequence must be the same in every chunk of a masked input");
  }
  const size_t n = in.data.size() / 4;
  const size_t at = mine.y.size();
  mine.y.resize(at + n);
  std::memcpy(mine.y.data() + at, in.data.data(), in.data.size());  // little-endian hosts
  *received = static_cast<int64_t>(mine.y.size());
  if (mine.y.size() < values) return std::nullopt;
  // Complete: durable (the ledger keeps the masked values bit for bit),
  // then into the round.
  UpdateRecord rec;
  rec.client_id = client;
  rec.sequence = static_cast<int64_t>(mine.sequence);
  rec.base_version = version_;
  rec.num_samples = static_cast<int64_t>(mine.num_samples);
  rec.round = sa_->round;
  rec.masked = true;
  at::Tensor bits = at::empty({static_cast<int64_t>(values)}, at::kFloat);
  std::memcpy(bits.data_ptr(), mine.y.data(), values * 4);
  mine.ledger_id = store_->append_update(rec, bits);
  last_sequence_[client] = mine.sequence;
  ++accepted_;
  trigger_->accepted(client);
  auto rej = sa_->r->masked(client, std::move(mine.y));
  mine.y = {};
  STRATA_INTERNAL_ASSERT(!rej, "a complete masked input was refused: ", rej ? rej->reason : "");
  return std::nullopt;
}

}  // namespace strata::fed
