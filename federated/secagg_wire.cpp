#include "federated/secagg_wire.h"

#include <algorithm>
#include <cstring>

#include "core/error.h"
#include "core/strings.h"

namespace strata::fed::secagg {
namespace {

std::string bytes(const Key& k) { return std::string(k.begin(), k.end()); }

template <size_t N>
bool fill(const std::string& s, std::array<uint8_t, N>* out) {
  if (s.size() != N) return false;
  std::memcpy(out->data(), s.data(), N);
  return true;
}

std::string wrong_size(const char* field, size_t got, size_t want) {
  return str(field, " is ", got, " bytes, not ", want);
}

std::string too_many(const char* what, size_t got, size_t max) {
  return str(got, " ", what, ": more than the round's ", max, " clients");
}

std::optional<int64_t> index(uint64_t v) {
  if (v > (uint64_t{1} << 31)) return std::nullopt;
  return static_cast<int64_t>(v);
}

// A sealed share's peer (recipient or sender), box and commitments, the same
// on its way to the server (SecAggSealedShare) and from it (SecAggIncoming).
template <class Pb, class Out>
std::optional<std::string> sealed(const Pb& s, uint64_t peer, const char* role, int64_t* peer_out,
                                  Out* q) {
  const auto i = index(peer);
  if (!i) return str("a sealed share's ", role, " ", peer, " is out of range");
  *peer_out = *i;
  if (s.box().size() != kBoxBytes) return wrong_size("a sealed share's box", s.box().size(), kBoxBytes);
  q->box = s.box();
  if (!fill(s.commit_b(), &q->commit_b)) return wrong_size("commit_b", s.commit_b().size(), 32);
  if (!fill(s.commit_s(), &q->commit_s)) return wrong_size("commit_s", s.commit_s().size(), 32);
  return std::nullopt;
}

}  // namespace

void to_pb(const KeysMsg& m, pb::SecAggKeys* out) {
  out->set_c_pk(bytes(m.c_pk));
  out->set_s_pk(bytes(m.s_pk));
}

void to_pb(const RosterMsg& m, pb::SecAggRoster* out) {
  out->set_index(static_cast<uint64_t>(m.index));
  out->set_threshold(static_cast<uint32_t>(m.threshold));
  for (const Peer& p : m.neighbours) {
    pb::SecAggPeer* q = out->add_neighbours();
    q->set_index(static_cast<uint64_t>(p.index));
    q->set_c_pk(bytes(p.c_pk));
    q->set_s_pk(bytes(p.s_pk));
  }
}

void to_pb(const SharesMsg& m, pb::SecAggShares* out) {
  out->set_commit_seed(bytes(m.commit_seed));
  for (const SealedShare& s : m.shares) {
    pb::SecAggSealedShare* q = out->add_shares();
    q->set_to(static_cast<uint64_t>(s.to));
    q->set_box(s.box);
    q->set_commit_b(bytes(s.commit_b));
    q->set_commit_s(bytes(s.commit_s));
  }
}

void to_pb(const InboxMsg& m, pb::SecAggInbox* out) {
  for (const Incoming& i : m.boxes) {
    pb::SecAggIncoming* q = out->add_shares();
    q->set_from(static_cast<uint64_t>(i.from));
    q->set_box(i.box);
    q->set_commit_b(bytes(i.commit_b));
    q->set_commit_s(bytes(i.commit_s));
  }
}

void to_pb(const UnmaskMsg& m, pb::SecAggFate* out) {
  for (const int64_t i : m.survivors) out->add_survivors(static_cast<uint64_t>(i));
  for (const int64_t i : m.dropped) out->add_dropped(static_cast<uint64_t>(i));
}

void to_pb(const RevealMsg& m, pb::SecAggReveal* out) {
  for (const RevealedShare& r : m.shares) {
    pb::SecAggRevealed* q = out->add_shares();
    q->set_owner(static_cast<uint64_t>(r.owner));
    q->set_seed(r.seed);
    for (const uint64_t y : r.y) q->add_y(y);
    q->set_salt(std::string(r.salt.begin(), r.salt.end()));
  }
}

std::optional<std::string> from_pb(const pb::SecAggKeys& m, KeysMsg* out) {
  if (!fill(m.c_pk(), &out->c_pk)) return wrong_size("c_pk", m.c_pk().size(), 32);
  if (!fill(m.s_pk(), &out->s_pk)) return wrong_size("s_pk", m.s_pk().size(), 32);
  return std::nullopt;
}

std::optional<std::string> from_pb(const pb::SecAggRoster& m, size_t max_entries, RosterMsg* out) {
  if (static_cast<size_t>(m.neighbours_size()) > max_entries) {
    return too_many("neighbours", m.neighbours_size(), max_entries);
  }
  const auto i = index(m.index());
  if (!i) return str("index ", m.index(), " is out of range");
  out->index = *i;
  out->threshold = static_cast<int>(std::min<uint32_t>(m.threshold(), 1u << 30));
  for (const pb::SecAggPeer& p : m.neighbours()) {
    Peer q;
    const auto pi = index(p.index());
    if (!pi) return str("a neighbour's index ", p.index(), " is out of range");
    q.index = *pi;
    if (!fill(p.c_pk(), &q.c_pk)) return wrong_size("a neighbour's c_pk", p.c_pk().size(), 32);
    if (!fill(p.s_pk(), &q.s_pk)) return wrong_size("a neighbour's s_pk", p.s_pk().size(), 32);
    out->neighbours.push_back(q);
  }
  return std::nullopt;
}

std::optional<std::string> from_pb(const pb::SecAggShares& m, size_t max_entries, SharesMsg* out) {
  if (static_cast<size_t>(m.shares_size()) > max_entries) {
    return too_many("sealed shares", m.shares_size(), max_entries);
  }
  if (!fill(m.commit_seed(), &out->commit_seed)) {
    return wrong_size("commit_seed", m.commit_seed().size(), 32);
  }
  for (const pb::SecAggSealedShare& s : m.shares()) {
    SealedShare q;
    if (auto why = sealed(s, s.to(), "recipient", &q.to, &q)) return why;
    out->shares.push_back(std::move(q));
  }
  return std::nullopt;
}

std::optional<std::string> from_pb(const pb::SecAggInbox& m, size_t max_entries, InboxMsg* out) {
  if (static_cast<size_t>(m.shares_size()) > max_entries) {
    return too_many("incoming shares", m.shares_size(), max_entries);
  }
  for (const pb::SecAggIncoming& s : m.shares()) {
    Incoming q;
    if (auto why = sealed(s, s.from(), "sender", &q.from, &q)) return why;
    out->boxes.push_back(std::move(q));
  }
  return std::nullopt;
}

std::optional<std::string> from_pb(const pb::SecAggFate& m, size_t max_entries, UnmaskMsg* out) {
  if (static_cast<size_t>(m.survivors_size() + m.dropped_size()) > max_entries) {
    return too_many("clients in the fate", m.survivors_size() + m.dropped_size(), max_entries);
  }
  for (const uint64_t v : m.survivors()) {
    const auto i = index(v);
    if (!i) return str("survivor ", v, " is out of range");
    out->survivors.push_back(*i);
  }
  for (const uint64_t v : m.dropped()) {
    const auto i = index(v);
    if (!i) return str("dropped client ", v, " is out of range");
    out->dropped.push_back(*i);
  }
  return std::nullopt;
}

std::optional<std::string> from_pb(const pb::SecAggReveal& m, size_t max_entries, RevealMsg* out) {
  if (static_cast<size_t>(m.shares_size()) > max_entries) {
    return too_many("revealed shares", m.shares_size(), max_entries);
  }
  for (const pb::SecAggRevealed& r : m.shares()) {
    RevealedShare q;
    const auto owner = index(r.owner());
    if (!owner) return str("a revealed share's owner ", r.owner(), " is out of range");
    q.owner = *owner;
    q.seed = r.seed();
    if (r.y_size() != shamir::kLimbs) {
      return str("a revealed share has ", r.y_size(), " limbs, not ", shamir::kLimbs);
    }
    for (int l = 0; l < shamir::kLimbs; ++l) q.y[l] = r.y(l);
    if (!fill(r.salt(), &q.salt)) return wrong_size("a revealed share's salt", r.salt().size(), 16);
    out->shares.push_back(q);
  }
  return std::nullopt;
}

}  // namespace strata::fed::secagg
