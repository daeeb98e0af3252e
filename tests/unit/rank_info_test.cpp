// Rank discovery from launcher environments.
#include <gtest/gtest.h>

#include <map>

#include "core/error.h"
#include "distributed/rank_info.h"

namespace strata::dist {
namespace {

RankInfo discover(const std::map<std::string, std::string>& env) {
  return discover_ranks([&](const char* name) -> const char* {
    auto it = env.find(name);
    return it == env.end() ? nullptr : it->second.c_str();
  });
}

std::string error_of(const std::map<std::string, std::string>& env) {
  try {
    discover(env);
  } catch (const ConfigError& e) {
    return e.what();
  }
  return "no error";
}

TEST(RankInfo, NoLauncherIsOneProcess) {
  RankInfo r = discover({});
  EXPECT_EQ(r.rank, 0);
  EXPECT_EQ(r.world, 1);
  EXPECT_EQ(r.launcher, "none");
}

TEST(RankInfo, EachLauncher) {
  RankInfo m = discover({{"OMPI_COMM_WORLD_RANK", "3"}, {"OMPI_COMM_WORLD_SIZE", "4"},
                         {"OMPI_COMM_WORLD_LOCAL_RANK", "1"},
                         {"OMPI_COMM_WORLD_LOCAL_SIZE", "2"}});
  EXPECT_EQ(m.launcher, "mpirun");
  EXPECT_EQ(m.rank, 3);
  EXPECT_EQ(m.world, 4);
  EXPECT_EQ(m.local_rank, 1);
  EXPECT_EQ(m.local_world, 2);
  RankInfo p = discover({{"PMI_RANK", "1"}, {"PMI_SIZE", "2"}});
  EXPECT_EQ(p.launcher, "pmi");
  RankInfo s = discover({{"SLURM_PROCID", "5"}, {"SLURM_NTASKS", "8"},
                         {"SLURM_LOCALID", "1"}});
  EXPECT_EQ(s.launcher, "slurm");
  EXPECT_EQ(s.local_world, 0);  // unknown
  RankInfo t = discover({{"RANK", "1"}, {"WORLD_SIZE", "2"}, {"LOCAL_RANK", "1"},
                         {"MASTER_ADDR", "10.1.2.3"}, {"MASTER_PORT", "29500"}});
  EXPECT_EQ(t.launcher, "torchrun");
  EXPECT_EQ(t.master_addr, "10.1.2.3");
  EXPECT_EQ(t.master_port, 29500);
}

// srun: the node's task count and the rendezvous come from SLURM's own
// variables, as Lightning reads them; nothing is set by hand.
TEST(RankInfo, SlurmGivesTheNodesTasksAndTheRendezvous) {
  RankInfo s = discover({{"SLURM_PROCID", "5"}, {"SLURM_NTASKS", "7"}, {"SLURM_LOCALID", "1"},
                         {"SLURM_NODEID", "1"}, {"SLURM_STEP_TASKS_PER_NODE", "4,2(x2)"},
                         {"SLURM_TASKS_PER_NODE", "9"},
                         {"SLURM_STEP_NODELIST", "gpu-a[07-09],gpu-b1"},
                         {"SLURM_JOB_NODELIST", "other"}, {"SLURM_JOB_ID", "4242871"}});
  EXPECT_EQ(s.local_world, 2);  // node 1 of 4,2,2
  EXPECT_EQ(s.master_addr, "gpu-a07");
  EXPECT_EQ(s.master_port, 15000 + 2871);
  // Set by hand, they win.
  RankInfo h = discover({{"SLURM_PROCID", "0"}, {"SLURM_NTASKS", "2"},
                         {"SLURM_JOB_NODELIST", "n[1-2]"}, {"MASTER_ADDR", "10.0.0.9"},
                         {"MASTER_PORT", "29500"}, {"SLURM_JOB_ID", "77"}});
  EXPECT_EQ(h.master_addr, "10.0.0.9");
  EXPECT_EQ(h.master_port, 29500);
  EXPECT_EQ(discover({{"SLURM_PROCID", "0"}, {"SLURM_NTASKS", "2"}}).local_world, 0);
}

TEST(RankInfo, SlurmHostListsExpand) {
  EXPECT_EQ(expand_hostlist("node[01-03,07],gpu-a[1-2]"),
            (std::vector<std::string>{"node01", "node02", "node03", "node07", "gpu-a1",
                                      "gpu-a2"}));
  EXPECT_EQ(expand_hostlist("solo"), (std::vector<std::string>{"solo"}));
  EXPECT_EQ(expand_hostlist("r[1-2]n[8-9]"),
            (std::vector<std::string>{"r1n8", "r1n9", "r2n8", "r2n9"}));
  EXPECT_EQ(expand_hostlist("n[098-101]"),
            (std::vector<std::string>{"n098", "n099", "n100", "n101"}));
  EXPECT_EQ(expand_tasks_per_node("2(x3),1"), (std::vector<int>{2, 2, 2, 1}));
  for (const char* bad : {"node[1-", "node[3-1]", "node[a-b]", "a,,b", "x]"}) {
    EXPECT_THROW(expand_hostlist(bad), ConfigError) << bad;
  }
  EXPECT_THROW(expand_tasks_per_node("2(x"), ConfigError);
  EXPECT_THROW(expand_tasks_per_node("two"), ConfigError);
}

TEST(RankInfo, MpirunInsideSbatchIgnoresTheInheritedSlurmRank) {
  RankInfo r = discover({{"SLURM_PROCID", "0"}, {"SLURM_NTASKS", "1"},
                         {"OMPI_COMM_WORLD_RANK", "2"}, {"OMPI_COMM_WORLD_SIZE", "4"}});
  EXPECT_EQ(r.launcher, "mpirun");
  EXPECT_EQ(r.rank, 2);
}

TEST(RankInfo, PartialAndInconsistentEnvironmentsAreClearErrors) {
  EXPECT_NE(error_of({{"RANK", "0"}}).find(
                "partial torchrun environment: RANK is set but WORLD_SIZE is not"),
            std::string::npos);
  EXPECT_NE(error_of({{"OMPI_COMM_WORLD_SIZE", "2"}}).find(
                "OMPI_COMM_WORLD_SIZE is set but OMPI_COMM_WORLD_RANK is not"),
            std::string::npos);
  EXPECT_NE(error_of({{"PMI_RANK", "2"}, {"PMI_SIZE", "2"}}).find(
                "PMI_RANK=2 is outside [0, PMI_SIZE=2)"),
            std::string::npos);
  EXPECT_NE(error_of({{"PMI_RANK", "x"}, {"PMI_SIZE", "2"}}).find(
                "PMI_RANK='x' is not an integer"),
            std::string::npos);
  EXPECT_NE(error_of({{"RANK", "0"}, {"WORLD_SIZE", "2"}}).find(
                "MASTER_ADDR/MASTER_PORT are not"),
            std::string::npos);
  std::string e = error_of({{"RANK", "0"}, {"WORLD_SIZE", "2"},
                            {"MASTER_ADDR", "h"}, {"MASTER_PORT", "1"},
                            {"OMPI_COMM_WORLD_RANK", "0"},
                            {"OMPI_COMM_WORLD_SIZE", "4"}});
  EXPECT_NE(e.find("inconsistent launcher environment: torchrun says world "
                   "size 2 but mpirun says 4"),
            std::string::npos) << e;
}

}  // namespace
}  // namespace strata::dist
