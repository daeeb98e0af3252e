// A FedServer behind real gRPC on loopback with one enrolled client, and a
// raw protocol client (the generated stub) to talk to it: shared by the
// federated service tests.
#pragma once

#include <gtest/gtest.h>
#include <grpcpp/grpcpp.h>

#include <memory>
#include <string>
#include <vector>

#include "federated/client.h"
#include "federated/server.h"
#include "federated/service.h"
#include "federated/wire.h"
#include "strata_fed.grpc.pb.h"
#include "trainer/recipe.h"
#include "trainer/trainer.h"

namespace strata::fed {

inline train::Recipe small_recipe(const std::string& dir, std::vector<std::string> extra = {}) {
  std::vector<std::string> o{"run.dir=" + dir, "model.name=mlp", "data.test_subset=500",
                             "data.train_subset=3000", "data.batch_size=32",
                             "federated.server.address=127.0.0.1:0"};
  o.insert(o.end(), extra.begin(), extra.end());
  return train::parse_recipe("", "test.yaml", o);
}

// A server on loopback plus one enrolled client, for protocol tests. Its
// clock is the real one unless the test gives a ManualClock to drive.
struct Fixture {
  explicit Fixture(const train::Recipe& r, std::shared_ptr<ServerClock> clock = steady_clock())
      : owned(make_fed_server(r, train::builtin_registries(), std::move(clock))),
        server(*owned),
        service(serve(server)),
        address("127.0.0.1:" + std::to_string(service->port())),
        token(server.store().enroll("edge-1")) {
    channel = grpc::CreateChannel(address, grpc::InsecureChannelCredentials());
    stub = pb::Federation::NewStub(channel);
  }

  // A raw SubmitUpdate: info, then the given tensors (fp32) or raw chunks.
  grpc::Status submit(pb::UpdateInfo info, const std::vector<EncodedTensor>& tensors,
                      const std::string& tok, std::vector<pb::UpdateChunk> raw = {}) {
    grpc::ClientContext ctx;
    ctx.AddMetadata("authorization", "Bearer " + tok);
    pb::SubmitReply reply;
    auto w = stub->SubmitUpdate(&ctx, &reply);
    pb::UpdateChunk head;
    *head.mutable_info() = info;
    w->Write(head);
    for (const auto& t : tensors) write_encoded<pb::UpdateChunk>(t, w.get());
    for (const auto& c : raw) w->Write(c);
    w->WritesDone();
    return w->Finish();
  }

  pb::UpdateInfo info(int64_t seq, int64_t base = 1) const {
    pb::UpdateInfo i;
    i.set_client_id("edge-1");
    i.set_base_version(static_cast<uint64_t>(base));
    i.set_num_samples(10);
    i.set_sequence(static_cast<uint64_t>(seq));
    i.set_num_tensors(static_cast<uint32_t>(server.layout().slots().size()));
    return i;
  }

  std::vector<EncodedTensor> delta(float value) const {
    std::vector<EncodedTensor> out;
    for (const auto& s : server.layout().slots()) {
      out.push_back(encode(s.name, at::full(s.shape, value), {}));
    }
    return out;
  }

  // An EdgeClient's options for this server.
  EdgeClientOptions client_options(const std::string& id, const std::string& tok) const {
    EdgeClientOptions o;
    o.address = address;
    o.client_id = id;
    o.token = tok;
    return o;
  }

  // Blocks (without polling) until the server reached `version`, or 10 s.
  ServerStatus wait_version(int64_t version) {
    return server.wait_status([&](const ServerStatus& s) { return s.version >= version; },
                              std::chrono::seconds(10));
  }

  // Blocks (without polling) until the service's counts satisfy `done`,
  // or 10 s; fails the test on the timeout.
  template <class Pred>
  ServiceCounts wait_counts(Pred done) {
    const ServiceCounts c = service->wait_counts(done, std::chrono::seconds(10));
    EXPECT_TRUE(done(c)) << "after 10 s: " << c.uploads_started << " uploads started, "
                         << c.uploads_admitted << " admitted, " << c.polls_begun << " polls begun, "
                         << c.polls_open << " open";
    return c;
  }

  std::unique_ptr<FedServer> owned;
  FedServer& server;
  std::unique_ptr<RunningService> service;
  std::string address;
  std::string token;
  std::shared_ptr<grpc::Channel> channel;
  std::unique_ptr<pb::Federation::Stub> stub;
};

inline void expect_status(const grpc::Status& s, grpc::StatusCode code, const std::string& reason) {
  EXPECT_EQ(s.error_code(), code) << s.error_message();
  EXPECT_NE(s.error_message().find(reason), std::string::npos) << s.error_message();
}

}  // namespace strata::fed
