// Every collective against a single-process reference, for world sizes 1-4
// and several dtypes; failure paths by message text.
#include <gtest/gtest.h>

#include <future>

#include "core/error.h"
#include "distributed/communicator.h"
#include "collective_checks.h"
#include "thread_ranks.h"

namespace strata::dist {
namespace {

using strata::test::run_ranks;

class Collectives : public ::testing::TestWithParam<int> {};

TEST_P(Collectives, AllReduceMatchesReference) {
  run_ranks(GetParam(), [](Communicator& c) { test::check_all_reduce(c); });
}

TEST_P(Collectives, BroadcastFromEveryRoot) {
  run_ranks(GetParam(), [](Communicator& c) { test::check_broadcast(c); });
}

TEST_P(Collectives, AllGatherAndReduceScatter) {
  run_ranks(GetParam(), [](Communicator& c) {
    test::check_all_gather_and_reduce_scatter(c);
  });
}

TEST_P(Collectives, SendRecvRingAndBarrier) {
  run_ranks(GetParam(), [](Communicator& c) {
    test::check_send_recv_and_barrier(c);
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
