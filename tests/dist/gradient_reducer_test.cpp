// Data parallelism: bucket layout, equivalence with single-process training,
// gradient accumulation, overlap, unused parameters, compression hooks.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <mutex>

#include "core/error.h"
#include "distributed/gradient_reducer.h"
#include "thread_ranks.h"

namespace strata::dist {
namespace {

using strata::test::run_ranks_shared;

std::mutex g_construct;  // torch's default generator is process-wide

torch::nn::Sequential make_net(uint64_t seed) {
  std::lock_guard<std::mutex> lock(g_construct);
  torch::manual_seed(seed);
  return torch::nn::Sequential(torch::nn::Linear(20, 32), torch::nn::Tanh(),
                               torch::nn::Linear(32, 16), torch::nn::Tanh(),
                               torch::nn::Linear(16, 4));
}

std::vector<std::pair<std::string, at::Tensor>> named(torch::nn::Module& m) {
  std::vector<std::pair<std::string, at::Tensor>> out;
  for (auto& p : m.named_parameters()) out.emplace_back(p.key(), p.value());
  return out;
}

// Fixed data: step s uses rows [s*N*B, (s+1)*N*B) of X and y.
struct Data {
  at::Tensor x, y;
  Data(int64_t rows) {
    auto g = at::make_generator<at::CPUGeneratorImpl>(123);
    x = at::randn({rows, 20}, g);
    y = at::randint(0, 4, {rows}, g);
  }
};

// Single process, full batch: the reference.
std::vector<at::Tensor> train_reference(const Data& d, int steps, int64_t batch) {
  auto net = make_net(7);
  torch::optim::SGD opt(net->parameters(), torch::optim::SGDOptions(0.1).momentum(0.9));
  for (int s = 0; s < steps; ++s) {
    opt.zero_grad();
    auto xb = d.x.slice(0, s * batch, (s + 1) * batch);
    auto yb = d.y.slice(0, s * batch, (s + 1) * batch);
    torch::nn::functional::cross_entropy(net->forward(xb), yb).backward();
    opt.step();
  }
  std::vector<at::Tensor> out;
  for (auto& p : net->parameters()) out.push_back(p.detach().clone());
  return out;
}

// Rank r's share of step s: rows r*B .. (r+1)*B of the step's N*B rows, so
// the mean over ranks of the per-rank mean loss is the global mean loss.
void train_rank(const Data& d, int steps, int64_t B, Communicator& c,
                torch::nn::Sequential& net, GradientReducer& reducer,
                int accum = 1) {
  torch::optim::SGD opt(net->parameters(), torch::optim::SGDOptions(0.1).momentum(0.9));
  const int64_t N = c.size();
  for (int s = 0; s < steps; ++s) {
    opt.zero_grad();
    const int64_t base = s * N * B + c.rank() * B;
    const int64_t micro = B / accum;
    for (int m = 0; m < accum; ++m) {
      auto xb = d.x.slice(0, base + m * micro, base + (m + 1) * micro);
      auto yb = d.y.slice(0, base + m * micro, base + (m + 1) * micro);
      auto loss = torch::nn::functional::cross_entropy(net->forward(xb), yb) / accum;
      if (m + 1 < accum) {
        GradientReducer::NoSync no_sync(reducer);
        loss.backward();
      } else {
        loss.backward();
      }
    }
    reducer.finish();
    opt.step();
  }
}

std::vector<at::Tensor> params_of(torch::nn::Module& m) {
  std::vector<at::Tensor> out;
  for (auto& p : m.parameters()) out.push_back(p.detach().clone());
  return out;
}

// Every rank's parameters, gathered, are bitwise identical.
void expect_identical_across_ranks(Communicator& c, torch::nn::Module& net) {
  for (auto& p : net.parameters()) {
    std::vector<at::Tensor> all;
    for (int r = 0; r < c.size(); ++r) all.push_back(at::empty_like(p));
    c.all_gather(all, p.detach())->wait();
    for (int r = 1; r < c.size(); ++r) EXPECT_TRUE(at::equal(all[0], all[r]));
  }
}

class DataParallel : public ::testing::TestWithParam<int> {};

TEST_P(DataParallel, MatchesSingleProcessWithTheGlobalBatch) {
  const int world = GetParam();
  const int steps = 5;
  const int64_t B = 8;
  Data d(steps * world * B);
  const auto expected = train_reference(d, steps, world * B);
  run_ranks_shared(world, [&](std::shared_ptr<Communicator> c) {
    // Rank 0 holds the reference weights; the others differ until the broadcast.
    auto net = make_net(c->rank() == 0 ? 7 : 100 + c->rank());
    broadcast_parameters(*net, *c);
    GradientReducerOptions o;
    o.bucket_cap_bytes = 1024;  // several buckets
    o.first_bucket_bytes = 256;
    GradientReducer reducer(named(*net), c, o);
    EXPECT_GT(reducer.buckets().size(), 2u);
    train_rank(d, steps, B, *c, net, reducer);
    auto got = params_of(*net);
    for (size_t i = 0; i < got.size(); ++i) {
      EXPECT_TRUE(at::allclose(got[i], expected[i], /*rtol=*/0, /*atol=*/1e-5))
          << "param " << i << " max diff "
          << (got[i] - expected[i]).abs().max().item<float>();
    }
    expect_identical_across_ranks(*c, *net);
  });
}

TEST_P(DataParallel, NoSyncAccumulationCommunicatesOnceAndMatches) {
  const int world = GetParam();
  const int steps = 3;
  const int64_t B = 8;
  Data d(steps * world * B);
  const auto expected = train_reference(d, steps, world * B);
  run_ranks_shared(world, [&](std::shared_ptr<Communicator> c) {
    auto net = make_net(7);
    GradientReducer reducer(named(*net), c, {});
    train_rank(d, steps, B, *c, net, reducer, /*accum=*/4);
    auto got = params_of(*net);
    for (size_t i = 0; i < got.size(); ++i) {
      EXPECT_TRUE(at::allclose(got[i], expected[i], 0, 1e-5)) << i;
    }
  });
}

INSTANTIATE_TEST_SUITE_P(WorldSizes, DataParallel, ::testing::Values(1, 2, 3, 4));

TEST(GradientReducer, BucketsFollowReverseRegistrationOrderAndCaps) {
  // Parameter bytes: w0 2560, b0 128, w1 2048, b1 64, w2 256, b2 16.
  auto net = make_net(1);
  GradientReducerOptions o;
  o.first_bucket_bytes = 300;  // b2 + w2 = 272 B fit; adding b1 would not
  o.bucket_cap_bytes = 2200;   // b1 + w1 = 2112 B fit; b0 + w0 = 2688 B not
  run_ranks_shared(1, [&](std::shared_ptr<Communicator> c) {
    GradientReducer r(named(*net), c, o);
    std::vector<std::vector<size_t>> layout;
    for (const auto& b : r.buckets()) layout.push_back(b.params);
    EXPECT_EQ(layout, (std::vector<std::vector<size_t>>{
                          {5, 4}, {3, 2}, {1}, {0}}));
    EXPECT_EQ(r.buckets()[0].bytes, 4 * 4 + 64 * 4);
  });
}

TEST(GradientReducer, FirstBucketLaunchesBeforeBackwardFinishes) {
  run_ranks_shared(2, [&](std::shared_ptr<Communicator> c) {
    auto net = make_net(3);
    GradientReducerOptions o;
    o.first_bucket_bytes = 64;
    o.bucket_cap_bytes = 256;
    GradientReducer r(named(*net), c, o);
    auto x = at::randn({4, 20});
    net->forward(x).sum().backward();
    r.finish();
    const int64_t total = static_cast<int64_t>(net->parameters().size());
    ASSERT_GT(r.buckets().size(), 1u);
    // Bucket 0 (the last layer) went out when only its own gradients existed.
    EXPECT_LT(r.buckets()[0].hooks_before_launch, total);
    EXPECT_EQ(r.buckets()[0].hooks_before_launch,
              static_cast<int64_t>(r.buckets()[0].params.size()));
  });
}

TEST(GradientReducer, UnusedParameterIsNamedUnlessAllowed) {
  run_ranks_shared(2, [&](std::shared_ptr<Communicator> c) {
    auto net = make_net(3);
    auto params = named(*net);
    auto extra = torch::zeros({3}, torch::requires_grad());
    params.emplace_back("extra.weight", extra);
    {
      GradientReducer r(params, c, {});
      net->forward(at::randn({2, 20})).sum().backward();
      try {
        r.finish();
        ADD_FAILURE() << "unused parameter not reported";
      } catch (const ConfigError& e) {
        EXPECT_NE(std::string(e.what()).find("1 parameter(s) got no gradient "
                                             "this step (extra.weight)"),
                  std::string::npos) << e.what();
      }
    }
    GradientReducerOptions o;
    o.allow_unused = true;
    GradientReducer r(params, c, o);
    for (auto& p : net->parameters()) p.mutable_grad() = at::Tensor();
    net->forward(at::randn({2, 20})).sum().backward();
    r.finish();
    EXPECT_TRUE(at::equal(extra.grad(), at::zeros({3})));
  });
}

TEST(GradientReducer, CompressionHooksStayClose) {
  for (CommHook hook : {CommHook::kFp16, CommHook::kBf16}) {
    const int steps = 3;
    const int64_t B = 8;
    Data d(steps * 2 * B);
    const auto expected = train_reference(d, steps, 2 * B);
    run_ranks_shared(2, [&](std::shared_ptr<Communicator> c) {
      auto net = make_net(7);
      GradientReducerOptions o;
      o.hook = hook;
      GradientReducer r(named(*net), c, o);
      train_rank(d, steps, B, *c, net, r);
      auto got = params_of(*net);
      for (size_t i = 0; i < got.size(); ++i) {
        EXPECT_TRUE(at::allclose(got[i], expected[i], 0, 2e-2)) << i;
      }
      expect_identical_across_ranks(*c, *net);
    });
  }
}

}  // namespace
}  // namespace strata::dist

