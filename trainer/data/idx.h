// Reader for the IDX format of (Fashion-)MNIST, gzip-compressed or plain.
//
// Layout (big endian): magic = {0, 0, dtype, ndim}, then ndim uint32 sizes,
// then the data. Only dtype 0x08 (unsigned byte) is used by these datasets.
// reference: http://yann.lecun.com/exdb/mnist/ ("FILE FORMATS")
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace strata::train {

struct IdxArray {
  std::vector<int64_t> dims;  // e.g. {60000, 28, 28}
  std::vector<uint8_t> data;  // row-major, prod(dims) bytes
};

// Throws DataError naming the file and what is wrong with it (missing,
// truncated, bad magic, unsupported dtype).
IdxArray read_idx(const std::string& path);
// The IDX array in `bytes` (already decompressed); DataError naming `where`
// for anything that is not a well-formed unsigned-byte IDX array (bad
// magic, truncated header or data, dimensions whose product overflows or
// disagrees with the data). Never trusts the header: fuzzed (fuzz/).
IdxArray parse_idx(const std::vector<uint8_t>& bytes, const std::string& where);

// Encodes `array` as an (uncompressed) IDX byte string; used by tests and
// tools that produce small datasets.
std::string encode_idx(const IdxArray& array);

}  // namespace strata::train
