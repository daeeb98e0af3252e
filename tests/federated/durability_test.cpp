// Kill -9 durability of the federated server, as processes: a real
// strata-fedserver is SIGKILLed 20 times at random moments while a client
// streams updates into it (the async buffer aggregates every 3, so kills
// land in submits and in aggregations alike) and restarted on the same run
// directory. Afterwards every update the client saw acknowledged must be in
// the ledger exactly once, applied by at most one committed version, and
// the final version must have applied all of them. The test waits on what
// the server prints and the client sees (condition variables), never on
// elapsed time; the only delay is the kill's deliberate random moment.
#include <gtest/gtest.h>
#include <signal.h>
#include <sqlite3.h>
#include <torch/torch.h>

#include <condition_variable>
#include <memory>
#include <mutex>
#include <random>
#include <set>
#include <thread>

#include "core/fs.h"
#include "federated/client.h"
#include "federated/layout.h"
#include "child_process.h"
#include "test_util.h"
#include "trainer/models/models.h"
#include "trainer/recipe.h"
#include "trainer/trainer.h"

namespace strata::fed {
namespace {

const std::string kServer = STRATA_FEDSERVER_BIN;

int sql_count(sqlite3* db, const std::string& q) {
  sqlite3_stmt* s = nullptr;
  EXPECT_EQ(sqlite3_prepare_v2(db, q.c_str(), -1, &s, nullptr), SQLITE_OK) << q;
  int n = -1;
  if (sqlite3_step(s) == SQLITE_ROW) n = sqlite3_column_int(s, 0);
  sqlite3_finalize(s);
  return n;
}

TEST(FedDurability, TwentyKillsLoseAndDuplicateNothingAcknowledged) {
  test::TempDir dir;
  const int port = test::free_port();
  const std::string recipe = dir.path() + "/r.yaml";
  test::write_text(recipe,
                   "run: {dir: " + dir.path() + "/run}\n"
                   "model: {name: mlp, hidden: [32]}\n"
                   "data: {test_subset: 200}\n"
                   "federated:\n"
                   "  mode: async\n"
                   "  async: {versions: 100000, buffer_size: 3, max_staleness: 1000}\n"
                   "  server: {address: 127.0.0.1:" + std::to_string(port) + "}\n");
  const auto enroll = test::run_command(kServer + " enroll " + recipe + " edge-1");
  ASSERT_EQ(enroll.exit_code, 0) << enroll.output;
  const std::string token = enroll.output.substr(enroll.output.find(' ') + 1, 64);

  // The client's view of the model's tensors (names and shapes).
  const train::Recipe r = train::load_recipe(recipe);
  auto model = train::builtin_registries().models.get("mlp", "", "model.name").build(r.model, {}, {});
  const TensorLayout layout = TensorLayout::of(*model);

  EdgeClientOptions o;
  o.address = "127.0.0.1:" + std::to_string(port);
  o.client_id = "edge-1";
  o.token = token;
  o.max_retries = 200;  // with backoff capped at 0.5 s: rides out ~100 s of outages
  o.first_backoff = std::chrono::milliseconds(50);
  o.max_backoff = std::chrono::milliseconds(500);
  o.rpc_timeout = std::chrono::milliseconds(20000);
  EdgeClient client(o);

  std::string log;  // every server life's output, for failure messages
  const auto start_server = [&] { return std::make_unique<test::ChildProcess>(kServer + " " + recipe); };
  auto server = start_server();
  std::atomic<bool> done{false};
  std::mutex mu;
  std::condition_variable acked_more;
  int acked = 0;  // guarded by mu
  std::atomic<int> duplicates{0};
  std::string client_error;  // read after join
  bool client_failed = false;  // guarded by mu
  std::thread submitter([&] {
    try {
      int64_t have = 0;
      while (!done) {
        const FetchedModel m = client.fetch(have, std::chrono::milliseconds(0));
        have = m.version;
        UpdateToSend u;
        u.base_version = have;
        u.num_samples = 1;
        u.tensors = layout.unflatten(at::full({layout.numel()}, 1e-4f));
        const SubmitResult res = client.submit(u);
        if (!res.accepted) throw std::runtime_error(res.code + ": " + res.reason);
        duplicates += res.duplicate;
        std::lock_guard<std::mutex> lock(mu);
        ++acked;
        acked_more.notify_all();
      }
    } catch (const std::exception& e) {
      client_error = e.what();
      std::lock_guard<std::mutex> lock(mu);
      client_failed = true;
      acked_more.notify_all();
    }
  });
  const auto acked_now = [&] {
    std::lock_guard<std::mutex> lock(mu);
    return acked;
  };
  // Until the client saw an update acknowledged after the first `before`.
  const auto wait_ack_after = [&](int before) {
    std::unique_lock<std::mutex> lock(mu);
    acked_more.wait_for(lock, std::chrono::seconds(60),
                        [&] { return acked > before || client_failed; });
    return acked > before;
  };

  // Each kill comes once that server listens and has acknowledged at least
  // one update, and then a random 0-1 s more, so a slow machine makes the
  // test slower, never meaningless: every server life sees submits, and
  // kills land in submits and aggregations alike.
  std::mt19937 rng(1);
  bool served = true;
  for (int kill = 0; kill < 20 && served; ++kill) {
    const int before = acked_now();
    served = server->wait_output("listening on", 1, std::chrono::seconds(60)) &&
             wait_ack_after(before);
    std::this_thread::sleep_for(std::chrono::milliseconds(rng() % 1000));  // the random moment
    server->signal(SIGKILL);
    served = served && server->wait_exit(std::chrono::seconds(30)).has_value();
    log += server->output();
    server = start_server();
  }
  // The last life serves too: it recovers and acknowledges more.
  const int before = acked_now();
  served = served && server->wait_output("listening on", 1, std::chrono::seconds(60)) &&
           wait_ack_after(before);
  done = true;
  submitter.join();
  server->signal(SIGTERM);
  served = served && server->wait_exit(std::chrono::seconds(30)).has_value();
  log += server->output();
  ASSERT_TRUE(client_error.empty()) << client_error << "\n" << log;
  ASSERT_TRUE(served) << "a restarted server did not come up, acknowledge an update "
                          "within 60 s or exit\n" << log;
  ASSERT_GE(acked, 21);  // at least one per server life

  // The ledger: one row per acknowledged update (a retry whose first
  // attempt was recorded shows up as a duplicate answer, not a second row).
  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open((dir.path() + "/run/server.db").c_str(), &db), SQLITE_OK);
  EXPECT_EQ(sql_count(db, "SELECT COUNT(*) FROM updates"), acked);
  EXPECT_EQ(sql_count(db, "SELECT COUNT(DISTINCT sequence) FROM updates"), acked);
  // Applied by committed versions only, each update at most once (one
  // column), and versions are gap-free.
  EXPECT_EQ(sql_count(db, "SELECT COUNT(*) FROM updates WHERE applied_version IS NOT NULL "
                          "AND applied_version NOT IN (SELECT version FROM versions)"), 0);
  EXPECT_EQ(sql_count(db, "SELECT MAX(version) - MIN(version) + 1 - COUNT(*) FROM versions"), 0);
  const int pending = sql_count(db, "SELECT COUNT(*) FROM updates WHERE applied_version IS NULL");
  EXPECT_EQ(sql_count(db, "SELECT SUM(num_updates) FROM versions"), acked - pending);
  sqlite3_close(db);
  // Each pending update still has its delta on disk; applied ones do not.
  EXPECT_EQ(static_cast<int>(list_files(dir.path() + "/run/updates").size()), pending);
  std::cout << acked << " updates acknowledged across 20 kills (" << duplicates
            << " acknowledged on retry after a lost reply), " << pending << " pending\n";
}

}  // namespace
}  // namespace strata::fed
