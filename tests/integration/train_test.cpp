// strata-train as a user runs it: the run directory contract, exit codes and
// messages, the SIGKILL-and-resume bitwise-equality guarantee, and stopping
// on signals with a checkpoint (Note [Stopping together]).
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <torch/serialize.h>
#include <torch/script.h>
#include <torch/torch.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <regex>

#include <nlohmann/json.hpp>

#include "core/fs.h"
#include "core/json.h"
#include "trainer/checkpoint.h"
#include "trainer/data/idx.h"
#include "trainer/data/text.h"
#include "trainer/edge_model.h"
#include "child_process.h"
#include "test_util.h"

namespace {

using strata::test::read_lines;
using strata::test::run_command;
using strata::test::TempDir;

const std::string kBin = STRATA_TRAIN_BIN;
const std::string kBinDir = kBin.substr(0, kBin.rfind('/') + 1);  // strata-export's too
const std::string kRecipes = std::string(STRATA_SOURCE_DIR) + "/recipes/";

// A short MLP run that exercises augmentation, dropout (RNG state), gradient
// accumulation, momentum, warmup + cosine and mid-epoch checkpoints.
std::string small_run(const std::string& dir) {
  return kBin + " " + kRecipes + "fashion_mnist.yaml run.dir=" + dir +
         " model.name=mlp model.hidden=[512,256] model.dropout=0.1"
         " data.train_subset=6000 data.test_subset=1000 data.batch_size=50"
         " data.augment.crop_padding=2 train.grad_accum=2 train.epochs=3"
         " run.threads=1 run.log_every=5 schedule.warmup_steps=10"
         " checkpoint.every_steps=25 checkpoint.keep=3";
}

std::string field(const std::string& line, const std::string& key) {
  const auto v = strata::test::json_text(line, key);
  EXPECT_TRUE(v.has_value()) << key << " in " << line;
  return v.value_or("");
}

// The accuracy of a finished run's last record (its summary).
double final_accuracy(const std::string& run_dir) {
  return std::stod(field(read_lines(run_dir + "/metrics.jsonl").back(), "accuracy"));
}

TEST(StrataTrain, WritesTheRunDirectoryContract) {
  TempDir dir;
  auto r = run_command(small_run(dir / "run") + " train.epochs=1");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("final test accuracy"), std::string::npos);
  for (const char* f : {"recipe.yaml", "metrics.jsonl", "model.pt"}) {
    EXPECT_TRUE(strata::path_exists(dir / "run/" + f)) << f;
  }
  EXPECT_FALSE(strata::train::CheckpointStore(dir / "run/checkpoints", 1).newest().empty());
  auto lines = read_lines(dir / "run/metrics.jsonl");
  ASSERT_GE(lines.size(), 3u);
  int train = 0, eval = 0;
  for (const auto& l : lines) {
    const std::string kind = field(l, "kind");
    if (kind == "train") {
      ++train;
      for (const char* k : {"step", "epoch", "loss", "lr", "samples_per_s", "time_s"})
        field(l, k);
    }
    if (kind == "eval") {
      ++eval;
      for (const char* k : {"step", "split", "loss", "accuracy", "time_s"}) field(l, k);
    }
  }
  EXPECT_EQ(train, 12);  // 6000 / 50 / grad_accum 2 = 60 steps, one every 5
  EXPECT_GE(eval, 1);
  const std::string& summary = lines.back();
  EXPECT_EQ(field(summary, "kind"), "summary");
  EXPECT_GT(std::stod(field(summary, "accuracy")), 0.70);  // it learns
  field(summary, "wall_s");
  // The saved recipe is complete and reproduces the run's settings.
  auto again = run_command(kBin + " " + dir / "run/recipe.yaml --print-recipe");
  ASSERT_EQ(again.exit_code, 0) << again.output;
  EXPECT_EQ(again.output, strata::read_file(dir / "run/recipe.yaml"));
}

// recipes/gpt_tiny.yaml, shrunk: a byte-level GPT on the fortunes text
// learns (validation perplexity from 256, uniform bytes, to below 16)
// and logs tokens/s and perplexity.
TEST(StrataTrain, GptLearnsBytesOfText) {
  TempDir dir;
  auto r = run_command(kBin + " " + kRecipes + "gpt_tiny.yaml run.dir=" + dir / "run" +
                       " model.n_layer=2 model.n_head=2 model.d_model=64 model.seq_len=64"
                       " data.batch_size=16 data.test_subset=64 train.max_steps=200"
                       " train.eval_every=100 schedule.warmup_steps=20 run.log_every=50");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("final validation loss"), std::string::npos) << r.output;
  std::vector<double> ppl;
  for (const auto& l : read_lines(dir / "run/metrics.jsonl")) {
    const std::string kind = field(l, "kind");
    if (kind == "train") field(l, "tokens_per_s");
    if (kind == "eval") ppl.push_back(std::stod(field(l, "perplexity")));
  }
  ASSERT_EQ(ppl.size(), 2u);
  EXPECT_LT(ppl[1], ppl[0]);
  EXPECT_LT(ppl[1], 16.0);  // below unigram byte statistics (~25): it uses context
  EXPECT_TRUE(strata::path_exists(dir / "run/model.pt"));
}

