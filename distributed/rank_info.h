// Who am I in a multi-process job: rank discovery from launcher environments.
//
// Sources, in order of precedence (the first present wins):
//   torchrun-style  RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE
//                   (+ MASTER_ADDR, MASTER_PORT); also set by launch/strata-run
//   Open MPI        OMPI_COMM_WORLD_RANK, _SIZE, _LOCAL_RANK, _LOCAL_SIZE
//   PMI             PMI_RANK, PMI_SIZE (MPICH/Hydra, srun --mpi=pmi2),
//                   MPI_LOCALRANKID, MPI_LOCALNRANKS
//   SLURM           SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID; the node's
//                   task count from SLURM_STEP_TASKS_PER_NODE (or
//                   SLURM_TASKS_PER_NODE) and SLURM_NODEID; unless set,
//                   MASTER_ADDR is the first host of SLURM_STEP_NODELIST
//                   (or SLURM_JOB_NODELIST, SLURM_NODELIST) and
//                   MASTER_PORT 15000 + SLURM_JOB_ID mod 10000 (what
//                   Lightning does), so `srun strata-train` needs nothing
//                   set by hand
// Precedence follows nesting: a torchrun-style launcher started under mpirun
// or inside an sbatch allocation sets RANK for each of its children, while
// the outer launcher's variables are merely inherited (an sbatch script's
// SLURM_PROCID is 0 in every process mpirun starts).
//
// Errors (ConfigError, exit code 2) name the variables: a source with a rank
// but no size (or the reverse), non-integers, rank outside [0, size), a
// torchrun-style world > 1 without MASTER_ADDR/MASTER_PORT, and process
// launchers (torchrun-style, Open MPI, PMI) that disagree on the world size.
#pragma once

#include <functional>
#include <string>
#include <vector>

namespace strata::dist {

struct RankInfo {
  int rank = 0;         // global rank in [0, world)
  int world = 1;        // number of processes
  int local_rank = 0;   // rank among the processes on this host
  int local_world = 1;  // processes on this host (0: the launcher did not say)
  std::string launcher = "none";  // torchrun | mpirun | pmi | slurm | none
  std::string master_addr;        // MASTER_ADDR when set
  int master_port = 0;            // MASTER_PORT when set
};

// Reads variables through `lookup` (std::getenv in production; a map in
// tests). Returns nullptr for unset variables.
using EnvLookup = std::function<const char*(const char*)>;

RankInfo discover_ranks(const EnvLookup& lookup);
RankInfo discover_ranks();  // from the process environment

// SLURM's compressed host lists: "node[01-03,07],gpu-a[1-2]" -> node01,
// node02, node03, node07, gpu-a1, gpu-a2 (zero padding kept, several
// bracket groups multiply). ConfigError for a malformed list.
std::vector<std::string> expand_hostlist(const std::string& list);
// SLURM_TASKS_PER_NODE: "2(x3),1" -> 2, 2, 2, 1 (tasks on each node).
std::vector<int> expand_tasks_per_node(const std::string& list);

}  // namespace strata::dist
