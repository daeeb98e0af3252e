#include "federated/server_store.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <sqlite3.h>
#include <sys/stat.h>
#include <torch/serialize.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <mutex>

#include "core/error.h"
#include "core/fs.h"
#include "core/strings.h"
#include "trainer/checkpoint.h"

namespace strata::fed {
namespace {

std::string hex(const unsigned char* p, size_t n) {
  static const char* digits = "0123456789abcdef";
  std::string out;
  for (size_t i = 0; i < n; ++i) {
    out += digits[p[i] >> 4];
    out += digits[p[i] & 15];
  }
  return out;
}

std::string random_hex(size_t bytes) {
  std::vector<unsigned char> buf(bytes);
  STRATA_CHECK_T(IoError, RAND_bytes(buf.data(), static_cast<int>(bytes)) == 1,
                 "OpenSSL could not produce random bytes for a token");
  return hex(buf.data(), bytes);
}

std::string sha256_hex(const std::string& data) {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  STRATA_CHECK_T(IoError, EVP_Digest(data.data(), data.size(), md, &len, EVP_sha256(), nullptr) == 1,
                 "OpenSSL SHA-256 failed");
  return hex(md, len);
}


std::string tensor_bytes(const at::Tensor& t) {
  const at::Tensor c = t.detach().to(at::kFloat).contiguous();
  return std::string(static_cast<const char*>(c.data_ptr()), c.numel() * 4);
}

}  // namespace

bool valid_client_id(const std::string& id) {
  if (id.empty() || id.size() > 64) return false;
  for (char c : id) {
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '-' || c == '.')) return false;
  }
  return true;
}

// A SQLite connection with prepared statements; every public method of
// ServerStore holds `mu` for its whole transaction.
struct ServerStore::Db {
  sqlite3* h = nullptr;
  std::string path;
  mutable std::mutex mu;

  class Stmt {
   public:
    Stmt(const Db& db, const char* sql) : db_(db) {
      db.check(sqlite3_prepare_v2(db.h, sql, -1, &s_, nullptr), sql);
    }
    ~Stmt() { sqlite3_finalize(s_); }
    Stmt& bind(int i, int64_t v) { db_.check(sqlite3_bind_int64(s_, i, v), "bind"); return *this; }
    Stmt& bind(int i, double v) { db_.check(sqlite3_bind_double(s_, i, v), "bind"); return *this; }
    Stmt& bind(int i, const std::string& v) {
      db_.check(sqlite3_bind_text(s_, i, v.data(), static_cast<int>(v.size()), SQLITE_TRANSIENT), "bind");
      return *this;
    }
    // True while there is a row.
    bool step() {
      const int rc = sqlite3_step(s_);
      if (rc == SQLITE_ROW) return true;
      db_.check(rc == SQLITE_DONE ? SQLITE_OK : rc, sqlite3_sql(s_));
      return false;
    }
    bool null(int c) const { return sqlite3_column_type(s_, c) == SQLITE_NULL; }
    int64_t i64(int c) const { return sqlite3_column_int64(s_, c); }
    double f64(int c) const {
      return sqlite3_column_type(s_, c) == SQLITE_NULL ? NAN : sqlite3_column_double(s_, c);
    }
    std::string text(int c) const {
      const auto* p = sqlite3_column_text(s_, c);
      return p ? std::string(reinterpret_cast<const char*>(p)) : std::string();
    }

   private:
    const Db& db_;
    sqlite3_stmt* s_ = nullptr;
  };

  void check(int rc, const char* what) const {
    STRATA_CHECK_T(IoError, rc == SQLITE_OK, "SQLite ", path, ": ", what, ": ",
                   sqlite3_errmsg(h));
  }
  void exec(const char* sql) const {
    char* err = nullptr;
    const int rc = sqlite3_exec(h, sql, nullptr, nullptr, &err);
    const std::string msg = err ? err : "";
    sqlite3_free(err);
    STRATA_CHECK_T(IoError, rc == SQLITE_OK, "SQLite ", path, ": ", msg, " (", sql, ")");
  }

