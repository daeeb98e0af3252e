#include "trainer/checkpoint_meta.h"

#include <charconv>

#include "core/error.h"
#include "core/json.h"
#include "core/strings.h"

namespace strata::train {
namespace {

// A whole decimal integer in [lo, hi], or IoError.
int64_t integer(const std::string& raw, int64_t lo, int64_t hi, const std::string& what,
                const std::string& where) {
  int64_t v = 0;
  const auto [end, ec] = std::from_chars(raw.data(), raw.data() + raw.size(), v);
  STRATA_CHECK_T(IoError, ec == std::errc() && end == raw.data() + raw.size() && v >= lo && v <= hi,
                 where, ": ", what, " is ", quote(raw), ", not an integer in [", lo, ", ", hi,
                 "]; the checkpoint is corrupt");
  return v;
}

}  // namespace

CheckpointMeta parse_checkpoint_metadata(const std::string& text, const std::string& where) {
  const auto field = [&](const char* key) {
    std::string raw;
    STRATA_CHECK_T(IoError, json_field(text, key, &raw), where, " has no '", key, "'");
    return raw;
  };
  CheckpointMeta m;
  m.format = integer(field("format"), 0, int64_t{1} << 31, "format", where);
  m.dp = integer(field("dp"), 1, kMaxMeshAxis, "dp", where);
  m.tp = integer(field("tp"), 1, kMaxMeshAxis, "tp", where);
  m.pp = integer(field("pp"), 1, kMaxMeshAxis, "pp", where);
  return m;
}

std::optional<SplitSpec> split_entry(const std::string& splits_json, const std::string& name,
                                     const std::string& where) {
  std::string raw;
  if (!json_field(splits_json, name, &raw)) return std::nullopt;
  const auto slash = raw.find('/');
  STRATA_CHECK_T(IoError, slash != std::string::npos, where, ": the split of ", quote(name),
                 " is ", quote(raw), ", not 'dim/groups'; the checkpoint is corrupt");
  SplitSpec s;
  s.dim = integer(raw.substr(0, slash), 0, 7, "a split dimension", where);
  s.groups = integer(raw.substr(slash + 1), 1, 1024, "a split's groups", where);
  return s;
}

}  // namespace strata::train
