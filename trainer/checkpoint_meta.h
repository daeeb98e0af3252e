// The text files of a sharded checkpoint (Note [Sharded checkpoints] in
// checkpoint.h) as read back from disk: metadata.json and split-<tag>.json.
// They come from a filesystem, so nothing in them is trusted: every field
// is checked and a bad file is an IoError naming it. No LibTorch here (the
// readers are fuzzed, fuzz/).
#pragma once

#include <cstdint>
#include <map>
#include <string>

namespace strata::train {

struct CheckpointMeta {
  int64_t format = 0;
  int64_t dp = 1, tp = 1, pp = 1;  // each in [1, kMaxMeshAxis]
  // Every file of the checkpoint and its size in bytes when it was
  // published (empty in checkpoints from before the manifest): a file cut
  // short or missing makes the checkpoint incomplete. Names are plain
  // file names (no '/', not starting with '.').
  std::map<std::string, int64_t> files;
};

constexpr int64_t kMaxMeshAxis = 1 << 16;

// metadata.json's fields; `where` names the file in errors.
CheckpointMeta parse_checkpoint_metadata(const std::string& text, const std::string& where);

// How a split parameter is cut: along `dim` in `groups` blocks.
struct SplitSpec {
  int64_t dim = -1;    // in [0, 8)
  int64_t groups = 1;  // in [1, 1024]
};

// A split-<tag>.json: {"name": "dim/groups", ...}, every entry checked. A
// parameter the table does not list is replicated.
using SplitTable = std::map<std::string, SplitSpec>;
SplitTable parse_split_table(const std::string& text, const std::string& where);

}  // namespace strata::train