// A teacher run's model.pt distils into a smaller student from the
// command line; the student learns, and its int8 export reports teacher,
// student and compressed student side by side.
TEST(StrataTrain, DistilsFromATeachersModelPt) {
  TempDir dir;
  const std::string base = kBin + " " + kRecipes + "fashion_mnist_mlp.yaml data.train_subset=6000"
                           " data.test_subset=1000 train.epochs=2 run.threads=2";
  auto t = run_command(base + " model.hidden=[128] run.dir=" + dir / "teacher");
  ASSERT_EQ(t.exit_code, 0) << t.output;
  auto s = run_command(base + " model.hidden=[16] run.dir=" + dir / "student" +
                       " distill.teacher=" + dir / "teacher/model.pt" +
                       " distill.teacher_model.name=mlp distill.teacher_model.hidden=[128]"
                       " distill.alpha=0.5 distill.temperature=4");
  ASSERT_EQ(s.exit_code, 0) << s.output;
  EXPECT_NE(s.output.find("distilling from"), std::string::npos) << s.output;
  const double student_acc =
      final_accuracy(dir / "student");
  EXPECT_GT(student_acc, 0.7);

  // Compressed, the export puts teacher, student and compressed student side by side.
  auto e = run_command(kBinDir + "strata-export " + dir / "student" +
                       " --format torchscript --quantize dynamic");
  ASSERT_EQ(e.exit_code, 0) << e.output;
  EXPECT_NE(e.output.find("distilled from"), std::string::npos) << e.output;
  const auto report = nlohmann::json::parse(strata::read_file(dir / "student/export.json"));
  const auto& rows = report["distillation"]["models"];
  ASSERT_EQ(rows.size(), 3u) << report.dump();
  EXPECT_EQ(rows[0]["model"], "teacher");
  EXPECT_EQ(rows[0]["accuracy"].get<double>(),
            final_accuracy(dir / "teacher"));
  EXPECT_EQ(rows[1]["accuracy"].get<double>(), student_acc);
  EXPECT_EQ(rows[2]["accuracy"].get<double>(), report["accuracy_int8"].get<double>());
  EXPECT_GT(rows[0]["parameters"].get<int64_t>(), rows[1]["parameters"].get<int64_t>());
  EXPECT_GT(rows[0]["file_bytes"].get<int64_t>(), rows[1]["file_bytes"].get<int64_t>());
  EXPECT_GT(rows[1]["file_bytes"].get<int64_t>(), rows[2]["file_bytes"].get<int64_t>());

  auto bad = run_command(base + " run.dir=" + dir / "bad distill.teacher=" + dir / "teacher/model.pt" +
                         " distill.teacher_model.name=mlp");  // default hidden [256,128]
  EXPECT_EQ(bad.exit_code, 2) << bad.output;
  EXPECT_NE(bad.output.find("set teacher_model"), std::string::npos) << bad.output;
}

TEST(StrataTrain, DistilsWithFeatureHintsAndResumesTheirProjections) {
  TempDir dir;
  const std::string base = kBin + " " + kRecipes + "fashion_mnist.yaml data.train_subset=2000"
                           " data.test_subset=500 run.threads=2 model.fc=32";
  auto t = run_command(base + " train.epochs=1 model.channels=[8,16] run.dir=" + dir / "teacher");
  ASSERT_EQ(t.exit_code, 0) << t.output;
  const std::string student = base + " model.channels=[4,8] run.dir=" + dir / "student" +
                              " distill.teacher=" + dir / "teacher/model.pt" +
                              " distill.teacher_model.name=cnn distill.teacher_model.channels=[8,16]"
                              " distill.teacher_model.fc=32 distill.hints=stage1:stage1,stage2:stage2";
  auto s = run_command(student + " train.epochs=1");
  ASSERT_EQ(s.exit_code, 0) << s.output;
  EXPECT_NE(s.output.find("distillation hints stage1:stage1,stage2:stage2"), std::string::npos)
      << s.output;
  // The projections are in the checkpoint (the resume reads them back) but
  // not in model.pt, which holds the student alone.
  auto resumed = run_command(student + " train.epochs=2");
  ASSERT_EQ(resumed.exit_code, 0) << resumed.output;
  EXPECT_NE(resumed.output.find("resumed from"), std::string::npos) << resumed.output;
  for (const auto& [name, tensor] : strata::train::load_state_dict(dir / "student/model.pt")) {
    EXPECT_EQ(name.find("proj"), std::string::npos) << name;
  }
  EXPECT_GT(final_accuracy(dir / "student"), 0.5);
  auto mlp = run_command(kBin + " " + kRecipes + "fashion_mnist_mlp.yaml run.dir=" + dir / "mlp" +
                         " distill.teacher=" + dir / "teacher/model.pt" +
                         " distill.teacher_model.name=cnn distill.teacher_model.channels=[8,16]"
                         " distill.teacher_model.fc=32 distill.hints=stage1:stage1");
  EXPECT_EQ(mlp.exit_code, 2) << mlp.output;
  EXPECT_NE(mlp.output.find("this model has: none"), std::string::npos) << mlp.output;
}

TEST(StrataTrain, GptWithImagesIsARecipeError) {
  auto r = run_command(kBin + " " + kRecipes + "fashion_mnist.yaml model.name=gpt");
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.output.find("use data.name=text"), std::string::npos) << r.output;
}

TEST(StrataTrain, UnknownDatasetExitsTwoListingTheRegisteredOnes) {
  auto r = run_command(kBin + " " + kRecipes + "fashion_mnist.yaml data.name=cifar");
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.output.find("data.name: unknown dataset 'cifar'"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("Registered: fashion_mnist, text, tokens"), std::string::npos)
      << r.output;
}

TEST(StrataTrain, MisspeltOverrideExitsTwoAndSuggests) {
  auto r = run_command(kBin + " " + kRecipes + "fashion_mnist.yaml optimizer.lrr=0.1");
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.output.find("unknown key 'optimizer.lrr'; did you mean "
                          "'optimizer.lr'?"),
            std::string::npos) << r.output;
}