#include "trainer/amp.h"

namespace strata::dist {
namespace {

// Note [Mixed precision]: unscaling after the all-reduce makes every rank
// see an overflow that happened on one rank only, so all skip together.
TEST(GradientReducer, LossScalerSkipsOnEveryRankWhenOneRankOverflows) {
  run_ranks_shared(3, [&](std::shared_ptr<Communicator> c) {
    auto net = make_net(7);
    GradientReducer r(named(*net), c, GradientReducerOptions{});
    train::LossScaler scaler(train::LossScalerOptions{true, 1024.0});
    Data d(8);
    at::Tensor x = d.x.clone();
    if (c->rank() == 1) x.index_put_({0, 0}, NAN);  // only this rank overflows
    torch::nn::functional::cross_entropy(net->forward(x), d.y).backward();
    r.finish();
    EXPECT_FALSE(scaler.unscale(net->parameters())) << "rank " << c->rank();
    EXPECT_FALSE(scaler.update());
    EXPECT_DOUBLE_EQ(scaler.scale(), 512.0);
  });
}

}  // namespace
}  // namespace strata::dist

#include "trainer/activation_checkpoint.h"
#include "trainer/trainer.h"

namespace strata::dist {
namespace {

// Checkpointed blocks produce their parameters' gradients inside a
// reentrant backward; the reducer still sees each exactly once (it asserts
// so) and the averaged gradients equal the plain data-parallel run's.
TEST(GradientReducer, ActivationCheckpointingReducesEachGradientOnce) {
  auto grads_with = [](const std::string& policy) {
    std::vector<std::vector<at::Tensor>> out(2);
    std::mutex mu;
    run_ranks_shared(2, [&](std::shared_ptr<Communicator> c) {
      train::ModelSection m;
      m.name = "gpt";
      m.n_layer = 3;
      m.n_head = 2;
      m.d_model = 16;
      m.seq_len = 8;
      std::shared_ptr<train::Model> net;
      {
        std::lock_guard<std::mutex> lock(g_construct);
        torch::manual_seed(5);
        net = train::builtin_registries().models.get("gpt", "", "").build(m, train::InputShape{1, 1, 1, 256}, {});
      }
      // A checkpointed backward restores the shared generator's state: no
      // rank may run one while another still draws its initial weights.
      c->barrier()->wait();
      net->set_checkpointing(train::checkpoint_plan(policy, 2, net->checkpoint_units(), "t"));
      std::vector<std::pair<std::string, at::Tensor>> params;
      for (auto& p : net->named_parameters()) params.emplace_back(p.key(), p.value());
      GradientReducerOptions o;
      o.first_bucket_bytes = 4096;  // several buckets, launched during backward
      GradientReducer r(params, c, o);
      auto g = at::make_generator<at::CPUGeneratorImpl>(100 + c->rank());
      at::Tensor x = at::randint(0, 256, {2, 8}, g).to(at::kLong);
      at::Tensor logits = net->forward(x);
      torch::nn::functional::cross_entropy(logits.reshape({-1, 256}), x.reshape({-1})).backward();
      r.finish();
      std::lock_guard<std::mutex> lock(mu);
      for (auto& p : net->parameters()) out[c->rank()].push_back(p.grad().clone());
    });
    return out;
  };
  const auto plain = grads_with("none");
  const auto ckpt = grads_with("full");
  for (int rank = 0; rank < 2; ++rank) {
    ASSERT_EQ(plain[rank].size(), ckpt[rank].size());
    for (size_t i = 0; i < plain[rank].size(); ++i) {
      EXPECT_TRUE(at::allclose(plain[rank][i], ckpt[rank][i], 1e-5, 1e-7)) << i;
      EXPECT_TRUE(at::equal(ckpt[rank][i], ckpt[0][i])) << "ranks differ at " << i;
    }
  }
}

}  // namespace
}  // namespace strata::dist
