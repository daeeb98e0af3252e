// The federated server behind real gRPC on loopback: every rejection path
// (as a raw protocol client would see it, through the generated stub), TLS
// on and off, partitions, and short end-to-end simulations in both modes.
#include <gtest/gtest.h>
#include <grpcpp/grpcpp.h>

#include <numeric>
#include <set>
#include <thread>

#include "core/error.h"
#include "core/fs.h"
#include "federated/client.h"
#include "federated/partition.h"
#include "federated/server.h"
#include "federated/service.h"
#include "federated/sim.h"
#include "federated/wire.h"
#include "strata_fed.grpc.pb.h"
#include "federated/fixture.h"
#include "test_util.h"
#include "trainer/recipe.h"
#include "trainer/trainer.h"

namespace strata::fed {
namespace {

// Waits (up to 5 s) for version 2 and checks it holds version 1's parameters.
void expect_version_2_repeats_version_1(Fixture& f) {
  for (int i = 0; i < 200 && f.server.status().version < 2; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(25));
  }
  ASSERT_EQ(f.server.status().version, 2);
  const auto v1 = f.server.store().load_version(1);
  const auto v2 = f.server.store().load_version(2);
  for (size_t i = 0; i < v1.size(); ++i) EXPECT_TRUE(at::equal(v1[i].second, v2[i].second));
}

TEST(FedService, EveryRejectionPathHasItsCodeAndReason) {
  test::TempDir dir;
  Fixture f(small_recipe(dir.path(), {"federated.mode=async", "federated.async.buffer_size=100",
                                      "federated.async.max_staleness=3",
                                      "federated.server.norm_bound=1000",
                                      "federated.server.clip=false"}));
  // Accepted, then the same sequence again is a replay.
  EXPECT_TRUE(f.submit(f.info(5), f.delta(0.001f), f.token).ok());
  expect_status(f.submit(f.info(5), f.delta(0.001f), f.token), grpc::StatusCode::ALREADY_EXISTS,
                "is not above its last accepted 5");
  expect_status(f.submit(f.info(6), f.delta(0.001f), "wrong"), grpc::StatusCode::UNAUTHENTICATED,
                "or its token is wrong");
  expect_status(f.submit(f.info(6, 7), f.delta(0.001f), f.token),
                grpc::StatusCode::FAILED_PRECONDITION, "newer than the server's 1");
  auto few = f.info(6);
  few.set_num_samples(0);
  expect_status(f.submit(few, f.delta(0.001f), f.token), grpc::StatusCode::INVALID_ARGUMENT,
                "num_samples 0 is outside");
  auto shapes = f.delta(0.001f);
  shapes[0] = encode(shapes[0].name, at::zeros({3}), {});
  expect_status(f.submit(f.info(6), shapes, f.token), grpc::StatusCode::INVALID_ARGUMENT,
                "has shape [3]; the model's is [256, 784]");
  auto nan = f.delta(0.001f);
  nan[1] = encode(nan[1].name, at::full({256}, NAN), {});
  expect_status(f.submit(f.info(6), nan, f.token), grpc::StatusCode::INVALID_ARGUMENT,
                "non-finite values");
  expect_status(f.submit(f.info(6), f.delta(10.0f), f.token), grpc::StatusCode::INVALID_ARGUMENT,
                "exceeds the bound 1000");
  pb::UpdateChunk stray;
  stray.set_data("xx");
  expect_status(f.submit(f.info(6), {}, f.token, {stray}), grpc::StatusCode::INVALID_ARGUMENT,
                "data before any tensor header");
  auto missing = f.delta(0.001f);
  missing.pop_back();
  expect_status(f.submit(f.info(6), missing, f.token), grpc::StatusCode::INVALID_ARGUMENT,
                "announced 6 tensors, sent 5");
  // The server kept serving, counted each reason, and still accepts.
  EXPECT_TRUE(f.submit(f.info(6), f.delta(0.001f), f.token).ok());
  const ServerStatus s = f.server.status();
  EXPECT_EQ(s.accepted, 2);
  EXPECT_EQ(s.rejected, 9);
  for (const char* key : {"replay", "auth", "future_version", "num_samples", "malformed",
                          "non_finite", "norm"}) {
    EXPECT_GE(s.rejected_by_reason.count(key), 1u) << key;
  }
  EXPECT_EQ(f.server.store().pending_updates().size(), 2u);
}

TEST(FedService, ANonFiniteAggregateIsNotApplied) {
  test::TempDir dir;
  Fixture f(small_recipe(dir.path(), {"federated.mode=async", "federated.async.buffer_size=2",
                                      "federated.server_lr=2"}));
  // Finite updates whose aggregate, x server_lr 2, overflows float32.
  for (int seq : {1, 2}) {
    const grpc::Status st = f.submit(f.info(seq), f.delta(3e38f), f.token);
    EXPECT_TRUE(st.ok()) << st.error_message();
  }
  expect_version_2_repeats_version_1(f);
  EXPECT_NE(read_file(dir.path() + "/metrics.jsonl").find("\"non_finite\":true"), std::string::npos);
}

// A stale update's BatchNorm statistics are re-based on the current
// version (Note [Statistics of stale updates]): two clients that both
// lowered the running variances from 1 to 0.1 starting at version 1 leave
// them at 0.1, not at 1 - 0.9 - 0.9 = -0.8 (a negative variance: NaN test
// loss, seen with small async buffers).
TEST(FedService, StaleUpdatesKeepBatchNormStatisticsValid) {
  test::TempDir dir;
  Fixture f(small_recipe(dir.path(), {"model.name=cnn", "model.channels=[4]", "model.fc=8",
                                      "federated.mode=async", "federated.async.buffer_size=1",
                                      "federated.async.staleness_exponent=0"}));
  std::vector<EncodedTensor> lower;
  for (const auto& s : f.server.layout().slots()) {
    const bool var = s.name.size() > 11 && s.name.substr(s.name.size() - 11) == "running_var";
    lower.push_back(encode(s.name, at::full(s.shape, var ? -0.9f : 0.0f), {}));
  }
  const std::string t2 = f.server.store().enroll("edge-2");
  EXPECT_TRUE(f.submit(f.info(1, 1), lower, f.token).ok());
  for (int i = 0; i < 200 && f.server.status().version < 2; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(25));
  }
  auto i = f.info(1, 1);  // also based on version 1: stale by one
  i.set_client_id("edge-2");
  EXPECT_TRUE(f.submit(i, lower, t2).ok());
  for (int k = 0; k < 200 && f.server.status().version < 3; ++k) {
    std::this_thread::sleep_for(std::chrono::milliseconds(25));
  }
  ASSERT_EQ(f.server.status().version, 3);
  int checked = 0;
  for (const auto& [name, t] : f.server.store().load_version(3)) {
    if (name.find("running_var") == std::string::npos) continue;
    EXPECT_TRUE(at::allclose(t, at::full_like(t, 0.1f), 1e-5, 1e-6)) << name << " " << t;
    ++checked;
  }
  EXPECT_EQ(checked, 1);
}