  // BEGIN IMMEDIATE ... COMMIT, rolled back if `body` throws.
  template <class F>
  void transaction(F&& body) const {
    exec("BEGIN IMMEDIATE");
    try {
      body();
    } catch (...) {
      sqlite3_exec(h, "ROLLBACK", nullptr, nullptr, nullptr);
      throw;
    }
    exec("COMMIT");
  }
};

ServerStore::ServerStore(const std::string& dir) : dir_(dir), db_(std::make_unique<Db>()) {
  make_dirs(join_path(dir_, "versions"));
  make_dirs(join_path(dir_, "updates"));
  db_->path = join_path(dir_, "server.db");
  const int rc = sqlite3_open_v2(db_->path.c_str(), &db_->h,
                                 SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_FULLMUTEX,
                                 nullptr);
  if (rc != SQLITE_OK) {
    const std::string msg = db_->h ? sqlite3_errmsg(db_->h) : "out of memory";
    sqlite3_close(db_->h);
    db_->h = nullptr;
    throw IoError(str("cannot open the server database ", db_->path, ": ", msg));
  }
  sqlite3_busy_timeout(db_->h, 10000);
  db_->exec("PRAGMA journal_mode=WAL");
  db_->exec("PRAGMA synchronous=FULL");
  db_->exec("PRAGMA foreign_keys=ON");
  db_->exec(
      "CREATE TABLE IF NOT EXISTS clients("
      " id TEXT PRIMARY KEY, salt TEXT NOT NULL, token_sha256 TEXT NOT NULL,"
      " last_sequence INTEGER NOT NULL DEFAULT 0, revoked INTEGER NOT NULL DEFAULT 0,"
      " enrolled_at REAL NOT NULL);"
      "CREATE TABLE IF NOT EXISTS versions("
      " version INTEGER PRIMARY KEY, committed_at REAL NOT NULL,"
      " num_updates INTEGER NOT NULL, test_accuracy REAL, test_loss REAL);"
      "CREATE TABLE IF NOT EXISTS updates("
      " id INTEGER PRIMARY KEY AUTOINCREMENT, client_id TEXT NOT NULL REFERENCES clients(id),"
      " sequence INTEGER NOT NULL, base_version INTEGER NOT NULL,"
      " num_samples INTEGER NOT NULL, round INTEGER NOT NULL, norm REAL NOT NULL,"
      " clipped INTEGER NOT NULL, numel INTEGER NOT NULL, received_at REAL NOT NULL,"
      " applied_version INTEGER REFERENCES versions(version),"
      " UNIQUE(client_id, sequence));"
      "CREATE INDEX IF NOT EXISTS updates_pending ON updates(applied_version);");
  // Columns added since the first format (a store made before them gets
  // them with their defaults).
  std::vector<std::string> columns;
  {
    Db::Stmt q(*db_, "PRAGMA table_info(updates)");
    while (q.step()) columns.push_back(q.text(1));
  }
  for (const char* c : {"masked", "discarded"}) {
    if (std::find(columns.begin(), columns.end(), c) == columns.end()) {
      db_->exec(str("ALTER TABLE updates ADD COLUMN ", c, " INTEGER NOT NULL DEFAULT 0").c_str());
    }
  }

  recover();
}

// Finishes or discards what a crash interrupted (Note [Federated
// durability]): files written for rows that never committed, deltas of
// applied updates, the strategy state of the latest committed version not
// yet renamed into place.
void ServerStore::recover() {
  // A file being written atomically is ".<name>.tmp.<pid>..." beside its
  // destination (core/fs.h); one left by a killed process is never renamed.
  for (const std::string& d : {dir_, join_path(dir_, "versions"), join_path(dir_, "updates")}) {
    for (const auto& f : list_files(d)) {
      if (f.size() > 1 && f[0] == '.' && f.find(".tmp.") != std::string::npos) {
        remove_file(join_path(d, f));
      }
    }
  }
  std::vector<std::string> keep;
  {
    std::lock_guard<std::mutex> lock(db_->mu);
    Db::Stmt q(*db_, "SELECT id FROM updates WHERE applied_version IS NULL AND discarded = 0");
    while (q.step()) keep.push_back(str("u", q.i64(0), ".f32"));
  }
  for (const auto& f : list_files(join_path(dir_, "updates"))) {
    if (std::find(keep.begin(), keep.end(), f) == keep.end()) {
      remove_file(join_path(dir_, "updates/" + f));
    }
  }
  const auto latest = latest_version();
  for (const auto& f : list_files(join_path(dir_, "versions"))) {
    int64_t v = 0;
    if (std::sscanf(f.c_str(), "v%ld.pt", &v) == 1 && (!latest || v > *latest)) {
      remove_file(join_path(dir_, "versions/" + f));
    }
  }
  const std::string current = join_path(dir_, "strategy_state.pt");
  for (const auto& f : list_files(dir_)) {
    int64_t v = 0;
    if (std::sscanf(f.c_str(), "strategy_state.v%ld.pt", &v) != 1) continue;
    const std::string path = join_path(dir_, f);
    if (latest && v == *latest) {
      STRATA_CHECK_T(IoError, std::rename(path.c_str(), current.c_str()) == 0,
                     "cannot rename ", path, " to ", current);
    } else {
      remove_file(path);
    }
  }
}

