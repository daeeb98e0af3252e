// The federated server against hostile clients, over real gRPC on
// loopback: every request below is one an enrolled or unknown client can
// craft with the generated stub or raw bytes. Each test asserts the code
// the attacker gets, that honest clients are still served, and that no
// honest acknowledged update is lost or wasted.
#include <fcntl.h>
#include <grpcpp/generic/generic_stub.h>
#include <gtest/gtest.h>

#include <regex>
#include <unistd.h>

#include <chrono>
#include <fstream>
#include <limits>
#include <set>
#include <thread>

#include "core/error.h"
#include "core/fs.h"
#include "core/strings.h"
#include "federated/client.h"
#include "federated/fixture.h"
#include "federated/server_store.h"
#include "test_util.h"

namespace strata::fed {
namespace {

using std::chrono::milliseconds;
using Clock = std::chrono::steady_clock;
constexpr uint64_t kTwo63 = uint64_t{1} << 63;

// Redirects this process's stderr (the log) into a file until stop().
class StderrCapture {
 public:
  explicit StderrCapture(std::string path) : path_(std::move(path)) {
    std::fflush(stderr);
    saved_ = ::dup(2);
    const int fd = ::open(path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
    ::dup2(fd, 2);
    ::close(fd);
  }
  ~StderrCapture() { stop(); }
  std::string stop() {
    if (saved_ >= 0) {
      std::fflush(stderr);
      ::dup2(saved_, 2);
      ::close(saved_);
      saved_ = -1;
    }
    return read_file(path_);
  }

 private:
  std::string path_;
  int saved_ = -1;
};

// An upload the test drives chunk by chunk (a hostile client stalls it).
struct RawUpload {
  RawUpload(Fixture& f, const std::string& token) {
    if (!token.empty()) ctx.AddMetadata("authorization", "Bearer " + token);
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
    w = f.stub->SubmitUpdate(&ctx, &reply);
  }
  bool send(const pb::UpdateChunk& c) { return w->Write(c); }
  bool info(const pb::UpdateInfo& i) {
    pb::UpdateChunk c;
    *c.mutable_info() = i;
    return send(c);
  }
  bool header(const pb::TensorHeader& h) {
    pb::UpdateChunk c;
    *c.mutable_tensor() = h;
    return send(c);
  }
  bool data(const std::string& bytes) {
    pb::UpdateChunk c;
    c.set_data(bytes);
    return send(c);
  }
  grpc::Status finish() {
    w->WritesDone();
    return w->Finish();
  }
  // The status the server ended the call with, without half-closing.
  grpc::Status status() { return w->Finish(); }

  grpc::ClientContext ctx;
  pb::SubmitReply reply;
  std::unique_ptr<grpc::ClientWriter<pb::UpdateChunk>> w;
};

// An upload of `client` that sends its info, the first tensor's header and
// 4 KiB of its payload, then stalls.
std::unique_ptr<RawUpload> stalled_upload(Fixture& f, const std::string& client,
                                          const std::string& token, int64_t sequence) {
  auto u = std::make_unique<RawUpload>(f, token);
  auto i = f.info(sequence);
  i.set_client_id(client);
  u->info(i);
  pb::TensorHeader first;
  to_proto(f.delta(0.0f)[0], &first);
  u->header(first);
  u->data(std::string(4096, '\0'));
  return u;
}

// Long polls on one completion queue (no client threads, so the process's
// thread count is the server's).
class AsyncPolls {
 public:
  AsyncPolls(pb::Federation::Stub& stub, const std::vector<std::pair<std::string, std::string>>& who,
             uint64_t have_version, uint32_t wait_ms) {
    for (const auto& [client, token] : who) {
      auto c = std::make_unique<Call>();
      c->ctx.AddMetadata("authorization", "Bearer " + token);
      c->ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(90));
      c->req.set_client_id(client);
      c->req.set_have_version(have_version);
      c->req.set_wait_ms(wait_ms);
      c->r = stub.PrepareAsyncGetModel(&c->ctx, c->req, &cq_);
      c->r->StartCall(tag(calls_.size(), kStart));
      calls_.push_back(std::move(c));
    }
  }
  ~AsyncPolls() {
    cancel_all();
    wait_all(std::chrono::seconds(10));
    cq_.Shutdown();
    void* t;
    bool ok;
    while (cq_.Next(&t, &ok)) {
    }
  }
  void cancel_all() {
    for (auto& c : calls_) c->ctx.TryCancel();
  }
  // Drives the calls until every one finished or `limit` passed; the
  // number that finished.
  size_t wait_all(std::chrono::milliseconds limit) {
    const auto until = std::chrono::system_clock::now() + limit;
    while (finished_ < calls_.size()) {
      void* t;
      bool ok;
      if (cq_.AsyncNext(&t, &ok, until) != grpc::CompletionQueue::GOT_EVENT) break;
      const size_t i = reinterpret_cast<uintptr_t>(t) / 4;
      const int op = static_cast<int>(reinterpret_cast<uintptr_t>(t) % 4);
      Call& c = *calls_[i];
      if (op == kFinish) {
        c.done = true;
        ++finished_;
      } else if (ok) {
        c.r->Read(&c.chunk, tag(i, kRead));
      } else {
        c.r->Finish(&c.status, tag(i, kFinish));
      }
    }
    return finished_;
  }
  const grpc::Status& status(size_t i) const { return calls_[i]->status; }
  size_t size() const { return calls_.size(); }

