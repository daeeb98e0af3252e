// Collectives and data parallelism as real processes under mpirun, for both
// CPU backends: gloo (rendezvous over MPI) and mpi.
//
//   mpirun -np N build/bin/mpirun_test      (ctest runs N = 1..4)
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "collective_checks.h"
#include "mesh_checks.h"
#include "distributed/device_mesh.h"
#include "distributed/gradient_reducer.h"
#include "distributed/mpi_bootstrap.h"
#include "distributed/mpi_communicator.h"
#include "distributed/world.h"

namespace strata::dist {
namespace {

MpiSession* g_mpi = nullptr;  // set by main() for the process's lifetime

std::shared_ptr<Communicator> make(const std::string& backend) {
  const RankInfo info = discover_ranks();
  if (backend == "mpi") return make_mpi_communicator({});
  auto store = g_mpi->rendezvous(info, std::chrono::milliseconds(30000));
  return connect_world(info, store, {});
}

class Backends : public ::testing::TestWithParam<std::string> {};

TEST_P(Backends, EveryCollectiveMatchesTheReference) {
  auto c = make(GetParam());
  ASSERT_EQ(c->size(), discover_ranks().world);
  test::check_all_collectives(*c);
}

TEST_P(Backends, ReducerAveragesGradientsExactly) {
  auto c = make(GetParam());
  // Parameter k's gradient on rank r is (r + 1) * (k + 1): the average over
  // n ranks is (n + 1) / 2 * (k + 1).
  std::vector<std::pair<std::string, at::Tensor>> params;
  for (int k = 0; k < 5; ++k) {
    params.emplace_back("p" + std::to_string(k),
                        at::zeros({1000 * (k + 1)}).requires_grad_());
  }
  GradientReducerOptions o;
  o.bucket_cap_bytes = 8000;
  o.first_bucket_bytes = 4000;
  GradientReducer reducer(params, c, o);
  at::Tensor loss = at::zeros({});
  for (int k = 0; k < 5; ++k) {
    loss = loss + params[k].second.sum() * double((c->rank() + 1) * (k + 1));
  }
  loss.backward();
  reducer.finish();
  const double n = c->size();
  for (int k = 0; k < 5; ++k) {
    EXPECT_TRUE(at::allclose(params[k].second.grad(),
                             at::full({1000 * (k + 1)}, (n + 1) / 2 * (k + 1))))
        << GetParam() << " param " << k;
  }
}

TEST_P(Backends, DeviceMeshGroupsHoldTheRightRanks) {
  auto c = make(GetParam());
  // dp x tp = 2 x (n/2) for even n, the whole world on dp otherwise.
  const int n = c->size();
  const std::vector<int> sizes = n % 2 == 0 ? std::vector<int>{n / 2, 2}
                                            : std::vector<int>{n, 1};
  DeviceMesh mesh(c, {{dist::Axis::kData, sizes[0]}, {dist::Axis::kTensor, sizes[1]}});
  test::check_mesh_groups(mesh, {dist::Axis::kData, dist::Axis::kTensor}, sizes);
}

INSTANTIATE_TEST_SUITE_P(CpuBackends, Backends, ::testing::Values("gloo", "mpi"));

TEST(MpiBackend, CommSplitMakesIndependentSubgroups) {
  const RankInfo info = discover_ranks();
  MpiCommOptions o;
  o.name = "parity";
  o.color = info.rank % 2;
  auto sub = make_mpi_communicator(o);
  EXPECT_EQ(sub->size(), (info.world + 1 - o.color) / 2);
  EXPECT_EQ(sub->rank(), info.rank / 2);
  at::Tensor t = at::full({3}, double(info.rank));
  sub->all_reduce(t, ReduceOp::kSum)->wait();
  double expected = 0;
  for (int r = o.color; r < info.world; r += 2) expected += r;
  EXPECT_TRUE(at::equal(t, at::full({3}, expected)));
  test::check_all_collectives(*sub);
}

}  // namespace
}  // namespace strata::dist

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  strata::dist::MpiSession mpi;
  strata::dist::g_mpi = &mpi;
  return RUN_ALL_TESTS();
}
