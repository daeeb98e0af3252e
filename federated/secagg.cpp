#include "federated/secagg.h"

#include <sodium.h>

#include <algorithm>
#include <cstring>
#include <random>

#include "core/error.h"
#include "core/strings.h"
#include "federated/dp.h"

namespace strata::fed::secagg {
namespace {

constexpr size_t kPlainBytes = 128;  // owner, holder, two shares, two salts
static_assert(kBoxBytes == crypto_secretbox_NONCEBYTES + crypto_secretbox_MACBYTES + kPlainBytes);

struct Sodium {
  Sodium() { STRATA_CHECK_T(Error, sodium_init() >= 0, "libsodium failed to initialise"); }
};
void ensure_sodium() { static const Sodium once; }

void put_u64(std::vector<uint8_t>& out, uint64_t v) {
  for (int i = 0; i < 8; ++i) out.push_back(static_cast<uint8_t>(v >> (8 * i)));
}
uint64_t get_u64(const uint8_t* p) {
  uint64_t v = 0;
  for (int i = 0; i < 8; ++i) v |= uint64_t{p[i]} << (8 * i);
  return v;
}

// BLAKE2b-256 of a domain-separated message.
Key hash(const char* domain, const std::vector<uint8_t>& msg) {
  crypto_generichash_state st;
  crypto_generichash_init(&st, nullptr, 0, 32);
  crypto_generichash_update(&st, reinterpret_cast<const uint8_t*>(domain), std::strlen(domain) + 1);
  crypto_generichash_update(&st, msg.data(), msg.size());
  Key out{};
  crypto_generichash_final(&st, out.data(), out.size());
  return out;
}

// A key both sides of an X25519 agreement derive alike (the public keys
// in a fixed order); nullopt for a low-order peer key.
std::optional<Key> agree(const char* domain, const Key& sk, const Key& pk, const Key& peer) {
  Key shared{};
  if (crypto_scalarmult(shared.data(), sk.data(), peer.data()) != 0) return std::nullopt;
  std::vector<uint8_t> msg(shared.begin(), shared.end());
  const Key& lo = std::min(pk, peer);
  const Key& hi = std::max(pk, peer);
  msg.insert(msg.end(), lo.begin(), lo.end());
  msg.insert(msg.end(), hi.begin(), hi.end());
  Key out = hash(domain, msg);
  sodium_memzero(shared.data(), shared.size());
  sodium_memzero(msg.data(), msg.size());
  return out;
}

Key commit_share(int64_t owner, int64_t holder, bool seed,
                 const std::array<uint64_t, shamir::kLimbs>& y,
                 const std::array<uint8_t, 16>& salt) {
  std::vector<uint8_t> m;
  put_u64(m, static_cast<uint64_t>(owner));
  put_u64(m, static_cast<uint64_t>(holder));
  m.push_back(seed ? 1 : 0);
  for (uint64_t v : y) put_u64(m, v);
  m.insert(m.end(), salt.begin(), salt.end());
  return hash("strata-secagg-share", m);
}

Key commit_seed(int64_t owner, const Key& seed) {
  std::vector<uint8_t> m;
  put_u64(m, static_cast<uint64_t>(owner));
  m.insert(m.end(), seed.begin(), seed.end());
  return hash("strata-secagg-seed", m);
}

bool in_field(const std::array<uint64_t, shamir::kLimbs>& y) {
  return std::all_of(y.begin(), y.end(), [](uint64_t v) { return v < shamir::kPrime; });
}

shamir::Secret as_secret(const Key& k) {
  shamir::Secret s{};
  std::copy(k.begin(), k.end(), s.begin());
  return s;
}

void add_into(std::vector<uint32_t>& acc, const std::vector<uint32_t>& v, bool subtract) {
  if (subtract) {
    for (size_t i = 0; i < acc.size(); ++i) acc[i] -= v[i];
  } else {
    for (size_t i = 0; i < acc.size(); ++i) acc[i] += v[i];
  }
}

Rejection refuse(RejectCode code, const char* key, std::string reason) {
  return Rejection{code, key, std::move(reason)};
}

}  // namespace

void check_settings(const Settings& s, int64_t participants) {
  STRATA_CHECK_T(ConfigError, s.quant_bits >= 1 && s.quant_bits <= 31, "secure aggregation: ",
                 "quant_bits ", s.quant_bits, " must be in [1, 31]");
  STRATA_CHECK_T(ConfigError, s.clip_range > 0, "secure aggregation: clip_range ", s.clip_range,
                 " must be > 0");
  STRATA_CHECK_T(ConfigError, s.neighbours >= 0 && s.neighbours % 2 == 0,
                 "secure aggregation: neighbours ", s.neighbours,
                 " must be even (k / 2 on each side of a client on the ring; 0: all)");
  const uint64_t levels = (uint64_t{1} << s.quant_bits) - 1;
  STRATA_CHECK_T(ConfigError,
                 participants >= 1 &&
                     static_cast<uint64_t>(participants) <= (uint64_t{1} << 32) / (levels + 1),
                 "secure aggregation: the sum of ", participants, " clients' updates quantised to ",
                 s.quant_bits, " bits can wrap around 2^32 (at most ",
                 (uint64_t{1} << 32) / (levels + 1), " clients at ", s.quant_bits,
                 " bits); use fewer bits or fewer clients per round");
  const int64_t k = neighbour_count(s, participants);
  if (s.threshold == 0) return;  // the majority of the neighbours, set when the keys are in
  STRATA_CHECK_T(ConfigError, s.threshold >= 2 && s.threshold <= k, "secure aggregation: ",
                 "threshold ", s.threshold, " must be in [2, ", k, "] (each of ", participants,
                 " clients shares its secrets among its ", k, " neighbours)");
}

int auto_threshold(const Settings& s, int64_t participants) {
  return static_cast<int>(std::max<int64_t>(2, neighbour_count(s, participants) / 2 + 1));
}

int64_t neighbour_count(const Settings& s, int64_t participants) {
  const int64_t all = std::max<int64_t>(0, participants - 1);
  return s.neighbours == 0 ? all : std::min<int64_t>(s.neighbours, all);
}

std::vector<uint32_t> quantise(const at::Tensor& x, double clip_range, int bits) {
  const double levels = static_cast<double>((uint64_t{1} << bits) - 1);
  at::Generator gen = entropy_generator();
  // Double precision: 2^22 levels leave a float no fraction to round.
  const at::Tensor v = (x.to(at::kDouble).clamp(-clip_range, clip_range) + clip_range) *
                       (levels / (2 * clip_range));
  const at::Tensor q =
      (v + at::rand(v.sizes(), gen, at::TensorOptions(at::kDouble))).floor_().clamp_(0, levels);
  const at::Tensor as64 = q.to(at::kLong).contiguous();
  const int64_t* p = as64.data_ptr<int64_t>();
  return std::vector<uint32_t>(p, p + as64.numel());
}

at::Tensor dequantise(const std::vector<uint32_t>& sum, int64_t count, double clip_range,
                      int bits) {
  const double levels = static_cast<double>((uint64_t{1} << bits) - 1);
  at::Tensor s = at::empty({static_cast<int64_t>(sum.size())}, at::kDouble);
  double* p = s.data_ptr<double>();
  for (size_t i = 0; i < sum.size(); ++i) p[i] = static_cast<double>(sum[i]);
  return (s * (2 * clip_range / levels) - static_cast<double>(count) * clip_range).to(at::kFloat);
}

std::vector<uint32_t> expand(const Key& seed, int64_t n) {
  ensure_sodium();
  std::vector<uint32_t> out(static_cast<size_t>(n));
  const std::array<uint8_t, crypto_stream_chacha20_ietf_NONCEBYTES> nonce{};
  // The keystream's bytes as little-endian words (every supported host).
  crypto_stream_chacha20_ietf(reinterpret_cast<uint8_t*>(out.data()), out.size() * 4,
                              nonce.data(), seed.data());
  return out;
}

// ---------------------------------------------------------------- Client

Client::Client(Settings s) : s_(s) { ensure_sodium(); }

Client::~Client() {
  sodium_memzero(c_sk_.data(), c_sk_.size());
  sodium_memzero(s_sk_.data(), s_sk_.size());
  sodium_memzero(seed_.data(), seed_.size());
  for (auto& [j, o] : opened_) sodium_memzero(&o, sizeof o);
}

KeysMsg Client::advertise() {
  STRATA_CHECK_T(DataError, stage_ == 0, "secure aggregation: keys were already advertised");
  crypto_box_keypair(mine_.c_pk.data(), c_sk_.data());
  crypto_box_keypair(mine_.s_pk.data(), s_sk_.data());
  stage_ = 1;
  return mine_;
}

SharesMsg Client::share(const RosterMsg& roster) {
  STRATA_CHECK_T(DataError, stage_ == 1, "secure aggregation: shares before keys");
  // The round's threshold (the server's configured one, or its majority
  // rule for this round's size): at least 2, so no one share reveals a secret.
  STRATA_CHECK_T(DataError, roster.threshold >= 2, "secure aggregation: threshold ",
                 roster.threshold, " would let a single share reveal a secret; refused");
  s_.threshold = roster.threshold;
  STRATA_CHECK_T(DataError,
                 static_cast<int64_t>(roster.neighbours.size()) >= s_.threshold,
                 "secure aggregation: ", roster.neighbours.size(), " neighbours cannot hold ",
                 s_.threshold, " shares each secret needs");
  std::vector<uint64_t> xs;
  for (size_t i = 0; i < roster.neighbours.size(); ++i) {
    const Peer& p = roster.neighbours[i];
    STRATA_CHECK_T(DataError,
                   p.index >= 0 && p.index != roster.index &&
                       (i == 0 || p.index > roster.neighbours[i - 1].index),
                   "secure aggregation: the roster's neighbours must be other clients by "
                   "increasing index (", p.index, " after ",
                   i == 0 ? -1 : roster.neighbours[i - 1].index, ")");
    xs.push_back(static_cast<uint64_t>(p.index) + 1);
  }
  roster_ = roster;
  randombytes_buf(seed_.data(), seed_.size());
  const std::vector<shamir::Share> sb = shamir::split(as_secret(seed_), s_.threshold, xs);
  const std::vector<shamir::Share> ss = shamir::split(as_secret(s_sk_), s_.threshold, xs);
  SharesMsg out;
  out.commit_seed = commit_seed(roster.index, seed_);
  for (size_t i = 0; i < xs.size(); ++i) {
    const Peer& p = roster.neighbours[i];
    const std::optional<Key> key = agree("strata-secagg-box", c_sk_, mine_.c_pk, p.c_pk);
    STRATA_CHECK_T(DataError, key.has_value(), "secure aggregation: neighbour ", p.index,
                   "'s public key is not usable (a low-order point)");
    SealedShare sealed;
    sealed.to = p.index;
    std::array<uint8_t, 16> salt_b{}, salt_s{};
    randombytes_buf(salt_b.data(), salt_b.size());
    randombytes_buf(salt_s.data(), salt_s.size());
    std::vector<uint8_t> plain;
    put_u64(plain, static_cast<uint64_t>(roster.index));
    put_u64(plain, static_cast<uint64_t>(p.index));
    for (uint64_t v : sb[i].y) put_u64(plain, v);
    for (uint64_t v : ss[i].y) put_u64(plain, v);
    plain.insert(plain.end(), salt_b.begin(), salt_b.end());
    plain.insert(plain.end(), salt_s.begin(), salt_s.end());
    STRATA_INTERNAL_ASSERT(plain.size() == kPlainBytes);
    sealed.box.resize(kBoxBytes);
    auto* box = reinterpret_cast<uint8_t*>(sealed.box.data());
    randombytes_buf(box, crypto_secretbox_NONCEBYTES);
    crypto_secretbox_easy(box + crypto_secretbox_NONCEBYTES, plain.data(), plain.size(), box,
                          key->data());
    sodium_memzero(plain.data(), plain.size());
    sealed.commit_b = commit_share(roster.index, p.index, true, sb[i].y, salt_b);
    sealed.commit_s = commit_share(roster.index, p.index, false, ss[i].y, salt_s);
    out.shares.push_back(std::move(sealed));
  }
  stage_ = 2;
  return out;
}

std::vector<uint32_t> Client::mask(const at::Tensor& x, const InboxMsg& inbox) {
  STRATA_CHECK_T(DataError, stage_ == 2, "secure aggregation: masked input before shares");
  STRATA_CHECK_T(DataError, x.numel() == s_.values, "secure aggregation: the update has ",
                 x.numel(), " values; the round sums ", s_.values);
  std::map<int64_t, const Peer*> peers;
  for (const Peer& p : roster_.neighbours) peers[p.index] = &p;
  for (const Incoming& in : inbox.boxes) {
    const int64_t from = in.from;
    const std::string& box = in.box;
    const auto it = peers.find(from);
    STRATA_CHECK_T(DataError, it != peers.end() && !opened_.count(from),
                   "secure aggregation: a share from ", from,
                   ", which is not a neighbour or sent twice");
    const std::optional<Key> key =
        agree("strata-secagg-box", c_sk_, mine_.c_pk, it->second->c_pk);
    std::array<uint8_t, kPlainBytes> plain{};
    const auto* b = reinterpret_cast<const uint8_t*>(box.data());
    STRATA_CHECK_T(DataError,
                   key && box.size() == kBoxBytes &&
                       crypto_secretbox_open_easy(plain.data(), b + crypto_secretbox_NONCEBYTES,
                                                  box.size() - crypto_secretbox_NONCEBYTES, b,
                                                  key->data()) == 0,
                   "secure aggregation: the sealed share from neighbour ", from,
                   " does not open (tampered with, or not sealed for this client)");
    Opened o;
    const uint64_t owner = get_u64(plain.data()), holder = get_u64(plain.data() + 8);
    for (int l = 0; l < shamir::kLimbs; ++l) {
      o.b[l] = get_u64(plain.data() + 16 + 8 * l);
      o.s[l] = get_u64(plain.data() + 56 + 8 * l);
    }
    std::copy(plain.begin() + 96, plain.begin() + 112, o.salt_b.begin());
    std::copy(plain.begin() + 112, plain.begin() + 128, o.salt_s.begin());
    sodium_memzero(plain.data(), plain.size());
    STRATA_CHECK_T(DataError,
                   owner == static_cast<uint64_t>(from) &&
                       holder == static_cast<uint64_t>(roster_.index) && in_field(o.b) &&
                       in_field(o.s),
                   "secure aggregation: the share from neighbour ", from,
                   " is malformed (wrong owner or holder, or values outside the field)");
    STRATA_CHECK_T(DataError,
                   commit_share(from, roster_.index, true, o.b, o.salt_b) == in.commit_b &&
                       commit_share(from, roster_.index, false, o.s, o.salt_s) == in.commit_s,
                   "secure aggregation: the share from neighbour ", from,
                   " does not match the commitment it gave the server");
    opened_[from] = o;
  }
  std::vector<uint32_t> y = quantise(x, s_.clip_range, s_.quant_bits);
  add_into(y, expand(seed_, s_.values), false);
  for (const auto& [j, o] : opened_) {
    const std::optional<Key> sij = agree("strata-secagg-mask", s_sk_, mine_.s_pk, peers[j]->s_pk);
    STRATA_CHECK_T(DataError, sij.has_value(), "secure aggregation: neighbour ", j,
                   "'s masking key is not usable");
    add_into(y, expand(*sij, s_.values), roster_.index > j);
  }
  stage_ = 3;
  return y;
}

RevealMsg Client::reveal(const UnmaskMsg& fate) {
  STRATA_CHECK_T(DataError, stage_ == 3, "secure aggregation: unmasking before the masked input "
                 "(or a second time)");
  std::set<int64_t> survivors(fate.survivors.begin(), fate.survivors.end());
  RevealMsg out;
  for (const int64_t j : fate.dropped) {
    // Never both shares of one client: with both the server could remove
    // every mask from that client's input.
    STRATA_CHECK_T(DataError, !survivors.count(j), "secure aggregation: the server asks for both "
                   "secrets of client ", j, " (listed as survived and as dropped); refused");
  }
  for (const auto& [list, seed] : {std::pair{&fate.survivors, true}, {&fate.dropped, false}}) {
    for (const int64_t j : *list) {
      const auto it = opened_.find(j);
      STRATA_CHECK_T(DataError, it != opened_.end(), "secure aggregation: the server asks for a "
                     "share of client ", j, ", which sent this client none");
      RevealedShare r;
      r.owner = j;
      r.seed = seed;
      r.y = seed ? it->second.b : it->second.s;
      r.salt = seed ? it->second.salt_b : it->second.salt_s;
      out.shares.push_back(r);
    }
  }
  stage_ = 4;
  return out;
}

// ---------------------------------------------------------------- Round

Round::Round(Settings s, std::vector<std::string> clients, uint64_t graph_seed)
    : s_(s), clients_(std::move(clients)), graph_seed_(graph_seed) {
  ensure_sodium();
  check_settings(s_, static_cast<int64_t>(clients_.size()));
}

std::optional<int64_t> Round::index_of(const std::string& client) const {
  const auto it = std::find(clients_.begin(), clients_.end(), client);
  if (it == clients_.end()) return std::nullopt;
  return static_cast<int64_t>(it - clients_.begin());
}

std::optional<Rejection> Round::expect(Stage stage, const std::string& client, int64_t* index,
                                       const std::set<int64_t>* among) const {
  static const char* const kNames[] = {"keys", "shares", "masked input", "unmasking", "done"};
  const std::optional<int64_t> i = index_of(client);
  if (!i) {
    return refuse(RejectCode::kFailedPrecondition, "not_selected",
                  str("client ", quote(client), " is not in this secure aggregation round"));
  }
  if (stage_ != stage) {
    return refuse(RejectCode::kFailedPrecondition, "secagg_stage",
                  str("the round is at its ", kNames[static_cast<int>(stage_)], " stage, not ",
                      kNames[static_cast<int>(stage)], " (a stage's deadline passed, or the "
                      "message came early)"));
  }
  if (among && !among->count(*i)) {
    return refuse(RejectCode::kFailedPrecondition, "secagg_dropped",
                  str("client ", quote(client), " dropped out of this round at an earlier stage"));
  }
  *index = *i;
  return std::nullopt;
}

bool Round::all_in() const {
  switch (stage_) {
    case Stage::kKeys: return keys_.size() == clients_.size();
    case Stage::kShares: return shares_.size() == u1_.size();
    case Stage::kMasked: return inputs_.size() == u2_.size();
    // Unmasking needs `threshold` shares of each secret, not every
    // survivor's reveal: a survivor that went away costs no deadline.
    case Stage::kReveal: return revealed_.size() == u3_.size() || !enough_shares(revealed_);
    case Stage::kDone: return true;
  }
  return true;
}

std::optional<Rejection> Round::advertise(const std::string& client, const KeysMsg& m) {
  int64_t i = 0;
  if (auto r = expect(Stage::kKeys, client, &i, nullptr)) return r;
  if (keys_.count(i)) {
    return refuse(RejectCode::kAlreadyExists, "secagg_repeat", "keys were already sent");
  }
  // A low-order public key would make every agreement with it all zeros.
  Key probe_sk{};
  randombytes_buf(probe_sk.data(), probe_sk.size());
  for (const Key* pk : {&m.c_pk, &m.s_pk}) {
    Key out{};
    if (crypto_scalarmult(out.data(), probe_sk.data(), pk->data()) != 0) {
      return refuse(RejectCode::kInvalidArgument, "secagg_bad_key",
                    "a public key is a low-order X25519 point (no shared secret with it)");
    }
  }
  keys_[i] = m;
  return std::nullopt;
}

std::optional<std::string> Round::close_keys() {
  STRATA_INTERNAL_ASSERT(stage_ == Stage::kKeys);
  for (const auto& [i, k] : keys_) u1_.insert(i);
  const auto n = static_cast<int64_t>(u1_.size());
  k_ = neighbour_count(s_, n);
  if (s_.threshold == 0) s_.threshold = auto_threshold(s_, n);
  if (k_ < s_.threshold) {
    stage_ = Stage::kDone;
    return str("only ", n, " of ", clients_.size(), " selected clients sent keys; each secret "
               "needs ", s_.threshold, " shares, so at least ", s_.threshold + 1,
               " clients must take part");
  }
  // The Harary graph of SecAgg+: U1 on a ring in a random order, each
  // client joined to the k / 2 nearest on either side (everyone when k
  // covers the ring).
  std::vector<int64_t> ring(u1_.begin(), u1_.end());
  std::mt19937_64 rng(graph_seed_);
  std::shuffle(ring.begin(), ring.end(), rng);
  for (int64_t p = 0; p < n; ++p) {
    std::vector<int64_t>& out = nb_[ring[static_cast<size_t>(p)]];
    if (k_ >= n - 1) {
      for (const int64_t j : ring) {
        if (j != ring[static_cast<size_t>(p)]) out.push_back(j);
      }
    } else {
      for (int64_t d = 1; d <= k_ / 2; ++d) {
        out.push_back(ring[static_cast<size_t>((p + d) % n)]);
        out.push_back(ring[static_cast<size_t>((p - d + n) % n)]);
      }
    }
    std::sort(out.begin(), out.end());
  }
  stage_ = Stage::kShares;
  return std::nullopt;
}

RosterMsg Round::roster(int64_t index) const {
  RosterMsg r;
  r.index = index;
  r.threshold = s_.threshold;
  for (const int64_t j : neighbours(index)) {
    const KeysMsg& k = keys_.at(j);
    r.neighbours.push_back(Peer{j, k.c_pk, k.s_pk});
  }
  return r;
}

std::optional<Rejection> Round::shares(const std::string& client, const SharesMsg& m) {
  int64_t i = 0;
  if (auto r = expect(Stage::kShares, client, &i, &u1_)) return r;
  if (shares_.count(i)) {
    return refuse(RejectCode::kAlreadyExists, "secagg_repeat", "shares were already sent");
  }
  const std::vector<int64_t>& nb = neighbours(i);
  if (m.shares.size() != nb.size()) {
    return refuse(RejectCode::kInvalidArgument, "secagg_bad_shares",
                  str(m.shares.size(), " sealed shares; this client has ", nb.size(),
                      " neighbours, one each"));
  }
  std::set<int64_t> seen;
  for (const SealedShare& s : m.shares) {
    if (!std::binary_search(nb.begin(), nb.end(), s.to) || !seen.insert(s.to).second) {
      return refuse(RejectCode::kInvalidArgument, "secagg_bad_shares",
                    str("a sealed share for ", s.to, ", which is not a neighbour of this "
                        "client or has one already"));
    }
    if (s.box.size() != kBoxBytes) {
      return refuse(RejectCode::kInvalidArgument, "secagg_bad_shares",
                    str("the sealed share for ", s.to, " is ", s.box.size(), " bytes, not ",
                        kBoxBytes));
    }
  }
  shares_[i] = m;
  return std::nullopt;
}

std::optional<std::string> Round::close_shares() {
  STRATA_INTERNAL_ASSERT(stage_ == Stage::kShares);
  for (const auto& [i, m] : shares_) u2_.insert(i);
  if (static_cast<int64_t>(u2_.size()) < s_.threshold + 1) {
    stage_ = Stage::kDone;
    return str("only ", u2_.size(), " clients sent their shares; at least ", s_.threshold + 1,
               " must, for secrets of ", s_.threshold, " shares");
  }
  stage_ = Stage::kMasked;
  return std::nullopt;
}

InboxMsg Round::inbox(int64_t index) const {
  InboxMsg out;
  for (const int64_t j : neighbours(index)) {
    const auto it = shares_.find(j);
    if (it == shares_.end()) continue;  // j dropped before sharing
    for (const SealedShare& s : it->second.shares) {
      if (s.to == index) out.boxes.push_back(Incoming{j, s.box, s.commit_b, s.commit_s});
    }
  }
  return out;
}

std::optional<Rejection> Round::masked(const std::string& client, std::vector<uint32_t> y) {
  int64_t i = 0;
  if (auto r = expect(Stage::kMasked, client, &i, &u2_)) return r;
  if (inputs_.count(i)) {
    return refuse(RejectCode::kAlreadyExists, "secagg_repeat", "the masked input was already sent");
  }
  if (static_cast<int64_t>(y.size()) != s_.values) {
    return refuse(RejectCode::kInvalidArgument, "secagg_bad_length",
                  str("the masked input has ", y.size(), " values; the model has ", s_.values));
  }
  inputs_[i] = std::move(y);
  return std::nullopt;
}

std::optional<std::string> Round::enough_shares(const std::set<int64_t>& holders) const {
  for (const int64_t i : u2_) {
    const bool survived = u3_.count(i) > 0;
    int64_t have = 0, needed_by = 0;
    for (const int64_t j : neighbours(i)) {
      if (holders.count(j)) ++have;
      if (u3_.count(j)) ++needed_by;
    }
    // A dropped client's key is needed only if a survivor masked with it.
    if (!survived && needed_by == 0) continue;
    if (have < s_.threshold) {
      return str("too many dropouts: client ", i, "'s ", survived ? "self-mask seed" : "masking key",
                 " needs ", s_.threshold, " shares and only ", have, " of its neighbours can "
                 "reveal one");
    }
  }
  return std::nullopt;
}

std::optional<std::string> Round::close_masked() {
  STRATA_INTERNAL_ASSERT(stage_ == Stage::kMasked);
  for (const auto& [i, y] : inputs_) u3_.insert(i);
  std::optional<std::string> why;
  if (u3_.empty()) why = "no client sent its masked input";
  if (!why) why = enough_shares(u3_);
  stage_ = why ? Stage::kDone : Stage::kReveal;
  if (why) inputs_.clear();
  return why;
}

UnmaskMsg Round::fate(int64_t index) const {
  UnmaskMsg m;
  for (const int64_t j : neighbours(index)) {
    if (u3_.count(j)) {
      m.survivors.push_back(j);
    } else if (u2_.count(j)) {
      m.dropped.push_back(j);
    }
  }
  return m;
}

std::optional<Rejection> Round::reveal(const std::string& client, const RevealMsg& m) {
  int64_t i = 0;
  if (auto r = expect(Stage::kReveal, client, &i, &u3_)) return r;
  if (revealed_.count(i)) {
    return refuse(RejectCode::kAlreadyExists, "secagg_repeat", "shares were already revealed");
  }
  const UnmaskMsg asked = fate(i);
  std::set<std::pair<int64_t, bool>> expected, got;
  for (const int64_t j : asked.survivors) expected.insert({j, true});
  for (const int64_t j : asked.dropped) expected.insert({j, false});
  for (const RevealedShare& r : m.shares) {
    const char* what = r.seed ? "self-mask seed" : "masking key";
    if (!expected.count({r.owner, r.seed}) || !got.insert({r.owner, r.seed}).second) {
      return refuse(RejectCode::kInvalidArgument, "secagg_bad_share",
                    str("a share of client ", r.owner, "'s ", what, ", which was not asked for "
                        "or is repeated"));
    }
    const Key& committed = [&]() -> const Key& {
      for (const SealedShare& s : shares_.at(r.owner).shares) {
        if (s.to == i) return r.seed ? s.commit_b : s.commit_s;
      }
      throw InternalError("a neighbour's sealed share is missing");
    }();
    if (!in_field(r.y) || commit_share(r.owner, i, r.seed, r.y, r.salt) != committed) {
      return refuse(RejectCode::kInvalidArgument, "secagg_bad_share",
                    str("the share of client ", r.owner, "'s ", what,
                        " does not match the commitment client ", r.owner, " made to it"));
    }
  }
  for (const RevealedShare& r : m.shares) {
    pool_[{r.owner, r.seed}].push_back(shamir::Share{static_cast<uint64_t>(i) + 1, r.y});
  }
  revealed_.insert(i);
  return std::nullopt;
}

Unmasked Round::finish() {
  STRATA_INTERNAL_ASSERT(stage_ == Stage::kReveal);
  stage_ = Stage::kDone;
  Unmasked out;
  out.survivors.assign(u3_.begin(), u3_.end());
  const auto fail = [&](std::string why) {
    out.ok = false;
    out.reason = std::move(why);
    out.sum = at::Tensor();
    inputs_.clear();
    pool_.clear();
    return out;
  };
  if (auto why = enough_shares(revealed_)) return fail(*why);
  const auto rebuild = [&](int64_t owner, bool seed) {
    std::vector<shamir::Share> shares = pool_.at({owner, seed});
    shares.resize(static_cast<size_t>(s_.threshold));
    Key k{};
    const shamir::Secret s = shamir::combine(shares);
    std::copy(s.begin(), s.end(), k.begin());
    return k;
  };
  std::vector<uint32_t> sum(static_cast<size_t>(s_.values), 0);
  for (const int64_t i : u3_) {
    add_into(sum, inputs_.at(i), false);
    Key b = rebuild(i, true);
    if (commit_seed(i, b) != shares_.at(i).commit_seed) {
      return fail(str("client ", i, "'s shares do not rebuild the self-mask seed it committed "
                      "to (a faulty or malicious client); the round is abandoned"));
    }
    add_into(sum, expand(b, s_.values), true);
    sodium_memzero(b.data(), b.size());
  }
  for (const int64_t j : u2_) {
    if (u3_.count(j)) continue;
    std::vector<int64_t> masked_with;
    for (const int64_t i : neighbours(j)) {
      if (u3_.count(i)) masked_with.push_back(i);
    }
    if (masked_with.empty()) continue;
    Key sk = rebuild(j, false);
    Key pk{};
    crypto_scalarmult_base(pk.data(), sk.data());
    if (pk != keys_.at(j).s_pk) {
      sodium_memzero(sk.data(), sk.size());
      return fail(str("client ", j, "'s shares do not rebuild the masking key it advertised (a "
                      "faulty or malicious client); the round is abandoned"));
    }
    for (const int64_t i : masked_with) {
      const std::optional<Key> sij = agree("strata-secagg-mask", sk, pk, keys_.at(i).s_pk);
      STRATA_INTERNAL_ASSERT(sij.has_value());  // keys were checked at advertise
      // Survivor i added +PRG(s_ij) when i < j: take it away (and the reverse).
      add_into(sum, expand(*sij, s_.values), i < j);
    }
    sodium_memzero(sk.data(), sk.size());
  }
  inputs_.clear();
  pool_.clear();
  out.ok = true;
  out.sum = dequantise(sum, static_cast<int64_t>(u3_.size()), s_.clip_range, s_.quant_bits);
  return out;
}

}  // namespace strata::fed::secagg