 private:
  enum { kStart = 0, kRead = 1, kFinish = 2 };
  static void* tag(size_t i, int op) { return reinterpret_cast<void*>(i * 4 + op); }
  struct Call {
    grpc::ClientContext ctx;
    pb::GetModelRequest req;
    std::unique_ptr<grpc::ClientAsyncReader<pb::ModelChunk>> r;
    pb::ModelChunk chunk;
    grpc::Status status;
    bool done = false;
  };
  grpc::CompletionQueue cq_;
  std::vector<std::unique_ptr<Call>> calls_;
  size_t finished_ = 0;
};

// Sends raw bytes as the messages of `method` (a bidi call works for every
// kind) and returns the final status.
grpc::Status raw_call(Fixture& f, const std::string& method, const std::vector<std::string>& messages,
                      const std::string& token) {
  grpc::GenericStub stub(f.channel);
  grpc::ClientContext ctx;
  ctx.AddMetadata("authorization", "Bearer " + token);
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  grpc::CompletionQueue cq;
  void* t;
  bool ok = false;
  auto call = stub.PrepareCall(&ctx, "/strata.fed.v1.Federation/" + method, &cq);
  call->StartCall(reinterpret_cast<void*>(1));
  cq.Next(&t, &ok);
  for (const auto& m : messages) {
    if (!ok) break;
    grpc::Slice slice(m);
    grpc::ByteBuffer bb(&slice, 1);
    call->Write(bb, reinterpret_cast<void*>(2));
    cq.Next(&t, &ok);
  }
  call->WritesDone(reinterpret_cast<void*>(3));
  cq.Next(&t, &ok);
  grpc::ByteBuffer reply;
  do {
    call->Read(&reply, reinterpret_cast<void*>(4));
    cq.Next(&t, &ok);
  } while (ok);
  grpc::Status st;
  call->Finish(&st, reinterpret_cast<void*>(5));
  cq.Next(&t, &ok);
  cq.Shutdown();
  while (cq.Next(&t, &ok)) {
  }
  return st;
}

EdgeClientOptions client_options(const Fixture& f, const std::string& id, const std::string& token) {
  EdgeClientOptions o;
  o.address = f.address;
  o.client_id = id;
  o.token = token;
  o.first_backoff = milliseconds(20);
  o.rpc_timeout = milliseconds(20000);
  return o;
}

UpdateToSend zero_update(const Fixture& f, uint64_t base, float value = 0.0f) {
  UpdateToSend u;
  u.base_version = static_cast<int64_t>(base);
  u.num_samples = 5;
  for (const auto& s : f.server.layout().slots()) u.tensors.emplace_back(s.name, at::full(s.shape, value));
  return u;
}

// A newly enrolled honest client's update is accepted within 5 s.
void expect_honest_submit_within_5s(Fixture& f, const std::string& id) {
  EdgeClient honest(client_options(f, id, f.server.store().enroll(id)));
  const auto t0 = Clock::now();
  const SubmitResult r = honest.submit(zero_update(f, 1));
  EXPECT_TRUE(r.accepted) << r.code << " " << r.reason;
  EXPECT_LT(Clock::now() - t0, std::chrono::seconds(5));
}

// Waits up to 10 s for the server to reach `version`.
void wait_version(Fixture& f, int64_t version) {
  ASSERT_GE(f.wait_version(version).version, version);
}

// Defect 1: base versions read as int64 made 2^63 a "staleness" that
// overflowed into weight NaN, and 2^64 - 1 or 0 look old, not invalid.
TEST(Hostile, BaseVersionsFromTheFutureOrOverflowedAreRefused) {
  test::TempDir dir;
  Fixture f(small_recipe(dir.path(), {"federated.mode=async", "federated.async.buffer_size=100"}));
  int64_t seq = 1;
  for (uint64_t base : {kTwo63, kTwo63 + 1, std::numeric_limits<uint64_t>::max(), uint64_t{2}}) {
    auto i = f.info(seq++);
    i.set_base_version(base);
    expect_status(f.submit(i, f.delta(0.001f), f.token), grpc::StatusCode::FAILED_PRECONDITION,
                  str("base version ", base, " is newer than the server's 1"));
  }
  // Version 0 does not exist.
  expect_status(f.submit(f.info(seq++, 0), f.delta(0.001f), f.token),
                grpc::StatusCode::INVALID_ARGUMENT, "versions start at 1");
  const ServerStatus s = f.server.status();
  EXPECT_EQ(s.rejected_by_reason.at("future_version"), 4);
  EXPECT_EQ(s.rejected_by_reason.at("bad_version"), 1);
  EXPECT_EQ(s.accepted, 0);
}

// Defect 1: a first sequence of 0 or one >= 2^63 was a "replay"
// (ALREADY_EXISTS, which a retrying client reads as success).
TEST(Hostile, SequencesStartAtOneAndStayBelow2To63) {
  test::TempDir dir;
  Fixture f(small_recipe(dir.path(), {"federated.mode=async", "federated.async.buffer_size=100"}));
  auto i = f.info(0);
  expect_status(f.submit(i, f.delta(0.001f), f.token), grpc::StatusCode::INVALID_ARGUMENT,
                "sequence 0 is outside [1, 2^63 - 1]");
  i.set_sequence(kTwo63);
  expect_status(f.submit(i, f.delta(0.001f), f.token), grpc::StatusCode::INVALID_ARGUMENT,
                str("sequence ", kTwo63, " is outside"));
  i.set_sequence(kTwo63 - 1);
  EXPECT_TRUE(f.submit(i, f.delta(0.001f), f.token).ok());
  expect_status(f.submit(i, f.delta(0.001f), f.token), grpc::StatusCode::ALREADY_EXISTS,
                "is not above its last accepted");
}

// Acceptance: 20% of enrolled clients sending overflowed base versions
// cannot reduce the number of honest updates applied.
TEST(Hostile, OverflowedBaseVersionsCannotReduceTheHonestUpdatesApplied) {
  test::TempDir dir;
  Fixture f(small_recipe(dir.path(), {"federated.mode=async", "federated.async.buffer_size=4",
                                      "federated.async.versions=5",
                                      "federated.async.max_staleness=100"}));
  std::vector<std::string> honest, hostile;
  std::map<std::string, std::string> token;
  for (int c = 0; c < 10; ++c) {
    const std::string id = str("c", c);
    token[id] = f.server.store().enroll(id);
    (c < 2 ? hostile : honest).push_back(id);
  }
  std::set<int64_t> honest_ids;
  uint64_t seq = 1;
  for (int k = 0; k < 20; ++k) {
    for (const auto& h : hostile) {
      for (uint64_t base : {kTwo63, std::numeric_limits<uint64_t>::max(), uint64_t{0}}) {
        auto i = f.info(static_cast<int64_t>(seq++));
        i.set_client_id(h);
        i.set_base_version(base);
        EXPECT_FALSE(f.submit(i, f.delta(0.01f), token[h]).ok());
      }
    }
    const std::string& id = honest[static_cast<size_t>(k) % honest.size()];
    auto i = f.info(static_cast<int64_t>(seq++), f.server.status().version);
    i.set_client_id(id);
    grpc::ClientContext ctx;
    ctx.AddMetadata("authorization", "Bearer " + token[id]);
    pb::SubmitReply reply;
    auto w = f.stub->SubmitUpdate(&ctx, &reply);
    pb::UpdateChunk head;
    *head.mutable_info() = i;
    w->Write(head);
    for (const auto& t : f.delta(0.001f)) write_encoded<pb::UpdateChunk>(t, w.get());
    w->WritesDone();
    const grpc::Status st = w->Finish();
    ASSERT_TRUE(st.ok()) << st.error_message();
    EXPECT_TRUE(std::isfinite(reply.weight()) && reply.weight() > 0 && reply.weight() <= 1);
    honest_ids.insert(static_cast<int64_t>(reply.update_id()));
  }
  ASSERT_TRUE(f.server.wait_finished(milliseconds(20000)));
  size_t applied = 0;
  for (const auto& v : f.server.store().versions()) {
    for (int64_t id : v.applied) EXPECT_TRUE(honest_ids.count(id)) << "update " << id;
    applied += v.applied.size();
  }
  EXPECT_EQ(applied, 20u);  // 5 versions x buffer 4: every honest update
  for (const auto& line : test::read_lines(dir.path() + "/metrics.jsonl")) {
    EXPECT_EQ(line.find("\"non_finite\":true"), std::string::npos) << line;
  }
}

// Defect 1: a non-finite aggregate used to discard the whole batch; now
// the offending update is excluded and the honest ones are applied.
TEST(Hostile, ANonFiniteAggregateExcludesTheOffenderAndAppliesTheRest) {
  test::TempDir dir;
  Fixture f(small_recipe(dir.path(), {"federated.mode=async", "federated.async.buffer_size=3",
                                      "federated.server_lr=4"}));
  const std::string bad = f.server.store().enroll("edge-bad");
  EXPECT_TRUE(f.submit(f.info(1), f.delta(0.001f), f.token).ok());
  auto i = f.info(1);
  i.set_client_id("edge-bad");
  EXPECT_TRUE(f.submit(i, f.delta(3e38f), bad).ok());  // finite, huge
  EXPECT_TRUE(f.submit(f.info(2), f.delta(0.001f), f.token).ok());
  wait_version(f, 2);
  const auto v1 = f.server.store().load_version(1);
  const auto v2 = f.server.store().load_version(2);
  for (size_t t = 0; t < v1.size(); ++t) {
    // server_lr 4 x the mean of the two honest deltas (0.001 each).
    EXPECT_TRUE(at::allclose(v2[t].second - v1[t].second, at::full_like(v1[t].second, 0.004f),
                             1e-4, 1e-6)) << v1[t].first;
  }
  const std::string metrics = read_file(dir.path() + "/metrics.jsonl");
  EXPECT_NE(metrics.find("\"excluded\":\"'edge-bad' (update 2)\""), std::string::npos) << metrics;
  EXPECT_EQ(f.server.store().versions()[1].applied.size(), 3u);  // all consumed
}

// Defect 2: streams that send their info and half a tensor, then stall,
// filled every ingest slot for as long as they stayed open.
TEST(Hostile, StalledUploadsAreBoundedPerClientAndEndedWhenIdle) {
  test::TempDir dir;
  Fixture f(small_recipe(dir.path(), {"federated.mode=async", "federated.async.buffer_size=100",
                                      "federated.server.max_inflight_updates=2",
                                      "federated.server.stream_idle_timeout_s=1.5"}));
  const int64_t threads_before = test::thread_count(::getpid());
  // 200 stalled streams of one enrolled client: one gets a slot, the rest
  // are refused at once.
  std::vector<std::unique_ptr<RawUpload>> stalled;
  for (int k = 0; k < 200; ++k) stalled.push_back(stalled_upload(f, "edge-1", f.token, k + 1));
  f.wait_counts([](const ServiceCounts& c) { return c.uploads_admitted >= 200; });
  EXPECT_LT(test::thread_count(::getpid()) - threads_before, 20)
      << "threads grew with stalled streams";
  // An honest client is accepted within 5 s.
  expect_honest_submit_within_5s(f, "edge-2");
  int busy = 0, idle = 0;
  for (auto& u : stalled) {
    const grpc::Status st = u->status();
    if (st.error_code() == grpc::StatusCode::UNAVAILABLE &&
        st.error_message().find("already has 1 upload(s) open") != std::string::npos) {
      ++busy;
    } else if (st.error_code() == grpc::StatusCode::INVALID_ARGUMENT &&
               st.error_message().find("no chunk for 1.5 s") != std::string::npos) {
      ++idle;
    } else {
      ADD_FAILURE() << st.error_code() << " " << st.error_message();
    }
  }
  EXPECT_EQ(idle, 1);  // the one that held a slot, ended by the idle deadline
  EXPECT_EQ(busy, 199);
  EXPECT_EQ(f.server.status().accepted, 1);
}

// Defect 2, several hostile clients: stalled streams of as many clients as
// there are slots hold them only until somebody waits (plus
// contended_idle_timeout_s), not for stream_idle_timeout_s.
TEST(Hostile, StalledUploadsOfManyClientsLoseTheirSlotsWhenOthersWait) {
  test::TempDir dir;
  Fixture f(small_recipe(dir.path(), {"federated.mode=async", "federated.async.buffer_size=100",
                                      "federated.server.max_inflight_updates=4",
                                      "federated.server.stream_idle_timeout_s=600",
                                      "federated.server.contended_idle_timeout_s=1"}));
  std::vector<std::unique_ptr<RawUpload>> stalled;
  for (int c = 0; c < 4; ++c) {
    const std::string id = str("h", c);
    const std::string tok = f.server.store().enroll(id);
    for (int k = 0; k < 50; ++k) stalled.push_back(stalled_upload(f, id, tok, k + 1));
  }
  // Every slot is held by a stalled stream; the honest sender waits, and
  // after contended_idle_timeout_s one stalled stream loses its slot to it.
  f.wait_counts([](const ServiceCounts& c) { return c.uploads_admitted >= 200; });
  expect_honest_submit_within_5s(f, "edge-2");
  // The preempted stalled upload was refused "idle" (the rest were turned
  // away at once: one upload per client).
  const ServerStatus st = f.server.status();
  EXPECT_GE(st.rejected_by_reason.count("idle") ? st.rejected_by_reason.at("idle") : 0, 1);
  EXPECT_EQ(st.rejected_by_reason.at("busy_client"), 196);
  for (auto& u : stalled) u->ctx.TryCancel();
}

// Defect 3: streams without a token that never sent a first message held
// one server thread each, with no deadline.
TEST(Hostile, SilentStreamsPinNoThreadsAndEndAtTheFirstMessageDeadline) {
  test::TempDir dir;
  Fixture f(small_recipe(dir.path(), {"federated.mode=async", "federated.async.buffer_size=100",
                                      "federated.server.first_message_timeout_s=1"}));
  const int64_t threads_before = test::thread_count(::getpid());
  std::vector<std::unique_ptr<RawUpload>> silent;
  for (int k = 0; k < 200; ++k) silent.push_back(std::make_unique<RawUpload>(f, ""));
  f.wait_counts([](const ServiceCounts& c) { return c.uploads_started >= 200; });
  EXPECT_LT(test::thread_count(::getpid()) - threads_before, 20) << "threads grew with silent streams";
  EdgeClient honest(client_options(f, "edge-1", f.token));
  const auto t0 = Clock::now();
  EXPECT_TRUE(honest.submit(zero_update(f, 1)).accepted);
  EXPECT_LT(Clock::now() - t0, std::chrono::seconds(5));
  for (auto& u : silent) {
    const grpc::Status st = u->status();
    EXPECT_EQ(st.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED) << st.error_message();
    EXPECT_NE(st.error_message().find("no first chunk within 1.0 s"), std::string::npos);
  }
  EXPECT_LT(Clock::now() - t0, std::chrono::seconds(4));
  EXPECT_EQ(f.server.status().rejected, 0);  // nobody said who they were
}

// Defect 4: cancelled long polls kept their threads until wait_ms ran out,
// and one client could open any number of them.
TEST(Hostile, CancelledLongPollsAreReleasedAndBoundedPerClient) {
  test::TempDir dir;
  Fixture f(small_recipe(dir.path(), {"federated.mode=async", "federated.async.buffer_size=100"}));
  std::vector<std::pair<std::string, std::string>> who;
  for (int c = 0; c < 150; ++c) {
    const std::string id = str("p", c);
    const std::string tok = f.server.store().enroll(id);
    who.emplace_back(id, tok);
    who.emplace_back(id, tok);  // two polls per client: the limit
  }
  const int64_t threads_before = test::thread_count(::getpid());
  {
    AsyncPolls polls(*f.stub, who, /*have*/ 1, /*wait_ms*/ 60000);
    f.wait_counts([&](const ServiceCounts& c) {
      return c.polls_begun >= static_cast<int64_t>(who.size());
    });
    EXPECT_LT(test::thread_count(::getpid()) - threads_before, 20) << "threads grew with long polls";
    // A third poll of a client that has two open is turned away at once.
    AsyncPolls third(*f.stub, {who[0]}, 1, 60000);
    ASSERT_EQ(third.wait_all(std::chrono::seconds(3)), 1u);
    EXPECT_EQ(third.status(0).error_code(), grpc::StatusCode::UNAVAILABLE);
    EXPECT_NE(third.status(0).error_message().find("already has 2 long poll(s) open"),
              std::string::npos) << third.status(0).error_message();
    const auto t0 = Clock::now();
    polls.cancel_all();
    EXPECT_EQ(polls.wait_all(std::chrono::seconds(3)), polls.size());
    EXPECT_LT(Clock::now() - t0, std::chrono::seconds(3));
    // The client sees a cancelled call end before the server's reactor has
    // given its slot back: wait for the server's side too.
    f.wait_counts([](const ServiceCounts& c) { return c.polls_open == 0; });
  }
  // The slots came back: the same clients can poll again, and an honest
  // client's fetch is answered.
  AsyncPolls again(*f.stub, {who[0], who[1]}, 1, 200);
  EXPECT_EQ(again.wait_all(std::chrono::seconds(5)), 2u);
  EXPECT_TRUE(again.status(0).ok()) << again.status(0).error_message();
  EdgeClient honest(client_options(f, "edge-1", f.token));
  EXPECT_EQ(honest.fetch(0, milliseconds(0)).version, 1);
  EXPECT_LT(test::thread_count(::getpid()) - threads_before, 20);
}

// Defect 4: SIGTERM with long polls outstanding took as long as their
// wait_ms (58.7 s with 10 polls of 60 s).
TEST(Hostile, ShutdownEndsWithinSecondsWhateverIsOutstanding) {
  test::TempDir dir;
  Fixture f(small_recipe(dir.path(), {"federated.mode=async", "federated.async.buffer_size=100"}));
  std::vector<std::pair<std::string, std::string>> who;
  for (int c = 0; c < 40; ++c) {
    const std::string id = str("p", c);
    who.emplace_back(id, f.server.store().enroll(id));
  }
  AsyncPolls polls(*f.stub, who, 1, 60000);
  std::vector<std::unique_ptr<RawUpload>> stalled;
  for (int k = 0; k < 3; ++k) {
    auto u = std::make_unique<RawUpload>(f, who[static_cast<size_t>(k)].second);
    auto i = f.info(1);
    i.set_client_id(who[static_cast<size_t>(k)].first);
    u->info(i);
    stalled.push_back(std::move(u));
  }
  f.wait_counts([&](const ServiceCounts& c) {
    return c.polls_begun >= static_cast<int64_t>(who.size()) && c.uploads_admitted >= 3;
  });
  const auto t0 = Clock::now();
  f.service->shutdown();
  EXPECT_LT(Clock::now() - t0, std::chrono::seconds(5));
  EXPECT_EQ(polls.wait_all(std::chrono::seconds(5)), polls.size());
  for (size_t i = 0; i < polls.size(); ++i) {
    EXPECT_EQ(polls.status(i).error_code(), grpc::StatusCode::UNAVAILABLE)
        << polls.status(i).error_message();
  }
  for (auto& u : stalled) EXPECT_FALSE(u->status().ok());
}

// Defect 5: gRPC's SO_REUSEPORT let a second server bind the same port.
TEST(Hostile, TwoServersCannotShareAPort) {
  test::TempDir dir;
  Fixture f(small_recipe(dir.path() + "/a"));
  const train::Recipe r = small_recipe(dir.path() + "/b", {"federated.server.address=" + f.address});
  const auto second = make_fed_server(r, train::builtin_registries());
  try {
    serve(*second);
    FAIL() << "a second server bound " << f.address;
  } catch (const IoError& e) {
    EXPECT_NE(std::string(e.what()).find("the address is in use"), std::string::npos) << e.what();
  }
}

// Defects 6 and 7: client text went raw into log lines (forged lines, NUL
// bytes, 2 MiB lines) and status messages (2 MiB names came back as a
// metadata-size RESOURCE_EXHAUSTED); rejection warnings did not name the
// client.
TEST(Hostile, ClientTextIsBoundedAndEscapedInLogsAndStatuses) {
  test::TempDir dir;
  Fixture f(small_recipe(dir.path(), {"federated.mode=async", "federated.async.buffer_size=100"}));
  StderrCapture log(dir.path() + "/stderr.log");
  auto forged = f.delta(0.001f);
  forged[0].name = "x\n[rank 0/1] ERROR forged line";
  grpc::Status st = f.submit(f.info(1), forged, f.token);
  expect_status(st, grpc::StatusCode::INVALID_ARGUMENT, "'x\\x0a[rank 0/1] ERROR forged line'");
  auto huge = f.delta(0.001f);
  huge[0].name = std::string(2 << 20, 'n');
  st = f.submit(f.info(2), huge, f.token);
  expect_status(st, grpc::StatusCode::INVALID_ARGUMENT, "...(2097152 bytes)");
  EXPECT_LT(st.error_message().size(), 1000u);
  auto id = f.info(3);
  id.set_client_id(std::string(2 << 20, 'c'));
  st = f.submit(id, f.delta(0.001f), f.token);
  expect_status(st, grpc::StatusCode::UNAUTHENTICATED, "is not a client id");
  EXPECT_LT(st.error_message().size(), 1000u);
  id.set_client_id(std::string("nul\0byte", 8));
  expect_status(f.submit(id, f.delta(0.001f), f.token), grpc::StatusCode::UNAUTHENTICATED,
                "'nul\\x00byte'");
  // A rejection of an enrolled client names it and its peer.
  auto wrong = f.info(4);
  wrong.set_num_samples(0);
  expect_status(f.submit(wrong, f.delta(0.001f), f.token), grpc::StatusCode::INVALID_ARGUMENT,
                "num_samples 0");
  const std::string text = log.stop();
  int rejections = 0;
  for (const auto& line : split(text, '\n')) {
    if (line.empty()) continue;
    // Every line is one of the logger's: its time (stderr is not a
    // terminal here), then the rank -- never text a client forged.
    static const std::regex prefix("^20[0-9-]{8}T[0-9:.]{12}Z \\[rank 0/1\\] ");
    std::smatch m;
    EXPECT_TRUE(std::regex_search(line, m, prefix)) << printable(line, 300);
    EXPECT_NE(m.suffix().str().rfind("ERROR forged", 0), 0u) << printable(line, 300);
    EXPECT_EQ(line.find('\0'), std::string::npos);
    EXPECT_LT(line.size(), 1000u);
    if (line.find("rejected an update") != std::string::npos ||
        line.find("refused a SubmitUpdate") != std::string::npos) {
      ++rejections;
      EXPECT_TRUE(line.find(" from '") != std::string::npos ||
                  line.find(" for client '") != std::string::npos) << printable(line, 300);
      EXPECT_NE(line.find(" at 'ipv4:127.0.0.1:"), std::string::npos) << printable(line, 300);
    }
  }
  EXPECT_GE(rejections, 5);
}

// Defect 8: a compressed tensor's payload size was checked only at its
// end, so a header announcing 7 MiB for 288 int8 elements was buffered.
TEST(Hostile, ACompressedPayloadSizeIsCheckedAtItsHeader) {
  test::TempDir dir;
  Fixture f(small_recipe(dir.path(), {"federated.mode=async", "federated.async.buffer_size=100"}));
  const auto& slot = f.server.layout().slots()[1];  // net.0.bias, 256 elements
  const auto try_header = [&](pb::Encoding enc, uint64_t bytes, uint64_t k) {
    RawUpload u(f, f.token);
    u.info(f.info(1));
    pb::TensorHeader h;
    to_proto(f.delta(0.0f)[0], &h);
    u.header(h);
    u.data(std::string(h.payload_bytes(), '\0'));
    pb::TensorHeader h2;
    h2.set_name(slot.name);
    for (int64_t d : slot.shape) h2.add_shape(d);
    h2.set_encoding(enc);
    h2.set_scale(0.1f);
    h2.set_k(k);
    h2.set_payload_bytes(bytes);
    u.header(h2);
    // No payload is sent: the header alone is refused.
    return u.finish();
  };
  expect_status(try_header(pb::INT8, 7340032, 0), grpc::StatusCode::INVALID_ARGUMENT,
                "'net.0.bias' (int8): 7340032 payload bytes for 256 elements; expected 256");
  expect_status(try_header(pb::FP16, 256, 0), grpc::StatusCode::INVALID_ARGUMENT, "expected 512");
  expect_status(try_header(pb::TOPK, 40, 10), grpc::StatusCode::INVALID_ARGUMENT, "expected 80");
  expect_status(try_header(pb::TOPK, 8 * 300, 300), grpc::StatusCode::INVALID_ARGUMENT,
                "k = 300 exceeds the 256 elements");
}

// Defect 9: recovery after kill -9 left half-written temp files behind.
TEST(Hostile, RecoveryRemovesTemporaryFilesOfAKilledWrite) {
  test::TempDir dir;
  { ServerStore s(dir.path()); }
  const std::vector<std::string> temps = {"versions/.v3.pt.tmp.123", ".strategy_state.v2.pt.tmp.9",
                                          "updates/.u5.f32.tmp.77", ".recipe.yaml.tmp.5"};
  for (const auto& t : temps) atomic_write_file(dir.path() + "/" + t, "partial");
  atomic_write_file(dir.path() + "/versions/keep.txt", "not ours");
  { ServerStore s(dir.path()); }
  for (const auto& t : temps) EXPECT_FALSE(path_exists(dir.path() + "/" + t)) << t;
  EXPECT_TRUE(path_exists(dir.path() + "/versions/keep.txt"));
}

// Defect 10: failed GetModel/GetStatus logins were counted as rejected
// updates.
TEST(Hostile, FailedLoginsOnFetchAndStatusAreNotRejectedUpdates) {
  test::TempDir dir;
  Fixture f(small_recipe(dir.path(), {"federated.mode=async", "federated.async.buffer_size=100"}));
  for (int k = 0; k < 3; ++k) {
    grpc::ClientContext ctx;
    ctx.AddMetadata("authorization", "Bearer wrong");
    pb::GetModelRequest req;
    req.set_client_id("edge-1");
    auto r = f.stub->GetModel(&ctx, req);
    pb::ModelChunk c;
    while (r->Read(&c)) {
    }
    EXPECT_EQ(r->Finish().error_code(), grpc::StatusCode::UNAUTHENTICATED);
  }
  for (int k = 0; k < 2; ++k) {
    grpc::ClientContext ctx;
    ctx.AddMetadata("authorization", "Bearer wrong");
    pb::StatusRequest req;
    req.set_client_id("edge-1");
    pb::StatusReply reply;
    EXPECT_EQ(f.stub->GetStatus(&ctx, req, &reply).error_code(), grpc::StatusCode::UNAUTHENTICATED);
  }
  expect_status(f.submit(f.info(1), f.delta(0.0f), "wrong"), grpc::StatusCode::UNAUTHENTICATED, "");
  // The scheme is case-insensitive; spaces around the token do not count.
  for (const std::string scheme : {"bearer ", "BEARER  "}) {
    grpc::ClientContext ctx;
    ctx.AddMetadata("authorization", scheme + f.token + " ");
    pb::StatusRequest req;
    req.set_client_id("edge-1");
    pb::StatusReply reply;
    EXPECT_TRUE(f.stub->GetStatus(&ctx, req, &reply).ok()) << scheme;
  }
  const ServerStatus s = f.server.status();
  EXPECT_EQ(s.auth_failures, 5);
  EXPECT_EQ(s.rejected, 1);  // the update
  EXPECT_EQ(s.rejected_by_reason.at("auth"), 1);
}

// Defect 11: invalid UTF-8 wrote protobuf's own error lines into the log,
// unparseable unary requests got INTERNAL with no message, and a chunk
// that did not parse mid-stream ended the stream as if complete.
TEST(Hostile, UnparseableRequestsAreInvalidArgumentWithAReason) {
  test::TempDir dir;
  Fixture f(small_recipe(dir.path(), {"federated.mode=async", "federated.async.buffer_size=100"}));
  StderrCapture log(dir.path() + "/stderr.log");
  const std::string bad_utf8("\x0a\x02\xff\xfe", 4);  // client_id = "\xff\xfe"
  const std::string garbage("\xff\xff\xff\xff", 4);
  for (const char* m : {"GetStatus", "GetModel"}) {
    for (const auto& bytes : {bad_utf8, garbage}) {
      const grpc::Status st = raw_call(f, m, {bytes}, f.token);
      EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << m;
      EXPECT_NE(st.error_message().find("is not a valid message of strata_fed.proto"),
                std::string::npos) << st.error_message();
    }
  }
  pb::UpdateChunk head;
  *head.mutable_info() = f.info(1);
  std::vector<std::string> msgs{head.SerializeAsString()};
  for (const auto& t : f.delta(0.0f)) {
    pb::UpdateChunk h;
    to_proto(t, h.mutable_tensor());
    msgs.push_back(h.SerializeAsString());
    pb::UpdateChunk d;
    d.set_data(t.data);
    msgs.push_back(d.SerializeAsString());
  }
  msgs.push_back(garbage);  // after a complete update: still an error
  const grpc::Status st = raw_call(f, "SubmitUpdate", msgs, f.token);
  expect_status(st, grpc::StatusCode::INVALID_ARGUMENT,
                str("chunk ", msgs.size(), " of the stream is not a valid UpdateChunk"));
  const std::string text = log.stop();
  EXPECT_EQ(text.find("[libprotobuf"), std::string::npos) << text;
  EXPECT_EQ(f.server.status().accepted, 0);
}

// A random mutation of every field of valid chunks: whatever arrives, the
// server answers with a status, keeps serving, and accepts an honest
// update afterwards.
TEST(Hostile, RandomMutationsOfAnUpdateStreamNeverBreakTheServer) {
  test::TempDir dir;
  Fixture f(small_recipe(dir.path(), {"federated.mode=async", "federated.async.buffer_size=1000"}));
  std::vector<std::string> msgs;
  pb::UpdateChunk head;
  *head.mutable_info() = f.info(1);
  msgs.push_back(head.SerializeAsString());
  for (const auto& t : f.delta(0.0f)) {
    pb::UpdateChunk h;
    to_proto(t, h.mutable_tensor());
    msgs.push_back(h.SerializeAsString());
    pb::UpdateChunk d;
    d.set_data(t.data.substr(0, 4096));
    msgs.push_back(d.SerializeAsString());
  }
  std::mt19937 rng(7);
  for (int k = 0; k < 60; ++k) {
    auto m = msgs;
    for (int flips = 0; flips < 1 + k % 8; ++flips) {
      std::string& target = m[rng() % std::min<size_t>(m.size(), 6)];
      if (target.empty()) continue;
      target[rng() % std::min<size_t>(target.size(), 64)] = static_cast<char>(rng());
    }
    const grpc::Status st = raw_call(f, "SubmitUpdate", m, f.token);
    EXPECT_NE(st.error_code(), grpc::StatusCode::OK);
    EXPECT_NE(st.error_code(), grpc::StatusCode::INTERNAL) << st.error_message();
    EXPECT_NE(st.error_code(), grpc::StatusCode::UNKNOWN) << st.error_message();
  }
  EdgeClient honest(client_options(f, "edge-1", f.token));
  EXPECT_TRUE(honest.submit(zero_update(f, 1)).accepted);
}

}  // namespace
}  // namespace strata::fed
