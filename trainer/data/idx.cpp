#include "trainer/data/idx.h"

#include <zlib.h>

#include "core/error.h"
#include "core/fs.h"

namespace strata::train {
namespace {

// Reads the whole (possibly gzip-compressed) file; gzread passes plain files
// through unchanged.
std::vector<uint8_t> read_maybe_gzip(const std::string& path) {
  gzFile f = gzopen(path.c_str(), "rb");
  STRATA_CHECK_T(DataError, f != nullptr, "cannot open '", path, "'");
  std::vector<uint8_t> out;
  uint8_t buf[1 << 16];
  for (;;) {
    int n = gzread(f, buf, sizeof(buf));
    if (n < 0) {
      int errnum = 0;
      std::string why = gzerror(f, &errnum);
      gzclose(f);
      throw DataError(str("'", path, "' is corrupt: ", why,
                          "; reinstall the dataset package"));
    }
    if (n == 0) break;
    out.insert(out.end(), buf, buf + n);
  }
  gzclose(f);
  return out;
}

uint32_t be32(const uint8_t* p) {
  return (uint32_t(p[0]) << 24) | (uint32_t(p[1]) << 16) |
         (uint32_t(p[2]) << 8) | uint32_t(p[3]);
}

}  // namespace

IdxArray read_idx(const std::string& path) {
  STRATA_CHECK_T(DataError, path_exists(path), "dataset file '", path,
                 "' does not exist");
  return parse_idx(read_maybe_gzip(path), "'" + path + "'");
}

IdxArray parse_idx(const std::vector<uint8_t>& bytes, const std::string& where) {
  STRATA_CHECK_T(DataError, bytes.size() >= 4 && bytes[0] == 0 && bytes[1] == 0,
                 where, " is not an IDX file (bad magic number)");
  const uint8_t dtype = bytes[2];
  const size_t ndim = bytes[3];
  STRATA_CHECK_T(DataError, dtype == 0x08, where, " has IDX dtype 0x",
                 std::hex, int(dtype), "; only unsigned bytes (0x08) are "
                 "supported");
  STRATA_CHECK_T(DataError, ndim >= 1 && bytes.size() >= 4 + 4 * ndim, where,
                 " is truncated in its header");
  const size_t header = 4 + 4 * ndim;
  const size_t have = bytes.size() - header;
  IdxArray out;
  size_t count = 1;
  for (size_t d = 0; d < ndim; ++d) {
    const uint32_t dim = be32(&bytes[4 + 4 * d]);
    out.dims.push_back(dim);
    STRATA_CHECK_T(DataError, !__builtin_mul_overflow(count, size_t{dim}, &count), where,
                   " has dimensions whose product overflows; the file is corrupt, reinstall "
                   "the dataset package");
  }
  STRATA_CHECK_T(DataError, have == count, where, " holds ", have, " data bytes but its "
                 "header promises ", count, "; the file is truncated or "
                 "corrupt, reinstall the dataset package");
  out.data.assign(bytes.begin() + static_cast<std::ptrdiff_t>(header), bytes.end());
  return out;
}

std::string encode_idx(const IdxArray& array) {
  std::string out = {0, 0, 0x08, static_cast<char>(array.dims.size())};
  for (int64_t d : array.dims) {
    uint32_t v = static_cast<uint32_t>(d);
    out += static_cast<char>(v >> 24);
    out += static_cast<char>(v >> 16);
    out += static_cast<char>(v >> 8);
    out += static_cast<char>(v);
  }
  out.append(array.data.begin(), array.data.end());
  return out;
}

}  // namespace strata::train