ServerStore::~ServerStore() {
  if (db_ && db_->h) sqlite3_close(db_->h);
}

std::string ServerStore::enroll(const std::string& client_id) {
  STRATA_CHECK_T(ConfigError, valid_client_id(client_id), "client id ", quote(client_id),
                 " is not 1-64 characters of letters, digits, '_', '-', '.'");
  const std::string token = random_hex(32);
  const std::string salt = random_hex(16);
  std::lock_guard<std::mutex> lock(db_->mu);
  db_->transaction([&] {
    Db::Stmt q(*db_, "SELECT revoked FROM clients WHERE id = ?");
    q.bind(1, client_id);
    STRATA_CHECK_T(ConfigError, !q.step(), "client ", quote(client_id), " is already enrolled",
                   " (use 'rotate ", client_id, "' to issue it a new token)");
    Db::Stmt(*db_,
             "INSERT INTO clients(id, salt, token_sha256, enrolled_at) VALUES(?, ?, ?, julianday('now'))")
        .bind(1, client_id).bind(2, salt).bind(3, sha256_hex(salt + token))
        .step();
  });
  return token;
}

std::string ServerStore::rotate(const std::string& client_id) {
  const std::string token = random_hex(32);
  const std::string salt = random_hex(16);
  std::lock_guard<std::mutex> lock(db_->mu);
  db_->transaction([&] {
    Db::Stmt(*db_, "UPDATE clients SET salt = ?, token_sha256 = ?, revoked = 0 WHERE id = ?")
        .bind(1, salt).bind(2, sha256_hex(salt + token)).bind(3, client_id)
        .step();
    STRATA_CHECK_T(ConfigError, sqlite3_changes(db_->h) == 1, "client ", quote(client_id),
                   " is not enrolled (see 'clients list')");
  });
  return token;
}

void ServerStore::revoke(const std::string& client_id) {
  std::lock_guard<std::mutex> lock(db_->mu);
  db_->transaction([&] {
    Db::Stmt(*db_, "UPDATE clients SET revoked = 1 WHERE id = ?").bind(1, client_id).step();
    STRATA_CHECK_T(ConfigError, sqlite3_changes(db_->h) == 1, "client ", quote(client_id),
                   " is not enrolled (see 'clients list')");
  });
}

std::vector<ClientRecord> ServerStore::clients() const {
  std::lock_guard<std::mutex> lock(db_->mu);
  Db::Stmt q(*db_,
             "SELECT c.id, c.last_sequence, c.revoked, strftime('%Y-%m-%dT%H:%M:%SZ', c.enrolled_at),"
             " (SELECT COUNT(*) FROM updates u WHERE u.client_id = c.id)"
             " FROM clients c ORDER BY c.id");
  std::vector<ClientRecord> out;
  while (q.step()) {
    ClientRecord c;
    c.id = q.text(0);
    c.last_sequence = q.i64(1);
    c.revoked = q.i64(2) != 0;
    c.enrolled_at = q.text(3);
    c.updates = q.i64(4);
    out.push_back(std::move(c));
  }
  return out;
}

std::string ServerStore::operator_token_path() const { return join_path(dir_, "operator.token"); }

