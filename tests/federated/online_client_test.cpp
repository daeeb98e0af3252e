// Federated online learning (issue #18): simulated clients' streams drift
// at their own points (federated.sim.drift), async clients count their
// prequential errors, federated.client.keep_local keeps a client's own
// tensors (an hbp client's alpha), and strata-fedsim reports the clients'
// online error in clients.json.
#include <gtest/gtest.h>

#include <numeric>
#include <set>

#include "core/error.h"
#include "core/fs.h"
#include "core/json.h"
#include "federated/fixture.h"
#include "federated/learner.h"
#include "federated/sim.h"
#include "test_util.h"
#include "trainer/recipe.h"
#include "trainer/trainer.h"

namespace strata::fed {
namespace {

// n toy images [n, 1, 4, 4] with labels i mod 10.
LocalData toy(int64_t n) {
  return {at::arange(n * 16, at::kFloat).view({n, 1, 4, 4}), at::arange(n, at::kLong) % 10};
}

train::LoadedData data_of(train::Task task, train::InputShape shape) {
  train::LoadedData d;
  d.task = task;
  d.shape = shape;
  return d;
}

const train::InputShape kToy{1, 4, 4, 10};

// pi_k of the client drift as a lookup table.
std::vector<int64_t> permutation_of(const ClientDrift& d, int64_t k) {
  at::Tensor x = at::zeros({10, 1, 4, 4});
  at::Tensor y = at::arange(10, at::kLong);
  d.concepts->apply(x, y, std::vector<int64_t>(10, k));
  return {y.data_ptr<int64_t>(), y.data_ptr<int64_t>() + 10};
}

TEST(ClientDrift, EachClientsStreamDriftsAtItsOwnPointsThroughTheSharedConcepts) {
  const train::Recipe r = train::parse_recipe(
      "", "t.yaml",
      {"federated.sim.drift=permute", "federated.sim.drift_every=40", "federated.sim.concepts=3"});
  const train::LoadedData data = data_of(train::Task::kClassification, kToy);
  std::set<std::vector<int64_t>> schedules;
  for (uint64_t seed : {5u, 6u, 7u}) {
    const auto drift = client_drift(r, data, seed);
    ASSERT_TRUE(drift.has_value());
    SampleStream plain(toy(64), 11);
    SampleStream drifting(toy(64), 11, drift);
    SampleStream again(toy(64), 11, drift);
    std::vector<int64_t> points;
    int64_t at = 0, last = 0;
    while (at < 400) {  // batches of 7 cross the drift points
      const LocalData a = plain.next(7), b = drifting.next(7), c = again.next(7);
      ASSERT_TRUE(at::equal(a.inputs, b.inputs));  // permute leaves the images
      ASSERT_TRUE(at::equal(b.targets, c.targets)) << "not deterministic";
      for (int64_t i = 0; i < 7; ++i, ++at) {
        const int64_t k = drifting.concept_at(at);
        if (k != last) {
          EXPECT_EQ(k, (last + 1) % 3) << "concepts cycle in order";
          points.push_back(at);
          last = k;
        }
        const int64_t y = a.targets[i].item<int64_t>();
        EXPECT_EQ(b.targets[i].item<int64_t>(), permutation_of(*drift, k)[static_cast<size_t>(y)])
            << "instance " << at << " in concept " << k;
      }
    }
    ASSERT_GE(points.size(), 6u);  // 400 instances, gaps of 20..60
    for (size_t i = 0; i < points.size(); ++i) {
      const int64_t gap = points[i] - (i == 0 ? 0 : points[i - 1]);
      EXPECT_GE(gap, 20);
      EXPECT_LE(gap, 60);
    }
    schedules.insert(points);
  }
  EXPECT_EQ(schedules.size(), 3u) << "clients share a drift schedule";
  // The concepts are the same for every client: pi_1 of two clients.
  EXPECT_EQ(permutation_of(*client_drift(r, data, 5), 1), permutation_of(*client_drift(r, data, 6), 1));
  EXPECT_NE(permutation_of(*client_drift(r, data, 5), 1), permutation_of(*client_drift(r, data, 5), 0));
}

TEST(ClientDrift, RotateTurnsTheImagesAndBadSettingsAreRecipeErrors) {
  const train::LoadedData images = data_of(train::Task::kClassification, kToy);
  const train::Recipe r = train::parse_recipe(
      "", "t.yaml",
      {"federated.sim.drift=rotate", "federated.sim.drift_every=10", "federated.sim.concepts=4"});
  SampleStream plain(toy(32), 3);
  SampleStream rotating(toy(32), 3, client_drift(r, images, 9));
  const LocalData a = plain.next(30), b = rotating.next(30);
  EXPECT_TRUE(at::equal(a.targets, b.targets));
  int64_t turned = 0;
  for (int64_t i = 0; i < 30; ++i) {
    const int64_t k = rotating.concept_at(i);
    turned += k > 0;
    EXPECT_TRUE(at::equal(b.inputs[i], at::rot90(a.inputs[i], k, {1, 2}))) << i;
  }
  EXPECT_GT(turned, 0);
  // Not square, more than 4 rotations, language modelling: exit 2 with the fix.
  EXPECT_THROW(client_drift(r, data_of(train::Task::kClassification, {1, 1, 50, 2}), 1),
               ConfigError);
  const train::Recipe five = train::parse_recipe(
      "", "t.yaml", {"federated.sim.drift=rotate", "federated.sim.concepts=5"});
  EXPECT_THROW(client_drift(five, images, 1), ConfigError);
  const train::Recipe lm = train::parse_recipe("", "t.yaml", {"federated.sim.drift=permute"});
  EXPECT_THROW(client_drift(lm, data_of(train::Task::kLanguageModel, kToy), 1), ConfigError);
  EXPECT_FALSE(client_drift(train::parse_recipe("", "t.yaml", {}), images, 1).has_value());
}

struct Fmnist {
  train::Registries reg = train::builtin_registries();
  train::LoadedData data;
  LocalData local;
  explicit Fmnist(const train::Recipe& r, int64_t n = 256) {
    data = reg.datasets.get("fashion_mnist", "", "").load(r, 0, 1);
    std::vector<int64_t> idx(static_cast<size_t>(n));
    std::iota(idx.begin(), idx.end(), 0);
    local = local_data(data, idx);
  }
  std::shared_ptr<train::Model> model(const train::Recipe& r) {
    torch::manual_seed(0);
    return reg.models.get(r.model.name, "", "").build(r.model, data.shape, train::ModelPart{});
  }
};

// An update of one step of 64: its online errors are the mistakes of the
// model it started from (the server's) on those 64 instances.
TEST(OnlineClient, PrequentialCountsAreTheStartingModelsMistakes) {
  test::TempDir dir;
  const train::Recipe r = small_recipe(dir.path(), {"data.batch_size=64", "optimizer.momentum=0"});
  Fmnist f(r);
  Learner learner(r, f.reg, f.model(r));
  const at::Tensor global = learner.layout().flatten(learner.model());
  SampleStream stream(f.local, 1), same(f.local, 1);
  const LocalData batch = same.next(64);
  int64_t mistakes = 0;
  {
    torch::NoGradGuard g;
    learner.model().train();
    mistakes = (learner.model().forward(batch.inputs).argmax(-1) != batch.targets)
                   .sum()
                   .item<int64_t>();
  }
  const LocalResult u = learner.learn_online(global, stream, 64, 0.0);
  EXPECT_EQ(u.online_instances, 64);
  EXPECT_EQ(u.online_errors, static_cast<double>(mistakes));
  EXPECT_GT(mistakes, 0);  // an untrained model
  // Sync updates (epochs over the same data) are not prequential.
  EXPECT_EQ(learner.train_epochs(global, f.local, 1, 1, 7, 0.0).online_instances, 0);
}

TEST(OnlineClient, KeepLocalStartsEachUpdateFromTheClientsOwnTensors) {
  test::TempDir dir;
  const train::Recipe plain_r = small_recipe(dir.path(), {"optimizer.momentum=0"});
  Fmnist f(plain_r);
  const TensorLayout layout = TensorLayout::of(*f.model(plain_r));
  const TensorSlot kept = layout.slots().at(1);
  const train::Recipe r = small_recipe(
      dir.path(), {"optimizer.momentum=0", "federated.client.keep_local=[" + kept.name + "]"});
  Learner own(r, f.reg, f.model(r)), shared(plain_r, f.reg, f.model(plain_r));
  const at::Tensor g = own.layout().flatten(own.model());
  const LocalResult first = own.train_epochs(g, f.local, 1, 1, 7, 0.0);
  ASSERT_TRUE(shared.train_epochs(g, f.local, 1, 1, 7, 0.0).delta.equal(first.delta));
  const at::Tensor trained = g + first.delta;
  // A new server model; zero epochs: the update is where the client starts.
  const at::Tensor g2 = g + 1.0;
  const at::Tensor start = own.train_epochs(g2, f.local, 0, 2, 7, 0.0).delta;
  const at::Tensor k = start.narrow(0, kept.offset, kept.numel);
  EXPECT_TRUE(at::allclose(k, (trained - g2).narrow(0, kept.offset, kept.numel)));
  EXPECT_EQ(start.count_nonzero().item<int64_t>(), k.count_nonzero().item<int64_t>())
      << "only the kept tensor is the client's own";
  EXPECT_EQ(shared.train_epochs(g2, f.local, 0, 2, 7, 0.0).delta.count_nonzero().item<int64_t>(), 0);
  const train::Recipe bad = small_recipe(dir.path(), {"federated.client.keep_local=[alhpa]"});
  try {
    Learner l(bad, f.reg, f.model(bad));
    FAIL() << "an unknown tensor name was accepted";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("its tensors: " + layout.slots()[0].name),
              std::string::npos)
        << e.what();
  }
}

// 4 async HBP clients on drifting streams, alpha kept local: every learned
// instance is counted, and clients.json holds what SimResult says.
TEST(FedSim, AsyncHbpClientsOnDriftingStreamsReportTheirOnlineError) {
  test::TempDir dir;
  const std::vector<std::string> o{
      "model.name=hbp", "model.hidden=[32]", "model.depth=3", "data.batch_size=1",
      "optimizer.momentum=0", "optimizer.lr=0.01", "federated.mode=async",
      "federated.sim.clients=4", "federated.sim.partition=iid", "federated.async.versions=6",
      "federated.async.buffer_size=2", "federated.async.samples_per_update=100",
      "federated.sim.drift=permute", "federated.sim.drift_every=150",
      "federated.client.keep_local=[alpha]"};
  const train::Recipe r = small_recipe(dir.path(), o);
  const SimResult s = run_fedsim(r, train::builtin_registries());
  EXPECT_EQ(s.versions, 6);
  ASSERT_EQ(s.client_online_error.size(), 4u);
  EXPECT_GT(s.online_error, 0.0);
  EXPECT_LT(s.online_error, 1.0);
  const nlohmann::json j = parse_json_object(read_file(dir.path() + "/clients.json"), "clients.json");
  EXPECT_DOUBLE_EQ(j["online_error_mean"].get<double>(), s.online_error);
  EXPECT_EQ(j["online_instances"].get<int64_t>(), s.online_instances);
  double submitted = 0, instances = 0;
  for (const auto& v : j["submitted"]) submitted += v.get<double>();
  for (const auto& v : j["instances"]) instances += v.get<double>();
  EXPECT_EQ(instances, static_cast<double>(s.online_instances));
  EXPECT_EQ(s.online_instances, 100 * static_cast<int64_t>(submitted));
  EXPECT_GE(submitted, 12);  // 6 versions of 2 updates

  // Recipe errors stop the simulation before any client starts.
  std::vector<std::string> bad = o;
  bad.push_back("federated.client.keep_local=[alpha, nope]");
  EXPECT_THROW(run_fedsim(small_recipe(dir.path() + "/bad", bad), train::builtin_registries()),
               ConfigError);
  bad = o;
  bad.insert(bad.end(), {"federated.sim.drift=rotate", "federated.sim.concepts=5"});
  EXPECT_THROW(run_fedsim(small_recipe(dir.path() + "/bad2", bad), train::builtin_registries()),
               ConfigError);
}

}  // namespace
}  // namespace strata::fed
