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

int whole(const std::string& text, const std::string& what) {
  int out = 0;
  auto res = std::from_chars(text.data(), text.data() + text.size(), out);
  STRATA_CHECK_T(ConfigError, !text.empty() && res.ec == std::errc() &&
                     res.ptr == text.data() + text.size() && out >= 0,
                 what, ": '", printable(text, 40), "' is not a count");
  return out;
}

// Splits at commas outside brackets.
std::vector<std::string> top_level_items(const std::string& list) {
  std::vector<std::string> items;
  std::string cur;
  int depth = 0;
  for (char c : list) {
    if (c == '[') ++depth;
    if (c == ']') --depth;
    if (c == ',' && depth == 0) {
      items.push_back(cur);
      cur.clear();
    } else {
      cur += c;
    }
  }
  items.push_back(cur);
  return items;
}

void expand_item(const std::string& item, const std::string& list, std::vector<std::string>* out) {
  const auto open = item.find('[');
  if (open == std::string::npos) {
    STRATA_CHECK_T(ConfigError, !item.empty() && item.find(']') == std::string::npos,
                   "host list '", printable(list, 80), "' is malformed (an empty name or a "
                   "stray ']')");
    out->push_back(item);
    return;
  }
  const auto close = item.find(']', open);
  STRATA_CHECK_T(ConfigError, close != std::string::npos, "host list '", printable(list, 80),
                 "' has a '[' without ']'");
  const std::string prefix = item.substr(0, open);
  const std::string rest = item.substr(close + 1);
  for (const std::string& range : split(item.substr(open + 1, close - open - 1), ',')) {
    const auto dash = range.find('-');
    const std::string lo_text = range.substr(0, dash);
    const std::string hi_text = dash == std::string::npos ? lo_text : range.substr(dash + 1);
    const int lo = whole(lo_text, "host list '" + printable(list, 80) + "'");
    const int hi = whole(hi_text, "host list '" + printable(list, 80) + "'");
    STRATA_CHECK_T(ConfigError, lo <= hi && hi - lo < 100000, "host list '",
                   printable(list, 80), "' has the range ", range);
    for (int n = lo; n <= hi; ++n) {
      std::string digits = std::to_string(n);
      if (digits.size() < lo_text.size()) digits.insert(0, lo_text.size() - digits.size(), '0');
      expand_item(prefix + digits + rest, list, out);
    }
  }
}

}  // namespace

std::vector<std::string> expand_hostlist(const std::string& list) {
  std::vector<std::string> out;
  for (const std::string& item : top_level_items(list)) expand_item(item, list, &out);
  return out;
}

std::vector<int> expand_tasks_per_node(const std::string& list) {
  std::vector<int> out;
  const std::string what = "SLURM_TASKS_PER_NODE='" + printable(list, 80) + "'";
  for (const std::string& item : split(list, ',')) {
    const auto paren = item.find("(x");
    if (paren == std::string::npos) {
      out.push_back(whole(item, what));
      continue;
    }
    STRATA_CHECK_T(ConfigError, item.back() == ')', what, " is malformed");
    const int tasks = whole(item.substr(0, paren), what);
    const int nodes = whole(item.substr(paren + 2, item.size() - paren - 3), what);
    STRATA_CHECK_T(ConfigError, nodes <= 100000, what, " is malformed");
    out.insert(out.end(), static_cast<size_t>(nodes), tasks);
  }
  return out;
}

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
  if (info.launcher == "slurm") {
    // The node's task count, for thread sizing and loopback.
    const char* per_node = env("SLURM_STEP_TASKS_PER_NODE");
    if (per_node == nullptr) per_node = env("SLURM_TASKS_PER_NODE");
    const int node = parse_int(env, "SLURM_NODEID", 0);
    if (per_node != nullptr) {
      const std::vector<int> tasks = expand_tasks_per_node(per_node);
      if (node >= 0 && node < static_cast<int>(tasks.size())) info.local_world = tasks[node];
    }
    // Rank 0 runs on the first node of the step (SLURM's block distribution).
    if (info.master_addr.empty()) {
      for (const char* name : {"SLURM_STEP_NODELIST", "SLURM_JOB_NODELIST", "SLURM_NODELIST"}) {
        if (const char* list = env(name)) {
          info.master_addr = expand_hostlist(list).front();
          break;
        }
      }
    }
    if (info.master_port == 0) {
      if (const char* job = env("SLURM_JOB_ID")) {
        info.master_port = 15000 + whole(job, "SLURM_JOB_ID") % 10000;
      }
    }
  }
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
