// The model the update fuzzer's streams are checked against, and the
// framing of its inputs: records of [length: 2 bytes, little-endian][an
// UpdateChunk's protobuf bytes].
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "federated/layout.h"

namespace strata::fed {

inline TensorLayout fuzz_layout() {
  return TensorLayout::of_shapes({{"w", {4, 3}}, {"b", {3}}, {"s", {}}});
}

inline std::vector<std::string> split_records(const uint8_t* data, size_t size) {
  std::vector<std::string> out;
  size_t i = 0;
  while (i + 2 <= size) {
    const size_t n = data[i] | (size_t{data[i + 1]} << 8);
    i += 2;
    const size_t take = std::min(n, size - i);
    out.emplace_back(reinterpret_cast<const char*>(data + i), take);
    i += take;
  }
  return out;
}

inline std::string record(const std::string& bytes) {
  std::string out;
  out += static_cast<char>(bytes.size() & 0xff);
  out += static_cast<char>(bytes.size() >> 8);
  return out + bytes;
}

}  // namespace strata::fed
