// 3D parallelism as real processes: strata-train under mpirun with
// dp x tp x pp = 2 x 2 x 2 against one process with the global batch (fp32;
// and bf16 with activation checkpointing and distillation); sharded
// checkpoints, their consolidation, resuming in the same and in another
// layout; layout errors by message.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "core/fs.h"
#include "core/json.h"
#include "test_util.h"

namespace {

using strata::test::read_lines;
using strata::test::run_command;
using strata::test::TempDir;

const std::string kBin = STRATA_TRAIN_BIN;
const std::string kRecipe = std::string(STRATA_SOURCE_DIR) + "/recipes/gpt_tp2_pp2.yaml";
const std::string kMpirun =
    "OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 "
    "mpirun --oversubscribe --bind-to none ";

// A small GPT (fp32, no dropout) for a few steps: layouts agree up to float
// summation order. `batch` is per data-parallel rank.
std::string run(const std::string& dir, int batch, int steps, int tp, int pp) {
  return kRecipe + " run.dir=" + dir + " run.threads=1 model.n_layer=2 model.d_model=64"
         " model.seq_len=32 data.train_subset=200000 data.test_subset=64"
         " data.batch_size=" + std::to_string(batch) +
         " train.max_steps=" + std::to_string(steps) +
         " run.log_every=1 train.eval_every=1000 checkpoint.every_steps=2"
         " schedule.warmup_steps=2 distributed.tensor_parallel=" + std::to_string(tp) +
         " distributed.pipeline_parallel.stages=" + std::to_string(pp);
}

std::vector<double> train_losses(const std::string& metrics) {
  std::vector<double> out;
  for (const auto& l : read_lines(metrics)) {
    const auto loss = strata::test::json_text(l, "loss");
    if (strata::test::json_text(l, "kind") == "train" && loss) out.push_back(std::stod(*loss));
  }
  return out;
}

void expect_same_model(const std::string& a_path, const std::string& b_path, double atol) {
  auto a = strata::test::load_state_dict(a_path);
  auto b = strata::test::load_state_dict(b_path);
  ASSERT_EQ(a.size(), b.size()) << a_path << " vs " << b_path;
  for (const auto& item : a) {
    ASSERT_TRUE(b.contains(item.key())) << item.key().toStringRef();
    at::Tensor x = item.value().toTensor();
    at::Tensor y = b.at(item.key()).toTensor();
    ASSERT_EQ(x.sizes(), y.sizes()) << item.key().toStringRef();
    EXPECT_TRUE(at::allclose(x, y, /*rtol=*/0, atol))
        << item.key().toStringRef() << " max diff " << (x - y).abs().max().item<float>();
  }
}

class ThreeD : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new TempDir();
    serial_ = run_command(kBin + " " + run(*dir_ / "serial", 16, 4, 1, 1));
    three_d_ = run_command(kMpirun + "-np 8 " + kBin + " " + run(*dir_ / "3d", 8, 4, 2, 2));
  }
  static void TearDownTestSuite() { delete dir_; }
  static TempDir* dir_;
  static strata::test::CommandResult serial_, three_d_;
};
TempDir* ThreeD::dir_ = nullptr;
strata::test::CommandResult ThreeD::serial_, ThreeD::three_d_;

TEST_F(ThreeD, TwoByTwoByTwoMatchesTheSerialRun) {
  ASSERT_EQ(serial_.exit_code, 0) << serial_.output;
  ASSERT_EQ(three_d_.exit_code, 0) << three_d_.output;
  EXPECT_NE(three_d_.output.find("device mesh pp=2 x dp=2 x tp=2"), std::string::npos)
      << three_d_.output;
  const auto want = train_losses(*dir_ / "serial/metrics.jsonl");
  const auto got = train_losses(*dir_ / "3d/metrics.jsonl");  // world rank 0 alone writes
  ASSERT_EQ(want.size(), 4u);
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < want.size(); ++i) EXPECT_NEAR(got[i], want[i], 1e-5) << "step " << i + 1;
  // model.pt: the full model, consolidated from the shards.
  expect_same_model(*dir_ / "serial/model.pt", *dir_ / "3d/model.pt", 1e-5);
}

TEST_F(ThreeD, ShardedCheckpointsConsolidateIntoTheFullModel) {
  ASSERT_EQ(three_d_.exit_code, 0) << three_d_.output;
  const std::string ckpt = *dir_ / "3d/checkpoints/step_00000004";
  for (const char* f : {"metadata.json", "model-pp0-tp0.pt", "model-pp0-tp1.pt",
                        "model-pp1-tp0.pt", "model-pp1-tp1.pt", "train-pp1-tp1.pt",
                        "split-pp1-tp1.json"}) {
    EXPECT_TRUE(strata::path_exists(strata::join_path(ckpt, f))) << f;
  }
  auto c = run_command(kBin + " --consolidate " + ckpt + " " + (*dir_ / "full.pt"));
  ASSERT_EQ(c.exit_code, 0) << c.output;
  expect_same_model(*dir_ / "3d/model.pt", *dir_ / "full.pt", 0);
  auto bad = run_command(kBin + " --consolidate " + (*dir_ / "3d/checkpoints") + " x.pt");
  EXPECT_EQ(bad.exit_code, 1) << bad.output;
  EXPECT_NE(bad.output.find("not a complete sharded checkpoint"), std::string::npos) << bad.output;
}

