// Secure aggregation, SecAgg+ style (Bonawitz et al., CCS 2017; Bell et al.,
// CCS 2020): the server learns the sum of a round's updates and nothing
// about any one of them, even when up to a threshold of clients drop out
// after they were sent their peers' keys.
//
// Note [Secure aggregation]
// A round has four stages; what travels is the messages below (the gRPC
// service carries them, strata_fed.proto):
//  1. Keys. Each selected client makes two X25519 key pairs (libsodium):
//     c for encrypting shares, s for pairwise masks, and sends the public
//     keys. The server closes the stage (all in, or its deadline) and
//     places the clients who advertised (U1) on a ring in a random order:
//     each client's neighbours are the k nearest on the ring (the Harary
//     graph of SecAgg+; k >= |U1| - 1: everyone), so a client's cost grows
//     with k, not with the round's size. Each client gets its neighbours'
//     public keys.
//  2. Shares. Each client draws a self-mask seed b and Shamir-shares b and
//     its s secret key, `threshold` of k (shamir.h), among its neighbours,
//     each neighbour's pair of shares encrypted for it (XSalsa20-Poly1305
//     under a key from the c key exchange). With them go commitments
//     (BLAKE2b hashes with a random salt) to every share and to b, which
//     the server keeps; the shares it only forwards, sealed. Clients who
//     sent shares are U2.
//  3. Masked input. A client that opened its neighbours' sealed shares
//     sends y = q(x) + PRG(b) + sum over its neighbours j in U2 of
//     +-PRG(s_ij) (mod 2^32, + for the smaller index), q the stochastic
//     quantisation of the update clipped to [-R, R] onto 2^bits - 1 levels,
//     PRG ChaCha20 keyed by the seed, s_ij from the X25519 agreement of the
//     two s keys: every pairwise mask cancels in the sum of both
//     neighbours, the self mask hides y even from a server that learns the
//     pairwise ones. Those whose masked input came are the survivors U3.
//  4. Unmasking. Each survivor is told which of its neighbours survived
//     and which dropped, and reveals its share of b for each survivor and
//     of the s key for each dropped one -- never both for one client (a
//     client refuses a request that asks for both). The server checks
//     every revealed share against its commitment, rebuilds each survivor's
//     b (checked against its commitment) and each dropped client's s key
//     (checked against its public key), removes the self masks and the
//     dropped clients' pairwise masks, and dequantises the sum.
// The sum is exact in the ring while survivors x (2^bits - 1) < 2^32
// (22 bits: up to 1,024 clients), so the only error is the quantisation
// step 2R / (2^bits - 1) per client and element (unbiased).
// The round fails cleanly -- nothing unmasked, nothing applied -- when a
// secret it needs has fewer than `threshold` shares (too many dropouts),
// or a client's shares do not rebuild what it committed to.
// Threat model: honest-but-curious server, clients that may drop or send
// malformed messages (refused with a reason). A server that lies about who
// dropped to different clients is not detected (SecAgg+'s consistency
// round with signatures is not built).
#pragma once

#include <ATen/ATen.h>

#include <array>
#include <cstdint>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "federated/shamir.h"
#include "federated/validator.h"

namespace strata::fed::secagg {

using Key = std::array<uint8_t, 32>;

struct Settings {
  int64_t values = 0;       // length of the summed vector
  int threshold = 2;        // t: shares that rebuild a secret (0: a majority of the
                            // neighbours the round has once its keys are in)
  int neighbours = 0;       // k (even; 0 or >= participants - 1: all)
  double clip_range = 8.0;  // R
  int quant_bits = 22;      // 2^bits - 1 levels over [-R, R]
};
// ConfigError when no round of `participants` clients can run with `s`
// (threshold outside [2, k], bits outside [1, 31], a sum that could wrap).
void check_settings(const Settings& s, int64_t participants);
// The neighbours a client of a round with `participants` has.
int64_t neighbour_count(const Settings& s, int64_t participants);
// threshold 0's meaning: a majority of the neighbours, k / 2 + 1 (at least 2).
int auto_threshold(const Settings& s, int64_t participants);

// Stage 1: client -> server.
struct KeysMsg {
  Key c_pk{}, s_pk{};
};
// Stage 1 -> 2: server -> client.
struct Peer {
  int64_t index = 0;  // in the round (the client's position among the selected)
  Key c_pk{}, s_pk{};
};
struct RosterMsg {
  int64_t index = 0;  // the receiver's own
  int threshold = 0;
  std::vector<Peer> neighbours;  // by increasing index
};
// Stage 2: client -> server.
struct SealedShare {
  int64_t to = 0;
  std::string box;               // nonce || XSalsa20-Poly1305 ciphertext
  Key commit_b{}, commit_s{};    // commitments to the two shares inside
};
struct SharesMsg {
  Key commit_seed{};             // commitment to b
  std::vector<SealedShare> shares;  // one per neighbour
};
// Stage 2 -> 3: server -> client, the sealed shares addressed to it with
// their commitments (the client checks them: otherwise a client could
// commit to other shares than it sealed and have its honest neighbours'
// reveals refused).
struct Incoming {
  int64_t from = 0;
  std::string box;
  Key commit_b{}, commit_s{};
};
struct InboxMsg {
  std::vector<Incoming> boxes;  // by increasing from
};
// Stage 3 -> 4: server -> client, the fate of its neighbours in U2.
struct UnmaskMsg {
  std::vector<int64_t> survivors, dropped;
};
// Stage 4: client -> server.
struct RevealedShare {
  int64_t owner = 0;     // whose secret
  bool seed = true;      // b (owner survived) or the s key (owner dropped)
  std::array<uint64_t, shamir::kLimbs> y{};
  std::array<uint8_t, 16> salt{};
};
struct RevealMsg {
  std::vector<RevealedShare> shares;
};

// Sizes on the wire.
constexpr size_t kBoxBytes = 24 + 16 + 128;  // nonce, MAC, plaintext

// The stochastic quantisation of `x` (float, clipped to [-R, R]) onto
// 0 .. 2^bits - 1, and back for a sum of `count` of them.
std::vector<uint32_t> quantise(const at::Tensor& x, double clip_range, int bits);
at::Tensor dequantise(const std::vector<uint32_t>& sum, int64_t count, double clip_range,
                      int bits);
// n pseudo-random ring elements from a 32-byte seed (ChaCha20).
std::vector<uint32_t> expand(const Key& seed, int64_t n);

// One client's side of one round. Holds its secrets (wiped when it goes);
// every method throws DataError naming what is wrong with a server message
// it cannot follow.
class Client {
 public:
  explicit Client(Settings s);
  ~Client();
  Client(const Client&) = delete;
  Client& operator=(const Client&) = delete;

