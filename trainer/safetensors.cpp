#include "trainer/safetensors.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstring>
#include <set>

#include "core/error.h"
#include "core/fs.h"
#include "core/strings.h"

namespace strata::train {
namespace {

struct DtypeName {
  at::ScalarType type;
  const char* name;
};
constexpr DtypeName kDtypes[] = {
    {at::kDouble, "F64"}, {at::kFloat, "F32"}, {at::kHalf, "F16"}, {at::kBFloat16, "BF16"},
    {at::kLong, "I64"},   {at::kInt, "I32"},   {at::kShort, "I16"}, {at::kChar, "I8"},
    {at::kByte, "U8"},    {at::kBool, "BOOL"},
};

const char* dtype_name(at::ScalarType t) {
  for (const auto& d : kDtypes) {
    if (d.type == t) return d.name;
  }
  return nullptr;
}

constexpr uint64_t kMaxHeader = 100ull << 20;  // what the Python package accepts

}  // namespace

void save_safetensors(const std::string& path,
                      const std::vector<std::pair<std::string, at::Tensor>>& tensors,
                      const std::map<std::string, std::string>& metadata) {
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  std::vector<at::Tensor> data;
  std::set<std::string> names;
  uint64_t offset = 0;
  for (const auto& [name, t] : tensors) {
    STRATA_CHECK_T(ConfigError, names.insert(name).second && name != "__metadata__",
                   "safetensors: the name ", quote(name), " appears twice (or is reserved)");
    const char* dtype = dtype_name(t.scalar_type());
    STRATA_CHECK_T(ConfigError, dtype != nullptr, "safetensors has no dtype for ", name, " (",
                   t.scalar_type(), "); convert it first");
    at::Tensor c = t.detach().cpu().contiguous();
    const uint64_t bytes = static_cast<uint64_t>(c.numel()) * c.element_size();
    header[name] = {{"dtype", dtype},
                    {"shape", c.sizes().vec()},
                    {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
    data.push_back(std::move(c));
  }
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');
  std::string out;
  out.reserve(8 + text.size() + offset);
  const uint64_t n = text.size();
  for (int i = 0; i < 8; ++i) out.push_back(static_cast<char>((n >> (8 * i)) & 0xff));
  out += text;
  for (const auto& c : data) {
    out.append(static_cast<const char*>(c.data_ptr()), static_cast<size_t>(c.numel()) * c.element_size());
  }
  atomic_write_file(path, out);
}

SafetensorsFile load_safetensors(const std::string& path) {
  STRATA_CHECK_T(IoError, path_exists(path), "'", path, "' does not exist");
  const std::string bytes = read_file(path);
  STRATA_CHECK_T(IoError, bytes.size() >= 8, path, ": ", bytes.size(),
                 " bytes, too short for a safetensors header");
  uint64_t n = 0;
  for (int i = 0; i < 8; ++i) n |= static_cast<uint64_t>(static_cast<unsigned char>(bytes[i])) << (8 * i);
  STRATA_CHECK_T(IoError, n <= kMaxHeader && n <= bytes.size() - 8, path, ": the header claims ",
                 n, " bytes of a ", bytes.size(), "-byte file; not a safetensors file");
  const nlohmann::json header =
      nlohmann::json::parse(bytes.begin() + 8, bytes.begin() + 8 + static_cast<std::ptrdiff_t>(n),
                            nullptr, /*allow_exceptions=*/false);
  STRATA_CHECK_T(IoError, header.is_object(), path, ": the header is not a JSON object");
  const uint64_t data_size = bytes.size() - 8 - n;
  const char* data = bytes.data() + 8 + n;
  SafetensorsFile file;
  std::vector<std::pair<uint64_t, uint64_t>> ranges;
  for (const auto& [name, entry] : header.items()) {
    const std::string where = str(path, ": ", quote(name, 60));
    if (name == "__metadata__") {
      STRATA_CHECK_T(IoError, entry.is_object(), where, " is not an object");
      for (const auto& [k, v] : entry.items()) {
        STRATA_CHECK_T(IoError, v.is_string(), where, ": ", quote(k, 40), " is not a string");
        file.metadata[k] = v.get<std::string>();
      }
      continue;
    }
    STRATA_CHECK_T(IoError, entry.is_object() && entry.contains("dtype") &&
                                entry.contains("shape") && entry.contains("data_offsets"),
                   where, " is not {dtype, shape, data_offsets}");
    const auto& dt = entry["dtype"];
    const DtypeName* found = nullptr;
    for (const auto& d : kDtypes) {
      if (dt.is_string() && dt.get<std::string>() == d.name) found = &d;
    }
    STRATA_CHECK_T(IoError, found != nullptr, where, ": dtype ",
                   printable(dt.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace), 20),
                   " is not one Strata reads");
    const auto& shape = entry["shape"];
    const auto& off = entry["data_offsets"];
    STRATA_CHECK_T(IoError, shape.is_array() && shape.size() <= 16 && off.is_array() && off.size() == 2 &&
                                off[0].is_number_unsigned() && off[1].is_number_unsigned(),
                   where, ": shape or data_offsets malformed");
    std::vector<int64_t> dims;
    uint64_t numel = 1;
    for (const auto& d : shape) {
      STRATA_CHECK_T(IoError, d.is_number_unsigned() && d.get<uint64_t>() <= data_size, where,
                     ": a dimension is not a size within the file");
      dims.push_back(d.get<int64_t>());
      numel *= d.get<uint64_t>();
      STRATA_CHECK_T(IoError, numel <= data_size, where, ": the shape holds more than the file");
    }
    const uint64_t begin = off[0].get<uint64_t>(), end = off[1].get<uint64_t>();
    const uint64_t item = at::elementSize(found->type);
    STRATA_CHECK_T(IoError, begin <= end && end <= data_size && end - begin == numel * item, where,
                   ": data_offsets [", begin, ", ", end, ") do not hold ", numel, " x ", item,
                   " bytes within the ", data_size, " data bytes");
    ranges.emplace_back(begin, end);
    at::Tensor t = at::empty(dims, at::TensorOptions(found->type));
    if (end > begin) std::memcpy(t.data_ptr(), data + begin, end - begin);
    file.tensors.emplace_back(name, std::move(t));
  }
  std::sort(ranges.begin(), ranges.end());
  uint64_t at = 0;
  for (const auto& [b, e] : ranges) {
    STRATA_CHECK_T(IoError, b == at, path, ": tensors overlap or leave a gap at byte ", at);
    at = e;
  }
  STRATA_CHECK_T(IoError, at == data_size, path, ": ", data_size - at,
                 " bytes after the last tensor");
  return file;
}

}  // namespace strata::train
