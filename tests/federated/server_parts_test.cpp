// The server's building blocks: model layout, receiving an update into it,
// update validation, the durable store (real SQLite in a temporary
// directory, including recovery from files a crash left behind), the
// aggregation triggers on explicit times, and the manual clock.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <algorithm>
#include <thread>
#include <variant>

#include "core/error.h"
#include "core/fs.h"
#include "federated/clock.h"
#include "federated/layout.h"
#include "federated/server_store.h"
#include "federated/strategy.h"
#include "federated/trigger.h"
#include "federated/validator.h"
#include "federated/wire.h"
#include "test_util.h"

namespace strata::fed {
namespace {

struct Net : torch::nn::Module {
  Net() {
    fc = register_module("fc", torch::nn::Linear(3, 2));
    bn = register_module("bn", torch::nn::BatchNorm1d(2));
  }
  torch::nn::Linear fc{nullptr};
  torch::nn::BatchNorm1d bn{nullptr};
};

TEST(Layout, ParametersThenFloatBuffersRoundTrip) {
  Net net;
  const TensorLayout l = TensorLayout::of(net);
  std::vector<std::string> names;
  for (const auto& s : l.slots()) names.push_back(s.name);
  // num_batches_tracked (int64) is not part of the federated state.
  EXPECT_EQ(names, (std::vector<std::string>{"fc.weight", "fc.bias", "bn.weight", "bn.bias",
                                             "bn.running_mean", "bn.running_var"}));
  EXPECT_EQ(l.numel(), 6 + 2 + 2 + 2 + 2 + 2);
  const at::Tensor flat = at::arange(l.numel(), at::kFloat);
  Net other;
  l.load_into(other, flat);
  EXPECT_TRUE(at::equal(l.flatten(other), flat));
  EXPECT_TRUE(at::equal(other.fc->weight, at::arange(6, at::kFloat).view({2, 3})));
  EXPECT_TRUE(at::equal(l.unflatten(flat)[4].second, at::tensor({12.0f, 13.0f})));
  EXPECT_TRUE(at::equal(l.from_named(l.unflatten(flat)), flat));
  auto renamed = l.unflatten(flat);
  renamed[2].first = "bn.gamma";
  EXPECT_THROW(l.from_named(renamed), DataError);
}

// An update's chunks as a sender writes them, with each tensor's payload
// cut at `cut` bytes so data arrives in uneven pieces.
std::vector<pb::UpdateChunk> chunks_of(const std::vector<EncodedTensor>& tensors, size_t cut) {
  std::vector<pb::UpdateChunk> out;
  for (const auto& t : tensors) {
    pb::UpdateChunk head;
    to_proto(t, head.mutable_tensor());
    out.push_back(head);
    for (size_t off = 0; off < t.data.size(); off += cut) {
      pb::UpdateChunk c;
      c.set_data(t.data.substr(off, cut));
      out.push_back(c);
    }
  }
  return out;
}

// Receives `chunks` into `layout`: the flat vector, or the first error.
std::variant<at::Tensor, WireError> receive(const TensorLayout& layout,
                                            const std::vector<pb::UpdateChunk>& chunks,
                                            uint32_t announced, uint64_t max_bytes = 1 << 20) {
  UpdateReceiver rx(layout, announced, max_bytes);
  for (const auto& c : chunks) {
    if (auto e = rx.add(c)) return *e;
  }
  if (auto e = rx.finish()) return *e;
  return rx.take();
}

TEST(UpdateReceiver, DecodesEveryEncodingInPlaceAndChecksAgainstTheModel) {
  Net net;
  const TensorLayout l = TensorLayout::of(net);
  const at::Tensor want = at::arange(1, l.numel() + 1, at::kFloat) / 8;  // exact in fp16
  const auto named = l.unflatten(want);
  const uint32_t n = static_cast<uint32_t>(named.size());
  // Every encoding, payloads cut at 1 and 3 bytes (odd, across elements).
  for (const Encoding enc : {Encoding::kFp32, Encoding::kFp16, Encoding::kInt8, Encoding::kTopK}) {
    std::vector<EncodedTensor> tensors;
    for (const auto& [name, t] : named) tensors.push_back(encode(name, t, {enc, 1.0}));
    for (const size_t cut : {size_t{1}, size_t{3}, size_t{4096}}) {
      const auto got = receive(l, chunks_of(tensors, cut), n);
      ASSERT_TRUE(std::holds_alternative<at::Tensor>(got))
          << encoding_name(enc) << ": " << std::get<WireError>(got).reason;
      const double tol = enc == Encoding::kInt8 ? 0.5 * (l.numel() / 8.0) / 127 : 0.0;
      EXPECT_LE((std::get<at::Tensor>(got) - want).abs().max().item<double>(), tol)
          << encoding_name(enc) << " cut " << cut;
    }
  }
  std::vector<EncodedTensor> good;
  for (const auto& [name, t] : named) good.push_back(encode(name, t, {}));
  const auto expect = [&](std::vector<EncodedTensor> t, const std::string& msg,
                          uint32_t announced, bool too_large = false, uint64_t max = 1 << 20) {
    const auto got = receive(l, chunks_of(t, 5), announced, max);
    ASSERT_TRUE(std::holds_alternative<WireError>(got)) << "accepted; expected " << msg;
    const WireError& e = std::get<WireError>(got);
    EXPECT_NE(e.reason.find(msg), std::string::npos) << e.reason;
    EXPECT_EQ(e.too_large, too_large) << e.reason;
  };
  auto missing = good;
  missing.pop_back();
  expect(missing, "the update has 5 tensors; the model has 6", 5);
  expect(missing, "announced 6 tensors, sent 5", 6);
  auto extra = good;
  extra.push_back(good.back());
  expect(extra, "more than the announced 6 tensors", 6);
  expect(extra, "the update has more tensors than the model's 6", 7);
  auto renamed = good;
  renamed[1].name = "fc.bias2";
  expect(renamed, "tensor 1 is 'fc.bias2'; the model's tensor 1 is 'fc.bias'", n);
  auto reshaped = good;
  reshaped[0] = encode("fc.weight", at::ones({3, 2}), {});
  expect(reshaped, "tensor 'fc.weight' has shape [3, 2]; the model's is [2, 3]", n);
  auto short_fp32 = good;
  short_fp32[0].data.pop_back();
  expect(short_fp32, "tensor 'fc.weight' (fp32): 23 payload bytes for 6 elements; expected 24", n);
  auto bad_topk = good;
  bad_topk[0] = encode("fc.weight", at::ones({2, 3}), {Encoding::kTopK, 0.5});
  std::swap(bad_topk[0].data[0], bad_topk[0].data[4]);  // indices no longer increasing
  expect(bad_topk, "indices are not strictly increasing", n);
  expect(good, "exceeds the server's limit", n, /*too_large=*/true, /*max=*/40);
  // Data that overruns its header, and data before any header.
  auto chunks = chunks_of(good, 64);
  chunks.insert(chunks.begin() + 2, chunks[1]);
  const auto overrun = receive(l, chunks, n);
  ASSERT_TRUE(std::holds_alternative<WireError>(overrun));
  EXPECT_NE(std::get<WireError>(overrun).reason.find("got more than its announced 24"),
            std::string::npos);
  chunks = chunks_of(good, 64);
  chunks.erase(chunks.begin());
  const auto headless = receive(l, chunks, n);
  ASSERT_TRUE(std::holds_alternative<WireError>(headless));
  EXPECT_EQ(std::get<WireError>(headless).reason, "data before any tensor header");
}

TEST(Validator, MetadataRejectionsCarryCodeKeyAndReason) {
  ValidationPolicy p;
  p.max_staleness = 2;
  UpdateFacts f{"c1", /*base*/ 5, /*current*/ 6, /*seq*/ 4, /*last*/ 3, /*samples*/ 10};
  EXPECT_FALSE(check_metadata(f, p));
  auto r = check_metadata({"c1", 3, 6, 4, 3, 10}, p);
  ASSERT_TRUE(r);
  EXPECT_EQ(r->code, RejectCode::kFailedPrecondition);
  EXPECT_EQ(r->key, "stale");
  EXPECT_NE(r->reason.find("3 versions behind the server's 6 (max_staleness 2)"), std::string::npos);
  r = check_metadata({"c1", 7, 6, 4, 3, 10}, p);
  ASSERT_TRUE(r);
  EXPECT_EQ(r->key, "future_version");
  r = check_metadata({"c1", 5, 6, 3, 3, 10}, p);
  ASSERT_TRUE(r);
  EXPECT_EQ(r->code, RejectCode::kAlreadyExists);
  EXPECT_EQ(r->key, "replay");
  r = check_metadata({"c1", 5, 6, 4, 3, 0}, p);
  ASSERT_TRUE(r);
  EXPECT_EQ(r->key, "num_samples");
  r = check_metadata({"c1", 5, 6, 4, 3, static_cast<uint64_t>(p.max_num_samples) + 1}, p);
  ASSERT_TRUE(r);
  EXPECT_EQ(r->code, RejectCode::kInvalidArgument);
}

TEST(Validator, DeltaFiniteAndNormBound) {
  ValidationPolicy p;
  p.norm_bound = 1.0;
  Accepted a;
  at::Tensor d = at::tensor({3.0f, 4.0f});
  EXPECT_FALSE(check_delta(d, p, &a));
  EXPECT_TRUE(a.clipped);
  EXPECT_DOUBLE_EQ(a.norm, 5.0);
  EXPECT_TRUE(at::allclose(d, at::tensor({0.6f, 0.8f})));
  p.clip_to_bound = false;
  at::Tensor e = at::tensor({3.0f, 4.0f});
  auto r = check_delta(e, p, &a);
  ASSERT_TRUE(r);
  EXPECT_EQ(r->key, "norm");
  EXPECT_NE(r->reason.find("update L2 norm 5 exceeds the bound 1"), std::string::npos) << r->reason;
  at::Tensor bad = at::tensor({1.0f, NAN, 2.0f});
  r = check_delta(bad, p, &a);
  ASSERT_TRUE(r);
  EXPECT_EQ(r->key, "non_finite");
  EXPECT_NE(r->reason.find("first at flat index 1"), std::string::npos);
  at::Tensor inf = at::tensor({INFINITY});
  EXPECT_TRUE(check_delta(inf, p, &a));
}

UpdateRecord rec(const std::string& client, int64_t seq, int64_t base = 0) {
  UpdateRecord r;
  r.client_id = client;
  r.sequence = seq;
  r.base_version = base;
  r.num_samples = 10 * seq;
  return r;
}

TEST(ServerStore, TokensAreCheckedAndStoredHashed) {
  test::TempDir dir;
  ServerStore s(dir.path());
  const std::string t1 = s.enroll("edge-1");
  EXPECT_EQ(t1.size(), 64u);
  EXPECT_TRUE(s.authenticate("edge-1", t1));
  EXPECT_FALSE(s.authenticate("edge-1", t1 + "x"));
  EXPECT_FALSE(s.authenticate("edge-2", t1));
  // Enrolling again does not silently replace a token; rotate does.
  try {
    s.enroll("edge-1");
    FAIL();
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("already enrolled (use 'rotate edge-1'"),
              std::string::npos) << e.what();
  }
  EXPECT_TRUE(s.authenticate("edge-1", t1));
  const std::string t2 = s.rotate("edge-1");
  EXPECT_FALSE(s.authenticate("edge-1", t1));
  EXPECT_TRUE(s.authenticate("edge-1", t2));
  EXPECT_EQ(s.num_clients(), 1);
  // Revoked: the token stops working, the client is still listed; rotating
  // reinstates it with a new token.
  s.revoke("edge-1");
  EXPECT_FALSE(s.authenticate("edge-1", t2));
  EXPECT_EQ(s.num_clients(), 0);
  ASSERT_EQ(s.clients().size(), 1u);
  EXPECT_TRUE(s.clients()[0].revoked);
  EXPECT_EQ(s.clients()[0].enrolled_at.size(), 20u);  // 2026-12-01T21:00:00Z
  const std::string t3 = s.rotate("edge-1");
  EXPECT_TRUE(s.authenticate("edge-1", t3));
  EXPECT_FALSE(s.clients()[0].revoked);
  EXPECT_THROW(s.revoke("nobody"), ConfigError);
  EXPECT_THROW(s.rotate("nobody"), ConfigError);
  // Neither the database nor its write-ahead log holds a token.
  for (const char* f : {"/server.db", "/server.db-wal"}) {
    if (!path_exists(dir.path() + f)) continue;
    const std::string bytes = read_file(dir.path() + f);
    EXPECT_EQ(bytes.find(t1), std::string::npos) << f;
    EXPECT_EQ(bytes.find(t2), std::string::npos) << f;
    EXPECT_EQ(bytes.find(t3), std::string::npos) << f;
  }
  EXPECT_TRUE(path_exists(dir.path() + "/server.db-wal"));
  EXPECT_THROW(s.enroll("bad id/../x"), ConfigError);
}

TEST(ServerStore, LedgerVersionsAndRestart) {
  test::TempDir dir;
  int64_t a = 0, b = 0, c = 0;
  {
    ServerStore s(dir.path());
    s.enroll("c1");
    s.enroll("c2");
    EXPECT_FALSE(s.latest_version());
    s.commit_version({0, {}}, {{"w", at::zeros({4})}}, {});
    a = s.append_update(rec("c1", 1), at::full({4}, 1.0f));
    b = s.append_update(rec("c2", 1), at::full({4}, 2.0f));
    EXPECT_EQ(s.authenticate("c1", s.rotate("c1"))->last_sequence, 1);
    // Version 1 applies a and b; c arrives after.
    s.commit_version({1, {a, b}, 0.5, 1.2}, {{"w", at::full({4}, 1.5f)}},
                     {{"m", at::ones({4})}});
    c = s.append_update(rec("c1", 2, 1), at::full({4}, 3.0f));
    // A committed version cannot apply an update twice.
    EXPECT_THROW(s.commit_version({2, {a}}, {{"w", at::zeros({4})}}, {}), InternalError);
  }
  ServerStore s(dir.path());  // restart
  EXPECT_EQ(s.latest_version(), 1);
  const auto pending = s.pending_updates();
  ASSERT_EQ(pending.size(), 1u);
  EXPECT_EQ(pending[0].record.id, c);
  EXPECT_EQ(pending[0].record.num_samples, 20);
  EXPECT_TRUE(at::equal(pending[0].delta, at::full({4}, 3.0f)));
  EXPECT_TRUE(at::equal(s.load_version(1)[0].second, at::full({4}, 1.5f)));
  EXPECT_TRUE(at::equal(s.load_strategy_state()[0].second, at::ones({4})));
  const auto versions = s.versions();
  ASSERT_EQ(versions.size(), 2u);
  EXPECT_EQ(versions[1].applied, (std::vector<int64_t>{a, b}));
  EXPECT_DOUBLE_EQ(versions[1].test_accuracy, 0.5);
  // Applied deltas were deleted; the pending one is kept.
  EXPECT_EQ(list_files(dir.path() + "/updates"), (std::vector<std::string>{"u" + std::to_string(c) + ".f32"}));
}

TEST(ServerStore, RecoveryDropsWhatACrashLeftUncommitted) {
  test::TempDir dir;
  {
    ServerStore s(dir.path());
    s.enroll("c1");
    s.commit_version({0, {}}, {{"w", at::zeros({2})}}, {{"m", at::zeros({2})}});
    s.append_update(rec("c1", 1), at::ones({2}));
  }
  // A crash after writing files whose rows never committed, and one after
  // committing version 0 but before its strategy state was renamed.
  test::write_text(dir.path() + "/updates/u7.f32", "torn");
  test::write_text(dir.path() + "/versions/v1.pt", "half a model");
  std::rename((dir.path() + "/strategy_state.pt").c_str(),
              (dir.path() + "/strategy_state.v0.pt").c_str());
  test::write_text(dir.path() + "/strategy_state.v1.pt", "uncommitted");
  ServerStore s(dir.path());
  EXPECT_EQ(list_files(dir.path() + "/updates"), (std::vector<std::string>{"u1.f32"}));
  EXPECT_EQ(list_files(dir.path() + "/versions"), (std::vector<std::string>{"v0.pt"}));
  EXPECT_TRUE(at::equal(s.load_strategy_state()[0].second, at::zeros({2})));
  EXPECT_FALSE(path_exists(dir.path() + "/strategy_state.v1.pt"));
  // The next append reuses no committed id.
  EXPECT_EQ(s.append_update(rec("c1", 2), at::ones({2})), 2);
}

// --- Triggers: pure state machines, driven with explicit times -----------

using TimePoint = ServerClock::time_point;
using std::chrono::seconds;

TimePoint at_s(int64_t s) { return TimePoint{} + seconds(s); }

std::unique_ptr<Strategy> fedavg() { return make_strategy(StrategyOptions{}); }

SyncRoundOptions rounds_of(int64_t k) {
  SyncRoundOptions o;
  o.rounds = 5;
  o.clients_per_round = k;
  o.over_selection = 0;
  o.round_timeout = std::chrono::milliseconds(60000);
  o.max_round_extensions = 2;
  return o;
}

TEST(TriggerSyncRounds, SelectsAfterGatheringOrWhenEnoughCheckedIn) {
  const auto strategy = fedavg();
  auto t = make_sync_rounds(rounds_of(2), *strategy, 1, 1, at_s(0));
  EXPECT_EQ(t->mode(), "sync");
  EXPECT_TRUE(t->check_in("a"));
  EXPECT_FALSE(t->check_in("a"));  // already waiting
  auto p = t->poll(at_s(0), 0);
  EXPECT_FALSE(p.selected);  // one of two, still gathering
  EXPECT_FALSE(p.take);
  EXPECT_EQ(p.wake, TimePoint{} + std::chrono::milliseconds(1000));  // the gathering ends
  EXPECT_FALSE(t->has_work("a", 0));
  p = t->poll(at_s(1), 0);  // gathering over: whoever is there
  EXPECT_TRUE(p.selected);
  EXPECT_TRUE(t->has_work("a", 0));
  EXPECT_EQ(p.wake, at_s(60));  // the deadline
  // A late client is topped up at once.
  t->check_in("b");
  EXPECT_TRUE(t->poll(at_s(2), 0).selected);
  EXPECT_TRUE(t->has_work("b", 0));
  // Two checked in at once at the start of a round: selected without
  // waiting for the gathering time.
  auto u = make_sync_rounds(rounds_of(2), *strategy, 1, 1, at_s(0));
  u->check_in("x");
  u->check_in("y");
  EXPECT_TRUE(u->poll(at_s(0), 0).selected);
  EXPECT_TRUE(u->has_work("x", 0) && u->has_work("y", 0));
}

TEST(TriggerSyncRounds, AdmitsOnlySelectedClientsOncePerRound) {
  const auto strategy = fedavg();
  auto t = make_sync_rounds(rounds_of(2), *strategy, 1, 3, at_s(0));
  t->check_in("a");
  t->check_in("b");
  t->poll(at_s(0), 0);
  EXPECT_EQ(t->round(), 3);
  EXPECT_FALSE(t->admit("a", 3, 0));
  EXPECT_EQ(t->admit("a", 2, 0)->key, "not_selected");
  EXPECT_EQ(t->admit("c", 3, 0)->key, "not_selected");
  t->accepted("a");
  EXPECT_EQ(t->admit("a", 3, 1)->key, "round_duplicate");
  EXPECT_FALSE(t->has_work("a", 1));
  EXPECT_EQ(t->admit("b", 3, 2)->key, "round_full");
  // A refused update sends its selected client back to the pool.
  t->refused("b");
  EXPECT_FALSE(t->has_work("b", 1));
  EXPECT_TRUE(t->flow_rejection("round_full"));
  EXPECT_FALSE(t->flow_rejection("not_selected"));
}

TEST(TriggerSyncRounds, ClosesFullOrAtTheDeadlineAfterItsExtensions) {
  const auto strategy = fedavg();
  SyncRoundOptions over = rounds_of(2);
  over.over_selection = 0.5;  // selects 3 for 2 updates
  auto t = make_sync_rounds(over, *strategy, 1, 1, at_s(0));
  for (const char* c : {"a", "b", "c"}) t->check_in(c);
  t->poll(at_s(0), 0);
  t->accepted("a");
  t->accepted("b");
  EXPECT_EQ(t->poll(at_s(5), 2).take, std::optional<size_t>(2));  // full
  EXPECT_EQ(t->admit("c", 1, 0)->key, "round_full");  // closed while aggregating
  EXPECT_FALSE(t->has_work("c", 0));
  t->aggregated(at_s(5));
  EXPECT_EQ(t->round(), 2);
  // Round 2: nobody comes. Deadlines at 65, then extended to 125 and 185;
  // after max_round_extensions (2) it closes with nothing.
  EXPECT_FALSE(t->poll(at_s(64), 0).take);
  auto p = t->poll(at_s(65), 0);
  EXPECT_FALSE(p.take);
  EXPECT_EQ(p.wake, at_s(125));
  EXPECT_FALSE(t->poll(at_s(125), 0).take);
  EXPECT_EQ(t->poll(at_s(185), 0).take, std::optional<size_t>(0));
  t->aggregated(at_s(185));
  // Round 3 with min_updates: at its deadline one update of two is enough.
  SyncRoundOptions o = rounds_of(2);
  o.min_updates = 1;
  auto m = make_sync_rounds(o, *strategy, 1, 3, at_s(0));
  EXPECT_EQ(m->planned_batch(), 1);
  EXPECT_FALSE(m->poll(at_s(59), 1).take);
  EXPECT_EQ(m->poll(at_s(60), 1).take, std::optional<size_t>(1));
}

TEST(TriggerSyncRounds, TheStrategySelects) {
  // A strategy whose selection prefers the alphabetically last clients.
  struct Last : Strategy {
    std::unique_ptr<Strategy> base = fedavg();
    const std::string& name() const override { return base->name(); }
    std::vector<std::string> select_clients(std::vector<std::string> pool, int64_t count,
                                            std::mt19937_64&) const override {
      std::sort(pool.rbegin(), pool.rend());
      pool.resize(std::min<size_t>(pool.size(), static_cast<size_t>(count)));
      return pool;
    }
    ClientConfig configure() const override { return base->configure(); }
    std::string cannot_aggregate(int64_t n) const override { return base->cannot_aggregate(n); }
    Aggregation aggregate(const at::Tensor& g, const std::vector<ClientUpdate>& u) override {
      return base->aggregate(g, u);
    }
    const std::vector<std::string>& last_selected() const override {
      return base->last_selected();
    }
    std::vector<std::pair<std::string, at::Tensor>> state() const override { return {}; }
    void load_state(const std::vector<std::pair<std::string, at::Tensor>>&) override {}
  } last;
  auto t = make_sync_rounds(rounds_of(2), last, 1, 1, at_s(0));
  for (const char* c : {"a", "d", "b", "c"}) t->check_in(c);
  EXPECT_TRUE(t->poll(at_s(0), 0).selected);
  EXPECT_TRUE(t->has_work("d", 0) && t->has_work("c", 0));
  EXPECT_FALSE(t->has_work("a", 0) || t->has_work("b", 0));
}

TEST(TriggerAsyncBuffer, TakesExactlyKAndWeightsStaleness) {
  AsyncBufferOptions o;
  o.buffer_size = 3;
  o.staleness_exponent = 0.5;
  o.max_staleness = 4;
  auto t = make_async_buffer(o);
  EXPECT_EQ(t->mode(), "async");
  EXPECT_EQ(t->round(), 0);
  EXPECT_EQ(t->max_staleness(), 4);
  EXPECT_FALSE(t->admit("anyone", 0, 100));
  EXPECT_FALSE(t->poll(at_s(0), 2).take);
  EXPECT_EQ(t->poll(at_s(0), 5).take, std::optional<size_t>(3));
  EXPECT_EQ(t->poll(at_s(0), 5).wake, TimePoint::max());  // no deadlines
  EXPECT_DOUBLE_EQ(t->staleness_weight(0), 1.0);
  EXPECT_DOUBLE_EQ(t->staleness_weight(3), 0.5);
}

TEST(ManualClock, AdvanceWakesAWaiterAndOnlyThen) {
  ManualClock clock;
  std::mutex mu;
  std::condition_variable cv;
  bool woke = false;
  std::thread waiter([&] {
    std::unique_lock<std::mutex> lock(mu);
    while (clock.now() < at_s(10)) clock.wait_until(lock, cv, at_s(10));
    woke = true;
  });
  clock.advance(seconds(4));
  {
    std::lock_guard<std::mutex> lock(mu);
    EXPECT_FALSE(woke);
  }
  clock.advance(seconds(6));
  waiter.join();  // hangs (and the test times out) if the wakeup were lost
  EXPECT_TRUE(woke);
  EXPECT_EQ(clock.now(), at_s(10));
}

}  // namespace
}  // namespace strata::fed