  KeysMsg advertise();
  SharesMsg share(const RosterMsg& roster);
  // `x`: the flat update (float, `values` long), already weighted.
  std::vector<uint32_t> mask(const at::Tensor& x, const InboxMsg& inbox);
  RevealMsg reveal(const UnmaskMsg& fate);

 private:
  struct Opened {  // a neighbour's shares to this client
    std::array<uint64_t, shamir::kLimbs> b{}, s{};
    std::array<uint8_t, 16> salt_b{}, salt_s{};
  };
  Settings s_;
  Key c_sk_{}, s_sk_{}, seed_{};
  KeysMsg mine_;
  RosterMsg roster_;
  std::map<int64_t, Opened> opened_;  // U2 neighbours, by index
  int stage_ = 0;
};

// The outcome of a round.
struct Unmasked {
  bool ok = false;
  std::string reason;      // !ok: why (too many dropouts, a faulty client)
  at::Tensor sum;          // ok: the dequantised sum of the survivors' vectors
  std::vector<int64_t> survivors;
};

// The server's side of one round: stages, checks and unmasking. Message
// methods return a Rejection (code, counter key, reason) for a message that
// is refused, which changes nothing; close_*() end a stage (every client in,
// or the deadline) and return why the round cannot go on, if so.
class Round {
 public:
  // `clients`: the selected clients; their position is their index.
  Round(Settings s, std::vector<std::string> clients, uint64_t graph_seed);

  enum class Stage { kKeys, kShares, kMasked, kReveal, kDone };
  Stage stage() const { return stage_; }
  std::optional<int64_t> index_of(const std::string& client) const;

  std::optional<Rejection> advertise(const std::string& client, const KeysMsg& m);
  std::optional<std::string> close_keys();
  RosterMsg roster(int64_t index) const;

  std::optional<Rejection> shares(const std::string& client, const SharesMsg& m);
  std::optional<std::string> close_shares();
  InboxMsg inbox(int64_t index) const;

  std::optional<Rejection> masked(const std::string& client, std::vector<uint32_t> y);
  std::optional<std::string> close_masked();
  UnmaskMsg fate(int64_t index) const;

  std::optional<Rejection> reveal(const std::string& client, const RevealMsg& m);
  // Every survivor revealed (or the deadline): unmask.
  Unmasked finish();

  // Who is in each set (indices).
  const std::set<int64_t>& advertised() const { return u1_; }
  const std::set<int64_t>& shared() const { return u2_; }
  const std::set<int64_t>& survived() const { return u3_; }
  // The stage needs nothing more: every client it waits for has sent (the
  // unmasking stage: or every secret it needs has its shares).
  bool all_in() const;
  int64_t neighbours_of_each() const { return k_; }
  int threshold() const { return s_.threshold; }  // after close_keys

 private:
  std::optional<Rejection> expect(Stage stage, const std::string& client, int64_t* index,
                                  const std::set<int64_t>* among) const;
  // The ring's neighbours of a client of U1, by increasing index (built
  // once, when the keys stage closes).
  const std::vector<int64_t>& neighbours(int64_t index) const { return nb_.at(index); }
  std::optional<std::string> enough_shares(const std::set<int64_t>& holders) const;

  Settings s_;
  std::vector<std::string> clients_;
  uint64_t graph_seed_;
  Stage stage_ = Stage::kKeys;
  std::map<int64_t, KeysMsg> keys_;
  std::set<int64_t> u1_, u2_, u3_, revealed_;
  std::map<int64_t, std::vector<int64_t>> nb_;  // U1's neighbour lists
  int64_t k_ = 0;
  std::map<int64_t, SharesMsg> shares_;      // by sender
  std::map<int64_t, std::vector<uint32_t>> inputs_;
  // Revealed shares that matched their commitments: (owner, seed?) -> shares.
  std::map<std::pair<int64_t, bool>, std::vector<shamir::Share>> pool_;
};

}  // namespace strata::fed::secagg
