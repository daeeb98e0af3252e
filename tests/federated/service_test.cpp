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
#include "federated/learner.h"
#include "federated/clock.h"
#include "federated/partition.h"
#include "federated/server.h"
#include "federated/server_options.h"
#include "federated/service.h"
#include "federated/sim.h"
#include "federated/wire.h"
#include "strata_fed.grpc.pb.h"
#include "federated/fixture.h"
#include "test_util.h"
#include "trainer/checkpoint.h"
#include "trainer/edge_model.h"
#include "trainer/recipe.h"
#include "trainer/trainer.h"

namespace strata::fed {
namespace {

// Waits (up to 5 s) for version 2 and checks it holds version 1's parameters.
void expect_version_2_repeats_version_1(Fixture& f) {
  ASSERT_EQ(f.wait_version(2).version, 2);
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
  f.wait_version(2);
  auto i = f.info(1, 1);  // also based on version 1: stale by one
  i.set_client_id("edge-2");
  EXPECT_TRUE(f.submit(i, lower, t2).ok());
  ASSERT_EQ(f.wait_version(3).version, 3);
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
    // The held stream has its slot once the service admitted its head.
    const int64_t before = f.service->counts().uploads_admitted;
    auto h = std::make_unique<Held>();
    h->ctx.AddMetadata("authorization", "Bearer " + f.token);
    h->w = f.stub->SubmitUpdate(&h->ctx, &h->reply);
    pb::UpdateChunk head;
    *head.mutable_info() = f.info(seq++);
    EXPECT_TRUE(h->w->Write(head));
    f.wait_counts([&](const ServiceCounts& c) { return c.uploads_admitted > before; });
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
  const int64_t admitted = f.service->counts().uploads_admitted;
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
    // Release after the client was turned away twice more (or 10 s): two
    // more uploads admitted -- that is, refused busy at the ingest gate.
    f.wait_counts([&](const ServiceCounts& c) { return c.uploads_admitted >= admitted + 2; });
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
// client that checks in later at once, not at the round's deadline. The
// server's clock is driven by the test: the gathering second passes when
// the test says so, and the 60 s deadline never does.
TEST(FedService, ASyncRoundTakesClientsThatCheckInLate) {
  test::TempDir dir;
  const auto clock = std::make_shared<ManualClock>();
  Fixture f(small_recipe(dir.path(), {"federated.sync.clients_per_round=2",
                                      "federated.sync.over_selection=0",
                                      "federated.sync.round_timeout_s=60"}),
            clock);
  EdgeClient a(f.client_options("edge-1", f.token));
  EdgeClient b(f.client_options("edge-2", f.server.store().enroll("edge-2")));
  // edge-1 checks in alone and is selected once the gathering second ends.
  EXPECT_EQ(a.fetch(0, std::chrono::milliseconds(0)).version, 1);
  EXPECT_EQ(a.fetch(1, std::chrono::milliseconds(0)).round, 0);  // still gathering
  clock->advance(std::chrono::seconds(1));
  EXPECT_EQ(a.fetch(1, std::chrono::milliseconds(5000)).round, 1);
  // edge-2 checks in afterwards and is selected within its long poll.
  EXPECT_EQ(b.fetch(0, std::chrono::milliseconds(0)).version, 1);
  const auto t0 = std::chrono::steady_clock::now();
  EXPECT_EQ(b.fetch(1, std::chrono::milliseconds(5000)).round, 1);
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(3));
}

// A round that cannot fill (here: nobody checks in) closes at its deadline
// on the server's clock -- an hour that passes in no time -- after its
// extensions (counted in TriggerSyncRounds tests): the next version
// repeats the model, so later rounds are not blocked forever.
TEST(FedService, ARoundThatCannotFillClosesAtItsDeadline) {
  test::TempDir dir;
  const auto clock = std::make_shared<ManualClock>();
  Fixture f(small_recipe(dir.path(), {"federated.sync.clients_per_round=2",
                                      "federated.sync.round_timeout_s=3600",
                                      "federated.sync.max_round_extensions=0"}),
            clock);
  EXPECT_EQ(f.server.status().version, 1);
  clock->advance(std::chrono::hours(1));
  expect_version_2_repeats_version_1(f);
  EXPECT_NE(read_file(dir.path() + "/metrics.jsonl").find("\"round\":1,\"updates\":0"),
            std::string::npos);
}

// A strategy that can never aggregate the planned batch (trimmed_mean
// trimming one from each end of a buffer of one) is a recipe error at
// startup, before anything is written.
TEST(FedService, AStrategyThatCannotAggregateThePlannedBatchIsARecipeError) {
  test::TempDir dir;
  const train::Recipe r = small_recipe(dir.path() + "/run", {"federated.mode=async",
                                                             "federated.async.buffer_size=1",
                                                             "federated.strategy=trimmed_mean",
                                                             "federated.trim_fraction=0.3"});
  try {
    make_fed_server(r, train::builtin_registries());
    FAIL() << "a server that can never aggregate started";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("trimmed_mean: dropping 1 of 1 update(s) at each end "
                                         "leaves none, but 1 update(s) are planned"),
              std::string::npos) << e.what();
  }
  EXPECT_FALSE(path_exists(dir.path() + "/run/server.db"));
}

// A round that closes with fewer updates than the robust rule needs (one
// update; trimmed_mean of 0.3 trims one from each end) is declined by the
// strategy, not thrown: the version keeps the model, says why, and the
// server keeps serving.
TEST(FedService, ABatchTheStrategyDeclinesIsNotApplied) {
  test::TempDir dir;
  const auto clock = std::make_shared<ManualClock>();
  Fixture f(small_recipe(dir.path(), {"federated.sync.clients_per_round=3",
                                      "federated.sync.round_timeout_s=60",
                                      "federated.sync.max_round_extensions=0",
                                      "federated.strategy=trimmed_mean",
                                      "federated.trim_fraction=0.3"}),
            clock);
  EdgeClient c(f.client_options("edge-1", f.token));
  EXPECT_EQ(c.fetch(0, std::chrono::milliseconds(0)).version, 1);  // checks in
  clock->advance(std::chrono::seconds(1));                        // gathering ends
  ASSERT_EQ(c.fetch(1, std::chrono::milliseconds(5000)).round, 1);
  auto i = f.info(1);
  i.set_round(1);
  EXPECT_TRUE(f.submit(i, f.delta(0.01f), f.token).ok());
  clock->advance(std::chrono::seconds(60));  // the round closes with 1 of 3
  expect_version_2_repeats_version_1(f);
  EXPECT_NE(read_file(dir.path() + "/metrics.jsonl")
                .find("\"not_applied\":\"trimmed_mean: dropping 1 of 1 update(s) at each end"),
            std::string::npos) << read_file(dir.path() + "/metrics.jsonl");
  EXPECT_EQ(c.fetch(1, std::chrono::milliseconds(0)).version, 2);  // still serving
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

// A server that publishes (federated.server.publish): a client that only
// infers fetches each version as a strata-int8 package, which the edge
// runtime runs with the fp32 global model's predictions; other formats,
// and packages from a server that does not publish, are refused.
TEST(FedService, InferOnlyClientsFetchEachVersionAsAStrataInt8Package) {
  test::TempDir dir;
  const train::Recipe r = small_recipe(dir.path(), {"federated.mode=async",
                                                    "federated.async.buffer_size=1",
                                                    "federated.server.publish=int8_static"});
  Fixture f(r);
  EdgeClient c(f.client_options("edge-1", f.token));
  int64_t version = 0;
  const std::string path = dir.path() + "/global.strata-int8";
  strata::atomic_write_file(path, c.fetch_package(&version));
  EXPECT_EQ(version, 1);
  train::EdgeModel package(path);
  EXPECT_EQ(package.manifest()["format"], "strata-int8");
  EXPECT_EQ(package.manifest()["int8"]["scheme"], "static");
  EXPECT_EQ(package.input_shape(), (std::vector<int64_t>{1, 28, 28}));

  // Version 2, after an update: the package follows, and predicts what the
  // fp32 model of that version does.
  UpdateToSend u;
  u.base_version = 1;
  u.num_samples = 5;
  const FetchedModel m = c.fetch(0, std::chrono::milliseconds(0));
  for (const auto& [name, t] : m.tensors) u.tensors.emplace_back(name, at::randn(t.sizes()) * 0.05);
  ASSERT_TRUE(c.submit(u).accepted);
  f.wait_version(2);
  strata::atomic_write_file(path, c.fetch_package(&version));
  EXPECT_EQ(version, 2);
  train::EdgeModel v2(path);
  const train::Registries reg = train::builtin_registries();
  const EvalData eval = load_eval_data(r, reg);
  auto fp32 = build_server_model(r, reg, eval.shape);
  const FetchedModel m2 = c.fetch(0, std::chrono::milliseconds(0));
  ASSERT_EQ(m2.version, 2);
  {
    torch::NoGradGuard no_grad;
    auto params = fp32->named_parameters();
    auto buffers = fp32->named_buffers();
    for (const auto& [name, t] : m2.tensors) {
      (params.contains(name) ? params[name] : buffers[name]).copy_(t);
    }
  }
  fp32->eval();
  torch::NoGradGuard no_grad;
  const at::Tensor want = fp32->forward(eval.inputs).argmax(1);
  const at::Tensor got = v2.forward(eval.inputs).argmax(1);
  EXPECT_GE(want.eq(got).to(at::kFloat).mean().item<double>(), 0.95);

  // Refusals.
  grpc::ClientContext ctx;
  ctx.AddMetadata("authorization", "Bearer " + f.token);
  pb::GetModelRequest req;
  req.set_client_id("edge-1");
  req.set_format("tflite");
  auto reader = f.stub->GetModel(&ctx, req);
  pb::ModelChunk chunk;
  while (reader->Read(&chunk)) {
  }
  expect_status(reader->Finish(), grpc::StatusCode::INVALID_ARGUMENT, "is not one of fp32, strata-int8");
  test::TempDir plain_dir;
  Fixture plain(small_recipe(plain_dir.path()));
  EdgeClientOptions o = plain.client_options("edge-1", plain.token);
  o.max_retries = 0;
  EdgeClient none(o);
  try {
    none.fetch_package(&version);
    FAIL();
  } catch (const CommError& e) {
    EXPECT_NE(std::string(e.what()).find("does not publish"), std::string::npos) << e.what();
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
    check_transport_security(open.federated.server);
    FAIL();
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("is not a loopback address, so the server must use TLS"),
              std::string::npos) << e.what();
  }
}

TEST(Partition, IidAndDirichletCoverEverySampleOnce) {
  std::vector<int64_t> labels(3000);
  for (size_t i = 0; i < labels.size(); ++i) labels[i] = static_cast<int64_t>(i % 10);
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

// A GPT edge model on the text data, end to end: the clients' shards come
// from the text dataset through the data seam, they train the registered
// GPT through TrainStep (AdamW), and the server evaluates every version on
// the validation windows. Uniform bytes score ln 256 = 5.55 nats a token.
TEST(FedSim, AGptEdgeModelLearnsTheTextCorpus) {
  test::TempDir dir;
  const train::Recipe r = small_recipe(dir.path(), {
      "model.name=gpt", "model.n_layer=1", "model.n_head=2", "model.d_model=32",
      "model.seq_len=32", "data.name=text", "data.text=/usr/share/games/fortunes",
      "data.train_subset=40000", "data.test_subset=128", "data.batch_size=16",
      "optimizer.name=adamw", "optimizer.lr=3e-3", "federated.sim.clients=4",
      "federated.sim.partition=iid", "federated.sync.rounds=3",
      "federated.sync.clients_per_round=2", "federated.sync.over_selection=0"});
  const SimResult s = run_fedsim(r, train::builtin_registries());
  EXPECT_EQ(s.versions, 3);
  std::vector<double> losses;
  for (const auto& line : test::read_lines(dir.path() + "/metrics.jsonl")) {
    if (line.find("\"kind\":\"version\"") == std::string::npos) continue;
    const auto at = line.find("\"loss\":");
    ASSERT_NE(at, std::string::npos) << line;
    losses.push_back(std::stod(line.substr(at + 7)));
  }
  ASSERT_EQ(losses.size(), 3u);
  EXPECT_LT(losses.back(), losses.front());
  EXPECT_LT(losses.back(), 4.4);  // well below uniform bytes
  // A language-modelling dataset has no classes to skew.
  try {
    run_fedsim(small_recipe(dir.path() + "/skew", {"model.name=gpt", "data.name=text",
                                                   "data.text=/usr/share/games/fortunes",
                                                   "federated.sim.partition=dirichlet"}),
               train::builtin_registries());
    FAIL() << "a Dirichlet split of a text corpus ran";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("use federated.sim.partition=iid"), std::string::npos)
        << e.what();
  }
}

// Quantization-aware edge clients: the learner trains its updates through
// the QAT graph (the update differs from a float client's from the same
// model and data, and its observers carry over to the next update), and a
// federation of them learns.
TEST(FedSim, QuantizationAwareClientsTrainThroughFakeQuantization) {
  test::TempDir dir;
  const std::vector<std::string> cnn{"model.name=cnn", "model.channels=[8,16]", "model.fc=32"};
  std::vector<std::string> with_qat = cnn;
  with_qat.insert(with_qat.end(), {"train.qat.enabled=true", "train.qat.start_step=0"});
  const train::Recipe plain_r = small_recipe(dir.path() + "/plain", cnn);
  const train::Recipe qat_r = small_recipe(dir.path() + "/qat", with_qat);
  const train::Registries reg = train::builtin_registries();
  const train::LoadedData data = reg.datasets.get("fashion_mnist", "", "").load(qat_r, 0, 1);
  std::vector<int64_t> idx(256);
  std::iota(idx.begin(), idx.end(), 0);
  const LocalData local = local_data(data, idx);
  auto build = [&](const train::Recipe& r) {
    torch::manual_seed(0);
    return reg.models.get("cnn", "", "").build(r.model, data.shape, train::ModelPart{});
  };
  Learner plain(plain_r, reg, build(plain_r));
  Learner qat(qat_r, reg, build(qat_r));
  const at::Tensor global = plain.layout().flatten(plain.model());
  ASSERT_TRUE(at::equal(global, qat.layout().flatten(qat.model())));
  const LocalResult a = plain.train_epochs(global, local, 1, 1, 7, 0.0);
  const LocalResult b = qat.train_epochs(global, local, 1, 1, 7, 0.0);
  EXPECT_EQ(a.num_samples, b.num_samples);
  EXPECT_FALSE(at::allclose(a.delta, b.delta)) << "the QAT client trained as a float one";
  // Close, though: the same steps through int8-rounded weights and activations.
  EXPECT_LT((a.delta - b.delta).norm().item<double>(), 0.5 * a.delta.norm().item<double>());
  const LocalResult b2 = qat.train_epochs(global, local, 1, 1, 7, 0.0);
  EXPECT_FALSE(at::equal(b.delta, b2.delta)) << "the observers did not carry over";

  std::vector<std::string> fed = with_qat;
  fed.insert(fed.end(), {"federated.sim.clients=4", "federated.sim.partition=iid",
                         "federated.sync.rounds=3", "federated.sync.clients_per_round=2",
                         "federated.sync.over_selection=0"});
  const train::Recipe sim = small_recipe(dir.path() + "/sim", fed);
  const SimResult s = run_fedsim(sim, reg);
  EXPECT_EQ(s.versions, 3);
  EXPECT_GT(s.test_accuracy, 0.5);  // chance: 0.1
}

// train.init: the federation's first version is a trained model's weights.
TEST(FedServerModel, TrainInitStartsTheFederationFromAModelPt) {
  test::TempDir dir;
  const train::Registries reg = train::builtin_registries();
  const train::InputShape shape;
  const auto seeded = build_server_model(small_recipe(dir.path()), reg, shape);
  {
    torch::NoGradGuard no_grad;
    for (auto& p : seeded->parameters()) p.add_(1.0);
  }
  const std::string path = dir.path() + "/model.pt";
  train::save_state_dict(path, *seeded);
  const auto init = build_server_model(small_recipe(dir.path(), {"train.init=" + path}), reg, shape);
  auto a = seeded->named_parameters();
  for (const auto& p : init->named_parameters()) EXPECT_TRUE(at::equal(p.value(), a[p.key()]));
  EXPECT_THROW(build_server_model(small_recipe(dir.path(), {"train.init=" + path, "model.name=cnn"}),
                                  reg, shape),
               ConfigError);
  EXPECT_THROW(build_server_model(small_recipe(dir.path(), {"train.init=" + dir.path() + "/no.pt"}),
                                  reg, shape),
               ConfigError);
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
