#include "distributed/rank_info.h"

#include <charconv>
#include <cstdlib>
#include <vector>

#include "core/error.h"
#include "core/strings.h"

namespace strata::dist {
namespace {

struct Source {
  const char* launcher;
  const char* rank;
  const char* size;
  const char* local_rank;
  const char* local_size;
};

constexpr Source kSources[] = {
    {"torchrun", "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"},
    {"mpirun", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE",
     "OMPI_COMM_WORLD_LOCAL_RANK", "OMPI_COMM_WORLD_LOCAL_SIZE"},
    {"pmi", "PMI_RANK", "PMI_SIZE", "MPI_LOCALRANKID", "MPI_LOCALNRANKS"},
    {"slurm", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID", nullptr},
};

int parse_int(const EnvLookup& env, const char* name, int fallback) {
  if (name == nullptr) return fallback;
  const char* v = env(name);
  if (v == nullptr) return fallback;
  int out = 0;
  const std::string s = v;
  auto res = std::from_chars(s.data(), s.data() + s.size(), out);
  STRATA_CHECK_T(ConfigError, res.ec == std::errc() && res.ptr == s.data() + s.size(),
                 "environment variable ", name, "='", s,
                 "' is not an integer; check how the job was launched");
  return out;
}

RankInfo read_source(const EnvLookup& env, const Source& s) {
  const bool has_rank = env(s.rank) != nullptr;
  const bool has_size = env(s.size) != nullptr;
  STRATA_CHECK_T(ConfigError, has_rank == has_size, "partial ", s.launcher,
                 " environment: ", has_rank ? s.rank : s.size, " is set but ",
                 has_rank ? s.size : s.rank, " is not; set both or neither");
  RankInfo r;
  r.launcher = s.launcher;
  r.rank = parse_int(env, s.rank, 0);
  r.world = parse_int(env, s.size, 1);
  r.local_rank = parse_int(env, s.local_rank, 0);
  r.local_world = parse_int(env, s.local_size, 0);
  STRATA_CHECK_T(ConfigError, r.world >= 1 && r.rank >= 0 && r.rank < r.world,
                 s.launcher, " environment: ", s.rank, "=", r.rank,
                 " is outside [0, ", s.size, "=", r.world, ")");
  STRATA_CHECK_T(ConfigError, r.local_world == 0 ||
                     (r.local_rank >= 0 && r.local_rank < r.local_world),
                 s.launcher, " environment: ", s.local_rank, "=", r.local_rank,
                 " is outside [0, ", s.local_size, "=", r.local_world, ")");
  return r;
}

}  // namespace

RankInfo discover_ranks(const EnvLookup& env) {
  std::vector<RankInfo> found;
  for (const Source& s : kSources) {
    if (env(s.rank) != nullptr || env(s.size) != nullptr) {
      found.push_back(read_source(env, s));
    }
  }
  RankInfo info = found.empty() ? RankInfo{} : found.front();
  for (const RankInfo& other : found) {
    if (other.launcher == "slurm") continue;  // inherited by nested launchers
    STRATA_CHECK_T(ConfigError, other.world == info.world,
                   "inconsistent launcher environment: ", info.launcher,
                   " says world size ", info.world, " but ", other.launcher,
                   " says ", other.world, "; launch with one launcher, or "
                   "unset the other's variables");
  }
  if (const char* a = env("MASTER_ADDR")) info.master_addr = a;
  info.master_port = parse_int(env, "MASTER_PORT", 0);
  if (info.launcher == "torchrun" && info.world > 1) {
    STRATA_CHECK_T(ConfigError, !info.master_addr.empty() && info.master_port > 0,
                   "RANK/WORLD_SIZE are set (world size ", info.world,
                   ") but MASTER_ADDR/MASTER_PORT are not; set both to rank "
                   "0's host and a free port, or use launch/strata-run");
  }
  STRATA_CHECK_T(ConfigError, info.master_port >= 0 && info.master_port < 65536,
                 "MASTER_PORT=", info.master_port, " is not a TCP port");
  return info;
}

RankInfo discover_ranks() {
  return discover_ranks([](const char* name) { return std::getenv(name); });
}

}  // namespace strata::dist