std::string ServerStore::operator_token() {
  const std::string path = operator_token_path();
  if (!path_exists(path)) {
    const mode_t old = ::umask(077);
    try {
      atomic_write_file(path, random_hex(32) + "\n");
    } catch (...) {
      ::umask(old);
      throw;
    }
    ::umask(old);
  }
  std::string t = read_file(path);
  while (!t.empty() && (t.back() == '\n' || t.back() == ' ')) t.pop_back();
  STRATA_CHECK_T(IoError, t.size() == 64, path, " does not hold an operator token (64 hex "
                 "digits); remove it and restart the server to make a new one");
  return t;
}

std::optional<ClientRecord> ServerStore::authenticate(const std::string& client_id,
                                                      const std::string& token) const {
  std::lock_guard<std::mutex> lock(db_->mu);
  Db::Stmt q(*db_, "SELECT salt, token_sha256, last_sequence, revoked FROM clients WHERE id = ?");
  q.bind(1, client_id);
  if (!q.step()) return std::nullopt;
  const std::string want = q.text(1);
  const std::string got = sha256_hex(q.text(0) + token);
  if (want.size() != got.size() || CRYPTO_memcmp(want.data(), got.data(), got.size()) != 0 ||
      q.i64(3) != 0) {
    return std::nullopt;
  }
  ClientRecord c;
  c.id = client_id;
  c.last_sequence = q.i64(2);
  return c;
}

int64_t ServerStore::num_clients() const {
  std::lock_guard<std::mutex> lock(db_->mu);
  Db::Stmt q(*db_, "SELECT COUNT(*) FROM clients WHERE revoked = 0");
  q.step();
  return q.i64(0);
}

int64_t ServerStore::append_update(UpdateRecord r, const at::Tensor& delta) {
  std::lock_guard<std::mutex> lock(db_->mu);
  // The id is known before the row exists: AUTOINCREMENT never reuses ids,
  // and the lock keeps appends serial.
  Db::Stmt next(*db_, "SELECT COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'updates'), 0) + 1");
  next.step();
  r.id = next.i64(0);
  atomic_write_file(join_path(dir_, str("updates/u", r.id, ".f32")), tensor_bytes(delta));
  db_->transaction([&] {
    Db::Stmt(*db_,
             "INSERT INTO updates(id, client_id, sequence, base_version, num_samples, round,"
             " norm, clipped, numel, received_at, masked)"
             " VALUES(?, ?, ?, ?, ?, ?, ?, ?, ?, julianday('now'), ?)")
        .bind(1, r.id).bind(2, r.client_id).bind(3, r.sequence).bind(4, r.base_version)
        .bind(5, r.num_samples).bind(6, r.round).bind(7, r.norm)
        .bind(8, int64_t{r.clipped}).bind(9, delta.numel()).bind(10, int64_t{r.masked})
        .step();
    Db::Stmt(*db_, "UPDATE clients SET last_sequence = ? WHERE id = ?")
        .bind(1, r.sequence).bind(2, r.client_id).step();
  });
  return r.id;
}

std::vector<PendingUpdate> ServerStore::pending_updates() const {
  std::lock_guard<std::mutex> lock(db_->mu);
  Db::Stmt q(*db_,
             "SELECT id, client_id, sequence, base_version, num_samples, round, norm, clipped, numel,"
             " masked FROM updates WHERE applied_version IS NULL AND discarded = 0 ORDER BY id");
  std::vector<PendingUpdate> out;
  while (q.step()) {
    PendingUpdate p;
    p.record = UpdateRecord{q.i64(0), q.text(1), q.i64(2), q.i64(3), q.i64(4), q.i64(5),
                            q.f64(6), q.i64(7) != 0, q.i64(9) != 0};
    const std::string path = join_path(dir_, str("updates/u", p.record.id, ".f32"));
    const std::string bytes = read_file(path);
    STRATA_CHECK_T(IoError, static_cast<int64_t>(bytes.size()) == q.i64(8) * 4, path, " has ",
                   bytes.size(), " bytes; the ledger says ", q.i64(8) * 4);
    p.delta = at::empty({q.i64(8)}, at::kFloat);
    std::memcpy(p.delta.data_ptr(), bytes.data(), bytes.size());
    out.push_back(std::move(p));
  }
  return out;
}