TEST(FedService, OversizedUpdatesAreRefusedBeforeTheyAreBuffered) {
  test::TempDir dir;
  Fixture f(small_recipe(dir.path(), {"model.name=cnn", "federated.server.max_message_mb=1"}));
  expect_status(f.submit(f.info(1), f.delta(0.0f), f.token), grpc::StatusCode::RESOURCE_EXHAUSTED,
                "exceeds the server's limit of 1 MiB");
}

// With one update received at a time and nobody allowed to wait, a second
// sender is turned away at once (UNAVAILABLE, busy, with a retry hint)
// before its tensors are read; an EdgeClient retries through busy replies
// and gets in once the slot is free.
TEST(FedService, ABusyServerTurnsSendersAwayAndClientsRetry) {
  test::TempDir dir;
  Fixture f(small_recipe(dir.path(), {"federated.mode=async", "federated.async.buffer_size=100",
                                      "federated.server.max_inflight_updates=1",
                                      "federated.server.max_waiting_updates=0",
                                      // One client sends them all: the per-client
                                      // limit is tested in hostile_test.
                                      "federated.server.max_uploads_per_client=100"}));
  // Hold the only slot: a stream that sent its info and nothing more (the
  // server takes the slot once it has read that info).
  struct Held {
    grpc::ClientContext ctx;
    pb::SubmitReply reply;
    std::unique_ptr<grpc::ClientWriter<pb::UpdateChunk>> w;
  };
  int64_t seq = 1;
  const auto hold = [&] {
    auto h = std::make_unique<Held>();
    h->ctx.AddMetadata("authorization", "Bearer " + f.token);
    h->w = f.stub->SubmitUpdate(&h->ctx, &h->reply);
    pb::UpdateChunk head;
    *head.mutable_info() = f.info(seq++);
    EXPECT_TRUE(h->w->Write(head));
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    return h;
  };
  std::unique_ptr<Held> held = hold();
  grpc::Status busy;
  for (int i = 0; i < 20; ++i) {
    grpc::ClientContext ctx;
    ctx.AddMetadata("authorization", "Bearer " + f.token);
    pb::SubmitReply reply;
    auto w = f.stub->SubmitUpdate(&ctx, &reply);
    pb::UpdateChunk h;
    *h.mutable_info() = f.info(seq++);
    w->Write(h);
    for (const auto& t : f.delta(0.001f)) write_encoded<pb::UpdateChunk>(t, w.get());
    w->WritesDone();
    busy = w->Finish();
    if (busy.error_code() == grpc::StatusCode::UNAVAILABLE) {
      const auto& trailer = ctx.GetServerTrailingMetadata();
      ASSERT_EQ(trailer.count(kRetryAfterKey), 1u);
      EXPECT_EQ(std::string(trailer.find(kRetryAfterKey)->second.data(),
                            trailer.find(kRetryAfterKey)->second.size()), "100");
      break;
    }
    // Accepted: on a loaded machine this sender got the slot first and the
    // held stream was the one turned away. Hold again.
    ASSERT_TRUE(busy.ok()) << busy.error_message();
    held->w->WritesDone();
    held->w->Finish();
    held = hold();
  }
  const int64_t busy_before = f.server.status().rejected_by_reason.at("busy");
  expect_status(busy, grpc::StatusCode::UNAVAILABLE, "the server is busy: 1 updates are being received");
  // An EdgeClient keeps retrying (max_retries 0 does not stop it: busy is
  // flow control) and gets in when the held stream ends.
  EdgeClientOptions o;
  o.address = f.address;
  o.client_id = "edge-1";
  o.token = f.token;
  o.max_retries = 0;
  o.first_backoff = std::chrono::milliseconds(10);
  EdgeClient c(o);
  std::thread release([&] {
    // Release after the client was turned away twice more (or 10 s).
    for (int i = 0; i < 1000 && f.server.status().rejected_by_reason.at("busy") < busy_before + 2;
         ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    held->w->WritesDone();
    held->w->Finish();  // refused: it announced tensors it never sent
  });
  UpdateToSend u;
  u.base_version = 1;
  u.num_samples = 5;
  for (const auto& [name, t] : f.server.layout().unflatten(at::zeros({f.server.layout().numel()}))) {
    u.tensors.emplace_back(name, t);
  }
  const SubmitResult r = c.submit(u);
  release.join();
  EXPECT_TRUE(r.accepted) << r.code << " " << r.reason;
  EXPECT_GE(f.server.status().rejected_by_reason.at("busy"), busy_before + 2);
}

TEST(FedService, SyncRoundsRefuseClientsThatWereNotSelected) {
  test::TempDir dir;
  Fixture f(small_recipe(dir.path(), {"federated.sync.clients_per_round=1"}));
  auto i = f.info(1);
  i.set_round(1);
  expect_status(f.submit(i, f.delta(0.0f), f.token), grpc::StatusCode::FAILED_PRECONDITION,
                "is not selected for round 1");
}

// A round that opened with fewer clients checked in than it needs takes a
// client that checks in later at once, not at the round's deadline.
TEST(FedService, ASyncRoundTakesClientsThatCheckInLate) {
  test::TempDir dir;
  Fixture f(small_recipe(dir.path(), {"federated.sync.clients_per_round=2",
                                      "federated.sync.over_selection=0",
                                      "federated.sync.round_timeout_s=60"}));
  EdgeClientOptions o;
  o.address = f.address;
  o.client_id = "edge-1";
  o.token = f.token;
  EdgeClient a(o);
  o.client_id = "edge-2";
  o.token = f.server.store().enroll("edge-2");
  EdgeClient b(o);
  // edge-1 checks in alone and is selected once the gathering second ends.
  EXPECT_EQ(a.fetch(0, std::chrono::milliseconds(0)).version, 1);
  EXPECT_EQ(a.fetch(1, std::chrono::milliseconds(5000)).round, 1);
  // edge-2 checks in afterwards and is selected within its long poll.
  EXPECT_EQ(b.fetch(0, std::chrono::milliseconds(0)).version, 1);
  const auto t0 = std::chrono::steady_clock::now();
  EXPECT_EQ(b.fetch(1, std::chrono::milliseconds(5000)).round, 1);
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(3));
}

