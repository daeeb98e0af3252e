// The federated server's durable state in one directory:
//
//   server.db            SQLite (WAL, synchronous=FULL): clients, model
//                        versions, the update ledger, strategy state
//   versions/v<N>.pt     each global model version, a state dict that
//                        Python's torch.load reads
//   updates/u<ID>.f32    a pending update's flat float32 delta, or a
//                        masked input's uint32 ring elements (deleted once
//                        a version that applied it is committed, or it is
//                        discarded)
//
// Note [Federated durability]: files are written atomically (fsync, rename,
// fsync dir) *before* the transaction that refers to them commits, so a
// committed row always names a complete file, and an uncommitted file is
// an orphan that is removed or overwritten on restart. append_update()
// returns only after its transaction committed: that is the moment the
// server may acknowledge the update. commit_version() writes the version
// file, then in one transaction records the version, marks exactly the
// updates it applied, and saves the strategy state: after a kill -9 at any
// instant, a restarted server sees each acknowledged update either still
// pending (it will be applied) or applied by a committed version (it will
// not be applied again).
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace strata::fed {

struct ClientRecord {
  std::string id;
  int64_t last_sequence = 0;
  bool revoked = false;
  std::string enrolled_at;  // UTC, ISO 8601 (clients() only)
  int64_t updates = 0;      // in the ledger (clients() only)
};

// 1-64 characters of letters, digits, '_', '-', '.'.
bool valid_client_id(const std::string& id);

struct UpdateRecord {
  int64_t id = 0;  // ledger id, assigned by append_update
  std::string client_id;
  int64_t sequence = 0;
  int64_t base_version = 0;
  int64_t num_samples = 0;
  int64_t round = 0;
  double norm = 0.0;
  bool clipped = false;
  // A secure aggregation round's masked input: ring elements mod 2^32,
  // stored bit for bit in the float32 file (never applied as a delta).
  bool masked = false;
};

struct PendingUpdate {
  UpdateRecord record;
  at::Tensor delta;  // flat float32
};

struct VersionRecord {
  int64_t version = 0;
  std::vector<int64_t> applied;  // ledger ids
  double test_accuracy = NAN;
  double test_loss = NAN;
};

class ServerStore {
 public:
  // Opens (creating when absent) the store in `dir`. IoError when the
  // directory or database cannot be used.
  explicit ServerStore(const std::string& dir);
  ~ServerStore();
  ServerStore(const ServerStore&) = delete;
  ServerStore& operator=(const ServerStore&) = delete;

  const std::string& dir() const { return dir_; }

  // --- clients --------------------------------------------------------
  // Issues a new random token for a new client and stores only its salted
  // SHA-256. Returns the token. ConfigError for an invalid id or one that is
  // enrolled already (rotate() replaces a token).
  std::string enroll(const std::string& client_id);
  // A new token for an enrolled client (revoked or not: rotating
  // reinstates); the old one stops working at once.
  std::string rotate(const std::string& client_id);
  // The client's token stops working; its history stays in the ledger.
  void revoke(const std::string& client_id);
  // Every client, revoked ones too, by id.
  std::vector<ClientRecord> clients() const;

  // The operator's token for GetStatus (strata-fedserver status): the file
  // <dir>/operator.token (mode 0600), made on first use.
  std::string operator_token();
  std::string operator_token_path() const;
  // The client if `token` is its current token (constant-time compare).
  std::optional<ClientRecord> authenticate(const std::string& client_id,
                                           const std::string& token) const;
  int64_t num_clients() const;

  // --- updates --------------------------------------------------------
  // Durably records an accepted update and the client's new last sequence;
  // returns its ledger id. Once this returns the update may be acked.
  int64_t append_update(UpdateRecord record, const at::Tensor& delta);
  // Updates not yet applied by a committed version, oldest first, with
  // their deltas.
  std::vector<PendingUpdate> pending_updates() const;
  int64_t num_updates() const;  // ledger size, applied or not
  // Takes updates out of the pending ones without applying them: the
  // masked inputs of a secure aggregation round that failed or that a
  // restart abandoned (their masks cannot be removed any more).
  void discard_updates(const std::vector<int64_t>& ids);

  // --- versions -------------------------------------------------------
  // The newest committed version (nullopt: none yet).
  std::optional<int64_t> latest_version() const;
  std::string version_path(int64_t version) const;
  // Writes the version's state dict and commits it with the updates it
  // applied and the strategy's state, all or nothing.
  void commit_version(const VersionRecord& v,
                      const std::vector<std::pair<std::string, at::Tensor>>& state_dict,
                      const std::vector<std::pair<std::string, at::Tensor>>& strategy_state);
  // The committed version's tensors by name (from its file).
  std::vector<std::pair<std::string, at::Tensor>> load_version(int64_t version) const;
  std::vector<std::pair<std::string, at::Tensor>> load_strategy_state() const;
  // Applied ids per version, oldest version first (for audits and tests).
  std::vector<VersionRecord> versions() const;

 private:
  struct Db;
  void recover();

  std::string dir_;
  std::unique_ptr<Db> db_;
};

}  // namespace strata::fed
