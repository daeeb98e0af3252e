// Secure aggregation over gRPC (federated.secagg): edge clients selected
// for a sync round run the SecAgg stages against a real server on
// loopback. The version the server commits is the global model plus the
// weighted mean of the clients' updates, within the quantisation; with a
// client that drops out after its input and one that never sends keys; the
// ledger holds only masked inputs and the log no secrets; a restart
// abandons an unfinished round;
// combinations that cannot work are recipe errors.
#include <gtest/gtest.h>

#include <atomic>
#include <map>
#include <regex>
#include <cstring>
#include <thread>

#include "core/error.h"
#include "core/fs.h"
#include "core/json.h"
#include "federated/client.h"
#include "federated/fixture.h"
#include "federated/secagg.h"
#include "federated/server_options.h"
#include "federated/sim.h"
#include "test_util.h"

namespace strata::fed {
namespace {

train::Recipe secagg_recipe(const std::string& dir, int64_t per_round,
                            std::vector<std::string> extra = {}) {
  std::vector<std::string> o{"federated.secagg.enabled=true",
                             "federated.secagg.max_samples=100",
                             "federated.sync.clients_per_round=" + std::to_string(per_round),
                             "federated.sync.over_selection=0", "federated.sync.rounds=2",
                             "federated.strategy=fedavg", "federated.server_momentum=0",
                             "federated.server.progress_every_s=0"};
  o.insert(o.end(), extra.begin(), extra.end());
  return small_recipe(dir, o);
}

// What one simulated client does: wait to be selected, then submit.
enum class Role { kHonest, kDropsAfterInput, kSilent };

struct Party {
  std::string id;
  at::Tensor update;
  int64_t samples = 10;
  Role role = Role::kHonest;
  SubmitResult result;
};

void run_party(const Fixture& f, Party& p, const std::string& token,
               const std::atomic<bool>& stop) {
  EdgeClient c(f.client_options(p.id, token));
  int64_t have = 0;
  for (int tries = 0; tries < 100 && !stop; ++tries) {
    const FetchedModel m = c.fetch(have, std::chrono::milliseconds(2000));
    have = m.version;  // from now on a long poll: it answers when selected
    if (m.round == 0) continue;
    ASSERT_TRUE(m.secagg.has_value());
    if (p.role == Role::kSilent) return;  // selected, never answers
    p.result = c.submit_secagg(m.round, *m.secagg, p.update, p.samples,
                               p.role == Role::kDropsAfterInput);
    return;
  }
}

// Runs the parties of one round and returns the committed version's delta.
at::Tensor run_round(Fixture& f, std::vector<Party>& parties) {
  const at::Tensor before = f.server.model_view("edge-1").flat->clone();
  std::atomic<bool> stop{false};
  std::vector<std::thread> threads;
  for (Party& p : parties) {
    const std::string token =
        p.id == "edge-1" ? f.token : f.server.store().enroll(p.id);
    threads.emplace_back([&, token] { run_party(f, p, token, stop); });
  }
  const ServerStatus s = f.server.wait_status(
      [](const ServerStatus& st) { return st.version >= 2; }, std::chrono::seconds(60));
  stop = true;
  for (auto& t : threads) t.join();
  EXPECT_EQ(s.version, 2);
  return *f.server.model_view("edge-1").flat - before;
}

std::vector<Party> parties(int64_t n, int64_t numel) {
  std::vector<Party> out;
  at::Generator gen = at::detail::createCPUGenerator(11);
  for (int64_t i = 0; i < n; ++i) {
    Party p;
    p.id = "edge-" + std::to_string(i + 1);
    p.update = at::randn({numel}, gen) * 0.05;
    p.samples = 10 * (i + 1);
    out.push_back(std::move(p));
  }
  return out;
}

at::Tensor weighted_mean(const std::vector<Party>& ps) {
  at::Tensor sum = at::zeros_like(ps[0].update);
  double w = 0;
  for (const Party& p : ps) {
    if (p.role == Role::kSilent) continue;
    sum += p.update * static_cast<double>(p.samples);
    w += static_cast<double>(p.samples);
  }
  return sum / w;
}

// Each client's weighted update is quantised with a step of 16 / (2^22 - 1)
// (about 3.8e-6); the mean's error is within the clients' steps over the
// total weight.
constexpr double kTolerance = 4 * 3.9e-6 / 0.5;

TEST(SecAggService, TheCommittedVersionAddsTheWeightedMeanOfTheUpdates) {
  test::TempDir dir;
  Fixture f(secagg_recipe(dir.path(), 4));
  std::vector<Party> ps = parties(4, f.server.layout().numel());
  const at::Tensor delta = run_round(f, ps);
  for (const Party& p : ps) {
    EXPECT_TRUE(p.result.accepted) << p.id << ": " << p.result.code << " " << p.result.reason;
    EXPECT_TRUE(p.result.reason.empty()) << p.result.reason;
  }
  const at::Tensor expected = weighted_mean(ps);
  EXPECT_LT((delta - expected).abs().max().item<double>(), kTolerance);
  // Not the unweighted mean: the weights made it through the masks.
  at::Tensor plain = at::zeros_like(expected);
  for (const Party& p : ps) plain += p.update / 4.0;
  EXPECT_GT((delta - plain).abs().max().item<double>(), 100 * kTolerance);
}

// Five selected: one never sends its keys (the keys stage closes at the
// round deadline without it), one goes away after its masked input (its
// self mask is rebuilt from its neighbours' shares). The four inputs are
// in the mean; the ledger held only masked values while the round waited.
TEST(SecAggService, DropoutsAreSurvivedAndTheLedgerHoldsOnlyMaskedInputs) {
  test::TempDir dir;
  Fixture f(secagg_recipe(dir.path(), 5,
                          {"federated.sync.round_timeout_s=4",
                           "federated.secagg.stage_timeout_s=3"}));
  std::vector<Party> ps = parties(5, f.server.layout().numel());
  ps[1].role = Role::kSilent;
  ps[3].role = Role::kDropsAfterInput;
  // Each masked input is in the ledger from when it is durable until the
  // version that applied it commits: read every one as it appears.
  std::map<std::string, std::string> ledger;
  std::atomic<bool> done{false};
  testing::internal::CaptureStderr();  // the server's log (one write per line)
  std::thread spy([&] {
    while (!done && ledger.size() < 4) {
      for (const auto& name : list_files(dir.path() + "/updates")) {
        if (ledger.count(name) || name[0] == '.') continue;
        try {
          ledger[name] = read_file(dir.path() + "/updates/" + name);
        } catch (const IoError&) {
          // Applied and deleted meanwhile.
        }
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
  });
  const at::Tensor delta = run_round(f, ps);
  done = true;
  spy.join();
  const std::string log = testing::internal::GetCapturedStderr();
  // The log says what happened and holds no key, seed, share or payload:
  // nothing that looks like 20 bytes or more in hex or base64, or escaped
  // binary.
  EXPECT_NE(log.find("secure aggregation among 5 selected clients"), std::string::npos) << log;
  EXPECT_NE(log.find("unmasked the sum of 4 clients' updates"), std::string::npos) << log;
  EXPECT_FALSE(std::regex_search(log, std::regex("[0-9a-fA-F]{40}"))) << log;
  EXPECT_FALSE(std::regex_search(log, std::regex("[A-Za-z0-9+/]{40}"))) << log;
  EXPECT_FALSE(std::regex_search(log, std::regex("(\\\\x[0-9a-f]{2}){4}"))) << log;
  EXPECT_TRUE(ps[3].result.accepted) << ps[3].result.reason;
  EXPECT_LT((delta - weighted_mean(ps)).abs().max().item<double>(), kTolerance);
  ASSERT_EQ(ledger.size(), 4u);
  const int64_t n = f.server.layout().numel();
  for (const auto& [name, bytes] : ledger) {
    ASSERT_EQ(bytes.size(), static_cast<size_t>(n) * 4);
    std::vector<uint32_t> y(static_cast<size_t>(n));
    std::memcpy(y.data(), bytes.data(), bytes.size());
    // Every party's quantised weighted update against this file: a masked
    // input matches none of them (equal values: about 1 in 4 million).
    for (const Party& p : ps) {
      const std::vector<uint32_t> q =
          secagg::quantise(p.update * (static_cast<double>(p.samples) / 100), 8.0, 22);
      int64_t near = 0;
      for (int64_t i = 0; i < n; ++i) near += (y[i] - q[i] + 2u) <= 4u ? 1 : 0;
      EXPECT_LT(near, n / 1000) << p.id;
    }
  }
}

// The server stops while a round waits for its unmasking: the restarted
// server cannot unmask (the secrets died with it), so it discards the
// round's masked inputs and opens the round again.
TEST(SecAggService, ARestartAbandonsTheUnfinishedRound) {
  test::TempDir dir;
  const train::Recipe r =
      secagg_recipe(dir.path(), 3, {"federated.secagg.stage_timeout_s=60"});
  {
    Fixture f(r);
    std::vector<Party> ps = parties(3, f.server.layout().numel());
    for (Party& p : ps) p.role = Role::kDropsAfterInput;  // nobody reveals
    std::atomic<bool> stop{false};
    std::vector<std::thread> threads;
    for (Party& p : ps) {
      const std::string token = p.id == "edge-1" ? f.token : f.server.store().enroll(p.id);
      threads.emplace_back([&, token] { run_party(f, p, token, stop); });
    }
    for (auto& t : threads) t.join();
    for (const Party& p : ps) EXPECT_TRUE(p.result.accepted) << p.result.reason;
    EXPECT_EQ(f.server.store().pending_updates().size(), 3u);
  }
  const auto again = make_fed_server(r, train::builtin_registries());
  EXPECT_EQ(again->status().version, 1);
  EXPECT_TRUE(again->store().pending_updates().empty());
  EXPECT_TRUE(list_files(dir.path() + "/updates").empty());
}

// strata-fedsim with secure aggregation and central DP: the clients clip,
// the server noises the unmasked sum; every version records its epsilon.
TEST(SecAggService, ComposesWithCentralPrivacyInASimulation) {
  test::TempDir dir;
  const SimResult r = run_fedsim(
      secagg_recipe(dir.path(), 4,
                    {"federated.sim.clients=6", "federated.sim.partition=iid",
                     "federated.privacy.mode=central", "federated.privacy.noise_multiplier=0.5",
                     "federated.privacy.clip_norm=0.5"}),
      train::builtin_registries());
  EXPECT_EQ(r.versions, 2);
  EXPECT_GE(r.accepted, 6);  // 3 or 4 selected per round (a late client waits for the next)
  int versions = 0;
  for (const auto& line : test::read_lines(dir.path() + "/metrics.jsonl")) {
    const nlohmann::json j = parse_json_object(line, "metrics.jsonl");
    if (j["kind"] != "version") continue;
    ++versions;
    EXPECT_GT(j["epsilon"].get<double>(), 0) << line;
    EXPECT_FALSE(j.contains("not_applied")) << line;
  }
  EXPECT_EQ(versions, 2);
}

// What a hostile client sends on the wire is refused with a code and the
// reason, before it reaches the round.
TEST(SecAggService, MalformedCallsAreRefusedWithReasons) {
  test::TempDir dir;
  Fixture f(secagg_recipe(dir.path(), 4));
  const auto call = [&](const pb::SecAggRequest& req, const std::string& token) {
    grpc::ClientContext ctx;
    ctx.AddMetadata("authorization", "Bearer " + token);
    pb::SecAggReply reply;
    return f.stub->SecAgg(&ctx, req, &reply);
  };
  pb::SecAggRequest req;
  req.set_client_id("edge-1");
  req.set_round(1);
  expect_status(call(req, f.token), grpc::StatusCode::INVALID_ARGUMENT, "names no stage");
  req.mutable_keys()->set_c_pk(std::string(31, 'x'));
  req.mutable_keys()->set_s_pk(std::string(32, 'x'));
  expect_status(call(req, f.token), grpc::StatusCode::INVALID_ARGUMENT, "c_pk is 31 bytes, not 32");
  expect_status(call(req, "not-the-token"), grpc::StatusCode::UNAUTHENTICATED, "not enrolled");
  req.mutable_keys()->set_c_pk(std::string(32, 'x'));
  // No round has selected anyone yet.
  expect_status(call(req, f.token), grpc::StatusCode::FAILED_PRECONDITION,
                "is not the open secure aggregation round");
  pb::SecAggRequest reveal;
  reveal.set_client_id("edge-1");
  pb::SecAggRevealed* r = reveal.mutable_reveal()->add_shares();
  r->add_y(1);
  expect_status(call(reveal, f.token), grpc::StatusCode::INVALID_ARGUMENT,
                "a revealed share has 1 limbs, not 5");
  // SubmitUpdate is not how a secure aggregation server takes updates.
  const grpc::Status plain = f.submit(f.info(1), f.delta(0.01f), f.token);
  expect_status(plain, grpc::StatusCode::FAILED_PRECONDITION, "send the update masked");
}

TEST(SecAggService, WhatSecureAggregationHidesCannotBeAskedFor) {
  test::TempDir dir;
  const auto error = [&](std::vector<std::string> o) -> std::string {
    try {
      server_options(secagg_recipe(dir.path(), 10, std::move(o)));
    } catch (const ConfigError& e) {
      return e.what();
    }
    return "(no error)";
  };
  EXPECT_NE(error({"federated.mode=async"}).find("secure aggregation runs in sync rounds"),
            std::string::npos);
  EXPECT_NE(error({"federated.strategy=median"})
                .find("federated.strategy=median looks at each client's update"),
            std::string::npos);
  EXPECT_NE(error({"federated.strategy=krum"}).find("which secure aggregation hides"),
            std::string::npos);
  EXPECT_NE(error({"federated.server.norm_bound=1"}).find("norm_bound needs each update's norm"),
            std::string::npos);
  EXPECT_NE(error({"federated.privacy.mode=central", "federated.privacy.population=100",
                   "federated.privacy.adaptive_clip=true"})
                .find("adaptive clipping counts the updates"),
            std::string::npos);
  EXPECT_NE(error({"federated.secagg.threshold=20"}).find("threshold 20 must be in [2, 9]"),
            std::string::npos);
  EXPECT_NE(error({"federated.sync.clients_per_round=2000"}).find("can wrap around 2^32"),
            std::string::npos);
  EXPECT_EQ(error({}), "(no error)");
}

}  // namespace
}  // namespace strata::fed