TEST_F(ThreeD, ResumesInTheSameLayoutAndInOthersLikeTheUninterruptedRun) {
  ASSERT_EQ(three_d_.exit_code, 0) << three_d_.output;
  // Same layout: stop at step 2, go on to 4 = the uninterrupted run.
  TempDir d;
  auto first = run_command(kMpirun + "-np 8 " + kBin + " " + run(d / "r", 8, 2, 2, 2));
  ASSERT_EQ(first.exit_code, 0) << first.output;
  auto second = run_command(kMpirun + "-np 8 " + kBin + " " + run(d / "r", 8, 4, 2, 2));
  ASSERT_EQ(second.exit_code, 0) << second.output;
  EXPECT_NE(second.output.find("resumed from"), std::string::npos) << second.output;
  expect_same_model(*dir_ / "3d/model.pt", d / "r/model.pt", 1e-6);

  // Another layout (one process): step 2's weights and AdamW state, cut
  // for it, and on to step 4 = the uninterrupted runs (which agree).
  strata::make_dirs(d / "one/checkpoints");
  ASSERT_EQ(run_command("cp -r " + (*dir_ / "3d/checkpoints/step_00000002") + " " +
                        (d / "one/checkpoints/")).exit_code, 0);
  auto one = run_command(kBin + " " + run(d / "one", 16, 4, 1, 1));
  ASSERT_EQ(one.exit_code, 0) << one.output;
  EXPECT_NE(one.output.find("loaded its weights and optimizer state into tp=1 x pp=1"),
            std::string::npos) << one.output;
  expect_same_model(*dir_ / "serial/model.pt", d / "one/model.pt", 1e-5);
  // And into tp = 2 x pp = 1 (two processes): the same.
  strata::make_dirs(d / "tp2/checkpoints");
  ASSERT_EQ(run_command("cp -r " + (*dir_ / "3d/checkpoints/step_00000002") + " " +
                        (d / "tp2/checkpoints/")).exit_code, 0);
  auto tp2 = run_command(kMpirun + "-np 2 " + kBin + " " + run(d / "tp2", 16, 4, 2, 1));
  ASSERT_EQ(tp2.exit_code, 0) << tp2.output;
  expect_same_model(*dir_ / "serial/model.pt", d / "tp2/model.pt", 1e-5);
  const auto ref = train_losses(*dir_ / "3d/metrics.jsonl");
  const auto losses = train_losses(d / "tp2/metrics.jsonl");  // steps 3 and 4
  ASSERT_EQ(losses.size(), 2u);
  EXPECT_NEAR(losses[0], ref[2], 1e-5);
  EXPECT_NEAR(losses[1], ref[3], 1e-5);
}

TEST_F(ThreeD, MixedPrecisionCheckpointingAndDistillationStillWork) {
  ASSERT_EQ(serial_.exit_code, 0) << serial_.output;
  // The serial run's model as the teacher; bf16 autocast, every block
  // recomputed in backward.
  const std::string extra =
      " train.precision=bf16 train.activation_checkpointing=full distill.teacher=" +
      (*dir_ / "serial/model.pt") +
      " distill.teacher_model.name=gpt distill.teacher_model.n_layer=2"
      " distill.teacher_model.d_model=64 distill.teacher_model.n_head=4"
      " distill.teacher_model.seq_len=32";
  TempDir d;
  auto one = run_command(kBin + " " + run(d / "one", 16, 3, 1, 1) + extra);
  ASSERT_EQ(one.exit_code, 0) << one.output;
  auto three = run_command(kMpirun + "-np 8 " + kBin + " " + run(d / "3d", 8, 3, 2, 2) + extra);
  ASSERT_EQ(three.exit_code, 0) << three.output;
  const auto want = train_losses(d / "one/metrics.jsonl");
  const auto got = train_losses(d / "3d/metrics.jsonl");
  ASSERT_EQ(want.size(), 3u);
  ASSERT_EQ(got.size(), want.size());
  // bf16 rounding differs with the split; the distillation loss is ~2.8.
  for (size_t i = 0; i < want.size(); ++i) EXPECT_NEAR(got[i], want[i], 5e-3) << "step " << i + 1;
}

TEST(Layout, ErrorsGiveTheNumbersAndTheFix) {
  TempDir d;
  auto r = run_command(kBin + " " + run(d / "a", 8, 1, 2, 1));
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_NE(r.output.find("the job has 1 rank(s), not a multiple of "
                          "distributed.tensor_parallel (2) x distributed.pipeline_parallel."
                          "stages (1) = 2; launch a multiple of 2 ranks"),
            std::string::npos) << r.output;
  r = run_command(kBin + " " + run(d / "b", 8, 1, 1, 1) + " distributed.pipeline_parallel.layers=[1,3]");
  EXPECT_EQ(r.exit_code, 0) << r.output;  // stages = 1: layers unused
  r = run_command(kMpirun + "-np 2 " + kBin + " " + run(d / "c", 8, 1, 1, 2) +
                  " distributed.pipeline_parallel.layers=[1,2]");
  EXPECT_NE(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("must give each of the 2 stages at least one of the 4 layers"),
            std::string::npos) << r.output;
  r = run_command(kMpirun + "-np 2 " + kBin + " " + std::string(STRATA_SOURCE_DIR) +
                  "/recipes/fashion_mnist.yaml run.dir=" + (d / "e") +
                  " distributed.tensor_parallel=2");
  EXPECT_NE(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("model.name=cnn has no tensor-parallel layers"), std::string::npos)
      << r.output;
}

}  // namespace