void ServerStore::discard_updates(const std::vector<int64_t>& ids) {
  if (ids.empty()) return;
  std::lock_guard<std::mutex> lock(db_->mu);
  db_->transaction([&] {
    for (const int64_t id : ids) {
      Db::Stmt(*db_, "UPDATE updates SET discarded = 1 WHERE id = ? AND applied_version IS NULL")
          .bind(1, id).step();
    }
  });
  for (const int64_t id : ids) remove_file(join_path(dir_, str("updates/u", id, ".f32")));
}

int64_t ServerStore::num_updates() const {
  std::lock_guard<std::mutex> lock(db_->mu);
  Db::Stmt q(*db_, "SELECT COUNT(*) FROM updates");
  q.step();
  return q.i64(0);
}

std::optional<int64_t> ServerStore::latest_version() const {
  std::lock_guard<std::mutex> lock(db_->mu);
  Db::Stmt q(*db_, "SELECT MAX(version) FROM versions");
  q.step();
  if (q.null(0)) return std::nullopt;
  return q.i64(0);
}

std::string ServerStore::version_path(int64_t version) const {
  return join_path(dir_, str("versions/v", version, ".pt"));
}

void ServerStore::commit_version(
    const VersionRecord& v, const std::vector<std::pair<std::string, at::Tensor>>& state_dict,
    const std::vector<std::pair<std::string, at::Tensor>>& strategy_state) {
  std::lock_guard<std::mutex> lock(db_->mu);
  train::save_state_dict(version_path(v.version), state_dict);
  const std::string strategy_path = join_path(dir_, "strategy_state.pt");
  const std::string strategy_next = join_path(dir_, str("strategy_state.v", v.version, ".pt"));
  train::save_state_dict(strategy_next, strategy_state);
  db_->transaction([&] {
    Db::Stmt(*db_,
             "INSERT INTO versions(version, committed_at, num_updates, test_accuracy, test_loss)"
             " VALUES(?, julianday('now'), ?, ?, ?)")
        .bind(1, v.version).bind(2, static_cast<int64_t>(v.applied.size()))
        .bind(3, v.test_accuracy).bind(4, v.test_loss)
        .step();
    for (int64_t id : v.applied) {
      Db::Stmt u(*db_, "UPDATE updates SET applied_version = ? WHERE id = ? AND applied_version IS NULL");
      u.bind(1, v.version).bind(2, id).step();
      STRATA_INTERNAL_ASSERT(sqlite3_changes(db_->h) == 1, "update ", id,
                             " is not pending; it cannot be applied by version ", v.version);
    }
  });
  // Committed: this version's strategy state becomes current and the
  // applied deltas are no longer needed. A crash before the rename is
  // finished by recover() on the next start.
  STRATA_CHECK_T(IoError, std::rename(strategy_next.c_str(), strategy_path.c_str()) == 0,
                 "cannot rename ", strategy_next, " to ", strategy_path);
  for (int64_t id : v.applied) remove_file(join_path(dir_, str("updates/u", id, ".f32")));
}

std::vector<std::pair<std::string, at::Tensor>> ServerStore::load_version(int64_t version) const {
  return train::load_state_dict(version_path(version));
}

std::vector<std::pair<std::string, at::Tensor>> ServerStore::load_strategy_state() const {
  const std::string cur = join_path(dir_, "strategy_state.pt");
  if (!latest_version() || !path_exists(cur)) return {};
  return train::load_state_dict(cur);
}

std::vector<VersionRecord> ServerStore::versions() const {
  std::lock_guard<std::mutex> lock(db_->mu);
  std::vector<VersionRecord> out;
  Db::Stmt q(*db_, "SELECT version, test_accuracy, test_loss FROM versions ORDER BY version");
  while (q.step()) {
    VersionRecord v;
    v.version = q.i64(0);
    v.test_accuracy = q.f64(1);
    v.test_loss = q.f64(2);
    out.push_back(v);
  }
  for (auto& v : out) {
    Db::Stmt u(*db_, "SELECT id FROM updates WHERE applied_version = ? ORDER BY id");
    u.bind(1, v.version);
    while (u.step()) v.applied.push_back(u.i64(0));
  }
  return out;
}

}  // namespace strata::fed