TEST(StrataTrain, MisspeltRecipeKeyExitsTwoWithFileAndLine) {
  TempDir dir;
  strata::test::write_text(dir / "bad.yaml",
                           "model:\n  name: cnn\noptimizer:\n  lrr: 0.1\n");
  auto r = run_command(kBin + " " + dir / "bad.yaml");
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.output.find(dir / "bad.yaml:4: unknown key 'optimizer.lrr'; "
                                "did you mean 'optimizer.lr'?"),
            std::string::npos) << r.output;
  EXPECT_EQ(r.output.find("terminate called"), std::string::npos);
}

TEST(StrataTrain, UsageAndRuntimeErrorsHaveTheirExitCodes) {
  EXPECT_EQ(run_command(kBin).exit_code, 2);
  EXPECT_EQ(run_command(kBin + " --frobnicate x.yaml").exit_code, 2);
  EXPECT_EQ(run_command(kBin + " /nonexistent.yaml").exit_code, 2);
  TempDir dir;
  auto r = run_command(kBin + " " + kRecipes + "fashion_mnist.yaml data.root=" +
                       dir.path() + " run.dir=" + dir / "run");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.output.find("apt-get install dataset-fashion-mnist"),
            std::string::npos) << r.output;
}

TEST(StrataTrain, NeverResumeRefusesToOverwriteCheckpoints) {
  TempDir dir;
  ASSERT_EQ(run_command(small_run(dir / "run") + " train.max_steps=5").exit_code, 0);
  auto r = run_command(small_run(dir / "run") + " train.resume=never");
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.output.find("already holds checkpoints"), std::string::npos)
      << r.output;
  EXPECT_FALSE(strata::train::CheckpointStore(dir / "run/checkpoints", 1).newest().empty());
}

void expect_same_run(const std::string& a_dir, const std::string& b_dir) {
  auto a = strata::test::load_state_dict(a_dir + "/model.pt");
  auto b = strata::test::load_state_dict(b_dir + "/model.pt");
  ASSERT_EQ(a.size(), b.size());
  for (const auto& item : b) {
    const std::string name = item.key().toStringRef();
    ASSERT_TRUE(a.contains(name)) << name;
    EXPECT_TRUE(at::equal(a.at(name).toTensor(), item.value().toTensor()))
        << name << " differs from the uninterrupted run";
  }
  auto ma = read_lines(a_dir + "/metrics.jsonl");
  auto mb = read_lines(b_dir + "/metrics.jsonl");
  ASSERT_EQ(ma.size(), mb.size());
  for (size_t i = 0; i + 1 < ma.size(); ++i) {
    EXPECT_EQ(field(ma[i], "kind"), field(mb[i], "kind"));
    EXPECT_EQ(field(ma[i], "step"), field(mb[i], "step"));
    // train/eval records: the loss; prune records: the sparsity reached.
    const char* value = field(ma[i], "kind") == "prune" ? "sparsity" : "loss";
    EXPECT_EQ(field(ma[i], value), field(mb[i], value)) << ma[i];
  }
}

std::string step_dir(int64_t step) {
  char name[32];
  std::snprintf(name, sizeof(name), "step_%08lld", static_cast<long long>(step));
  return name;
}

// The step of "stopped at step N of ...", -1 when absent.
int64_t stopped_step(const std::string& output) {
  std::smatch m;
  static const std::regex re("stopped at step ([0-9]+) of");
  return std::regex_search(output, m, re) ? std::stoll(m[1]) : -1;
}

struct Signalled {
  int status = -1;     // the wait status (-1: still running after 120 s)
  std::string output;  // stdout and stderr
};

// Starts `command`, waits until its output holds `needle` `count` times (at
// most 120 s), sends it `sig` and waits for it to exit (at most 120 s).
Signalled signal_after(const std::string& command, const std::string& needle, int count,
                       int sig) {
  using namespace std::chrono_literals;
  strata::test::ChildProcess run(command);
  run.wait_output(needle, count, 120s);
  run.signal(sig);
  const auto status = run.wait_exit(120s);
  return {status.value_or(-1), run.output()};
}

TEST(StrataTrain, SigkillAndResumeIsBitwiseEqualToAnUninterruptedRun) {
  TempDir dir;
  const int status = signal_after(small_run(dir / "killed"), "saved checkpoint", 2, SIGKILL).status;
  ASSERT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL)
      << "the run finished before it could be killed";
  ASSERT_FALSE(strata::path_exists(dir / "killed/model.pt"));

  auto resumed = run_command(small_run(dir / "killed"));  // train.resume: auto
  ASSERT_EQ(resumed.exit_code, 0) << resumed.output;
  EXPECT_NE(resumed.output.find("resumed from"), std::string::npos);
  auto straight = run_command(small_run(dir / "straight"));
  ASSERT_EQ(straight.exit_code, 0) << straight.output;

  expect_same_run(dir / "killed", dir / "straight");
}

// Runs `extra`'s small run killed after its second checkpoint and resumed,
// and uninterrupted, and checks that both end alike (expect_same_run);
// returns the uninterrupted run's output.
std::string expect_kill_and_resume_bitwise(TempDir& dir, const std::string& extra) {
  const int status =
      signal_after(small_run(dir / "killed") + extra, "saved checkpoint", 2, SIGKILL).status;
  EXPECT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL)
      << "the run finished before it could be killed";
  auto resumed = run_command(small_run(dir / "killed") + extra);
  EXPECT_EQ(resumed.exit_code, 0) << resumed.output;
  EXPECT_NE(resumed.output.find("resumed from"), std::string::npos);
  auto straight = run_command(small_run(dir / "straight") + extra);
  EXPECT_EQ(straight.exit_code, 0) << straight.output;
  expect_same_run(dir / "killed", dir / "straight");
  return straight.output;
}

