#include "trainer/checkpoint_meta.h"

#include <nlohmann/json.hpp>

#include <charconv>

#include "core/error.h"
#include "core/json.h"
#include "core/strings.h"

namespace strata::train {
namespace {

// A value from the file, safe to put in a message.
std::string shown(const nlohmann::json& v) {
  return printable(v.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace), 40);
}

// A whole integer in [lo, hi] (written as a JSON number, or as decimal text
// inside a string), or IoError.
int64_t integer(const nlohmann::json& v, int64_t lo, int64_t hi, const std::string& what,
                const std::string& where) {
  int64_t x = 0;
  bool ok = false;
  if (v.is_number_integer()) {
    x = v.get<int64_t>();
    ok = true;
  } else if (v.is_string()) {
    const std::string& raw = v.get_ref<const std::string&>();
    const auto [end, ec] = std::from_chars(raw.data(), raw.data() + raw.size(), x);
    ok = ec == std::errc() && end == raw.data() + raw.size();
  }
  STRATA_CHECK_T(IoError, ok && x >= lo && x <= hi, where, ": ", what, " is ", shown(v),
                 ", not an integer in [", lo, ", ", hi,
                 "]; the checkpoint is corrupt");
  return x;
}

int64_t integer(const std::string& raw, int64_t lo, int64_t hi, const std::string& what,
                const std::string& where) {
  return integer(nlohmann::json(raw), lo, hi, what, where);
}

}  // namespace

CheckpointMeta parse_checkpoint_metadata(const std::string& text, const std::string& where) {
  const nlohmann::json j = parse_json_object(text, where);
  const auto field = [&](const char* key, int64_t lo, int64_t hi) {
    const auto it = j.find(key);
    STRATA_CHECK_T(IoError, it != j.end(), where, " has no '", key, "'");
    return integer(*it, lo, hi, key, where);
  };
  CheckpointMeta m;
  m.format = field("format", 0, int64_t{1} << 31);
  m.dp = field("dp", 1, kMaxMeshAxis);
  m.tp = field("tp", 1, kMaxMeshAxis);
  m.pp = field("pp", 1, kMaxMeshAxis);
  const auto files = j.find("files");
  if (files != j.end()) {
    STRATA_CHECK_T(IoError, files->is_object(), where, ": 'files' is ", shown(*files),
                   ", not an object of file sizes; the checkpoint is corrupt");
    for (const auto& [name, size] : files->items()) {
      STRATA_CHECK_T(IoError,
                     !name.empty() && name.size() <= 255 && name[0] != '.' &&
                         name.find('/') == std::string::npos && name.find('\0') == std::string::npos,
                     where, ": 'files' names ", quote(name, 40), ", not a file of the checkpoint; "
                     "the checkpoint is corrupt");
      m.files[name] = integer(size, 0, int64_t{1} << 50, "the size of " + printable(name, 40), where);
    }
  }
  return m;
}

SplitTable parse_split_table(const std::string& text, const std::string& where) {
  SplitTable table;
  const nlohmann::json j = parse_json_object(text, where);  // outlives items()
  for (const auto& [name, v] : j.items()) {
    STRATA_CHECK_T(IoError, v.is_string(), where, ": the split of ", printable(name, 40), " is ",
                   shown(v), ", not 'dim/groups'; the checkpoint is corrupt");
    const std::string& raw = v.get_ref<const std::string&>();
    const auto slash = raw.find('/');
    STRATA_CHECK_T(IoError, slash != std::string::npos, where, ": the split of ",
                   printable(name, 40), " is ", shown(v), ", not 'dim/groups'; the checkpoint "
                   "is corrupt");
    SplitSpec s;
    s.dim = integer(raw.substr(0, slash), 0, 7, "a split dimension", where);
    s.groups = integer(raw.substr(slash + 1), 1, 1024, "a split's groups", where);
    table.emplace(name, s);
  }
  return table;
}

}  // namespace strata::train
