// GPU tests: the nccl backend at world size 1 (one GPU cannot host two NCCL
// ranks), the gradient reducer over NCCL on CUDA tensors, and strata-train on
// run.device: cuda against the same run on the CPU. Every test skips cleanly
// where LibTorch has no CUDA or no GPU is visible (CI).
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "core/error.h"
#include "core/json.h"
#include "dist/collective_checks.h"
#include "distributed/communicator.h"
#include "distributed/gradient_reducer.h"
#include "strata/config.h"
#include "test_util.h"
#include "trainer/device.h"

namespace strata {
namespace {

#define STRATA_SKIP_WITHOUT_GPU()                                         \
  if (train::cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device: " \
      << (at::hasCUDA() ? "none visible" : "LibTorch built without CUDA")

#if STRATA_TORCH_CUDA
std::shared_ptr<dist::Communicator> nccl_world_of_one() {
  dist::TcpStoreOptions so;
  so.is_server = true;
  so.world = 1;
  dist::NcclOptions o;
  o.store = dist::make_tcp_store(so);
  o.timeout = std::chrono::seconds(60);
  return dist::make_nccl_communicator(o);
}
#endif

TEST(Nccl, EveryCollectiveAtWorldSizeOne) {
  STRATA_SKIP_WITHOUT_GPU();
#if STRATA_TORCH_CUDA
  auto c = nccl_world_of_one();
  EXPECT_STREQ(c->backend(), "nccl");
  test::check_all_collectives(*c, at::Device(at::kCUDA, 0));
  // A sub-communicator (the DeviceMesh path) is a working nccl group too.
  auto sub = c->split(/*color=*/0, /*key=*/0, "sub");
  ASSERT_EQ(sub->size(), 1);
  test::check_all_reduce(*sub, at::Device(at::kCUDA, 0));
#endif
}

TEST(Nccl, GradientReducerMatchesLocalGradientsOnCuda) {
  STRATA_SKIP_WITHOUT_GPU();
#if STRATA_TORCH_CUDA
  const at::Device gpu(at::kCUDA, 0);
  torch::manual_seed(3);
  torch::nn::Sequential net(torch::nn::Linear(64, 128), torch::nn::ReLU(),
                            torch::nn::Linear(128, 10));
  net->to(gpu);
  const at::Tensor x = at::randn({32, 64}).to(gpu);
  const at::Tensor y = at::randint(0, 10, {32}).to(at::kLong).to(gpu);
  auto loss = [&] { return torch::nn::functional::cross_entropy(net->forward(x), y); };

  loss().backward();
  std::vector<at::Tensor> local;
  for (auto& p : net->parameters()) {
    local.push_back(p.grad().clone());
    p.mutable_grad() = at::Tensor();
  }
  auto comm = nccl_world_of_one();
  dist::broadcast_parameters(*net, *comm);
  std::vector<std::pair<std::string, at::Tensor>> named;
  for (auto& p : net->named_parameters()) named.emplace_back(p.key(), p.value());
  dist::GradientReducerOptions o;
  o.bucket_cap_bytes = 16 << 10;  // several buckets
  o.first_bucket_bytes = 4 << 10;
  dist::GradientReducer reducer(named, comm, o);
  EXPECT_GT(reducer.buckets().size(), 1u);
  loss().backward();
  reducer.finish();
  auto params = net->parameters();
  for (size_t i = 0; i < params.size(); ++i) {
    EXPECT_TRUE(params[i].grad().is_cuda());
    EXPECT_TRUE(at::allclose(params[i].grad(), local[i], 1e-6, 1e-7)) << i;
  }
#endif
}

// The CNN recipe on the GPU learns as on the CPU, and its checkpoint resumes
// on the CPU (tensors are mapped to the resuming run's device).
TEST(StrataTrainCuda, CnnOnCudaMatchesCpuAndResumesOnCpu) {
  STRATA_SKIP_WITHOUT_GPU();
  test::TempDir dir;
  const std::string base = std::string(STRATA_TRAIN_BIN) + " " + STRATA_SOURCE_DIR +
                           "/recipes/fashion_mnist.yaml data.train_subset=6400"
                           " data.test_subset=2000 data.batch_size=64 train.epochs=1"
                           " run.log_every=25 checkpoint.every_steps=50";
  auto gpu = test::run_command(base + " run.device=cuda run.dir=" + dir / "gpu");
  ASSERT_EQ(gpu.exit_code, 0) << gpu.output;
  EXPECT_NE(gpu.output.find("on cuda:0"), std::string::npos) << gpu.output;
  auto cpu = test::run_command(base + " run.device=cpu run.dir=" + dir / "cpu");
  ASSERT_EQ(cpu.exit_code, 0) << cpu.output;
  auto summary = [](const std::string& run) {
    const auto acc = test::json_text(test::read_lines(run + "/metrics.jsonl").back(), "accuracy");
    EXPECT_TRUE(acc.has_value());
    return std::stod(acc.value_or("nan"));
  };
  const double a_gpu = summary(dir / "gpu"), a_cpu = summary(dir / "cpu");
  EXPECT_GT(a_gpu, 0.70);
  // Same seed, data and maths; cuDNN's kernels differ in rounding only.
  EXPECT_NEAR(a_gpu, a_cpu, 0.03);

  // Two more epochs from the GPU run's checkpoint, on the CPU.
  auto resumed = test::run_command(base + " train.epochs=2 train.resume=auto"
                                   " run.device=cpu run.dir=" + dir / "gpu");
  ASSERT_EQ(resumed.exit_code, 0) << resumed.output;
  EXPECT_NE(resumed.output.find("resumed from"), std::string::npos) << resumed.output;
}

TEST(Device, BadSpecsAreRecipeErrors) {
  EXPECT_THROW(train::resolve_device("gpu0", 0, "recipe.yaml"), ConfigError);
  EXPECT_THROW(train::resolve_device("cuda:x", 0, "recipe.yaml"), ConfigError);
  EXPECT_EQ(train::resolve_device("cpu", 0, "recipe.yaml"), at::Device(at::kCPU));
  if (train::cuda_device_count() == 0) {
    EXPECT_EQ(train::resolve_device("auto", 0, "recipe.yaml"), at::Device(at::kCPU));
    try {
      train::resolve_device("cuda", 0, "recipe.yaml");
      FAIL() << "cuda without a GPU must be an error";
    } catch (const ConfigError& e) {
      EXPECT_NE(std::string(e.what()).find("run.device: cpu"), std::string::npos) << e.what();
    }
  } else {
    EXPECT_THROW(train::resolve_device("cuda:99", 0, "recipe.yaml"), ConfigError);
  }
}

}  // namespace
}  // namespace strata