TEST(StrataTrain, PruningMasksSurviveAKillAndResumeBitwise) {
  TempDir dir;
  expect_kill_and_resume_bitwise(
      dir, " train.prune.sparsity=0.8 train.prune.start_step=10 train.prune.every=20");
  if (HasFailure()) return;

  // 80% of the matrices' weights are zero in model.pt; no bias is pruned.
  auto model = strata::test::load_state_dict(dir / "straight/model.pt");
  int64_t weights = 0, zero = 0;
  for (const auto& item : model) {
    const at::Tensor t = item.value().toTensor();
    if (t.dim() >= 2) {
      weights += t.numel();
      zero += t.eq(0).sum().item<int64_t>();
    } else if (t.is_floating_point() && t.numel() > 1) {
      EXPECT_LT(t.eq(0).sum().item<int64_t>(), t.numel()) << item.key().toStringRef();
    }
  }
  EXPECT_EQ(zero, static_cast<int64_t>(0.8 * static_cast<double>(weights))) << weights;
  const auto lines = read_lines(dir / "straight/metrics.jsonl");
  std::string last_prune;
  for (const auto& l : lines) {
    if (field(l, "kind") == "prune") last_prune = l;
  }
  EXPECT_NE(last_prune.find("\"target\":0.8"), std::string::npos) << last_prune;
  EXPECT_NE(last_prune.find("\"net.0.weight\":"), std::string::npos) << last_prune;
}

TEST(StrataTrain, StructuredPruningSurvivesAKillAndResumesBitwiseAndExportsASmallerModel) {
  TempDir dir;
  expect_kill_and_resume_bitwise(
      dir, " model.name=cnn model.channels=[8,16] model.fc=32 train.prune.sparsity=0.5"
           " train.prune.structure=channels train.prune.scope=layer train.prune.start_step=10"
           " train.prune.every=20");
  if (HasFailure()) return;
  // Half of each layer's channels are zero rows, with their BatchNorm entries.
  auto model = strata::test::load_state_dict(dir / "straight/model.pt");
  auto zero_rows = [&](const std::string& name) {
    return model.at(name).toTensor().flatten(1).eq(0).all(1);
  };
  const at::Tensor conv0 = zero_rows("features.0.weight");
  EXPECT_EQ(conv0.sum().item<int64_t>(), 4);
  EXPECT_TRUE(at::equal(model.at("features.1.weight").toTensor().eq(0), conv0));
  EXPECT_TRUE(at::equal(model.at("features.1.bias").toTensor().eq(0), conv0));
  EXPECT_EQ(zero_rows("features.4.weight").sum().item<int64_t>(), 8);
  EXPECT_EQ(zero_rows("classifier.0.weight").sum().item<int64_t>(), 16);
  std::string last_prune;
  for (const auto& l : read_lines(dir / "straight/metrics.jsonl")) {
    if (field(l, "kind") == "prune") last_prune = l;
  }
  EXPECT_NE(last_prune.find("\"channels\":56,\"layers\":{\"features.0.weight\":0.5"),
            std::string::npos) << last_prune;

  // The export deletes them: a smaller dense TorchScript model with the
  // model's accuracy.
  auto exported = run_command(kBinDir + "strata-export " + dir / "straight" + " --format torchscript");
  ASSERT_EQ(exported.exit_code, 0) << exported.output;
  EXPECT_NE(exported.output.find("structured pruning: 28 of 56 channels deleted in 3 layers"),
            std::string::npos) << exported.output;
  std::smatch m;
  ASSERT_TRUE(std::regex_search(exported.output, m,
                                std::regex("test accuracy ([0-9.]+) \\(model ([0-9.]+)\\)")))
      << exported.output;
  EXPECT_NEAR(std::stod(m[1]), std::stod(m[2]), 0.002);
  torch::jit::Module back = torch::jit::load(dir / "straight/model.torchscript.pt");
  const at::Tensor y = back.forward({torch::zeros({3, 1, 28, 28})}).toTensor();
  EXPECT_EQ(y.sizes(), (std::vector<int64_t>{3, 10}));
  const auto report = nlohmann::json::parse(strata::read_file(dir / "straight/export.json"));
  ASSERT_EQ(report["pruned_channels"].size(), 3u);
  EXPECT_EQ(report["pruned_channels"][0]["kept"], 4);
  EXPECT_LT(report["file_bytes"].get<int64_t>(), report["file_bytes_unpruned"].get<int64_t>() / 2);
  // --keep-channels writes the model as trained.
  auto kept = run_command(kBinDir + "strata-export " + dir / "straight" +
                          " --format torchscript --keep-channels");
  ASSERT_EQ(kept.exit_code, 0) << kept.output;
  EXPECT_EQ(kept.output.find("structured pruning"), std::string::npos) << kept.output;
}

