// Privacy on the client's side: local differential privacy (each client
// clips and noises its own update, federated.privacy.mode=local, with its
// own accountant and budget) and client-side clipping for central DP
// (federated.privacy.client_clip: the server tells clients the clip norm
// and refuses updates above it).
#include <gtest/gtest.h>

#include <cmath>

#include "core/error.h"
#include "core/fs.h"
#include "core/json.h"
#include "federated/accountant.h"
#include "federated/client.h"
#include "federated/dp.h"
#include "federated/edge.h"
#include "federated/fixture.h"
#include "federated/server_options.h"
#include "federated/sim.h"
#include "test_util.h"

namespace strata::fed {
namespace {

// Noise of std z C around the clipped update: 40,000 elements give the
// std to within 2% (its standard error is 0.35%) and the mean to 4 standard
// errors.
TEST(LocalDp, AddsNoiseOfStdZCToTheClippedUpdate) {
  LocalDp dp(1.0, 0.5, 0, 1e-5);
  const int64_t n = 40000;
  const at::Tensor update = at::full({n}, 1.0);  // norm 200: clipped to 1
  const at::Tensor noise = dp.release(update) - 1.0 / 200;
  EXPECT_NEAR(noise.mean().item<double>(), 0.0, 4 * 0.5 / std::sqrt(double(n)));
  EXPECT_NEAR(noise.std().item<double>(), 0.5, 0.01);
  EXPECT_EQ(update.norm().item<double>(), 200.0);  // the caller's tensor is untouched
}

TEST(LocalDp, ClipsWholeUpdatesAboveTheNormAndLeavesSmallerOnes) {
  LocalDp dp(2.0, 1e-6, 0, 1e-5);  // noise negligible next to 1e-3
  const at::Tensor big = at::arange(1, 101, at::kFloat);
  const at::Tensor out = dp.release(big);
  EXPECT_NEAR(out.norm().item<double>(), 2.0, 1e-3);
  EXPECT_LT((out / out.norm() - big / big.norm()).abs().max().item<double>(), 1e-4);
  const at::Tensor small = at::full({100}, 0.1);  // norm 1
  EXPECT_LT((dp.release(small) - small).abs().max().item<double>(), 1e-4);
}

// Each release is the Gaussian mechanism at sampling rate 1 with noise z / 2
// times the sensitivity 2 C; a budget between what 3 and 4 releases spend
// allows exactly 3.
TEST(LocalDp, EpsilonIsTheAccountantsAndTheBudgetStopsReleases) {
  RdpAccountant a;
  std::vector<double> eps;
  for (int k = 0; k < 4; ++k) {
    a.compose(1.0, 2.0 / 2);
    eps.push_back(a.spent(1e-5).epsilon);
  }
  LocalDp dp(1.0, 2.0, 0.5 * (eps[2] + eps[3]), 1e-5);
  EXPECT_EQ(dp.epsilon(), 0.0);
  for (int k = 0; k < 3; ++k) {
    ASSERT_TRUE(dp.can_release()) << k;
    EXPECT_NEAR(dp.epsilon_after_next(), eps[k], 1e-12);
    dp.release(at::ones({8}));
    EXPECT_NEAR(dp.epsilon(), eps[k], 1e-12);
  }
  EXPECT_FALSE(dp.can_release());
  EXPECT_EQ(dp.releases(), 3);
}

template <class F>
std::string config_error(F f) {
  try {
    f();
  } catch (const ConfigError& e) {
    return e.what();
  }
  return "(no error)";
}

TEST(ClientPrivacy, SettingsItCannotHonourAreRecipeErrors) {
  test::TempDir dir;
  const auto recipe = [&](std::vector<std::string> o) { return small_recipe(dir.path(), o); };
  const auto local = [&](std::vector<std::string> o) {
    o.push_back("federated.privacy.mode=local");
    return config_error([&] { local_dp(recipe(o)); });
  };
  EXPECT_NE(local({"federated.privacy.noise_multiplier=0"}).find("would send the clipped update"),
            std::string::npos);
  EXPECT_NE(local({"federated.privacy.noise_multiplier=0.5",
                   "federated.privacy.target_epsilon=0.1"})
                .find("does not allow one locally private update"),
            std::string::npos);
  EXPECT_NE(local({"federated.privacy.adaptive_clip=true"}).find("fixed clip_norm"),
            std::string::npos);
  EXPECT_EQ(local({}), "(no error)");
  const auto server = [&](std::vector<std::string> o) {
    o.push_back("federated.privacy.client_clip=true");
    return config_error([&] { server_options(recipe(o)); });
  };
  EXPECT_NE(server({"federated.privacy.mode=central", "federated.privacy.population=100",
                    "federated.privacy.adaptive_clip=true"})
                .find("cannot be combined with adaptive_clip"),
            std::string::npos);
  EXPECT_NE(server({}).find("client_clip is a setting of mode central"), std::string::npos);
  EXPECT_NE(server({"federated.privacy.mode=local"}).find("local DP clients clip anyway"),
            std::string::npos);
}

// The server sends the clip norm with the model and refuses an update above
// it (and one just within the encoding tolerance is taken).
TEST(ClientClip, TheServerSendsTheClipNormAndRefusesUpdatesAboveIt) {
  test::TempDir dir;
  Fixture f(small_recipe(dir.path(), {"federated.mode=async", "federated.async.buffer_size=2",
                                      "federated.privacy.mode=central",
                                      "federated.privacy.population=20",
                                      "federated.privacy.clip_norm=0.5",
                                      "federated.privacy.client_clip=true"}));
  EdgeClient client(f.client_options("edge-1", f.token));
  const FetchedModel m = client.fetch(0, std::chrono::milliseconds(0));
  EXPECT_EQ(m.clip_norm, 0.5);
  const TensorLayout& layout = f.server.layout();
  const at::Tensor direction = at::randn({layout.numel()});
  UpdateToSend u;
  u.base_version = m.version;
  u.num_samples = 10;
  u.tensors = layout.unflatten(direction * (0.5 * (1 + 0.5e-3) / direction.norm()));
  const SubmitResult within = client.submit(u);
  EXPECT_TRUE(within.accepted) << within.reason;
  u.tensors = layout.unflatten(direction * (0.6 / direction.norm()));
  const SubmitResult above = client.submit(u);
  EXPECT_FALSE(above.accepted);
  EXPECT_EQ(above.code, "INVALID_ARGUMENT");
  EXPECT_NE(above.reason.find("exceeds the clip norm 0.5 that clients must clip to"),
            std::string::npos)
      << above.reason;
}

double encoded_norm(const at::Tensor& flat, const TensorLayout& layout, const EncodeOptions& e) {
  double sq = 0;
  for (const auto& [name, t] : layout.unflatten(flat)) {
    sq += decode(encode(name, t, e)).square().sum().item<double>();
  }
  return std::sqrt(sq);
}

// One large element and many just above half the int8 step: rounding them
// up raises the norm by 2%, beyond the server's tolerance; the client
// measures the encoded update and scales it into the bound.
TEST(ClientClip, ClipsTheUpdateAsTheServerWillDecodeIt) {
  const TensorLayout layout = TensorLayout::of_shapes({{"w", {1000}}, {"b", {10}}});
  at::Tensor x = at::full({1010}, 0.51);
  x[0] = 127;
  x.narrow(0, 1000, 10).fill_(0.3);
  const double c = 0.5 * x.norm().item<double>();
  for (const Encoding e : {Encoding::kFp32, Encoding::kFp16, Encoding::kInt8, Encoding::kTopK}) {
    const EncodeOptions enc{e, 0.1};
    const at::Tensor out = clip_encoded(x, c, layout, enc);
    // Float sums: within 1e-5 of c, far inside the server's 1e-3.
    EXPECT_LE(encoded_norm(out, layout, enc), c * (1 + 1e-5)) << encoding_name(e);
    // Not scaled further than needed (topk drops elements: smaller).
    if (e != Encoding::kTopK) {
      EXPECT_GE(encoded_norm(out, layout, enc), c * (1 - 2e-3)) << encoding_name(e);
    }
  }
  at::Tensor plain = x * (c / x.norm().item<double>());  // clipped, not measured
  EXPECT_GT(encoded_norm(plain, layout, {Encoding::kInt8}), c * 1.01);
}

// Honest clients that clip (here every update: the clip norm is tight) are
// never refused, whatever their encoding.
TEST(FedSim, ClientsThatClipInt8UpdatesAreNeverRefused) {
  test::TempDir dir;
  const SimResult s = run_fedsim(
      small_recipe(dir.path(),
                   {"federated.sim.clients=6", "federated.sim.partition=iid",
                    "federated.sync.rounds=3", "federated.sync.clients_per_round=3",
                    "federated.sync.over_selection=0", "federated.client.encoding=int8",
                    "federated.privacy.mode=central", "federated.privacy.noise_multiplier=0.5",
                    "federated.privacy.clip_norm=0.05", "federated.privacy.client_clip=true"}),
      train::builtin_registries());
  EXPECT_EQ(s.versions, 3);
  EXPECT_EQ(s.accepted, 9);
  EXPECT_EQ(s.refused, 0);
}

// A budget that allows each client one update: 6 clients, 3 per round, give
// two rounds; then every client has stopped and the simulation ends, each
// client's epsilon (clients.json) that of one release.
TEST(FedSim, LocalDpClientsStopAtTheirBudget) {
  test::TempDir dir;
  RdpAccountant a;
  a.compose(1.0, 2.0 / 2);
  const double one = a.spent(1e-5).epsilon;
  a.compose(1.0, 2.0 / 2);
  const double two = a.spent(1e-5).epsilon;
  const SimResult s = run_fedsim(
      small_recipe(dir.path(),
                   {"federated.sim.clients=6", "federated.sim.partition=iid",
                    "federated.sync.rounds=10", "federated.sync.clients_per_round=3",
                    "federated.sync.over_selection=0", "federated.privacy.mode=local",
                    "federated.privacy.noise_multiplier=2.0", "federated.privacy.clip_norm=0.1",
                    "federated.privacy.target_epsilon=" + std::to_string(0.5 * (one + two))}),
      train::builtin_registries());
  EXPECT_EQ(s.versions, 2);
  EXPECT_EQ(s.accepted, 6);
  EXPECT_NEAR(s.max_client_epsilon, one, 1e-9);
  const nlohmann::json c =
      parse_json_object(read_file(dir.path() + "/clients.json"), "clients.json");
  ASSERT_EQ(c["epsilon"].size(), 6u);
  for (const auto& e : c["epsilon"]) EXPECT_NEAR(e.get<double>(), one, 1e-9);
  EXPECT_EQ(c["delta"].get<double>(), 1e-5);
}

}  // namespace
}  // namespace strata::fed
