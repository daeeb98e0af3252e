// Data-parallel strata-train as real processes: mpirun equivalence with a
// single process, and what happens when a rank dies or stalls.
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <torch/serialize.h>
#include <torch/torch.h>
#include <unistd.h>

#include <chrono>
#include <dirent.h>
#include <fstream>
#include <map>
#include <regex>

#include "core/fs.h"
#include "core/json.h"
#include "child_process.h"
#include "test_util.h"

namespace {

using strata::test::free_port;
using strata::test::read_lines;
using strata::test::run_command;
using strata::test::TempDir;
using Clock = std::chrono::steady_clock;

const std::string kBin = STRATA_TRAIN_BIN;
const std::string kRecipe = std::string(STRATA_SOURCE_DIR) + "/recipes/fashion_mnist.yaml";
const std::string kMpirun =
    "OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 "
    "mpirun --oversubscribe --bind-to none ";
const std::string kMpirunNp2 = kMpirun + "-np 2 ";

// An MLP run without BatchNorm, so data parallelism is exact up to float
// summation order.
std::string mlp_run(const std::string& dir, int batch) {
  return kRecipe + " run.dir=" + dir + " model.name=mlp run.threads=1"
         " data.train_subset=4096 data.test_subset=1000 data.batch_size=" +
         std::to_string(batch) + " train.max_steps=24 run.log_every=4"
         " schedule.warmup_steps=4 data.augment.crop_padding=2";
}

class MpirunBackend : public ::testing::TestWithParam<std::string> {};

TEST_P(MpirunBackend, TwoRanksMatchOneProcessWithTheGlobalBatch) {
  TempDir dir;
  auto one = run_command(kBin + " " + mlp_run(dir / "one", 64));
  ASSERT_EQ(one.exit_code, 0) << one.output;
  auto two = run_command(kMpirun + "-np 2 " + kBin + " " + mlp_run(dir / "two", 32) +
                         " distributed.backend=" + GetParam());
  ASSERT_EQ(two.exit_code, 0) << two.output;
  EXPECT_NE(two.output.find("data parallel over 2 ranks (" + GetParam() + ")"),
            std::string::npos) << two.output;
  auto a = strata::test::load_state_dict(dir / "one/model.pt");
  auto b = strata::test::load_state_dict(dir / "two/model.pt");
  ASSERT_EQ(a.size(), b.size());
  for (const auto& item : a) {
    at::Tensor x = item.value().toTensor();
    at::Tensor y = b.at(item.key()).toTensor();
    EXPECT_TRUE(at::allclose(x, y, /*rtol=*/0, /*atol=*/1e-5))
        << item.key().toStringRef() << " max diff "
        << (x - y).abs().max().item<float>();
  }
  // Rank 0 alone wrote the metrics: one summary, train records every 4 steps.
  auto lines = read_lines(dir / "two/metrics.jsonl");
  int summaries = 0, train = 0;
  for (const auto& l : lines) {
    const std::string kind = strata::test::json_text(l, "kind").value_or("");
    summaries += kind == "summary";
    train += kind == "train";
  }
  EXPECT_EQ(summaries, 1);
  EXPECT_EQ(train, 6);
}

INSTANTIATE_TEST_SUITE_P(CpuBackends, MpirunBackend, ::testing::Values("gloo", "mpi"));

struct Rank {
  pid_t pid = -1;
  int err = -1;  // read end of its stderr
  std::string output;
};

// Starts rank `rank` of `world` with torchrun-style variables.
Rank start_rank(int rank, int world, int port, const std::string& args) {
  int fds[2];
  EXPECT_EQ(::pipe(fds), 0);
  Rank r;
  r.pid = ::fork();
  if (r.pid == 0) {
    ::dup2(fds[1], STDERR_FILENO);
    ::dup2(fds[1], STDOUT_FILENO);
    ::close(fds[0]);
    ::setenv("RANK", std::to_string(rank).c_str(), 1);
    ::setenv("WORLD_SIZE", std::to_string(world).c_str(), 1);
    ::setenv("LOCAL_RANK", std::to_string(rank).c_str(), 1);
    ::setenv("LOCAL_WORLD_SIZE", std::to_string(world).c_str(), 1);
    ::setenv("MASTER_ADDR", "127.0.0.1", 1);
    ::setenv("MASTER_PORT", std::to_string(port).c_str(), 1);
    const std::string cmd = "exec " + kBin + " " + args;
    ::execl("/bin/sh", "sh", "-c", cmd.c_str(), static_cast<char*>(nullptr));
    ::_exit(127);
  }
  ::close(fds[1]);
  r.err = fds[0];
  return r;
}

enum class ReadEnd { kFound, kEof, kDeadline };

// Reads r's output until `needle` shows up, the stream ends, or the deadline.
ReadEnd read_until(Rank& r, const std::string& needle, int timeout_ms) {
  const auto deadline = Clock::now() + std::chrono::milliseconds(timeout_ms);
  char buf[1024];
  while (needle.empty() || r.output.find(needle) == std::string::npos) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - Clock::now()).count();
    pollfd p{r.err, POLLIN, 0};
    if (left <= 0 || ::poll(&p, 1, static_cast<int>(left)) <= 0) {
      return ReadEnd::kDeadline;
    }
    ssize_t n = ::read(r.err, buf, sizeof(buf));
    if (n <= 0) return ReadEnd::kEof;
    r.output.append(buf, static_cast<size_t>(n));
  }
  return ReadEnd::kFound;
}