// A round that cannot fill (here: nobody checks in) is extended
// max_round_extensions times and then closes without updates: the next
// version repeats the model, so later rounds are not blocked forever.
TEST(FedService, ARoundThatCannotFillClosesAfterItsExtensions) {
  test::TempDir dir;
  Fixture f(small_recipe(dir.path(), {"federated.sync.clients_per_round=2",
                                      "federated.sync.round_timeout_s=0.2",
                                      "federated.sync.max_round_extensions=2"}));
  const auto t0 = std::chrono::steady_clock::now();
  expect_version_2_repeats_version_1(f);
  EXPECT_GE(std::chrono::steady_clock::now() - t0, std::chrono::milliseconds(550));  // 3 deadlines
  EXPECT_NE(read_file(dir.path() + "/metrics.jsonl").find("\"round\":1,\"updates\":0"),
            std::string::npos);
}

// A robust rule that cannot aggregate what a closing round holds (one
// update, trimmed_mean trimming at least one from each end) does not stop
// the server: the version keeps the model and says why.
TEST(FedService, ABatchTheStrategyCannotAggregateIsNotApplied) {
  test::TempDir dir;
  Fixture f(small_recipe(dir.path(), {"federated.mode=async", "federated.async.buffer_size=1",
                                      "federated.strategy=trimmed_mean",
                                      "federated.trim_fraction=0.3"}));
  EXPECT_TRUE(f.submit(f.info(1), f.delta(0.01f), f.token).ok());
  expect_version_2_repeats_version_1(f);
  EXPECT_NE(read_file(dir.path() + "/metrics.jsonl").find("\"not_applied\":\"trimmed_mean: dropping 1 of 1"),
            std::string::npos);
  EXPECT_TRUE(f.submit(f.info(2), f.delta(0.01f), f.token).ok());  // still serving
}

