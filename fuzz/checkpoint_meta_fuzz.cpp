// A sharded checkpoint's metadata.json and a split-<tag>.json
// (NUL-separated): the readers return validated values or throw IoError.
#include <cstdint>
#include <cstdlib>
#include <string>

#include "core/error.h"
#include "trainer/checkpoint_meta.h"

namespace st = strata::train;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string input(reinterpret_cast<const char*>(data), size);
  const auto a = input.find('\0');
  const std::string meta = input.substr(0, a);
  const std::string splits = a == std::string::npos ? "" : input.substr(a + 1);
  try {
    const st::CheckpointMeta m = st::parse_checkpoint_metadata(meta, "metadata.json");
    for (int64_t v : {m.dp, m.tp, m.pp}) {
      if (v < 1 || v > st::kMaxMeshAxis) std::abort();
    }
  } catch (const strata::IoError&) {
  }
  try {
    for (const auto& [entry, s] : st::parse_split_table(splits, "split.json")) {
      if (s.dim < 0 || s.dim > 7 || s.groups < 1 || s.groups > 1024) std::abort();
    }
  } catch (const strata::IoError&) {
  }
  return 0;
}