// Waits for r to exit; returns its exit code (-1 on a signal, -2 when it
// was still running at the deadline and had to be killed).
int wait_exit(Rank& r, int timeout_ms) {
  int status = 0;
  if (read_until(r, "", timeout_ms) != ReadEnd::kEof) {
    ::kill(r.pid, SIGKILL);
    ::waitpid(r.pid, &status, 0);
    return -2;
  }
  ::waitpid(r.pid, &status, 0);  // closed its output: it is exiting
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

std::string long_run(const std::string& dir) {
  return kRecipe + " run.dir=" + dir + " model.name=mlp run.threads=1"
         " data.train_subset=4096 data.test_subset=500 train.epochs=1000"
         " run.log_every=5 distributed.timeout_s=4";
}

struct Survivor {
  int exit_code = -2;
  double seconds = 0;  // from the signal to rank 0's exit
  std::string output;
};

// Runs 2 ranks, sends `sig` to rank 1 once rank 0 has trained 10 steps, and
// reports how rank 0 ended (waiting at most distributed.timeout_s + 10 s).
// Rank 1 is killed and reaped in every case: nothing is left running.
Survivor signal_rank1(int sig) {
  TempDir dir;
  const int port = free_port();
  Rank r0 = start_rank(0, 2, port, long_run(dir / "run"));
  Rank r1 = start_rank(1, 2, port, long_run(dir / "run"));
  Survivor s;
  if (read_until(r0, "step 10/", 60000) != ReadEnd::kFound) {
    ADD_FAILURE() << "rank 0 did not reach step 10: " << r0.output;
  }
  ::kill(r1.pid, sig);
  const auto t0 = Clock::now();
  s.exit_code = wait_exit(r0, 4000 + 10000);
  s.seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  ::kill(r1.pid, SIGKILL);
  wait_exit(r1, 1000);
  s.output = r0.output;
  return s;
}

TEST(DataParallel, KilledRankMakesTheOthersFailFastNamingTheOperation) {
  Survivor s = signal_rank1(SIGKILL);
  EXPECT_EQ(s.exit_code, 1) << s.output;
  EXPECT_LT(s.seconds, 14.0);
  EXPECT_NE(s.output.find("on group 'world' (rank 0/2)"), std::string::npos)
      << s.output;
  EXPECT_NE(s.output.find("strata-train: error: "), std::string::npos);
}

TEST(DataParallel, StalledRankMakesTheOthersTimeOut) {
  Survivor s = signal_rank1(SIGSTOP);  // alive, connected, silent
  EXPECT_EQ(s.exit_code, 1) << s.output;
  EXPECT_LT(s.seconds, 14.0);
  EXPECT_NE(s.output.find("timed out after 4 s"), std::string::npos)
      << s.output;
}

// Every tensor of two model.pt files equal, bit for bit.
void expect_bitwise_equal_models(const std::string& a_path, const std::string& b_path) {
  auto a = strata::test::load_state_dict(a_path);
  auto b = strata::test::load_state_dict(b_path);
  ASSERT_EQ(a.size(), b.size());
  for (const auto& item : b) {
    EXPECT_TRUE(at::equal(a.at(item.key()).toTensor(), item.value().toTensor()))
        << item.key().toStringRef() << " differs from the uninterrupted run";
  }
}

// The children of `parent` whose environment holds `var`=value, by value.
std::map<int, pid_t> children_by(pid_t parent, const std::string& var) {
  std::map<int, pid_t> out;
  DIR* proc = ::opendir("/proc");
  for (dirent* e; proc != nullptr && (e = ::readdir(proc)) != nullptr;) {
    const pid_t pid = static_cast<pid_t>(std::atoi(e->d_name));
    if (pid <= 0) continue;
    std::ifstream stat("/proc/" + std::string(e->d_name) + "/stat");
    std::string line;
    std::getline(stat, line);
    const auto close = line.rfind(')');
    if (close == std::string::npos) continue;
    std::istringstream rest(line.substr(close + 2));
    char state;
    pid_t ppid = 0;
    rest >> state >> ppid;
    if (ppid != parent) continue;
    std::ifstream env("/proc/" + std::string(e->d_name) + "/environ");
    for (std::string v; std::getline(env, v, '\0');) {
      if (v.rfind(var + "=", 0) == 0) out[std::stoi(v.substr(var.size() + 1))] = pid;
    }
  }
  if (proc != nullptr) ::closedir(proc);
  return out;
}

// Note [Stopping together]: a signal that reaches one rank stops every
// rank at the same step, after one checkpoint, with the signal's exit code.
TEST(DataParallel, SigtermToOneRankStopsBothAtTheSameStepAndTheRunResumesBitwise) {
  using namespace std::chrono_literals;
  TempDir dir;
  const auto command = [&](const std::string& run) {
    return kMpirun + "-np 2 " + kBin + " " + mlp_run(dir / run, 32) + " train.max_steps=400";
  };
  strata::test::ChildProcess mpirun("env STRATA_LOG_ALL_RANKS=1 " + command("stopped"));
  ASSERT_TRUE(mpirun.wait_output("[rank 1/2] INFO step 8/", 1, 120s)) << mpirun.output();
  // Open MPI starts a node's ranks as its own children.
  const std::map<int, pid_t> ranks = children_by(mpirun.pid(), "OMPI_COMM_WORLD_RANK");
  ASSERT_EQ(ranks.size(), 2u) << mpirun.output();
  ASSERT_EQ(::kill(ranks.at(1), SIGTERM), 0);
  const auto status = mpirun.wait_exit(120s);
  ASSERT_TRUE(status.has_value()) << "still running 120 s after SIGTERM\n" << mpirun.output();
  const std::string out = mpirun.output();
  EXPECT_TRUE(WIFEXITED(*status) && WEXITSTATUS(*status) == 143) << *status << "\n" << out;
  std::smatch m0, m1;
  ASSERT_TRUE(std::regex_search(out, m0, std::regex("\\[rank 0/2\\] INFO stopped at step ([0-9]+) of 400 on SIGTERM")))
      << out;
  ASSERT_TRUE(std::regex_search(out, m1, std::regex("\\[rank 1/2\\] INFO stopped at step ([0-9]+) of 400 on SIGTERM")))
      << out;
  EXPECT_EQ(m0[1], m1[1]) << out;
  EXPECT_FALSE(strata::path_exists(dir / "stopped/model.pt"));

  auto resumed = run_command(command("stopped"));
  ASSERT_EQ(resumed.exit_code, 0) << resumed.output;
  EXPECT_NE(resumed.output.find("resumed from"), std::string::npos) << resumed.output;
  EXPECT_NE(resumed.output.find("at step " + std::string(m0[1])), std::string::npos)
      << resumed.output;
  auto straight = run_command(command("straight"));
  ASSERT_EQ(straight.exit_code, 0) << straight.output;
  expect_bitwise_equal_models(dir / "stopped/model.pt", dir / "straight/model.pt");
}

TEST(DataParallel, QuantizationAwareTrainingStopsAndResumesBitwiseAndConvertsToWhatItEvaluated) {
  // Each rank observes its own batches; the observers are averaged over
  // the ranks after every step, so every rank fake-quantizes alike and
  // rank 0's checkpointed observers are every rank's: a run stopped and
  // resumed ends bitwise as an uninterrupted one, and the evaluation the
  // ranks ran together (each on its shard, summed) is that of the int8
  // model converted with rank 0's ranges.
  using namespace std::chrono_literals;
  TempDir dir;
  const auto command = [&](const std::string& run) {
    return kMpirunNp2 + kBin + " " + mlp_run(dir / run, 32) +
           " model.name=cnn model.channels=[8,16] model.fc=32 train.max_steps=60"
           " train.qat.enabled=true train.qat.start_step=10 train.qat.freeze_bn_step=40";
  };
  strata::test::ChildProcess mpirun("env STRATA_LOG_ALL_RANKS=1 " + command("stopped"));
  ASSERT_TRUE(mpirun.wait_output("[rank 1/2] INFO step 20/", 1, 120s)) << mpirun.output();
  const std::map<int, pid_t> ranks = children_by(mpirun.pid(), "OMPI_COMM_WORLD_RANK");
  ASSERT_EQ(ranks.size(), 2u) << mpirun.output();
  ASSERT_EQ(::kill(ranks.at(1), SIGTERM), 0);
  const auto status = mpirun.wait_exit(120s);
  ASSERT_TRUE(status.has_value()) << mpirun.output();
  EXPECT_TRUE(WIFEXITED(*status) && WEXITSTATUS(*status) == 143) << mpirun.output();
  EXPECT_NE(mpirun.output().find("activations fake-quantized to int8"), std::string::npos)
      << mpirun.output();
  auto resumed = run_command(command("stopped"));
  ASSERT_EQ(resumed.exit_code, 0) << resumed.output;
  EXPECT_NE(resumed.output.find("resumed from"), std::string::npos) << resumed.output;
  auto straight = run_command(command("straight"));
  ASSERT_EQ(straight.exit_code, 0) << straight.output;
  EXPECT_NE(straight.output.find("data parallel over 2 ranks"), std::string::npos);
  expect_bitwise_equal_models(dir / "stopped/model.pt", dir / "straight/model.pt");
  expect_bitwise_equal_models(dir / "stopped/qat.pt", dir / "straight/qat.pt");

  auto exported = run_command(kBin.substr(0, kBin.rfind('/') + 1) + "strata-export " +
                              dir / "straight" + " --format torchscript --quantize qat");
  ASSERT_EQ(exported.exit_code, 0) << exported.output;
  std::smatch m;
  ASSERT_TRUE(std::regex_search(exported.output, m, std::regex("test accuracy ([0-9.]+)")))
      << exported.output;
  const std::string summary = read_lines(dir / "straight/metrics.jsonl").back();
  const double evaluated = std::stod(strata::test::json_text(summary, "accuracy").value_or("0"));
  EXPECT_GT(evaluated, 0.6) << summary;
  EXPECT_NEAR(std::stod(m[1]), evaluated, 0.003) << exported.output;
}

// torchrun's --max-restarts: a rank SIGKILLed mid-run makes strata-run stop
// the other and start both again, and the run resumes from its newest
// complete checkpoint and ends as an uninterrupted one.
TEST(StrataRun, MaxRestartsFinishesARunWhoseRankWasKilledBitwiseAsUninterrupted) {
  using namespace std::chrono_literals;
  TempDir dir;
  const std::string launcher = std::string(STRATA_SOURCE_DIR) + "/launch/strata-run";
  const auto command = [&](const std::string& run, const std::string& restarts) {
    return launcher + " -n 2 --grace 5" + restarts + " -- " + kBin + " " + mlp_run(dir / run, 32) +
           " train.max_steps=300 checkpoint.every_steps=20 distributed.timeout_s=10";
  };
  strata::test::ChildProcess run(command("killed", " --max-restarts 2"));
  ASSERT_TRUE(run.wait_output("saved checkpoint", 2, 120s)) << run.output();
  const std::map<int, pid_t> ranks = children_by(run.pid(), "RANK");
  ASSERT_EQ(ranks.size(), 2u) << run.output();
  ASSERT_EQ(::kill(ranks.at(1), SIGKILL), 0);
  const auto status = run.wait_exit(300s);
  ASSERT_TRUE(status.has_value()) << run.output();
  const std::string out = run.output();
  EXPECT_TRUE(WIFEXITED(*status) && WEXITSTATUS(*status) == 0) << *status << "\n" << out;
  EXPECT_NE(out.find("strata-run: rank 1 exited with -9"), std::string::npos) << out;
  EXPECT_NE(out.find("strata-run: restart 1 of 2"), std::string::npos) << out;
  EXPECT_NE(out.find("resumed from"), std::string::npos) << out;
  auto straight = run_command(command("straight", ""));
  ASSERT_EQ(straight.exit_code, 0) << straight.output;
  expect_bitwise_equal_models(dir / "killed/model.pt", dir / "straight/model.pt");
}

TEST(StrataRun, GivesUpAfterMaxRestartsWithTheLastFailure) {
  const std::string launcher = std::string(STRATA_SOURCE_DIR) + "/launch/strata-run";
  auto r = run_command(launcher + " -n 2 --grace 5 --max-restarts 2 -- sh -c "
                       "'echo \"attempt $STRATA_RESTART_COUNT rank $RANK\"; "
                       "if [ \"$RANK\" = 1 ]; then exit 3; fi; exec sleep 600'");
  EXPECT_EQ(r.exit_code, 3) << r.output;
  for (const char* line : {"attempt 0 rank 1", "attempt 1 rank 1", "attempt 2 rank 1",
                           "strata-run: restart 2 of 2", "strata-run: giving up after 2 restart(s)"}) {
    EXPECT_NE(r.output.find(line), std::string::npos) << line << "\n" << r.output;
  }
  EXPECT_EQ(r.output.find("attempt 3"), std::string::npos) << r.output;
  // A recipe error would fail again: no restart.
  r = run_command(launcher + " -n 2 --max-restarts 2 -- sh -c 'exit 2'");
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_EQ(r.output.find("restart"), std::string::npos) << r.output;
}

TEST(StrataRun, FailingRankTearsDownTheOthersAndSetsTheExitCode) {
  const std::string launcher = std::string(STRATA_SOURCE_DIR) + "/launch/strata-run";
  // Rank 1 fails at once; rank 0 would sleep for 10 minutes unless stopped.
  auto r = run_command(launcher + " -n 2 --grace 5 -- sh -c "
                       "'if [ \"$RANK\" = 1 ]; then exit 3; fi; exec sleep 600'");
  EXPECT_EQ(r.exit_code, 3) << r.output;
  EXPECT_NE(r.output.find("rank 1 exited with 3; stopping the other 1 rank(s)"),
            std::string::npos) << r.output;
}

TEST(StrataRun, SetsTorchrunStyleVariables) {
  const std::string launcher = std::string(STRATA_SOURCE_DIR) + "/launch/strata-run";
  auto r = run_command(launcher + " -n 3 -- sh -c "
                       "'echo \"rank=$RANK/$WORLD_SIZE local=$LOCAL_RANK/$LOCAL_WORLD_SIZE "
                       "at $MASTER_ADDR\"'");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  for (int k = 0; k < 3; ++k) {
    EXPECT_NE(r.output.find("rank=" + std::to_string(k) + "/3 local=" +
                            std::to_string(k) + "/3 at 127.0.0.1"),
              std::string::npos) << r.output;
  }
}

}  // namespace