// The strata-int8 package runs on the edge without the run: strata-edge
// infer on IDX and image files, and the SDK class it uses.
TEST(StrataTrain, StrataInt8PackageRunsInStrataEdgeInferAndTheSdk) {
  const std::string edge = kBinDir + "strata-edge";
  if (!strata::path_exists(edge)) GTEST_SKIP() << "built without the federated extension";
  TempDir dir;
  auto r = run_command(small_run(dir / "run") +
                       " model.name=cnn model.channels=[8,16] model.fc=32 train.epochs=1");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  auto e = run_command(kBinDir + "strata-export " + dir / "run" + " --format strata-int8");
  ASSERT_EQ(e.exit_code, 0) << e.output;
  const std::string package = dir / "run/model.strata-int8";
  const auto report = nlohmann::json::parse(strata::read_file(dir / "run/export.json"));
  const auto correct = static_cast<int64_t>(
      std::llround(report["accuracy_int8"].get<double>() * 1000));  // data.test_subset=1000

  // The test set's first 1000 images (the run's evaluation subset): the
  // accuracy strata-export measured.
  const std::string data = "/usr/share/datasets/fashion-mnist/";
  auto infer = run_command(edge + " infer " + package + " " + data +
                           "t10k-images-idx3-ubyte.gz --labels " + data +
                           "t10k-labels-idx1-ubyte.gz --limit 1000 --quiet");
  ASSERT_EQ(infer.exit_code, 0) << infer.output;
  EXPECT_NE(infer.output.find("strata-int8 (static int8"), std::string::npos) << infer.output;
  EXPECT_NE(infer.output.find("(" + std::to_string(correct) + " of 1000"), std::string::npos)
      << infer.output << " want " << correct;

  // Image 17 as a PGM file: the class the IDX run gave it.
  const strata::train::IdxArray images = strata::train::read_idx(data + "t10k-images-idx3-ubyte.gz");
  auto pgm = [&](const std::string& path, int64_t width) {
    std::string bytes = "P5\n" + std::to_string(width) + " 28\n255\n";
    for (int64_t y = 0; y < 28; ++y) {
      for (int64_t x = 0; x < width; ++x) {
        bytes += static_cast<char>(images.data[static_cast<size_t>(17 * 784 + y * 28 + std::min<int64_t>(x, 27))]);
      }
    }
    strata::atomic_write_file(path, bytes);
  };
  pgm(dir / "seventeen.pgm", 28);
  auto all = run_command(edge + " infer " + package + " " + data + "t10k-images-idx3-ubyte.gz --limit 18");
  ASSERT_EQ(all.exit_code, 0) << all.output;
  std::smatch m;
  ASSERT_TRUE(std::regex_search(all.output, m, std::regex("\\[17\\]: ([0-9]+) \\(([0-9.]+)\\)")))
      << all.output;
  auto one = run_command(edge + " infer " + package + " " + dir / "seventeen.pgm --top 3");
  ASSERT_EQ(one.exit_code, 0) << one.output;
  EXPECT_NE(one.output.find("seventeen.pgm: " + m[1].str() + " (" + m[2].str() + ")"),
            std::string::npos) << one.output;

  // The SDK: the same model, shape checks, raw pixels normalised as in training.
  strata::train::EdgeModel sdk(package);
  EXPECT_EQ(sdk.input_shape(), (std::vector<int64_t>{1, 28, 28}));
  EXPECT_EQ(sdk.manifest()["int8"]["scheme"], "static");
  const at::Tensor pixels =
      at::from_blob(const_cast<uint8_t*>(images.data.data()), {18, 28, 28}, at::kByte).clone();
  const auto predictions = sdk.classify(sdk.from_pixels(pixels), 2);
  ASSERT_EQ(predictions.size(), 18u);
  EXPECT_EQ(std::to_string(predictions[17][0].label), m[1].str());
  EXPECT_GE(predictions[17][0].probability, predictions[17][1].probability);
  EXPECT_THROW(sdk.forward(torch::zeros({2, 28, 28})), strata::UsageError);

  // Bad input: exit 2, naming the problem.
  pgm(dir / "narrow.pgm", 27);
  auto narrow = run_command(edge + " infer " + package + " " + dir / "narrow.pgm");
  EXPECT_EQ(narrow.exit_code, 2) << narrow.output;
  EXPECT_NE(narrow.output.find("is 27x28 pixels; the model takes 28x28"), std::string::npos)
      << narrow.output;
  torch::jit::Module plain("plain");
  plain.save(dir / "plain.pt");
  auto foreign = run_command(edge + " infer " + dir / "plain.pt " + dir / "seventeen.pgm");
  EXPECT_EQ(foreign.exit_code, 2) << foreign.output;
  EXPECT_NE(foreign.output.find("has no strata.json"), std::string::npos) << foreign.output;
  auto missing = run_command(edge + " infer " + dir / "none.strata-int8 " + dir / "seventeen.pgm");
  EXPECT_EQ(missing.exit_code, 2) << missing.output;
}

TEST(StrataTrain, QuantizationAwareTrainingSurvivesAKillAndResumesBitwise) {
  // The cnn (BatchNorm folded while training, frozen at step 100),
  // observers frozen at step 120; killed after the second checkpoint.
  TempDir dir;
  const std::string out = expect_kill_and_resume_bitwise(
      dir, " model.name=cnn model.channels=[8,16] model.fc=32 train.qat.enabled=true"
           " train.qat.start_step=20 train.qat.freeze_observer_step=120"
           " train.qat.freeze_bn_step=100");
  if (HasFailure()) return;
  EXPECT_NE(out.find("activations fake-quantized to int8"), std::string::npos) << out;
  const auto a = strata::train::load_state_dict(dir / "killed/qat.pt");
  const auto b = strata::train::load_state_dict(dir / "straight/qat.pt");
  ASSERT_EQ(a.size(), b.size());
  ASSERT_GE(a.size(), 4u);  // the input and each layer's output
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_EQ(a[i].first, b[i].first);
    EXPECT_TRUE(at::equal(a[i].second, b[i].second)) << a[i].first;
  }

  // The int8 model converted with the learned ranges scores what the QAT
  // graph's evaluation scored: the run's final accuracy.
  auto exported = run_command(kBinDir + "strata-export " + dir / "straight" +
                              " --format torchscript --quantize qat");
  ASSERT_EQ(exported.exit_code, 0) << exported.output;
  std::smatch m;
  ASSERT_TRUE(std::regex_search(exported.output, m, std::regex("test accuracy ([0-9.]+)")))
      << exported.output;
  const double int8 = std::stod(m[1]);
  const std::string summary = read_lines(dir / "straight/metrics.jsonl").back();
  const double qat_acc = std::stod(field(summary, "accuracy"));
  EXPECT_NEAR(int8, qat_acc, 0.003) << exported.output;
}

