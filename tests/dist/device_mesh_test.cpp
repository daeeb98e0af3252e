// DeviceMesh and Communicator::split on thread ranks (gloo) and the self
// communicator.
#include <gtest/gtest.h>

#include "core/error.h"
#include "distributed/device_mesh.h"
#include "mesh_checks.h"
#include "thread_ranks.h"

namespace strata::dist {
namespace {

TEST(SplitPosition, OrdersMembersByKeyThenParentRank) {
  //               rank: 0  1  2  3  4  5
  std::vector<int64_t> colors{1, 0, 1, 0, 1, 1};
  std::vector<int64_t> keys{5, 0, 5, 9, 1, 0};
  EXPECT_EQ(split_position(colors, keys, 0), std::make_pair(2, 4));
  EXPECT_EQ(split_position(colors, keys, 2), std::make_pair(3, 4));  // tie: rank order
  EXPECT_EQ(split_position(colors, keys, 4), std::make_pair(1, 4));
  EXPECT_EQ(split_position(colors, keys, 5), std::make_pair(0, 4));
  EXPECT_EQ(split_position(colors, keys, 1), std::make_pair(0, 2));
  EXPECT_EQ(split_position(colors, keys, 3), std::make_pair(1, 2));
}

TEST(SelfCommunicator, CollectivesAreIdentitiesAndPointToPointIsAnError) {
  auto c = make_self_communicator("tp");
  EXPECT_EQ(c->size(), 1);
  EXPECT_EQ(c->name(), "tp");
  test::check_all_collectives(*c);
  at::Tensor t = at::ones({3});
  EXPECT_THROW(c->send(t, 0, 0), InternalError);
  EXPECT_THROW(c->broadcast(t, 1), InternalError);
}

TEST(GlooSplit, MakesIndependentSubgroupsAndSplitsAgain) {
  test::run_ranks(5, [](Communicator& world) {
    const int r = world.rank();
    // Odd/even, reversed order inside each group.
    auto parity = world.split(r % 2, -r, "parity");
    const int members = r % 2 ? 2 : 3;  // {1,3} and {0,2,4}
    EXPECT_EQ(parity->size(), members);
    EXPECT_EQ(parity->rank(), members - 1 - r / 2);
    EXPECT_EQ(parity->name(), "parity");
    test::check_all_collectives(*parity);
    // A second split of the same parent, and a split of the child, get
    // their own store namespaces.
    auto halves = world.split(r < 3 ? 0 : 1, r, "halves");
    EXPECT_EQ(halves->size(), r < 3 ? 3 : 2);
    test::check_all_collectives(*halves);
    auto single = parity->split(parity->rank(), 0, "one");
    EXPECT_EQ(single->size(), 1);
    EXPECT_STREQ(single->backend(), "self");
  });
}

TEST(DeviceMesh, TwoByTwoGroupsHoldTheRightRanks) {
  test::run_ranks_shared(4, [](std::shared_ptr<Communicator> world) {
    DeviceMesh mesh(world, {{dist::Axis::kData, 2}, {dist::Axis::kTensor, 2}});
    EXPECT_EQ(mesh.describe(), "dp=2 x tp=2");
    test::check_mesh_groups(mesh, {dist::Axis::kData, dist::Axis::kTensor}, {2, 2});
  });
}

TEST(DeviceMesh, ThreeAxesOverEightRanks) {
  test::run_ranks_shared(8, [](std::shared_ptr<Communicator> world) {
    DeviceMesh mesh(world, {{dist::Axis::kPipeline, 2}, {dist::Axis::kData, 2}, {dist::Axis::kTensor, 2}});
    test::check_mesh_groups(mesh, {dist::Axis::kPipeline, dist::Axis::kData, dist::Axis::kTensor}, {2, 2, 2});
  }, std::chrono::milliseconds(60000));
}

TEST(DeviceMesh, AxesOfOneAndOfTheWholeWorld) {
  test::run_ranks_shared(3, [](std::shared_ptr<Communicator> world) {
    DeviceMesh mesh(world, {{dist::Axis::kPipeline, 1}, {dist::Axis::kData, 3}, {dist::Axis::kTensor, 1}});
    EXPECT_EQ(mesh.group(dist::Axis::kData), world);  // no new connections
    EXPECT_STREQ(mesh.group(dist::Axis::kTensor)->backend(), "self");
    test::check_mesh_groups(mesh, {dist::Axis::kPipeline, dist::Axis::kData, dist::Axis::kTensor}, {1, 3, 1});
  });
}

TEST(DeviceMesh, OneProcessWithoutACommunicator) {
  DeviceMesh mesh(nullptr, {{dist::Axis::kData, 1}});
  EXPECT_EQ(mesh.size(), 1);
  EXPECT_EQ(mesh.group(dist::Axis::kData)->size(), 1);
  // An axis the mesh does not list is a group of one.
  EXPECT_EQ(mesh.size(dist::Axis::kTensor), 1);
  EXPECT_EQ(mesh.coord(dist::Axis::kTensor), 0);
  EXPECT_EQ(mesh.group(dist::Axis::kTensor)->size(), 1);
  EXPECT_FALSE(mesh.has(dist::Axis::kTensor));
}

TEST(DeviceMesh, SizeMismatchSaysTheNumbersAndTheFix) {
  test::run_ranks_shared(4, [](std::shared_ptr<Communicator> world) {
    try {
      DeviceMesh mesh(world, {{dist::Axis::kData, 3}, {dist::Axis::kTensor, 2}});
      ADD_FAILURE() << "no error";
    } catch (const ConfigError& e) {
      EXPECT_NE(std::string(e.what()).find(
                    "the device mesh dp=3 x tp=2 has 6 ranks but the job has 4; "
                    "launch 6 ranks"), std::string::npos) << e.what();
    }
  });
}

}  // namespace
}  // namespace strata::dist