TEST(FedService, EdgeClientFetchesAndSubmitsWithEncodings) {
  test::TempDir dir;
  Fixture f(small_recipe(dir.path(), {"federated.mode=async", "federated.async.buffer_size=100"}));
  EdgeClientOptions o;
  o.address = f.address;
  o.client_id = "edge-1";
  o.token = f.token;
  EdgeClient c(o);
  const FetchedModel m = c.fetch(0, std::chrono::milliseconds(0));
  EXPECT_EQ(m.version, 1);
  EXPECT_TRUE(m.changed);
  ASSERT_EQ(m.tensors.size(), f.server.layout().slots().size());
  EXPECT_EQ(m.tensors[0].first, "net.0.weight");
  EXPECT_FALSE(c.fetch(1, std::chrono::milliseconds(0)).changed);  // not modified
  for (const char* enc : {"fp32", "fp16", "int8", "topk"}) {
    UpdateToSend u;
    u.base_version = 1;
    u.num_samples = 5;
    for (const auto& [name, t] : m.tensors) u.tensors.emplace_back(name, at::randn(t.sizes()) * 0.01);
    u.encoding = {parse_encoding(enc), 0.05};
    const SubmitResult r = c.submit(u);
    EXPECT_TRUE(r.accepted) << enc << ": " << r.code << " " << r.reason;
  }
  EXPECT_NE(c.status().find("accepted 4"), std::string::npos);
  o.token = "bad";
  o.max_retries = 0;
  EdgeClient bad(o);
  try {
    bad.fetch(0, std::chrono::milliseconds(0));
    FAIL();
  } catch (const CommError& e) {
    EXPECT_NE(std::string(e.what()).find("UNAUTHENTICATED"), std::string::npos) << e.what();
  }
}