TEST(StrataTrain, QatExportOfARunWithoutQatIsAUsageError) {
  TempDir dir;
  auto r = run_command(small_run(dir / "run") + " train.epochs=1");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  auto e = run_command(kBinDir + "strata-export " + dir / "run" + " --format torchscript --quantize qat");
  EXPECT_EQ(e.exit_code, 2) << e.output;
  EXPECT_NE(e.output.find("has no qat.pt"), std::string::npos) << e.output;
}

TEST(StrataTrain, TrainInitStartsFromATrainedModelAndRefusesAnotherModelsWeights) {
  TempDir dir;
  auto trained = run_command(small_run(dir / "trained") + " train.epochs=1");
  ASSERT_EQ(trained.exit_code, 0) << trained.output;
  const double acc = final_accuracy(dir / "trained");
  ASSERT_GT(acc, 0.6);
  // Two steps at a small learning rate: from the trained weights the model
  // keeps their accuracy; from the seeded initialisation it is near chance.
  const std::string two_steps = " train.max_steps=2 optimizer.lr=1e-4";
  auto tuned = run_command(small_run(dir / "tuned") + two_steps +
                           " train.init=" + dir / "trained/model.pt");
  ASSERT_EQ(tuned.exit_code, 0) << tuned.output;
  EXPECT_NE(tuned.output.find("starting from the weights of"), std::string::npos) << tuned.output;
  auto fresh = run_command(small_run(dir / "fresh") + two_steps);
  ASSERT_EQ(fresh.exit_code, 0) << fresh.output;
  const double tuned_acc =
      final_accuracy(dir / "tuned");
  const double fresh_acc =
      final_accuracy(dir / "fresh");
  EXPECT_NEAR(tuned_acc, acc, 0.02);
  EXPECT_LT(fresh_acc, acc - 0.2);

  auto other = run_command(small_run(dir / "other") + " model.name=cnn train.init=" +
                           dir / "trained/model.pt");
  EXPECT_EQ(other.exit_code, 2) << other.output;
  EXPECT_NE(other.output.find("train.init '"), std::string::npos) << other.output;
  auto missing = run_command(small_run(dir / "missing") + " train.init=" + dir / "nope.pt");
  EXPECT_EQ(missing.exit_code, 2) << missing.output;
  EXPECT_NE(missing.output.find("does not exist"), std::string::npos) << missing.output;
}

TEST(StrataTrain, APruningSparsityOfOneIsARecipeError) {
  TempDir dir;
  auto r = run_command(small_run(dir / "run") + " train.prune.sparsity=1");
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_NE(r.output.find("train.prune.sparsity 1 is outside [0, 1)"), std::string::npos)
      << r.output;
}

TEST(StrataTrain, SigtermCheckpointsThatStepAndTheSameCommandResumesBitwise) {
  TempDir dir;
  const auto [status, out] = signal_after(small_run(dir / "stopped"), "step 10/", 1, SIGTERM);
  ASSERT_NE(status, -1) << "still running 120 s after SIGTERM\n" << out;
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 143) << status << "\n" << out;
  const int64_t step = stopped_step(out);
  ASSERT_GE(step, 10) << out;
  EXPECT_NE(out.find("on SIGTERM"), std::string::npos) << out;
  EXPECT_FALSE(strata::path_exists(dir / "stopped/model.pt"));
  EXPECT_EQ(strata::train::CheckpointStore(dir / "stopped/checkpoints", 1).newest(),
            dir / "stopped/checkpoints/" + step_dir(step));
  const std::string last = read_lines(dir / "stopped/metrics.jsonl").back();
  EXPECT_EQ(field(last, "kind"), "stopped");
  EXPECT_EQ(field(last, "signal"), "SIGTERM");
  EXPECT_EQ(field(last, "step"), std::to_string(step));

  auto resumed = run_command(small_run(dir / "stopped"));
  ASSERT_EQ(resumed.exit_code, 0) << resumed.output;
  EXPECT_NE(resumed.output.find("resumed from"), std::string::npos);
  auto straight = run_command(small_run(dir / "straight"));
  ASSERT_EQ(straight.exit_code, 0) << straight.output;
  expect_same_run(dir / "stopped", dir / "straight");
}

TEST(StrataTrain, TheRequeueSignalExitsSeventyFive) {
  TempDir dir;
  const auto [status, out] = signal_after(
      small_run(dir / "run") + " checkpoint.requeue_signal=SIGUSR2", "step 5/", 1, SIGUSR2);
  ASSERT_NE(status, -1) << out;
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 75) << status << "\n" << out;
  EXPECT_NE(out.find("checkpointed for requeue"), std::string::npos) << out;
}

