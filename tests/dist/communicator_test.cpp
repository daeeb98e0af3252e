// Every collective against a single-process reference, for world sizes 1-4
// and several dtypes; failure paths by message text.
#include <gtest/gtest.h>

#include <future>

#include "core/error.h"
#include "distributed/communicator.h"
#include "thread_ranks.h"

namespace strata::dist {
namespace {

using strata::test::run_ranks;

// Rank r's input: a deterministic tensor that differs per rank.
at::Tensor input(int rank, at::ScalarType dtype, int64_t n = 37) {
  return (at::arange(n, at::kDouble) * (rank + 1) - 3 * rank).to(dtype);
}

class Collectives : public ::testing::TestWithParam<int> {};

TEST_P(Collectives, AllReduceMatchesReference) {
  const int world = GetParam();
  for (auto dtype : {at::kFloat, at::kDouble, at::kLong, at::kHalf, at::kBFloat16}) {
    // 16-bit floats: inputs are integers <= 144, sums <= 360; fp16 holds them
    // exactly, bf16 to 8 bits of mantissa, averages round in both.
    const double rtol = dtype == at::kHalf ? 1e-3 : dtype == at::kBFloat16 ? 1e-2 : 1e-5;
    std::vector<at::Tensor> all;
    for (int r = 0; r < world; ++r) all.push_back(input(r, dtype));
    at::Tensor stacked = at::stack(all);
    for (ReduceOp op : {ReduceOp::kSum, ReduceOp::kMax, ReduceOp::kMin, ReduceOp::kAvg}) {
      if (op == ReduceOp::kAvg && dtype == at::kLong) continue;
      at::Tensor expected =
          op == ReduceOp::kSum   ? stacked.sum(0)
          : op == ReduceOp::kMax ? std::get<0>(stacked.max(0))
          : op == ReduceOp::kMin ? std::get<0>(stacked.min(0))
                                 : stacked.sum(0) / world;
      run_ranks(world, [&](Communicator& c) {
        at::Tensor t = input(c.rank(), dtype);
        c.all_reduce(t, op)->wait();
        EXPECT_TRUE(at::allclose(t.to(at::kDouble), expected.to(dtype).to(at::kDouble), rtol))
            << reduce_op_name(op) << " " << dtype << " rank " << c.rank();
      });
    }
  }
}

TEST_P(Collectives, BroadcastFromEveryRoot) {
  const int world = GetParam();
  for (int root = 0; root < world; ++root) {
    run_ranks(world, [&](Communicator& c) {
      at::Tensor t = input(c.rank(), at::kFloat);
      c.broadcast(t, root)->wait();
      EXPECT_TRUE(at::equal(t, input(root, at::kFloat)));
    });
  }
}

TEST_P(Collectives, AllGatherAndReduceScatter) {
  const int world = GetParam();
  run_ranks(world, [&](Communicator& c) {
    std::vector<at::Tensor> out;
    for (int r = 0; r < world; ++r) out.push_back(at::empty({37}, at::kDouble));
    c.all_gather(out, input(c.rank(), at::kDouble))->wait();
    for (int r = 0; r < world; ++r) {
      EXPECT_TRUE(at::equal(out[r], input(r, at::kDouble)));
    }
    // Rank r receives sum over ranks q of q's chunk r: (q+1)*(r+1).
    std::vector<at::Tensor> chunks;
    for (int r = 0; r < world; ++r) {
      chunks.push_back(at::full({5}, double((c.rank() + 1) * (r + 1))));
    }
    at::Tensor mine = at::empty({5}, at::kDouble);
    c.reduce_scatter(mine, chunks, ReduceOp::kSum)->wait();
    const double expected = (c.rank() + 1) * world * (world + 1) / 2.0;
    EXPECT_TRUE(at::equal(mine, at::full({5}, expected, at::kDouble)));
  });
}

TEST_P(Collectives, SendRecvRingAndBarrier) {
  const int world = GetParam();
  if (world == 1) GTEST_SKIP() << "no peer";
  run_ranks(world, [&](Communicator& c) {
    const int next = (c.rank() + 1) % world;
    const int prev = (c.rank() + world - 1) % world;
    at::Tensor got = at::empty({37}, at::kFloat);
    auto s = c.send(input(c.rank(), at::kFloat), next, /*tag=*/7);
    auto r = c.recv(got, prev, /*tag=*/7);
    s->wait();
    r->wait();
    EXPECT_TRUE(at::equal(got, input(prev, at::kFloat)));
    c.barrier()->wait();
  });
}

INSTANTIATE_TEST_SUITE_P(WorldSizes, Collectives, ::testing::Values(1, 2, 3, 4));

TEST(Communicator, StalledPeerTimesOutWithOpGroupAndRank) {
  std::string message;
  std::promise<void> rank0_done;
  std::shared_future<void> released = rank0_done.get_future().share();
  run_ranks(2, [&](Communicator& c) {
    if (c.rank() == 1) {  // stays connected but never joins the all_reduce
      released.wait();
      return;
    }
    at::Tensor t = at::ones({4});
    try {
      c.all_reduce(t, ReduceOp::kSum)->wait();
      ADD_FAILURE() << "all_reduce with a stalled peer returned";
    } catch (const TimeoutError& e) {
      message = e.what();
    }
    rank0_done.set_value();
  }, std::chrono::milliseconds(1500));
  EXPECT_NE(message.find("all_reduce on group 'world' (rank 0/2) timed out "
                         "after 1.5 s"),
            std::string::npos) << message;
}

TEST(Communicator, DeadPeerFailsFastNamingTheOperation) {
  std::string message;
  run_ranks(2, [&](Communicator& c) {
    if (c.rank() == 1) return;  // exits: its connections close
    at::Tensor t = at::ones({4});
    try {
      c.all_reduce(t, ReduceOp::kSum)->wait();
      ADD_FAILURE() << "all_reduce with a dead peer returned";
    } catch (const CommError& e) {
      message = e.what();
    }
  }, std::chrono::milliseconds(60000));  // must not need the timeout
  EXPECT_NE(message.find("all_reduce on group 'world' (rank 0/2) failed"),
            std::string::npos) << message;
  EXPECT_NE(message.find("check the other ranks' logs"), std::string::npos);
}

TEST(Communicator, BadRankIsAConfigError) {
  GlooOptions o;
  o.store = make_memory_store();
  o.rank = 2;
  o.size = 2;
  EXPECT_THROW(make_gloo_communicator(o), ConfigError);
}

}  // namespace
}  // namespace strata::dist