TEST(FedService, TlsOnAndOff) {
  test::TempDir dir;
  const std::string cert = dir.path() + "/cert.pem", key = dir.path() + "/key.pem";
  const auto gen = test::run_command(
      "openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=localhost -addext "
      "subjectAltName=DNS:localhost,IP:127.0.0.1 -keyout " + key + " -out " + cert);
  ASSERT_EQ(gen.exit_code, 0) << gen.output;
  Fixture f(small_recipe(dir.path() + "/run", {"federated.server.tls_cert=" + cert,
                                               "federated.server.tls_key=" + key}));
  EdgeClientOptions o;
  o.address = "localhost:" + std::to_string(f.service->port());
  o.client_id = "edge-1";
  o.token = f.token;
  o.tls_ca = cert;
  EXPECT_EQ(EdgeClient(o).fetch(0, std::chrono::milliseconds(0)).version, 1);
  // A plaintext client cannot talk to a TLS server.
  o.tls_ca = "";
  o.max_retries = 0;
  EXPECT_THROW(EdgeClient(o).fetch(0, std::chrono::milliseconds(0)), CommError);
  // Off loopback, plaintext is a configuration error.
  train::Recipe open = small_recipe(dir.path() + "/open", {"federated.server.address=0.0.0.0:0"});
  try {
    check_transport_security(open.federated);
    FAIL();
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("is not a loopback address, so the server must use TLS"),
              std::string::npos) << e.what();
  }
}

TEST(Partition, IidAndDirichletCoverEverySampleOnce) {
  std::vector<uint8_t> labels(3000);
  for (size_t i = 0; i < labels.size(); ++i) labels[i] = static_cast<uint8_t>(i % 10);
  for (const auto& parts : {iid_partition(3000, 30, 1), dirichlet_partition(labels, 10, 30, 0.5, 1)}) {
    std::set<int64_t> seen;
    for (const auto& p : parts) {
      EXPECT_GE(p.size(), 10u);
      for (int64_t i : p) EXPECT_TRUE(seen.insert(i).second) << "sample " << i << " twice";
    }
    EXPECT_EQ(seen.size(), 3000u);
  }
  // Skew: with alpha 0.1 a client's largest class dominates, with 100 not.
  auto top_share = [&](double alpha) {
    double sum = 0;
    const auto parts = dirichlet_partition(labels, 10, 20, alpha, 2);
    for (const auto& p : parts) {
      std::vector<int> count(10);
      for (int64_t i : p) ++count[labels[i]];
      sum += *std::max_element(count.begin(), count.end()) / static_cast<double>(p.size());
    }
    return sum / parts.size();
  };
  EXPECT_GT(top_share(0.1), 0.5);
  EXPECT_LT(top_share(100.0), 0.2);
  EXPECT_THROW(dirichlet_partition(labels, 10, 301, 0.5, 1), ConfigError);
}

TEST(FedSim, SyncAndAsyncRunsLearnAndRecordEveryVersion) {
  for (const std::string mode : {"sync", "async"}) {
    test::TempDir dir;
    const train::Recipe r = small_recipe(dir.path(), {
        "federated.mode=" + mode, "federated.sim.clients=6", "federated.sim.partition=iid",
        "federated.sync.rounds=3", "federated.sync.clients_per_round=3",
        "federated.async.versions=4", "federated.async.buffer_size=3",
        "federated.async.samples_per_update=200", "optimizer.momentum=0"});
    const SimResult s = run_fedsim(r, train::builtin_registries());
    EXPECT_EQ(s.versions, mode == "sync" ? 3 : 4) << mode;
    EXPECT_GT(s.test_accuracy, 0.4) << mode;  // chance: 0.1
    int versions = 0;
    for (const auto& line : test::read_lines(dir.path() + "/metrics.jsonl")) {
      versions += line.find("\"kind\":\"version\"") != std::string::npos;
    }
    EXPECT_EQ(versions, mode == "sync" ? 3 : 4) << mode;
    EXPECT_TRUE(path_exists(dir.path() + (mode == "sync" ? "/versions/v4.pt" : "/versions/v5.pt")));
  }
}

}  // namespace
}  // namespace strata::fed