// A step long enough (a CNN on 1024 images) that the second SIGINT lands
// while the first is still waiting for the step to end.
TEST(StrataTrain, ASecondSigintAbortsAtOnce) {
  using namespace std::chrono_literals;
  TempDir dir;
  strata::test::ChildProcess run(kBin + " " + kRecipes + "fashion_mnist.yaml run.dir=" +
                                 dir / "run" + " data.batch_size=1024 data.train_subset=4096"
                                 " data.test_subset=500 run.threads=1 run.log_every=1"
                                 " train.max_steps=1000");
  ASSERT_TRUE(run.wait_output("step 1/", 1, 120s)) << run.output();
  run.signal(SIGINT);
  ASSERT_TRUE(run.wait_output("SIGINT: stopping after this step", 1, 60s)) << run.output();
  run.signal(SIGINT);
  const auto status = run.wait_exit(30s);
  ASSERT_TRUE(status.has_value()) << run.output();
  EXPECT_TRUE(WIFSIGNALED(*status) && WTERMSIG(*status) == SIGINT) << *status << "\n"
                                                                  << run.output();
  EXPECT_NE(run.output().find("second SIGINT: aborting"), std::string::npos) << run.output();
  EXPECT_EQ(stopped_step(run.output()), -1);
}

TEST(StrataTrain, CheckpointsComeByTheClockToo) {
  TempDir dir;
  // Every 6 ms: many between the step-based ones (none: every_steps=0 and
  // one epoch is longer than the run).
  auto r = run_command(small_run(dir / "run") + " train.max_steps=60 checkpoint.every_steps=0"
                       " checkpoint.every_minutes=0.0001 checkpoint.keep=1000");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  int complete = 0;
  for (const auto& e : std::filesystem::directory_iterator(dir / "run/checkpoints")) {
    complete += strata::path_exists(e.path().string() + "/metadata.json");
  }
  EXPECT_GE(complete, 3) << r.output;  // the final one and at least two by the clock
}

}  // namespace

namespace {

// tests/data/legacy_mlp4_step2.pt: a checkpoint of the earlier format (one
// LibTorch archive), written by Strata at 1849aa7 with this run's recipe
// and train.max_steps=2. Resuming it to step 4 must give the run that went
// to step 4 without stopping; on the CPU model that wrote it bit for bit,
// elsewhere LibTorch may pick other kernels (golden.sh's rule), so 1e-6.
std::string legacy_run(const std::string& dir) {
  return kBin + " " + kRecipes + "fashion_mnist_mlp.yaml run.dir=" + dir +
         " model.hidden=[4] train.max_steps=4 checkpoint.every_steps=2"
         " data.train_subset=512 data.test_subset=100 data.batch_size=32"
         " schedule.name=constant schedule.warmup_steps=0 run.threads=1";
}

}  // namespace

TEST(StrataTrain, ACheckpointOfTheEarlierFormatResumesAndContinuesTheRun) {
  TempDir dir;
  auto straight = run_command(legacy_run(dir / "straight"));
  ASSERT_EQ(straight.exit_code, 0) << straight.output;
  strata::make_dirs(dir / "old/checkpoints");
  std::filesystem::copy_file(std::string(STRATA_SOURCE_DIR) + "/tests/data/legacy_mlp4_step2.pt",
                             dir / "old/checkpoints/step_00000002.pt");
  auto resumed = run_command(legacy_run(dir / "old"));
  ASSERT_EQ(resumed.exit_code, 0) << resumed.output;
  EXPECT_NE(resumed.output.find("resumed from " + dir / "old/checkpoints/step_00000002.pt"),
            std::string::npos) << resumed.output;
  EXPECT_NE(resumed.output.find("of the earlier format"), std::string::npos) << resumed.output;
  auto a = strata::test::load_state_dict(dir / "old/model.pt");
  auto b = strata::test::load_state_dict(dir / "straight/model.pt");
  ASSERT_EQ(a.size(), b.size());
  for (const auto& item : b) {
    const at::Tensor x = a.at(item.key()).toTensor(), y = item.value().toTensor();
    EXPECT_TRUE(at::allclose(x, y, 0, 1e-6)) << item.key().toStringRef();
  }
  // The next checkpoint is of the current format: a directory.
  EXPECT_TRUE(strata::train::is_sharded_checkpoint(dir / "old/checkpoints/step_00000004"));
}

// The token-file dataset, as a nanoGPT user has it: train.bin / val.bin of
// uint16 ids. Written here from the bytes of a text, a GPT trained on them
// must log exactly what the same GPT logs on the text itself.
TEST(StrataTrain, GptOnATokenFileTrainsAsOnItsText) {
  TempDir dir;
  std::string body;
  for (int i = 0; i < 20000; ++i) body += static_cast<char>('a' + (i * 31 + i / 7) % 26);
  strata::test::write_text(dir / "corpus.txt", body);
  const auto corpus = strata::train::load_text_corpus(dir / "corpus.txt", 0.05, 32);
  strata::make_dirs(dir / "tok");
  auto write = [&](const std::string& path, const std::vector<uint8_t>& bytes) {
    std::vector<uint16_t> ids(bytes.begin(), bytes.end());
    strata::test::write_text(path, std::string(reinterpret_cast<const char*>(ids.data()),
                                               ids.size() * 2));
  };
  write(dir / "tok/train.bin", corpus.train);
  write(dir / "tok/val.bin", corpus.val);
  const std::string common = kBin + " " + kRecipes + "gpt_tiny.yaml model.n_layer=1 "
                             "model.d_model=32 model.seq_len=32 data.batch_size=4 "
                             "data.test_subset=16 train.max_steps=4 run.log_every=1 "
                             "train.eval_every=2 run.threads=1 schedule.warmup_steps=1";
  auto a = run_command(common + " run.dir=" + dir / "text data.text=" + dir / "corpus.txt");
  ASSERT_EQ(a.exit_code, 0) << a.output;
  auto b = run_command(common + " run.dir=" + dir / "tokens data.name=tokens data.tokens=" +
                       dir / "tok" + " data.vocab_size=256");
  ASSERT_EQ(b.exit_code, 0) << b.output;
  EXPECT_NE(b.output.find("next-token accuracy"), std::string::npos) << b.output;
  const auto ma = read_lines(dir / "text/metrics.jsonl");
  const auto mb = read_lines(dir / "tokens/metrics.jsonl");
  ASSERT_EQ(ma.size(), mb.size());
  for (size_t i = 0; i + 1 < ma.size(); ++i) {  // the summary's wall time differs
    EXPECT_EQ(field(ma[i], "kind"), field(mb[i], "kind"));
    EXPECT_EQ(field(ma[i], "loss"), field(mb[i], "loss")) << ma[i] << "\n" << mb[i];
  }
  // Without data.vocab_size the vocabulary is the largest id + 1 (26 letters
  // from 'a' = 97: 123): the model is built for it.
  auto c = run_command(common + " run.dir=" + dir / "small data.name=tokens data.tokens=" +
                       dir / "tok");
  ASSERT_EQ(c.exit_code, 0) << c.output;
  EXPECT_NE(c.output.find("model gpt with"), std::string::npos) << c.output;
}

// Online learning (Note [Hedge Backpropagation]): HBP on the CD1 drift
// stream, test-then-train, SIGKILLed after its second checkpoint (each
// inside a record's window) and resumed, ends bitwise like the
// uninterrupted run: weights, alpha, and every online record's counts.
TEST(StrataTrain, OnlineHbpOnADriftingStreamSurvivesAKillAndResumesBitwise) {
  TempDir dir;
  const auto online_run = [&](const std::string& name) {
    return kBin + " " + kRecipes + "online_hbp.yaml run.dir=" + dir / name +
           " data.instances=30000 model.depth=6 run.log_every=1000 checkpoint.every_steps=3500"
           " checkpoint.every_minutes=0 run.threads=1";
  };
  const int status = signal_after(online_run("killed"), "saved checkpoint", 2, SIGKILL).status;
  ASSERT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL)
      << "the run finished before it could be killed";
  auto resumed = run_command(online_run("killed"));
  ASSERT_EQ(resumed.exit_code, 0) << resumed.output;
  EXPECT_NE(resumed.output.find("resumed from"), std::string::npos);
  auto straight = run_command(online_run("straight"));
  ASSERT_EQ(straight.exit_code, 0) << straight.output;
  EXPECT_NE(straight.output.find("final online error"), std::string::npos) << straight.output;

  auto a = strata::test::load_state_dict(dir / "killed/model.pt");
  auto b = strata::test::load_state_dict(dir / "straight/model.pt");
  ASSERT_TRUE(b.contains("alpha"));
  for (const auto& item : b) {
    EXPECT_TRUE(at::equal(a.at(item.key()).toTensor(), item.value().toTensor()))
        << item.key().toStringRef();
  }
  std::vector<nlohmann::json> ka, kb;
  for (const auto& l : read_lines(dir / "killed/metrics.jsonl")) {
    auto r = nlohmann::json::parse(l);
    if (r["kind"] == "online") ka.push_back(r);
  }
  for (const auto& l : read_lines(dir / "straight/metrics.jsonl")) {
    auto r = nlohmann::json::parse(l);
    if (r["kind"] == "online") kb.push_back(r);
  }
  ASSERT_EQ(kb.size(), 30u);
  ASSERT_EQ(ka.size(), kb.size());
  for (size_t i = 0; i < kb.size(); ++i) {
    EXPECT_EQ(kb[i]["instances"], static_cast<int64_t>(1000 * (i + 1)));
    EXPECT_EQ(ka[i]["instances"], kb[i]["instances"]);
    EXPECT_EQ(ka[i]["error"], kb[i]["error"]) << i;
    EXPECT_EQ(ka[i]["window_error"], kb[i]["window_error"]) << i;
    EXPECT_EQ(ka[i]["alpha"], kb[i]["alpha"]) << i;
    double sum = 0;
    for (double x : kb[i]["alpha"]) sum += x;
    EXPECT_NEAR(sum, 1.0, 1e-5);
    EXPECT_EQ(kb[i]["alpha"].size(), 7u);
  }
  const auto last = nlohmann::json::parse(read_lines(dir / "straight/metrics.jsonl").back());
  EXPECT_EQ(last["kind"], "summary");
  EXPECT_EQ(last["online_error"], kb.back()["error"]);
  EXPECT_LT(last["online_error"].get<double>(), 0.47);  // learned: chance is 0.5
  EXPECT_EQ(last.count("accuracy"), 0u);  // a stream has no held-out split
}

TEST(StrataTrain, HbpWithUnequalWidthsExitsTwoWithTheFix) {
  TempDir dir;
  auto r = run_command(kBin + " " + kRecipes + "online_hbp.yaml run.dir=" + dir / "r" +
                       " model.depth=0 model.hidden=[100,50] data.instances=100");
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_NE(r.output.find("set model.hidden=[100] and model.depth=2"), std::string::npos)
      << r.output;
}

TEST(StrataTrain, HbpWithQatOrAStreamFileMissingIsARecipeError) {
  TempDir dir;
  auto qat = run_command(kBin + " " + kRecipes + "online_hbp.yaml run.dir=" + dir / "qat" +
                         " data.instances=200 model.depth=3 train.qat.enabled=true");
  EXPECT_EQ(qat.exit_code, 2) << qat.output;
  EXPECT_NE(qat.output.find("does not support train.qat"), std::string::npos) << qat.output;
  auto file = run_command(kBin + " " + kRecipes + "online_hbp.yaml run.dir=" + dir / "file" +
                          " data.name=stream_file");
  EXPECT_EQ(file.exit_code, 2) << file.output;
  EXPECT_NE(file.output.find("needs data.stream_file"), std::string::npos) << file.output;
}
